"""agentkv: a prefix-shared, quantized, tiered KV cache for agentic LLM serving, and the simulator and cost
model that say what each lever buys."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from agentkv import LLM, SamplingParams` as in vLLM, while `import agentkv` stays torch-free."""
    try:
        if name in ("LLM", "SamplingParams", "RequestOutput", "CompletionOutput"):
            from agentkv.engine import llm, outputs

            return getattr(llm, name, None) or getattr(outputs, name)
        if name == "AsyncLLM":
            from agentkv.engine.async_llm import AsyncLLM

            return AsyncLLM
    except ModuleNotFoundError as e:  # an install without the engine extra: say what to install, as the CLI does
        from agentkv.cli_errors import install_hint

        hint = install_hint(e)
        if hint is None:
            raise
        raise ModuleNotFoundError(hint, name=e.name) from None
    raise AttributeError(f"module 'agentkv' has no attribute {name!r}")

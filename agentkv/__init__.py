"""agentkv: a prefix-shared, quantized, tiered KV cache for agentic LLM serving, and the simulator and cost
model that say what each lever buys."""

__version__ = "0.1.0"

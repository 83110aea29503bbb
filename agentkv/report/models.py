"""Model choice, the report's first lever: which models can take this traffic at all, and what each costs.

A model whose window is shorter than the trace's contexts serves other traffic than the trace (compacted,
truncated or refused: `workload.window`), and a KV layout that keeps a window or a compressed stream instead
of every token changes what a GPU holds. So the report starts from the model: by default the first of
`DEFAULT_MODELS` (cheapest first) whose window holds every request, placed on the fewest GPUs whose KV holds
the longest request; with `--candidates`, each named model is fitted, placed and sized to the SLO with every
KV lever on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agentkv.catalog import HardwareSpec, ModelSpec, hardware, models
from agentkv.kvcache.sizing import codec
from agentkv.report.ladder import DeploymentSpec
from agentkv.report.levers import contexts_per_gpu
from agentkv.report.sizing import Sized
from agentkv.sim.stepcost import Deployment
from agentkv.workload.trace import Trace
from agentkv.workload.window import WindowFit, fit_window

# cheapest first: an 8B dense model (128k), a 3B-active coder (256k), DeepSeek V4-Flash (1M), Llama 4 Scout (10M)
DEFAULT_MODELS = ("llama-3.1-8b", "qwen3-coder-30b-a3b", "deepseek-v4-flash", "llama-4-scout")
WEIGHT_DTYPES = ("bf16", "fp8", "int4")  # widest first: the fewest GPUs decide, then the weights' precision


def longest_request(trace: Trace) -> int:
    return int((trace.input_tokens + np.maximum(trace.output_tokens, 1)).max()) if trace.n_requests else 0


def placement(m: ModelSpec, hw: HardwareSpec, tokens: int, tps: tuple[int, ...] = (1, 2, 4, 8),
              weight_dtypes: tuple[str, ...] = WEIGHT_DTYPES) -> tuple[int, str] | None:
    """Fewest GPUs (TP 1-8), then the widest weights, whose KV room holds one `tokens`-long sequence at bf16
    KV; None where 8 GPUs cannot."""
    for tp in tps:
        for wd in weight_dtypes:
            d = Deployment(hw, m, codec("bf16"), tp=tp, weight_dtype=wd)
            if d.kv_capacity_bytes >= d.kv_bytes(max(tokens, 1)):
                return tp, wd
    return None


def choose_model(trace: Trace, spec: DeploymentSpec, named: set[str]) -> tuple[DeploymentSpec, str]:
    """The deployment the report runs, and why: the model named (`--deployment model=X`), else the default one
    (see the module docstring), placed alike on the fewest GPUs and widest weights that hold its weights and the
    longest request; tp or weight_dtype the user named are kept. A model no placement holds is refused in one
    line: its report would be every request rejected."""
    if "model" in named:
        return _placed(spec, trace, named, f"{spec.model}, as given")
    spec, why = _default(trace, spec)
    return _placed(spec, trace, named, why)


def _default(trace: Trace, spec: DeploymentSpec) -> tuple[DeploymentSpec, str]:
    table = models(spec.models_file)
    need = longest_request(trace)
    listed = [n for n in DEFAULT_MODELS if n in table]
    if not listed:
        return spec, f"{spec.model}, the default deployment"
    name = next((n for n in listed if table[n].context >= need), max(listed, key=lambda n: table[n].context))
    m = table[name]
    why = (f"{name}, the first of {', '.join(listed)} whose context window ({m.context:,} tokens) holds every "
           f"request of this trace (the longest needs {need:,})" if m.context >= need else
           f"{name}, the longest window of {', '.join(listed)} ({m.context:,} tokens; the longest request needs "
           f"{need:,})")
    return replace(spec, model=name), why


def _placed(spec: DeploymentSpec, trace: Trace, named: set[str], why: str) -> tuple[DeploymentSpec, str]:
    m, hw = models(spec.models_file)[spec.model], hardware(spec.hardware, spec.hardware_file)
    tokens = min(longest_request(trace), m.context)
    tps = (spec.tp,) if "tp" in named else (1, 2, 4, 8)
    dtypes = (spec.weight_dtype,) if "weight_dtype" in named else WEIGHT_DTYPES
    place = placement(m, hw, tokens, tps, dtypes)
    if place is None:
        given = ", ".join(f"{k}={getattr(spec, k)}" for k in ("tp", "weight_dtype") if k in named)
        raise ValueError(f"--deployment model={spec.model}{', ' + given if given else ''}: no placement on "
                         f"{'/'.join(map(str, tps))} × {hw.name} with {'/'.join(dtypes)} weights holds its weights "
                         f"({m.params_total / 1e9:.1f}B parameters) and the KV of the longest request ({tokens:,} "
                         "tokens)" + ("; leave tp and weight_dtype out to let the report size it" if given else ""))
    if place == (spec.tp, spec.weight_dtype) and {"tp", "weight_dtype"} <= named:
        return spec, why
    spec = replace(spec, tp=place[0], weight_dtype=place[1])
    holds = "whose memory holds its weights and the longest request's KV"
    if "tp" in named:
        return spec, f"{why}; {spec.tp} × {hw.name} as given, with {spec.weight_dtype} weights, the widest {holds}"
    given = " (as given)" if "weight_dtype" in named else ""
    widest = "" if given else " (and widest weights)"
    return spec, (f"{why}; {spec.tp} × {hw.name} with {spec.weight_dtype} weights{given}, the fewest GPUs{widest} "
                  f"{holds}")


@dataclass(slots=True)
class Candidate:
    model: str
    window: int
    fit: WindowFit
    tp: int
    weight_dtype: str
    kv_gib_median: float  # bf16 KV of the fitted trace's median prompt
    contexts_per_gpu: float  # of those, at bf16 KV
    sized: Sized | None  # every KV lever on, at the offered load; None: the weights do not fit on 8 GPUs


def candidate_specs(names: tuple[str, ...], trace: Trace, spec: DeploymentSpec,
                    over_window: str) -> list[tuple[DeploymentSpec, Trace, WindowFit]]:
    """Each named model fitted to its window and placed for the fitted trace's longest request."""
    table, hw = models(spec.models_file), hardware(spec.hardware, spec.hardware_file)
    out = []
    for name in names:
        if name not in table:
            raise ValueError(f"--candidates: unknown model '{name}' (known: {', '.join(sorted(table))})")
        fitted, fit = fit_window(trace, table[name].context, over_window)
        place = placement(table[name], hw, longest_request(fitted)) or (8, WEIGHT_DTYPES[-1])
        out.append((replace(spec, model=name, tp=place[0], weight_dtype=place[1]), fitted, fit))
    return out


def deployment(spec: DeploymentSpec) -> Deployment:
    """The candidate's replica at bf16 KV, for its KV figures."""
    return Deployment(hardware(spec.hardware, spec.hardware_file), models(spec.models_file)[spec.model],
                      codec("bf16"), tp=spec.tp, weight_dtype=spec.weight_dtype)


def candidate(spec: DeploymentSpec, fitted: Trace, fit: WindowFit, sized: Sized | None) -> Candidate:
    d = deployment(spec)
    median = max(int(np.median(fitted.input_tokens)), 1) if fitted.n_requests else 1
    return Candidate(spec.model, fit.window, fit, spec.tp, spec.weight_dtype, d.kv_bytes(median) / 2**30,
                     contexts_per_gpu(d, median), sized)


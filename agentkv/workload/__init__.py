"""The workload layer: traces, their loaders, arrival models, the synthetic agentic generator and stats."""

from agentkv.workload.load import load_trace
from agentkv.workload.trace import Trace

__all__ = ["Trace", "load_trace"]

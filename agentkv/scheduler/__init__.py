"""Batch formation, shared by the engine and the simulator: torch-free, driven by the KV cache policy core."""

from agentkv.scheduler.batch import Batch, PrefillChunk
from agentkv.scheduler.scheduler import Scheduler, SchedulerConfig
from agentkv.scheduler.sequence import Sequence, Status

__all__ = ["Batch", "PrefillChunk", "Scheduler", "SchedulerConfig", "Sequence", "Status"]

"""Batch formation, shared by the engine and the simulator: torch-free, driven by the KV cache policy core."""

from agentkv.scheduler.plan import Allocate, Free, Name, Op, PrefillChunk, StepPlan
from agentkv.scheduler.scheduler import Scheduler, SchedulerConfig
from agentkv.scheduler.sequence import Sequence, Status

__all__ = ["Allocate", "Free", "Name", "Op", "PrefillChunk", "Scheduler", "SchedulerConfig", "Sequence", "Status",
           "StepPlan"]

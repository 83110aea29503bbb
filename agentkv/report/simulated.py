"""What each part of the report simulates: capacity probes, the choice of each lever's deployment mode, and the
sizes, fleets and prices it prints.

A capacity probe is one replica at a steady concurrency, so an evenly spaced sample of sessions measures it (a
load above the sample's session count replays copies of them); a report of the whole trace probes that sample,
chooses each lever's deployment mode on it (every mode sized there), and sizes only the chosen mode on the whole
trace, starting from the sample's answer: a lever costs ~3 whole-trace simulations (its size, one fewer, the
same fleet) instead of ~10 (every probe of every mode). With `--sample-sessions N`, everything runs on the
N-session sample. On the trace's own clock a sample carries less load than the whole: modes are chosen on the
whole trace there.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.report.capacity import SAMPLE_SESSIONS, sample_sessions
from agentkv.workload.arrivals import ArrivalModel, tokens_per_open_second
from agentkv.workload.trace import Trace


@dataclass(slots=True, frozen=True)
class Simulated:
    probes: Trace  # capacity per replica (one replica at rising concurrency)
    modes: Trace  # each lever sized in every deployment mode, the cheapest chosen (and its remedies tried)
    whole: Trace  # the chosen mode sized, the same fleet run, $/Mtok: every figure the report prints but capacity

    @property
    def two_phase(self) -> bool:
        """Whether the chosen modes are sized again on another trace than they were chosen on."""
        return self.whole is not self.modes

    def traces(self) -> tuple[Trace, Trace, Trace]:
        return self.probes, self.modes, self.whole

    def describe(self, trace: Trace) -> str:
        """The report's "simulated" setting: what ran on what."""
        top = _top(trace)
        if self.probes is trace:
            return "the whole trace"
        if not self.two_phase and self.whole is not trace:
            return (f"an evenly spaced sample of {_top(self.probes)} of its {top} sessions "
                    f"({self.probes.n_requests:,} requests), at the same offered load; {_bias(self.probes, trace)}, "
                    "which biases $/Mtok by about the inverse (--sample-sessions 0 or --ray simulates the whole trace)")
        chosen = "sized and priced" if self.modes is self.probes else "each lever's mode chosen, sized and priced"
        mode = " and each lever's deployment mode" if self.modes is self.probes else ""
        return (f"{chosen} on the whole trace ({trace.n_requests:,} requests); capacity per replica{mode} on an "
                f"evenly spaced {_top(self.probes)}-session sample ({self.probes.n_requests:,} requests) at the same "
                f"offered load ({_bias(self.probes, trace)})")


def simulated_on(trace: Trace, arrival: ArrivalModel, sample_size: int,
                 probe_sessions: int = SAMPLE_SESSIONS) -> Simulated:
    """`sample_size` top-level sessions (the whole trace when it has no more): probed on at most `probe_sessions`
    of them when whole."""
    whole = sample_size >= _top(trace)
    probes = sample_sessions(trace, probe_sessions if whole else sample_size)
    modes = trace if arrival.mode == "trace" else probes
    return Simulated(probes, modes, trace if whole or arrival.mode == "trace" else probes)


def _top(trace: Trace) -> int:
    return int((trace.session_parent < 0).sum())


def _bias(sample: Trace, trace: Trace) -> str:
    """How far a sample's sessions' load is from the whole trace's: at the same concurrency a sparser sample fills
    fewer GPU-hours with tokens, so its $/Mtok reads high (and the reverse)."""
    ratio = tokens_per_open_second(sample) / max(tokens_per_open_second(trace), 1e-9)
    return f"its sessions send {ratio:.2f}x the whole trace's input tokens per open second"

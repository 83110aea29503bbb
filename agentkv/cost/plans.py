"""Flat-rate plans vs usage-based billing: at how much use per month they break even."""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.cost.providers import ProviderCost


@dataclass(slots=True, frozen=True)
class BreakEven:
    plan: str
    usd_per_month: float
    provider: str
    usd_per_session: float
    sessions_per_month: float  # usage-based billing costs the plan's price at this many sessions a month
    input_mtok_per_month: float


def break_even(plans: dict[str, float], costs: list[ProviderCost], sessions: int) -> list[BreakEven]:
    """For each plan and provider: the sessions (of this trace's kind) a month at which paying per token costs
    as much as the plan; a user who runs more is cheaper to serve on usage billing's terms than the plan earns."""
    out = []
    for plan, price in plans.items():
        for c in costs:
            per_session = c.usd / max(sessions, 1)
            n = price / per_session if per_session > 0 else float("inf")
            out.append(BreakEven(plan, price, c.name, per_session, n, n * c.input_tokens / max(sessions, 1) / 1e6))
    return out

"""The capacity chart draws a lower bound as one (the trace had too few sessions to load that lever further):
an open, hatched bar marked ≥, with a legend saying why; a measured capacity is a solid bar."""

from __future__ import annotations

from agentkv.report.figures import capacity_figure
from agentkv.report.views import View


def test_lower_bounds_are_drawn_as_lower_bounds():
    rows = [{"lever": "baseline", "sessions_per_gpu": 4.0, "usd_per_session_hour": 0.87, "at_limit": True},
            {"lever": "+fp8 KV", "sessions_per_gpu": 6.5, "usd_per_session_hour": 0.54, "at_limit": False}]
    ax = capacity_figure(View("capacity_per_gpu", "capacity", [], rows)).axes[0]
    bound, measured = ax.patches[:2]
    assert bound.get_hatch() == "//" and bound.get_facecolor()[:3] == (1.0, 1.0, 1.0)
    assert not measured.get_hatch() and measured.get_facecolor()[:3] != (1.0, 1.0, 1.0)
    labels = [t.get_text() for t in ax.texts]
    assert labels[0].startswith("↑ ≥ 4 sessions") and labels[1] == "$0.54/session-h"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "lower bound: the trace has too few sessions to load it further"]


def test_no_legend_when_every_capacity_was_found():
    rows = [{"lever": "baseline", "sessions_per_gpu": 3.0, "usd_per_session_hour": 1.2, "at_limit": False}]
    ax = capacity_figure(View("capacity_per_gpu", "capacity", [], rows)).axes[0]
    assert ax.get_legend() is None and not ax.patches[0].get_hatch()

"""Cost against load: the fleet each load needs, its $/Mtok, and where it crosses an API of the same model."""

from __future__ import annotations

from datetime import date

import pytest

from agentkv.cost.providers import ProviderCost
from agentkv.report.capacity import Capacity
from agentkv.report.load import crossings, load_curve
from agentkv.report.views import stale


def api(usd_per_mtok: float) -> ProviderCost:
    tokens = 10_000_000
    return ProviderCost("lab model", usd_per_mtok * tokens / 1e6, 0.0, 0, tokens, 0, as_of="2026-11-01")


def test_a_part_idle_replica_costs_more_per_token_and_full_replicas_set_the_floor():
    """One replica serves 10 sessions, each sending 1,000 tokens/s, at $3.60 an hour: $0.10/Mtok when full."""
    curve = load_curve("all levers", Capacity(10.0, 1.0, tokens_per_session_s=1000.0), 1.8, tp=2)
    assert curve.usd_per_mtok(10) == pytest.approx(0.1)
    assert curve.usd_per_mtok(5) == pytest.approx(0.2)  # half the tokens on the same replica
    assert curve.usd_per_mtok(11) == pytest.approx(0.2 * 10 / 11)  # a second, nearly idle, replica
    assert curve.gpus(11, tp=2) == 4
    assert curve.floor == pytest.approx(0.1)
    assert curve.usd_per_mtok(curve.break_even(0.25)) == pytest.approx(0.25)  # the load where they cost the same
    assert curve.break_even(0.05) is None  # cheaper than a full replica: never


def test_break_even_names_the_first_lever_as_cheap_as_the_best():
    """Levers that add nothing once full (within 2%) do not need to be run to beat the API."""
    caps = [Capacity(5.0, 1.0, tokens_per_session_s=1000.0), Capacity(10.0, 1.0, tokens_per_session_s=1000.0),
            Capacity(10.1, 1.0, tokens_per_session_s=1000.0), Capacity(0.0, 30.0)]
    curves = [load_curve(f"lever {k}", c, 3.6, tp=1) for k, c in enumerate(caps)]
    [cheap, dear] = crossings(curves, [api(0.5), api(0.05)])
    assert cheap.lever == "lever 1" and cheap.sessions == pytest.approx(2.0)
    assert dear.sessions is None and dear.floor == pytest.approx(0.1)
    assert crossings([curves[-1]], [api(0.5)])[0].floor is None  # no lever meets the SLO: no floor, no crossing


def test_a_price_older_than_half_a_year_or_undated_is_stale():
    today = date(2026, 12, 5)
    assert not stale("2026-07-04", today) and stale("2026-05", today) and stale("unknown", today)


def test_the_report_prices_its_own_model_at_its_apis_and_states_the_break_even():
    """llama-3.1-8b on one H200: DeepInfra's row serves that model; the headline names the break-even load (or
    that there is none), the load view carries the API as a flat line beside every lever, and a lever's $/Mtok
    at the break-even load equals the API's."""
    from agentkv.catalog import prices
    from agentkv.report.assemble import build_report
    from agentkv.report.headline import headline
    from agentkv.report.ladder import DeploymentSpec
    from agentkv.report.views import cost_vs_load
    from agentkv.workload.arrivals import ArrivalModel
    from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate

    trace = generate(GeneratorConfig(sessions=6, seed=11, subagent_rate=0.0, turns=LogNormal(8, 0.4),
                                     windows=(WindowClass(1.0, 60_000, LogNormal(12_000, 0.4)),)))
    rep = build_report(trace, DeploymentSpec(), ArrivalModel("concurrency", 6.0), prices(), workers=1)
    assert [a.name for a in rep.model_apis] == ["deepinfra llama-3.1-8b"]
    [x] = crossings(rep.curves, rep.model_apis)
    line = next(s for s in headline(rep) if s.startswith("Against deepinfra llama-3.1-8b"))
    view = cost_vs_load(rep, today=date(2026, 12, 5))
    api_row = view.rows[-1]
    assert api_row["lever"] == "API deepinfra llama-3.1-8b STALE"  # its source gives no date
    assert {v for k, v in api_row.items() if k.startswith("usd_per_mtok_at_")} == {x.api.usd_per_mtok}
    from agentkv.report.run import document
    from agentkv.report.views import views

    [doc_row] = document(rep, headline(rep), {}, views(rep))["api_break_even"]
    assert doc_row["api"] == x.api.name and doc_row["sessions_per_replica"] == x.sessions
    if x.sessions is None:
        assert "never breaks even" in line and x.floor > x.api.usd_per_mtok
    else:
        assert f"break-even at {x.sessions:.3g} concurrent sessions" in line
        curve = next(c for c in rep.curves if c.lever == x.lever)
        assert curve.usd_per_mtok(x.sessions) == pytest.approx(x.api.usd_per_mtok)

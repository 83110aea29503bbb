"""Context windows: every request a model serves fits its window, and nothing over it goes uncounted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkv.catalog import hardware, model, models
from agentkv.kvcache.sizing import codec
from agentkv.report.models import placement
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate
from agentkv.workload.window import COMPACTED_SHARE, OVER_WINDOW, fit_window


def agentic(seed: int, sessions: int = 6, reach: int = 600_000, turns: float = 8):
    """Sessions whose contexts grow to `reach` tokens (their client compacts there), and 128k-window ones."""
    return generate(GeneratorConfig(sessions=sessions, seed=seed, turns=LogNormal(turns, 0.5),
                                    windows=(WindowClass(0.5, 100_000, LogNormal(20_000, 0.5)),
                                             WindowClass(0.5, reach, LogNormal(150_000, 0.5)))))


WINDOWS = sorted({m.context for m in models().values()})


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 10_000), window=st.sampled_from(WINDOWS), mode=st.sampled_from(OVER_WINDOW),
       reach=st.sampled_from([150_000, 400_000, 900_000]))
def test_fitted_traces_fit_and_add_up(seed, window, mode, reach):
    trace = agentic(seed, sessions=4, reach=reach, turns=5)
    fitted, fit = fit_window(trace, window, mode)
    fitted.validate()
    assert np.all(fitted.input_tokens + np.maximum(fitted.output_tokens, 1) <= window)
    assert fit.served == fitted.n_requests and fit.served + fit.rejected == trace.n_requests
    need = trace.input_tokens + np.maximum(trace.output_tokens, 1)
    assert fit.over == int((need > window).sum())
    assert fit.over_tokens == int(trace.input_tokens[need > window].sum())
    if mode == "truncate":
        assert fit.truncated == fit.over - fit.rejected and fit.compacted == 0
    elif mode == "reject":
        assert fit.rejected >= fit.over and fit.truncated == fit.compacted == 0
    else:
        assert fit.compacted >= fit.over - fit.rejected and (fit.compactions > 0) == (fit.over > fit.rejected)
    if not fit.over:
        assert fitted is trace


@pytest.mark.parametrize("name", ["gemma-3-27b", "qwen3-next-80b-a3b", "deepseek-v4-flash"])
@pytest.mark.parametrize("mode", OVER_WINDOW)
def test_no_simulated_request_exceeds_its_models_window(name, mode):
    trace = agentic(3, sessions=5, reach=400_000, turns=6)
    m = model(name)
    fitted, fit = fit_window(trace, m.context, mode)
    tp, weights = placement(m, hardware("h200"), m.context)
    res = simulate(fitted, SimConfig(Deployment(hardware("h200"), m, codec("fp8"), tp=tp, weight_dtype=weights),
                                     arrival=ArrivalModel("concurrency", 3)))
    assert not res.over_window.any() and not res.rejected.any()
    assert np.all(res.prompt + res.output <= m.context)
    assert res.served.sum() + fit.rejected == trace.n_requests


def test_an_unfitted_trace_is_refused_over_the_window_and_counted():
    trace = agentic(3, sessions=5, reach=400_000, turns=6)
    m = model("gemma-3-27b")
    res = simulate(trace, SimConfig(Deployment(hardware("h200"), m, codec("fp8"), tp=2),
                                    arrival=ArrivalModel("concurrency", 3)))
    over = trace.input_tokens + np.maximum(trace.output_tokens, 1) > m.context
    assert over.any() and np.array_equal(res.over_window, over) and np.all(res.rejected[over])
    assert np.all(np.isnan(res.first_token[over]))


def test_reject_ends_the_session_truncate_shares_nothing_compact_shares_its_summary():
    trace = agentic(11, sessions=6, reach=600_000, turns=10)
    window = 131_072
    over = np.flatnonzero(trace.input_tokens + np.maximum(trace.output_tokens, 1) > window)
    first = int(over[0])
    s = trace.session[first]
    rejected, _ = fit_window(trace, window, "reject")
    assert np.sum(rejected.session == s) == first - int(np.searchsorted(trace.session, s))  # cut at `first`
    truncated, _ = fit_window(trace, window, "truncate")
    others = np.concatenate([truncated.blocks(i) for i in range(truncated.n_requests) if i != first])
    assert not np.isin(truncated.blocks(first), others).any()
    assert truncated.input_tokens[first] == window - max(int(trace.output_tokens[first]), 1)
    compacted, fit = fit_window(trace, window, "compact")
    summary = int(COMPACTED_SHARE * window) // trace.block_size
    assert compacted.input_tokens[first] == summary * trace.block_size
    nxt = first + 1
    if nxt < trace.n_requests and trace.session[nxt] == s:
        assert np.array_equal(compacted.blocks(nxt)[:summary], compacted.blocks(first)[:summary])
        grew = int(trace.input_tokens[nxt] - trace.input_tokens[first])
        if grew > 0 and compacted.input_tokens[nxt] > compacted.input_tokens[first]:
            assert compacted.input_tokens[nxt] == summary * trace.block_size + grew
    assert "of requests" in fit.describe() and "compactions" in fit.describe()


def test_bad_mode_or_window_is_a_clear_error():
    trace = agentic(1, sessions=2)
    with pytest.raises(ValueError, match="--over-window: 'drop'"):
        fit_window(trace, 131_072, "drop")
    with pytest.raises(ValueError, match="smaller than two blocks"):
        fit_window(trace, 8, "compact")

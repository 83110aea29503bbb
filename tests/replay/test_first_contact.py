"""Before the first replayed request: the endpoint is checked (reachable, key, model, window) in one line, the
requests are fitted to the served window, and a run that cannot succeed stops at once, exit status non-zero."""

from __future__ import annotations

import json

import pytest

from agentkv.cli import main
from tests.replay.conftest import write_trace
from tests.replay.stub import Stub

FAST = ["--time-scale", "0", "--max-tokens", "4"]


@pytest.fixture
def trace(tmp_path):
    return write_trace(tmp_path / "trace", sessions=2, turns=4)  # prompts of 600-1700 tokens


def replay(trace, stub: Stub, out, *flags: str) -> int:
    return main(["replay", str(trace), "--endpoint", stub.url, *FAST, "--out", str(out), *flags])


@pytest.mark.parametrize(("stub", "flags", "named"), [
    ({"key": "sk-1"}, [], "--api-key: http://127.0.0.1:{port} refused a request without a key (HTTP 401)"),
    ({"key": "sk-1"}, ["--api-key", "sk-2"], "--api-key: http://127.0.0.1:{port} refused the key (HTTP 401)"),
    ({}, ["--model", "gpt-9"], "--model gpt-9: http://127.0.0.1:{port} serves stub-model"),
    ({"max_model_len": 512}, ["--fit-window", "stop"], "--fit-window stop: 6 of 8 requests exceed the served "
                                                       "window of 511 tokens"),
    ({}, ["--max-think", "-1"], "--max-think must be >= 0"),
    ({}, ["--max-errors", "-1"], "--max-errors must be >= 0"),
], ids=["no key", "wrong key", "unknown model", "over the window", "max-think", "max-errors"])
def test_what_cannot_work_stops_before_any_request(trace, tmp_path, capsys, stub, flags, named):
    with Stub(("ok",), **stub) as s:
        rc = replay(trace, s, tmp_path / "o", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert named.format(port=s.url.rsplit(":", 1)[1]) in err, err
    assert s.served == []


def test_endpoint_line_and_the_key_accepted(trace, tmp_path, capsys):
    with Stub(("ok",), key="sk-1", max_model_len=4096) as s:
        assert replay(trace, s, tmp_path / "o", "--api-key", "sk-1", "--token-scale", "0.5") == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"endpoint: {s.url} reachable, key accepted, model stub-model, max_model_len 4,096"


@pytest.mark.parametrize("mode", ["scale", "cap"])
def test_requests_are_fitted_to_the_served_window(trace, tmp_path, capsys, mode):
    with Stub(("ok",), max_model_len=300) as s:
        assert replay(trace, s, tmp_path / "o", "--fit-window", mode, "--json") == 0  # no request refused
    err = capsys.readouterr().err
    assert "window: 8 of 8 requests exceed the served window of 299 tokens" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["ok"] == 8 and summary["count_mismatches"] == 0
    longest = max(len(p.split()) for p in s.prompts) + 1 + 4
    if mode == "scale":  # every block shrinks alike, so the reuse is the trace's
        assert "--token-scale 1 lowered to" in err and summary["meta"]["token_scale"] < 0.3
        assert summary["meta"]["window"] is None and longest <= 300
    else:
        assert summary["meta"]["token_scale"] == 1 and summary["meta"]["window"] == 299 and longest == 300
        assert len({tuple(p.split()[:64]) for p in s.prompts}) == 2  # cut prompts keep their start: the reuse


def test_too_long_even_at_one_token_per_block_is_scaled_then_cut(trace, tmp_path, capsys):
    with Stub(("ok",), max_model_len=20) as s:
        assert replay(trace, s, tmp_path / "o", "--json") == 0
    err = capsys.readouterr().err
    assert "lowered to 0.01562 (one token per trace block) and the 2 still over cut to the window" in err
    assert max(len(p.split()) for p in s.prompts) + 1 + 4 <= 20


def test_a_run_of_identical_errors_stops_the_replay(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=4, turns=10)
    with Stub(("500",)) as s:
        rc = replay(trace, s, tmp_path / "o", "--max-errors", "5", "--concurrency", "1", "--json")
    err = capsys.readouterr().err
    assert rc == 1 and len(s.served) == 5
    assert "replay stopped: 5 requests in a row failed with http_500 (--max-errors 5)" in err
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["errors"] == {"http_500": 5}


def test_each_run_salts_its_prompts_unless_given_a_seed(trace, tmp_path, capsys):
    with Stub(("ok",)) as s:
        for k in range(2):
            assert replay(trace, s, tmp_path / f"o{k}", "--sessions", "1", "--max-turns", "1") == 0
        assert replay(trace, s, tmp_path / "o2", "--sessions", "1", "--max-turns", "1", "--seed", "7") == 0
        assert replay(trace, s, tmp_path / "o3", "--sessions", "1", "--max-turns", "1", "--seed", "7") == 0
    a, b, c, d = (p.split()[:8] for p in s.prompts)
    assert a != b and c == d  # two runs share no prefix, unless they are given the same seed


def test_max_think_caps_the_wait(trace, tmp_path, capsys):
    with Stub(("ok",)) as s:  # every turn of the trace thinks 1 s
        assert replay(trace, s, tmp_path / "o", "--time-scale", "1", "--max-think", "0.05", "--concurrency", "2",
                      "--token-scale", "0.1") == 0
    out = capsys.readouterr().out
    assert "think time alone takes at least 0 s" in out  # 3 waits of 0.05 s
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["duration_s"] < 2.5  # uncapped: at least 3 s


@pytest.mark.parametrize(("stub", "flags", "named"), [
    (None, [], "--endpoint http://127.0.0.1:{port}: cannot connect"),
    ({"key": "sk-1"}, ["--api-key", "sk-2"], "--api-key: http://127.0.0.1:{port} refused the key"),
    ({}, ["--model", "gpt-9"], "--model gpt-9: http://127.0.0.1:{port} serves stub-model"),
], ids=["down", "wrong key", "wrong model"])
def test_the_endpoint_is_checked_before_the_trace_loads(tmp_path, capsys, stub, flags, named):
    bad = tmp_path / "bad.json"  # loading it would fail: the endpoint's answer must come first
    bad.write_text('{"id": "s0", "block_size": 64, "requests": [{"t": "soon"}]}')
    with Stub(("ok",), **(stub or {})) as s:
        url = s.url
        if stub is not None:
            rc = main(["replay", str(bad), "--endpoint", url, *flags, "--out", str(tmp_path / "o")])
    if stub is None:  # the server is gone
        rc = main(["replay", str(bad), "--endpoint", url, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and named.format(port=url.rsplit(":", 1)[1]) in err, err

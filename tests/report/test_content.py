"""What a reader of the default report sees: one fleet across the same-fleet rows, no cost where the SLO is
missed, the SLO's percentile, rejected requests, and numbers (not strings) in the JSON."""

from __future__ import annotations

import html
import re

import pytest

VIEWS = ("same_fleet", "sized_to_slo", "capacity_per_gpu")
TEXT = {"lever", "provider", "plan"}


def rows(doc: dict, view: str) -> list[dict]:
    return doc[view]["rows"]


def table_row(stdout: str, title: str, lever: str) -> str:
    """The terminal line of `lever` in the table printed under `title`."""
    after = stdout[stdout.index(title):]
    return next(line for line in after.splitlines() if line.startswith(f"│ {lever} "))


def deploy_line(doc: dict) -> str:
    return next(s for s in doc["headline"] if s.startswith(("Deploy ", "No combination")))


def test_headline_comes_first_and_answers_with_numbers(default_report):
    out, doc = default_report.stdout, default_report.doc
    assert out.index("answer") < out.index("Same fleet")
    first = deploy_line(doc)
    assert re.search(r"\$\d+\.\d+ per million tokens", first)
    assert any("lever that buys most" in s for s in doc["headline"])
    assert any(s.startswith("Modelled, not measured") for s in doc["headline"])


def test_same_fleet_view_has_one_gpu_count_across_rows(default_report):
    doc = default_report.doc
    gpus = {row["gpus"] for row in rows(doc, "same_fleet")}
    assert gpus == {doc["numbers"]["fleet_gpus"]}
    sized = {row["lever"]: row for row in rows(doc, "sized_to_slo")}
    assert doc["numbers"]["fleet_gpus"] == sized["+agent-aware policy"]["gpus"]  # the size all levers need


def test_a_lever_missing_the_slo_gets_no_cost_presented_as_met(default_report):
    doc = default_report.doc
    # levers that miss: test_slo_branches.py, on reports built to miss (none does on the default report)
    for row in rows(doc, "sized_to_slo"):
        if row["slo_met"]:
            assert row["ttft_p90_s"] <= doc["numbers"]["slo_ttft_s"] and row["usd_per_mtok"] > 0
    for row in rows(doc, "capacity_per_gpu"):
        assert (row["usd_per_session_hour"] is None) == (row["sessions_per_replica"] == 0)


def test_the_slo_percentile_is_shown(default_report):
    doc, out = default_report.doc, default_report.stdout
    for view in VIEWS:
        assert all("ttft_p90_s" in row for row in rows(doc, view)), view
    assert all("ttft_p50_s" in r and "ttft_p99_s" in r for r in rows(doc, "same_fleet"))
    assert doc["columns"]["ttft_p90_s"]["label"] == "TTFT p90 s"
    assert out.count("p90") >= 3 and "TTFT p90 s" in html.unescape(default_report.html.read_text())


def test_the_default_model_takes_the_whole_trace_and_the_headline_says_why(default_report):
    """The default workload reaches ~500k tokens: the report runs on the first default model whose window holds
    it (not llama-3.1-8b, whose 131k window would leave over 40% of the requests out), on GPUs whose KV holds its
    longest request, so nothing is rejected."""
    doc, out = default_report.doc, default_report.stdout
    model = doc["headline"][0]
    assert model.startswith("Model: deepseek-v4-flash, the first of llama-3.1-8b") and "holds every request" in model
    assert doc["settings"]["context window"].startswith("every request fits the 1,048,576-token window")
    assert doc["context_window"]["over"] == 0 and doc["context_window"]["served"] == doc["numbers"]["requests"]
    header = out[out.index("Same fleet"):].split("┡", 1)[0]
    assert "rejected" in header
    assert all(row["requests_rejected"] == 0 for row in rows(doc, "same_fleet"))
    assert not any(n.startswith("rejected:") for n in doc["same_fleet"]["notes"])


def test_json_values_are_numbers_in_the_unit_their_key_names(default_report):
    doc = default_report.doc
    for view in (*VIEWS, "api_providers", "break_even"):
        for row in rows(doc, view):
            for key, value in row.items():
                if key in TEXT:
                    assert isinstance(value, str)
                else:
                    assert value is None or isinstance(value, bool | int | float), (view, key, value)
                    assert key in doc["columns"] or key == "at_limit", key
    for row in rows(doc, "same_fleet"):
        assert 0 <= row["hit_pct"] <= 100
        assert row["hit_pct"] == pytest.approx(row["hit_hbm_pct"] + row["hit_dram_pct"] + row["hit_disk_pct"])
    assert all(isinstance(v, int | float) for v in doc["numbers"].values())


def test_terminal_html_and_json_share_one_vocabulary(default_report):
    doc = default_report.doc
    raw = default_report.html.read_text()
    page = html.unescape(raw)
    for view in VIEWS:
        keys = list(rows(doc, view)[0])
        table = raw.split(f"id='{view}'")[1].split("</table>")[0]
        heads = [html.unescape(h) for h in re.findall(r"<th title='[^']*'>([^<]+)</th>", table)]
        assert heads == [doc["columns"][k]["label"] for k in keys if k != "at_limit"]
    flat = " ".join(default_report.stdout.split())
    for label in ("hit %", "rejected", "$/Mtok", "sessions per GPU", "$ per session-hour"):
        assert label in flat and label in page


def test_capacity_says_where_the_trace_cannot_load_a_replica_further(default_report):
    """DeepSeek V4-Flash keeps ~6 kB of KV a token: from the prefix cache on, one replica serves every session
    the trace has within the SLO, so capacity is a lower bound, marked as such in the table and the notes."""
    doc, out = default_report.doc, default_report.stdout
    sized = {r["lever"]: r for r in rows(doc, "sized_to_slo")}
    cap = {r["lever"]: r for r in rows(doc, "capacity_per_gpu")}
    assert cap["+prefix cache (HBM)"]["sessions_per_gpu"] > 0
    for lever, row in cap.items():
        if row["at_limit"]:
            assert "≥ " in table_row(out, "Capacity per GPU", lever)
            assert any(n.startswith(f"{lever}: still within the SLO") for n in doc["capacity_per_gpu"]["notes"])
    for lever, row in cap.items():
        if row["sessions_per_gpu"]:
            price = doc["numbers"]["usd_per_gpu_hour"] / row["sessions_per_gpu"]
            assert row["usd_per_session_hour"] == pytest.approx(price)
        if row["sessions_per_gpu"] == 0:
            note = next(n for n in doc["capacity_per_gpu"]["notes"] if n.startswith(f"{lever}: no load meets"))
            assert ("together meet it" in note) == sized[lever]["slo_met"]


def test_the_load_simulated_is_the_load_offered(default_report):
    """40 sessions offered as 20 concurrent ones start warm: as many are open at once on average as offered, and
    the headline has nothing to excuse."""
    doc = default_report.doc
    mean, peak = doc["numbers"]["open_sessions_mean"], doc["numbers"]["open_sessions_peak"]
    assert mean == pytest.approx(doc["numbers"]["offered_concurrent_sessions"], rel=0.1) and mean <= peak
    assert "lower bound" not in deploy_line(doc)
    assert f"{mean:.1f} on average, {peak} at peak" in doc["settings"]["arrivals"]

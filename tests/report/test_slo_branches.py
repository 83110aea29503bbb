"""Every branch of the report's SLO logic, on reports where it is really taken.

The default report meets the SLO with every lever, so a check that "a lever that misses gets no cost" passes
there whatever the code does. These reports are built to miss: a 12-session trace of llama-3.1-8b on an H200
under an SLO the levers without a prefix cache cannot meet at any size (their p90 prompt alone takes longer to
prefill: the floor branch), one where a lever meets it on a fleet while others miss on up to 8 replicas (the
fleet-search branch beside a priced row), and one no lever meets on up to 4 replicas (capacity 0 on one
replica for every lever). Each scenario first asserts that the branch it is for is taken, then that
the terminal, the HTML and the JSON say the same thing about it.
"""

from __future__ import annotations

import html
import re

import pytest

from tests.report.conftest import ReportRun, run_report

SCENARIOS = {
    "floor": "model=llama-3.1-8b,slo_ttft_s=5",  # baseline and IO-aware miss by their prefill floor; the rest meet
    "fleet": "model=llama-3.1-8b,slo_ttft_s=2,max_replicas=8",  # one lever meets on 2 GPUs, later ones on none
    "unmet": "model=llama-3.1-8b,slo_ttft_s=0.5,max_replicas=4",  # nothing meets, on 4 replicas or on one
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def missed(request, tmp_path_factory) -> tuple[str, ReportRun]:
    out = tmp_path_factory.mktemp(request.param) / "report.html"
    return request.param, run_report(out, "--gen-sessions", "12", "--deployment", SCENARIOS[request.param])


def rows(doc: dict, view: str) -> dict[str, dict]:
    return {row["lever"]: row for row in doc[view]["rows"]}


def terminal_cells(stdout: str, title: str, lever: str) -> list[str]:
    """The cells of `lever`'s line in the terminal table printed under `title`."""
    after = stdout[stdout.index(title):]
    line = next(line for line in after.splitlines() if line.startswith(f"│ {lever} "))
    return [c.strip() for c in line.strip("│").split("│")]


def html_cells(run: ReportRun, view: str, lever: str) -> list[str]:
    table = run.html.read_text().split(f"id='{view}'")[1].split("</table>")[0]
    row = next(r for r in table.split("<tr>") if r.startswith(f"<td>{html.escape(lever, quote=True)}</td>"))
    return [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", row)]


def notes_of(doc: dict, view: str, lever: str, start: str) -> list[str]:
    return [n for n in doc[view]["notes"] if n.startswith(f"{lever}: {start}")]


def test_each_scenario_takes_the_branch_it_is_for(missed):
    name, run = missed
    doc, slo = run.doc, run.doc["numbers"]["slo_ttft_s"]
    sized, cap = rows(doc, "sized_to_slo"), rows(doc, "capacity_per_gpu")
    reasons = {lever: notes_of(doc, "sized_to_slo", lever, "SLO missed") for lever in sized}
    assert any("to prefill on an idle GPU" in n for ns in reasons.values() for n in ns), name
    assert not sized["baseline"]["slo_met"] and cap["baseline"]["sessions_per_gpu"] == 0
    if name == "floor":
        assert sized["+prefix cache (HBM)"]["slo_met"] and sized["+agent-aware policy"]["slo_met"]
        assert cap["+prefix cache (HBM)"]["sessions_per_gpu"] > 0
    elif name == "fleet":
        assert any(row["slo_met"] for row in sized.values())
        assert any("no fleet up to 8 replicas meets it" in n for ns in reasons.values() for n in ns)
    else:
        assert not any(row["slo_met"] for row in sized.values())
        assert any("no fleet up to 4 replicas meets it" in n for ns in reasons.values() for n in ns)
        assert all(row["sessions_per_gpu"] == 0 for row in cap.values())
        assert all(row["ttft_p90_s"] > slo for row in cap.values())


def test_a_lever_that_misses_the_slo_has_no_size_no_cost_and_says_why(missed):
    _, run = missed
    doc, slo = run.doc, run.doc["numbers"]["slo_ttft_s"]
    for lever, row in rows(doc, "sized_to_slo").items():
        said = notes_of(doc, "sized_to_slo", lever, "SLO missed, no size or cost — ")
        term = terminal_cells(run.stdout, "Sized to the SLO", lever)
        page = html_cells(run, "sized_to_slo", lever)
        if row["slo_met"]:
            assert row["ttft_p90_s"] <= slo and row["gpus"] >= 1 and not said
            assert row["usd_per_mtok"] > 0 and term[5] != "—" != page[5]
            assert "MISSED" not in term and "MISSED" not in page
            continue
        assert row["ttft_p90_s"] > slo and len(said) == 1, lever
        priced = {k: v for k, v in row.items() if k.startswith("usd_") or k in ("gpus", "hit_pct")}
        assert set(priced.values()) == {None}, (lever, priced)
        for cells in (term, page):  # lever, GPUs, TTFT, SLO met, then nothing but dashes
            assert cells[3] == "MISSED" and cells[1] == "—" and set(cells[4:]) == {"—"}, (lever, cells)


def test_a_lever_no_load_serves_within_the_slo_has_no_price_per_session(missed):
    _, run = missed
    doc, slo = run.doc, run.doc["numbers"]["slo_ttft_s"]
    sized = rows(doc, "sized_to_slo")
    for lever, row in rows(doc, "capacity_per_gpu").items():
        said = notes_of(doc, "capacity_per_gpu", lever, "no load meets the SLO on one replica — ")
        term = terminal_cells(run.stdout, "Capacity per GPU", lever)
        page = html_cells(run, "capacity_per_gpu", lever)
        if row["sessions_per_gpu"] == 0:
            assert row["usd_per_session_hour"] is None and row["ttft_p90_s"] > slo and len(said) == 1, lever
            assert ("together meet it" in said[0]) == sized[lever]["slo_met"]
            assert term[3] == page[3] == "—" and not row["at_limit"]
        else:
            assert not said and row["ttft_p90_s"] <= slo
            assert row["usd_per_session_hour"] == pytest.approx(doc["numbers"]["usd_per_gpu_hour"]
                                                                / row["sessions_per_gpu"])
            assert term[3] != "—" and page[3] != "—"


def test_the_headline_prices_only_a_fleet_that_meets_the_slo(missed):
    _, run = missed
    doc = run.doc
    top = doc["sized_to_slo"]["rows"][-1]
    deploy = next(s for s in doc["headline"] if s.startswith(("Deploy ", "No combination")))
    assert deploy.startswith("Deploy ") == top["slo_met"]
    if top["slo_met"]:
        assert f"${top['usd_per_mtok']:.3f} per million tokens" in deploy
    else:
        assert "$" not in deploy and "no fleet up to" in deploy
    priced = any(row["slo_met"] for row in doc["sized_to_slo"]["rows"])
    assert ("No lever brings any fleet size within the SLO." in doc["headline"]) == (not priced)
    base = next(s for s in doc["headline"] if s.startswith("The baseline"))
    assert "meets the SLO at no fleet size" in base and "to prefill on an idle GPU" in base
    assert ("without it no fleet meets the SLO" in " ".join(doc["headline"])) == priced

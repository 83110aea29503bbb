"""The report's plots, as PNG bytes (matplotlib, headless): what each lever costs and buys when sized to the SLO,
sessions per GPU, the same fleet's TTFT, and the traffic at API prices."""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agentkv.report.views import View


def figures(views: dict[str, View], slo_s: float) -> list[tuple[str, bytes]]:
    out = [_load(views["cost_vs_load"]), _sized(views["sized_to_slo"]), _capacity(views["capacity_per_gpu"]),
           _ttft(views["same_fleet"], slo_s)]
    if views["api_providers"].rows:
        out.append(_providers(views["api_providers"]))
    return out


def _load(view: View) -> tuple[str, bytes]:
    """$/Mtok against concurrent sessions, log-log: a line per lever (where it meets the SLO), a dashed line per
    API of the same model."""
    keys = [c.key for c in view.columns if c.key.startswith("usd_per_mtok_at_")]
    loads = [int(k.split("_")[4]) for k in keys]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    for r in view.rows:
        xs = [n for n, k in zip(loads, keys, strict=True) if r.get(k) is not None]
        ys = [r[k] for k in keys if r.get(k) is not None]
        api = str(r["lever"]).startswith("API ")
        if xs:
            ax.plot(xs, ys, "--" if api else "o-", label=str(r["lever"])[:60], linewidth=2 if api else 1,
                    markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent agent sessions")
    ax.set_ylabel("$ per million tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the lines fill the axes
    ax.set_title("Cost against load: self-hosted levers vs the same model's APIs")
    return "$/Mtok against load per lever, and the APIs of the same model (dashed)", _png(fig)


def _names(view: View) -> list[str]:
    return ["\n".join(textwrap.wrap(str(r["lever"]).lstrip("+"), 11)) for r in view.rows]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _sized(view: View) -> tuple[str, bytes]:
    names, rows = _names(view), view.rows
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    cost = [r["usd_per_mtok"] or 0.0 for r in rows]
    ax.bar(names, cost, color="tab:blue", label="$/Mtok, all tokens")
    for i, r in enumerate(rows):
        if not r["slo_met"]:
            ax.text(i, 0, "SLO\nmissed:\nno size", ha="center", va="bottom", fontsize=8, color="tab:red")
    ax.set_ylabel("$ per million tokens")
    ax2 = ax.twinx()
    ax2.plot([n for n, r in zip(names, rows, strict=True) if r["slo_met"]],
             [r["gpus"] for r in rows if r["slo_met"]], "o-", color="tab:red")
    ax2.set_ylabel("GPUs needed", color="tab:red")
    ax2.set_ylim(bottom=0)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("Sized to the SLO: GPUs and $/Mtok per lever")
    return "GPUs and $/Mtok per lever, each sized to the SLO", _png(fig)


def _capacity(view: View) -> tuple[str, bytes]:
    return "Sessions per GPU within the SLO, and $ per session-hour", _png(capacity_figure(view))


def capacity_figure(view: View):
    names, rows = _names(view), view.rows
    fig, ax = plt.subplots(figsize=(9, 3.4), dpi=100)
    per = [r["sessions_per_gpu"] or 0.0 for r in rows]
    bound = [bool(r["at_limit"]) for r in rows]  # the most the trace could load: a lower bound, drawn open
    bars = ax.bar(names, per, color=["white" if b else "tab:green" for b in bound], edgecolor="tab:green",
                  hatch=["//" if b else "" for b in bound])
    for b, r, low in zip(bars, rows, bound, strict=True):
        usd = r["usd_per_session_hour"]
        label = ((f"≥ {b.get_height():.3g} sessions\n≤ " if low else "") + f"${usd:.2f}/session-h") if usd \
            else "SLO missed"
        ax.annotate(("↑ " if low else "") + label, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=7)
    if any(bound):
        ax.bar([names[bound.index(True)]], [0], color="white", edgecolor="tab:green", hatch="//",
               label="lower bound: the trace has too few sessions to load it further")
        ax.set_ylim(0, 1.45 * max(per))  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("concurrent sessions per GPU")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title("Capacity: agent sessions one GPU serves within the SLO")
    return fig


def _ttft(view: View, slo_s: float) -> tuple[str, bytes]:
    names, rows = _names(view), view.rows
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    for key, mark in (("ttft_p50_s", "o-"), ("ttft_p90_s", "s-"), ("ttft_p99_s", "^-")):
        ax.plot(names, [r[key] for r in rows], mark, label=key.removeprefix("ttft_").removesuffix("_s"))
    ax.axhline(slo_s, color="tab:red", linestyle="--", label=f"SLO {slo_s:g} s")
    ax.set_yscale("log")
    ax.set_ylabel("TTFT, seconds")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"Same fleet ({rows[0]['gpus']} GPUs): time to first token per lever")
    return "Time to first token per lever on the same fleet", _png(fig)


def _providers(view: View) -> tuple[str, bytes]:
    rows = view.rows
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    names = [str(r["provider"]) for r in rows]
    ax.bar(names, [r["usd_no_cache"] for r in rows], label="no caching", color="lightgrey")
    ax.bar(names, [r["usd_with_cache"] for r in rows], label="with caching", color="tab:green")
    ax.set_ylabel("$ for the whole trace")
    ax.legend(fontsize=8)
    ax.set_title("The same traffic at API prices")
    return "The same traffic at API prices", _png(fig)

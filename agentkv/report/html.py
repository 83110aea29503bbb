"""`report.html`: the ladder table, provider prices, plan break-even, and PNG plots beside it."""

from __future__ import annotations

import html
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from agentkv.cost.plans import BreakEven
from agentkv.cost.providers import ProviderCost
from agentkv.report.ladder import RungResult


def plots(results: list[RungResult], providers: list[ProviderCost], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    names = ["\n".join(textwrap.wrap(r.rung.name, 12)) for r in results]
    rows = [r.row for r in results]
    files = []

    def save(fig, name: str) -> None:
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        files.append(path)

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.bar(names, [row["usd_per_mtok"] for row in rows], color="tab:blue")
    ax.set_ylabel("self-hosted $ per million tokens")
    ax2 = ax.twinx()
    ax2.plot(names, [row["gpus"] for row in rows], "o-", color="tab:red")
    ax2.set_ylabel("GPUs needed", color="tab:red")
    ax.set_title("What each lever buys: cost and GPUs at the TTFT SLO")
    ax.tick_params(axis="x", labelsize=7)
    save(fig, "cost_and_gpus.png")

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    ax.plot(names, [row["ttft_p50_s"] for row in rows], "o-", label="TTFT p50")
    ax.plot(names, [row["ttft_p99_s"] for row in rows], "s-", label="TTFT p99")
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.legend()
    ax.grid(True, alpha=0.3)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Time to first token at each rung's size")
    save(fig, "ttft.png")

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    tiers = ["gpu", "dram", "disk"]
    bottom = [0.0] * len(results)
    for t, tier in enumerate(tiers):
        share = []
        for r in results:
            res = r.result
            total = max(float(res.prompt[res.served].sum()), 1.0)
            share.append(100 * float(res.cached[res.served, t].sum()) / total if res.cached.shape[1] > t else 0.0)
        ax.bar(names, share, bottom=bottom, label=f"hits from {tier}")
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    ax.set_ylabel("% of prompt tokens served from cache")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Prefix-cache hit rate by tier")
    save(fig, "hit_rate.png")

    if providers:
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
        ax.bar([p.name for p in providers], [p.usd_no_cache for p in providers], label="no caching", color="lightgrey")
        ax.bar([p.name for p in providers], [p.usd for p in providers], label="with caching", color="tab:green")
        ax.set_ylabel("$ for the whole trace")
        ax.legend()
        ax.set_title("The same trace at API prices")
        save(fig, "providers.png")
    return files


def write_html(path: str, title: str, meta: dict[str, object], results: list[RungResult],
               providers: list[ProviderCost], plans: list[BreakEven], images: list[str]) -> None:
    esc = html.escape
    ladder_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(_fmt(k, v))}</td>" for k, v in r.row.items()) + "</tr>" for r in results
    )
    ladder_head = "".join(f"<th>{esc(k)}</th>" for k in results[0].row) if results else ""
    prov = "".join(
        f"<tr><td>{esc(p.name)}</td><td>{100 * p.hit_rate:.1f}%</td><td>${p.usd:,.2f}</td><td>${p.usd_no_cache:,.2f}</td>"
        f"<td>{100 * p.saving:.1f}%</td><td>${p.usd_per_mtok:.3f}</td></tr>" for p in providers
    )
    plan_rows = "".join(
        f"<tr><td>{esc(b.plan)} (${b.usd_per_month:g}/month)</td><td>{esc(b.provider)}</td>"
        f"<td>${b.usd_per_session:.2f}</td><td>{b.sessions_per_month:.1f}</td><td>{b.input_mtok_per_month:,.0f}</td></tr>"
        for b in plans
    )
    meta_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in meta.items())
    folder = os.path.dirname(os.path.abspath(path))
    imgs = "".join(f'<p><img src="{esc(os.path.relpath(i, folder))}" alt="{esc(os.path.basename(i))}"></p>'
                   for i in images)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}img{{max-width:100%}}</style>
</head><body><h1>{esc(title)}</h1><table>{meta_rows}</table>
<h2>The mitigation ladder (self-hosted, each rung sized to the TTFT SLO)</h2>
<table><tr>{ladder_head}</tr>{ladder_rows}</table>
<h2>The same traffic at API providers</h2>
<table><tr><th>provider</th><th>cache hit</th><th>cost</th><th>without caching</th><th>saving</th><th>$/Mtok</th></tr>{prov}</table>
<h2>Flat-rate plan vs usage billing: break-even</h2>
<table><tr><th>plan</th><th>provider</th><th>$ per session</th><th>sessions/month to break even</th>
<th>input Mtok/month</th></tr>{plan_rows}</table>
<h2>Plots</h2>{imgs}</body></html>"""
    with open(path, "w") as f:
        f.write(doc)


def _fmt(key: str, v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if "rate" in key:
            return f"{100 * v:.1f}%"
        if "usd" in key:
            return f"${v:.3f}"
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)

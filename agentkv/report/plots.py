"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:  # the cache sweep's plot; the sweep itself is a driver above the report
    from agentkv.evaluate.sweep import SweepPoint


def hit_rate_vs_capacity(points: list[SweepPoint], infinite: float, path: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for policy in dict.fromkeys(p.policy for p in points):
        mine = [p for p in points if p.policy == policy]
        x = [p.result.capacity_tokens[0] / 1e3 for p in mine]
        y = [100 * p.result.hit_rate for p in mine]
        style = {"belady": dict(color="black", linestyle="--", marker="s")}.get(policy, dict(marker="o"))
        ax.plot(x, y, label="Belady (offline)" if policy == "belady" else policy, **style)
    ax.axhline(100 * infinite, color="grey", linestyle=":", label="infinite cache")
    ax.set_xscale("log")
    caps = sorted({p.result.capacity_tokens[0] / 1e3 for p in points})
    ax.set_xticks(caps, [f"{c:g}" for c in caps])
    ax.minorticks_off()
    ax.set_xlabel("GPU KV capacity (thousand tokens)")
    ax.set_ylabel("token hit rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""The replay's two pictures: TTFT over the run, and each session's cached share beside its prediction."""

from __future__ import annotations

import numpy as np

from agentkv.replay.results import measured
from agentkv.replay.runner import Record


def ttft_over_time(records: list[Record], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if not r.outcome.error and r.outcome.ttft == r.outcome.ttft]
    bad = [r for r in records if r.outcome.error]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if ok:
        share = np.array([r.outcome.cached_tokens / max(r.outcome.prompt_tokens, 1) if measured(r) else np.nan
                          for r in ok])
        pts = ax.scatter([r.sent for r in ok], [r.outcome.ttft for r in ok], c=share, cmap="viridis", vmin=0, vmax=1,
                         s=14)
        fig.colorbar(pts, ax=ax, label="cached share of the prompt")
    if bad:
        ax.scatter([r.sent for r in bad], [0.0] * len(bad), marker="x", color="red", s=20,
                   label=f"errors ({len(bad)})")
        ax.legend(loc="upper left")
    ax.set_xlabel("sent at (s after the replay began)")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cached_share_per_session(records: list[Record], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [r for r in records if measured(r)]
    names = list(dict.fromkeys(r.session for r in used))
    prompt = {n: 0 for n in names}
    cached = {n: 0 for n in names}
    predicted = {n: 0 for n in names}
    for r in used:
        prompt[r.session] += r.outcome.prompt_tokens
        cached[r.session] += r.outcome.cached_tokens
        predicted[r.session] += max(r.predicted_cached, 0)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5))
    ax.bar(x, [100 * cached[n] / max(prompt[n], 1) for n in names], color="tab:blue", label="measured")
    if used and all(r.predicted_cached >= 0 for r in used):
        ax.scatter(x, [100 * predicted[n] / max(prompt[n], 1) for n in names], color="tab:orange", marker="D", s=24,
                   zorder=3, label="predicted")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("cached tokens (% of prompt tokens)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

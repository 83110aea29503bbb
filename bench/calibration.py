"""Every published measurement beside agentkv's modelled figure and their ratio (published / modelled).

    python -m bench.calibration

The target band is 0.8-1.25; the table and the coefficients it fixes live in agentkv/sim/calibration.py.
"""

from __future__ import annotations

from agentkv.sim.calibration import MEASUREMENTS


def main() -> None:
    sources = list(dict.fromkeys((m.source, m.as_of) for m in MEASUREMENTS))
    print(f"{'workload':<92} {'published':>13} {'agentkv':>13} {'ratio':>5} src")
    for m in MEASUREMENTS:
        ok = "" if 0.8 <= m.ratio <= 1.25 else "  OUT OF BAND"
        print(f"{m.workload:<92} {m.published:>7g} {m.unit:<5} {m.modelled():>7.1f} {m.unit:<5} {m.ratio:>5.2f} "
              f"[{sources.index((m.source, m.as_of)) + 1}]{ok}")
    print()
    for i, (source, as_of) in enumerate(sources, 1):
        print(f"[{i}] {source} ({as_of})")


if __name__ == "__main__":
    main()

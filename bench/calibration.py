"""Every published measurement beside agentkv's modelled figure and their ratio (published / modelled), the rows
the coefficients are fitted on apart from the rows held back to validate them.

    python -m bench.calibration

The target band is 0.8-1.25; the table, the split and the coefficients it fixes live in agentkv/sim/calibration.py.
"""

from __future__ import annotations

from agentkv.sim.calibration import MEASUREMENTS, SPLIT, Measurement

HEADINGS = {"fit": "FIT (coefficients fitted on these)", "validation": "VALIDATION (held back)",
            "review": "REVIEWER CHECK (public measurements beyond the issue's, never fitted)"}


def _row(m: Measurement, sources: list[tuple[str, str]]) -> str:
    ok = "" if 0.8 <= m.ratio <= 1.25 else "  OUT OF BAND"
    return (f"{m.workload:<112} {m.published:>7g} {m.unit:<5} {m.modelled():>7.1f} {m.unit:<5} {m.ratio:>5.2f} "
            f"[{sources.index((m.source, m.as_of)) + 1}]{ok}")


def main() -> None:
    sources = list(dict.fromkeys((m.source, m.as_of) for m in MEASUREMENTS))
    moe = sum(m.moe for m in MEASUREMENTS)
    print(f"{len(MEASUREMENTS)} rows, {moe} on MoE models; split {SPLIT}")
    for split, heading in HEADINGS.items():
        rows = [m for m in MEASUREMENTS if m.split == split]
        inside = sum(0.8 <= m.ratio <= 1.25 for m in rows)
        print(f"\n{heading}: {len(rows)} rows, {inside} in 0.8-1.25")
        print(f"{'workload':<112} {'published':>13} {'agentkv':>13} {'ratio':>5} src")
        for m in rows:
            print(_row(m, sources))
            if m.out_of_band:
                print(f"    why: {m.out_of_band}")
    print()
    for i, (source, as_of) in enumerate(sources, 1):
        print(f"[{i}] {source} ({as_of})")


if __name__ == "__main__":
    main()

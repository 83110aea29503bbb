"""Every published measurement beside agentkv's modelled figure and their ratio (published / modelled).

    python -m bench.calibration

The target band is 0.8-1.25; the table and the overheads it fixes live in agentkv/sim/calibration.py.
"""

from __future__ import annotations

from agentkv.sim.calibration import MEASUREMENTS


def main() -> None:
    print(f"{'workload':<74} {'published':>10} {'agentkv':>9} {'ratio':>6}  source")
    for m in MEASUREMENTS:
        ok = "" if 0.8 <= m.ratio <= 1.25 else "  OUT OF BAND"
        print(f"{m.workload:<74} {m.published:>8g} {m.unit:<2}{m.modelled():>8.1f}{m.unit:<2}"
              f"{m.ratio:>5.2f}  {m.source}{ok}")


if __name__ == "__main__":
    main()

"""The step-cost model against published measurements (agentkv/sim/calibration.py): pure arithmetic, no timing."""

from __future__ import annotations

import pytest

from agentkv.sim.calibration import MEASUREMENTS


@pytest.mark.parametrize("m", MEASUREMENTS, ids=lambda m: m.workload)
def test_modelled_figure_is_within_the_band_of_the_published_one(m):
    assert 0.8 <= m.ratio <= 1.25, (m.published, m.modelled())


def test_every_measurement_names_its_source():
    assert all(m.source and m.unit for m in MEASUREMENTS)

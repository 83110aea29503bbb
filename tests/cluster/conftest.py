"""One local Ray cluster for every test here (Ray takes seconds to start on a small machine): two CPUs, as
`agentkv report --ray` starts one. Skipped where Ray is not installed (it is an extra: agentkv[ray])."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[None]:
    from agentkv.cluster.tasks import LOCAL, connect

    connect(LOCAL, num_cpus=2)
    yield
    ray.shutdown()

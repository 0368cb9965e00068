"""Shared fixtures.

``local_ray_head``: a real ``ray start --head --block`` of this test only, in its own
process group, on free ports with its own temp dir (see
darth_ray/distributed/cluster.py). Yields a ``LocalRayHead`` with

* ``.address``        GCS address for ``ray.init(address=...)`` / ``ray start --address``
* ``.dashboard_url``  ``http://127.0.0.1:<port>`` for ``ray job submit --address``
* ``.temp_dir``, ``.add_worker(num_cpus=..., resources=...)`` (another node, own group)

Teardown disconnects a driver still connected to it and stops only its groups.
Options through indirect parametrization, e.g.
``@pytest.mark.parametrize("local_ray_head", [{"num_cpus": 2}], indirect=True)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests run without `pip install -e .` too
    sys.path.insert(0, str(REPO))


@pytest.fixture
def local_ray_head(request):
    from darth_ray.distributed.cluster import start_ray_head

    kwargs = dict(getattr(request, "param", None) or {})
    head = start_ray_head(**kwargs)
    try:
        yield head
    finally:
        try:
            import ray

            if ray.is_initialized() and ray.get_runtime_context().gcs_address == head.address:
                ray.shutdown()
        finally:
            head.stop()

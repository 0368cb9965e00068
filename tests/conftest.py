"""Shared fixtures.

``local_ray_head``: a real ``ray start --head --block`` of this test only, in its own
process group, on free ports with its own temp dir (see
tests/ray_cluster.py). Yields a ``LocalRayHead`` with

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
    from ray_cluster import start_ray_head

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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 96x64, 6-frame benchmark (source + night, 2 val sequences) and a random-init small source checkpoint."""
    import torch

    from darth_ray.data.synth import SynthConfig, generate_benchmark
    from darth_ray.models.qdtrack import build_model, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    generate_benchmark(root / "bench", SynthConfig(domains=("source", "night"), train_sequences=1, val_sequences=2,
                                                   frames=6, width=96, height=64, people=3), progress=False)
    save_checkpoint(root / "source.pt", build_model("small"))
    return root


@pytest.fixture(scope="session")
def tiny_two_classes(tmp_path_factory):
    """People and balls: a 96x64, 6-frame night domain (1 val sequence; MOTChallenge folders and
    `night/annotations/val_cocofmt.json`, images under `night/val`) and a random-init 2-class small source model."""
    import dataclasses

    import torch

    from darth_ray.data.synth import CLASSES, SynthConfig, generate_benchmark
    from darth_ray.models.config import model_config
    from darth_ray.models.qdtrack import build_model, save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_two_classes")
    generate_benchmark(root / "bench", SynthConfig(domains=("night",), train_sequences=1, val_sequences=1, frames=6,
                                                   width=96, height=64, people=3, balls=2), progress=False)
    save_checkpoint(root / "source.pt", build_model(dataclasses.replace(model_config("small"), num_classes=2)),
                    {"classes": list(CLASSES)})
    return root

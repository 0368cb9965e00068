"""The embedded default's source model ships with the package: used when the benchmark and training settings are
the ones it was trained with, retrained when they differ."""
import dataclasses
import json
import shutil

import pytest
import torch

from darth_ray import embedded
from darth_ray.source_training import SourceTrainConfig


def test_the_packaged_model_is_used_when_settings_match_and_retrained_when_they_differ(tiny, tmp_path,
                                                                                       monkeypatch):
    config = SourceTrainConfig(max_steps=1)
    trained = embedded.ensure_source_model(tmp_path / "trained", tiny / "bench", config)
    packaged = embedded.package_source_model(trained, tiny / "bench", tmp_path / "packaged.pt")
    assert packaged.stat().st_size < 0.6 * trained.stat().st_size  # fp16 weights, no optimiser
    monkeypatch.setattr(embedded, "PACKAGED_SOURCE", packaged)
    calls = []

    def train_source(data, out, cfg, split):  # records, and trains as before
        calls.append(cfg)
        return real_train_source(data, out, cfg, split=split, show_progress=False)

    real_train_source = embedded.train_source
    monkeypatch.setattr(embedded, "train_source", train_source)

    used = embedded.ensure_source_model(tmp_path / "runs", tiny / "bench", config)
    assert calls == []  # no training
    original, unpacked = (torch.load(p, weights_only=True) for p in (trained, used))
    assert unpacked["train_config"] == original["train_config"]
    for name, weight in original["model"].items():
        expected = weight.half().float() if weight.is_floating_point() else weight
        assert unpacked["model"][name].dtype == weight.dtype and torch.equal(unpacked["model"][name], expected)
    assert json.loads((tmp_path / "runs" / "source" / "benchmark.json").read_text())["config"]["frames"] == 6
    # Other target domains, shift strength or val split: the same source frames, the packaged model again.
    bench = tmp_path / "other_targets"
    shutil.copytree(tiny / "bench", bench)
    manifest = json.loads((bench / "benchmark.json").read_text())
    manifest["config"].update(domains=["source", "crowd"], shift_strength=0.9, val_sequences=5)
    (bench / "benchmark.json").write_text(json.dumps(manifest))
    embedded.ensure_source_model(tmp_path / "runs_targets", bench, config)
    assert calls == []

    other = dataclasses.replace(config, photometric_prob=0.5)  # other training settings: trained anew
    embedded.ensure_source_model(tmp_path / "runs2", tiny / "bench", other)
    assert calls == [other]
    bench = tmp_path / "other_bench"  # another benchmark, same settings: trained anew
    shutil.copytree(tiny / "bench", bench)
    manifest = json.loads((bench / "benchmark.json").read_text())
    manifest["config"]["train_sequences"] += 1
    (bench / "benchmark.json").write_text(json.dumps(manifest))
    embedded.ensure_source_model(tmp_path / "runs3", bench, config)
    assert calls == [other, config]


@pytest.mark.skipif(not embedded.PACKAGED_SOURCE.is_file(), reason="no packaged source model")
def test_the_shipped_model_is_the_one_the_embedded_default_would_train():
    from darth_ray.data.synth import BENCHMARK_VERSION, source_split_key

    state = torch.load(embedded.PACKAGED_SOURCE, map_location="cpu", weights_only=True, mmap=True)
    assert SourceTrainConfig(**state["train_config"]) == embedded.SOURCE_TRAINING
    assert state["benchmark"] == source_split_key({"version": BENCHMARK_VERSION,
                                                   "config": embedded.BENCHMARK.to_dict()})
    assert all(w.dtype != torch.float32 for w in state["model"].values())   # fp16: small
    assert embedded.PACKAGED_SOURCE.stat().st_size < 30e6

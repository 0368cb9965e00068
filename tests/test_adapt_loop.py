"""The DARTH step and loop: gradients, EMA, empty pseudo-labels, exact resume, and the CLI end to end."""
import dataclasses
import json
import shutil

import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.adapt.loop import AdaptationRun
from darth_ray.cli import main
from darth_ray.data.mot import load_sequences
from darth_ray.models.qdtrack import build_model, load_checkpoint


def frames_of(tiny, n=2):
    seq = load_sequences(tiny / "bench" / "night", split="val")[0]
    return torch.stack([seq.load_image(f) for f in range(1, n + 1)])


def crafted_pseudo_labels(darth, frames):
    boxes = torch.tensor([[10.0, 10.0, 30.0, 50.0], [50.0, 8.0, 70.0, 48.0], [40.0, 20.0, 55.0, 60.0]])
    return [boxes.clone() for _ in range(len(frames))]


def test_step_trains_student_only_and_updates_teacher_by_ema(tiny, monkeypatch):
    monkeypatch.setattr(Darth, "pseudo_labels", crafted_pseudo_labels)
    source, _ = load_checkpoint(tiny / "source.pt")
    darth = Darth.from_source(source, DarthConfig(ema_momentum=0.25, lr=0.01))  # 2 frames per step, 1 worker
    m = 1 - 0.75 ** (2 / 16)  # the batch rule: 8 steps of 2 frames move the teacher as one step of 16
    teacher_before = {k: v.clone() for k, v in darth.teacher.state_dict().items()}
    losses = darth.step(frames_of(tiny), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["loss_contrastive"] > 0  # the crafted pseudo-boxes reach the track losses
    assert all(p.grad is None and not p.requires_grad for p in darth.teacher.parameters())
    student = darth.student.state_dict()
    changed = 0
    for name, after in darth.teacher.state_dict().items():
        if after.is_floating_point():
            expected = (1 - m) * teacher_before[name] + m * student[name]
            torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
            changed += int(not torch.equal(after, teacher_before[name]))
    assert changed > 0
    # frozen as published: stem and first stage get no gradient; all BN frozen
    backbone = darth.student.backbone
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert any(p.requires_grad for p in backbone.layer2.parameters())
    assert all(not m.training for m in darth.student.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_zero_pseudo_boxes_give_finite_losses(tiny, monkeypatch):
    monkeypatch.setattr(Darth, "pseudo_labels", lambda self, frames: [torch.zeros(0, 4)] * len(frames))
    source, _ = load_checkpoint(tiny / "source.pt")
    darth = Darth.from_source(source, DarthConfig())
    losses = darth.step(frames_of(tiny), torch.Generator().manual_seed(1))
    assert losses["loss_contrastive"] == 0.0
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_resume_continues_exactly(tiny, tmp_path):
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    cfg = DarthConfig(epochs=1, conf_thr=0.05)
    straight = AdaptationRun(tiny / "source.pt", sequences, frames, cfg)
    for _ in range(3):
        straight.run_step()
    first = AdaptationRun(tiny / "source.pt", sequences, frames, cfg)
    for _ in range(2):
        first.run_step()
    first.save(tmp_path / "state.pt")
    resumed = AdaptationRun(tiny / "source.pt", sequences, frames, cfg)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert resumed.step == 2 and resumed.batch_frames(2) == straight.batch_frames(2)
    resumed.run_step()
    for (name, a), b in zip(straight.method.student.state_dict().items(), resumed.method.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(straight.method.teacher.state_dict().values(), resumed.method.teacher.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_train_source_adapt_track(tiny, tmp_path, capsys):
    bench = tiny / "bench"
    assert main(["train-source", "--data", str(bench / "source"), "--split", "train", "--out", str(tmp_path / "src"),
                 "--max-steps", "2", "--checkpoint-every", "1", "-q"]) == 0
    # final.pt holds the model and what it was trained with, not the optimiser (last.pt resumes); the same weights
    final, last = (torch.load(tmp_path / "src" / name, weights_only=False) for name in ("final.pt", "last.pt"))
    assert {"optimizer", "scheduler", "rng"} <= set(last) and not {"optimizer", "scheduler", "rng"} & set(final)
    assert final["train_config"] == last["train_config"] and final["step"] == last["step"] == 2
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())
    assert (tmp_path / "src" / "final.pt").stat().st_size < 0.7 * (tmp_path / "src" / "last.pt").stat().st_size
    log = [json.loads(line) for line in (tmp_path / "src" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and {"loss_rpn_cls", "loss_track"} <= set(log[-1])

    out = tmp_path / "adapt"
    assert main(["adapt", "--source", str(tmp_path / "src" / "final.pt"), "--target", str(bench / "night"),
                 "--split", "val", "--out", str(out), "--epochs", "1", "--lr-steps", "1", "--conf-thr", "0.05",
                 "--target-bn-stats", "true", "--init-score-thr", "0.05", "--obj-score-thr", "0.05", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["darth_config"]["target_bn_stats"] is True
    assert summary["final_checkpoint"] == str(out / "final.pt")
    assert f"adapted student: {out / 'final.pt'}" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"synth-val-01", "synth-val-02", "COMBINED"}
    steps = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 7))  # 12 frames, 2 per step, 1 epoch
    assert (out / "results" / "synth-val-01.txt").is_file()
    for plot in ("losses.png", "metrics.png"):  # people look at these, next to the results
        assert (out / "plots" / plot).stat().st_size > 1000

    assert main(["track", "--checkpoint", str(out / "final.pt"), "--data", str(bench / "night"), "--split", "val",
                 "--out", str(tmp_path / "trk"), "--init-score-thr", "0.05", "--obj-score-thr", "0.05", "-q"]) == 0
    tracked = json.loads((tmp_path / "trk" / "metrics.json").read_text())
    # `track` with the adapted student reproduces the evaluation `adapt` wrote
    labelled = {k: v for k, v in metrics["COMBINED"].items() if not k.startswith("lf_")}  # adapt adds lf_*
    assert tracked["COMBINED"] == pytest.approx(labelled)

    assert main(["adapt", "--source", str(tmp_path / "src" / "final.pt"), "--target", str(bench / "night"),
                 "--split", "val", "--out", str(out), "--epochs", "2", "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other inputs or settings" in err and "epochs: 1 -> 2" in err and err.count("\n") == 1
    assert main(["adapt", "--source", str(tmp_path / "nope.pt"), "--target", str(bench / "night"),
                 "--split", "val", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "nope.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["adapt", "--source", str(tmp_path / "src" / "final.pt"), "--target", str(bench / "night"),
              "--out", str(tmp_path / "y"), "--target-bn-stats", "maybe"])
    assert "--target-bn-stats: expected true or false, got 'maybe'" in capsys.readouterr().err


def test_adapt_stops_at_a_non_finite_loss_with_the_state_before_it(tiny, tmp_path, capsys):
    out = tmp_path / "nan"
    assert main(["adapt", "--source", str(tiny / "source.pt"), "--target", str(tiny / "bench" / "night"),
                 "--split", "val", "--out", str(out), "--epochs", "1", "--lr-steps", "1", "--conf-thr", "0.05",
                 "--lr", "1e6", "--checkpoint-every", "1", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("darth-ray adapt: error: non-finite DARTH loss at step 2: ") and "Traceback" not in err
    assert err.rstrip().endswith(f"; last good checkpoint: {out / 'last.pt'} (step 1)")
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["student"].values())
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2] and "non-finite" in log[1]["error"]
    assert not (out / "final.pt").exists() and not (out / "metrics.json").exists()


def test_source_training_photometric_distortion_shared_by_key_and_reference(tiny, monkeypatch):
    from darth_ray import source_training

    seen = []
    original = source_training._load_pair_batch

    def spy(seqs, pairs, flip, colours, geometries):
        images, sizes, targets = original(seqs, pairs, flip, colours, geometries)
        seen.append((images, colours, [seqs[name].load_image(frames[0]) for name, *frames in pairs]))
        return images, sizes, targets

    monkeypatch.setattr(source_training, "_load_pair_batch", spy)
    cfg = source_training.SourceTrainConfig(max_steps=3, photometric_prob=1.0, flip_prob=0.0, batch_size=1)
    source_training.train_source(tiny / "bench" / "source", tiny / "src_photometric", cfg, split="train",
                                 show_progress=False)
    images, colours, plain_keys = seen[0]
    assert colours[0] is not None and not torch.equal(images[0], plain_keys[0])  # the key frame is distorted
    # with exactly the colour map given for this pair (key = images[0], reference = images[1])
    from darth_ray.data.photometric import apply_colour
    assert torch.equal(images[0], apply_colour(plain_keys[0], colours[0]))
    with pytest.raises(ValueError, match="photometric_prob"):
        source_training.SourceTrainConfig(photometric_prob=1.5)


def test_source_training_resume_refuses_other_settings(tiny, tmp_path):
    from darth_ray.io import InputError
    from darth_ray import source_training
    from darth_ray.models.qdtrack import load_checkpoint

    data, out = tiny / "bench" / "source", tmp_path / "src"
    cfg = source_training.SourceTrainConfig(max_steps=2, batch_size=1, checkpoint_every=1)
    source_training.train_source(data, out, cfg, split="train", show_progress=False)
    with pytest.raises(InputError, match=r"src/darth_run.json: .*src holds a run with other inputs or settings "
                                         r"\(lr: 0.02 -> 0.01; max_steps: 2 -> 3\)"):
        source_training.train_source(data, out, dataclasses.replace(cfg, lr=0.01, max_steps=3), split="train",
                                     show_progress=False)
    # how often it checkpoints changes nothing it computes: that resumes (and finds the run finished)
    before = load_checkpoint(out / "final.pt")[0].state_dict()
    source_training.train_source(data, out, dataclasses.replace(cfg, checkpoint_every=5), split="train",
                                 show_progress=False)
    after = load_checkpoint(out / "final.pt")[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_embedded_source_model_retrained_when_its_settings_change(tiny, tmp_path, monkeypatch):
    from darth_ray import embedded
    from darth_ray.models.qdtrack import load_checkpoint
    from darth_ray.source_training import SourceTrainConfig

    runs = tmp_path / "runs"
    old = SourceTrainConfig(max_steps=1, photometric_prob=0.0)
    first = embedded.ensure_source_model(runs, tiny / "bench", old)
    assert load_checkpoint(first)[1]["train_config"]["photometric_prob"] == 0.0
    mtime = first.stat().st_mtime_ns
    assert embedded.ensure_source_model(runs, tiny / "bench", old).stat().st_mtime_ns == mtime  # cached

    new = SourceTrainConfig(max_steps=1, photometric_prob=0.5)
    again = embedded.ensure_source_model(runs, tiny / "bench", new)
    assert load_checkpoint(again)[1]["train_config"]["photometric_prob"] == 0.5
    stale = runs / "source.stale" / "final.pt"
    assert load_checkpoint(stale)[1]["train_config"]["photometric_prob"] == 0.0  # kept, not deleted

    # Same settings, another benchmark (more train scenes, say): the cached model is not the one asked for.
    other = tmp_path / "other_bench"
    shutil.copytree(tiny / "bench", other)
    manifest = json.loads((other / "benchmark.json").read_text())
    manifest["config"]["train_sequences"] += 1
    (other / "benchmark.json").write_text(json.dumps(manifest))
    mtime = again.stat().st_mtime_ns
    assert embedded.ensure_source_model(runs, tiny / "bench", new).stat().st_mtime_ns == mtime  # still cached
    retrained = embedded.ensure_source_model(runs, other, new)
    assert retrained.stat().st_mtime_ns != mtime
    # What it was trained on: the benchmark's source frames (synth.source_split_key), not its target domains.
    from darth_ray.data.synth import source_split_key

    assert json.loads((runs / "source" / "benchmark.json").read_text()) == source_split_key(manifest)
    assert "domains" not in json.loads((runs / "source" / "benchmark.json").read_text())["config"]
    assert json.loads((runs / "source.stale" / "benchmark.json").read_text())["config"]["train_sequences"] == 1


def test_detections_of_one_model_embedded_by_another(tiny):
    """experiments/swap_heads.py relies on this: boxes and scores from `model`, embeddings from `embedder`."""
    from darth_ray.eval.track import detect_and_embed

    model, _ = load_checkpoint(tiny / "source.pt")
    torch.manual_seed(1)
    other = build_model("small").eval()
    model.eval()
    frames = frames_of(tiny)
    own = detect_and_embed(model, frames)
    swapped = detect_and_embed(model, frames, embedder=other)
    assert sum(len(d["boxes"]) for d in own) > 0
    with torch.no_grad():
        expected = other.embed(other.features(other.normalize(frames)), [d["boxes"] for d in own])
    for o, s, e in zip(own, swapped, expected):
        assert torch.equal(o["boxes"], s["boxes"]) and torch.equal(o["scores"], s["scores"])
        assert torch.allclose(s["embeds"], e) and not torch.allclose(s["embeds"], o["embeds"])
    assert all(torch.equal(o["embeds"], s["embeds"])
               for o, s in zip(own, detect_and_embed(model, frames, embedder=model)))

"""The adaptation methods behind `adapt --method`: what each step may change, on crafted inputs."""
import json

import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.adapt.kd import KD
from darth_ray.adapt.loop import AdaptationRun
from darth_ray.adapt.mean_teacher import MeanTeacher
from darth_ray.adapt.methods import METHODS
from darth_ray.adapt.tent import Tent
from darth_ray.cli import main
from darth_ray.data.mot import load_sequences
from darth_ray.models.qdtrack import load_checkpoint

CRAFTED_BOXES = torch.tensor([[10.0, 10.0, 30.0, 50.0], [50.0, 8.0, 70.0, 48.0], [40.0, 20.0, 55.0, 60.0]])


def frames_of(tiny, n=2):
    seq = load_sequences(tiny / "bench" / "night", split="val")[0]
    return torch.stack([seq.load_image(f) for f in range(1, n + 1)])


def night_run(tiny, method: str, **settings) -> AdaptationRun:
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    return AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(method=method, epochs=1, **settings))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def detections(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": torch.zeros(len(boxes), dtype=torch.long)}


def test_source_changes_nothing_and_loads_no_frames(tiny, monkeypatch):
    run = night_run(tiny, "source", target_bn_stats=True)  # the source model as it is: that would be AdaBN
    monkeypatch.setattr(AdaptationRun, "read_frames", lambda *_: pytest.fail("source loaded frames"))
    before = snapshot(run.method.student)
    assert run.method.optimizer is None and not run.method.target_bn_stats
    assert [set(run.run_step()) for _ in range(2)] == [{"step_time"}] * 2  # no losses
    assert run.step == 2 and changed(before, run.method.student) == set()


def test_adabn_changes_only_batchnorm_running_statistics(tiny):
    run = night_run(tiny, "adabn")
    assert run.method.target_bn_stats and not run.config.target_bn_stats  # AdaBN always estimates them
    before = snapshot(run.method.student)
    run.use_target_bn_statistics()
    run.run_step()
    moved = changed(before, run.method.student)
    bn_buffers = {f"{name}.{b}" for name, m in run.method.student.named_modules()
                  if isinstance(m, torch.nn.BatchNorm2d) for b in ("running_mean", "running_var")}
    assert moved and moved <= bn_buffers | {k.replace("running_mean", "num_batches_tracked") for k in bn_buffers}


def test_tent_changes_only_the_batchnorm_affine_parameters_it_names(tiny):
    source, _ = load_checkpoint(tiny / "source.pt")
    tent = Tent.from_source(source, DarthConfig(lr=0.05))
    names = {id(p): n for n, p in tent.student.named_parameters()}
    named = {names[id(p)] for p in tent.params}
    bn_affine = {f"{name}.{p}" for name, m in tent.student.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                 for p in ("weight", "bias")}
    assert named == bn_affine  # every backbone BN's weight and bias, nothing else
    assert {n for n, p in tent.student.named_parameters() if p.requires_grad} == named
    before = snapshot(tent.student)
    losses = tent.step(frames_of(tiny), torch.Generator().manual_seed(0))
    assert losses["loss_entropy"] > 0 and losses["loss_total"] == losses["loss_entropy"]
    moved = changed(before, tent.student)
    assert moved and moved <= named  # every other parameter and every buffer bit-identical
    assert all(not m.training for m in tent.student.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_mean_teacher_without_pseudo_boxes_has_a_zero_finite_loss(tiny, monkeypatch):
    monkeypatch.setattr(MeanTeacher, "pseudo_detections", lambda self, frames: [detections(torch.zeros(0, 4))] * 2)
    source, _ = load_checkpoint(tiny / "source.pt")
    mean_teacher = MeanTeacher.from_source(source, DarthConfig())
    losses = mean_teacher.step(frames_of(tiny), torch.Generator().manual_seed(0))
    assert losses["loss_total"] == 0.0 and all(v == 0.0 for v in losses.values())  # zero, and not NaN
    assert all(p.grad is not None and not p.grad.any() for p in mean_teacher.params)  # connected, zero gradients


def test_mean_teacher_trains_the_student_on_pseudo_boxes_and_moves_the_teacher(tiny, monkeypatch):
    monkeypatch.setattr(MeanTeacher, "pseudo_detections",
                        lambda self, frames: [detections(CRAFTED_BOXES.clone()) for _ in frames])
    source, _ = load_checkpoint(tiny / "source.pt")
    mean_teacher = MeanTeacher.from_source(source, DarthConfig(lr=0.01, ema_momentum=0.25))
    student, teacher = snapshot(mean_teacher.student), snapshot(mean_teacher.teacher)
    losses = mean_teacher.step(frames_of(tiny), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses["loss_rpn_cls"] > 0 and losses["loss_cls"] > 0 and losses["loss_track"] > 0
    assert any(k.startswith("rpn.") for k in changed(student, mean_teacher.student))  # the detector learns
    assert any(k.startswith("embed_head.") for k in changed(student, mean_teacher.student))  # and the track head
    assert changed(teacher, mean_teacher.teacher)  # by EMA


def test_kd_is_darth_without_the_contrastive_loss(tiny, monkeypatch):
    pseudo_labels = lambda self, frames: [CRAFTED_BOXES.clone() for _ in frames]  # noqa: E731
    monkeypatch.setattr(Darth, "pseudo_labels", pseudo_labels)
    source, _ = load_checkpoint(tiny / "source.pt")
    config = DarthConfig(rpn_weight=0.3, roi_weight=0.7)
    frames = frames_of(tiny)
    darth = Darth.from_source(source, config).losses(frames, torch.Generator().manual_seed(3))
    kd = KD.from_source(source, config).losses(frames, torch.Generator().manual_seed(3))
    assert set(kd) == {"loss_rpn", "loss_roi", "loss_total"} and darth["loss_contrastive"] > 0
    assert torch.equal(kd["loss_rpn"], darth["loss_rpn"]) and torch.equal(kd["loss_roi"], darth["loss_roi"])
    assert torch.equal(kd["loss_total"], 0.3 * darth["loss_rpn"] + 0.7 * darth["loss_roi"])


def test_every_method_is_a_config_value_and_darth_the_default(tiny):
    assert list(METHODS) == ["source", "adabn", "tent", "mean_teacher", "kd", "darth"]
    assert type(night_run(tiny, "darth").method) is Darth and DarthConfig().method == "darth"
    with pytest.raises(ValueError, match="method must be one of source, adabn, tent, mean_teacher, kd, darth, "
                                         "got 'bogus'"):
        DarthConfig.from_dict({"method": "bogus"})


def test_cli_method_is_recorded_and_a_resume_with_another_is_refused(tiny, tmp_path, capsys):
    args = ["adapt", "--source", str(tiny / "source.pt"), "--target", str(tiny / "bench" / "night"), "--split",
            "val", "--out", str(tmp_path / "out"), "--epochs", "1", "-q"]
    assert main(args + ["--method", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "method must be one of source, adabn, tent, mean_teacher, kd, darth, got 'bogus'" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert main(args + ["--method", "source"]) == 0
    assert json.loads((tmp_path / "out" / "darth_run.json").read_text())["provenance"]["method"] == "source"
    combined = json.loads((tmp_path / "out" / "metrics.json").read_text())["COMBINED"]
    assert combined["lf_agreement"] == 1.0  # the source model compared with itself
    assert all(0.0 <= combined[k] <= 1.0 for k in ("lf_stability", "lf_confidence", "lf_long_tracks"))
    out = capsys.readouterr().out
    assert "source model:" in out and "label-free: lf_agreement 1.000  lf_stability" in out
    assert sorted(p.name for p in (tmp_path / "out" / "plots").iterdir()) == ["metrics.png"]  # no losses to plot
    assert main(args + ["--method", "adabn"]) == 2
    assert "method: source -> adabn" in capsys.readouterr().err


def test_tune_searches_the_method_as_a_categorical(tiny):
    from ray import tune

    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import check_search_space

    loop = TrainLoopConfig(source=str(tiny / "source.pt"), target=str(tiny / "bench" / "night"))
    check_search_space(loop, {"darth": {"method": tune.choice(list(METHODS))}})
    with pytest.raises(ValueError, match="search space darth.method: 'bogus' is out of range"):
        check_search_space(loop, {"darth": {"method": tune.choice(["tent", "bogus"])}})
    assert TrainLoopConfig.from_dict({**loop.to_dict(), "darth": {"method": "tent"}}).darth.method == "tent"


def test_tune_dance_runs_every_trial_with_the_method_asked_for(capsys):
    from experiments import tune_dance

    assert tune_dance.base_darth_config(tune_dance.parse_args(["--method", "tent"]))["method"] == "tent"
    assert "method" not in tune_dance.base_darth_config(tune_dance.parse_args([]))  # DarthConfig's default, darth
    with pytest.raises(SystemExit):
        tune_dance.parse_args(["--method", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_wandb_logs_the_evaluations_of_a_method_without_losses():
    from types import SimpleNamespace

    from darth_ray.distributed.train import EVAL_METRICS
    from darth_ray.distributed.tune import WandbCallback

    logged = []
    logger = SimpleNamespace(log_step=lambda *a: logged.append(("step", *a)),
                             log_eval=lambda step, metrics: logged.append(("eval", step, metrics)) or set())
    callback = WandbCallback({}, "exp", "/nowhere", workers=1)
    callback._logger = lambda trial: logger
    metrics = {name: 50.0 + i for i, name in enumerate(EVAL_METRICS)}
    callback.on_trial_result(0, [], SimpleNamespace(trial_id="t"), {"step": 6, "evaluated": True, **metrics})
    assert logged == [("eval", 6, metrics)]  # source/adabn report no losses, and no lr
    callback.on_trial_result(0, [], SimpleNamespace(trial_id="t"), {"step": 7, "loss_total": 1.0, "lr": 0.1})
    assert logged[-1] == ("step", 7, {"loss_total": 1.0}, 0.1)

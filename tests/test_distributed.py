"""Ray Train and Tune around DARTH: sharded workers stay in sync, sharded evaluation equals a single process,
a killed worker resumes from its last checkpoint, and a Tune experiment logs one W&B run per trial and resumes."""
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import cv2
import pytest

from ray import tune

from darth_ray.adapt.config import DarthConfig
from darth_ray.eval.track import track_and_score, track_sequences
from darth_ray.data.dataset import load_dataset
from darth_ray.data.mot import load_sequences
from darth_ray.adapt.loop import NonFiniteLossError
from darth_ray.distributed.train import EVAL_METRICS, PROGRESS_FILE, STATE_FILE, TrainLoopConfig
from darth_ray.eval.label_free import LABEL_FREE_METRICS, score_without_labels
from darth_ray.distributed.tune import (EXPERIMENT_FILE, ExperimentConfig, experiment_settings, fit_trial,
                                        run_experiment, settings_changes)
from darth_ray.io import InputError
from wandb_runs import find_offline_runs, read_finished_run
from darth_ray.eval.metrics import CLASS_MEANS, COMBINED, evaluate_dataset
from darth_ray.models.qdtrack import load_checkpoint

pytestmark = pytest.mark.slow
LOW = {"init_score_thr": 0.05, "obj_score_thr": 0.05}  # a random-init model still produces tracks


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from darth_ray.distributed.local_ray import use_private_auth_token

    # With the dashboard: Ray Train's placement-group cleaner needs the State API to free the workers' CPUs of a
    # trial whose controller Tune tears down (without it they stay reserved and later trials never start).
    use_private_auth_token()  # no ~/.ray/auth_token left behind
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def loop_config(tiny, darth: dict | None = None, **overrides) -> TrainLoopConfig:
    darth = DarthConfig(**(darth or {"epochs": 1, "lr_steps": (1,), "conf_thr": 0.05}))
    base = dict(source=str(tiny / "source.pt"), target=str(tiny / "bench" / "night"), split="val", darth=darth,
                tracker=LOW, checkpoint_every=2)
    return TrainLoopConfig(**{**base, **overrides})


def test_two_workers_stay_in_sync_and_sharded_eval_equals_single_process(tiny, tmp_path, local_ray):
    import torch

    # Target BN statistics too: each worker estimates them on its own shard, so only pooling keeps ranks in sync.
    darth = {"epochs": 1, "lr_steps": (1,), "conf_thr": 0.05, "target_bn_stats": True}
    result = fit_trial(loop_config(tiny, darth=darth), workers=2, gpus_per_worker=0, storage_path=str(tmp_path),
                       name="two")
    m = result.metrics
    assert m["step"] == 3  # 12 frames -> 6 per worker -> 3 steps of 2 frames
    assert m["ranks_in_sync"] is True
    with result.checkpoint.as_directory() as d:
        student, _ = load_checkpoint(Path(d) / "final.pt")
        teacher, _ = load_checkpoint(Path(d) / "final.pt")
        teacher.load_state_dict(torch.load(Path(d) / STATE_FILE, weights_only=False)["teacher"])
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    results, single = track_and_score(student, sequences, LOW)
    assert single[COMBINED]["FP"] + single[COMBINED]["DetA"] > 0  # non-trivial output to compare
    # the label-free scores too, the agreement's with the EMA teacher, pooled over the two workers' sequences
    label_free = score_without_labels(student, teacher, sequences, results)
    assert {k: m[k] for k in LABEL_FREE_METRICS} == pytest.approx(label_free)
    # One class: its means (mHOTA, mMOTA, mIDF1) are the overall values, reported all the same (Tune may rank by them)
    expected = {**{mean: single[COMBINED][overall] for mean, overall in CLASS_MEANS.items()}, **single[COMBINED]}
    for key in EVAL_METRICS:
        assert m[key] == expected[key], key
    assert m["best_mHOTA"] == m["mHOTA"] == m["HOTA"]


def test_a_two_class_coco_video_target_reports_the_class_means_of_its_final_student(tiny_two_classes, tmp_path,
                                                                                       local_ray):
    # Read as `darth-ray adapt` reads it (--images, --classes), scored per class as `evaluate` scores the student's
    # written results.
    coco, images = tiny_two_classes / "bench" / "night" / "annotations" / "val_cocofmt.json", \
        tiny_two_classes / "bench" / "night" / "val"
    loop = TrainLoopConfig(source=str(tiny_two_classes / "source.pt"), target=str(coco), images=str(images),
                           classes=("pedestrian", "ball"), darth=DarthConfig(epochs=1, lr_steps=(1,), conf_thr=0.05),
                           tracker=LOW, checkpoint_every=3)
    result = fit_trial(loop, workers=1, gpus_per_worker=0, storage_path=str(tmp_path), name="coco")
    m = result.metrics
    assert result.error is None and m["step"] == 3  # 6 frames, 2 per step
    with result.checkpoint.as_directory() as d:
        student, _ = load_checkpoint(Path(d) / "final.pt")
    sequences, _ = load_dataset(coco, images=images, classes=["pedestrian", "ball"])
    track_sequences(student, sequences, tmp_path / "results", LOW, show_progress=False)
    report = evaluate_dataset(coco, tmp_path / "results", images=images, classes=["pedestrian", "ball"])
    expected = report.sequences[COMBINED]
    assert set(report.classes) == {"pedestrian", "ball", "AVERAGE"}
    assert expected["mHOTA"] != expected["HOTA"]  # two classes: their mean is not the pooled value
    for key in EVAL_METRICS:
        assert m[key] == expected[key], key
    assert m["best_mHOTA"] == m["mHOTA"] and m["best_HOTA"] == m["HOTA"]


def test_an_experiment_ranks_by_its_metric_and_records_it_with_the_dataset_options(tiny_two_classes, tmp_path,
                                                                                   monkeypatch):
    import darth_ray.distributed.tune as tune_module

    built = {}

    class Tuner:  # records what run_experiment asks Tune for, runs nothing
        can_restore = staticmethod(lambda path: False)

        def __init__(self, trainable, param_space, tune_config, run_config):
            built.update(param_space=param_space, tune_config=tune_config)

        def fit(self):
            return "grid"

    monkeypatch.setattr(tune_module.tune, "Tuner", Tuner)
    coco = tiny_two_classes / "bench" / "night" / "annotations" / "val_cocofmt.json"
    loop = TrainLoopConfig(source=str(tiny_two_classes / "source.pt"), target=str(coco),
                           images=str(tiny_two_classes / "bench" / "night" / "val"), classes=("pedestrian", "ball"),
                           class_map={"pedestrian": "pedestrian"})
    exp = ExperimentConfig(name="m", storage_path=str(tmp_path), loop=loop, metric="mHOTA", scheduler="pbt",
                           search_space={"darth": {"lr": tune.loguniform(1e-3, 2e-3)}}, wandb=None)
    assert run_experiment(exp) == "grid"
    assert built["tune_config"].metric == "mHOTA" and built["tune_config"].mode == "max"
    assert built["param_space"]["classes"] == ("pedestrian", "ball")  # the trials read the data as asked
    stored = json.loads((tmp_path / "m" / EXPERIMENT_FILE).read_text())
    assert stored["metric"] == "mHOTA" and stored["classes"] == ["pedestrian", "ball"]
    assert stored["images"] == loop.images and stored["class_map"] == {"pedestrian": "pedestrian"}
    changes = settings_changes(stored, experiment_settings(dataclasses.replace(
        exp, metric="HOTA", loop=dataclasses.replace(loop, classes=("pedestrian",), class_map=None))))
    assert changes == ["class_map: {'pedestrian': 'pedestrian'} -> (unset)",
                       "classes: ['pedestrian', 'ball'] -> ['pedestrian']", "metric: mHOTA -> HOTA"]
    with pytest.raises(ValueError, match="ExperimentConfig.metric is invalid: 'MOTA'"):
        dataclasses.replace(exp, metric="MOTA")
    with pytest.raises(ValueError, match=r"invalid TrainLoopConfig: classes must be None or a non-empty tuple"):
        dataclasses.replace(loop, classes=())


def crashing_once(step: int, marker: str):
    """`train_func`, but the last rank's process dies once, right after DARTH step `step` (`marker` records it)."""
    def train_loop(config: dict):
        import os

        import ray.train

        from darth_ray.adapt.loop import AdaptationRun
        from darth_ray.distributed.train import train_func

        run_step, last_rank = AdaptationRun.run_step, ray.train.get_context().get_world_size() - 1

        def crash_after_step(run):
            losses = run_step(run)
            if run.step == step and run.rank == last_rank and not os.path.exists(marker):
                Path(marker).write_text(f"failed at step {run.step}\n")
                os._exit(1)  # a hard crash, like a killed worker process
            return losses

        AdaptationRun.run_step = crash_after_step  # this worker process only
        return train_func(config)

    return train_loop


def test_killed_worker_restarts_from_last_checkpoint(tiny, tmp_path, local_ray):
    marker = tmp_path / "failed"
    loop = loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05})
    result = fit_trial(loop, workers=2, gpus_per_worker=0, storage_path=str(tmp_path), name="crash", max_failures=1,
                       train_loop=crashing_once(5, str(marker)))
    assert marker.read_text() == "failed at step 5\n"
    assert result.error is None
    assert result.metrics["step"] == 6  # 2 epochs x 3 steps: the run finished all its steps
    # From a checkpoint taken before the crash (step 4, or step 3 if the crash beat the step-4 registration),
    # not from scratch.
    assert result.metrics["resumed_from_step"] in (3, 4)
    # Evaluations (end of epoch 1 = step 3, end = step 6) survive the restart: the step-4 checkpoint's report
    # carries the step-3 evaluation, and best_HOTA is the maximum over both.
    by_step = {m["step"]: m for _, m in result.best_checkpoints}
    first_eval = by_step[4]["HOTA"]
    assert first_eval == first_eval and by_step[4]["best_HOTA"] == first_eval  # not NaN
    assert result.metrics["best_HOTA"] == max(first_eval, result.metrics["HOTA"])
    with result.checkpoint.as_directory() as d:
        progress = json.loads((Path(d) / PROGRESS_FILE).read_text())
    assert progress["best_HOTA"] == result.metrics["best_HOTA"] and progress["HOTA"] == result.metrics["HOTA"]



def test_a_non_finite_loss_stops_every_worker_without_a_restart(tiny, tmp_path, local_ray):
    # lr 1e6 diverges at step 2; the ranks agree to stop there (none waits in an all-reduce), and the run is not
    # restarted from its checkpoint (max_failures=1) into the same NaN.
    loop = loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05, "lr": 1e6}, checkpoint_every=1)
    result = fit_trial(loop, workers=2, gpus_per_worker=0, storage_path=str(tmp_path), name="nan", max_failures=1)
    assert isinstance(result.error, NonFiniteLossError)
    assert str(result.error).startswith("rank 0: non-finite DARTH loss at step 2")
    assert str(result.error).endswith(f"; last good checkpoint: {result.checkpoint.path}")
    assert result.metrics["step"] == 1 and result.metrics["resumed_from_step"] == 0

def test_optuna_search_with_asha(tiny, tmp_path, local_ray):
    # Optuna reads HOTA from every result: reports before the first evaluation carry HOTA = NaN.
    exp = ExperimentConfig(name="optuna", storage_path=str(tmp_path),
                           loop=loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05}),
                           num_samples=2, scheduler="asha", search="optuna",
                           search_space={"darth": {"conf_thr": tune.uniform(0.5, 0.9),
                                                   "lr": tune.loguniform(5e-4, 5e-3)}},
                           max_concurrent_trials=2, wandb=None)
    grid = run_experiment(exp)
    assert len(grid) == 2 and not grid.errors
    for result in grid:
        assert result.metrics["epoch"] >= 1 and math.isfinite(result.metrics["HOTA"])
        assert 0.5 <= result.config["darth"]["conf_thr"] <= 0.9
    # Both trials' worker CPUs are released (trial functions hold none), so the next experiment can start.
    import ray
    deadline = time.monotonic() + 180  # Ray Train's placement-group cleaner is slow on a loaded machine
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == 2


def test_repeats_run_each_configuration_with_consecutive_seeds(tiny, tmp_path, local_ray):
    import torch

    from darth_ray.distributed.train import STATE_FILE

    exp = ExperimentConfig(name="repeats", storage_path=str(tmp_path), loop=loop_config(tiny), num_samples=1,
                           repeats=2, scheduler="fifo", search_space={"darth": {"lr": tune.loguniform(1e-4, 1e-2)}},
                           max_concurrent_trials=2, wandb=None)
    grid = run_experiment(exp)
    assert len(grid) == 2 and not grid.errors
    assert grid[0].config["darth"]["lr"] == grid[1].config["darth"]["lr"]  # one configuration, twice
    states = [torch.load(Path(r.metrics["checkpoint_path"]) / STATE_FILE, weights_only=False) for r in grid]
    seeds = sorted(state["darth_config"]["seed"] for state in states)
    assert seeds == [0, 1]
    with pytest.raises(ValueError, match="repeats 2 needs scheduler fifo, not asha"):
        dataclasses.replace(exp, scheduler="asha")


def test_pb2_searches_the_numeric_ranges_and_refuses_a_categorical_before_ray(tiny, tmp_path):
    from darth_ray.distributed.tune import pb2_bounds, trial_scheduler

    space = {"darth": {"lr": tune.loguniform(5e-4, 5e-3), "frames_per_batch": tune.randint(1, 4)}}
    assert pb2_bounds(space) == {"darth": {"lr": [5e-4, 5e-3], "frames_per_batch": [1, 3]}}
    exp = ExperimentConfig(name="pb2", storage_path=str(tmp_path), loop=loop_config(tiny), scheduler="pb2",
                           search_space=space)
    assert trial_scheduler(exp)._hyperparam_bounds == pb2_bounds(space)
    with pytest.raises(ValueError, match=r"search space darth.method: PB2 searches numeric ranges only"):
        ExperimentConfig(name="pb2", storage_path=str(tmp_path), loop=loop_config(tiny), scheduler="pb2",
                         search_space={"darth": {"method": tune.choice(["kd", "darth"])}})


def test_random_search_draws_the_same_configurations_under_every_scheduler(tiny, tmp_path):
    from darth_ray.distributed.tune import search_algorithm, trial_param_space

    tune.register_trainable("draws", lambda config: None)

    def draws(scheduler: str, seed: int) -> list[float]:
        exp = ExperimentConfig(name="d", storage_path=str(tmp_path), loop=loop_config(tiny), num_samples=3,
                               scheduler=scheduler, seed=seed, search_space={"darth": {"lr": tune.loguniform(1e-4, 1e-2)}})
        generator = search_algorithm(exp)
        generator.add_configurations({"d": {"run": "draws", "config": trial_param_space(exp), "num_samples": 3}})
        return [generator.next_trial().config["darth"]["lr"] for _ in range(3)]

    same = draws("fifo", 0)
    assert len(set(same)) == 3 and draws("asha", 0) == draws("pbt", 0) == same != draws("fifo", 1)


def test_pbt_says_when_its_population_is_smaller_than_the_sample(tiny, tmp_path):
    from darth_ray.distributed.tune import population_note

    def note(scheduler: str, limit: int | None) -> str | None:
        return population_note(ExperimentConfig(name="p", storage_path=str(tmp_path), loop=loop_config(tiny),
                                                num_samples=8, max_concurrent_trials=limit, scheduler=scheduler,
                                                search_space={"darth": {"lr": tune.loguniform(1e-4, 1e-2)}}))

    assert note("pbt", 2).startswith("PBT evolves the trials that run together: with 2 at a time of 8, it runs 4 "
                                     "populations of up to 2 one after another")
    assert note("pb2", 3).startswith("PB2 evolves") and "runs 3 populations of up to 3" in note("pb2", 3)
    assert note("pbt", 8) is None and note("pbt", None) is None and note("asha", 2) is None


def test_tune_experiment_ranks_trials_logs_wandb_and_resumes(tiny, tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    exp = ExperimentConfig(name="exp", storage_path=str(tmp_path), loop=loop_config(tiny), num_samples=2,
                           scheduler="fifo", max_concurrent_trials=2,
                           search_space={"darth": {"conf_thr": tune.uniform(0.5, 0.9),
                                                   "ema_momentum": tune.loguniform(5e-4, 1e-2)}},
                           wandb={"mode": "offline"})
    grid = run_experiment(exp)
    assert len(grid) == 2 and not grid.errors
    hotas = [r.metrics["HOTA"] for r in grid]
    assert all(isinstance(h, float) for h in hotas)
    assert grid.get_best_result(metric="HOTA", mode="max").metrics["HOTA"] == max(hotas)

    runs = find_offline_runs(tmp_path / "exp")
    assert len(runs) == 2
    trial_configs = {r.metrics["trial_id"]: r.config for r in grid}
    for path in runs:
        run = read_finished_run(path)
        assert run.group == "exp"
        trial_id = run.run_id.removeprefix("exp-")
        assert run.config["conf_thr"] == pytest.approx(trial_configs[trial_id]["darth"]["conf_thr"])
        steps = [row for row in run.history if "train/loss_total" in row]
        assert [row["train/step"] for row in steps] == [1, 2, 3, 4, 5, 6]  # 12 frames, 1 worker, 2 per step
        assert all({"train/loss_rpn", "train/loss_roi", "train/loss_contrastive", "train/lr"} <= set(r) for r in steps)
        evals = [row for row in run.history if "eval/HOTA" in row]
        assert len(evals) == 1 and run.summary["best/HOTA"] == pytest.approx(evals[0]["eval/HOTA"])
        last = next(r.metrics for r in grid if r.metrics["trial_id"] == trial_id)
        assert {k: evals[0][f"eval/{k}"] for k in LABEL_FREE_METRICS} == pytest.approx(
            {k: last[k] for k in LABEL_FREE_METRICS})  # beside HOTA
        # The best evaluation's track video and per-sequence table, from the checkpoint it came with.
        (media,) = [row for row in run.history if "best_eval/video.path" in row]   # the reader flattens media
        assert media["train/step"] == evals[0]["train/step"] and media["best_eval/sequences._type"] == "table-file"
        video = path / "files" / media["best_eval/video.path"]
        assert video.suffix == ".mp4" and video.stat().st_size > 0
        table = json.loads((path / "files" / media["best_eval/sequences.path"]).read_text())
        assert [row[0] for row in table["data"]] == ["synth-val-01", "synth-val-02"] and "HOTA" in table["columns"]
        checkpoint = Path(last["checkpoint_path"]) / "videos"   # the Train checkpoint of the evaluation
        capture = cv2.VideoCapture(str(checkpoint / "synth-val-01.mp4"))
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6   # one video frame per tracked frame
        sequences = json.loads((checkpoint / "sequences.json").read_text())
        assert table["data"][0][table["columns"].index("HOTA")] == pytest.approx(sequences["synth-val-01"]["HOTA"])

    again = run_experiment(exp)  # resumes: finished trials are kept, none rerun
    assert sorted(r.metrics["trial_id"] for r in again) == sorted(trial_configs)
    assert len(find_offline_runs(tmp_path / "exp")) == 2

    # Tune would resume with the stored search and today's base settings: other settings are refused, by name.
    other = dataclasses.replace(exp, num_samples=1, loop=loop_config(tiny, darth={"epochs": 1, "lr_steps": (1,),
                                                                                  "conf_thr": 0.05, "lr": 1e-3}))
    with pytest.raises(InputError, match=r"darth.lr: 0.002 -> 0.001\n  num_samples: 2 -> 1"):
        run_experiment(other)
    assert len(find_offline_runs(tmp_path / "exp")) == 2

    fresh = run_experiment(other, resume=False)  # a new experiment; the old one is kept aside
    assert len(fresh) == 1 and not fresh.errors
    (aside,) = tmp_path.glob("exp.*")
    assert json.loads((aside / EXPERIMENT_FILE).read_text())["num_samples"] == 2
    assert len(find_offline_runs(aside)) == 2
    assert json.loads((tmp_path / "exp" / EXPERIMENT_FILE).read_text())["darth.lr"] == 1e-3


def test_every_sampler_range_is_checked_before_a_trial_starts(tiny, tmp_path):
    loop = loop_config(tiny)
    exp = dict(name="exp", storage_path=str(tmp_path), loop=loop)
    ExperimentConfig(**exp, search_space={"darth": {"conf_thr": tune.uniform(0.5, 1.0), "epochs": tune.choice([1, 2]),
                                                    "lr": tune.grid_search([1e-4, 1e-3])}})
    for space, error in (
            ({"darth": {"conf_thr": tune.uniform(0.5, 1.5)}}, r"darth.conf_thr: 1.5 is out of range: .*conf_thr must"),
            ({"darth": {"lr": tune.loguniform(1e-3, 1e-2), "ema_momentum": tune.uniform(-0.1, 0.5)}},
             r"darth.ema_momentum: -0.1 is out of range"),
            ({"darth": {"epochs": tune.randint(0, 3)}}, r"darth.epochs: 0 is out of range: .*epochs must be an int"),
            ({"darth": {"lr": tune.grid_search([1e-3, 0.0])}}, r"darth.lr: 0.0 is out of range"),
            ({"darth": {"not_a_knob": tune.uniform(0, 1)}},
             r"darth.not_a_knob: 0 is out of range: unknown DarthConfig field\(s\): not_a_knob"),
            ({"darth": {"lr": tune.randn(0.0, 1.0)}}, r"darth.lr: -inf is out of range"),
            ({"darth": {"lr": tune.sample_from(lambda _: 1e-3)}}, r"darth.lr: cannot check the range of a Function"),
            ({"tracker": {"init_score_thr": tune.uniform(0, 1)}, "darth": {"conf_thr": tune.choice([0.5, 2])}},
             r"darth.conf_thr: 2 is out of range")):
        with pytest.raises(ValueError, match=f"^search space {error}"):
            ExperimentConfig(**exp, search_space=space)


def test_a_trial_the_scheduler_stops_keeps_its_last_evaluation_in_wandb(tiny, tmp_path, local_ray, monkeypatch):
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from darth_ray.distributed import tune as darth_tune

    class StopAfterFirstEvaluation(FIFOScheduler):  # what ASHA does to a weak trial at its first rung
        def on_trial_result(self, tune_controller, trial, result):
            return TrialScheduler.STOP if result["evaluated"] else TrialScheduler.CONTINUE

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(darth_tune, "trial_scheduler", lambda exp: StopAfterFirstEvaluation())
    exp = ExperimentConfig(name="stop", storage_path=str(tmp_path), num_samples=1, wandb={"mode": "offline"},
                           loop=loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05}))
    (result,) = run_experiment(exp)
    # 12 frames, 2 per step: stopped at step 6 of 12, just after the evaluation that ends epoch 1
    assert result.metrics["step"] == 6 and result.metrics["evaluated"]
    (path,) = find_offline_runs(tmp_path / "stop")
    run = read_finished_run(path)
    assert run.exit_code == 0  # finished, not left open by the stopped trial
    assert [row["train/step"] for row in run.history if "train/loss_total" in row] == [1, 2, 3, 4, 5, 6]
    (evaluation,) = [row for row in run.history if "eval/HOTA" in row]
    assert evaluation["train/step"] == 6 and evaluation["eval/HOTA"] == pytest.approx(result.metrics["HOTA"])
    assert run.summary["best/HOTA"] == pytest.approx(result.metrics["HOTA"])


def test_experiment_settings_see_a_changed_source_checkpoint(tiny, tmp_path):
    import shutil

    import torch

    from darth_ray.models.qdtrack import build_model, save_checkpoint

    source = tmp_path / "source.pt"
    shutil.copy(tiny / "source.pt", source)
    exp = ExperimentConfig(name="exp", storage_path=str(tmp_path), loop=loop_config(tiny, source=str(source)))
    before = experiment_settings(exp)
    assert settings_changes(before, experiment_settings(exp)) == []
    torch.manual_seed(1)
    save_checkpoint(source, build_model("small"))  # retrained in place, same path
    (change,) = settings_changes(before, experiment_settings(exp))
    assert change.startswith("source_sha256: ")
    with pytest.raises(InputError, match="missing.pt: source checkpoint not found"):
        experiment_settings(dataclasses.replace(exp, loop=loop_config(tiny, source=str(tmp_path / "missing.pt"))))


def test_a_diverging_trial_errors_with_its_last_good_checkpoint_and_the_others_finish(tiny, tmp_path, local_ray,
                                                                                       capsys):
    import torch

    from darth_ray.distributed.train import STATE_FILE
    from experiments import tune_dance

    # Two trials: lr 1e6 makes the step-2 loss NaN (deterministically, after step 1's checkpoint), lr 1e-4 does not.
    exp = ExperimentConfig(name="nan", storage_path=str(tmp_path), loop=loop_config(tiny, checkpoint_every=1),
                           num_samples=1, scheduler="fifo", max_concurrent_trials=2,
                           search_space={"darth": {"lr": tune.grid_search([1e-4, 1e6])}}, max_failures=1, wandb=None)
    grid = run_experiment(exp)
    good, bad = sorted(grid, key=lambda r: r.config["darth"]["lr"])
    assert good.error is None and good.metrics["step"] == 6 and math.isfinite(good.metrics["HOTA"])

    assert bad.error is not None and "non-finite DARTH loss at step 2" in str(bad.error)
    assert bad.metrics["error"].startswith("non-finite DARTH loss at step 2: {'loss_rpn': nan")
    assert bad.metrics["resumed_from_step"] == 0  # not restarted from its checkpoint into the same NaN
    state = torch.load(Path(bad.metrics["checkpoint_path"]) / STATE_FILE, weights_only=False)
    assert state["step"] == 1 and all(torch.isfinite(t).all() for t in state["student"].values())
    assert bad.metrics["checkpoint_path"] in bad.metrics["error"]

    assert tune_dance.report(grid, exp) == 0
    out = capsys.readouterr().out
    ranking = out[out.index("best trials of nan"):out.index("errored trials of nan")]
    assert re.findall(r"^(\d+)\. ", ranking, re.M) == ["1"]  # the ranking holds the finished trial only
    assert f"errored trials of nan:\n- {Path(bad.path).name}: non-finite DARTH loss at step 2" in out
    best = json.loads((tmp_path / "nan" / "best.json").read_text())
    assert [row["error"] is None for row in best] == [True, False]

    # One loop: `darth-ray adapt` (one process) adapts exactly as the Ray Train worker did (1 worker, 1 thread)
    from darth_ray.adapt.loop import adapt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = adapt(tiny / "source.pt", tiny / "bench" / "night", tmp_path / "adapt",
                        DarthConfig(epochs=1, lr_steps=(1,), conf_thr=0.05, lr=1e-4), split="val",
                        checkpoint_every=2, tracker_params=LOW, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    adapted, _ = load_checkpoint(tmp_path / "adapt" / "final.pt")
    worker, _ = load_checkpoint(Path(good.metrics["checkpoint_path"]) / "final.pt")
    for (name, a), b in zip(adapted.state_dict().items(), worker.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert summary["steps"] == good.metrics["step"]
    assert summary["metrics"][COMBINED]["HOTA"] == pytest.approx(good.metrics["HOTA"], abs=1e-6)


@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_pbt_restarts_the_worse_trial_from_the_better_ones_checkpoint(scheduler, tiny, tmp_path, local_ray,
                                                                      monkeypatch):
    import torch

    from darth_ray.adapt.loop import AdaptationRun
    from darth_ray.data.sharding import frame_counts, shard_frames
    from darth_ray.distributed.train import STATE_FILE

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    exp = ExperimentConfig(name="pbt", storage_path=str(tmp_path), scheduler=scheduler, num_samples=2,
                           max_concurrent_trials=2, search_space={"darth": {"lr": tune.loguniform(1e-4, 1e-2)}},
                           loop=loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05}),
                           keep_checkpoints=5, wandb={"mode": "offline"})
    grid = run_experiment(exp)
    assert len(grid) == 2 and not grid.errors
    rows = {Path(r.path): [json.loads(line) for line in (Path(r.path) / "result.json").read_text().splitlines()]
            for r in grid}
    # After epoch 1 (step 6 of 12) the worse trial goes on from the better one's checkpoint, the better from its own.
    (clone, donor), = [(path, other) for path, trial_rows in rows.items() for other in rows if other != path
                       and any(r["resumed_from_step"] == 6 and Path(r["start_from"]).is_relative_to(other)
                               for r in trial_rows)]
    before = [r for r in rows[clone] if not r["start_from"]]
    start = next(r["start_from"] for r in rows[clone] if r["resumed_from_step"] == 6)
    after = [r for r in rows[clone] if r["start_from"] == start]
    assert [r["step"] for r in before] == list(range(1, len(before) + 1))  # Tune may not log the paused step 6
    assert [r["step"] for r in after] == list(range(7, 13))
    # Disk stays bounded: Tune keeps a trial's newest five checkpoints (the donor reported seven), each Train run its
    # newest two.
    def checkpoints(folder):
        return [p for p in folder.glob("checkpoint_*") if p.is_dir()]
    assert [len(checkpoints(trial)) for trial in rows] == [5, 5]
    assert not (donor / "checkpoint_000000").exists()
    train = tmp_path / "pbt" / "train"
    assert max(len(checkpoints(run)) for run in train.iterdir() if run.is_dir()) == 2
    # A restarted trial goes on from its Tune checkpoint: its earlier Train runs keep their logs, not checkpoints.
    for path, trial_rows in rows.items():
        newest = Path(trial_rows[-1]["checkpoint_path"]).parent
        earlier = [run for run in train.glob(f"{trial_rows[-1]['trial_id']}*") if run != newest]
        if path == clone:
            assert earlier
        assert not [c for run in earlier for c in checkpoints(run)] and checkpoints(newest)
    assert after[0]["resumed_from_step"] == 6
    old_lr, new_lr = before[0]["config"]["darth"]["lr"], after[0]["config"]["darth"]["lr"]
    assert new_lr != old_lr and 1e-4 <= new_lr <= 1e-2

    # Steps 7 and 8 replayed here from the donor's checkpoint with the perturbed config give the clone's losses:
    # its weights were the donor's, and it trains with the new lr. The clone read them from its own copy (Tune may
    # delete the donor's checkpoint before the clone's workers start).
    donor_state = (Path(after[0]["start_from"]) / STATE_FILE).read_bytes()
    assert (clone / "start_checkpoint" / STATE_FILE).read_bytes() == donor_state
    state = torch.load(clone / "start_checkpoint" / STATE_FILE, weights_only=False)
    assert state["step"] == 6
    config = TrainLoopConfig.from_dict({k: v for k, v in after[0]["config"].items()})
    sequences = load_sequences(config.target, split=config.split)
    (frames,) = shard_frames(frame_counts(sequences), 1)
    replay = AdaptationRun(Path(config.source), sequences, frames, config.darth, steps_per_epoch=6)
    replay.load_state_dict(state)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads_per_worker)
    try:
        replayed = [replay.run_step()["loss_total"] for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert replayed == [r["loss_total"] for r in after[:2]]

    # W&B: one run per trial; the clone's records where it went on from, and its new lr.
    clone_id = after[0]["trial_id"]
    (path,) = [p for p in find_offline_runs(tmp_path / "pbt") if p.name.endswith(clone_id)]
    run = read_finished_run(path)
    restart = run.summary["lineage"][0]
    assert restart["step"] == 6 and donor.name.startswith(restart["from"]) and restart["lr"] == new_lr
    assert run.config["lr"] == run.summary["lineage"][-1]["lr"]

"""Ray Train and Tune around DARTH: sharded workers stay in sync, sharded evaluation equals a single process,
a killed worker resumes from its last checkpoint, and a Tune experiment logs one W&B run per trial and resumes."""
from pathlib import Path

import pytest

from darth_ray.eval.track import track_and_score
from darth_ray.data.mot import load_sequences
from darth_ray.distributed.train import EVAL_METRICS, TrainLoopConfig
from darth_ray.distributed.tune import ExperimentConfig, fit_trial, run_experiment
from darth_ray.distributed.wandb_offline import find_offline_runs, read_finished_run
from darth_ray.eval.metrics import COMBINED
from darth_ray.models.qdtrack import load_checkpoint

pytestmark = pytest.mark.slow
LOW = {"init_score_thr": 0.05, "obj_score_thr": 0.05}  # a random-init model still produces tracks


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def loop_config(tiny, **overrides) -> TrainLoopConfig:
    base = dict(source=str(tiny / "source.pt"), target=str(tiny / "bench" / "night"), split="val",
                darth={"epochs": 1, "lr_steps": (1,), "conf_thr": 0.05}, tracker=LOW, checkpoint_every=2)
    return TrainLoopConfig(**{**base, **overrides})


def test_two_workers_stay_in_sync_and_sharded_eval_equals_single_process(tiny, tmp_path, local_ray):
    result = fit_trial(loop_config(tiny), workers=2, gpus_per_worker=0, storage_path=str(tmp_path), name="two")
    m = result.metrics
    assert m["step"] == 3  # 12 frames -> 6 per worker -> 3 steps of 2 frames
    assert m["ranks_in_sync"] is True
    with result.checkpoint.as_directory() as d:
        student, _ = load_checkpoint(Path(d) / "final.pt")
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    _, single = track_and_score(student, sequences, LOW)
    assert single[COMBINED]["FP"] + single[COMBINED]["DetA"] > 0  # non-trivial output to compare
    for key in EVAL_METRICS:
        assert m[key] == single[COMBINED][key], key


def test_killed_worker_restarts_from_last_checkpoint(tiny, tmp_path, local_ray):
    marker = tmp_path / "failed"
    loop = loop_config(tiny, darth={"epochs": 2, "lr_steps": (1,), "conf_thr": 0.05}, fail_at_step=5,
                       fail_marker=str(marker))
    result = fit_trial(loop, workers=2, gpus_per_worker=0, storage_path=str(tmp_path), name="crash", max_failures=1)
    assert marker.read_text() == "failed at step 5\n"
    assert result.error is None
    assert result.metrics["step"] == 6  # 2 epochs x 3 steps: the run finished all its steps
    # From a checkpoint taken before the crash (step 4, or step 3 if the crash beat the step-4 registration),
    # not from scratch.
    assert result.metrics["resumed_from_step"] in (3, 4)


def test_tune_experiment_ranks_trials_logs_wandb_and_resumes(tiny, tmp_path, local_ray, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    exp = ExperimentConfig(name="exp", storage_path=str(tmp_path), loop=loop_config(tiny), num_samples=2,
                           scheduler="fifo", searched=("conf_thr", "ema_momentum"), max_concurrent_trials=2,
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
        assert run.config["conf_thr"] == pytest.approx(trial_configs[trial_id]["conf_thr"])
        steps = [row for row in run.history if "train/loss_total" in row]
        assert [row["train/step"] for row in steps] == [1, 2, 3, 4, 5, 6]  # 12 frames, 1 worker, 2 per step
        assert all({"train/loss_rpn", "train/loss_roi", "train/loss_contrastive", "train/lr"} <= set(r) for r in steps)
        evals = [row for row in run.history if "eval/HOTA" in row]
        assert len(evals) == 1 and run.summary["best/HOTA"] == pytest.approx(evals[0]["eval/HOTA"])

    again = run_experiment(exp)  # resumes: finished trials are kept, none rerun
    assert sorted(r.metrics["trial_id"] for r in again) == sorted(trial_configs)
    assert len(find_offline_runs(tmp_path / "exp")) == 2

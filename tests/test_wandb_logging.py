"""TrialLogger writes real offline W&B runs; wandb's own reader (`wandb leet inspect`) reads them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from darth_ray.wandb_logging import TrialLogger, WandbSettings, flatten_config
from wandb_runs import find_offline_runs, read_finished_run

LOSS_NAMES = ("loss_rpn", "loss_roi", "loss_contrastive", "loss_total")


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def losses_at(trial: int, step: int) -> dict[str, float]:
    return {name: 1.0 / (step + 1) + 0.1 * i + trial for i, name in enumerate(LOSS_NAMES)}


def lr_at(step: int) -> float:
    return 0.01 * 0.5 ** step


def hota_at(trial: int, eval_index: int) -> float:
    return [[41.5, 40.25], [38.0, 44.75]][trial][eval_index]  # trial 0 peaks first, trial 1 last


def idsw_at(trial: int, eval_index: int) -> int:
    return [[10, 7], [9, 12]][trial][eval_index]  # lower is better: trial 0 improves, trial 1 gets worse


def test_two_trials_in_one_process_round_trip(offline_env):
    settings = WandbSettings(group="exp-42", tags=("unit",))
    assert settings.mode == "offline"  # from WANDB_MODE
    configs = [{"lr": 0.01, "lambda_contrastive": 0.5, "trial": i, "views": {"n": 3}} for i in range(2)]
    loggers = [TrialLogger(settings, f"trial_{i}", configs[i], run_id=f"exp42-trial{i}") for i in range(2)]

    # Interleaved like two trials sharing a process: each run must keep only its own rows.
    for step in range(5):
        for trial, logger in enumerate(loggers):
            logger.log_step(step, losses_at(trial, step), lr_at(step))
            if step in (1, 4):
                eval_index = (1, 4).index(step)
                logger.log_eval(step, {"HOTA": hota_at(trial, eval_index), "IDF1": 50.0 + eval_index,
                                       "IDSW": idsw_at(trial, eval_index)})
    run_dirs = [logger.run_dir for logger in loggers]
    for logger in loggers:
        logger.finish()

    assert sorted(run_dirs) == find_offline_runs(offline_env)
    for trial, run_dir in enumerate(run_dirs):
        assert run_dir.parent == offline_env / "wandb" and run_dir.name.startswith("offline-run-")
        run = read_finished_run(run_dir)  # finish() returns before wandb-core flushes the file
        assert (run.run_id, run.name, run.group, run.project) == (f"exp42-trial{trial}", f"trial_{trial}",
                                                                 "exp-42", "darth_ray")
        assert run.exit_code == 0
        assert run.config == {"lr": 0.01, "lambda_contrastive": 0.5, "trial": trial, "views/n": 3}

        train_rows = [row for row in run.history if "train/lr" in row]
        eval_rows = [row for row in run.history if "eval/HOTA" in row]
        assert len(run.history) == 7 and [row["_step"] for row in run.history] == list(range(7))
        assert [row["train/step"] for row in train_rows] == [0, 1, 2, 3, 4]
        for step, row in enumerate(train_rows):
            assert {k: row[k] for k in row if k.startswith("train/loss")} == {
                f"train/{name}": value for name, value in losses_at(trial, step).items()}
            assert row["train/lr"] == lr_at(step)
        assert [(row["train/step"], row["eval/HOTA"]) for row in eval_rows] == [
            (1, hota_at(trial, 0)), (4, hota_at(trial, 1))]

        assert run.summary["best/HOTA"] == max(hota_at(trial, 0), hota_at(trial, 1))
        assert run.summary["best/IDF1"] == 51.0
        assert run.summary["best/IDSW"] == min(idsw_at(trial, 0), idsw_at(trial, 1))
        assert run.summary["eval/HOTA"] == hota_at(trial, 1)  # the plain metric keeps its last value


def test_disabled_logger_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.chdir(tmp_path)
    settings = WandbSettings(mode="disabled", dir=tmp_path / "trial")
    with TrialLogger(settings, "trial_0", {"lr": 0.1}) as logger:
        logger.log_step(0, {"loss_total": 1.0}, lr=0.1)
        logger.log_eval(0, {"HOTA": 10.0})
        assert logger.run_dir is None
    assert list(tmp_path.iterdir()) == []


def test_settings_validation_and_default_mode(monkeypatch):
    with pytest.raises(ValueError, match="mode"):
        WandbSettings(mode="shared")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert WandbSettings().mode == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert WandbSettings().mode == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbSettings().mode == "disabled"


def test_flatten_config_makes_one_column_per_hyperparameter():
    assert flatten_config({"a": {"b": 1, "c": {"d": None}}, "path": Path("/x"), "sizes": [1, 2]}) == {
        "a/b": 1, "a/c/d": None, "path": "/x", "sizes": [1, 2]}

"""TrialLogger writes real offline W&B runs; read_offline_run reads them back."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from darth_ray.distributed.wandb_logging import TrialLogger, WandbSettings, flatten_config
from darth_ray.distributed.wandb_offline import (BLOCK_SIZE, find_offline_runs, iter_payloads, read_finished_run,
                                                read_offline_run)

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


@pytest.fixture
def finished_run(offline_env):
    logger = TrialLogger(WandbSettings(group="g"), "t", {"lr": 0.1}, run_id="truncate-me")
    for step in range(3):
        logger.log_step(step, {"loss_total": float(step)}, lr=0.1)
    logger.finish()
    # wandb reads WANDB_DIR once per process; TrialLogger re-reads it for every trial.
    assert logger.run_dir.parent == offline_env / "wandb"
    return read_finished_run(logger.run_dir)


def test_truncated_file_keeps_its_complete_records(finished_run, tmp_path):
    data = finished_run.path.read_bytes()
    offsets = [offset for offset, _ in iter_payloads(data)]
    cut = tmp_path / "cut.wandb"
    for end in (offsets[-1] + 3, offsets[-1] + 10, len(data) - 1):  # inside the header / data of the last record
        cut.write_bytes(data[:end])
        with pytest.warns(UserWarning, match=f"truncated last record at byte {offsets[-1]}"):
            run = read_offline_run(cut)
        assert run.exit_code is None  # the exit record was the one cut off
        assert [row["train/loss_total"] for row in run.history] == [0.0, 1.0, 2.0]
        assert run.config == {"lr": 0.1} and run.group == "g"


def test_damaged_file_raises_with_offset(finished_run, tmp_path):
    data = bytearray(finished_run.path.read_bytes())
    second = [offset for offset, _ in iter_payloads(bytes(data))][1]
    data[second + 9] ^= 0xFF  # flip a payload byte: the crc no longer matches
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"bad\.wandb: checksum mismatch in record at byte {second}"):
        read_offline_run(bad)
    bad.write_bytes(b"NOPE" + bytes(data[4:]))
    with pytest.raises(ValueError, match="not a wandb run file"):
        read_offline_run(bad)


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack("<IHB", zlib.crc32(payload, zlib.crc32(bytes([kind]))), len(payload), kind) + payload


def test_records_split_across_blocks_are_reassembled():
    # Synthetic log: one record filling block 0 up to a 5-byte trailer, then one split FIRST/MIDDLE/LAST.
    header = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    first_len = BLOCK_SIZE - 7 - 7 - 5
    big = bytes(range(256)) * 300  # 76800 bytes: spans blocks 1, 2 and 3
    data = header + _frame(1, b"a" * first_len) + b"\0" * 5
    part1, part2, part3 = big[:BLOCK_SIZE - 7], big[BLOCK_SIZE - 7:2 * BLOCK_SIZE - 14], big[2 * BLOCK_SIZE - 14:]
    data += _frame(2, part1) + _frame(3, part2) + _frame(4, part3)
    assert list(iter_payloads(data)) == [(7, b"a" * first_len), (BLOCK_SIZE, big)]
    with pytest.warns(UserWarning, match=f"truncated last record at byte {BLOCK_SIZE}"):
        assert list(iter_payloads(data[:3 * BLOCK_SIZE])) == [(7, b"a" * first_len)]
    with pytest.raises(ValueError, match=f"continuation record at byte {7 + 7 + first_len + 5}"):
        list(iter_payloads(header + _frame(1, b"a" * first_len) + b"\0" * 5 + _frame(4, part1)))

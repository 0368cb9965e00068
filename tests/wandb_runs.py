"""Test support: what an offline W&B run logged, read with wandb's own reader (`wandb leet inspect PATH --json`,
one JSON record per line; ../shared/FIELD-NOTES.md)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WANDB = str(Path(sys.executable).with_name("wandb"))


@dataclass
class WandbRun:
    path: Path  # the offline-run-* directory
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    project: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # wandb's own "_wandb" entry left out
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged row, with "_step"
    exit_code: int | None = None  # None: the run never finished (still running, or killed)


def find_offline_runs(root: str | Path) -> list[Path]:
    """Every ``offline-run-*`` directory below ``root``, sorted by path (so by time within one wandb dir)."""
    return sorted(p for p in Path(root).rglob("offline-run-*") if p.is_dir() and not p.is_symlink())


def read_run(path: str | Path) -> WandbRun:
    """Replay the records of one run (its directory or its .wandb file)."""
    out = subprocess.run([WANDB, "leet", "inspect", str(path), "--json"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    run = WandbRun(path=Path(path))
    for line in out.splitlines():
        record = json.loads(line)
        body = record.get(record["type"], {})
        if record["type"] == "run":
            run.run_id, run.name = body.get("run_id"), body.get("display_name")
            run.group, run.project = body.get("run_group"), body.get("project")
            run.config.update({k: v for k, v in body.get("config", {}).get("update", {}).items() if k != "_wandb"})
        elif record["type"] == "config":
            run.config.update({k: v for k, v in body.get("update", {}).items() if k != "_wandb"})
        elif record["type"] == "history":
            run.history.append(body["item"])
        elif record["type"] == "summary":
            run.summary.update(body.get("update", {}))
        elif record["type"] == "exit":
            run.exit_code = body.get("exit_code", 0)
    return run


def read_finished_run(path: str | Path, timeout: float = 30.0) -> WandbRun:
    """`read_run` once the run's exit record is on disk (`finish()` returns before wandb-core has written it)."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_run(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.5)

"""One Weights & Biases run per trial, logged from rank 0 of the trial's worker group.

Independent of Ray: the trainer builds a ``TrialLogger`` with the trial's flat hyperparameters
and calls ``log_step`` / ``log_eval`` / ``finish``.

Dashboard layout chosen here:

* every row carries ``train/step`` (the optimizer step) and every ``train/*`` and ``eval/*``
  metric is plotted against it (``define_metric``). wandb's own ``_step`` is left to count rows,
  so a trial restarted from an older checkpoint still logs (an explicit ``log(step=...)`` lower
  than the run's last step would be dropped by wandb);
* ``best/<metric>`` in the run summary holds the best evaluation so far (max, or min for counts
  such as IDSW/FP/FN): with the config (the trial's hyperparameters) it feeds the parallel
  coordinates and parameter importance panels, e.g. against ``best/HOTA``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled")
STEP_METRIC = "train/step"
# Evaluation metrics where lower is better; every other metric is better when higher.
LOWER_IS_BETTER = frozenset({"IDSW", "FP", "FN", "Frag", "ML", "IDs"})


def _default_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return {"dryrun": "offline", "run": "online"}.get(os.environ["WANDB_MODE"], os.environ["WANDB_MODE"])
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


@dataclass(frozen=True)
class WandbSettings:
    mode: str = field(default_factory=_default_mode)
    project: str = "darth_ray"
    entity: str | None = None
    group: str | None = None  # the experiment name: all trials of one experiment share it
    tags: tuple[str, ...] = ()
    # Runs go to <dir>/wandb/. None: $WANDB_DIR, else the working directory (the trial directory under Tune).
    dir: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"W&B mode must be one of {MODES}, got {self.mode!r}")
        if not self.project:
            raise ValueError("W&B project must not be empty")
        object.__setattr__(self, "tags", tuple(self.tags))
        if self.dir is not None:
            object.__setattr__(self, "dir", Path(self.dir))


class TrialLogger:
    """The W&B run of one trial. With mode "disabled" every method is a no-op and wandb is not imported."""

    def __init__(self, settings: WandbSettings, run_name: str, config: Mapping[str, Any],
                 run_id: str | None = None) -> None:
        self.settings = settings
        self._best: dict[str, float] = {}
        self._eval_prefixes: set[str] = set()
        self._lineage: list[dict[str, Any]] = []
        self._run = None
        self._run_dir: Path | None = None
        if settings.mode != "disabled":
            self._run = _start_run(settings, run_name, flatten_config(config), run_id)
            self._run_dir = Path(self._run.settings.sync_dir)

    @property
    def run_dir(self) -> Path | None:
        """The run's ``<dir>/wandb/offline-run-<time>-<id>`` (or ``run-...`` online) directory."""
        return self._run_dir

    def log_step(self, step: int, losses: Mapping[str, float], lr: float) -> None:
        """One training step: ``{"loss_rpn": 0.3, ...}`` becomes ``train/loss_rpn``, plus ``train/lr``."""
        if self._run is None:
            return
        row = {f"train/{name}": float(value) for name, value in losses.items()}
        row["train/lr"] = float(lr)
        row[STEP_METRIC] = step
        self._run.log(row)

    def log_eval(self, step: int, metrics: Mapping[str, float], prefix: str = "eval") -> set[str]:
        """Evaluation results at training step ``step``, as ``<prefix>/<name>``; updates ``best/<name>``. Returns
        the names of the metrics this evaluation improved."""
        improved: set[str] = set()
        if self._run is None:
            return improved
        if prefix not in self._eval_prefixes:
            self._run.define_metric(f"{prefix}/*", step_metric=STEP_METRIC)
            self._eval_prefixes.add(prefix)
        row = {f"{prefix}/{name}": float(value) for name, value in metrics.items()}
        row[STEP_METRIC] = step
        self._run.log(row)

        best_prefix = "best" if prefix == "eval" else f"best/{prefix}"
        for name, value in metrics.items():
            key = f"{best_prefix}/{name}"
            if key not in self._best:  # a resumed online run brings its earlier best back in the summary
                earlier = self._run.summary.get(key)
                self._best[key] = float(earlier) if isinstance(earlier, (int, float)) else math.nan
            if _is_better(name, float(value), self._best[key]):
                self._best[key] = float(value)
                self._run.summary[key] = float(value)
                improved.add(name)
        return improved

    def log_media(self, step: int, folder: Path, prefix: str = "best_eval") -> None:
        """An evaluation's media (eval/visualize.py write_eval_media) at step ``step``: its first video as
        ``<prefix>/video``, its per-sequence metrics as the table ``<prefix>/sequences`` (a row per sequence)."""
        if self._run is None:
            return
        import wandb

        from darth_ray.eval.visualize import SEQUENCE_METRICS

        row: dict[str, Any] = {STEP_METRIC: step}
        videos = sorted(Path(folder).glob("*.mp4")) + sorted(Path(folder).glob("*.gif"))
        if videos:
            row[f"{prefix}/video"] = wandb.Video(str(videos[0]), format=videos[0].suffix[1:])
        table = Path(folder) / SEQUENCE_METRICS
        if table.is_file():
            sequences = json.loads(table.read_text())
            columns = list(dict.fromkeys(c for metrics in sequences.values() for c in metrics))
            row[f"{prefix}/sequences"] = wandb.Table(
                columns=["sequence", *columns], data=[[name, *(m.get(c) for c in columns)] for name, m in sequences.items()])
        if len(row) > 1:
            self._run.log(row)

    def log_restart(self, step: int, source: str, config: Mapping[str, Any]) -> None:
        """The trial went on from `source`'s checkpoint at `step` with `config` (a PBT exploit clones a better
        trial's; a paused trial continues from its own): the summary's ``lineage`` lists every such restart, and
        the run's config becomes the new one."""
        if self._run is None:
            return
        self._lineage.append({"step": step, "from": source, **flatten_config(config)})
        self._run.summary["lineage"] = list(self._lineage)
        self._run.config.update(flatten_config(config), allow_val_change=True)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (idempotent); a non-zero exit code marks it failed."""
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> TrialLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


def flatten_config(config: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """Nested dicts become "a/b" keys, and values W&B cannot show as a column become strings,
    so that every hyperparameter is one config column (parallel coordinates, parameter importance)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, name))
        elif value is None or isinstance(value, (bool, int, float, str, list, tuple)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _is_better(name: str, value: float, best: float) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if name in LOWER_IS_BETTER else value > best


def _start_run(settings: WandbSettings, run_name: str, config: dict[str, Any], run_id: str | None):
    import wandb

    mode = settings.mode
    if mode == "online" and not _has_credentials(wandb):
        warnings.warn("W&B: no API key configured, logging this run offline (upload it later with `wandb sync`)")
        mode = "offline"
    try:
        run = _init(wandb, settings, mode, run_name, config, run_id)
    except Exception as exc:
        if mode != "online":
            raise
        # W&B being unreachable must not cost the trial. The service keeps the failed run id
        # reserved for this process, so the offline run gets a fresh id (same name, group, config).
        warnings.warn(f"W&B: online init failed ({exc}); logging this run offline")
        run = _init(wandb, settings, "offline", run_name, config, run_id=None)
    run.define_metric(STEP_METRIC)
    run.define_metric("train/*", step_metric=STEP_METRIC)
    return run


def _has_credentials(wandb) -> bool:
    # wandb.init would ask for an API key on a terminal; login(prompt=False) only looks for one.
    # Its messages follow the process-wide `silent` setting, hence the setup call.
    wandb.setup(wandb.Settings(silent=True))
    return wandb.login(prompt=False, verify=False)


def _init(wandb, settings: WandbSettings, mode: str, run_name: str, config: dict[str, Any], run_id: str | None):
    # Always an explicit dir: wandb reads WANDB_DIR only once per process, but every trial has its own.
    root = settings.dir or Path(os.environ.get("WANDB_DIR") or os.getcwd())
    root.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=settings.project, entity=settings.entity, group=settings.group, tags=list(settings.tags),
        dir=str(root), name=run_name, id=run_id, config=config, mode=mode,
        resume="allow",  # a restarted trial (same run_id) continues its run
        reinit="create_new",  # several trials in one process each keep their own run
        settings=wandb.Settings(
            silent=True,
            console="off",  # no stdout capture: Ray already collects worker output
        ),
    )

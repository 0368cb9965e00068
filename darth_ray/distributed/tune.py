"""Ray Tune over DARTH: every trial is a function trainable that builds and fits a TorchTrainer (the pattern Ray
recommends with Train V2, instead of the deprecated `Tuner(trainer)`), reporting to Tune through
`TuneReportCallback`. Trials are ranked by HOTA; ASHA stops weak trials after each evaluated epoch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from darth_ray.distributed.train import ERROR_KEY, NonFiniteLossError, TrainLoopConfig, train_func
from darth_ray.io import InputError, atomic_write_json, file_sha256, settings_changes

log = logging.getLogger(__name__)

TRIAL_MEMORY = 256 * 2**20  # bytes reserved by each trial function (its driver of the TorchTrainer)
EXPERIMENT_FILE = "darth_experiment.json"  # in the experiment directory: the settings its trials were run with

# Hyperparameters searched by default (DARTH.md "What people tune"), as (sampler, low, high).
SEARCH_SPACE = {
    "aug_strength": ("uniform", 0.5, 1.5),
    # Off (0) up to the published 0.5: on the embedded benchmark the photometric views cost more than they give.
    "photometric_prob": ("uniform", 0.0, 0.5),
    "channel_swap_prob": ("uniform", 0.0, 0.5),
    "rpn_weight": ("loguniform", 0.02, 0.5),
    "roi_weight": ("loguniform", 0.02, 0.5),
    "contrastive_weight": ("loguniform", 0.2, 2.0),
    "ema_momentum": ("loguniform", 5e-4, 1e-2),
    "conf_thr": ("uniform", 0.5, 0.9),
    "lr": ("loguniform", 5e-4, 5e-3),
}


def param_space(names=tuple(SEARCH_SPACE)) -> dict:
    from ray import tune

    samplers = {"uniform": tune.uniform, "loguniform": tune.loguniform}
    return {name: samplers[kind](lo, hi) for name, (kind, lo, hi) in SEARCH_SPACE.items() if name in names}


@dataclass(frozen=True)
class ExperimentConfig:
    """One Tune experiment: what to adapt, how big each trial is, and how to search."""

    name: str
    storage_path: str                      # absolute; trials, checkpoints and W&B runs go below it
    loop: TrainLoopConfig                  # base per-trial loop config; searched keys override loop.darth
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    num_samples: int = 4
    max_concurrent_trials: int | None = None
    scheduler: str = "asha"                # "asha" or "fifo"
    search: str = "random"                 # "random" or "optuna"
    searched: tuple[str, ...] = tuple(SEARCH_SPACE)
    max_failures: int = 1                  # worker-group restarts per trial, from the last checkpoint
    seed: int = 0
    wandb: dict | None = field(default_factory=lambda: {"mode": None})

    def __post_init__(self):
        if not os.path.isabs(self.storage_path):
            raise ValueError(f"storage_path must be absolute, got {self.storage_path!r}")
        for name, ok in (("workers_per_trial", self.workers_per_trial >= 1), ("num_samples", self.num_samples >= 1),
                         ("gpus_per_worker", self.gpus_per_worker >= 0), ("max_failures", self.max_failures >= -1),
                         ("scheduler", self.scheduler in ("asha", "fifo")),
                         ("search", self.search in ("random", "optuna"))):
            if not ok:
                raise ValueError(f"ExperimentConfig.{name} is invalid: {getattr(self, name)!r}")
        unknown = sorted(set(self.searched) - set(SEARCH_SPACE))
        if unknown:
            raise ValueError(f"cannot search {', '.join(unknown)}; searchable: {', '.join(SEARCH_SPACE)}")


def experiment_settings(exp: ExperimentConfig) -> dict:
    """What an experiment's results depend on, flattened ("darth.lr": 0.002), with the source checkpoint's
    content hash (the embedded source model keeps its path when it is retrained). Resources, W&B and retry
    settings may change between resumes; these may not."""
    loop = exp.loop
    if not Path(loop.source).is_file():
        raise InputError(loop.source, "source checkpoint not found")
    settings = {"source": loop.source, "source_sha256": file_sha256(loop.source),
                "target": loop.target, "split": loop.split,
                **{f"darth.{k}": v for k, v in sorted(loop.darth.items())},
                **{f"tracker.{k}": v for k, v in sorted(loop.tracker.items())},
                "eval_every_epoch": loop.eval_every_epoch, "workers_per_trial": exp.workers_per_trial,
                "num_samples": exp.num_samples, "scheduler": exp.scheduler, "search": exp.search,
                "searched": sorted(exp.searched), "seed": exp.seed}
    return json.loads(json.dumps(settings))  # as it reads back from the file (tuples become lists)


def fit_trial(loop: TrainLoopConfig, workers: int, gpus_per_worker: float, storage_path: str, name: str,
              max_failures: int = 1, in_tune: bool = False, train_loop=train_func):
    """Fit one TorchTrainer running `train_loop` (`train_func` or a wrapper of it); returns its ray.train.Result. A run stopped by a non-finite loss
    returns with `error` set (a NonFiniteLossError naming the step and the last good checkpoint, which is
    `checkpoint`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = {"CPU": loop.threads_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_loop, train_loop_config=dataclasses.asdict(loop),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.return_value:  # train_func stopped at a non-finite loss
        last = result.checkpoint.path if result.checkpoint else "none"
        result = dataclasses.replace(result, error=NonFiniteLossError(
            f"{result.return_value}; last good checkpoint: {last}"))
    return result


def _trial(config: dict, base: dict) -> None:
    """Tune function trainable: the searched values (`config`) override the base DARTH config of this trial."""
    from ray import tune

    loop = TrainLoopConfig.from_dict(base["loop"])
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    searched = dict(config)
    wandb = None
    if base["wandb"] is not None:
        wandb = {**{k: v for k, v in base["wandb"].items() if v is not None},
                 "group": base["name"], "dir": str(Path(base["storage_path"]) / base["name"]),  # runs: <dir>/wandb/
                 "run_id": f"{base['name']}-{trial_id}"}
    loop = dataclasses.replace(loop, darth={**loop.darth, **searched}, run_name=trial_name, wandb=wandb)
    result = fit_trial(loop, base["workers"], base["gpus"], str(Path(base["storage_path"]) / base["name"] / "train"),
                       name=trial_id, max_failures=base["max_failures"], in_tune=True)
    if result.error:  # the trial errors (Tune does not retry it), its last result naming the last good checkpoint
        tune.report({**(result.metrics or {}), ERROR_KEY: str(result.error),
                     "checkpoint_path": result.checkpoint.path if result.checkpoint else None})
        raise result.error


def run_experiment(exp: ExperimentConfig, resume: bool = True):
    """Run (or resume) the Tune experiment; returns the ResultGrid.

    Ray needs its dashboard (the State API) here: when Tune ends a trial, Ray Train's placement-group cleaner
    frees the trial's worker CPUs only once it sees the controller gone, and without the State API it never
    does, so later trials wait forever for CPUs."""
    from ray import tune

    base = {"loop": dataclasses.asdict(exp.loop), "name": exp.name, "storage_path": exp.storage_path,
            "workers": exp.workers_per_trial, "gpus": exp.gpus_per_worker, "max_failures": exp.max_failures,
            "wandb": exp.wandb}
    # The trial function only waits on its TorchTrainer, so it holds no CPU (even 0.01 CPU per trial would keep the
    # last trial's workers from fitting on a full node; they would time out waiting). Ray rejects an empty resource
    # request: it reserves memory instead.
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base), {"cpu": 0, "memory": TRIAL_MEMORY})
    path = Path(exp.storage_path) / exp.name
    settings = experiment_settings(exp)
    if resume and tune.Tuner.can_restore(str(path)):
        # Tune resumes with the stored search (samples, space, scheduler) and would run the remaining trials with
        # today's base settings: a resume with other settings would silently mix two experiments.
        stored_file = path / EXPERIMENT_FILE
        if stored_file.exists():
            changes = settings_changes(json.loads(stored_file.read_text()), settings)
            if changes:
                raise InputError(stored_file, "this experiment was started with other settings; resuming it would "
                                 "mix two experiments:\n  " + "\n  ".join(changes))
        else:
            log.warning("%s has no %s: cannot check that it was started with the same settings", path,
                        EXPERIMENT_FILE)
        log.info("resuming Tune experiment %s (finished trials are kept)", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True).fit()
    if path.exists():  # a new experiment under the same name: keep the old one, aside
        aside = path.with_name(f"{exp.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        log.info("starting a new experiment %s; the previous one moved to %s", path, aside)
    atomic_write_json(path / EXPERIMENT_FILE, settings)
    scheduler = None
    if exp.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        epochs = exp.loop.darth.get("epochs", 4)
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=1, reduction_factor=2)
    search_alg = None
    if exp.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=exp.seed)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(exp.searched),
        tune_config=tune.TuneConfig(metric="HOTA", mode="max", num_samples=exp.num_samples, scheduler=scheduler,
                                    search_alg=search_alg, max_concurrent_trials=exp.max_concurrent_trials),
        run_config=tune.RunConfig(name=exp.name, storage_path=exp.storage_path,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    return tuner.fit()

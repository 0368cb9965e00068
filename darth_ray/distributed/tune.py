"""Ray Tune over DARTH: every trial is a function trainable that builds and fits a TorchTrainer (the pattern Ray
recommends with Train V2, instead of the deprecated `Tuner(trainer)`), reporting each of its reports to Tune (with
the checkpoint as a Tune checkpoint under PBT). Trials are ranked by HOTA or, for several classes, their mean mHOTA,
or without labels by a label-free score (`ExperimentConfig.metric`); ASHA stops weak trials after each evaluated
epoch, PBT restarts them from better trials' checkpoints. W&B runs are written by the driver (`WandbCallback`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ray import tune
from ray.tune.search import BasicVariantGenerator
from ray.train.v2.api.callback import UserCallback

from darth_ray.adapt.loop import ERROR_KEY, NonFiniteLossError
from darth_ray.distributed.progress import ConsoleProgress
from darth_ray.distributed.train import (EVALUATED_KEY, RANKING_METRICS, REPORTED_METRICS, TrainLoopConfig,
                                         check_online_workers, train_func)
from darth_ray.eval.visualize import MEDIA_DIR as VIDEO_DIR
from darth_ray.io import InputError, atomic_write_json, file_sha256, settings_changes

log = logging.getLogger(__name__)

TRIAL_MEMORY = 256 * 2**20  # bytes reserved by each trial function (its driver of the TorchTrainer)
EXPERIMENT_FILE = "darth_experiment.json"
# "pbt": Population Based Training, its mutations the search space: every epoch the worse half of the trials restart
# from the better half's checkpoints (student, teacher, optimiser, step) with perturbed values. "pb2": the same
# cloning, the new values chosen by PB2's Gaussian-process bandit within the search space's bounds.
SCHEDULERS = ("asha", "fifo", "pbt", "pb2")
CLONING_SCHEDULERS = ("pbt", "pb2")  # in the experiment directory: the settings its trials were run with
# Settings added since experiments were first stored: an older experiment file without them was run with these.
SETTINGS_DEFAULTS = {"metric": "HOTA", "repeats": 1}


def search_leaves(space: Mapping, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, sampler) of every searched value of a nested search space, e.g. (("darth", "lr"), tune.loguniform)."""
    leaves = []
    for key, value in space.items():
        if isinstance(value, Mapping) and set(value) != {"grid_search"}:
            leaves += search_leaves(value, path + (key,))
        else:
            leaves.append((path + (key,), value))
    return leaves


def knob_name(path: tuple[str, ...]) -> str:
    """How a searched value is named in rankings and W&B: a DARTH knob by its name, anything else by its path."""
    return ".".join(path[1:] if path[0] == "darth" else path)


def searched_values(config: Mapping, space: Mapping) -> dict[str, Any]:
    """A trial's drawn values of the searched knobs, by `knob_name`."""
    values = {}
    for path, _ in search_leaves(space):
        value = config
        for key in path:
            value = value[key]
        values[knob_name(path)] = value
    return values


def sampler_extremes(sampler: Any) -> list:
    """Every value a sampler can reach at its edges: a range's bounds, each category, each grid value."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    if isinstance(sampler, Mapping):  # tune.grid_search
        return list(sampler["grid_search"])
    if isinstance(sampler, (Float, Integer)) and sampler.lower is not None and sampler.upper is not None:
        return [sampler.lower, sampler.upper - 1 if isinstance(sampler, Integer) else sampler.upper]
    if isinstance(sampler, Categorical):
        return list(sampler.categories)
    if isinstance(sampler, Domain):
        raise ValueError(f"cannot check the range of a {type(sampler).__name__} sampler")
    return [sampler]  # a constant


def _with_value(config: dict, path: tuple[str, ...], value: Any) -> dict:
    head, *rest = path
    return {**config, head: _with_value(config.get(head, {}), tuple(rest), value) if rest else value}


def check_search_space(loop: TrainLoopConfig, space: Mapping) -> None:
    """Before any trial starts: at each edge of every sampler the trial's config is valid (DarthConfig's checks);
    otherwise a ValueError naming the knob and the value."""
    base = loop.to_dict()
    for path, sampler in search_leaves(space):
        name = ".".join(path)
        try:
            values = sampler_extremes(sampler)
        except ValueError as e:
            raise ValueError(f"search space {name}: {e}") from None
        for value in values:
            try:
                TrainLoopConfig.from_dict(_with_value(base, path, value))
            except (ValueError, TypeError) as e:
                raise ValueError(f"search space {name}: {value!r} is out of range: {e}") from None


def trial_param_space(exp: "ExperimentConfig") -> dict:
    """Tune's param_space: the trial's TrainLoopConfig as a dict, the searched values replaced by their samplers.
    It reaches the worker as train_loop_config."""
    space = exp.loop.to_dict()
    for path, sampler in search_leaves(exp.search_space):
        space = _with_value(space, path, sampler)
    return space


@dataclass(frozen=True)
class ExperimentConfig:
    """One Tune experiment: what to adapt, how big each trial is, and how to search."""

    name: str
    storage_path: str                      # absolute; trials, checkpoints and W&B runs go below it
    loop: TrainLoopConfig                  # every trial's config, but for the searched values
    # Tune samplers nested as TrainLoopConfig nests its fields: {"darth": {"lr": tune.loguniform(5e-4, 5e-3)}}
    search_space: Mapping = field(default_factory=dict)
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    num_samples: int = 4
    max_concurrent_trials: int | None = None
    scheduler: str = "asha"                # one of SCHEDULERS
    search: str = "random"                 # "random" or "optuna"
    # What trials are ranked by (one of RANKING_METRICS, maximised): HOTA/mHOTA with the target's labels ("oracle"),
    # lf_* without (eval/label_free.py)
    metric: str = "HOTA"
    max_failures: int = 1                  # worker-group restarts per trial, from the last checkpoint
    keep_checkpoints: int = 3              # per trial, the newest (PBT clones from them; Ray warns below 3)
    seed: int = 0
    # Each sampled configuration runs `repeats` times, with DARTH seeds seed, seed + 1, ... (Tune's Repeater); the
    # ranking then gives each configuration's mean and spread. Needs FIFO: early stops or clones would bias means.
    repeats: int = 1
    wandb: dict | None = field(default_factory=lambda: {"mode": None})

    def __post_init__(self):
        if not os.path.isabs(self.storage_path):
            raise ValueError(f"storage_path must be absolute, got {self.storage_path!r}")
        for name, ok in (("workers_per_trial", self.workers_per_trial >= 1), ("num_samples", self.num_samples >= 1),
                         ("gpus_per_worker", self.gpus_per_worker >= 0), ("max_failures", self.max_failures >= -1),
                         ("keep_checkpoints", self.keep_checkpoints >= 1),
                         ("scheduler", self.scheduler in SCHEDULERS),
                         ("search", self.search in ("random", "optuna")),
                         ("metric", self.metric in RANKING_METRICS), ("repeats", self.repeats >= 1)):
            if not ok:
                raise ValueError(f"ExperimentConfig.{name} is invalid: {getattr(self, name)!r}")
        check_search_space(self.loop, self.search_space)
        if self.scheduler == "pb2":
            pb2_bounds(self.search_space)  # a knob PB2 cannot search is an error here, before Ray starts
        if self.repeats > 1 and self.scheduler != "fifo":
            raise ValueError(f"ExperimentConfig.repeats {self.repeats} needs scheduler fifo, not {self.scheduler}: "
                             "a configuration's mean over seeds is biased when trials are stopped early or cloned")


def experiment_settings(exp: ExperimentConfig) -> dict:
    """What an experiment's results depend on, flattened ("darth.lr": 0.002), with the source checkpoint's
    content hash (the embedded source model keeps its path when it is retrained). Resources, W&B and retry
    settings may change between resumes; these may not."""
    loop = exp.loop
    if not Path(loop.source).is_file():
        raise InputError(loop.source, "source checkpoint not found")
    settings = {"source": loop.source, "source_sha256": file_sha256(loop.source),
                "target": loop.target, "split": loop.split, **loop.dataset_options(), "metric": exp.metric,
                **{f"darth.{k}": v for k, v in sorted(loop.darth.to_dict().items())},
                **{f"tracker.{k}": v for k, v in sorted(loop.tracker.items())},
                "eval_every_epoch": loop.eval_every_epoch, "workers_per_trial": exp.workers_per_trial,
                "num_samples": exp.num_samples, "scheduler": exp.scheduler, "search": exp.search,
                "searched": sorted(".".join(path) for path, _ in search_leaves(exp.search_space)), "seed": exp.seed,
                "repeats": exp.repeats}
    return json.loads(json.dumps(settings))  # as it reads back from the file (tuples become lists)


def fit_trial(loop: TrainLoopConfig, workers: int, gpus_per_worker: float, storage_path: str, name: str,
              max_failures: int = 1, in_tune: bool = False, train_loop=train_func):
    """Fit one TorchTrainer running `train_loop` (`train_func` or a wrapper of it); returns its ray.train.Result.
    A run stopped by a non-finite loss returns with `error` set (a NonFiniteLossError naming the step and the last
    good checkpoint, which is `checkpoint`)."""
    return _fit(loop.to_dict(), workers, gpus_per_worker, storage_path, name, max_failures, in_tune, train_loop)


def _fit(train_loop_config: dict, workers: int, gpus_per_worker: float, storage_path: str, name: str,
         max_failures: int, in_tune: bool, train_loop, tune_checkpoints: bool = False):
    import ray.train
    from ray.train.torch import TorchTrainer

    check_online_workers(train_loop_config["darth"], workers)
    reports = None
    if in_tune:
        from ray.util.queue import Queue

        reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    resources = {"CPU": train_loop_config["threads_per_worker"]}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_loop, train_loop_config=train_loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       callbacks=[] if reports is None else [_ReportsToQueue(reports)],
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       # not every report's echo on the console (Ray's log files keep them)
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")))
    result = trainer.fit() if reports is None else _fit_reporting_to_tune(trainer, reports, tune_checkpoints)
    if result.return_value:  # train_func stopped at a non-finite loss
        last = result.checkpoint.path if result.checkpoint else "none"
        result = dataclasses.replace(result, error=NonFiniteLossError(
            f"{result.return_value}; last good checkpoint: {last}"))
    return result


class _ReportsToQueue(UserCallback):
    """Ray Train -> Tune: rank 0's metrics of every report and its checkpoint's path, into a queue the trial
    function empties (Ray's TuneReportCallback forwards the path only, as a metric; cloning schedulers need the
    checkpoint itself reported to Tune)."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


def _fit_reporting_to_tune(trainer, reports, tune_checkpoints: bool):
    """`trainer.fit()` in a thread while this (the trial's) thread reports each of its reports to Tune, with the
    checkpoint as a Tune checkpoint when `tune_checkpoints` (PBT clones trials from them)."""
    import queue
    import threading

    outcome = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the trial's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while thread.is_alive() or not reports.empty():
        try:
            metrics, path = reports.get(timeout=0.5)
        except queue.Empty:
            continue
        checkpoint = tune.Checkpoint(path) if path and tune_checkpoints else None
        tune.report({**metrics, **({"checkpoint_path": path} if path else {})}, checkpoint=checkpoint)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _trial(config: dict, base: dict) -> None:
    """Tune function trainable: `config` (Tune's draw from the param space) is the trial's train_loop_config. A trial
    PBT restarts (after an exploit: with the donor's checkpoint and perturbed values) starts a new Train run from
    its Tune checkpoint."""
    from ray.tune.search.repeater import TRIAL_INDEX

    trial_id = tune.get_context().get_trial_id()
    storage, name = Path(base["storage_path"]) / base["name"] / "train", trial_id
    if TRIAL_INDEX in config:  # the repeat of a configuration (ExperimentConfig.repeats): its own DARTH seed
        config = dict(config)
        repeat = config.pop(TRIAL_INDEX)
        config["darth"] = {**config["darth"], "seed": config["darth"]["seed"] + repeat}
    start = tune.get_checkpoint()
    if start is not None:
        copy = private_copy(Path(start.path), Path(tune.get_context().get_trial_dir()) / "start_checkpoint")
        config = {**config, "start_from": start.path, "start_copy": str(copy)}
        earlier_runs = [storage / trial_id, *storage.glob(f"{trial_id}.*")]
        name = f"{trial_id}.{len(earlier_runs)}"
        drop_superseded_checkpoints(earlier_runs)
    result = _fit(config, base["workers"], base["gpus"], str(storage), name, base["max_failures"], in_tune=True,
                  train_loop=train_func, tune_checkpoints=base["tune_checkpoints"])
    if result.error:  # the trial errors (Tune does not retry it), its last result naming the last good checkpoint
        tune.report({**(result.metrics or {}), ERROR_KEY: str(result.error),
                     "checkpoint_path": result.checkpoint.path if result.checkpoint else None})
        raise result.error


def private_copy(checkpoint: Path, target: Path) -> Path:
    """`checkpoint` (a folder) copied to `target`, replacing an earlier copy; atomic: a copy cut short is never used."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(checkpoint, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def drop_superseded_checkpoints(train_runs: list[Path]) -> None:
    """A trial PBT restarts goes on from its copy of a Tune checkpoint (`private_copy`), never from its earlier Train
    runs: their checkpoints are superseded. Removing them bounds the disk to one Train run's checkpoints per trial
    instead of one per trial and epoch (~16 GB for 8 trials x 6 epochs of the small model); the runs' logs stay."""
    for run in train_runs:
        for checkpoint in run.glob("checkpoint_*"):
            if checkpoint.is_dir():  # not checkpoint_manager_snapshot.json
                shutil.rmtree(checkpoint, ignore_errors=True)


class WandbCallback(tune.Callback):
    """One W&B run per trial, written by the Tune driver from the trial's reports (every step's losses, every
    evaluation). Tune hands each report to its callbacks before it acts on the scheduler's decision, so the
    evaluation that gets a trial stopped is in its run, and the run is finished when the trial ends, however it
    ends (completed, stopped by the scheduler, errored). Runs of a crashed worker group go on: rows of steps it
    repeats after its restart are logged again at their `train/step`. A trial PBT restarts keeps its run, which
    records where it went on from (`TrialLogger.log_restart`)."""

    def __init__(self, settings: dict, experiment: str, storage_path: str, workers: int, metric: str = "HOTA"):
        self.settings = {**{k: v for k, v in settings.items() if v is not None}, "group": experiment,
                         "dir": str(Path(storage_path) / experiment)}  # runs: <storage>/<experiment>/wandb/
        self.experiment, self.workers, self.metric = experiment, workers, metric
        self.loggers = {}
        self.started_from = {}  # trial id: the checkpoint its current Train run started from

    def _logger(self, trial):
        from darth_ray.wandb_logging import TrialLogger, WandbSettings

        if trial.trial_id not in self.loggers:
            self.loggers[trial.trial_id] = TrialLogger(
                WandbSettings(**self.settings), str(trial), {**trial.config["darth"], "workers": self.workers},
                run_id=f"{self.experiment}-{trial.trial_id}")
        return self.loggers[trial.trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if ERROR_KEY in result:
            return
        logger = self._logger(trial)
        start = result.get("start_from")
        if start and self.started_from.get(trial.trial_id) != start:  # restarted by PBT: from whose checkpoint
            self.started_from[trial.trial_id] = start
            donor = next((str(t) for t in trials if Path(start).is_relative_to(t.path)), start)
            logger.log_restart(result["resumed_from_step"], donor, trial.config["darth"])
        losses = {k: v for k, v in result.items() if k.startswith("loss_")}
        if losses:  # none: a method that learns nothing (source, adabn), or a restart with nothing left to do
            logger.log_step(result["step"], losses, result["lr"])
        if result.get(EVALUATED_KEY):
            # HOTA and the label-free scores side by side (eval/*); a result from before label-free has none
            improved = logger.log_eval(result["step"], {k: result[k] for k in REPORTED_METRICS if k in result})
            # The best evaluation (by the experiment's metric) so far: its track video and per-sequence table,
            # from the checkpoint it came with (write_eval_media); a checkpoint the driver cannot read is skipped.
            checkpoint = result.get("checkpoint_path")
            if self.metric in improved and checkpoint and (Path(checkpoint) / VIDEO_DIR).is_dir():
                logger.log_media(result["step"], Path(checkpoint) / VIDEO_DIR)

    def _finish(self, trial, exit_code: int) -> None:
        logger = self.loggers.pop(trial.trial_id, None)
        if logger:
            logger.finish(exit_code=exit_code)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, 0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, 1)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._finish(trial, 0)


def trial_scheduler(exp: "ExperimentConfig"):
    """The Tune scheduler `exp.scheduler` names (None: FIFO)."""
    if exp.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="epoch", max_t=exp.loop.darth.epochs, grace_period=1, reduction_factor=2)
    if exp.scheduler == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        # synch: every trial reaches the epoch (and its evaluation) before any is compared
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=1, synch=True, quantile_fraction=0.5,
                                       hyperparam_mutations=dict(exp.search_space),
                                       custom_explore_fn=functools.partial(clamp_to_space, space=exp.search_space))
    if exp.scheduler == "pb2":
        from ray.tune.schedulers.pb2 import PB2

        return PB2(time_attr="epoch", perturbation_interval=1, synch=True, quantile_fraction=0.5,
                   hyperparam_bounds=pb2_bounds(exp.search_space))
    return None


def pb2_bounds(space: Mapping) -> dict:
    """PB2's hyperparam_bounds, nested as the search space: [lower, upper] of every numeric sampler (PB2 models
    them on a linear scale). A categorical knob is an error naming it: PB2 cannot search it."""
    from ray.tune.search.sample import Float, Integer

    bounds: dict = {}
    for path, sampler in search_leaves(space):
        if not isinstance(sampler, (Float, Integer)):
            raise ValueError(f"search space {'.'.join(path)}: PB2 searches numeric ranges only, not "
                             f"{type(sampler).__name__}; use --scheduler pbt")
        high = sampler.upper - 1 if isinstance(sampler, Integer) else sampler.upper
        bounds = _with_value(bounds, path, [sampler.lower, high])
    return bounds


def search_algorithm(exp: "ExperimentConfig"):
    """Tune's searcher: random draws by Tune's BasicVariantGenerator, seeded by exp.seed (the same draws in every
    experiment of that seed, whichever its scheduler), or Optuna's TPE; with repeats, either as an Optuna searcher
    (random sampling or TPE) inside Tune's Repeater, which hands each draw out `repeats` times and reports the
    searcher their mean."""
    if exp.search == "random" and exp.repeats == 1:
        return BasicVariantGenerator(max_concurrent=exp.max_concurrent_trials or 0, random_state=exp.seed)
    import optuna
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    if exp.search == "random":
        searcher = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=exp.seed))
    else:
        searcher = OptunaSearch(seed=exp.seed)
    return searcher if exp.repeats == 1 else Repeater(searcher, repeat=exp.repeats, set_index=True)


def at_last_epoch(trial_id: str, result: dict) -> bool:
    """Tune's stop condition under PBT and PB2: a trial's last evaluation ends it, before PBT would clone a better trial's
    final weights into it (a restart with nothing left to train)."""
    return result.get("epoch", 0) >= result["config"]["darth"]["epochs"]


def clamp_to_space(config: dict, space: Mapping) -> dict:
    """PBT's perturbations (x0.8, x1.2) can leave a range (conf_thr 0.85 x 1.2): back to its bound."""
    from ray.tune.search.sample import Float, Integer

    for path, sampler in search_leaves(space):
        if isinstance(sampler, (Float, Integer)):
            parent = config
            for key in path[:-1]:
                parent = parent[key]
            high = sampler.upper - 1 if isinstance(sampler, Integer) else sampler.upper
            parent[path[-1]] = min(max(parent[path[-1]], sampler.lower), high)
    return config


def population_note(exp: ExperimentConfig) -> str | None:
    """Why a PBT/PB2 experiment compares fewer trials than it samples, or None. Tune starts a trial only when one
    of the `max_concurrent_trials` live ones ends (a trial PBT paused still counts), so the population is the trials
    that run together."""
    limit = exp.max_concurrent_trials
    total = exp.num_samples * exp.repeats
    if exp.scheduler not in CLONING_SCHEDULERS or limit is None or limit >= total:
        return None
    return (f"{exp.scheduler.upper()} evolves the trials that run together: with {limit} at a time of {total}, it "
            f"runs {-(-total // limit)} populations of up to {limit} one after another, not one of {total} (set "
            f"max_concurrent_trials / --max-concurrent-trials to {total} where the resources allow)")


def run_experiment(exp: ExperimentConfig, resume: bool = True):
    """Run (or resume) the Tune experiment; returns the ResultGrid.

    Ray needs its dashboard (the State API) here: when Tune ends a trial, Ray Train's placement-group cleaner
    frees the trial's worker CPUs only once it sees the controller gone, and without the State API it never
    does, so later trials wait forever for CPUs."""
    base = {"name": exp.name, "storage_path": exp.storage_path,
            "workers": exp.workers_per_trial, "gpus": exp.gpus_per_worker, "max_failures": exp.max_failures,
            "tune_checkpoints": exp.scheduler in CLONING_SCHEDULERS}
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
            changes = settings_changes({**SETTINGS_DEFAULTS, **json.loads(stored_file.read_text())}, settings)
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
    note = population_note(exp)
    if note:
        log.warning(note)
    callbacks = [ConsoleProgress(exp.metric, [".".join(path) for path, _ in search_leaves(exp.search_space)],
                                 exp.num_samples * exp.repeats, exp.loop.darth.epochs)]
    if exp.wandb is not None:
        callbacks.append(WandbCallback(exp.wandb, exp.name, exp.storage_path, exp.workers_per_trial, exp.metric))
    search_alg = search_algorithm(exp)
    tuner = tune.Tuner(
        trainable,
        param_space=trial_param_space(exp),
        tune_config=tune.TuneConfig(metric=exp.metric, mode="max", num_samples=exp.num_samples * exp.repeats,
                                    scheduler=trial_scheduler(exp), search_alg=search_alg,
                                    # the random generator limits itself (it was built with the limit)
                                    max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator)
                                    else exp.max_concurrent_trials),
        run_config=tune.RunConfig(name=exp.name, storage_path=exp.storage_path, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=0,  # ConsoleProgress prints a line per trial event instead of tables
                                  stop=at_last_epoch if exp.scheduler in CLONING_SCHEDULERS else None,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=exp.keep_checkpoints)),
    )
    return tuner.fit()

"""Ray Tune search over DARTH hyperparameters, trials ranked by HOTA (or mHOTA, the mean over classes), or without
labels by a label-free score (--select-by lf_agreement).

With no arguments: generate the embedded DanceTrack-like benchmark (cached in runs/benchmark), take the source
model shipped in the package (runs/source/final.pt; trained anew when the benchmark's source frames or the training
settings differ from those it records), then tune DARTH on the `night` target domain on a local Ray, sized for a
2-CPU laptop (about 15 minutes from a fresh clone, install included); trials start from the benchmark's DARTH settings
(darth_ray/embedded.py: target BN statistics, geometric views) and the searched knobs override them. On a cluster
(`ray job submit --working-dir . -- python experiments/tune_dance.py --data /data/DanceTrack --split val --source
qdtrack_mot17.pt --workers-per-trial 2 --gpus-per-worker 1 --num-samples 32`) the same script runs a real
experiment; `--data` may be any format darth-ray reads (a BDD100K `box_track_val_cocofmt.json` with `--images`,
Scalabel labels, a SHIFT view), and `--select-by mHOTA` ranks trials by the class-averaged HOTA.

Results: runs/tune/<name>/ (Tune's experiment directory: one folder per trial, resumable), the Train runs with
their checkpoints under runs/tune/<name>/train/, W&B runs under runs/tune/<name>/wandb/ (offline without an API
key), runs/tune/<name>/best.json with the ranking, runs/tune/<name>/label_free.json (each label-free score's rank
correlation with HOTA across the trials) and runs/tune/<name>/report.html with summary.png (--select-by per trial
over epochs, hyperparameters against it).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `ray job submit --working-dir .` runs this file without installing the package
# A trial's W&B run starts in the Tune driver at its first report (wandb.init: ~4 s here), and Ray would print four
# "may be a performance bottleneck" lines per trial for it; a callback slower than 5 s still gets them.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")

from ray import tune  # noqa: E402

from darth_ray.adapt.config import PROTOCOLS, RESETS  # noqa: E402
from darth_ray.adapt.methods import METHODS  # noqa: E402
from darth_ray.io import InputError, atomic_write_json  # noqa: E402

log = logging.getLogger("tune_dance")

# What the trials search (DARTH.md "What people tune"), nested as it reaches the worker: param_space ->
# train_loop_config -> TrainLoopConfig.darth. --searched picks knobs of it.
SEARCH_SPACE = {"darth": {
    "aug_strength": tune.uniform(0.5, 1.5),
    # Off (0) up to the published 0.5: on the embedded benchmark the photometric views cost more than they give.
    "photometric_prob": tune.uniform(0.0, 0.5),
    "channel_swap_prob": tune.uniform(0.0, 0.5),
    "rpn_weight": tune.loguniform(0.02, 0.5),
    "roi_weight": tune.loguniform(0.02, 0.5),
    "contrastive_weight": tune.loguniform(0.2, 2.0),
    "ema_momentum": tune.loguniform(5e-4, 1e-2),
    "conf_thr": tune.uniform(0.5, 0.9),
    "lr": tune.loguniform(5e-4, 5e-3),
}}
KNOBS = tuple(SEARCH_SPACE["darth"])

# Trials of the embedded default, sized so that README command 1 (install included) ends within 15 minutes on a
# 2-CPU laptop: 4 trials of 1 epoch, 2 at a time. The bigger search: --num-samples 16 --epochs 2 (ASHA then stops
# weak trials after their first epoch).
EMBEDDED = {"epochs": 1, "num_samples": 4}
# The split without --split: of the embedded benchmark, and of a --data folder that has one of that name.
DEFAULT_SPLIT = "val"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: this many options make the usage banner bury the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def at_least(low, kind=int):
    """An argparse type: a number >= low (argparse names the flag in the error)."""
    def parse(text: str):
        value = kind(text)  # a ValueError becomes argparse's "invalid int value"
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    from darth_ray.cli import _add_dataset_options
    from darth_ray.data.synth import KNOWN_DOMAINS
    from darth_ray.distributed.train import RANKING_METRICS
    from darth_ray.distributed.tune import SCHEDULERS

    p = _Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--data", type=Path, help="target dataset to adapt on and evaluate (see the dataset options; "
                                             f"without --split: <data>/{DEFAULT_SPLIT} where it exists); default: "
                                             "the embedded benchmark's --target-domain")
    g.add_argument("--target-domain", default="night", choices=KNOWN_DOMAINS,
                   help=f"embedded benchmark domain to adapt to (night), its --split {DEFAULT_SPLIT} by default")
    g.add_argument("--source", type=Path, help="source checkpoint; default: train one on the embedded source domain "
                                              "or reuse runs/source/final.pt")
    g.add_argument("--runs", type=Path, default=ROOT / "runs", help="where caches and results go (./runs)")
    _add_dataset_options(p, "--data")
    g.add_argument("--config", type=Path, default=None,
                   help="a DARTH adapter config of the authors (e.g. darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack"
                        ".py): every trial's base DARTH settings and tracker (as `darth-ray adapt --config`); the "
                        "searched knobs and --epochs override it; its model must be --source's")
    g = p.add_argument_group("trials")
    g.add_argument("--name", default=None, help="experiment name (default: darth-<target>)")
    g.add_argument("--num-samples", type=at_least(1), default=EMBEDDED["num_samples"], help="trials (4)")
    g.add_argument("--epochs", type=at_least(1), default=None,
                   help=f"DARTH epochs per trial ({EMBEDDED['epochs']}; with --config the file's)")
    g.add_argument("--method", choices=tuple(METHODS), help="adaptation method of every trial (darth)")
    g.add_argument("--protocol", choices=PROTOCOLS, help="how every trial sees the target (offline; online: each "
                   "sequence streams once, tracked before it is adapted on; needs --reset)")
    g.add_argument("--reset", choices=RESETS, help="with --protocol online: episodic (per sequence; shards over "
                   "workers) or continual (1 worker per trial)")
    g.add_argument("--workers-per-trial", type=at_least(1), default=1, help="Ray Train workers per trial (1)")
    g.add_argument("--gpus-per-worker", type=at_least(0, float), default=0.0, help="GPUs per Train worker (0)")
    g.add_argument("--threads-per-worker", type=at_least(1), default=1,
                   help="torch threads (and CPUs) per worker (1)")
    g.add_argument("--max-concurrent-trials", type=at_least(1), default=None,
                   help="default: the cluster's CPUs / (workers per trial x threads per worker); an autoscaling "
                        "cluster wants it set to what it may grow to")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="asha",
                   help="trial scheduler (asha); pbt: Population Based Training over the searched knobs, trials "
                        "cloning the better trials' checkpoints every epoch; pb2: the same cloning, new values from "
                        "PB2's Gaussian-process bandit within the search space's bounds")
    g.add_argument("--search", choices=("random", "optuna"), default="random", help="search algorithm (random)")
    g.add_argument("--select-by", "--metric", dest="metric", choices=RANKING_METRICS, default="HOTA",
                   help="what trials are ranked by (HOTA); HOTA and mHOTA (the mean of the per-class HOTAs, BDD100K's "
                        "headline metric) use the target's labels (oracle selection), lf_* do not "
                        "(darth_ray/eval/label_free.py)")
    g.add_argument("--searched", nargs="+", default=KNOBS, choices=KNOBS, metavar="KNOB",
                   help=f"hyperparameters to search (default: all): {', '.join(KNOBS)}")
    g.add_argument("--max-failures", type=at_least(-1), default=1,
                   help="worker-group restarts per trial (1; -1: no limit)")
    g.add_argument("--repeats", type=at_least(1), default=1,
                   help="runs of each sampled configuration, with DARTH seeds --seed, --seed + 1, ... (1); the "
                        "ranking gives each configuration's mean and spread; needs --scheduler fifo")
    g.add_argument("--keep-checkpoints", type=at_least(1), default=3,
                   help="checkpoints kept per trial, the newest (3; PBT clones trials from them)")
    g.add_argument("--no-resume", action="store_true",
                   help="start a new experiment even if one exists (the old one moves to <name>.<date-time>)")
    g = p.add_argument_group("Ray and W&B")
    g.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, or a new local Ray)")
    g.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None,
                   help="default: online with WANDB_API_KEY, else offline")
    g.add_argument("--wandb-project", default="darth_ray", help="W&B project (darth_ray)")
    g.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the files named on the command line hold, checked before Ray and its workers start (a bad one stops
    with one line naming the flag); paths become absolute."""
    from darth_ray.data.synth import CLASSES, SPLITS

    def check(flag: str, check_it):
        try:
            return check_it()
        except (InputError, OSError) as e:  # first line: torch's unpickling errors run on for several
            parser.error(f"argument {flag}: {str(e).splitlines()[0]}")

    how = {k: getattr(args, k) for k in ("protocol", "reset") if getattr(args, k)}
    if how:  # DarthConfig's and the Ray worker's own checks, before the benchmark and source model are made
        from darth_ray.adapt.config import DarthConfig
        from darth_ray.distributed.train import check_online_workers

        try:
            check_online_workers(DarthConfig(**how).to_dict(), args.workers_per_trial)
        except ValueError as e:
            parser.error(f"argument --protocol/--reset: {e}")
    if args.repeats > 1 and args.scheduler != "fifo":  # before the benchmark and source model are made
        parser.error(f"argument --repeats: needs --scheduler fifo (a configuration's mean over seeds is biased "
                     f"when {args.scheduler} stops or clones trials)")
    args.runs = args.runs.resolve()
    check("--runs", lambda: args.runs.mkdir(parents=True, exist_ok=True))
    if args.data is None:
        given = [f"--{name.replace('_', '-')}" for name in ("images", "classes", "class_map") if getattr(args, name)]
        if given:
            parser.error(f"argument {given[0]}: only with --data (the embedded benchmark has one class, pedestrian)")
        args.split = args.split or DEFAULT_SPLIT
        if args.split not in SPLITS:
            parser.error(f"argument --split: the embedded benchmark has {' and '.join(SPLITS)}, not {args.split!r}")
        names = list(CLASSES[:1])
    else:
        names = check_dataset(parser, args, check)
    if args.source is not None:
        args.source = args.source.resolve()
        model_classes = check("--source", lambda: source_classes(args.source))
        if model_classes != len(names):  # tracking would refuse it, after the trials' adaptation
            parser.error(f"argument --source: the model has {model_classes} classes, the target data {len(names)} "
                         f"({', '.join(names)}); choose the dataset's classes with --classes (and --class-map)")
    if args.config is not None:
        if args.source is None:
            parser.error("argument --config: needs --source, the checkpoint of the model the file describes")
        args.config = args.config.resolve()
        try:  # the whole message: it lists every setting of the file darth_ray cannot honour
            config_settings(args.config, args.source)
        except InputError as e:
            parser.error(f"argument --config: {e}")


def check_dataset(parser: argparse.ArgumentParser, args: argparse.Namespace, check) -> list[str]:
    """--data with its dataset options, read as the trials will read it; returns its class names."""
    from darth_ray.data.dataset import load_dataset

    args.data = args.data.resolve()
    if not args.data.exists():
        parser.error(f"argument --data: {args.data}: no such file or directory")
    if args.split is None and (args.data / DEFAULT_SPLIT).is_dir():
        args.split = DEFAULT_SPLIT
    if args.split is not None and not (args.data / args.split).exists():
        found = sorted(p.name for p in args.data.iterdir() if not p.name.startswith(".")) if args.data.is_dir() else []
        parser.error(f"argument --split: no {args.split!r} split in {args.data}"
                     + (f" (found: {', '.join(found)})" if found else ""))
    if args.images is not None:
        args.images = args.images.resolve()
        if not args.images.is_dir():
            parser.error(f"argument --images: {args.images}: not a directory")
    _, names = check("--data", lambda: load_dataset(args.data, args.split, args.images, args.classes, args.class_map,
                                                    require_images=True))
    if args.source is None:
        parser.error("argument --source: required with --data")
    return names


def source_classes(checkpoint: Path) -> int:
    """How many classes the source checkpoint's model detects (reading it checks that it is one)."""
    from darth_ray.models.qdtrack import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    return model.config.num_classes


def embedded_inputs(args) -> tuple[Path, Path]:
    """The embedded benchmark's target domain and a source model, generated/trained once, cached under --runs."""
    from darth_ray.embedded import ensure_benchmark, ensure_source_model

    bench = ensure_benchmark(args.runs)
    source = args.source or ensure_source_model(args.runs, bench)
    return bench / args.target_domain, source


@lru_cache(maxsize=4)
def config_settings(config: Path, source: Path) -> dict:
    """What a DARTH config file sets for `source` (darth_ray.mmconfig.darth_settings), read once."""
    from darth_ray.mmconfig import darth_settings

    return darth_settings(config, source)


def base_darth_config(args) -> dict:
    """What every trial starts from (the searched knobs override it): the seed; with --config the file's DARTH
    settings, --epochs if given; without, --epochs (2) with lr dropping before the last; on the embedded benchmark
    its DARTH settings beneath."""
    darth: dict = {"seed": args.seed, **{k: getattr(args, k) for k in ("method", "protocol", "reset")
                                         if getattr(args, k)}}
    if args.config is not None:
        darth = {**config_settings(args.config, args.source)["darth"], **darth}
        if args.epochs is not None:
            darth["epochs"] = args.epochs
    else:
        epochs = args.epochs or EMBEDDED["epochs"]
        darth.update(epochs=epochs, lr_steps=(max(epochs - 1, 1),))
    if args.data is None:
        from darth_ray.embedded import DARTH_SETTINGS

        darth = {**DARTH_SETTINGS, **darth}
    return darth


def base_tracker(args) -> dict:
    """The trials' tracker values: the config file's (none: QDTrack's defaults)."""
    return config_settings(args.config, args.source)["tracker"] if args.config is not None else {}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_inputs(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import ray
    import torch

    from darth_ray.distributed.local_ray import use_private_auth_token
    from darth_ray.adapt.config import DarthConfig
    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import EXPERIMENT_FILE, ExperimentConfig, run_experiment

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # Under `ray job submit` the cwd is the job's unpacked working dir, which Ray may replace while trials start
    # on this node: keep the driver's cwd somewhere stable (all paths are absolute from here on).
    os.chdir(args.runs)
    if args.data is None:
        data, source = embedded_inputs(args)
    else:
        data, source = args.data, args.source
    name = args.name or f"darth-{data.stem if data.is_file() else data.name}"
    loop = TrainLoopConfig(source=str(Path(source).resolve()), target=str(data), split=args.split,
                           images=args.images and str(args.images), classes=args.classes and tuple(args.classes),
                           class_map=args.class_map,
                           darth=DarthConfig.from_dict(base_darth_config(args)), tracker=base_tracker(args),
                           threads_per_worker=args.threads_per_worker)
    try:  # every sampler's range is checked against the trials' base config here, before Ray starts
        exp = ExperimentConfig(name=name, storage_path=str(args.runs / "tune"), loop=loop,
                               search_space={"darth": {k: SEARCH_SPACE["darth"][k] for k in args.searched}},
                               workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
                               num_samples=args.num_samples, max_concurrent_trials=args.max_concurrent_trials,
                               scheduler=args.scheduler, search=args.search, metric=args.metric,
                               max_failures=args.max_failures,
                               keep_checkpoints=args.keep_checkpoints, repeats=args.repeats,
                               seed=args.seed, wandb={"mode": args.wandb_mode, "project": args.wandb_project})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Under `ray job submit` RAY_ADDRESS names the cluster and the job's working dir carries the code;
    # without it a local Ray starts here (the package is installed in this environment), with a token that leaves
    # no ~/.ray/auth_token behind to change what the user's later `ray start` does.
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        use_private_auth_token()
        # A local Ray has no preemptible nodes; Ray Train's preemption watcher only prints an error-level line per
        # trial here (its constructor arguments in the object store). Cluster runs keep it.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address=address)
    if exp.max_concurrent_trials is None:  # trials beyond what the CPUs can run would only wait, holding processes
        cpus = int(ray.cluster_resources().get("CPU", 1))
        exp = dataclasses.replace(exp, max_concurrent_trials=max(1, cpus // (args.workers_per_trial
                                                                              * args.threads_per_worker)))
    try:
        grid = run_experiment(exp, resume=not args.no_resume)
    except InputError as e:
        hint = ("\nrerun with --no-resume to start a new experiment (the old one is kept), or pick another --name"
                if Path(e.path).name == EXPERIMENT_FILE else "")
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    return report(grid, exp)


# Beside the metric trials are ranked by: the trial's last evaluation (HOTA and others beside a label-free score).
SHOWN_METRICS = {"HOTA": ("DetA", "AssA", "MOTA", "IDF1"), "mHOTA": ("mMOTA", "mIDF1", "HOTA", "MOTA", "IDF1")}
BESIDE_LABEL_FREE = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")


def trial_row(result, search_space, metric: str = "HOTA") -> dict:
    """One trial of the ResultGrid as a row of best.json: its best `metric` (None without an evaluation), the last
    evaluation's other metrics, searched values, latest checkpoint, and error (one line; for a diverged trial its
    checkpoint is the last good one)."""
    from darth_ray.distributed.tune import searched_values

    m = result.metrics or {}
    best = m.get(f"best_{metric}", m.get(metric))
    error = m.get("error") or (str(result.error).strip().splitlines()[-1] if result.error else None)
    return {"trial": Path(result.path).name, metric: None if best is None or math.isnan(best) else best,
            **{k: m.get(k) for k in SHOWN_METRICS.get(metric, BESIDE_LABEL_FREE)},
            "config": searched_values(result.config, search_space), "checkpoint": m.get("checkpoint_path"),
            "error": error}


def format_values(config: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def rank_configurations(rows: list[dict], metric: str) -> list[dict]:
    """Trials grouped by their searched values (the repeats of one configuration), ranked by their mean `metric`:
    {config, mean, std (sample; 0 for one trial), n, trials}. Trials without the metric are left out."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row[metric] is not None and not row["error"]:
            groups.setdefault(json.dumps(row["config"], sort_keys=True), []).append(row)
    ranked = []
    for members in groups.values():
        values = [r[metric] for r in members]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        ranked.append({"config": members[0]["config"], "mean": mean, "std": std, "n": len(values),
                       "trials": [r["trial"] for r in members]})
    return sorted(ranked, key=lambda g: -g["mean"])


def report(grid, exp) -> int:
    """Print the best trials (by the experiment's metric) with their configs and checkpoints, then the errored
    trials with their errors; write best.json (the ranked trials, then the errored ones)."""
    metric = exp.metric
    rows = [trial_row(result, exp.search_space, metric) for result in grid]
    ranked = sorted((r for r in rows if r[metric] is not None and not r["error"]), key=lambda r: -r[metric])
    errored = [r for r in rows if r["error"]]
    if ranked:
        print(f"\nbest trials of {exp.name} (by {metric}):")
    for i, r in enumerate(ranked[:5], 1):
        cfg = format_values(r["config"])
        scores = "  ".join(f"{k} {r[k]:.2f}" for k in (metric, *SHOWN_METRICS.get(metric, BESIDE_LABEL_FREE)))
        print(f"{i}. {r['trial']}: {scores}\n   {cfg}\n   checkpoint: {r['checkpoint']}")
    if errored:
        print(f"\nerrored trials of {exp.name}:")
    for r in errored:
        print(f"- {r['trial']}: {r['error']}\n   last checkpoint: {r['checkpoint']}")
    if not ranked:
        print(f"no trial reported {metric}; see the trial logs under", Path(exp.storage_path) / exp.name)
        return 1
    from darth_ray.eval.report import ORACLE_METRICS, label_free_correlations, read_trials, write_experiment_report

    print("selected with the target's labels (oracle)" if metric in ORACLE_METRICS else "selected without labels")
    experiment_dir = Path(exp.storage_path) / exp.name
    best = atomic_write_json(experiment_dir / "best.json", ranked + errored)
    print(f"\nranking written to {best}")
    if exp.repeats > 1:
        configurations = rank_configurations(rows, metric)
        print(f"\nbest configurations of {exp.name} ({metric}, mean +- std over {exp.repeats} seeds):")
        for i, g in enumerate(configurations[:5], 1):
            print(f"{i}. {metric} {g['mean']:.2f} +- {g['std']:.2f} (n={g['n']})\n   {format_values(g['config'])}")
        path = atomic_write_json(experiment_dir / "configurations.json", configurations)
        print(f"configurations written to {path}")
    print("\nlabel-free scores against HOTA (Spearman's rank correlation across trials):")
    for name, c in label_free_correlations(read_trials(experiment_dir)).items():
        rho = "undefined" if c["spearman"] is None else f"{c['spearman']:+.2f}"
        print(f"  {name:<16} {rho} ({c['trials']} trials)")
    pages = write_experiment_report(experiment_dir, metric)
    print(f"report (opens offline): {pages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Random search with FIFO, ASHA and PBT at the same budget, on a cheap proxy of the embedded benchmark: the compute
(trial-epochs) each spends before one of its evaluations comes within 1 HOTA of the best configuration that
exhaustive FIFO finds, as a share of exhaustive FIFO's compute (the baseline; target: ASHA at most 40%).

    python benchmarks/bench_tune.py [--samples 8] [--epochs 6] [--frames 8] [--domain night]
    python benchmarks/bench_tune.py --read /tmp/bench_tune_XXXX   # the numbers of an earlier run, again

The proxy: the embedded benchmark's scenes, 2 validation sequences of --frames frames of --domain, the source model
shipped in the package, the embedded DARTH settings and experiments/tune_dance.py's search space. All three
experiments draw the same configurations (Tune's random search seeded alike). Every epoch of every trial is
evaluated, so an evaluation is a trial-epoch of compute; they are counted in the order they finished. Each
experiment's checkpoints are removed once it ends (8 x 6 epochs leave ~16 GB); the trials' results stay for --read.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEDULERS = ("fifo", "asha", "pbt")
WITHIN = (1.0, 0.5, 0.25)  # HOTA: the target (1) and stricter ones, for a proxy whose configurations lie close


def evaluations(experiment_dir: Path) -> list[tuple[float, float, str]]:
    """(time, HOTA, trial) of every evaluation an experiment's trials reported, in the order they finished (read
    from the trial folders: a Result's metrics_dataframe drops a PBT-restarted trial's earlier rows)."""
    from darth_ray.eval.report import read_trials

    return sorted((float(r["timestamp"]), float(r["HOTA"]), trial.path.name)
                  for trial in read_trials(experiment_dir) for r in trial.results if r.get("evaluated") is True)


def drop_checkpoints(experiment_dir: Path) -> int:
    """Removes an experiment's checkpoints (its Train runs' and its trials' own, ~200 MB each: a PBT run here leaves
    ~16 GB), keeping what the numbers are read from; returns the bytes freed."""
    import shutil

    folders = [experiment_dir / "train"] + sorted(experiment_dir.glob("*/checkpoint_*"))
    freed = sum(f.stat().st_size for folder in folders if folder.is_dir() for f in folder.rglob("*") if f.is_file())
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def compute_to_reach(rows: list[tuple[float, float, str]], target: float) -> int | None:
    """Trial-epochs spent until the first evaluation at or above `target` (None: never)."""
    for spent, (_, hota, _) in enumerate(rows, start=1):
        if hota >= target:
            return spent
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=8, help="configurations drawn (the same for each scheduler; 8)")
    p.add_argument("--epochs", type=int, default=6, help="DARTH epochs per trial (6)")
    p.add_argument("--frames", type=int, default=8, help="frames per validation sequence (2 sequences; 8)")
    p.add_argument("--domain", default="night", help="target domain of the proxy (night)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at a time (2: one per CPU here)")
    p.add_argument("--schedulers", nargs="+", default=SCHEDULERS, choices=SCHEDULERS)
    p.add_argument("--read", type=Path, help="a finished run's folder (printed at its start): its numbers only")
    args = p.parse_args()

    folder = args.read or run(args)
    rows = {s: evaluations(folder / "tune" / s) for s in args.schedulers if (folder / "tune" / s).is_dir()}
    wall = {s: rows[s][-1][0] - rows[s][0][0] for s in rows}  # first to last evaluation
    fifo = rows.get("fifo")
    if not fifo:
        raise SystemExit(f"{folder}: no FIFO evaluations to compare with")
    exhaustive = len(fifo)
    best = max(h for _, h, _ in fifo)
    per_config = [max(h for _, h, name in fifo if name == trial) for trial in {name for _, _, name in fifo}]
    print(f"\n{folder}: {len(per_config)} configurations, {exhaustive} trial-epochs exhaustively; the configurations' "
          f"best evaluations span HOTA {min(per_config):.2f}-{best:.2f}")
    head = "".join(f"{'within ' + format(w, 'g'):>13}" for w in WITHIN)
    print(f"trial-epochs (share of exhaustive FIFO's) until an evaluation is within x HOTA of FIFO's best ({best:.2f})")
    print(f"{'scheduler':<10}{head}{'run':>8}{'best HOTA':>11}{'min*':>7}")
    for scheduler, evaluated in rows.items():
        cells = ""
        for within in WITHIN:
            spent = compute_to_reach(evaluated, best - within)
            cells += f"{f'{spent} ({spent / exhaustive:.0%})' if spent else 'never':>13}"
        print(f"{scheduler:<10}{cells}{len(evaluated):>8}{max(h for _, h, _ in evaluated):>11.2f}"
              f"{wall[scheduler] / 60:>7.1f}")
    print("* minutes from the first evaluation to the last")
    if "asha" in rows:
        spent = compute_to_reach(rows["asha"], best - WITHIN[0])
        verdict = "met" if spent and spent <= 0.4 * exhaustive else "missed"
        print(f"ASHA vs exhaustive FIFO (baseline): {(spent or exhaustive) / exhaustive:.2f}x of the compute to come "
              f"within {WITHIN[0]:g} HOTA (target <= 0.40x: {verdict}); its whole run {len(rows['asha']) / exhaustive:.2f}x")


def run(args) -> Path:
    """The three experiments on a fresh proxy; returns their folder."""
    import ray
    import torch

    from darth_ray.adapt.config import DarthConfig
    from darth_ray.data.synth import SynthConfig, generate_benchmark
    from darth_ray.distributed.local_ray import use_private_auth_token
    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import ExperimentConfig, run_experiment
    from darth_ray.embedded import DARTH_SETTINGS, PACKAGED_SOURCE, SOURCE_TRAINING, unpack_source_model
    from experiments.tune_dance import SEARCH_SPACE

    tmp = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    print(f"proxy and experiments in {tmp}", flush=True)
    generate_benchmark(tmp / "bench", SynthConfig(domains=("source", args.domain), train_sequences=1, val_sequences=2,
                                                  frames=args.frames), progress=False)
    source = tmp / "source.pt"
    packaged = torch.load(PACKAGED_SOURCE, map_location="cpu", weights_only=True)
    if not unpack_source_model(PACKAGED_SOURCE, SOURCE_TRAINING, packaged["benchmark"], source):
        raise SystemExit(f"{PACKAGED_SOURCE}: not the packaged source model of SOURCE_TRAINING")
    darth = DarthConfig(**DARTH_SETTINGS, epochs=args.epochs, lr_steps=(max(args.epochs - 1, 1),))
    loop = TrainLoopConfig(source=str(source), target=str(tmp / "bench" / args.domain), split="val", darth=darth,
                           checkpoint_every=10_000, report_every=10_000)  # checkpoints and reports: epoch ends

    use_private_auth_token()
    ray.init(num_cpus=args.concurrent, include_dashboard=True, log_to_driver=False)  # Train's PG cleaner: State API
    try:
        for scheduler in args.schedulers:
            exp = ExperimentConfig(name=scheduler, storage_path=str(tmp / "tune"), loop=loop, search_space=SEARCH_SPACE,
                                   num_samples=args.samples, max_concurrent_trials=args.concurrent,
                                   scheduler=scheduler, wandb=None, seed=0)
            t0 = time.perf_counter()
            run_experiment(exp)
            minutes = (time.perf_counter() - t0) / 60
            freed = drop_checkpoints(tmp / "tune" / scheduler)
            print(f"{scheduler}: {minutes:.1f} min ({freed / 2**30:.1f} GB of checkpoints removed)", flush=True)
    finally:
        ray.shutdown()
    return tmp


if __name__ == "__main__":
    main()

"""DARTH adaptation throughput on Ray Train with 1 and 2 workers (1 torch thread each) on this machine, their
ratio (target >= 1.85x), and Ray Tune's overhead per trial (experiment wall time minus the same trials fitted
directly, per trial).

    python benchmarks/bench_ray.py [--frames 40] [--source CKPT]

Frames/s is measured inside the workers from their first to their last step (start-up excluded): every worker
adapts on its own shard and gradients are averaged each step.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch


def wait_for_free_cpus(timeout: float = 120.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) \
            and time.monotonic() < deadline:
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=40, help="frames per target sequence (2 sequences)")
    p.add_argument("--source", type=Path, help="source checkpoint (default: random-init small model)")
    p.add_argument("--settle", type=float, default=45.0, help="seconds to let Ray start up before timing (45)")
    p.add_argument("--skip-scaling", action="store_true", help="only measure Tune's overhead per trial")
    args = p.parse_args()

    import ray

    from ray import tune

    from darth_ray.adapt.config import DarthConfig
    from darth_ray.data.synth import SynthConfig, generate_benchmark
    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import ExperimentConfig, fit_trial, run_experiment
    from darth_ray.models.qdtrack import build_model, save_checkpoint

    tmp = Path(tempfile.mkdtemp())
    generate_benchmark(tmp / "bench", SynthConfig(domains=("source", "night"), frames=args.frames,
                                                  train_sequences=1, val_sequences=2), progress=False)
    source = args.source.resolve() if args.source else None  # workers run in other directories
    if source is None:
        torch.manual_seed(0)
        source = tmp / "source.pt"
        save_checkpoint(source, build_model("small"))
    # conf_thr 0.05 so even a random-init teacher yields pseudo-boxes and the contrastive branch runs
    loop = TrainLoopConfig(source=str(source), target=str(tmp / "bench" / "night"), split="val",
                           darth=DarthConfig(epochs=1, lr_steps=(1,), conf_thr=0.05), eval_every_epoch=False,
                           final_eval=False, checkpoint_every=10_000, report_every=10_000)
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)  # Train's PG cleaner needs the State API
    time.sleep(args.settle)  # the dashboard's processes start up for a while, taking CPU from the first fit
    fps = {}
    for workers in () if args.skip_scaling else (1, 2):
        wait_for_free_cpus()
        result = fit_trial(loop, workers, 0, str(tmp / "train"), name=f"w{workers}")
        fps[workers] = result.metrics["adapt_frames_per_s"]
        print(f"{workers} worker(s): {fps[workers]:.2f} frames/s")
    if fps:
        print(f"2 workers vs 1 (baseline): {fps[2] / fps[1]:.2f}x (target >= 1.85x)")

    small = dataclasses.replace(loop, darth=dataclasses.replace(loop.darth, epochs=1),
                                target=str(tmp / "bench" / "night"))
    direct = 0.0
    for i in range(2):
        wait_for_free_cpus()  # a finished trainer's workers are released asynchronously
        t0 = time.perf_counter()
        fit_trial(small, 1, 0, str(tmp / "direct"), name=f"direct{i}")
        direct += (time.perf_counter() - t0) / 2
    wait_for_free_cpus()
    exp = ExperimentConfig(name="overhead", storage_path=str(tmp / "tune"), loop=small, num_samples=2,
                           scheduler="fifo", max_concurrent_trials=1, wandb=None,
                           search_space={"darth": {"conf_thr": tune.uniform(0.5, 0.9)}})
    t0 = time.perf_counter()
    run_experiment(exp)
    tuned = (time.perf_counter() - t0) / 2
    print(f"one trial fitted directly: {direct:.1f} s; inside Tune: {tuned:.1f} s; "
          f"Tune overhead per trial: {tuned - direct:.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()

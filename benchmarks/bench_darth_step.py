"""Where a DARTH step's time goes, for the small configuration on this CPU: frame loading, teacher
pseudo-labelling, view building, proposal sampling, EMA update, and the rest (teacher forward on the teacher view,
student forward/backward, optimiser step). "Outside model compute" = loading + views + sampling + EMA; the target
is at most 10% of the step.

    python benchmarks/bench_darth_step.py [--source CKPT] [--steps 8] [--threads 2]

Without --source a random-init small model is used and pseudo-boxes are drawn from the ground truth, so the
patch-contrastive branch does real work either way.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import darth_ray.adapt.darth as darth_module
import darth_ray.adapt.teacher_student as teacher_student_module
from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.loop import AdaptationRun
from darth_ray.data.mot import load_sequences
from darth_ray.data.synth import SynthConfig, generate_benchmark
from darth_ray.models.qdtrack import build_model, save_checkpoint

TIMES: dict[str, float] = defaultdict(float)


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, help="source checkpoint (default: random-init small model)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    generate_benchmark(tmp / "bench", SynthConfig(domains=("source", "night"), frames=20, train_sequences=1,
                                                  val_sequences=1), progress=False)
    source = args.source
    if source is None:
        torch.manual_seed(0)
        source = save_checkpoint(tmp / "source.pt", build_model("small"))
    sequences = load_sequences(tmp / "bench" / "night", split="val", require_images=True)
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    run = AdaptationRun(source, sequences, frames, DarthConfig(epochs=1))
    if args.source is None:  # ground-truth boxes stand in for confident pseudo-labels
        seq = sequences[0]

        def pseudo_labels(frames_batch):
            run.method.teacher_pseudo_labels_original(frames_batch)  # keep its cost in the measurement
            picks = run.batch_frames(run.step)
            return [torch.as_tensor(seq.targets(f)["boxes"], dtype=torch.float32) for _, f in picks]

        run.method.teacher_pseudo_labels_original = run.method.pseudo_labels
        run.method.pseudo_labels = pseudo_labels
    run.method.pseudo_labels = timed("teacher pseudo-labels", run.method.pseudo_labels)
    darth_module.build_views = timed("view building", darth_module.build_views)
    darth_module.assign_and_sample = timed("proposal sampling", darth_module.assign_and_sample)
    teacher_student_module.ema_update = timed("EMA update", teacher_student_module.ema_update)
    run.frames_ahead.get = timed("frame loading", run.frames_ahead.get)  # what decoding ahead leaves to wait for

    run.run_step()  # warm-up
    t0 = time.perf_counter()  # target_bn_stats: one feature pass over the run's frames (timed after the warm-up)
    seen = run.use_target_bn_statistics()
    bn_per_frame = (time.perf_counter() - t0) / seen
    TIMES.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        run.run_step()
    total = (time.perf_counter() - t0) / args.steps
    per_step = {k: v / args.steps for k, v in TIMES.items()}
    model = total - sum(per_step.values())
    print(f"DARTH step, small config, {run.config.frames_per_batch} frames of 320x192, torch threads {args.threads}, "
          f"{args.steps} steps")
    rows = list(per_step.items()) + [("teacher fwd + student fwd/bwd + SGD", model)]
    for name, seconds in rows:
        print(f"  {name:<38} {seconds * 1000:8.1f} ms  {100 * seconds / total:5.1f}%")
    print(f"  {'total':<38} {total * 1000:8.1f} ms")
    outside = sum(per_step[k] for k in ("frame loading", "view building", "proposal sampling", "EMA update"))
    print(f"outside model compute: {100 * outside / total:.1f}% of the step (target <= 10%)")
    steps_per_frame = 2 / run.config.frames_per_batch  # 2 epochs, as in the README's table
    print(f"target BN statistics (once, before step 1): {bn_per_frame * 1000:.1f} ms per target frame = "
          f"{100 * bn_per_frame / (steps_per_frame * total):.1f}% of a 2-epoch adaptation's time")


if __name__ == "__main__":
    main()

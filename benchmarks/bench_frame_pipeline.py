"""Does the frame pipeline hide JPEG decoding? DARTH step time on 1920x1080 JPEG frames (decoded ahead in
background threads, the default), against the same steps on frames already in memory, and on JPEGs decoded in
the step (no read-ahead). Then AMP bf16 against float32, and channels_last against the default layout, on the same
steps.

    python benchmarks/bench_frame_pipeline.py [--steps 6] [--threads 2] [--img-scale 640 640] [--model small]

The small model by default: its step is short enough (~1 s here) for decoding (~30 ms a frame) to show.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from darth_ray.adapt.loop import AdaptationRun
from darth_ray.data.mot import load_sequences
from darth_ray.data.prefetch import Prefetcher
from gpu_check import darth_config, source_checkpoint, write_sequence


def step_time(source, data, config, steps: int, variant: str) -> float:
    sequences = load_sequences(data, require_images=True)
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    if variant == "in memory":
        for seq in sequences:
            cache = {f: seq.load_image(f) for f in range(1, seq.num_frames + 1)}
            seq.load_image = cache.__getitem__
    run = AdaptationRun(source, sequences, frames, config)
    if variant == "decoded in the step":
        run.frames_ahead = Prefetcher(run.frames_ahead.load, "cpu", run.total_steps, depth=0)
    run.run_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        run.run_step()
    run.frames_ahead.close()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--img-scale", type=int, nargs=2, default=(640, 640))
    p.add_argument("--model", choices=("small", "r50_fpn"), default="small")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    frames = 2 * (args.steps + 1)
    write_sequence(work / "data", "pipeline", frames, (1920, 1080))
    source = source_checkpoint(work, args.model)
    scale = {"frame": (1920, 1080), "img_scale": tuple(args.img_scale)}
    config = darth_config(scale, "off", frames, args.steps)
    times = {v: step_time(source, work / "data", config, args.steps, v)
             for v in ("in memory", "JPEG, read ahead", "decoded in the step")}
    for name, change in (("bf16", {"amp": "bf16"}), ("channels_last", {"channels_last": True}),
                         ("bf16, channels_last", {"amp": "bf16", "channels_last": True})):
        times[f"JPEG, read ahead, {name}"] = step_time(source, work / "data", dataclasses.replace(config, **change),
                                                       args.steps, "JPEG, read ahead")
    print(f"DARTH step, {args.model}, 2 frames of 1920x1080 -> views in {tuple(args.img_scale)}, "
          f"{args.threads} threads, {args.steps} steps")
    base = times["in memory"]
    for name, seconds in times.items():
        print(f"  {name:<36} {seconds * 1000:8.1f} ms  x{seconds / base:.3f} of frames in memory")
    print(f"JPEG read ahead / in memory: {times['JPEG, read ahead'] / base:.3f} (target <= 1.05)")
    ahead = times["JPEG, read ahead"]
    print(f"AMP bf16 / fp32 step time: {times['JPEG, read ahead, bf16'] / ahead:.3f}")
    print(f"channels_last / default layout step time: fp32 {times['JPEG, read ahead, channels_last'] / ahead:.3f}, "
          f"bf16 {times['JPEG, read ahead, bf16, channels_last'] / times['JPEG, read ahead, bf16']:.3f}")


if __name__ == "__main__":
    main()

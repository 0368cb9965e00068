"""QDTrack speed and memory on this machine: inference frames/s (detect + embed), supervised train-step time,
and peak resident memory, for the `small` and `r50_fpn` configurations (random weights, box regressors zeroed). Each measurement runs in its own
process so peak memory is its own. The baseline in the same run is r50_fpn; ratios are small / r50_fpn.

    python benchmarks/bench_models.py [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CASES = {  # config: (input height, width, frames per batch)
    "small": (192, 320, 2),
    "r50_fpn": (608, 1088, 1),
}


def measure(name: str, threads: int, repeats: int) -> dict:
    import torch

    from darth_ray.eval.track import detect_and_embed
    from darth_ray.models.qdtrack import build_model
    from darth_ray.source_training import qdtrack_losses

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h, w, batch = CASES[name]
    model = build_model(name)
    # Random box regressors send unclipped proposals to tens of thousands of pixels, where adaptive-sampling
    # RoIAlign costs ~10x more than with trained weights; zeroed, proposals are anchor-sized as when trained.
    with torch.no_grad():
        for layer in (model.rpn.bbox_pred, model.box_head.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
    frames = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8)
    model.eval()
    detect_and_embed(model, frames)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        detect_and_embed(model, frames)
    infer = (time.perf_counter() - t0) / repeats

    model.train()
    boxes = torch.tensor([[20.0, 30.0, 60.0, 130.0], [100.0, 40.0, 140.0, 150.0], [200.0, 20.0, 240.0, 120.0]])
    targets = [{"boxes": boxes.clone(), "ids": torch.tensor([1, 2, 3])} for _ in range(2 * batch)]
    images = torch.randint(0, 256, (2 * batch, 3, h, w), dtype=torch.uint8)  # key + reference frames
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        losses = qdtrack_losses(model, images, targets, batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    step()
    t0 = time.perf_counter()
    for _ in range(max(1, repeats // 2)):
        step()
    train = (time.perf_counter() - t0) / max(1, repeats // 2)
    return {"config": name, "input": f"{w}x{h}", "batch": batch, "infer_s_per_batch": infer,
            "frames_per_s": batch / infer, "train_step_s": train,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--one", choices=tuple(CASES), help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads, args.repeats)))
        return
    rows = []
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'config':<8} {'input':>9} {'batch':>5} {'frames/s':>9} {'infer s/batch':>13} {'train step s':>12} "
          f"{'peak RSS MB':>11}   (torch threads: {args.threads})")
    for r in rows:
        print(f"{r['config']:<8} {r['input']:>9} {r['batch']:>5} {r['frames_per_s']:>9.2f} "
              f"{r['infer_s_per_batch']:>13.3f} {r['train_step_s']:>12.3f} {r['peak_rss_mb']:>11.0f}")
    small, r50 = rows
    print(f"small vs r50_fpn (baseline): {small['frames_per_s'] / r50['frames_per_s']:.1f}x inference frames/s, "
          f"{r50['train_step_s'] / small['train_step_s']:.1f}x faster train steps, "
          f"{small['peak_rss_mb'] / r50['peak_rss_mb']:.2f}x peak memory")


if __name__ == "__main__":
    main()

"""Time ``build_views`` against the per-image numpy/OpenCV pipeline of the original implementation.

The baseline does, per frame and per view, what DARTH's mmdet/mmtrack transforms do (mattiasegu/darth,
``darth_qdtrack.py``: ``img.cpu().numpy().transpose(1, 2, 0)`` per frame, the view pipelines, collate): numpy HWC,
cv2.flip, cv2.resize of the whole frame (keep ratio, INTER_LINEAR), crop, pad to the target size, and for the
student and contrastive views mmdet's PhotoMetricDistortion in float32 (brightness, contrast, saturation and hue in
HSV via cv2.cvtColor, channel swap); then torch.from_numpy and stack.

Two baselines: "float32" is the original (its frames are loaded with ``to_float32=True``, so the geometric
transforms run on float32 too; the frames are converted to float32 before timing); "uint8 geo" runs flip/resize/crop
on uint8 and converts to float32 only for the photometric distortion (a faster variant, for a conservative ratio).
The original also deep-copies every frame several times and normalises and pads each view; the baselines don't.

The pipelines run interleaved so that they share whatever else loads the machine; the process CPU time column shows
the work done (on a shared machine, wall time with 2 threads depends on what the other processes leave free).

    .venv/bin/python benchmarks/bench_views.py [--runs 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.views import build_views

FRAME_W, FRAME_H = 1920, 1080
TARGET_W, TARGET_H = 1088, 608
NUM_BOXES = 20


def photometric_distortion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmdet 2.x / mmtrack PhotoMetricDistortion on a float32 BGR image (each op with probability 0.5)."""
    if rng.integers(2):
        img += rng.uniform(-32, 32)
    contrast_first = rng.integers(2)
    if contrast_first and rng.integers(2):
        img *= rng.uniform(0.5, 1.5)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if rng.integers(2):
        img[..., 1] *= rng.uniform(0.5, 1.5)
    if rng.integers(2):
        img[..., 0] += rng.uniform(-18, 18)
        img[..., 0][img[..., 0] > 360] -= 360
        img[..., 0][img[..., 0] < 0] += 360
    img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.integers(2):
        img *= rng.uniform(0.5, 1.5)
    if rng.integers(2):
        img = img[..., rng.permutation(3)]
    return img


def geometric_view(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """mmdet RandomFlip(0.5) + Resize(keep_ratio, ratio_range (0.8, 1.2)) + RandomCrop(target) + Pad(target)."""
    h, w = img.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        img = cv2.flip(img, 1)
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    factor = rng.uniform(0.8, 1.2) * min(TARGET_W / w, TARGET_H / h)
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    boxes *= np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    x0 = rng.integers(0, max(new_w - TARGET_W, 0) + 1)
    y0 = rng.integers(0, max(new_h - TARGET_H, 0) + 1)
    img = img[y0:y0 + TARGET_H, x0:x0 + TARGET_W]
    boxes -= np.array([x0, y0, x0, y0], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, img.shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, img.shape[0])
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    padded = np.zeros((TARGET_H, TARGET_W, 3), dtype=img.dtype)
    padded[:img.shape[0], :img.shape[1]] = img
    return padded, boxes


def numpy_cv2_views(frames: torch.Tensor, pseudo_boxes: list[torch.Tensor], rng: np.random.Generator):
    teachers, students, contrastives, teacher_boxes, contrastive_boxes = [], [], [], [], []
    for frame, boxes in zip(frames, pseudo_boxes):
        img = np.ascontiguousarray(frame.permute(1, 2, 0).numpy())  # CHW -> HWC, as darth_qdtrack.to_results
        boxes_np = boxes.numpy()
        teacher, t_boxes = geometric_view(img, boxes_np, rng)
        student = photometric_distortion(teacher.astype(np.float32), rng)
        contrastive, c_boxes = geometric_view(img, boxes_np, rng)
        contrastive = photometric_distortion(contrastive.astype(np.float32), rng)
        teachers.append(torch.from_numpy(np.ascontiguousarray(teacher.transpose(2, 0, 1))))
        students.append(torch.from_numpy(np.ascontiguousarray(student.transpose(2, 0, 1))))
        contrastives.append(torch.from_numpy(np.ascontiguousarray(contrastive.transpose(2, 0, 1))))
        teacher_boxes.append(torch.from_numpy(t_boxes))
        contrastive_boxes.append(torch.from_numpy(c_boxes))
    return torch.stack(teachers), torch.stack(students), torch.stack(contrastives), teacher_boxes, contrastive_boxes


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([FRAME_W - 200.0, FRAME_H - 400.0])
    wh = 40 + torch.rand(n, 2, generator=generator) * torch.tensor([150.0, 350.0])
    return torch.cat([xy, xy + wh], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    data_gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, FRAME_H, FRAME_W), dtype=torch.uint8, generator=data_gen)
    pseudo_boxes = [random_boxes(NUM_BOXES, data_gen) for _ in range(2)]
    config = DarthConfig(target_size=(TARGET_W, TARGET_H))
    view_gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)

    frames_float = frames.float()  # the original holds its frames as float32 (to_float32=True)
    pipelines = {
        "build_views": lambda: build_views(frames, pseudo_boxes, config, view_gen),
        "numpy/cv2 float32": lambda: numpy_cv2_views(frames_float, pseudo_boxes, rng),
        "numpy/cv2 uint8 geo": lambda: numpy_cv2_views(frames, pseudo_boxes, rng),
    }
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    for run in range(args.warmup + args.runs):
        for name, fn in pipelines.items():  # interleaved, so every pipeline sees the same background load
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if run >= args.warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(f"2 frames {FRAME_W}x{FRAME_H} -> 3 views {TARGET_W}x{TARGET_H}, {NUM_BOXES} boxes each, "
          f"{args.threads} threads, per call over {args.runs} runs: wall median (min), process CPU time median")
    ours = statistics.median(wall["build_views"])
    for name, ts in wall.items():
        ratio = "" if name == "build_views" else f"   build_views is {statistics.median(ts) / ours:.1f}x faster"
        print(f"  {name:20s} {statistics.median(ts) * 1e3:7.1f} ms ({min(ts) * 1e3:6.1f} ms)   "
              f"CPU {statistics.median(cpu[name]) * 1e3:6.1f} ms{ratio}")


if __name__ == "__main__":
    main()

"""Time ``build_views`` against the per-image numpy/OpenCV pipeline of the original implementation.

Three per-image baselines, all on the same 2 frames with the same augmentation ranges:

- "original _prepare_views": what DARTH's ``DARTHQDTrack._prepare_views`` (mattiasegu/darth, ``darth_qdtrack.py``)
  does around its mmdet/mmtrack transforms, step for step: each frame to numpy HWC (``to_results``), the result
  dicts deep-copied where the original deep-copies them, the plain frame through the out pipeline for the teacher's
  pseudo-labelling pass, the teacher view (flip/resize/crop) through the out pipeline twice (key and reference
  copy), the student view (photometric on the teacher view) and the contrastive view (flip/resize/crop/photometric)
  through it once each; out pipeline = mmcv's imnormalize (float32), Pad(size_divisor=32), DefaultFormatBundle
  (HWC -> CHW tensor); then collate (pad to the largest view, stack). Frames are float32 (``to_float32=True``).
- "numpy/cv2 float32": only the augmentations of the three views (flip, keep-ratio resize, crop, mmdet's
  PhotoMetricDistortion in float32 with HSV via cv2.cvtColor), then from_numpy and collate (pad to the largest
  view): no normalising, padding to /32, deep copies, plain-frame pass or duplicated teacher pass.
- "numpy/cv2 uint8 geo": the same with flip/resize/crop on uint8 (float32 only for the photometric distortion).

To compare like with like against the first baseline, "build_views + normalise" adds what darth_ray does to get the
same normalised float32 network inputs (plain frames and three views; ``QDTrack.normalize``).

The pipelines run interleaved so that they share whatever else loads the machine; the process CPU time column shows
the work done (on a shared machine, wall time with 2 threads depends on what the other processes leave free).

    .venv/bin/python benchmarks/bench_views.py [--runs 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import cv2
import numpy as np
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.views import build_views
from darth_ray.models.qdtrack import build_model

FRAME_W, FRAME_H = 1920, 1080
IMG_SCALE = (1088, 1088)  # the published views: fit (1088, 1088) x ratio (0.8, 1.2), crop at most (1088, 1088)
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
    """mmdet RandomFlip(0.5) + Resize(IMG_SCALE, keep_ratio, ratio_range (0.8, 1.2)) + RandomCrop(IMG_SCALE), boxes
    never clipped (bbox_clip_border=False)."""
    h, w = img.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        img = cv2.flip(img, 1)
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    scale = [int(side * rng.uniform(0.8, 1.2)) for side in IMG_SCALE]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * factor + 0.5), int(h * factor + 0.5)
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    boxes *= np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
    crop_w, crop_h = IMG_SCALE
    x0 = rng.integers(0, max(new_w - crop_w, 0) + 1)
    y0 = rng.integers(0, max(new_h - crop_h, 0) + 1)
    img = img[y0:y0 + crop_h, x0:x0 + crop_w]
    boxes -= np.array([x0, y0, x0, y0], dtype=np.float32)
    return img, boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


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
    return collate(teachers), collate(students), collate(contrastives), teacher_boxes, contrastive_boxes


PIXEL_MEAN = np.array([103.530, 116.280, 123.675], dtype=np.float64)  # mmdet caffe-style BGR mean, std 1
PIXEL_STD = np.array([1.0, 1.0, 1.0], dtype=np.float64)


def out_pipeline(result: dict) -> dict:
    """mmdet SeqNormalize (mmcv.imnormalize) + SeqPad(size_divisor=32) + SeqDefaultFormatBundle, on one result."""
    img = result["img"].copy().astype(np.float32)  # imnormalize copies, then works in place
    cv2.subtract(img, PIXEL_MEAN.reshape(1, -1), img)
    cv2.multiply(img, 1.0 / PIXEL_STD.reshape(1, -1), img)
    h, w = img.shape[:2]
    padded = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), dtype=np.float32)
    padded[:h, :w] = img
    result["img"] = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))
    result["gt_bboxes"] = torch.from_numpy(result["gt_bboxes"])
    return result


def collate(images: list[torch.Tensor]) -> torch.Tensor:
    """mmcv collate of stacked DataContainers: pad every image to the largest, then stack."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    return torch.stack([torch.nn.functional.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in images])


def original_prepare_views(frames: torch.Tensor, pseudo_boxes: list[torch.Tensor], rng: np.random.Generator):
    """DARTHQDTrack._prepare_views without the teacher's forward: the per-image dict/numpy/cv2 round trip."""
    results = [{"img": frame.cpu().numpy().transpose(1, 2, 0), "gt_bboxes": boxes.cpu().numpy()}
               for frame, boxes in zip(frames, pseudo_boxes)]  # to_results
    # Plain frames (key + reference copy) through the out pipeline, for the pseudo-labelling forward.
    plain = [[out_pipeline(copy.deepcopy(res)) for _ in range(2)] for res in results]
    gt_img = collate([p[0]["img"] for p in plain])
    # Teacher view; teacher/teacher pair through the out pipeline.
    teacher = []
    for res in copy.deepcopy(results):
        img, boxes = geometric_view(res["img"], res["gt_bboxes"], rng)
        teacher.append({"img": img, "gt_bboxes": boxes})
    t_pairs = [[out_pipeline(copy.deepcopy(t)) for _ in range(2)] for t in teacher]
    t_img = collate([p[0]["img"] for p in t_pairs])
    # Student view = photometric distortion of a copy of the teacher view; contrastive view from a copy of the frame.
    students = [{"img": photometric_distortion(t["img"], rng), "gt_bboxes": t["gt_bboxes"]}
                for t in copy.deepcopy(teacher)]
    contrastives = []
    for res in copy.deepcopy(results):
        img, boxes = geometric_view(res["img"], res["gt_bboxes"], rng)
        contrastives.append({"img": photometric_distortion(img, rng), "gt_bboxes": boxes})
    s_c = [[out_pipeline(r) for r in pair] for pair in zip(copy.deepcopy(students), contrastives)]
    s_img = collate([p[0]["img"] for p in s_c])
    c_img = collate([p[1]["img"] for p in s_c])
    return gt_img, t_img, s_img, c_img


def build_and_normalise(model, frames: torch.Tensor, pseudo_boxes: list[torch.Tensor], config: DarthConfig,
                        generator: torch.Generator, fill: tuple[float, float, float]):
    """darth_ray's equivalent of the above: views, then the normalised float inputs of the plain frames and views."""
    views = build_views(frames, pseudo_boxes, config, generator, fill=fill)
    return (model.normalize(frames), model.normalize(views.teacher, views.teacher_sizes),
            model.normalize(views.student, views.teacher_sizes),
            model.normalize(views.contrastive, views.contrastive_sizes))


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
    config = DarthConfig(img_scale=IMG_SCALE)
    view_gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)

    frames_float = frames.float()  # the original holds its frames as float32 (to_float32=True)
    model = build_model("r50_fpn")  # only its normalisation (caffe-style BGR mean, std 1, pad to /32) is used
    fill = tuple(float(v) for v in reversed(model.config.pixel_mean))
    pipelines = {
        "build_views": lambda: build_views(frames, pseudo_boxes, config, view_gen),
        "build_views + normalise": lambda: build_and_normalise(model, frames, pseudo_boxes, config, view_gen, fill),
        "original _prepare_views": lambda: original_prepare_views(frames_float, pseudo_boxes, rng),
        "numpy/cv2 float32": lambda: numpy_cv2_views(frames_float, pseudo_boxes, rng),
        "numpy/cv2 uint8 geo": lambda: numpy_cv2_views(frames, pseudo_boxes, rng),
    }
    # Each baseline against the darth_ray pipeline producing the same kind of output.
    counterpart = {"original _prepare_views": "build_views + normalise", "numpy/cv2 float32": "build_views",
                   "numpy/cv2 uint8 geo": "build_views"}
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    for run in range(args.warmup + args.runs):
        for name, fn in pipelines.items():  # interleaved, so every pipeline sees the same background load
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if run >= args.warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    print(f"2 frames {FRAME_W}x{FRAME_H} -> 3 views fitting {IMG_SCALE} x 0.8-1.2, {NUM_BOXES} boxes each, "
          f"{args.threads} threads, per call over {args.runs} runs: wall median (min), process CPU time median")
    for name, ts in wall.items():
        ratio = ""
        if name in counterpart:
            ours = counterpart[name]
            ratio = f"   {ours} is {statistics.median(ts) / statistics.median(wall[ours]):.1f}x faster"
        print(f"  {name:24s} {statistics.median(ts) * 1e3:7.1f} ms ({min(ts) * 1e3:6.1f} ms)   "
              f"CPU {statistics.median(cpu[name]) * 1e3:6.1f} ms{ratio}")


if __name__ == "__main__":
    main()

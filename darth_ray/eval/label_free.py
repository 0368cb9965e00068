"""Label-free scores of an adapted tracker: model selection without the target's labels.

Test-time adaptation has no target labels to pick hyperparameters with, so every evaluation also scores the model
from its own outputs only (nothing here reads ground truth). Higher is better for each (Tune maximises them):

- lf_agreement: teacher-student agreement. The student's and the reference model's (the EMA teacher, or the source
  model for a method without one) confident detections on sampled frames, matched one-to-one by IoU: 2 x (sum of
  matched IoUs) / (boxes of both). 1 = the same boxes; lower as boxes move, appear or vanish.
- lf_stability: the same agreement between the student's detections on a frame and on its mirror image (boxes
  flipped back): pseudo-labels that survive a flip view.
- lf_confidence: mean score of the tracked boxes (0 without any).
- lf_long_tracks: share of tracks at least MIN_TRACK_FRAMES frames long, the complement of fragmentation (short
  tracks, id switches); 0 without any track.

Agreement and stability pool their matches over frames and sequences: a frame where both sides detect nothing adds
nothing, and a model pair that detects nothing anywhere agrees (1). Sequences can be scored apart and pooled
(`view_overlaps` per sequence, `label_free_scores` over all), as the Ray Train workers do with their shards.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from darth_ray.boxes import box_iou
from darth_ray.data.mot import Sequence
from darth_ray.eval.metrics import match_iou
from darth_ray.eval.track import detect_and_embed

LABEL_FREE_METRICS = ("lf_agreement", "lf_stability", "lf_confidence", "lf_long_tracks")
CONFIDENT = 0.5         # detections scoring above this are compared (QDTrack's obj_score_thr)
# Agreement and stability cost three forwards per sampled frame: at most SAMPLED_FRAMES per sequence, evenly spaced,
# and at most one in SAMPLE_EVERY frames (at least one), so they add at most ~30% to tracking a short sequence.
SAMPLED_FRAMES = 8
SAMPLE_EVERY = 10
MIN_TRACK_FRAMES = 5    # a track seen in fewer frames counts as a fragment
BATCH = 4               # frames per forward, as tracking batches them

Overlap = tuple[float, int]  # (sum of the IoUs of matched box pairs, boxes on both sides): pools by addition


def box_overlap(a: dict[str, Tensor], b: dict[str, Tensor]) -> Overlap:
    """The one-to-one matches (Hungarian on IoU, pairs below IoU 0.5 not allowed, same class only) of two frames'
    detections {"boxes" x1y1x2y2, "labels"}."""
    iou = box_iou(a["boxes"].float().cpu(), b["boxes"].float().cpu()).numpy()
    iou *= (a["labels"].cpu()[:, None] == b["labels"].cpu()[None, :]).numpy()
    rows, cols = match_iou(iou)
    return float(iou[rows, cols].sum()), len(a["boxes"]) + len(b["boxes"])


def pooled(overlaps: list[Overlap]) -> Overlap:
    return sum(o[0] for o in overlaps), sum(o[1] for o in overlaps)


def agreement(overlap: Overlap) -> float:
    """2 x matched IoU / boxes (1 when identical, and when neither side has a box)."""
    iou_sum, boxes = overlap
    return 1.0 if boxes == 0 else 2.0 * iou_sum / boxes


def sampled_frames(num_frames: int) -> list[int]:
    """The frame numbers (1-based) agreement and stability look at, evenly spread, the first one included."""
    count = min(SAMPLED_FRAMES, math.ceil(num_frames / SAMPLE_EVERY))
    return sorted({int(f) for f in np.linspace(1, num_frames, count).round()})


def confident(detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    return [{k: d[k][d["scores"] > CONFIDENT] for k in ("boxes", "labels")} for d in detections]


def unflip(detections: list[dict[str, Tensor]], width: int) -> list[dict[str, Tensor]]:
    """Boxes found on horizontally mirrored frames, back in the frames' coordinates."""
    return [{**d, "boxes": torch.stack([width - d["boxes"][:, 2], d["boxes"][:, 1], width - d["boxes"][:, 0],
                                        d["boxes"][:, 3]], dim=1)} for d in detections]


@torch.no_grad()
def view_overlaps(model, reference, sequence: Sequence) -> dict[str, Overlap]:
    """{"lf_agreement", "lf_stability"} overlaps of `model` on `sampled_frames` of `sequence`: against
    `reference`'s detections, and against its own on the mirrored frames."""
    model.eval()
    reference.eval()  # as tracking runs them
    overlaps = {"lf_agreement": [], "lf_stability": []}
    frames = sampled_frames(sequence.num_frames)
    for start in range(0, len(frames), BATCH):
        images = torch.stack([sequence.load_image(f) for f in frames[start:start + BATCH]])
        student = confident(detect_and_embed(model, images))
        others = {"lf_agreement": confident(detect_and_embed(reference, images)),
                  "lf_stability": unflip(confident(detect_and_embed(model, images.flip(-1))), images.shape[-1])}
        for name, other in others.items():
            overlaps[name] += [box_overlap(a, b) for a, b in zip(student, other)]
    return {name: pooled(o) for name, o in overlaps.items()}


def track_scores(results: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """lf_confidence and lf_long_tracks of tracking results {seq: {"ids", "scores", ...}} (track_sequence's)."""
    scores = np.concatenate([np.zeros(0)] + [r["scores"] for r in results.values()])
    lengths = np.concatenate([np.zeros(0)] + [np.unique(r["ids"], return_counts=True)[1] for r in results.values()])
    return {"lf_confidence": float(scores.mean()) if len(scores) else 0.0,
            "lf_long_tracks": float((lengths >= MIN_TRACK_FRAMES).mean()) if len(lengths) else 0.0}


def label_free_scores(results: dict[str, dict[str, np.ndarray]], overlaps: list[dict[str, Overlap]]) -> dict:
    """Every LABEL_FREE_METRICS score from the tracking results and the per-sequence `view_overlaps`."""
    views = {name: agreement(pooled([o[name] for o in overlaps])) for name in ("lf_agreement", "lf_stability")}
    return {**views, **track_scores(results)}


def score_without_labels(model, reference, sequences: list[Sequence], results: dict) -> dict[str, float]:
    """LABEL_FREE_METRICS of `model` on `sequences`, `results` its tracks of them."""
    return label_free_scores(results, [view_overlaps(model, reference, s) for s in sequences])

"""Tracker output in the MOTChallenge submission format: one `<seq>.txt` per sequence with rows
`frame,id,x,y,w,h,score,-1,-1,-1` (ids 1-based, boxes top-left + size), written atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from darth_ray.io import atomic_write_text


def format_results(frames, ids, boxes_xyxy, scores) -> str:
    """Rows for arrays of frame numbers [N], track ids [N] (>= 1), boxes x1y1x2y2 [N, 4] and scores [N]."""
    frames, ids = np.asarray(frames, dtype=np.int64), np.asarray(ids, dtype=np.int64)
    boxes, scores = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)
    if not (len(frames) == len(ids) == len(boxes) == len(scores)):
        raise ValueError("frames, ids, boxes and scores must have the same length")
    if len(ids) and ids.min() < 1:
        raise ValueError("MOTChallenge track ids start at 1")
    order = np.lexsort((ids, frames))
    lines = [f"{f},{i},{b[0]:.2f},{b[1]:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},{s:.4f},-1,-1,-1"
             for f, i, b, s in zip(frames[order], ids[order], boxes[order], scores[order])]
    return "\n".join(lines) + ("\n" if lines else "")


def write_results(path: Path, frames, ids, boxes_xyxy, scores) -> Path:
    return atomic_write_text(path, format_results(frames, ids, boxes_xyxy, scores))


def results_to_tracks(frames, ids, boxes, scores):
    """Result arrays as the evaluator's Tracks, rounded exactly as `format_results` writes them."""
    from darth_ray.data.mot import Tracks

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), 2)
    order = np.argsort(np.asarray(frames), kind="stable")
    n = len(order)
    return Tracks(frames=np.asarray(frames, np.int64)[order], ids=np.asarray(ids, np.int64)[order],
                  boxes=xywh[order], conf=np.round(np.asarray(scores, np.float64), 4)[order],
                  classes=np.full(n, -1.0), visibility=np.full(n, -1.0), lines=np.arange(1, n + 1))

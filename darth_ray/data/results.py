"""Tracker output files, written atomically, and read back strictly.

Result arrays (what the tracker returns per sequence): `frames` [N] (1-based), `ids` [N] (>= 1), `boxes` [N, 4]
x1y1x2y2, `scores` [N] and, from a multi-class model, `labels` [N]: the 0-based index into the sequence's
`class_names` (the tracker's and mmdet's convention; ground truth's `classes` holds that index + 1).

- MOTChallenge text, one `<seq>.txt` per sequence: `frame,id,x,y,w,h,score,-1,-1,-1`; with labels the class
  (label + 1) fills the 8th column, as MOT17's ground truth has it: `frame,id,x,y,w,h,score,class,-1,-1`.
- Scalabel JSON, the BDD100K / SHIFT submission format, one `<seq>.json` per sequence (a list of frames; a file
  holding the frames of several videos reads too): every frame with `name`, `videoName`, `frameIndex` (0-based)
  and `labels` [{`id`, `category`, `box2d` {x1, y1, x2, y2}, `score`}]. Scalabel's corners are inclusive, so a
  box x, y, w, h is written x2 = x + w - 1 (the dataset reader adds the 1 back).
Both formats round boxes to 2 decimals and scores to 4; `results_to_tracks` rounds the same way, so scoring the
arrays equals scoring the files read back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from darth_ray.data.frames import FrameSequence, field
from darth_ray.data.mot import Tracks
from darth_ray.data.scalabel import BDD100K_CLASSES, BDD100K_IGNORED, SHIFT_CLASSES, read_frames
from darth_ray.io import InputError, atomic_write_json, atomic_write_text

NO_CLASS = -1.0  # the class column of a single-class result file

# Categories of BDD100K and SHIFT: results in one that an evaluation leaves out are skipped, an unknown one is an error.
KNOWN_CATEGORIES = {*BDD100K_CLASSES, *BDD100K_IGNORED, *SHIFT_CLASSES}


def results_to_tracks(frames, ids, boxes, scores, labels=None) -> Tracks:
    """Result arrays as the evaluator's Tracks (`classes` = label + 1, or -1 without labels), rounded exactly as
    the result files store them."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.round(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1), 2)
    order = np.argsort(np.asarray(frames), kind="stable")
    n = len(order)
    classes = np.full(n, NO_CLASS) if labels is None else np.asarray(labels, np.float64) + 1
    return Tracks(frames=np.asarray(frames, np.int64)[order], ids=np.asarray(ids, np.int64)[order],
                  boxes=xywh[order], conf=np.round(np.asarray(scores, np.float64), 4)[order],
                  classes=classes[order], visibility=np.full(n, -1.0), lines=np.arange(1, n + 1))


def format_results(frames, ids, boxes_xyxy, scores, labels=None) -> str:
    """MOTChallenge rows, sorted by frame and id; the class column (label + 1) only with `labels`."""
    frames, ids = np.asarray(frames, dtype=np.int64), np.asarray(ids, dtype=np.int64)
    boxes, scores = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)
    classes = np.full(len(frames), NO_CLASS) if labels is None else np.asarray(labels, np.int64) + 1
    if not (len(frames) == len(ids) == len(boxes) == len(scores) == len(classes)):
        raise ValueError("frames, ids, boxes, scores (and labels) must have the same length")
    if len(ids) and ids.min() < 1:
        raise ValueError("MOTChallenge track ids start at 1")
    order = np.lexsort((ids, frames))
    lines = [f"{f},{i},{b[0]:.2f},{b[1]:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},{s:.4f},{c:g},-1,-1"
             for f, i, b, s, c in zip(frames[order], ids[order], boxes[order], scores[order], classes[order])]
    return "\n".join(lines) + ("\n" if lines else "")


def write_results(path: Path, frames, ids, boxes_xyxy, scores, labels=None) -> Path:
    return atomic_write_text(path, format_results(frames, ids, boxes_xyxy, scores, labels))


def scalabel_frames(sequence: FrameSequence, frames, ids, boxes, scores, labels=None) -> list[dict]:
    """One Scalabel frame per frame of `sequence` (frames without boxes too: the evaluation needs every frame).
    Without labels every box is the sequence's only class."""
    names = sequence.class_names
    if labels is None and len(names) != 1:
        raise ValueError(f"{sequence.name}: results of a {len(names)}-class dataset need labels")
    t = results_to_tracks(frames, ids, boxes, scores, labels)
    out = [{"name": Path(file).name, "videoName": sequence.name, "frameIndex": i, "labels": []}
           for i, file in enumerate(sequence.files)]
    for f, i, (x, y, w, h), s, c in zip(t.frames, t.ids, t.boxes, t.conf, t.classes):
        if not 1 <= f <= len(out):
            raise ValueError(f"{sequence.name}: frame {f} is outside 1..{len(out)}")
        if c != NO_CLASS and not 1 <= c <= len(names):
            raise ValueError(f"{sequence.name}: label {c - 1:g} is outside 0..{len(names) - 1} ({list(names)})")
        out[f - 1]["labels"].append({
            "id": str(i), "category": names[0 if c == NO_CLASS else int(c) - 1], "score": float(s),
            "box2d": {"x1": float(x), "y1": float(y), "x2": round(x + w - 1, 2), "y2": round(y + h - 1, 2)}})
    return out


def write_scalabel_results(path: Path, sequence: FrameSequence, frames, ids, boxes, scores, labels=None) -> Path:
    """`<out>/<seq>.json` for BDD100K / SHIFT: the arguments are the result arrays (`boxes` x1y1x2y2)."""
    return atomic_write_json(path, scalabel_frames(sequence, frames, ids, boxes, scores, labels))


def read_scalabel_results(path: Path, sequences: list[FrameSequence]) -> dict[str, Tracks]:
    """Scalabel results (a file or a folder of *.json) for every sequence, as Tracks whose `classes` index the
    sequences' `class_names` (1-based) and whose `conf` is the score (1 when a label has none). Refused, naming
    the file and the record: a video or category not in the ground truth, a frame index outside the video or
    listed twice, an id twice in a frame, x2 < x1 - 1; a ground-truth video without results is refused too."""
    path = Path(path)
    by_name = {seq.name: seq for seq in sequences}
    rows = {name: [] for name in by_name}  # (frame, id, x, y, w, h, score, class)
    seen_frames, seen_ids, instance_ids = {}, {}, {name: {} for name in by_name}
    for file, record, frame in read_frames(path):
        video = field(file, frame, "videoName", record, str)
        if video not in by_name:
            raise InputError(file, f"{record}: results for video {video!r}, which is not in the ground truth "
                                   f"(known: {', '.join(sorted(by_name))})")
        seq, index = by_name[video], field(file, frame, "frameIndex", record, int)
        if not 0 <= index < seq.num_frames:
            raise InputError(file, f"{record}: frameIndex {index} is outside 0..{seq.num_frames - 1} of video "
                                   f"{video!r}")
        if (video, index) in seen_frames:
            raise InputError(file, f"{record}: frame {index} of video {video!r} is listed twice (also "
                                   f"{seen_frames[video, index]})")
        seen_frames[video, index] = record
        for j, label in enumerate(field(file, frame, "labels", record, list, [])):
            where = f"{record} (video {video!r}) labels[{j}]"
            category = field(file, label, "category", where, str)
            if category not in seq.class_names and category in KNOWN_CATEGORIES:
                continue  # a category of the benchmark that this evaluation leaves out (--classes)
            if category not in seq.class_names:
                raise InputError(file, f"{where}: category {category!r} is not one of the evaluated classes "
                                       f"{list(seq.class_names)}")
            box = field(file, label, "box2d", where, dict)
            x1, y1, x2, y2 = (field(file, box, k, f"{where} box2d", (int, float)) for k in ("x1", "y1", "x2", "y2"))
            if x2 < x1 - 1 or y2 < y1 - 1:  # inclusive corners: x2 = x1 - 1 is an empty box
                raise InputError(file, f"{where}: box2d has x2 < x1 - 1 or y2 < y1 - 1 ({x1}, {y1}, {x2}, {y2})")
            instance = str(field(file, label, "id", where, (str, int)))
            track_id = instance_ids[video].setdefault(instance, len(instance_ids[video]) + 1)
            if (video, index, track_id) in seen_ids:
                raise InputError(file, f"{where}: id {instance!r} appears twice in frame {index} (also "
                                       f"{seen_ids[video, index, track_id]})")
            seen_ids[video, index, track_id] = where
            rows[video].append((index + 1, track_id, x1, y1, x2 - x1 + 1, y2 - y1 + 1,
                                field(file, label, "score", where, (int, float), 1.0),
                                seq.class_names.index(category) + 1))
    missing = [name for name in by_name if not any(v == name for v, _ in seen_frames)]
    if missing:
        raise InputError(path, f"no results for {len(missing)} ground-truth video(s): {', '.join(missing)}")
    return {name: _tracks(path, rows[name]) for name in by_name}


def _tracks(path: Path, rows: list[tuple]) -> Tracks:
    if not rows:
        return Tracks.empty(path)
    values = np.array(rows, dtype=np.float64)
    order = np.argsort(values[:, 0], kind="stable")
    values = values[order]
    n = len(values)
    return Tracks(frames=values[:, 0].astype(np.int64), ids=values[:, 1].astype(np.int64), boxes=values[:, 2:6],
                  conf=values[:, 6], classes=values[:, 7], visibility=np.full(n, -1.0),
                  lines=order.astype(np.int64) + 1, path=path)

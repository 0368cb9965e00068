"""Scalabel labels: BDD100K's tracking labels and SHIFT's `det_2d.json`.

A file holds a list of frames or {"frames": [...]}; a folder holds one such file per video (BDD100K's
`labels/box_track_20/<split>/`). A frame: `videoName`, `frameIndex` (0-based), `name` (the image, at
`<images>/<videoName>/<name>`), `labels` [{`id` (string), `category`, `box2d` {x1, y1, x2, y2},
`attributes` {crowd, occluded, truncated}}], `attributes` (BDD100K: weather, timeofday, scene), `size`?
Box corners are inclusive, so a box is x1, y1, x2 - x1 + 1, y2 - y1 + 1 (as Scalabel's own COCO conversion).
Crowd boxes and BDD100K's ignore classes become ignore regions (conf 0), as in bdd100k's own evaluation; an ignore
class counts as the category bdd100k's COCO converter maps it to, so both formats read the same. Instance ids
become 1, 2, ... per video in order of appearance. A video's attributes are those all its frames share.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from darth_ray.data.frames import (FrameSequence, build_tracks, check_frame_indices, field, load_json,
                                   select_classes)
from darth_ray.io import InputError

BDD100K_CLASSES = ("pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
BDD100K_IGNORED = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
SHIFT_CLASSES = ("pedestrian", "car", "truck", "bus", "motorcycle", "bicycle")


def read_frames(path: Path, data=None) -> list[tuple[Path, str, dict]]:
    """Every frame record of a Scalabel file or folder as (file, record name, frame)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise InputError(path, "no Scalabel label files (*.json) here")
    frames = []
    for file in files:
        content = load_json(file) if data is None else data
        key, records = ("frames", content.get("frames")) if isinstance(content, dict) else ("", content)
        if not isinstance(records, list):
            raise InputError(file, "not Scalabel labels: expected a list of frames or an object with 'frames'")
        frames += [(file, f"{key}[{i}]", frame) for i, frame in enumerate(records)]
    return frames


def read_scalabel(path: Path, images: Path | None = None, classes: list[str] | None = None,
                  class_map: dict[str, str] | None = None, categories=BDD100K_CLASSES, ignored=BDD100K_IGNORED,
                  data=None) -> tuple[list[FrameSequence], list[str]]:
    """The videos of a Scalabel file or folder as sequences (sorted by name) and the class names `gt.classes`
    indexes (1-based). `categories`: the dataset's classes; `ignored`: its ignore classes and what they count as."""
    path = Path(path)
    names, index = select_classes(path, list(categories), classes, class_map)
    videos = defaultdict(list)
    for file, record, frame in read_frames(path, data):
        video = field(file, frame, "videoName", record, str)
        videos[video].append((file, record, frame, field(file, frame, "frameIndex", record, int)))
    sequences = []
    for video, frames in videos.items():
        order = check_frame_indices(video, [f[3] for f in frames], [f[:2] for f in frames])
        frames = [frames[i] for i in order]
        ids, rows, where = {}, [], []
        for number, (file, record, frame, _) in enumerate(frames, start=1):
            for j, label in enumerate(field(file, frame, "labels", record, list, [])):
                name = f"{record} (video {video!r}) labels[{j}]"
                row = _label_row(file, name, label, number, index, categories, ignored, ids)
                if row is not None:
                    rows.append(row)
                    where.append((file, name))
        first = frames[0]
        size = field(first[0], first[2], "size", first[1], dict, None)
        sequences.append(FrameSequence(
            video, [f"{video}/{field(f[0], f[2], 'name', f[1], str)}" for f in frames], images,
            build_tracks(first[0], rows, where), first[0], [f[:2] for f in frames], names,
            _shared_attributes([f[2] for f in frames]), _size(first[0], first[1], size)))
    return sorted(sequences, key=lambda s: s.name), names


def _label_row(file: Path, where: str, label: dict, frame: int, index: dict, categories, ignored, ids: dict):
    """One label as a ground-truth row, or None for a category outside the chosen classes."""
    category = field(file, label, "category", where, str)
    if category not in categories and category not in ignored:
        raise InputError(file, f"{where}: unknown category {category!r} (known: {list(categories)}, ignored: "
                               f"{list(ignored)})")
    attributes = field(file, label, "attributes", where, dict, {})
    crowd = bool(attributes.get("crowd") or attributes.get("Crowd")) or category in ignored
    cls = index.get(ignored.get(category, category), 0)
    if cls == 0 and not crowd:
        return None  # a category outside the chosen classes (mmtrack drops it too)
    box = field(file, label, "box2d", where, dict)
    x1, y1, x2, y2 = (field(file, box, k, f"{where} box2d", (int, float)) for k in ("x1", "y1", "x2", "y2"))
    if x2 < x1 or y2 < y1:
        raise InputError(file, f"{where}: box2d has x2 < x1 or y2 < y1 ({x1}, {y1}, {x2}, {y2})")
    instance = field(file, label, "id", where, (str, int))
    track_id = ids.setdefault(str(instance), len(ids) + 1)
    # Scalabel's x2, y2 are inclusive pixel coordinates: its COCO conversion (box2d_to_bbox) adds 1.
    return frame, track_id, x1, y1, x2 - x1 + 1, y2 - y1 + 1, 0.0 if crowd else 1.0, cls, 1.0


def _shared_attributes(frames: list[dict]) -> dict:
    shared = None
    for frame in frames:
        attributes = frame.get("attributes") or {}
        shared = dict(attributes) if shared is None else {k: v for k, v in shared.items()
                                                          if k in attributes and attributes[k] == v}
    return shared or {}


def _size(file: Path, record: str, size: dict | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return field(file, size, "width", f"{record} size", int), field(file, size, "height", f"{record} size", int)

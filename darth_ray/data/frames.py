"""What the JSON dataset formats share: an in-memory `FrameSequence`, strict JSON field access, class selection.

Class selection (`select_classes`), as the authors' configs use it: `classes` lists the model's classes in its
order (ground-truth `classes` holds the 1-based index into it); a dataset category that is not chosen is dropped,
as mmtrack's CocoVideoDataset(classes=...) drops it, except that its crowd / ignore boxes stay ignore regions
(class 0: BDD100K's evaluation ignores tracker boxes in crowd regions of any category). `class_map` names the
dataset category of a model class whose name differs, e.g. {"person": "pedestrian"}.
"""
from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path

import numpy as np

from darth_ray.data.mot import INT64_MAX, INT64_MIN, SeqInfo, Sequence, Tracks, decode_image, read_text
from darth_ray.io import InputError

DEFAULT_FRAME_RATE = 30.0  # as a seqinfo.ini without frameRate; nothing in tracking depends on it


def load_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg}", e.lineno) from None


def field(path: Path, record: dict, key: str, where: str, kind: type | tuple = object, default=KeyError):
    """`record[key]`, refused naming the file and the record when missing (without a default) or of another
    type. Numbers must be finite; bool is not a number."""
    if not isinstance(record, dict):
        raise InputError(path, f"{where} is not a JSON object")
    if key not in record or record[key] is None:
        if default is KeyError:
            raise InputError(path, f"{where} has no '{key}'")
        return default
    value = record[key]
    numeric = kind in (int, float, (int, float))
    if numeric:  # bool is an int to Python, not a number in a label file
        ok = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
        ok = ok and not (isinstance(value, float) and not math.isfinite(value))  # json reads NaN, Infinity
        ok = ok and (kind is not int or INT64_MIN <= value <= INT64_MAX)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InputError(path, f"{where}: '{key}' is {value!r}, not {_kind_name(kind)}")
    return value


def _kind_name(kind) -> str:
    names = {int: "an integer within int64", float: "a number", (int, float): "a number", str: "a string",
             (str, int): "a string", list: "a list", dict: "an object"}
    return names.get(kind, str(kind))


def select_classes(path: Path, categories: list[str], classes: list[str] | None = None,
                   class_map: dict[str, str] | None = None) -> tuple[list[str], dict[str, int]]:
    """The model's class names and {dataset category: 1-based class index} for the chosen categories.

    Without `classes`, every category in the dataset's order (named through `class_map` where it maps one)."""
    class_map = dict(class_map or {})
    if classes is None:
        to_model = {category: name for name, category in class_map.items()}
        classes = [to_model.get(category, category) for category in categories]
    classes = list(classes)
    for name in class_map:
        if name not in classes:
            raise InputError(path, f"class_map maps {name!r}, which is not one of the classes {classes}")
    index = {}
    for k, name in enumerate(classes, start=1):
        category = class_map.get(name, name)
        if category not in categories:
            mapped = f" (mapped to {category!r})" if category != name else ""
            raise InputError(path, f"class {name!r}{mapped} is not a category of this dataset: {categories}")
        if category in index:
            raise InputError(path, f"category {category!r} is chosen twice (classes {classes}, "
                                   f"class_map {class_map})")
        index[category] = k
    if len(set(classes)) != len(classes):
        raise InputError(path, f"classes {classes} name a class twice")
    return classes, index


def check_frame_indices(video: str, indices: list[int], records: list[tuple[Path, str]]) -> list[int]:
    """The order that sorts a video's frame records by their 0-based index; the indices must be 0..n-1, each once
    (mmtrack's CocoVID and Scalabel's tools both sort by it, so the listing order is free). `records`: the file
    and the name of each frame record, for errors."""
    order = sorted(range(len(indices)), key=indices.__getitem__)
    for position, i in enumerate(order):
        (file, record), index = records[i], indices[i]
        if index < 0:
            raise InputError(file, f"{record}: frame index {index} is negative")
        if index < position:
            raise InputError(file, f"{record}: video {video!r} has frame {index} twice (also "
                                   f"{records[order[position - 1]][1]})")
        if index > position:
            raise InputError(file, f"{record}: video {video!r} has no frame {position} before frame {index} "
                                   f"(frame indices must be 0, 1, 2, ... without gaps)")
    return order


def build_tracks(path: Path, rows: list[tuple], records: list[tuple[Path, str]]) -> Tracks:
    """Ground truth from (frame, id, x, y, w, h, conf, class, visibility) rows; `records` name each row's file and
    record for errors. An id twice in one frame (among the boxes to track) is refused; `lines` holds each row's
    position in `rows` (JSON has no line numbers)."""
    if not rows:
        return Tracks.empty(path)
    seen = {}
    for i, (frame, track_id, *_, conf, _cls, _vis) in enumerate(rows):
        if conf != 0:
            if (frame, track_id) in seen:
                file, record = records[i]
                raise InputError(file, f"{record}: instance {track_id} appears twice in frame {frame} (also "
                                       f"{records[seen[frame, track_id]][1]})")
            seen[frame, track_id] = i
    frames = np.array([r[0] for r in rows], np.int64)
    order = np.argsort(frames, kind="stable")
    values = np.array([r[2:] for r in rows], np.float64)[order]
    return Tracks(frames=frames[order], ids=np.array([r[1] for r in rows], np.int64)[order],
                  boxes=values[:, :4].copy(), conf=values[:, 4].copy(), classes=values[:, 5].copy(),
                  visibility=values[:, 6].copy(), lines=order.astype(np.int64), path=path)


class FrameSequence(Sequence):
    """A sequence whose frames are listed by path (relative to an image root) and whose ground truth is read."""

    def __init__(self, name: str, files: list[str], image_root: Path | None, gt: Tracks | None, source: Path,
                 records: list[tuple[Path, str]], class_names: list[str], attributes: dict | None = None,
                 size: tuple[int, int] | None = None, frame_rate: float = DEFAULT_FRAME_RATE):
        self.name, self.files, self.source, self.records = name, list(files), Path(source), list(records)
        self.image_root = None if image_root is None else Path(image_root)
        self.class_names, self.attributes = tuple(class_names), dict(attributes or {})
        self._gt, self._size, self._frame_rate = gt, size, frame_rate

    @cached_property
    def info(self) -> SeqInfo:
        # Without a size in the labels, the first frame says it (read only when asked: evaluation never is).
        width, height = self._size or decode_image(self.image_path(1), self.where(1)).shape[1::-1]
        first = Path(self.files[0])
        return SeqInfo(name=self.name, im_dir=str(first.parent), frame_rate=self._frame_rate,
                       seq_length=len(self.files), width=int(width), height=int(height), im_ext=first.suffix)

    @property
    def num_frames(self) -> int:
        return len(self.files)

    @property
    def has_gt(self) -> bool:
        return self._gt is not None

    @property
    def gt(self) -> Tracks:
        if self._gt is None:
            raise InputError(self.source, f"no ground truth for video {self.name!r}")
        return self._gt

    def image_path(self, frame: int) -> Path:
        if not 1 <= frame <= len(self.files):
            raise IndexError(f"frame {frame} is outside 1..{len(self.files)} of {self.name}")
        if self.image_root is None:
            raise InputError(self.source, "the images are needed but no image root was given (the directory "
                                          "the file names are relative to; img_prefix in mmtrack configs)")
        return self.image_root / self.files[frame - 1]

    def where(self, frame: int) -> str:
        file, record = self.records[frame - 1]
        return f" (listed in {file}: {record})"

"""MOTChallenge / DanceTrack datasets: seqinfo.ini, gt.txt, seqmaps, lazily loaded frames.

Layout: `<root>/<seq>/{img1/00000001.jpg, gt/gt.txt, seqinfo.ini}`, optionally selected by a seqmap file whose
first line is `name`. gt rows are `frame,id,x,y,w,h,conf,class,visibility`:
- MOT16/17: conf 0 marks a box to ignore; class 1 is pedestrian, 2/7/8/12 are distractors (a tracker box that
  matches one is not counted as a false positive), other classes are never evaluated.
- DanceTrack: `frame,id,x,y,w,h,1,1,1`.  MOT15: `frame,id,x,y,w,h,conf,-1,-1,-1` (no classes: all pedestrians).
Every malformed line raises InputError with the file and line number.
"""
from __future__ import annotations

import configparser
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from darth_ray.io import InputError

PEDESTRIAN = 1
# MOTChallenge classes whose matched tracker boxes are removed before scoring (TrackEval's distractor list).
DISTRACTOR_CLASSES = (2, 7, 8, 12)
VALID_MOT17_CLASSES = tuple(range(1, 14))


@dataclass(frozen=True)
class SeqInfo:
    name: str
    im_dir: str
    frame_rate: float
    seq_length: int
    width: int
    height: int
    im_ext: str

    @classmethod
    def read(cls, path: Path) -> "SeqInfo":
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "missing seqinfo.ini (every sequence needs one: [Sequence] name, imDir, "
                                   "frameRate, seqLength, imWidth, imHeight, imExt)")
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error as e:
            raise InputError(path, f"not a valid ini file: {e}") from None
        if "Sequence" not in parser:
            raise InputError(path, "no [Sequence] section")
        sec = parser["Sequence"]

        def field(key: str, convert, default=None):
            if key not in sec:
                if default is not None:
                    return default
                raise InputError(path, f"[Sequence] has no '{key}'")
            try:
                return convert(sec[key])
            except ValueError:
                raise InputError(path, f"[Sequence] {key}={sec[key]!r} is not a valid {convert.__name__}") from None

        info = cls(name=field("name", str, path.parent.name), im_dir=field("imDir", str, "img1"),
                   frame_rate=field("frameRate", float, 30.0), seq_length=field("seqLength", int),
                   width=field("imWidth", int), height=field("imHeight", int), im_ext=field("imExt", str, ".jpg"))
        for key, value in (("seqLength", info.seq_length), ("imWidth", info.width), ("imHeight", info.height)):
            if value <= 0:
                raise InputError(path, f"[Sequence] {key} must be positive, got {value}")
        return info

    def to_ini(self) -> str:
        return (f"[Sequence]\nname={self.name}\nimDir={self.im_dir}\nframeRate={self.frame_rate:g}\n"
                f"seqLength={self.seq_length}\nimWidth={self.width}\nimHeight={self.height}\nimExt={self.im_ext}\n")


@dataclass
class Tracks:
    """All rows of one MOT text file (ground truth or tracker output), sorted by frame. Boxes are x, y, w, h."""

    frames: np.ndarray      # int64 [N], 1-based
    ids: np.ndarray         # int64 [N]
    boxes: np.ndarray       # float64 [N, 4] xywh
    conf: np.ndarray        # float64 [N]: gt: 0 = ignore; results: detection score
    classes: np.ndarray     # float64 [N]: the 8th column; -1 or world coordinates in MOT15 files
    visibility: np.ndarray  # float64 [N]
    lines: np.ndarray       # int64 [N]: line numbers in the source file, for error messages
    path: Path | None = None

    @classmethod
    def empty(cls, path: Path | None = None) -> "Tracks":
        z = np.zeros(0)
        return cls(z.astype(np.int64), z.astype(np.int64), np.zeros((0, 4)), z, z, z, z.astype(np.int64), path)

    def __len__(self) -> int:
        return len(self.frames)

    @cached_property
    def _frame_starts(self) -> np.ndarray:
        return np.searchsorted(self.frames, np.arange(0, (self.frames.max() if len(self) else 0) + 2))

    def frame_rows(self, frame: int) -> slice:
        """Rows of `frame` as a slice (the rows are sorted by frame)."""
        starts = self._frame_starts
        if frame < 0 or frame + 1 >= len(starts):
            return slice(0, 0)
        return slice(int(starts[frame]), int(starts[frame + 1]))

    @property
    def looks_like_mot15(self) -> bool:
        """MOT15 rows end in -1,-1,-1 or in world coordinates (floats) where later benchmarks have a class."""
        c = self.classes
        return len(self) > 0 and bool(np.any(c == -1) or np.any(c != np.round(c)))


def read_mot_file(path: Path, seq_length: int | None = None, kind: str = "gt") -> Tracks:
    """Parse a MOT text file; `kind` is "gt" or "results" (only changes the wording of errors).

    Checks: 6..10 numeric columns, integer frame and id, frame in 1..seq_length, positive width and height,
    no id twice in one frame.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"missing {kind} file")
    rows, lines = [], []
    with open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            parts = [p.strip() for p in text.split(",")] if "," in text else text.split()
            if len(parts) < 6 or len(parts) > 10:
                raise InputError(path, f"expected 6 to 10 comma-separated values "
                                       f"(frame,id,x,y,w,h[,conf,class,visibility,...]), got {len(parts)}: {text!r}",
                                 lineno)
            try:
                values = [float(p) for p in parts]
            except ValueError:
                raise InputError(path, f"non-numeric value in {text!r}", lineno) from None
            if not all(math.isfinite(v) for v in values):
                raise InputError(path, f"non-finite value in {text!r}", lineno)
            frame, track_id = values[0], values[1]
            if frame != int(frame) or track_id != int(track_id):
                raise InputError(path, f"frame and id must be integers, got {parts[0]!r}, {parts[1]!r}", lineno)
            if frame < 1 or (seq_length is not None and frame > seq_length):
                limit = f"1..{seq_length} (seqLength in seqinfo.ini)" if seq_length is not None else ">= 1"
                raise InputError(path, f"frame {int(frame)} is outside {limit}", lineno)
            if values[4] <= 0 or values[5] <= 0:
                raise InputError(path, f"box width and height must be positive, got w={parts[4]} h={parts[5]}",
                                 lineno)
            # Missing trailing columns take the MOT15 / results defaults: conf 1, class -1, visibility 1.
            values += [1.0, -1.0, 1.0][len(values) - 6:] if len(values) < 9 else []
            rows.append(values[:9])
            lines.append(lineno)
    if not rows:
        return Tracks.empty(path)
    data = np.asarray(rows, dtype=np.float64)
    line_numbers = np.asarray(lines, dtype=np.int64)
    order = np.argsort(data[:, 0], kind="stable")
    data, line_numbers = data[order], line_numbers[order]
    tracks = Tracks(frames=data[:, 0].astype(np.int64), ids=data[:, 1].astype(np.int64), boxes=data[:, 2:6].copy(),
                    conf=data[:, 6].copy(), classes=data[:, 7].copy(), visibility=data[:, 8].copy(),
                    lines=line_numbers, path=path)
    _check_unique_ids(tracks)
    return tracks


def _check_unique_ids(tracks: Tracks) -> None:
    key = tracks.frames * (tracks.ids.max() + 1 - min(tracks.ids.min(), 0)) + (tracks.ids - min(tracks.ids.min(), 0))
    unique, first, counts = np.unique(key, return_index=True, return_counts=True)
    if np.any(counts > 1):
        dup = int(np.flatnonzero(key == unique[counts > 1][0])[1])
        raise InputError(tracks.path, f"id {tracks.ids[dup]} appears twice in frame {tracks.frames[dup]}",
                         int(tracks.lines[dup]))


def read_seqmap(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing seqmap file")
    names = [line.strip() for line in path.read_text().splitlines()]
    if not names or names[0] != "name":
        raise InputError(path, "a seqmap starts with the header line 'name'", 1)
    names = [n for n in names[1:] if n]
    if len(set(names)) != len(names):
        raise InputError(path, "a sequence is listed twice")
    return names


class Sequence:
    """One sequence directory. Ground truth and images load lazily, so evaluation never touches images."""

    def __init__(self, root: Path, require_images: bool = False):
        self.root = Path(root)
        self.info = SeqInfo.read(self.root / "seqinfo.ini")
        self.name = self.root.name
        if require_images:
            self.check_images()

    def __repr__(self) -> str:
        return f"Sequence({self.name!r}, frames={self.num_frames})"

    @property
    def num_frames(self) -> int:
        return self.info.seq_length

    @property
    def image_dir(self) -> Path:
        return self.root / self.info.im_dir

    def image_path(self, frame: int) -> Path:
        return self.image_dir / f"{frame:08d}{self.info.im_ext}"

    def check_images(self) -> None:
        if not self.image_dir.is_dir():
            raise InputError(self.image_dir, f"missing image directory (imDir={self.info.im_dir} in seqinfo.ini)")
        present = {p.name for p in self.image_dir.iterdir()}
        missing = [f for f in range(1, self.num_frames + 1) if self.image_path(f).name not in present]
        if missing:
            raise InputError(self.image_path(missing[0]),
                             f"missing image ({len(missing)} of {self.num_frames} frames missing in {self.image_dir})")

    def load_image(self, frame: int):
        """Frame `frame` (1-based) as a uint8 RGB tensor [3, H, W]."""
        import cv2
        import torch

        path = self.image_path(frame)
        if not path.is_file():
            raise InputError(path, "missing image")
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(path, "cannot decode image")
        if bgr.shape[:2] != (self.info.height, self.info.width):
            raise InputError(path, f"image is {bgr.shape[1]}x{bgr.shape[0]}, seqinfo.ini says "
                                   f"{self.info.width}x{self.info.height}")
        return torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous()

    @property
    def has_gt(self) -> bool:
        return (self.root / "gt" / "gt.txt").is_file()

    @cached_property
    def gt(self) -> Tracks:
        return read_mot_file(self.root / "gt" / "gt.txt", self.num_frames, kind="ground-truth")

    def targets(self, frame: int) -> dict[str, np.ndarray]:
        """Training targets of one frame: pedestrian boxes (x1y1x2y2) with their ids, and boxes to ignore."""
        gt = self.gt
        rows = gt.frame_rows(frame)
        boxes = gt.boxes[rows].copy()
        boxes[:, 2:] += boxes[:, :2]
        classes, conf = gt.classes[rows], gt.conf[rows]
        keep = (conf != 0) if gt.looks_like_mot15 else (conf != 0) & (classes == PEDESTRIAN)
        return {"boxes": boxes[keep], "ids": gt.ids[rows][keep], "ignore_boxes": boxes[~keep]}


def load_sequences(data_dir: Path, split: str | None = None, seqmap: Path | None = None,
                   require_images: bool = False, require_gt: bool = False) -> list[Sequence]:
    """The sequences of a dataset directory, sorted by name.

    `data_dir` may be a split directory holding sequence folders, a dataset root with `split` given
    (`<root>/<split>/<seq>`, using `<root>/<split>_seqmap.txt` when present), or a single sequence folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "not a directory")
    if split is not None:
        if seqmap is None and (data_dir / f"{split}_seqmap.txt").is_file():
            seqmap = data_dir / f"{split}_seqmap.txt"
        data_dir = data_dir / split
        if not data_dir.is_dir():
            raise InputError(data_dir, f"no '{split}' split here")
    if (data_dir / "seqinfo.ini").is_file():
        roots = [data_dir]
    elif seqmap is not None:
        roots = [data_dir / name for name in read_seqmap(seqmap)]
        for root in roots:
            if not root.is_dir():
                raise InputError(seqmap, f"lists sequence '{root.name}', which is not in {data_dir}")
    else:
        roots = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not roots:
            raise InputError(data_dir, "no sequence folders (expected <seq>/seqinfo.ini)")
    sequences = [Sequence(root, require_images=require_images) for root in roots]
    if require_gt:
        for seq in sequences:
            if not seq.has_gt:
                raise InputError(seq.root / "gt" / "gt.txt", "missing ground truth")
    return sequences

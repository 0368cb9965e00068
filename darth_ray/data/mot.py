"""MOTChallenge / DanceTrack datasets: seqinfo.ini, gt.txt, seqmaps, lazily loaded frames.

Layout: `<root>/<seq>/{img1/00000001.jpg, gt/gt.txt, seqinfo.ini}`, optionally selected by a seqmap file whose
first line is `name`. gt rows are `frame,id,x,y,w,h,conf,class,visibility`:
- MOT16/17: conf 0 marks a box to ignore; class 1 is pedestrian, 2/7/8/12 are distractors (a tracker box that
  matches one is not counted as a false positive), other classes are never evaluated.
- DanceTrack: `frame,id,x,y,w,h,1,1,1`.  MOT15: `frame,id,x,y,w,h,conf,-1,-1,-1` (no classes: all pedestrians).

Nothing is guessed and nothing is dropped: every problem raises InputError naming the file (and line or field).
- Text files (seqinfo.ini, gt.txt, seqmaps, result files) are UTF-8; a leading byte-order mark (files written on
  Windows) is skipped; other encodings are refused.
- Frame and id are integers, parsed exactly from the text ("7", "7.0", "7.000000"; never through a float, which
  merges ids above 2**53); an id that does not fit int64 is refused, as is a frame outside 1..seqLength.
- Every frame is decoded completely or refused: a truncated image (a JPEG without its end marker, which libjpeg
  would decode into grey rows with only a warning that names no file) is an error naming the image.
"""
from __future__ import annotations

import configparser
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from darth_ray.io import InputError

PEDESTRIAN = 1
# MOTChallenge classes whose matched tracker boxes are removed before scoring (TrackEval's distractor list).
DISTRACTOR_CLASSES = (2, 7, 8, 12)
VALID_MOT17_CLASSES = tuple(range(1, 14))
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def read_text(path: Path) -> str:
    """A UTF-8 text file; a leading byte-order mark is skipped, other encodings are refused naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8",
                         data[:e.start].count(b"\n") + 1) from None


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
            parser.read_string(read_text(path), source=str(path))
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


def _int64(text: str) -> int | None:
    """The integer written in `text` ("12", "-3", "12.0", "1.000000"), exactly (a float rounds above 2**53);
    None unless it is an integer within int64."""
    whole, _, fraction = text.partition(".")
    try:
        if fraction.strip("0"):
            raise ValueError  # "12.5", "1e3": only a Decimal reads these exactly
        value = int(whole)  # the usual spellings, without the cost of a Decimal
    except ValueError:
        try:
            exact = Decimal(text)
        except InvalidOperation:
            return None
        # Range first: int(Decimal("1e999999999")) would build a billion-digit number.
        if not exact.is_finite() or exact != exact.to_integral_value() or not INT64_MIN <= exact <= INT64_MAX:
            return None
        value = int(exact)
    return value if INT64_MIN <= value <= INT64_MAX else None


def read_mot_file(path: Path, seq_length: int | None = None, kind: str = "gt") -> Tracks:
    """Parse a MOT text file; `kind` is "gt" or "results" (only changes the wording of errors).

    Checks: 6..10 finite numeric columns, frame and id integers within int64 (read exactly), frame in
    1..seq_length, positive width and height, no id twice in one frame.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"missing {kind} file")
    frames, ids, rows, lines = [], [], [], []
    last_frame = seq_length if seq_length is not None else INT64_MAX
    for lineno, raw in enumerate(read_text(path).splitlines(), start=1):
        text = raw.strip()
        if not text:
            continue
        parts = text.split(",") if "," in text else text.split()
        if len(parts) < 6 or len(parts) > 10:
            raise InputError(path, f"expected 6 to 10 comma-separated values "
                                   f"(frame,id,x,y,w,h[,conf,class,visibility,...]), got {len(parts)}: {text!r}",
                             lineno)
        frame, track_id = _int64(parts[0]), _int64(parts[1])
        if frame is None or track_id is None:
            raise InputError(path, f"frame and id must be integers within int64 ({INT64_MIN}..{INT64_MAX}), "
                                   f"got {parts[0].strip()!r}, {parts[1].strip()!r}", lineno)
        if not 1 <= frame <= last_frame:
            limit = f"1..{seq_length} (seqLength in seqinfo.ini)" if seq_length is not None else ">= 1"
            raise InputError(path, f"frame {frame} is outside {limit}", lineno)
        try:
            values = [float(p) for p in parts[2:]]
        except ValueError:
            raise InputError(path, f"non-numeric value in {text!r}", lineno) from None
        if values[2] <= 0 or values[3] <= 0:
            raise InputError(path, f"box width and height must be positive, got w={parts[4].strip()} "
                                   f"h={parts[5].strip()}", lineno)
        # Missing trailing columns take the MOT15 / results defaults: conf 1, class -1, visibility 1.
        values += [1.0, -1.0, 1.0][len(values) - 4:] if len(values) < 7 else []
        frames.append(frame)
        ids.append(track_id)
        rows.append(values[:7])
        lines.append(lineno)
    if not rows:
        return Tracks.empty(path)
    data, lines = np.asarray(rows, dtype=np.float64), np.asarray(lines, dtype=np.int64)
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        raise InputError(path, "non-finite value (nan or inf)", int(lines[np.argmin(finite)]))
    frames = np.asarray(frames, dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    data = data[order]
    tracks = Tracks(frames=frames[order], ids=np.asarray(ids, dtype=np.int64)[order], boxes=data[:, :4].copy(),
                    conf=data[:, 4].copy(), classes=data[:, 5].copy(), visibility=data[:, 6].copy(),
                    lines=lines[order], path=path)
    _check_unique_ids(tracks)
    return tracks


def _check_unique_ids(tracks: Tracks) -> None:
    # Sort by (frame, id) and compare neighbours: no arithmetic on ids, so any int64 id works.
    order = np.lexsort((tracks.ids, tracks.frames))
    frames, ids = tracks.frames[order], tracks.ids[order]
    repeats = np.flatnonzero((frames[1:] == frames[:-1]) & (ids[1:] == ids[:-1]))
    if len(repeats):
        dup = int(order[repeats[0] + 1])
        raise InputError(tracks.path, f"id {tracks.ids[dup]} appears twice in frame {tracks.frames[dup]}",
                         int(tracks.lines[dup]))


def read_seqmap(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "missing seqmap file")
    names = [line.strip() for line in read_text(path).splitlines()]
    if not names or names[0] != "name":
        raise InputError(path, "a seqmap starts with the header line 'name'", 1)
    names = [n for n in names[1:] if n]
    if len(set(names)) != len(names):
        raise InputError(path, "a sequence is listed twice")
    return names


JPEG_START, JPEG_END, JPEG_SCAN = b"\xff\xd8", b"\xff\xd9", b"\xff\xda"


def jpeg_is_complete(data: bytes) -> bool:
    """Whether the JPEG's last scan is followed by the end-of-image marker. libjpeg decodes a truncated file with
    only a warning (the missing rows grey), while PNG and other decoders refuse one (cv2 then returns None).

    Compressed scan data never holds FF D9 or FF DA (an FF there is followed by 00 or a restart marker), so in a
    truncated file the last FF D9 is missing or belongs to an EXIF thumbnail, before the image's own scan."""
    end = data.rfind(JPEG_END)
    return end >= 0 and data.find(JPEG_SCAN, end) < 0


class Sequence(ABC):
    """What every consumer uses: a named run of frames (1-based), their images and, optionally, ground truth.

    Implementations: `MotSequence` (a MOTChallenge folder) and `darth_ray.data.frames.FrameSequence` (frames
    listed by path with ground truth already read: the COCO-video and Scalabel formats). Images load lazily.
    `gt.classes` holds MOTChallenge's class codes for a MOTChallenge folder and, for the other formats, the
    1-based index into `class_names` (0: an ignore region of a category outside the chosen classes).
    """

    name: str
    class_names: tuple[str, ...] = ("pedestrian",)
    attributes: Mapping = MappingProxyType({})  # video attributes (BDD100K: weather, timeofday, scene)

    def __new__(cls, *args, **kwargs):
        # `Sequence(folder)` predates the JSON formats and still means a MOTChallenge folder.
        return super().__new__(MotSequence if cls is Sequence else cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, frames={self.num_frames})"

    @property
    @abstractmethod
    def info(self) -> SeqInfo: ...

    @property
    @abstractmethod
    def has_gt(self) -> bool: ...

    @property
    @abstractmethod
    def gt(self) -> Tracks: ...

    @abstractmethod
    def image_path(self, frame: int) -> Path: ...

    @property
    def num_frames(self) -> int:
        return self.info.seq_length

    def where(self, frame: int) -> str:
        """Where frame `frame` is listed, for error messages ("" when its path says it all)."""
        return ""

    def check_images(self) -> None:
        for frame in range(1, self.num_frames + 1):
            if not self.image_path(frame).is_file():
                raise InputError(self.image_path(frame), f"missing image{self.where(frame)}")

    def load_image(self, frame: int):
        """Frame `frame` (1-based) as a uint8 RGB tensor [3, H, W]."""
        import torch

        rgb = decode_image(self.image_path(frame), self.where(frame))
        if rgb.shape[:2] != (self.info.height, self.info.width):
            raise InputError(self.image_path(frame), f"image is {rgb.shape[1]}x{rgb.shape[0]}, the sequence's "
                                                     f"frames are {self.info.width}x{self.info.height}")
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()

    def target_labels(self, rows: slice) -> np.ndarray:
        """The training label (1-based class) of each ground-truth row; 0 for rows that are no target."""
        return self.gt.classes[rows].astype(np.int64)

    def targets(self, frame: int) -> dict[str, np.ndarray]:
        """Training targets of one frame: boxes (x1y1x2y2) with their ids and labels, and boxes to ignore."""
        gt = self.gt
        rows = gt.frame_rows(frame)
        boxes = gt.boxes[rows].copy()
        boxes[:, 2:] += boxes[:, :2]
        labels = self.target_labels(rows)
        keep = (gt.conf[rows] != 0) & (labels > 0)
        return {"boxes": boxes[keep], "ids": gt.ids[rows][keep], "labels": labels[keep],
                "ignore_boxes": boxes[~keep]}


def decode_image(path: Path, where: str = ""):
    """An image file as a uint8 RGB array [H, W, 3]; a missing, truncated or corrupt file is an InputError."""
    import cv2

    if not path.is_file():
        raise InputError(path, f"missing image{where}")
    data = path.read_bytes()
    if data[:2] == JPEG_START and not jpeg_is_complete(data):
        raise InputError(path, "truncated or corrupt image: the JPEG ends before its end-of-image marker")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None  # b"": cv2 raises
    if bgr is None:
        raise InputError(path, "truncated or corrupt image: it cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class MotSequence(Sequence):
    """One MOTChallenge sequence directory: `<root>/{seqinfo.ini, img1/, gt/gt.txt}`."""

    def __init__(self, root: Path, require_images: bool = False):
        self.root = Path(root)
        self._info = SeqInfo.read(self.root / "seqinfo.ini")
        self.name = self.root.name
        if require_images:
            self.check_images()

    @property
    def info(self) -> SeqInfo:
        return self._info

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

    @property
    def has_gt(self) -> bool:
        return (self.root / "gt" / "gt.txt").is_file()

    @cached_property
    def gt(self) -> Tracks:
        return read_mot_file(self.root / "gt" / "gt.txt", self.num_frames, kind="ground-truth")

    def target_labels(self, rows: slice) -> np.ndarray:
        # Pedestrians only (MOT15 files have no classes: every row is one); label 1, the model's only class.
        classes = self.gt.classes[rows]
        return np.ones(len(classes), np.int64) if self.gt.looks_like_mot15 else (classes == PEDESTRIAN) * 1


def load_sequences(data_dir: Path, split: str | None = None, seqmap: Path | None = None,
                   require_images: bool = False, require_gt: bool = False) -> list[MotSequence]:
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
    sequences = [MotSequence(root, require_images=require_images) for root in roots]
    if require_gt:
        for seq in sequences:
            if not seq.has_gt:
                raise InputError(seq.root / "gt" / "gt.txt", "missing ground truth")
    return sequences

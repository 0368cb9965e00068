"""One entry point for every dataset format: `load_dataset(path, split, images, classes, class_map)`.

What `path` (with `split`, `<path>/<split>`) may be:
- a MOTChallenge / DanceTrack folder (see mot.py): a sequence, a split of sequences, or a root with `split`;
- a COCO-video JSON file (mmtrack's `*_cocofmt.json`, see coco_video.py), images under `images`;
- a Scalabel JSON file or a folder of them (BDD100K, see scalabel.py), images at `<images>/<videoName>/<name>`;
- a SHIFT view: a folder holding `det_2d.json` and `img/<video>/<name>` (SHIFT's layout
  `discrete/videos/<split>/<view>/`), or a folder holding the view `front/` (the authors' configs use front);
  a Scalabel file named `det_2d.json` is read with SHIFT's classes too.
`classes` and `class_map` choose and name the classes (see frames.py); a MOTChallenge folder has one, pedestrian.
"""
from __future__ import annotations

from pathlib import Path

from darth_ray.data.coco_video import is_coco_video, read_coco_video
from darth_ray.data.frames import load_json, select_classes
from darth_ray.data.mot import Sequence, load_sequences
from darth_ray.data.scalabel import SHIFT_CLASSES, read_scalabel
from darth_ray.io import InputError

SHIFT_LABELS, SHIFT_VIEW = "det_2d.json", "front"


def load_dataset(path: Path, split: str | None = None, images: Path | None = None,
                 classes: list[str] | None = None, class_map: dict[str, str] | None = None,
                 require_images: bool = False, require_gt: bool = False) -> tuple[list[Sequence], list[str]]:
    """The sequences (sorted by name, unless a MOTChallenge seqmap orders them) and the class names that their
    ground truth's `classes` index (1-based)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if _is_mot(path, split):
        names, _ = select_classes(path, ["pedestrian"], classes, class_map)
        sequences = load_sequences(path, split=split, require_images=require_images, require_gt=require_gt)
    else:
        sequences, names = _read_json_dataset(path / split if split else path, images, classes, class_map)
        for seq in sequences:
            if require_gt and not seq.has_gt:
                raise InputError(seq.source, f"no ground truth ('annotations') for video {seq.name!r}")
            if require_images:
                seq.check_images()
    return sequences, names


def dataset_options(images: Path | None, classes: list[str] | None, class_map: dict[str, str] | None = None) -> dict:
    """The reading options a result depends on, for a run's provenance (empty when none is given, so runs
    recorded before these options existed still match)."""
    return {**({"images": str(Path(images).resolve())} if images else {}),
            **({"classes": list(classes)} if classes else {}), **({"class_map": dict(class_map)} if class_map else {})}


def _is_mot(path: Path, split: str | None) -> bool:
    folder = path / split if split and (path / split).is_dir() else path
    return folder.is_dir() and ((folder / "seqinfo.ini").is_file() or any(folder.glob("*/seqinfo.ini")))


def _read_json_dataset(path: Path, images, classes, class_map):
    if not path.exists():
        raise InputError(path, "no such file or directory (the split's folder or file)")
    shift = {"categories": SHIFT_CLASSES, "ignored": {}}
    if path.is_dir():
        view = path if (path / SHIFT_LABELS).is_file() else path / SHIFT_VIEW
        if (view / SHIFT_LABELS).is_file():
            return read_scalabel(view / SHIFT_LABELS, images or view / "img", classes, class_map, **shift)
        if not any(path.glob("*.json")):
            raise InputError(path, "no dataset here: expected MOTChallenge sequence folders (<seq>/seqinfo.ini), "
                                   f"Scalabel *.json labels or a SHIFT view ({SHIFT_LABELS}, img/)")
        return read_scalabel(path, images, classes, class_map)
    data = load_json(path)
    if is_coco_video(data):
        return read_coco_video(path, images, classes, class_map, data=data)
    if isinstance(data, dict) and "frames" not in data:
        raise InputError(path, "neither a COCO-video file ('videos', 'images') nor Scalabel labels ('frames' or a "
                               "list of frames)")
    if path.name == SHIFT_LABELS:
        return read_scalabel(path, images or path.parent / "img", classes, class_map, data=data, **shift)
    return read_scalabel(path, images, classes, class_map, data=data)

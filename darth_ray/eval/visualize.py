"""Track videos people can look at: one per sequence, one video frame per frame of the sequence.

Boxes are coloured by track id (a fixed hash of the id, so an id has the same colour in every frame, video and
run), each with its id and a short trail of where its box's bottom centre was; the frame number is in the corner.
Several result sets (e.g. source-only and adapted) go side by side on the same frames, one titled panel each; the
ground truth, when asked for, is drawn in white (its ignore regions in grey) under the tracks of every panel.
MP4 is written with cv2.VideoWriter's mp4v codec (the one every OpenCV wheel can encode), GIF with Pillow.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darth_ray.data.mot import Sequence, Tracks
from darth_ray.data.results import results_to_tracks
from darth_ray.io import InputError, atomic_write_file

FORMATS = ("mp4", "gif")
MEDIA_DIR, SEQUENCE_METRICS = "videos", "sequences.json"  # an evaluation's media in a checkpoint (write_eval_media)
GT_COLOUR, IGNORE_COLOUR, TEXT_COLOUR = (255, 255, 255), (128, 128, 128), (255, 255, 255)
PANEL_GAP = 4  # pixels of black between side-by-side panels (even: mp4v wants even frame sizes)
_GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class VideoConfig:
    """How a track video looks: its format, frame rate, size, trail length and whether to draw the ground truth."""

    format: str = "mp4"       # "mp4" or "gif"
    fps: float | None = None  # None: the sequence's frame rate
    max_size: int = 960       # longer side of each panel at most this (pixels); smaller frames keep their size
    trail: int = 15           # frames of trail behind each box (0: none)
    gt: bool = False          # draw the ground truth too

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"video format must be one of {FORMATS}, got {self.format!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.max_size < 32:
            raise ValueError(f"max_size must be >= 32 pixels, got {self.max_size}")
        if self.trail < 0:
            raise ValueError(f"trail must be >= 0 frames, got {self.trail}")


def id_colour(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track id: its hue is the id times the golden ratio (Fibonacci hashing), so consecutive ids
    get far-apart hues and an id the same colour everywhere."""
    hue = (int(track_id) * _GOLDEN) % 1.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, 1.0))


def sequence_video(sequence: Sequence, panels: dict[str, Tracks | dict], path: Path,
                   config: VideoConfig = VideoConfig(), progress=None) -> Path:
    """Write the video of `sequence` to `path` (atomically): one panel per entry of `panels` ({title: results}),
    side by side; results are Tracks (`read_results`) or the tracker's result arrays (`track_sequence`).
    `progress`: a tqdm bar advanced once per frame. Returns `path`."""
    if not panels:
        raise ValueError("a video needs at least one result set")
    tracks = {title: r if isinstance(r, Tracks) else results_to_tracks(**r) for title, r in panels.items()}
    gt = sequence.gt if config.gt else None
    info = sequence.info
    scale = min(1.0, config.max_size / max(info.width, info.height))
    size = (_even(info.width * scale), _even(info.height * scale))  # (w, h) of a panel

    def frames():
        for frame in range(1, sequence.num_frames + 1):
            image = sequence.load_image(frame).permute(1, 2, 0).numpy()
            yield _side_by_side([_panel(image, size, frame, sequence.num_frames, title, t, gt, config.trail)
                                 for title, t in tracks.items()])
            if progress is not None:
                progress.update(1)

    fps = config.fps or info.frame_rate
    write = _write_gif if config.format == "gif" else _write_mp4
    return atomic_write_file(path, lambda tmp: write(tmp, frames(), fps, path))


def write_videos(sequences: list[Sequence], result_sets: dict[str, dict[str, Tracks]], out_dir: Path,
                 config: VideoConfig = VideoConfig(), show_progress: bool = True) -> list[Path]:
    """`out_dir/<seq>.<format>` for every sequence, one panel per result set ({title: {seq: Tracks}})."""
    from tqdm import tqdm

    paths = []
    with tqdm(total=sum(s.num_frames for s in sequences), unit="frame", desc="drawing",
              disable=not show_progress) as bar:
        for seq in sequences:
            bar.set_postfix_str(seq.name)
            panels = {title: results[seq.name] for title, results in result_sets.items()}
            paths.append(sequence_video(seq, panels, Path(out_dir) / f"{seq.name}.{config.format}", config, bar))
    return paths


def write_eval_media(out: Path, sequences: list[Sequence], results: dict[str, dict], scores: dict[str, dict],
                     columns: tuple[str, ...], max_size: int = 640) -> Path:
    """An evaluation's media in `out/videos/` (report.html links them, W&B logs the best evaluation's): the first
    sequence's tracks as a video (one sequence: drawing every one would cost more than tracking it), and every
    scored sequence's `columns` in sequences.json. `results`: the tracker's arrays per sequence."""
    from darth_ray.eval.metrics import COMBINED
    from darth_ray.io import atomic_write_json

    videos = Path(out) / MEDIA_DIR
    first = sequences[0]
    sequence_video(first, {"tracks": results[first.name]}, videos / f"{first.name}.mp4", VideoConfig(max_size=max_size))
    atomic_write_json(videos / SEQUENCE_METRICS, {name: {c: row[c] for c in columns if c in row}
                                                  for name, row in scores.items() if name != COMBINED})
    return videos


def panel_titles(paths: list[Path]) -> list[str]:
    """Short distinct titles for result directories: the last path parts that tell them apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        titles = ["/".join(p[-n:]) for p in parts]
        if len(set(titles)) == len(titles):
            return titles
    return [str(p) for p in paths]  # the same directory twice


def _even(x: float) -> int:
    return max(2, int(x) // 2 * 2)


def _panel(image: np.ndarray, size: tuple[int, int], frame: int, num_frames: int, title: str, tracks: Tracks,
           gt: Tracks | None, trail: int) -> np.ndarray:
    """One frame of one result set, drawn on a resized copy of `image` (RGB)."""
    import cv2

    height, width = image.shape[:2]
    canvas = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    factor = np.array([size[0] / width, size[1] / height] * 2)
    thickness = max(1, round(size[1] / 300))
    if gt is not None:
        rows = gt.frame_rows(frame)
        for box, conf in zip(gt.boxes[rows], gt.conf[rows]):
            _rectangle(canvas, box * factor, GT_COLOUR if conf != 0 else IGNORE_COLOUR, 1)
    current = tracks.frame_rows(frame)
    recent = slice(tracks.frame_rows(max(1, frame - trail)).start, current.stop)
    feet = np.stack([tracks.boxes[recent, 0] + tracks.boxes[recent, 2] / 2,
                     tracks.boxes[recent, 1] + tracks.boxes[recent, 3]], axis=1) * factor[:2]
    for track_id, box in zip(tracks.ids[current], tracks.boxes[current]):
        colour = id_colour(track_id)
        if trail:
            points = feet[tracks.ids[recent] == track_id].round().astype(np.int32)
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, thickness, cv2.LINE_AA)
        x, y = _rectangle(canvas, box * factor, colour, thickness + 1)
        _label(canvas, str(track_id), (x, y), colour, (0, 0, 0))
    _label(canvas, f"{title}  frame {frame}/{num_frames}", (0, 0), (0, 0, 0), TEXT_COLOUR, below=True)
    return canvas


def _rectangle(canvas: np.ndarray, xywh: np.ndarray, colour, thickness: int) -> tuple[int, int]:
    import cv2

    x, y, w, h = (int(round(v)) for v in xywh)
    cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, thickness)
    return x, y


def _label(canvas: np.ndarray, text: str, corner: tuple[int, int], background, foreground,
           below: bool = False) -> None:
    """`text` on a filled box of `background`, just above `corner` (or just below it)."""
    import cv2

    scale = max(0.35, canvas.shape[0] / 900)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(0, corner[0]), canvas.shape[1] - w - 4)
    top = corner[1] if below else max(0, corner[1] - h - base - 4)
    cv2.rectangle(canvas, (x, top), (x + w + 4, top + h + base + 4), background, cv2.FILLED)
    cv2.putText(canvas, text, (x + 2, top + h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, foreground, 1, cv2.LINE_AA)


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    if len(panels) == 1:
        return panels[0]
    gap = np.zeros((panels[0].shape[0], PANEL_GAP, 3), np.uint8)
    return np.concatenate([part for p in panels for part in (gap, p)][1:], axis=1)


def _write_mp4(tmp: str, frames, fps: float, target: Path) -> None:
    import cv2

    writer = None
    try:
        for rgb in frames:
            if writer is None:
                writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (rgb.shape[1], rgb.shape[0]))
                if not writer.isOpened():
                    raise InputError(target, "this OpenCV cannot encode mp4 (mp4v); use --format gif")
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()


def _write_gif(tmp: str, frames, fps: float, target: Path) -> None:
    from PIL import Image

    images = (Image.fromarray(rgb) for rgb in frames)
    first = next(images)
    first.save(tmp, format="GIF", save_all=True, append_images=images, duration=max(10, round(1000 / fps)), loop=0)

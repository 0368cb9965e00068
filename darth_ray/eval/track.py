"""Run a QDTrack model and the QuasiDenseTracker over sequences and write MOTChallenge (and Scalabel) results.

Detection runs on batches of frames (one forward for several frames); association then walks the batch frame by
frame, since the tracker is sequential. The next batches' images are decoded in background threads (pinned and
copied asynchronously on CUDA: data/prefetch.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

from darth_ray.data.mot import Sequence
from darth_ray.data.prefetch import Prefetcher
from darth_ray.data.results import write_results, write_scalabel_results
from darth_ray.eval.metrics import score_results
from darth_ray.models.tracker import QuasiDenseTracker

log = logging.getLogger(__name__)


def resize_factor(height: int, width: int, scale: tuple[int, int] | None) -> float:
    """Keep-ratio factor that fits the frame into ``scale`` (w, h): long edge into its longer side, short edge into
    its shorter side (mmcv.rescale_size, mmdet's Resize(keep_ratio=True)); 1.0 when scale is None."""
    if scale is None:
        return 1.0
    return min(max(scale) / max(height, width), min(scale) / min(height, width))


@torch.no_grad()
def detect_and_embed(model, frames: torch.Tensor, max_size: int | None = None,
                     embedder=None) -> list[dict[str, torch.Tensor]]:
    """Detections + track embeddings for a batch of uint8 RGB frames [B, 3, H, W] (all the same size).

    Frames are resized to fit the model's test_scale (or ``max_size`` x ``max_size`` when given) keeping their
    ratio, on uint8 with bilinear interpolation without antialiasing (mmdet's test pipeline, cv2 INTER_LINEAR).
    ``embedder``: another QDTrack whose track head embeds ``model``'s detections (None = ``model`` itself), to
    tell the detector's share of a tracking result from the embeddings' share.
    Returns per frame {"boxes" [N, 4] x1y1x2y2 in frame pixels, "scores" [N], "labels" [N] (0-based class),
    "embeds" [N, D]}.
    """
    frames = frames.to(next(model.parameters()).device)
    height, width = frames.shape[-2:]
    factor = resize_factor(height, width, (max_size, max_size) if max_size is not None else model.config.test_scale)
    size = (int(height * factor + 0.5), int(width * factor + 0.5))  # mmcv's rounding
    images = frames if size == (height, width) else TF.resize(frames, list(size), antialias=False)
    images = images.float()
    image_sizes = [tuple(images.shape[-2:])] * len(images)
    feats = model.features(model.normalize(images))
    logits, deltas = model.rpn_head(feats)
    proposals = model.proposals(feats, logits, deltas, image_sizes)
    detections = model.detect(feats, proposals, image_sizes)
    if embedder is None or embedder is model:
        embeds = model.embed(feats, [d["boxes"] for d in detections])
    else:
        embeds = embedder.embed(embedder.features(embedder.normalize(images)), [d["boxes"] for d in detections])
    sx, sy = images.shape[-1] / width, images.shape[-2] / height  # back to frame pixels
    scale = torch.tensor([sx, sy, sx, sy], device=frames.device)
    return [{**d, "boxes": d["boxes"] / scale, "embeds": e} for d, e in zip(detections, embeds)]


def frame_batches(num_frames: int, batch_size: int) -> list[list[int]]:
    """The 1-based frame ids of a sequence in consecutive batches of `batch_size` (the last one may be shorter)."""
    return [list(range(s, min(s + batch_size, num_frames + 1))) for s in range(1, num_frames + 1, batch_size)]


def load_frames(sequence: Sequence, frame_ids: list[int]) -> torch.Tensor:
    """The frames as one uint8 RGB batch [B, 3, H, W]."""
    return torch.stack([sequence.load_image(f) for f in frame_ids])


def result_columns(result: dict[str, np.ndarray]) -> tuple:
    """A sequence's tracks as write_results' and write_scalabel_results' columns."""
    return result["frames"], result["ids"], result["boxes"], result["scores"], result.get("labels")


class SequenceTracking:
    """One sequence tracked batch by batch in frame order: `track(frame_ids, images)` for every batch (the tracker's
    state carries from batch to batch), then `result()`. Between batches the model may change (the online protocol,
    adapt/online.py); tracking a whole sequence is the same calls with a fixed model (`track_sequence`)."""

    def __init__(self, model, sequence: Sequence, tracker: QuasiDenseTracker, max_size: int | None = None,
                 embedder=None):
        if max_size is not None and not (isinstance(max_size, int) and max_size >= 1):
            raise ValueError(f"max_size must be None or an int >= 1, got {max_size!r}")
        self.multi_class = model.config.num_classes > 1
        if self.multi_class and model.config.num_classes != len(sequence.class_names):
            raise ValueError(f"{sequence.name}: the model has {model.config.num_classes} classes, the dataset "
                             f"{len(sequence.class_names)} ({', '.join(sequence.class_names)})")
        self.model, self.tracker, self.max_size, self.embedder = model, tracker, max_size, embedder
        tracker.reset()
        self.out = {"frames": [], "ids": [], "boxes": [], "scores": [], **({"labels": []} if self.multi_class else {})}

    def track(self, frame_ids: list[int], images: torch.Tensor) -> None:
        """Detect on the uint8 RGB frames `images` [B, 3, H, W] (`frame_ids`, in order) and associate them."""
        self.model.eval()
        if self.embedder is not None:
            self.embedder.eval()
        out = self.out
        for frame, det in zip(frame_ids, detect_and_embed(self.model, images, self.max_size, self.embedder)):
            boxes, scores, ids, labels = self.tracker.update(frame, det["boxes"], det["scores"], det["embeds"],
                                                             det["labels"], return_labels=True)
            out["frames"].append(np.full(len(ids), frame))
            out["ids"].append(ids.cpu().numpy() + 1)
            out["boxes"].append(boxes.cpu().numpy())
            out["scores"].append(scores.cpu().numpy())
            if self.multi_class:
                out["labels"].append(labels.cpu().numpy())

    def result(self) -> dict[str, np.ndarray]:
        """MOT arrays {"frames", "ids" (1-based), "boxes" (x1y1x2y2), "scores"} and, from a model of several classes,
        "labels" (0-based indices into the sequence's class names)."""
        return {k: np.concatenate(v) if v else np.zeros((0, 4) if k == "boxes" else 0) for k, v in self.out.items()}


def track_sequence(model, sequence: Sequence, tracker: QuasiDenseTracker, batch_size: int = 4,
                   max_size: int | None = None, progress: tqdm | None = None,
                   embedder=None) -> dict[str, np.ndarray]:
    """Track one sequence; returns `SequenceTracking.result()`."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    tracking = SequenceTracking(model, sequence, tracker, max_size, embedder)
    batches = frame_batches(sequence.num_frames, batch_size)
    device = next(model.parameters()).device
    with Prefetcher(lambda i: load_frames(sequence, batches[i]), device, len(batches)) as ahead:
        for i, frame_ids in enumerate(batches):
            tracking.track(frame_ids, ahead.get(i))
            if progress is not None:
                progress.update(len(frame_ids))
    return tracking.result()


def track_sequences(model, sequences: list[Sequence], out_dir: Path | None = None,
                    tracker_params: dict | None = None, batch_size: int = 4, max_size: int | None = None,
                    show_progress: bool = True, embedder=None,
                    scalabel_dir: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Track every sequence; returns {seq: result arrays} and, with `out_dir`, writes `out_dir/<seq>.txt` (with
    the class column from a multi-class model), with `scalabel_dir` `scalabel_dir/<seq>.json` (BDD100K's and
    SHIFT's submission format). ``embedder``: see ``detect_and_embed``."""
    tracker = QuasiDenseTracker(**(tracker_params or {}))
    results = {}
    with tqdm(total=sum(s.num_frames for s in sequences), unit="frame", desc="tracking",
              disable=not show_progress) as bar:
        for seq in sequences:
            bar.set_postfix_str(seq.name)
            r = results[seq.name] = track_sequence(model, seq, tracker, batch_size, max_size, bar, embedder)
            columns = result_columns(r)
            if out_dir is not None:
                write_results(Path(out_dir) / f"{seq.name}.txt", *columns)
            if scalabel_dir is not None:
                write_scalabel_results(Path(scalabel_dir) / f"{seq.name}.json", seq, *columns)
    return results


def track_and_score(model, sequences: list[Sequence], tracker_params: dict | None = None,
                    out_dir: Path | None = None, show_progress: bool = False, embedder=None) -> tuple[dict, dict]:
    """Track sequences that have ground truth; returns (result arrays, metrics incl. COMBINED)."""
    results = track_sequences(model, sequences, out_dir, tracker_params, show_progress=show_progress,
                              embedder=embedder)
    return results, score_results(sequences, results)

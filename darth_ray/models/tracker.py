"""QDTrack's online association: mmtrack 0.14 ``QuasiDenseTracker`` on explicit tensors.

Per frame: sort detections by score, drop duplicates, match them greedily (highest score first)
against a memory of tracklet embeddings (updated with momentum) plus the previous frame's
unmatched "backdrop" detections, start new tracklets for confident unmatched detections, and
forget tracklets unseen for ``memo_tracklet_frames`` frames.
"""

import inspect

import torch
from torch import Tensor
from torch.nn import functional as F

from darth_ray.boxes import box_iou

MATCH_METRICS = ("bisoftmax", "softmax", "cosine")

# QDTrack's BDD100K tracker (mmtrack qdtrack_faster-rcnn_r50_fpn_12e_base.py, the base of the authors' BDD100K
# and SHIFT configs): new tracks from 0.7, low-score detections down to 0.3 still matched, 10 frames of memory,
# matching within a category. The constructor's defaults are the MOT17/DanceTrack values.
BDD100K_TRACKER = dict(init_score_thr=0.7, obj_score_thr=0.3, match_score_thr=0.5, memo_tracklet_frames=10,
                       memo_backdrop_frames=1, memo_momentum=0.8, nms_conf_thr=0.5, nms_backdrop_iou_thr=0.3,
                       nms_class_iou_thr=0.7, with_cats=True, match_metric="bisoftmax")


def _check_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _overlaps_an_earlier_box(ious: Tensor, thresholds: Tensor) -> Tensor:
    """[N] bool: box i has IoU > thresholds[i] with some box j < i (any of them, dropped or not,
    exactly like mmtrack's loop over ``ious[i, :i]``)."""
    earlier = torch.ones_like(ious, dtype=torch.bool).tril(diagonal=-1)
    return ((ious > thresholds[:, None]) & earlier).any(dim=1)


class QuasiDenseTracker:
    """Online multi-object tracker of QDTrack (mmtrack ``QuasiDenseTracker``).

    Defaults are QDTrack's MOT17/DanceTrack tracker config. Call ``reset()`` at the start of
    every sequence and ``update()`` once per frame, in order.
    """

    def __init__(
        self,
        *,
        init_score_thr: float = 0.9,
        obj_score_thr: float = 0.5,
        match_score_thr: float = 0.5,
        memo_tracklet_frames: int = 30,
        memo_backdrop_frames: int = 1,
        memo_momentum: float = 0.8,
        nms_conf_thr: float = 0.5,
        nms_backdrop_iou_thr: float = 0.3,
        nms_class_iou_thr: float = 0.7,
        with_cats: bool = True,
        match_metric: str = "bisoftmax",
        **unknown,
    ) -> None:
        if unknown:
            raise ValueError(f"unknown QuasiDenseTracker parameter(s): {', '.join(sorted(unknown))}")
        self.init_score_thr = _check_unit_interval("init_score_thr", init_score_thr)
        self.obj_score_thr = _check_unit_interval("obj_score_thr", obj_score_thr)
        self.match_score_thr = _check_unit_interval("match_score_thr", match_score_thr)
        self.memo_tracklet_frames = _check_count("memo_tracklet_frames", memo_tracklet_frames)
        self.memo_backdrop_frames = _check_count("memo_backdrop_frames", memo_backdrop_frames)
        self.memo_momentum = _check_unit_interval("memo_momentum", memo_momentum)
        self.nms_conf_thr = _check_unit_interval("nms_conf_thr", nms_conf_thr)
        self.nms_backdrop_iou_thr = _check_unit_interval("nms_backdrop_iou_thr", nms_backdrop_iou_thr)
        self.nms_class_iou_thr = _check_unit_interval("nms_class_iou_thr", nms_class_iou_thr)
        if not isinstance(with_cats, bool):
            raise ValueError(f"with_cats must be a bool, got {with_cats!r}")
        self.with_cats = with_cats
        if match_metric not in MATCH_METRICS:
            raise ValueError(f"match_metric must be one of {MATCH_METRICS}, got {match_metric!r}")
        self.match_metric = match_metric
        self.reset()

    def reset(self) -> None:
        """Forget all tracklets and backdrops; the next new track gets id 0."""
        self.num_tracks = 0
        # id -> dict(box [4], embed [D], label [], last_frame int)
        self.tracks: dict[int, dict] = {}
        # newest first; each dict(boxes [B, 4], embeds [B, D], labels [B])
        self.backdrops: list[dict[str, Tensor]] = []

    def _memory(self) -> tuple[Tensor, Tensor, Tensor]:
        """(embeds [M, D], labels [M], ids [M] with -1 for backdrops) of tracklets then backdrops."""
        embeds = [t["embed"][None] for t in self.tracks.values()]
        labels = [t["label"].view(1) for t in self.tracks.values()]
        ids = [torch.tensor(list(self.tracks.keys()), dtype=torch.long)]
        for backdrop in self.backdrops:
            embeds.append(backdrop["embeds"])
            labels.append(backdrop["labels"])
            ids.append(torch.full((backdrop["embeds"].shape[0],), -1, dtype=torch.long))
        return torch.cat(embeds), torch.cat(labels), torch.cat(ids)

    def _match_scores(self, embeds: Tensor, memo_embeds: Tensor) -> Tensor:
        if self.match_metric == "cosine":
            return F.normalize(embeds, p=2, dim=1) @ F.normalize(memo_embeds, p=2, dim=1).t()
        similarity = embeds @ memo_embeds.t()
        if self.match_metric == "softmax":
            return similarity.softmax(dim=1)
        # bi-softmax: average of detection->memory and memory->detection softmaxes
        return (similarity.softmax(dim=1) + similarity.softmax(dim=0)) / 2

    def update(
        self,
        frame_id: int,
        boxes: Tensor,
        scores: Tensor,
        embeds: Tensor,
        labels: Tensor | None = None,
        return_labels: bool = False,
    ) -> tuple[Tensor, ...]:
        """Associate one frame's detections.

        Args:
            frame_id: frame index within the sequence (increasing; gaps allowed).
            boxes: [N, 4] x1y1x2y2; scores: [N]; embeds: [N, D] track-head embeddings;
            labels: [N] class labels (all 0 if None); with ``with_cats`` a detection only
                matches tracklets and backdrops of its own class.
            return_labels: also return the labels of the tracked detections.

        Returns:
            (boxes [T, 4], scores [T], ids [T] int64 >= 0[, labels [T]]) of the detections that
            carry a track id this frame, in descending score order, on the input device.
        """
        num_dets = boxes.shape[0]
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
        if scores.shape != (num_dets,):
            raise ValueError(f"scores must have shape [{num_dets}], got {list(scores.shape)}")
        if embeds.dim() != 2 or embeds.shape[0] != num_dets:
            raise ValueError(f"embeds must have shape [{num_dets}, D], got {list(embeds.shape)}")
        if labels is None:
            labels = torch.zeros(num_dets, dtype=torch.long, device=boxes.device)
        elif labels.shape != (num_dets,):
            raise ValueError(f"labels must have shape [{num_dets}], got {list(labels.shape)}")
        device = boxes.device
        labels = labels.to(device)
        if num_dets == 0:
            # As mmtrack: an empty frame leaves the memory untouched (no ageing, no backdrops).
            empty = (boxes.new_zeros((0, 4)), scores.new_zeros((0,)), torch.zeros(0, dtype=torch.long, device=device))
            return empty + (labels[:0],) if return_labels else empty

        boxes, scores, embeds = boxes.detach(), scores.detach(), embeds.detach()
        order = scores.argsort(descending=True, stable=True)
        boxes, scores, embeds, labels = boxes[order], scores[order], embeds[order], labels[order]

        # Duplicate removal: a box overlapping any higher-scored box is dropped; low-score boxes
        # (likely background) use the stricter backdrop IoU.
        thresholds = torch.where(
            scores < self.obj_score_thr,
            scores.new_tensor(self.nms_backdrop_iou_thr),
            scores.new_tensor(self.nms_class_iou_thr),
        )
        valid = ~_overlaps_an_earlier_box(box_iou(boxes, boxes), thresholds)
        boxes, scores, embeds, labels = boxes[valid], scores[valid], embeds[valid], labels[valid]

        # ids: >= 0 tracked, -1 unmatched (may start a track or become a backdrop),
        # -2 low-score detection matched to a tracklet (neither output nor backdrop).
        num_dets = boxes.shape[0]
        ids = torch.full((num_dets,), -1, dtype=torch.long)
        if num_dets > 0 and self.tracks:
            memo_embeds, memo_labels, memo_ids = self._memory()
            match_scores = self._match_scores(embeds, memo_embeds)
            if self.with_cats:
                match_scores = match_scores * (labels[:, None] == memo_labels[None, :])
            match_scores = match_scores.cpu()  # the greedy loop is sequential: one transfer
            scores_cpu = scores.cpu()
            for i in range(num_dets):
                conf, memo_ind = match_scores[i].max(dim=0)
                memo_id = int(memo_ids[memo_ind])
                if conf > self.match_score_thr and memo_id > -1:
                    if scores_cpu[i] > self.obj_score_thr:
                        ids[i] = memo_id
                        # a tracklet takes at most one detection
                        match_scores[:i, memo_ind] = 0
                        match_scores[i + 1 :, memo_ind] = 0
                    elif conf > self.nms_conf_thr:
                        ids[i] = -2
        new = (ids == -1) & (scores.cpu() > self.init_score_thr)
        num_new = int(new.sum())
        ids[new] = torch.arange(self.num_tracks, self.num_tracks + num_new, dtype=torch.long)
        self.num_tracks += num_new

        self._remember(frame_id, ids, boxes, embeds, labels)
        ids = ids.to(device)
        tracked = ids > -1
        out = boxes[tracked], scores[tracked], ids[tracked]
        return out + (labels[tracked],) if return_labels else out

    def _remember(self, frame_id: int, ids: Tensor, boxes: Tensor, embeds: Tensor, labels: Tensor) -> None:
        """mmtrack's ``update``: refresh tracklets, store backdrops, forget stale memory."""
        for i in torch.nonzero(ids > -1).flatten().tolist():
            track_id = int(ids[i])
            track = self.tracks.get(track_id)
            if track is None:
                self.tracks[track_id] = dict(box=boxes[i], embed=embeds[i], label=labels[i], last_frame=frame_id)
            else:
                track["box"] = boxes[i]
                track["embed"] = (1 - self.memo_momentum) * track["embed"] + self.memo_momentum * embeds[i]
                track["label"] = labels[i]
                track["last_frame"] = frame_id

        # Unmatched detections become this frame's backdrops unless they overlap an earlier
        # (higher-scored) detection of this frame.
        is_backdrop = (ids == -1).to(boxes.device)
        overlapping = _overlaps_an_earlier_box(
            box_iou(boxes, boxes), boxes.new_full((boxes.shape[0],), self.nms_backdrop_iou_thr)
        )
        keep = is_backdrop & ~overlapping
        self.backdrops.insert(0, dict(boxes=boxes[keep], embeds=embeds[keep], labels=labels[keep]))

        stale = [k for k, t in self.tracks.items() if frame_id - t["last_frame"] >= self.memo_tracklet_frames]
        for track_id in stale:
            del self.tracks[track_id]
        if len(self.backdrops) > self.memo_backdrop_frames:
            self.backdrops.pop()


def tracker_preset(name: str) -> dict:
    """QuasiDenseTracker parameters by benchmark: ``mot17`` (also DanceTrack; the defaults) or ``bdd100k``."""
    defaults = {k: p.default for k, p in inspect.signature(QuasiDenseTracker).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    presets = {"mot17": defaults, "bdd100k": BDD100K_TRACKER}
    if name not in presets:
        raise ValueError(f"unknown tracker preset {name!r}; choose from {', '.join(presets)}")
    return dict(presets[name])

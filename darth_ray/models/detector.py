"""Faster R-CNN pieces with MMDetection's numerics, built on torchvision ops.

torchvision's detection modules differ from MMDetection's QDTrack in small ways that change outputs (rounded
anchors, one-sided log-size clamp, RoI level mapping, low-quality matching rule), so the few places where that
matters are written out here; everything else (RPN head, FPN, RoIAlign, NMS, sampler, box encoding) is torchvision.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align

# mmdet DeltaXYWHBBoxCoder's wh_ratio_clip = 16 / 1000: log-size deltas are clamped to +-log(1000 / 16).
MAX_LOG_SIZE_DELTA = abs(math.log(16 / 1000))


# ----------------------------------------------------------------------------------------------------- anchors
def base_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float], rounded: bool = False,
                 device: torch.device | None = None) -> Tensor:
    """Anchors of one level centred on (0, 0), [len(ratios) * len(scales), 4], ratio-major as mmdet.

    mmdet AnchorGenerator with base size = stride, center_offset 0, ratio = h / w; ``rounded`` reproduces
    torchvision's AnchorGenerator instead.
    """
    ratios_t = torch.tensor(list(ratios), dtype=torch.float32)
    scales_t = torch.tensor(list(scales), dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).view(-1)
    anchors = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    if rounded:
        anchors = anchors.round()
    return anchors.to(device) if device is not None else anchors


def grid_anchors(base: Tensor, feat_size: tuple[int, int], stride: int) -> Tensor:
    """All anchors of a level, [h * w * A, 4], ordered (y, x, anchor) like the flattened RPN outputs."""
    h, w = feat_size
    shift_x = torch.arange(0, w, device=base.device).to(base.dtype) * stride
    shift_y = torch.arange(0, h, device=base.device).to(base.dtype) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------- box coding
@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device: a new one from host memory would wait for the GPU each step."""
    return torch.tensor(values, device=device, dtype=dtype)


def decode_boxes(reference: Tensor, deltas: Tensor, stds: Sequence[float],
                 max_log_size_delta: float = MAX_LOG_SIZE_DELTA) -> Tensor:
    """Apply (dx, dy, dw, dh) deltas to x1y1x2y2 reference boxes: mmdet delta2bbox with means 0.

    The arithmetic follows delta2bbox operation by operation (not torchvision's BoxCoder.decode, which clamps only
    from above and orders the operations differently) so that converted models reproduce MMDetection exactly.
    """
    deltas = deltas.reshape(-1, 4) * _constant(tuple(stds), deltas.device, deltas.dtype).view(1, 4)
    dxy, dwh = deltas[:, :2], deltas[:, 2:]
    pxy = (reference[:, :2] + reference[:, 2:]) * 0.5
    pwh = reference[:, 2:] - reference[:, :2]
    dwh = dwh.clamp(min=-max_log_size_delta, max=max_log_size_delta)
    gxy = pxy + pwh * dxy
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    h, w = image_size
    return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=-1)


# ------------------------------------------------------------------------------------------------------- NMS
def mmcv_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """torchvision NMS visiting boxes in the order of mmcv's CPU kernel.

    Both kernels are the same greedy loop, but mmcv orders by a non-stable ``scores.sort`` and torchvision by a
    stable one; among exactly equal scores (e.g. boxes entirely off the image all get the same RoI features) that
    decides which boxes survive, so the order is fixed here and torchvision's stable sort then keeps it.
    """
    order = scores.sort(0, descending=True)[1]
    return order[nms(boxes[order], scores[order], iou_threshold)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS separately per ``idxs`` value; kept indices sorted by decreasing score. mmcv's batched_nms.

    mmcv separates groups by offsetting boxes by idx * (max coordinate + 1). With unclipped boxes (negative
    coordinates) that offset does not fully separate groups, so a few boxes can be suppressed across levels;
    doing the same keeps proposals identical to MMDetection's.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    boxes_for_nms = boxes + offsets[:, None]
    if boxes.shape[0] < 10000:
        return mmcv_nms(boxes_for_nms, scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)  # mmcv's split_thr path: one NMS per group
    for group in torch.unique(idxs):
        members = (idxs == group).nonzero().view(-1)
        keep_mask[members[mmcv_nms(boxes_for_nms[members], scores[members], iou_threshold)]] = True
    keep = keep_mask.nonzero().view(-1)
    return keep[scores[keep].sort(descending=True)[1]]


# ------------------------------------------------------------------------------------------------- assigning
def assign_by_iou(iou: Tensor, pos_thresh: float, neg_thresh: float, min_pos_iou: float,
                  match_low_quality: bool) -> Tensor:
    """Match candidates (columns of ``iou`` [M gt, N]) to ground truth: mmdet MaxIoUAssigner.

    Returns [N] long: gt index, -1 for negatives (max IoU < neg_thresh), -2 for ignored ones (in between), the
    convention of torchvision's Matcher. Matcher's low-quality rule differs (no minimum IoU, each such candidate
    goes to its own best gt), so mmdet's is used: every gt whose best IoU >= min_pos_iou also takes all the
    candidates that reach that best IoU, later gts overwriting earlier ones.
    """
    n = iou.shape[1]
    if iou.shape[0] == 0:
        return torch.full((n,), -1, dtype=torch.long, device=iou.device)
    max_iou, argmax = iou.max(dim=0)
    matched = torch.full((n,), -2, dtype=torch.long, device=iou.device)
    matched[(max_iou >= 0) & (max_iou < neg_thresh)] = -1
    pos = max_iou >= pos_thresh
    matched[pos] = argmax[pos]
    if match_low_quality:
        gt_max = iou.max(dim=1).values
        best = (iou == gt_max[:, None]) & (gt_max[:, None] >= min_pos_iou)  # [M, N]
        has = best.any(dim=0)
        last_gt = iou.shape[0] - 1 - best.flip(0).to(torch.uint8).argmax(dim=0)
        matched[has] = last_gt[has]
    return matched


def sampler_labels(matched: Tensor) -> Tensor:
    """torchvision BalancedPositiveNegativeSampler labels: 1 positive, 0 negative, -1 ignored."""
    labels = (matched >= 0).to(torch.int64)
    labels[matched == -2] = -1
    return labels


# ----------------------------------------------------------------------------------------------- RoI features
def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """[K, 5] (image index, x1, y1, x2, y2), the format of roi_align."""
    return torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=1) for i, b in enumerate(boxes)])


class RoIFeatureExtractor(nn.Module):
    """RoIAlign each box on one FPN level chosen by its size: mmdet SingleRoIExtractor.

    level = floor(log2(sqrt(w * h) / finest_scale + 1e-6)), clamped to the available levels (torchvision's
    LevelMapper puts the epsilon elsewhere and infers the strides from feature shapes).
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 0, aligned: bool = True,
                 finest_scale: float = 56.0):
        super().__init__()
        self.strides = tuple(strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.finest_scale = finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(self, feats: Sequence[Tensor], boxes: list[Tensor]) -> Tensor:
        rois = boxes_to_rois(boxes).to(feats[0].dtype)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return out
        levels = self.levels(rois)
        for i, stride in enumerate(self.strides):
            idx = (levels == i).nonzero().view(-1)
            if idx.numel() > 0:
                out[idx] = roi_align(feats[i], rois[idx], self.output_size, spatial_scale=1.0 / stride,
                                     sampling_ratio=self.sampling_ratio, aligned=self.aligned)
        return out


# ------------------------------------------------------------------------------------------------- box head
class BoxHead(nn.Module):
    """Two shared FCs + classifier + class-specific regressor: mmdet Shared2FCBBoxHead.

    class_logits columns are (class 0, ..., class C - 1, background) as in mmdet (torchvision puts background
    first); box_deltas has 4 columns per foreground class, no background slot (torchvision has one).
    """

    def __init__(self, in_channels: int, roi_size: int = 7, fc_dim: int = 1024, num_classes: int = 1):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * roi_size * roi_size, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, 4 * num_classes)
        # mmdet's initialisation: Xavier for the shared FCs, small normals for the predictors.
        for fc in (self.fc6, self.fc7):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc6(roi_feats.flatten(1)))
        x = F.relu(self.fc7(x))
        return self.cls_score(x), self.bbox_pred(x)


__all__ = ["MAX_LOG_SIZE_DELTA", "base_anchors", "grid_anchors", "decode_boxes", "clip_boxes", "mmcv_nms", "batched_nms",
           "assign_by_iou", "sampler_labels", "boxes_to_rois", "RoIFeatureExtractor", "BoxHead"]

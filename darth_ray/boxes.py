"""Box overlaps: IoU of x1y1x2y2 tensors (training, tracking) and of x, y, w, h arrays (evaluation)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_EPS = np.finfo(float).eps


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Pairwise IoU [N, M] of x1y1x2y2 boxes, as mmdet's ``bbox_overlaps`` (union clamped at eps,
    no +1 pixel convention)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


def _intersection_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    wh = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of boxes given as x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    inter = _intersection_xywh(a, b)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, _EPS), 0.0)


def box_ioa_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)]: the share of each box of `a` that lies inside each box of `b` (0 for an empty box)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    area = (a[:, 2] * a[:, 3])[:, None]
    return np.where(area > _EPS, _intersection_xywh(a, b) / np.maximum(area, _EPS), 0.0)

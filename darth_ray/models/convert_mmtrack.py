"""Convert an mmtrack 0.14 QDTrack checkpoint (Faster R-CNN R50-FPN + quasi-dense embed head) to ours.

Key layout of the source (``state_dict`` of mmtrack's QDTrack):
    detector.backbone.*                            -> backbone.*               (both torchvision ResNet names)
    detector.neck.lateral_convs.{i}.conv.*         -> fpn.inner_blocks.{i}.0.*
    detector.neck.fpn_convs.{i}.conv.*             -> fpn.layer_blocks.{i}.0.*
    detector.rpn_head.rpn_conv.*                   -> rpn.conv.0.0.*
    detector.rpn_head.rpn_cls.*                    -> rpn.cls_logits.*
    detector.rpn_head.rpn_reg.*                    -> rpn.bbox_pred.*
    detector.roi_head.bbox_head.shared_fcs.{0,1}.* -> box_head.fc6.*, box_head.fc7.*
    detector.roi_head.bbox_head.fc_cls.*           -> box_head.cls_score.*     (rows [pedestrian, background])
    detector.roi_head.bbox_head.fc_reg.*           -> box_head.bbox_pred.*     (4 rows, the pedestrian class)
    track_head.embed_head.*                        -> embed_head.*
Our box head keeps mmdet's class order and regressor layout (BoxHead), so those two are copied row for row;
what differs from torchvision's Faster R-CNN is handled by the model (detector.py), not by reordering weights.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from darth_ray.io import InputError
from darth_ray.models.config import model_config
from darth_ray.models.qdtrack import QDTrack, save_checkpoint

# (our prefix, mmtrack prefix); the first matching prefix of one of our keys gives its source name.
_PREFIXES = [
    *[(f"fpn.inner_blocks.{i}.0.", f"detector.neck.lateral_convs.{i}.conv.") for i in range(4)],
    *[(f"fpn.layer_blocks.{i}.0.", f"detector.neck.fpn_convs.{i}.conv.") for i in range(4)],
    ("backbone.", "detector.backbone."),
    ("rpn.conv.0.0.", "detector.rpn_head.rpn_conv."),
    ("rpn.cls_logits.", "detector.rpn_head.rpn_cls."),
    ("rpn.bbox_pred.", "detector.rpn_head.rpn_reg."),
    ("box_head.fc6.", "detector.roi_head.bbox_head.shared_fcs.0."),
    ("box_head.fc7.", "detector.roi_head.bbox_head.shared_fcs.1."),
    ("box_head.cls_score.", "detector.roi_head.bbox_head.fc_cls."),
    ("box_head.bbox_pred.", "detector.roi_head.bbox_head.fc_reg."),
    ("embed_head.", "track_head.embed_head."),
]
EMBED_PREFIX = "track_head.embed_head."


def _mmtrack_name(key: str) -> str:
    for ours, theirs in _PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"no mmtrack name for model key {key}")  # a model change the table was not updated for


def _template() -> dict[str, Tensor]:
    """Our r50_fpn state dict as shapes/dtypes only (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return QDTrack(model_config("r50_fpn")).state_dict()


def _names(keys, n: int = 10) -> str:
    keys = sorted(map(str, keys))
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def convert_mmtrack_state_dict(sd: Mapping[str, Any], source: str | os.PathLike = "<state_dict>") -> dict[str, Tensor]:
    """mmtrack QDTrack state dict (bare, or a checkpoint dict holding it under "state_dict") -> our r50_fpn state
    dict. Every source key must be consumed and every model key filled with the right shape; otherwise an
    InputError naming ``source`` and the offending keys."""
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise InputError(source, "no state dict found (expected a mapping of parameter names to tensors)")
    template = _template()
    wanted = {_mmtrack_name(k): k for k in template}  # mmtrack name -> our name

    problems = []
    extra = set(sd) - set(wanted)
    if extra:
        problems.append(f"unknown keys for an mmtrack QDTrack R50-FPN checkpoint: {_names(extra)}")
    missing = set(wanted) - set(sd)
    embed_keys = {k for k in wanted if k.startswith(EMBED_PREFIX)}
    if missing and embed_keys <= missing:
        problems.append("missing track_head.embed_head (this is a detector-only checkpoint)")
        missing -= embed_keys
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if problems:
        raise InputError(source, "; ".join(problems))

    out: dict[str, Tensor] = {}
    wrong = []
    for src_key, ours in wanted.items():
        value = sd[src_key]
        if not torch.is_tensor(value):
            raise InputError(source, f"{src_key} is a {type(value).__name__}, not a tensor")
        expected = template[ours]
        if tuple(value.shape) != tuple(expected.shape):
            wrong.append(f"{src_key} {tuple(value.shape)} (expected {tuple(expected.shape)})")
            continue
        out[ours] = value.detach().to(device="cpu", dtype=expected.dtype)
    if wrong:
        raise InputError(source, f"shape mismatch: {_names(wrong)}")
    return out


def load_torch_file(path: str | os.PathLike) -> Any:
    """torch.load on CPU; InputError for a missing file or anything that is not a torch checkpoint."""
    if not os.path.isfile(path):
        raise InputError(path, "no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise InputError(path, f"not a torch checkpoint ({e})") from None
    except Exception as e:  # noqa: BLE001 - zip/magic-number/EOF errors all mean "not a checkpoint"
        raise InputError(path, f"not a torch checkpoint ({type(e).__name__}: {e})") from None
    # mmcv checkpoints may carry numpy scalars or other objects in "meta" that the safe loader refuses; the user
    # named this file for conversion, so load it fully.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"not a torch checkpoint ({type(e).__name__}: {e})") from None


def convert_mmtrack_checkpoint(in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Read an mmtrack 0.14 QDTrack checkpoint and atomically write ours (model config r50_fpn). Returns out_path."""
    ckpt = load_torch_file(in_path)
    state = convert_mmtrack_state_dict(ckpt, source=in_path)
    model = QDTrack(model_config("r50_fpn"))
    model.load_state_dict(state, strict=True)
    save_checkpoint(out_path, model, extra={"converted_from": {"format": "mmtrack-0.14 QDTrack",
                                                               "path": str(in_path)}})
    return Path(out_path)


__all__ = ["convert_mmtrack_state_dict", "convert_mmtrack_checkpoint", "load_torch_file"]

"""Convert an mmtrack 0.14 QDTrack checkpoint (Faster R-CNN R50-FPN + quasi-dense embed head) to ours.

Key layout of the source (``state_dict`` of mmtrack's QDTrack):
    detector.backbone.*                            -> backbone.*               (both torchvision ResNet names)
    detector.neck.lateral_convs.{i}.conv.*         -> fpn.inner_blocks.{i}.0.*
    detector.neck.fpn_convs.{i}.conv.*             -> fpn.layer_blocks.{i}.0.*
    detector.rpn_head.rpn_conv.*                   -> rpn.conv.0.0.*
    detector.rpn_head.rpn_cls.*                    -> rpn.cls_logits.*
    detector.rpn_head.rpn_reg.*                    -> rpn.bbox_pred.*
    detector.roi_head.bbox_head.shared_fcs.{0,1}.* -> box_head.fc6.*, box_head.fc7.*
    detector.roi_head.bbox_head.fc_cls.*           -> box_head.cls_score.*     (rows [classes..., background])
    detector.roi_head.bbox_head.fc_reg.*           -> box_head.bbox_pred.*     (4 rows per class, class-major)
    track_head.embed_head.*                        -> embed_head.*
DARTH's adapted checkpoints hold the student under these names and the EMA teacher under ``teacher_detector.*`` /
``teacher_track_head.*``; ``take`` picks one (the student by default, as the authors evaluate it).
Our box head keeps mmdet's class order and regressor layout (BoxHead), so those two are copied row for row for
any number of classes (the model config's num_classes; a checkpoint of another count is a shape mismatch);
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
from darth_ray.models.config import R50_FPN, ModelConfig
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
TEACHER_PREFIX = "teacher_"  # DARTH checkpoints: teacher_detector.*, teacher_track_head.*


def _mmtrack_name(key: str) -> str:
    for ours, theirs in _PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"no mmtrack name for model key {key}")  # a model change the table was not updated for


def _template(config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict as shapes/dtypes only (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        return QDTrack(config).state_dict()


def _names(keys, n: int = 10) -> str:
    keys = sorted(map(str, keys))
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def select_network(sd: Mapping[str, Any], take: str, source: str | os.PathLike) -> Mapping[str, Any]:
    """A DARTH adapted checkpoint holds two QDTracks: the student (``detector.*``, ``track_head.*``) and the EMA
    teacher (``teacher_detector.*``, ``teacher_track_head.*``). Keep the one asked for, under QDTrack's names."""
    if take not in ("student", "teacher"):
        raise ValueError(f"take must be 'student' or 'teacher', got {take!r}")
    teacher = {k[len(TEACHER_PREFIX):]: v for k, v in sd.items() if k.startswith(TEACHER_PREFIX)}
    if not teacher:
        if take == "teacher":
            raise InputError(source, "--take teacher: this is a QDTrack checkpoint, not a DARTH one (no "
                                     "teacher_detector.* keys)")
        return sd
    return teacher if take == "teacher" else {k: v for k, v in sd.items() if not k.startswith(TEACHER_PREFIX)}


def convert_mmtrack_state_dict(sd: Mapping[str, Any], source: str | os.PathLike = "<state_dict>",
                               config: ModelConfig = R50_FPN, take: str = "student") -> dict[str, Tensor]:
    """mmtrack QDTrack or DARTH state dict (bare, or a checkpoint dict holding it under "state_dict") -> our state
    dict for `config` (r50_fpn by default). Every source key must be consumed and every model key filled with the
    right shape; otherwise an InputError naming ``source`` and the offending keys."""
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not sd:
        raise InputError(source, "no state dict found (expected a mapping of parameter names to tensors)")
    sd = select_network(sd, take, source)
    template = _template(config)
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


def convert_mmtrack_checkpoint(in_path: str | os.PathLike, out_path: str | os.PathLike, take: str = "student",
                               config: str | os.PathLike | None = None) -> Path:
    """Read an mmtrack 0.14 QDTrack or DARTH checkpoint and atomically write ours. The model is r50_fpn, or what
    the mmtrack `config` file describes (ResNet style, normalisation, classes: e.g. the pytorch-style, ImageNet-
    normalised SHIFT/BDD100K models); the checkpoint records the model config and the class list. Returns out_path."""
    model_cfg, classes = R50_FPN, ["pedestrian"]
    if config is not None:
        from darth_ray.mmconfig import model_config_from_file

        try:
            model_cfg, classes = model_config_from_file(config)
        except ValueError as e:  # a model darth_ray cannot build
            raise InputError(config, str(e)) from None
    ckpt = load_torch_file(in_path)
    state = convert_mmtrack_state_dict(ckpt, source=in_path, config=model_cfg, take=take)
    model = QDTrack(model_cfg)
    model.load_state_dict(state, strict=True)
    has_teacher = isinstance(ckpt, Mapping) and any(
        str(k).startswith(TEACHER_PREFIX) for k in (ckpt.get("state_dict", ckpt) or {}))
    kind = f"DARTH ({take})" if has_teacher else "QDTrack"
    save_checkpoint(out_path, model, extra={"classes": classes, "converted_from": {
        "format": f"mmtrack-0.14 {kind}", "path": str(in_path), "config": str(config) if config else None}})
    return Path(out_path)


__all__ = ["convert_mmtrack_state_dict", "convert_mmtrack_checkpoint", "load_torch_file"]

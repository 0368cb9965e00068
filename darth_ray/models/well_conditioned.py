"""Deterministic, well-conditioned r50_fpn weights in mmtrack 0.14's checkpoint layout, for real-scale checks
without downloading a trained model (benchmarks/gpu_check.py, the real-scale test).

Plain random init gives huge RPN deltas, so proposals cover the whole frame and RoIAlign's adaptive sampling
(sampling_ratio 0) takes minutes on a CPU. Here, as in ../shared/qdtrack-reference/make_mmtrack_ckpt.py: He-normal
fan-in weights, valid BatchNorm statistics, residual branches starting small, and small-std RPN and box
regressors, so proposals stay near their anchors and activations stay O(1) through the 16 blocks.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from darth_ray.io import atomic_torch_save
from darth_ray.models.config import R50_FPN
from darth_ray.models.convert_mmtrack import _mmtrack_name, _template

# Exact std of a few outputs whose scale sets the workload: RPN and box regressors small (proposals near anchors);
# the class logits with a +0.5/-0.5 bias (pedestrian/background) put some detections above DARTH's conf_thr 0.7.
_STDS = {"rpn.cls_logits.weight": 0.05, "rpn.bbox_pred.weight": 0.01, "box_head.cls_score.weight": 0.05,
         "box_head.bbox_pred.weight": 0.005, "embed_head.fc_embed.weight": 0.03}


def well_conditioned_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """r50_fpn weights under our names, a pure function of `seed`."""
    g = torch.Generator().manual_seed(seed)
    normal = lambda shape, std: torch.randn(shape, generator=g) * std
    state = {}
    for key, like in _template(R50_FPN).items():
        shape, leaf = tuple(like.shape), key.rsplit(".", 1)[-1]
        norm = ".bn" in key or ".downsample.1." in key or ".gn." in key
        if leaf == "num_batches_tracked":
            value = torch.zeros((), dtype=like.dtype)
        elif norm and leaf == "weight":  # residual branches (bn3) start small so 16 blocks keep activations O(1)
            value = (0.2 if ".bn3." in key else 1.0) + normal(shape, 0.05)
        elif norm and leaf in ("bias", "running_mean"):
            value = normal(shape, 0.1)
        elif leaf == "running_var":
            value = 1 + torch.rand(shape, generator=g) * 0.2
        elif key == "box_head.cls_score.bias":
            value = torch.tensor([0.5, -0.5])
        elif leaf == "bias":
            value = normal(shape, 0.01)
        elif key in _STDS:
            value = normal(shape, _STDS[key])
        else:  # He-normal on fan-in; the stem sees BGR 0..255 minus the mean (std 1)
            value = normal(shape, math.sqrt(2.0 / math.prod(shape[1:]))) / (128.0 if key == "backbone.conv1.weight"
                                                                             else 1.0)
        state[key] = value.to(like.dtype)
    return state


def write_mmtrack_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """An mmtrack 0.14 QDTrack checkpoint ({"state_dict": ...}) of these weights, for `convert-mmtrack`."""
    return atomic_torch_save({"state_dict": {_mmtrack_name(k): v for k, v in well_conditioned_state_dict(seed).items()}},
                             path)

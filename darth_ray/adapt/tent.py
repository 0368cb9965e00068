"""Tent (Wang et al., ICLR 2021) for the QDTrack detector: minimise the entropy of the class scores, training only
the normalisation layers' affine parameters.

Loss: the mean entropy of the RoI head's softmax (the classes and the background) over the student's own RPN
proposals on the plain frame (resized to config.frame_size, if set); no views, no teacher.

How it is adapted to a detector with frozen BatchNorm. Tent's BN layers normalise with the test batch's statistics
and learn their scale and shift. darth_ray's ResNet (models/backbone.py) has plain nn.BatchNorm2d layers that the
adapted student keeps frozen (eval mode, no gradients: mmdet's norm_eval, as in every detector with 1-2 images per
GPU, where batch statistics are too noisy). Here:
- the statistics are the target's, estimated once before the first step (AdaBN, adapt/bn_stats.py), and BN stays in
  eval mode with them;
- the affine weight and bias of every backbone BatchNorm (the frozen stem and first stage included) are made
  trainable; every other parameter is frozen. (The track head's GroupNorms are left alone: the class scores do not
  depend on them.)
The optimiser is DARTH's SGD with the config's lr, momentum and weight decay.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from darth_ray.adapt.method import Method


class Tent(Method):
    title = "Tent"

    @property
    def target_bn_stats(self) -> bool:
        return True

    def select_parameters(self) -> list[Tensor]:
        """The affine parameters of the backbone's BatchNorms (requires_grad set for them only)."""
        self.student.requires_grad_(False)
        params = [p for m in self.student.backbone.modules() if isinstance(m, nn.BatchNorm2d)
                  for p in (m.weight, m.bias)]
        for p in params:
            p.requires_grad_(True)
        return params

    def losses(self, frames: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        student = self.student
        frames = self.plain_frames(frames)
        sizes = [tuple(frames.shape[-2:])] * len(frames)
        feats = student.features(student.normalize(frames))
        proposals = student.proposals(feats, *student.rpn_head(feats), sizes)
        logits, _ = student.roi_head(feats, proposals)
        if len(logits) == 0:  # no proposals: a zero that keeps every BN parameter in the graph
            entropy = feats[0].sum() * 0.0
        else:
            entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean()
        return {"loss_entropy": entropy, "loss_total": entropy}

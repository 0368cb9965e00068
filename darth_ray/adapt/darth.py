"""DARTH in one step (Segu et al., ICCV 2023): a student QDTrack learns from its EMA teacher on unlabeled frames.

For a batch of target frames (first resized to config.frame_size, if set):
1. the teacher detects on the plain frames; boxes with score > conf_thr become pseudo-instances 1..N (each keeps
   its class; the RoI consistency compares all class logits, so every class adapts);
2. three views: teacher (flip/scale/crop), student (the same geometry + photometric distortion), contrastive
   (an independent flip/scale/crop/photometric);
3. losses, minimised w.r.t. the student only:
   - RPN consistency: student RPN on the student view vs teacher RPN on the teacher view, anchor by anchor;
   - RoI consistency: both RoI heads on the teacher's proposals;
   - patch contrastive: QDTrack's track losses, student view as key frame, contrastive view as reference,
     positives given by the shared pseudo-instance ids (frames without pseudo-boxes are left out);
4. SGD step on the student, then teacher = (1 - m) * teacher + m * student (lr and m follow the batch rule of
   DarthConfig.scale_to_batch).
With DarthConfig.amp the forwards run under autocast; boxes, losses and the EMA stay float32 (adapt/amp.py).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from darth_ray.adapt.amp import MixedPrecision, float32_outputs
from darth_ray.adapt.bn_stats import estimate_bn_statistics
from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.ema import ema_update, make_teacher
from darth_ray.adapt.losses import roi_consistency_loss, rpn_consistency_loss
from darth_ray.adapt.views import build_views
from darth_ray.models.qdtrack import QDTrack
from darth_ray.models.track_losses import assign_and_sample, track_losses

LOSS_NAMES = ("loss_rpn", "loss_roi", "loss_contrastive", "loss_total")


def student_from_source(source: QDTrack) -> QDTrack:
    """The DARTH student: the source weights with the stem, the first ResNet stage and every BN frozen."""
    config = dataclasses.replace(source.config, frozen_bn=True, frozen_stages=max(1, source.config.frozen_stages))
    student = QDTrack(config).to(next(source.parameters()).device)
    student.load_state_dict(source.state_dict())
    return student


class Darth:
    """Student, EMA teacher, optimiser and one adaptation step.

    `lr` and `ema_momentum` are the optimiser's lr and the teacher's per-step momentum; by default the config's,
    scaled to one process's batch (DarthConfig.scaled_lr). Data-parallel training sets them for its total batch and
    averages the student's gradients itself (hooks on `params`, as DDP does), outside this class.
    """

    def __init__(self, student: QDTrack, teacher: QDTrack, config: DarthConfig, lr: float | None = None,
                 ema_momentum: float | None = None):
        self.config = config
        self.student, self.teacher = student, teacher
        self.precision = MixedPrecision(config.amp, next(student.parameters()).device)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=config.scaled_lr() if lr is None else lr,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        self.ema_momentum = config.scaled_ema_momentum() if ema_momentum is None else ema_momentum
        # Pad views with the pixel mean so padding is zero after normalisation, as the detector pads.
        mean = self.student.config.pixel_mean
        self.fill = tuple(reversed(mean)) if self.student.config.input_bgr else tuple(mean)

    @classmethod
    def from_source(cls, source: QDTrack, config: DarthConfig, **kwargs) -> "Darth":
        """Student and teacher built from the source model (see `student_from_source`)."""
        student = float32_outputs(student_from_source(source))  # autocast forwards, float32 outputs (amp.py)
        return cls(student, make_teacher(student), config, **kwargs)

    def use_target_bn_statistics(self, batches, all_reduce_mean: Callable[[list[Tensor]], None] | None = None) -> int:
        """Before the first step: student and teacher get BatchNorm statistics estimated on the target `batches`."""
        seen = estimate_bn_statistics(self.student, batches, all_reduce_mean)
        self.teacher.load_state_dict(self.student.state_dict())  # still identical but for the new statistics
        return seen

    @torch.no_grad()
    def pseudo_detections(self, frames: Tensor) -> list[dict[str, Tensor]]:
        """Teacher detections on the plain frames with score > conf_thr: {"boxes" (x1y1x2y2, frame pixels),
        "scores", "labels"} per frame. Each keeps the class it was detected as (its score is that class's
        probability); no DARTH loss uses the class: the contrastive positives are the pseudo-instance ids."""
        sizes = [tuple(frames.shape[-2:])] * len(frames)
        feats = self.teacher.features(self.teacher.normalize(frames))
        logits, deltas = self.teacher.rpn_head(feats)
        detections = self.teacher.detect(feats, self.teacher.proposals(feats, logits, deltas, sizes), sizes)
        return [{k: v[d["scores"] > self.config.conf_thr] for k, v in d.items()} for d in detections]

    def pseudo_labels(self, frames: Tensor) -> list[Tensor]:
        """The boxes of `pseudo_detections`: pseudo-instance k of a frame is its k-th box (ids 1..N)."""
        return [d["boxes"] for d in self.pseudo_detections(frames)]

    def plain_frames(self, frames: Tensor) -> Tensor:
        """``frames`` resized to config.frame_size (w, h), ratio not kept (the authors' loader); as given if None."""
        size = self.config.frame_size
        if size is None or tuple(frames.shape[-2:]) == (size[1], size[0]):
            return frames
        return TF.resize(frames, [size[1], size[0]], antialias=False)

    def losses(self, frames: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        cfg, student, teacher = self.config, self.student, self.teacher
        frames = self.plain_frames(frames)
        views = build_views(frames, self.pseudo_labels(frames), cfg, generator, fill=self.fill,
                            model_scale=student.config.test_scale)
        b = len(frames)

        with torch.no_grad():
            t_feats = teacher.features(teacher.normalize(views.teacher, views.teacher_sizes))
            t_logits, t_deltas = teacher.rpn_head(t_feats)
            t_proposals = teacher.proposals(t_feats, t_logits, t_deltas, views.teacher_sizes)
            t_cls, t_box = teacher.roi_head(t_feats, t_proposals)

        # Student and contrastive views are separate batches, each padded to its own largest view (as the authors'
        # collate pads them): the student's canvas is the teacher's, so RPN outputs align anchor by anchor.
        s_feats = student.features(student.normalize(views.student, views.teacher_sizes))
        s_logits, s_deltas = student.rpn_head(s_feats)
        loss_rpn = rpn_consistency_loss(s_logits, s_deltas, t_logits, t_deltas)
        s_cls, s_box = student.roi_head(s_feats, t_proposals)
        loss_roi = roi_consistency_loss(s_cls, s_box, t_cls, t_box)

        # Patch contrastive: frames whose student view has pseudo-boxes (boxes are never cropped away, so the
        # contrastive view has the same ones).
        keep = [i for i in range(b) if len(views.teacher_ids[i])]
        if keep:
            c_feats = student.features(student.normalize(views.contrastive[keep],
                                                          [views.contrastive_sizes[i] for i in keep]))
            c_proposals = student.proposals(c_feats, *student.rpn_head(c_feats),
                                            [views.contrastive_sizes[i] for i in keep])
            s_proposals = student.proposals(s_feats, s_logits, s_deltas, views.teacher_sizes)
            key_samples = [assign_and_sample(s_proposals[i], views.teacher_boxes[i], views.teacher_ids[i],
                                             generator=generator) for i in keep]
            ref_samples = [assign_and_sample(c_proposals[j], views.contrastive_boxes[i], views.contrastive_ids[i],
                                             generator=generator) for j, i in enumerate(keep)]
            key_embeds = student.embed([f[keep] for f in s_feats], [s.boxes for s in key_samples])
            ref_embeds = student.embed(c_feats, [s.boxes for s in ref_samples])
            with self.precision.float32():
                track = track_losses(key_embeds, key_samples, ref_embeds, ref_samples, cfg.loss_track_weight,
                                     cfg.loss_track_aux_weight)
            loss_contrastive = track["loss_track"] + track["loss_track_aux"]
        else:
            loss_contrastive = s_feats[0].sum() * 0.0  # keeps the graph connected for DDP-style gradient sync
        total = cfg.rpn_weight * loss_rpn + cfg.roi_weight * loss_roi + cfg.contrastive_weight * loss_contrastive
        return {"loss_rpn": loss_rpn, "loss_roi": loss_roi, "loss_contrastive": loss_contrastive,
                "loss_total": total}

    def step(self, frames: Tensor, generator: torch.Generator) -> dict[str, float]:
        """One DARTH step on uint8 RGB frames [B, 3, H, W]; returns the losses as floats."""
        self.student.train()
        with self.precision.autocast():
            losses = self.losses(frames, generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(losses["loss_total"])  # gradient averaging, if any, happens in backward hooks
        self.precision.unscale(self.optimizer)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.precision.step(self.optimizer)
        ema_update(self.teacher, self.student, self.ema_momentum)
        return {k: float(v.detach()) for k, v in losses.items()}

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "grad_scaler": self.precision.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))

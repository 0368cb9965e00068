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
   DarthConfig.scale_to_batch; adapt/method.py and adapt/teacher_student.py).
With DarthConfig.amp the forwards run under autocast; boxes, losses and the EMA stay float32 (adapt/amp.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from darth_ray.adapt.losses import roi_consistency_loss, rpn_consistency_loss
from darth_ray.adapt.teacher_student import TeacherStudent
from darth_ray.adapt.views import Views, build_views
from darth_ray.models.track_losses import assign_and_sample, track_losses

LOSS_NAMES = ("loss_rpn", "loss_roi", "loss_contrastive", "loss_total")


class Darth(TeacherStudent):
    """Student, EMA teacher, optimiser and one DARTH step (the methods' interface: adapt/method.py)."""

    title = "DARTH"
    contrastive = True  # False: detection consistency only (KD, adapt/kd.py)

    def losses(self, frames: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        cfg, student, teacher = self.config, self.student, self.teacher
        frames = self.plain_frames(frames)
        views = build_views(frames, self.pseudo_labels(frames), cfg, generator, fill=self.fill,
                            model_scale=student.config.test_scale)

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
        losses = {"loss_rpn": loss_rpn, "loss_roi": loss_roi}
        total = cfg.rpn_weight * loss_rpn + cfg.roi_weight * loss_roi
        if self.contrastive:
            losses["loss_contrastive"] = self.contrastive_loss(views, s_feats, s_logits, s_deltas, generator)
            total = total + cfg.contrastive_weight * losses["loss_contrastive"]
        return {**losses, "loss_total": total}

    def contrastive_loss(self, views: Views, s_feats: list[Tensor], s_logits: list[Tensor], s_deltas: list[Tensor],
                         generator: torch.Generator) -> Tensor:
        """Patch contrastive: frames whose student view has pseudo-boxes (boxes are never cropped away, so the
        contrastive view has the same ones)."""
        student = self.student
        keep = [i for i in range(len(views.student)) if len(views.teacher_ids[i])]
        if not keep:
            return s_feats[0].sum() * 0.0  # keeps the graph connected for DDP-style gradient sync
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
            track = track_losses(key_embeds, key_samples, ref_embeds, ref_samples, self.config.loss_track_weight,
                                 self.config.loss_track_aux_weight)
        return track["loss_track"] + track["loss_track_aux"]

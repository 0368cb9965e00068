"""Mean-Teacher self-training (Tarvainen & Valpola 2017; for detection, e.g. Unbiased Teacher): the student learns
QDTrack's supervised losses on its EMA teacher's pseudo-labels, the baseline DARTH's consistency losses replace.

For a batch of target frames (first resized to config.frame_size, if set):
1. the teacher detects on the plain frames; boxes with score > conf_thr become pseudo-labels (box, class, and a
   pseudo-instance id), as in DARTH;
2. DARTH's views (adapt/views.py): the student view (flip/scale/crop + photometric distortion) is the key frame,
   the contrastive view (an independent one) the reference frame, both with the pseudo-boxes mapped into them;
3. loss_total = the supervised losses of source training (source_training.qdtrack_losses): RPN and RoI detection
   losses on the key frame, the quasi-dense track losses between key and reference frame (instances matched by
   pseudo-id);
4. SGD step on the student, then the teacher's EMA update (adapt/teacher_student.py).
A frame without pseudo-boxes is left out (no supervision pushes all its detections to background, as the authors'
loader drops frames without ground truth); a batch without any gives a zero loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from darth_ray.adapt.teacher_student import TeacherStudent
from darth_ray.adapt.views import build_views
from darth_ray.source_training import qdtrack_losses

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_track", "loss_track_aux")


class MeanTeacher(TeacherStudent):
    title = "Mean-Teacher"

    def losses(self, frames: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        frames = self.plain_frames(frames)
        detections = self.pseudo_detections(frames)
        views = build_views(frames, [d["boxes"] for d in detections], self.config, generator, fill=self.fill,
                            model_scale=self.student.config.test_scale)
        keep = [i for i in range(len(frames)) if len(views.teacher_ids[i])]
        if not keep:  # a zero every trained parameter gets a (zero) gradient from: DDP-style gradient sync waits
            zero = sum(p.sum() for p in self.params) * 0.0
            return {**{name: zero for name in LOSS_NAMES}, "loss_total": zero}

        def target(boxes: Tensor, ids: Tensor, i: int) -> dict[str, Tensor]:
            return {"boxes": boxes, "ids": ids, "labels": detections[i]["labels"][ids - 1]}

        # Key (student) and reference (contrastive) views in one batch, padded to the larger canvas.
        key, ref = views.student[keep], views.contrastive[keep]
        h, w = max(key.shape[-2], ref.shape[-2]), max(key.shape[-1], ref.shape[-1])
        images = torch.cat([F.pad(v, (0, w - v.shape[-1], 0, h - v.shape[-2])) for v in (key, ref)])
        sizes = [views.teacher_sizes[i] for i in keep] + [views.contrastive_sizes[i] for i in keep]
        targets = ([target(views.teacher_boxes[i], views.teacher_ids[i], i) for i in keep]
                   + [target(views.contrastive_boxes[i], views.contrastive_ids[i], i) for i in keep])
        losses = qdtrack_losses(self.student, images, targets, len(keep), self.config.loss_track_weight,
                                self.config.loss_track_aux_weight, image_sizes=sizes, generator=generator)
        return {**losses, "loss_total": sum(losses.values())}

"""A student and its EMA teacher (DARTH, KD, Mean-Teacher): the teacher starts as a copy of the student, labels the
plain frames with its confident detections, and follows the student after every step:
teacher = (1 - m) * teacher + m * student (m = DarthConfig.scaled_ema_momentum for the batch, see adapt/ema.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.ema import ema_update, make_teacher
from darth_ray.adapt.method import Method
from darth_ray.models.qdtrack import QDTrack


class TeacherStudent(Method):
    """`ema_momentum`: the teacher's per-step momentum; by default the config's for one process's batch."""

    def __init__(self, student: QDTrack, teacher: QDTrack, config: DarthConfig, lr: float | None = None,
                 ema_momentum: float | None = None):
        super().__init__(student, config, lr)
        self.teacher = teacher
        self.ema_momentum = config.scaled_ema_momentum() if ema_momentum is None else ema_momentum

    @classmethod
    def from_student(cls, student: QDTrack, config: DarthConfig, workers: int = 1) -> "TeacherStudent":
        """`student` and its teacher (a copy), lr and EMA momentum for `workers` processes (the batch rule)."""
        return cls(student, make_teacher(student), config, lr=config.scaled_lr(workers),
                   ema_momentum=config.scaled_ema_momentum(workers))

    def use_target_bn_statistics(self, batches, all_reduce_mean: Callable[[list[Tensor]], None] | None = None,
                                 restart: bool = True) -> int:
        """Student and teacher get BatchNorm statistics estimated on the target `batches` (see Method's)."""
        seen = super().use_target_bn_statistics(batches, all_reduce_mean, restart)
        with torch.no_grad():  # only the statistics (running mean, var, count): online, the weights differ by now
            for t, s in zip(self.teacher.modules(), self.student.modules()):  # the teacher is the student's copy
                if isinstance(t, nn.modules.batchnorm._BatchNorm):
                    for mine, theirs in zip(t.buffers(), s.buffers()):
                        mine.copy_(theirs)
        return seen

    @torch.no_grad()
    def pseudo_detections(self, frames: Tensor) -> list[dict[str, Tensor]]:
        """Teacher detections on the plain frames with score > conf_thr: {"boxes" (x1y1x2y2, frame pixels),
        "scores", "labels"} per frame. Each keeps the class it was detected as (its score is that class's
        probability)."""
        sizes = [tuple(frames.shape[-2:])] * len(frames)
        feats = self.teacher.features(self.teacher.normalize(frames))
        logits, deltas = self.teacher.rpn_head(feats)
        detections = self.teacher.detect(feats, self.teacher.proposals(feats, logits, deltas, sizes), sizes)
        return [{k: v[d["scores"] > self.config.conf_thr] for k, v in d.items()} for d in detections]

    def pseudo_labels(self, frames: Tensor) -> list[Tensor]:
        """The boxes of `pseudo_detections`: pseudo-instance k of a frame is its k-th box (ids 1..N)."""
        return [d["boxes"] for d in self.pseudo_detections(frames)]

    def after_step(self) -> None:
        ema_update(self.teacher, self.student, self.ema_momentum)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])

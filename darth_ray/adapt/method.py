"""What every test-time adaptation method is to the loop (adapt/loop.py) and the Ray Train worker: a student QDTrack
built from the source model, and one step on a batch of unlabeled target frames.

A method subclasses `Method` and defines `losses(frames, generator)` (and `select_parameters` when it trains other
parameters than the student's unfrozen ones); `step` minimises their "loss_total" with SGD. Methods with an EMA
teacher start from `TeacherStudent` (adapt/teacher_student.py). A new method is a file with its class and one line
in adapt/methods.py's METHODS; `DarthConfig.method` names it and holds its settings.
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
from darth_ray.models.qdtrack import QDTrack


def student_from_source(source: QDTrack) -> QDTrack:
    """The source weights with the stem, the first ResNet stage and every BN frozen (DARTH's student)."""
    config = dataclasses.replace(source.config, frozen_bn=True, frozen_stages=max(1, source.config.frozen_stages))
    student = QDTrack(config).to(next(source.parameters()).device)
    student.load_state_dict(source.state_dict())
    return student


class Method:
    """A student, the optimiser of the parameters the method trains (`params`; None when it trains none) and one
    adaptation step. `lr` is the optimiser's lr, by default the config's scaled to one process's batch
    (DarthConfig.scaled_lr). Data-parallel training averages the gradients of `params` itself (hooks, as DDP does).
    """

    title = "adaptation"  # how logs and tables name the method
    learns = True  # False: `step` changes nothing, so the loop loads no frames for it

    def __init__(self, student: QDTrack, config: DarthConfig, lr: float | None = None):
        self.config, self.student = config, student
        self.precision = MixedPrecision(config.amp, next(student.parameters()).device)
        self.params = self.select_parameters()
        self.optimizer = torch.optim.SGD(self.params, lr=config.scaled_lr() if lr is None else lr,
                                         momentum=config.momentum,
                                         weight_decay=config.weight_decay) if self.params else None
        # Pad views with the pixel mean so padding is zero after normalisation, as the detector pads.
        mean = self.student.config.pixel_mean
        self.fill = tuple(reversed(mean)) if self.student.config.input_bgr else tuple(mean)

    @classmethod
    def from_source(cls, source: QDTrack, config: DarthConfig, workers: int = 1) -> "Method":
        """The method on one of `workers` data-parallel processes (see `student_from_source`)."""
        student = float32_outputs(student_from_source(source))  # autocast forwards, float32 outputs (amp.py)
        if config.channels_last:  # before the teacher is copied from it: both NHWC
            student = student.to(memory_format=torch.channels_last)
        return cls.from_student(student, config, workers)

    @classmethod
    def from_student(cls, student: QDTrack, config: DarthConfig, workers: int = 1) -> "Method":
        """`student` adapted on one of `workers` processes: lr follows the batch rule."""
        return cls(student, config, lr=config.scaled_lr(workers))

    @property
    def model_to_evaluate(self) -> QDTrack:
        """The network that tracks the target after (and during) adaptation."""
        return self.student

    @property
    def target_bn_stats(self) -> bool:
        """Whether the loop estimates target BatchNorm statistics before the first step: DarthConfig.target_bn_stats,
        unless the method fixes it (source never, adabn and tent always)."""
        return self.config.target_bn_stats

    def select_parameters(self) -> list[Tensor]:
        """The parameters this method trains: the student's unfrozen ones."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def use_target_bn_statistics(self, batches, all_reduce_mean: Callable[[list[Tensor]], None] | None = None,
                                 restart: bool = True) -> int:
        """Before the first step: the student's BatchNorm statistics estimated on the target `batches` (online: before
        every step, on the frames streamed so far, `restart` at the first; see `estimate_bn_statistics`)."""
        return estimate_bn_statistics(self.student, batches, all_reduce_mean, restart)

    def plain_frames(self, frames: Tensor) -> Tensor:
        """``frames`` resized to config.frame_size (w, h), ratio not kept (the authors' loader); as given if None."""
        size = self.config.frame_size
        if size is None or tuple(frames.shape[-2:]) == (size[1], size[0]):
            return frames
        return TF.resize(frames, [size[1], size[0]], antialias=False)

    def losses(self, frames: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The method's losses on uint8 RGB frames [B, 3, H, W], "loss_total" the one minimised."""
        raise NotImplementedError

    def step(self, frames: Tensor, generator: torch.Generator) -> dict[str, float]:
        """One step on uint8 RGB frames [B, 3, H, W]; returns the losses as floats."""
        self.student.train()
        with self.precision.autocast():
            losses = self.losses(frames, generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(losses["loss_total"])  # gradient averaging, if any, happens in backward hooks
        self.precision.unscale(self.optimizer)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.precision.step(self.optimizer)
        self.after_step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def after_step(self) -> None:
        """After every optimiser step (the EMA teacher's update)."""

    def state_dict(self) -> dict:
        state = {"student": self.student.state_dict(), "grad_scaler": self.precision.state_dict()}
        return {**state, "optimizer": self.optimizer.state_dict()} if self.optimizer else state

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))

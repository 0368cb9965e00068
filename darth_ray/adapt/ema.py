"""The DARTH teacher: an exponential moving average of the student (the student's frozen parts are set by its
model config, see `darth.student_from_source`).

teacher = (1 - m) * teacher + m * student after every step (m = 0.002 for the published 16 frames per step; DARTH
passes DarthConfig.scaled_ema_momentum for its batch), for parameters and floating-point buffers (BatchNorm running
mean/var); integer buffers (num_batches_tracked) are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the student in eval mode, with no parameter requiring gradients."""
    teacher = copy.deepcopy(_unwrap(student))
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: teacher = (1 - momentum) * teacher + momentum * student. ``student`` may be wrapped in DDP."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teacher_params, student_params = _paired(teacher.named_parameters(), _unwrap(student).named_parameters())
    teacher_buffers, student_buffers = _paired(teacher.named_buffers(), _unwrap(student).named_buffers())
    floating = [i for i, b in enumerate(teacher_buffers) if b.is_floating_point()]
    integer = [i for i, b in enumerate(teacher_buffers) if not b.is_floating_point()]
    # lerp_(t, s, m) = t + m * (s - t) = (1 - m) * t + m * s, one fused kernel per tensor group.
    torch._foreach_lerp_(teacher_params + [teacher_buffers[i] for i in floating],
                         student_params + [student_buffers[i] for i in floating], momentum)
    for i in integer:
        teacher_buffers[i].copy_(student_buffers[i])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def _paired(teacher_named, student_named) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    teacher, student = dict(teacher_named), dict(student_named)
    if teacher.keys() != student.keys():
        raise ValueError(f"teacher and student differ: {sorted(teacher.keys() ^ student.keys())[:5]}")
    return list(teacher.values()), [student[name] for name in teacher]

"""DARTH's detection consistency losses between student (student view) and teacher (teacher view) outputs.

Normalisation follows the authors' code (mattiasegu/darth, ``darth/models/losses/distillation.py``):
- RPN: squared errors of the objectness logits summed over all FPN levels, plus squared errors of the box deltas
  summed where ``teacher_logit - student_logit > delta_mask_margin`` (all 4 deltas of that anchor), both divided by
  the total number of logits (anchors x images, all levels together).
- RoI: class logits mean-centred over the class axis; (sum of squared logit errors + sum of squared delta errors)
  divided by the number of logit entries N * C.
Loss weights are applied by the caller. Teacher tensors are detached here: they never receive gradients.
"""
from __future__ import annotations

from torch import Tensor


def rpn_consistency_loss(
    student_logits: list[Tensor],
    student_deltas: list[Tensor],
    teacher_logits: list[Tensor],
    teacher_deltas: list[Tensor],
    delta_mask_margin: float = 0.1,
) -> Tensor:
    """Per FPN level: logits [B, A, h, w], deltas [B, 4A, h, w] with anchor-major channels (a * 4 + k), as
    torchvision's and mmdet's RPN heads produce them."""
    if not (len(student_logits) == len(student_deltas) == len(teacher_logits) == len(teacher_deltas)):
        raise ValueError("student/teacher logits/deltas must have one tensor per FPN level each")
    logit_error = student_logits[0].new_zeros(())
    delta_error = student_logits[0].new_zeros(())
    num_logits = 0
    for s_logit, s_delta, t_logit, t_delta in zip(student_logits, student_deltas, teacher_logits, teacher_deltas):
        t_logit, t_delta = t_logit.detach(), t_delta.detach()
        if s_logit.shape != t_logit.shape or s_delta.shape != t_delta.shape:
            raise ValueError(f"student {tuple(s_logit.shape)}/{tuple(s_delta.shape)} and teacher "
                             f"{tuple(t_logit.shape)}/{tuple(t_delta.shape)} outputs differ in shape")
        logit_error = logit_error + (s_logit - t_logit).square().sum()
        # Regress only where the teacher is more confident than the student by a margin.
        confident = (t_logit - s_logit.detach()) > delta_mask_margin
        mask = confident.repeat_interleave(4, dim=1)
        delta_error = delta_error + ((s_delta - t_delta).square() * mask).sum()
        num_logits += s_logit.numel()
    if num_logits == 0:  # no anchors: a zero that still belongs to the student's graph
        return sum(s.sum() for s in student_logits + student_deltas) * 0.0
    return (logit_error + delta_error) / num_logits


def roi_consistency_loss(student_cls: Tensor, student_deltas: Tensor, teacher_cls: Tensor,
                         teacher_deltas: Tensor) -> Tensor:
    """Class logits [N, C + 1] (C classes and the background) and class-specific box deltas [N, 4C] of both RoI
    heads on the same proposals; every class's logits and deltas count."""
    teacher_cls, teacher_deltas = teacher_cls.detach(), teacher_deltas.detach()
    if student_cls.shape != teacher_cls.shape or student_deltas.shape != teacher_deltas.shape:
        raise ValueError(f"student {tuple(student_cls.shape)}/{tuple(student_deltas.shape)} and teacher "
                         f"{tuple(teacher_cls.shape)}/{tuple(teacher_deltas.shape)} outputs differ in shape")
    if student_cls.numel() == 0:  # no proposals: a zero that still belongs to the student's graph
        return (student_cls.sum() + student_deltas.sum()) * 0.0
    # Softmax is invariant to a per-row constant: compare logits up to that constant.
    student_centred = student_cls - student_cls.mean(dim=1, keepdim=True)
    teacher_centred = teacher_cls - teacher_cls.mean(dim=1, keepdim=True)
    logit_error = (student_centred - teacher_centred).square().sum()
    delta_error = (student_deltas - teacher_deltas).square().sum()
    return (logit_error + delta_error) / student_cls.numel()

"""QDTrack's quasi-dense association training: proposal sampling and the two track losses.

Follows mmtrack 0.14's QDTrack ``train_cfg`` and losses:
- assignment: mmdet ``MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.5, min_pos_iou=0.5,
  match_low_quality=False)``;
- sampling: ``CombinedSampler(num=256, pos_fraction=0.5, neg_pos_ub=3, add_gt_as_proposals=True)``
  with ``InstanceBalancedPosSampler`` positives and ``RandomSampler`` negatives;
- ``MultiPosCrossEntropyLoss`` on dot products (weight 0.25) and ``L2Loss`` with margins and hard
  negative mining on cosine similarities (weight 1.0).

DARTH reuses ``track_losses`` as its patch contrastive loss (key = student view, reference =
contrastive view, instance ids = pseudo-label ids).
"""

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from darth_ray.boxes import box_iou

# The weights of the two track losses in the authors' QDTrack configs (embed_head.loss_track / loss_track_aux).
LOSS_TRACK_WEIGHT = 0.25
LOSS_TRACK_AUX_WEIGHT = 1.0

# mmdet's weight_reduce_loss divides by (avg_factor + eps) so an all-zero weight gives 0, not NaN.
_AVG_EPS = torch.finfo(torch.float32).eps


class SampledBoxes(NamedTuple):
    """Boxes sampled for the track head of one image. Positives come first (mmdet's order)."""

    boxes: Tensor  # [S, 4] x1y1x2y2
    ids: Tensor  # [S] int64 instance id of the matched ground truth, 0 for negatives
    is_pos: Tensor  # [S] bool


def _random_subset(inds: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    """``num`` elements of ``inds`` chosen uniformly without replacement."""
    if inds.numel() <= num:
        return inds
    perm = torch.randperm(inds.numel(), generator=generator)[:num].to(inds.device)
    return inds[perm]


def _instance_balanced_positives(
    gt_inds: Tensor, num_expected: int, generator: torch.Generator | None
) -> Tensor:
    """mmdet ``InstanceBalancedPosSampler``: up to round(num/num_gts)+1 per instance, then random
    top-up from the remaining positives (or random cut) to reach exactly ``num_expected``."""
    pos_inds = torch.nonzero(gt_inds > 0).flatten()
    if pos_inds.numel() <= num_expected:
        return pos_inds
    unique_gts = gt_inds[pos_inds].unique()
    num_per_gt = int(round(num_expected / float(len(unique_gts))) + 1)
    sampled = torch.cat(
        [_random_subset(torch.nonzero(gt_inds == g).flatten(), num_per_gt, generator) for g in unique_gts]
    )
    if sampled.numel() < num_expected:
        # mmdet intends "positives not sampled yet" here (its set() of 0-d tensors compares by
        # identity, so it can re-draw already sampled ones); we take the intended set difference.
        remaining = pos_inds[~torch.isin(pos_inds, sampled)]
        sampled = torch.cat([sampled, _random_subset(remaining, num_expected - sampled.numel(), generator)])
    elif sampled.numel() > num_expected:
        sampled = _random_subset(sampled, num_expected, generator)
    return sampled


def assign_and_sample(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_ids: Tensor,
    num: int = 256,
    pos_fraction: float = 0.5,
    pos_iou: float = 0.7,
    neg_iou: float = 0.5,
    neg_pos_ub: float = 3,
    add_gt_as_proposals: bool = True,
    generator: torch.Generator | None = None,
) -> SampledBoxes:
    """Assign proposals to ground truth by max IoU and sample positives/negatives for the track head.

    Args:
        proposals: [P, 4] x1y1x2y2 proposals (detached).
        gt_boxes: [G, 4] ground-truth boxes; G may be 0 (then only negatives are sampled).
        gt_ids: [G] instance ids, all > 0 (0 is reserved for negatives).
        generator: CPU ``torch.Generator`` for reproducible random sampling.

    A proposal is positive if its best IoU >= pos_iou, negative if < neg_iou, otherwise ignored
    (no low-quality matching). Ground truths are prepended as positives when add_gt_as_proposals.
    At most ``num * pos_fraction`` positives (instance balanced) and at most
    ``neg_pos_ub * max(1, num_pos)`` negatives (and ``num - num_pos`` in total) are kept.
    """
    if proposals.dim() != 2 or proposals.shape[-1] != 4:
        raise ValueError(f"proposals must have shape [P, 4], got {list(proposals.shape)}")
    if gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must have shape [G, 4], got {list(gt_boxes.shape)}")
    if gt_ids.shape != gt_boxes.shape[:1]:
        raise ValueError(f"gt_ids must have shape [{gt_boxes.shape[0]}], got {list(gt_ids.shape)}")
    if (gt_ids <= 0).any():
        raise ValueError("gt_ids must be > 0 (0 marks negatives)")
    proposals = proposals.detach()
    gt_boxes = gt_boxes.detach().to(proposals.dtype)
    gt_ids = gt_ids.to(device=proposals.device, dtype=torch.long)
    num_gts = gt_boxes.shape[0]

    # gt_inds: 1-based index of the assigned gt, 0 negative, -1 ignored (mmdet's AssignResult).
    if num_gts == 0:
        gt_inds = torch.zeros(proposals.shape[0], dtype=torch.long, device=proposals.device)
    else:
        max_iou, argmax = box_iou(gt_boxes, proposals).max(dim=0)
        gt_inds = torch.full_like(argmax, -1)
        gt_inds[(max_iou >= 0) & (max_iou < neg_iou)] = 0
        is_pos = max_iou >= pos_iou
        gt_inds[is_pos] = argmax[is_pos] + 1

    candidates = proposals
    if add_gt_as_proposals and num_gts > 0:
        candidates = torch.cat([gt_boxes, proposals])
        gt_inds = torch.cat([torch.arange(1, num_gts + 1, device=gt_inds.device), gt_inds])

    pos_inds = _instance_balanced_positives(gt_inds, int(num * pos_fraction), generator).unique()
    num_neg = num - pos_inds.numel()
    if neg_pos_ub >= 0:
        num_neg = min(num_neg, int(neg_pos_ub * max(1, pos_inds.numel())))
    neg_inds = _random_subset(torch.nonzero(gt_inds == 0).flatten(), num_neg, generator).unique()

    pos_ids = gt_ids[gt_inds[pos_inds] - 1]
    return SampledBoxes(
        boxes=torch.cat([candidates[pos_inds], candidates[neg_inds]]),
        ids=torch.cat([pos_ids, torch.zeros_like(neg_inds)]),
        is_pos=torch.cat(
            [
                torch.ones_like(pos_inds, dtype=torch.bool),
                torch.zeros_like(neg_inds, dtype=torch.bool),
            ]
        ),
    )


def multi_pos_cross_entropy(similarity: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """mmtrack ``MultiPosCrossEntropyLoss`` (reduction mean, avg_factor = weights.sum()).

    Per row: log(1 + sum over (positive p, negative n) pairs of exp(s_n - s_p)). mmtrack builds all
    R*R pairs explicitly and takes a logsumexp padded with 0; this uses the identical factorisation
    softplus(logsumexp_n(s_n) + logsumexp_p(-s_p)), which is O(R) memory. Rows without a positive
    or without a negative have loss 0 (as in mmtrack) with finite gradients.
    """
    if similarity.shape != targets.shape or similarity.dim() != 2:
        raise ValueError(f"similarity {list(similarity.shape)} and targets {list(targets.shape)} must be equal [K, R]")
    if weights.shape != similarity.shape[:1]:
        raise ValueError(f"weights must have shape [{similarity.shape[0]}], got {list(weights.shape)}")
    pos = targets >= 1
    neg = targets == 0
    has_pair = (pos.any(dim=1) & neg.any(dim=1))[:, None]
    # -inf excludes an entry from its logsumexp; rows without pairs are fed zeros instead so their
    # (discarded) logsumexp stays finite and backward gives no NaN.
    neg_logits = similarity.masked_fill(~neg, float("-inf")).masked_fill(~has_pair, 0.0)
    pos_logits = (-similarity).masked_fill(~pos, float("-inf")).masked_fill(~has_pair, 0.0)
    row_loss = F.softplus(torch.logsumexp(neg_logits, dim=1) + torch.logsumexp(pos_logits, dim=1))
    row_loss = torch.where(has_pair[:, 0], row_loss, torch.zeros_like(row_loss))
    weights = weights.to(row_loss.dtype)
    return (row_loss * weights).sum() / (weights.sum() + _AVG_EPS)


def l2_margin_loss(
    cos_similarity: Tensor,
    targets: Tensor,
    neg_pos_ub: int = 3,
    pos_margin: float = 0.0,
    neg_margin: float = 0.1,
    hard_mining: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """mmtrack ``L2Loss`` (``update_weight`` + squared error, mean over kept entries).

    Positives are pulled to 1 and negatives to 0 after subtracting the margins and clamping to
    [0, 1]. If negatives outnumber ``neg_pos_ub`` x positives, only ``neg_pos_ub * num_pos`` of them
    are kept: the highest-cost ones with hard_mining, else a random subset. Inputs are not modified.
    """
    if cos_similarity.shape != targets.shape or cos_similarity.dim() != 2:
        raise ValueError(
            f"cos_similarity {list(cos_similarity.shape)} and targets {list(targets.shape)} must be equal [K, R]"
        )
    targets = targets.to(cos_similarity.dtype)
    pos = targets == 1
    neg = targets == 0
    pred = cos_similarity
    if pos_margin > 0:
        pred = pred - pos_margin * pos.to(pred.dtype)
    if neg_margin > 0:
        pred = pred - neg_margin * neg.to(pred.dtype)
    pred = pred.clamp(min=0, max=1)
    cost = (pred - targets) ** 2

    keep = pos | neg
    num_pos = int(pos.sum())
    num_neg = int(neg.sum())
    if neg_pos_ub > 0 and num_neg / (num_pos + 1e-6) > neg_pos_ub:
        num_keep = int(num_pos * neg_pos_ub)
        neg_flat = torch.nonzero(neg.flatten()).flatten()
        if hard_mining:
            chosen = neg_flat[cost.detach().flatten()[neg_flat].topk(num_keep).indices]
        else:
            chosen = _random_subset(neg_flat, num_keep, generator)
        kept_neg = torch.zeros_like(neg.flatten())
        kept_neg[chosen] = True
        keep = pos | kept_neg.view_as(neg)
    weight = keep.to(cost.dtype)
    return (cost * weight).sum() / (weight.sum() + _AVG_EPS)


def track_losses(
    key_embeds: list[Tensor],
    key_samples: list[SampledBoxes],
    ref_embeds: list[Tensor],
    ref_samples: list[SampledBoxes],
    loss_track_weight: float = LOSS_TRACK_WEIGHT,
    loss_track_aux_weight: float = LOSS_TRACK_AUX_WEIGHT,
) -> dict[str, Tensor]:
    """QDTrack's quasi-dense track losses for a batch of (key, reference) image pairs.

    Args:
        key_embeds: per image, embeddings of either all key samples ([S_i, D], positives are
            selected here) or of the key positives only ([num_pos_i, D], in sample order).
        key_samples / ref_samples: per image, the ``assign_and_sample`` output.
        ref_embeds: per image, embeddings of all reference samples [R_i, D].

    Rows are key positives, columns all reference samples; a pair is positive when the instance
    ids are equal (and > 0). Returns ``loss_track`` (multi-positive CE on dot products, times
    ``loss_track_weight``) and ``loss_track_aux`` (margin L2 on cosine similarities, times
    ``loss_track_aux_weight``), each summed over images and divided by the number of images.
    Images without key positives or reference samples contribute 0.
    """
    num_imgs = len(key_embeds)
    if num_imgs == 0:
        raise ValueError("track_losses needs at least one image")
    if not (len(key_samples) == len(ref_embeds) == len(ref_samples) == num_imgs):
        raise ValueError(
            f"got {num_imgs} key_embeds, {len(key_samples)} key_samples, "
            f"{len(ref_embeds)} ref_embeds, {len(ref_samples)} ref_samples"
        )
    loss_ce = 0.0
    loss_l2 = 0.0
    for key_embed, key_sample, ref_embed, ref_sample in zip(key_embeds, key_samples, ref_embeds, ref_samples):
        num_samples = key_sample.is_pos.numel()
        num_pos = int(key_sample.is_pos.sum())
        if key_embed.shape[0] == num_samples:
            key_embed = key_embed[key_sample.is_pos.to(key_embed.device)]
        elif key_embed.shape[0] != num_pos:
            raise ValueError(
                f"key_embeds has {key_embed.shape[0]} rows; expected {num_samples} (all samples) "
                f"or {num_pos} (positives)"
            )
        if ref_embed.shape[0] != ref_sample.ids.numel():
            raise ValueError(f"ref_embeds has {ref_embed.shape[0]} rows for {ref_sample.ids.numel()} ref samples")
        key_ids = key_sample.ids[key_sample.is_pos].to(key_embed.device)
        ref_ids = ref_sample.ids.to(key_embed.device)
        targets = ((key_ids[:, None] == ref_ids[None, :]) & (ref_ids[None, :] > 0)).to(key_embed.dtype)
        weights = (targets.sum(dim=1) > 0).to(key_embed.dtype)

        dot = key_embed @ ref_embed.t()
        cos = F.normalize(key_embed, p=2, dim=1) @ F.normalize(ref_embed, p=2, dim=1).t()
        loss_ce = loss_ce + multi_pos_cross_entropy(dot, targets, weights)
        loss_l2 = loss_l2 + l2_margin_loss(cos, targets)
    return {
        "loss_track": loss_track_weight * loss_ce / num_imgs,
        "loss_track_aux": loss_track_aux_weight * loss_l2 / num_imgs,
    }

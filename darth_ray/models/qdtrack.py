"""QDTrack: Faster R-CNN (ResNet-FPN) detector + quasi-dense embedding head, the model DARTH adapts.

Every stage is a separate method with explicit tensors in and out, so that DARTH can compare the raw RPN and RoI
outputs of a student and a teacher, run one network's RoI head on the other's proposals, and embed arbitrary boxes.
Boxes are x1y1x2y2 in input pixel coordinates (the unpadded image); ``image_sizes`` are (height, width) per image.
"""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from darth_ray.io import InputError, atomic_torch_save, read_torch_file
from darth_ray.models.backbone import ResNetBackbone
from darth_ray.models.config import FPN_STRIDES, ROI_STRIDES, ModelConfig, model_config
from darth_ray.models.detector import (BoxHead, RoIFeatureExtractor, assign_by_iou, base_anchors, batched_nms,
                                       clip_boxes, decode_boxes, grid_anchors, sampler_labels)
from darth_ray.models.track_head import QuasiDenseEmbedHead

ImageSizes = Sequence[tuple[int, int]]


class QDTrack(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.backbone = ResNetBackbone(c.depth, c.caffe_style, c.frozen_stages, c.frozen_bn)
        self.fpn = FeaturePyramidNetwork(self.backbone.out_channels, c.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.rpn = RPNHead(c.fpn_channels, c.num_anchors)
        self.roi_extractor = RoIFeatureExtractor(ROI_STRIDES, c.roi_output_size, c.roi_sampling_ratio, c.roi_aligned,
                                                 c.roi_finest_scale)
        self.box_head = BoxHead(c.fpn_channels, c.roi_output_size, c.box_head_dim, c.num_classes)
        self.embed_head = QuasiDenseEmbedHead(
            in_channels=c.fpn_channels, num_convs=c.embed_num_convs, conv_channels=c.embed_conv_channels,
            fc_dim=c.embed_fc_dim, embed_dim=c.embed_dim, roi_size=c.roi_output_size, gn_groups=c.embed_gn_groups)
        # Normalisation constants live in the config, not in the state dict.
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.rpn_sampler = det_utils.BalancedPositiveNegativeSampler(c.rpn_batch_size_per_image,
                                                                     c.rpn_positive_fraction)
        self.box_sampler = det_utils.BalancedPositiveNegativeSampler(c.box_batch_size_per_image,
                                                                     c.box_positive_fraction)
        # Encoding (training targets) matches mmdet's bbox2delta with weights = 1 / stds; decoding does not, see
        # detector.decode_boxes.
        self.rpn_box_coder = det_utils.BoxCoder(tuple(1.0 / s for s in c.rpn_box_stds))
        self.box_box_coder = det_utils.BoxCoder(tuple(1.0 / s for s in c.box_stds))

    # ------------------------------------------------------------------------------------------------ stages
    def normalize(self, images: Tensor, image_sizes: ImageSizes | None = None) -> Tensor:
        """RGB images [B,3,H,W] (uint8 or float, 0..255) -> network input: channel order of the config, minus
        mean, over std, zero-padded right/bottom to a multiple of size_divisor. With ``image_sizes``, pixels beyond
        each image's own size are zeroed as well (batches padded by a data loader)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = images.to(self.pixel_mean.dtype)
        if self.config.input_bgr:
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        if image_sizes is not None:
            for i, (h, w) in enumerate(image_sizes):
                x[i, :, h:, :] = 0
                x[i, :, :, w:] = 0
        d = self.config.size_divisor
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % d, (-width) % d
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        return x

    def features(self, x: Tensor) -> list[Tensor]:
        """FPN outputs P2..P6 (strides 4..64, P6 = stride-2 max-pool of P5)."""
        c2, c3, c4, c5 = self.backbone(x)
        out = self.fpn(OrderedDict([("c2", c2), ("c3", c3), ("c4", c4), ("c5", c5)]))
        return list(out.values())

    def rpn_head(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw objectness logits [B, A, h, w] and box deltas [B, 4A, h, w] per level."""
        logits, deltas = self.rpn(list(feats))
        return logits, deltas

    def anchors(self, feats: Sequence[Tensor], image_size: tuple[int, int] | None = None) -> list[Tensor]:
        """Anchors per level, [h * w * A, 4], in the order of the flattened RPN outputs (mmdet order).

        Strides are fixed by the architecture (4..64), so ``image_size`` is not needed; it is accepted so callers
        can pass it without caring.
        """
        c = self.config
        out = []
        for feat, stride in zip(feats, FPN_STRIDES):
            base = base_anchors(stride, c.anchor_scales, c.anchor_ratios, c.round_anchors, device=feat.device)
            out.append(grid_anchors(base.to(feat.dtype), tuple(feat.shape[-2:]), stride))
        return out

    @torch.no_grad()
    def proposals(self, feats: Sequence[Tensor], rpn_logits: Sequence[Tensor], rpn_deltas: Sequence[Tensor],
                  image_sizes: ImageSizes, return_scores: bool = False):
        """RPN proposals per image (mmdet RPNHead.predict_by_feat): per level the top-n anchors by objectness
        -> decode -> drop boxes with width or height <= rpn_min_box_size -> NMS per level -> top-n overall.
        Returns list[Tensor[N, 4]] (no gradient), and with ``return_scores`` also their sigmoid scores."""
        c = self.config
        pre_n = c.rpn_pre_nms_top_n_train if self.training else c.rpn_pre_nms_top_n_test
        post_n = c.rpn_post_nms_top_n_train if self.training else c.rpn_post_nms_top_n_test
        level_anchors = self.anchors(feats)
        batch = rpn_logits[0].shape[0]
        boxes_out, scores_out = [], []
        for b in range(batch):
            scores, deltas, anchors, level_ids = [], [], [], []
            for lvl, (logit, delta, anc) in enumerate(zip(rpn_logits, rpn_deltas, level_anchors)):
                s = logit[b].detach().permute(1, 2, 0).reshape(-1).sigmoid()
                d = delta[b].detach().permute(1, 2, 0).reshape(-1, 4)
                if s.shape[0] > pre_n:
                    # sort, not topk: the same order as mmdet among equal (saturated) scores
                    s, order = s.sort(descending=True)
                    s, order = s[:pre_n], order[:pre_n]
                    d, anc = d[order], anc[order]
                scores.append(s)
                deltas.append(d)
                anchors.append(anc)
                level_ids.append(torch.full_like(s, lvl, dtype=torch.long))
            s, ids = torch.cat(scores), torch.cat(level_ids)
            boxes = decode_boxes(torch.cat(anchors), torch.cat(deltas), c.rpn_box_stds)
            if c.clip_border:
                boxes = clip_boxes(boxes, image_sizes[b])
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            valid = (w > c.rpn_min_box_size) & (h > c.rpn_min_box_size)
            boxes, s, ids = boxes[valid], s[valid], ids[valid]
            keep = batched_nms(boxes, s, ids, c.rpn_nms_thresh)[:post_n]
            boxes_out.append(boxes[keep])
            scores_out.append(s[keep])
        return (boxes_out, scores_out) if return_scores else boxes_out

    def roi_head(self, feats: Sequence[Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Box head on the given boxes (all images concatenated): class logits [sumN, C + 1] with columns
        (class 0, ..., class C - 1, background) as mmdet, and class-specific box deltas [sumN, 4C] relative to the
        boxes (stds box_stds), 4 columns per class."""
        roi_feats = self.roi_extractor(feats[:len(ROI_STRIDES)], proposals)
        return self.box_head(roi_feats)

    def detect(self, feats: Sequence[Tensor], proposals: list[Tensor], image_sizes: ImageSizes) -> list[dict]:
        """Final detections per image: {"boxes": [N, 4], "scores": [N], "labels": [N] (0-based class)}, sorted by
        decreasing score. mmdet's BBoxHead.get_bboxes + multiclass_nms: each proposal is decoded with each class's
        deltas; every (proposal, class) whose class probability > box_score_thresh is a candidate; NMS within each
        class; the best box_detections_per_img over all classes."""
        c = self.config
        logits, deltas = self.roi_head(feats, proposals)
        scores = F.softmax(logits, dim=-1)[:, :c.num_classes]  # the last column is the background
        rois = torch.cat(proposals) if proposals else deltas.new_zeros((0, 4))
        # Row n * C + k: proposal n decoded with class k's deltas (mmdet delta2bbox's order).
        boxes = decode_boxes(rois.repeat_interleave(c.num_classes, dim=0), deltas, c.box_stds)
        labels = torch.arange(c.num_classes, device=scores.device).repeat(len(rois))
        counts = [len(p) * c.num_classes for p in proposals]
        results = []
        for b, (img_boxes, img_scores, img_labels) in enumerate(zip(boxes.split(counts), scores.reshape(-1).split(
                counts), labels.split(counts))):
            if c.clip_border:
                img_boxes = clip_boxes(img_boxes, image_sizes[b])
            valid = img_scores > c.box_score_thresh
            img_boxes, img_scores, img_labels = img_boxes[valid], img_scores[valid], img_labels[valid]
            keep = batched_nms(img_boxes, img_scores, img_labels, c.box_nms_thresh)[:c.box_detections_per_img]
            results.append({"boxes": img_boxes[keep], "scores": img_scores[keep], "labels": img_labels[keep]})
        return results

    def embed(self, feats: Sequence[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Track-head embeddings [N_i, embed_dim] for the given boxes of each image (not normalised)."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [feats[0].new_zeros((0, self.config.embed_dim)) for _ in boxes]
        roi_feats = self.roi_extractor(feats[:len(ROI_STRIDES)], [b[:, :4].to(feats[0].dtype) for b in boxes])
        return list(self.embed_head(roi_feats).split(counts))

    def forward(self, images: Tensor, image_sizes: ImageSizes | None = None) -> list[dict]:
        """Detections for RGB images [B,3,H,W] 0..255: normalize -> features -> RPN -> proposals -> detect."""
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        feats = self.features(self.normalize(images, image_sizes))
        logits, deltas = self.rpn_head(feats)
        return self.detect(feats, self.proposals(feats, logits, deltas, image_sizes), image_sizes)

    # ----------------------------------------------------------------------------------------------- losses
    def detection_losses(self, feats: Sequence[Tensor], rpn_logits: Sequence[Tensor], rpn_deltas: Sequence[Tensor],
                         proposals: list[Tensor], targets: list[dict], image_sizes: ImageSizes) -> dict[str, Tensor]:
        """Supervised Faster R-CNN losses (mmdet names): loss_rpn_cls (BCE), loss_rpn_bbox (smooth L1), loss_cls
        (CE over the classes + background), loss_bbox (L1, class-specific). ``targets[i]``: "boxes" [M, 4] and,
        for a multi-class model, "labels" [M] (0-based). RPN: anchors assigned at IoU 0.7 / 0.3 (+ best anchor
        of each gt), a balanced sample per image; RoI: proposals plus the ground truth, assigned at 0.5, a balanced
        sample per image. Each loss is averaged over the sampled anchors / RoIs of the batch."""
        c = self.config
        batch = rpn_logits[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        gt_boxes, gt_labels = [], []
        for i, t in enumerate(targets):
            g = torch.as_tensor(t["boxes"], dtype=feats[0].dtype, device=feats[0].device)
            if g.dim() != 2 or g.shape[1] != 4:
                raise ValueError(f"targets[{i}]['boxes'] must be [M, 4], got {tuple(g.shape)}")
            gt_boxes.append(g)
            gt_labels.append(_target_labels(t, i, len(g), c.num_classes, g.device))

        # RPN
        anchors = torch.cat(self.anchors(feats))
        logits = torch.cat([l.permute(0, 2, 3, 1).reshape(batch, -1) for l in rpn_logits], dim=1)
        deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in rpn_deltas], dim=1)
        matched = [assign_by_iou(box_iou(g, anchors), c.rpn_fg_iou_thresh, c.rpn_bg_iou_thresh, c.rpn_min_pos_iou,
                                 match_low_quality=True) for g in gt_boxes]
        pos_masks, neg_masks = self.rpn_sampler([sampler_labels(m) for m in matched])
        cls_logits, cls_labels, reg_pred, reg_target = [], [], [], []
        for b in range(batch):
            pos, neg = pos_masks[b].bool(), neg_masks[b].bool()
            sampled = pos | neg
            cls_logits.append(logits[b][sampled])
            cls_labels.append(pos[sampled].to(logits.dtype))
            reg_pred.append(deltas[b][pos])
            reg_target.append(self.rpn_box_coder.encode_single(gt_boxes[b][matched[b][pos]], anchors[pos]))
        num_rpn = max(sum(len(x) for x in cls_labels), 1)
        loss_rpn_cls = F.binary_cross_entropy_with_logits(torch.cat(cls_logits), torch.cat(cls_labels),
                                                          reduction="sum") / num_rpn
        loss_rpn_bbox = _regression_loss(torch.cat(reg_pred), torch.cat(reg_target), c.rpn_smooth_l1_beta) / num_rpn

        # RoI head: the ground truth joins the proposals so that every gt has positives from the start.
        candidates = [torch.cat([g, p.detach().to(g.dtype)]) for g, p in zip(gt_boxes, proposals)]
        matched = [assign_by_iou(box_iou(g, p), c.box_fg_iou_thresh, c.box_bg_iou_thresh, c.box_fg_iou_thresh,
                                 match_low_quality=False) for g, p in zip(gt_boxes, candidates)]
        pos_masks, neg_masks = self.box_sampler([sampler_labels(m) for m in matched])
        rois, cls_targets, reg_targets, is_pos = [], [], [], []
        for b in range(batch):
            pos, neg = pos_masks[b].bool(), neg_masks[b].bool()
            idx = (pos | neg).nonzero().view(-1)
            p = pos[idx]
            rois.append(candidates[b][idx])
            # A positive's target is its gt's class, a negative's the background column (the last, as mmdet).
            target = torch.full_like(idx, c.num_classes)
            target[p] = gt_labels[b][matched[b][idx[p]]]
            cls_targets.append(target)
            reg_targets.append(self.box_box_coder.encode_single(gt_boxes[b][matched[b][idx[p]]], candidates[b][idx[p]]))
            is_pos.append(p)
        class_logits, box_deltas = self.roi_head(feats, rois)
        is_pos_all = torch.cat(is_pos)
        num_roi = class_logits.shape[0]
        if num_roi == 0:
            zero = class_logits.sum() + box_deltas.sum()
            return {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": zero, "loss_bbox": zero}
        cls_targets = torch.cat(cls_targets)
        loss_cls = F.cross_entropy(class_logits, cls_targets)
        # Class-specific regression: each positive is regressed by the deltas of its gt's class only.
        pos_deltas = box_deltas.view(num_roi, c.num_classes, 4)[is_pos_all, cls_targets[is_pos_all]]
        loss_bbox = F.l1_loss(pos_deltas, torch.cat(reg_targets), reduction="sum") / num_roi
        return {"loss_rpn_cls": loss_rpn_cls, "loss_rpn_bbox": loss_rpn_bbox, "loss_cls": loss_cls,
                "loss_bbox": loss_bbox}


def _target_labels(target: dict, i: int, num_boxes: int, num_classes: int, device: torch.device) -> Tensor:
    """targets[i]["labels"]: the 0-based class of each box; without it every box is class 0 (one-class data)."""
    if "labels" not in target:
        return torch.zeros(num_boxes, dtype=torch.long, device=device)
    labels = torch.as_tensor(target["labels"], dtype=torch.long, device=device).reshape(-1)
    if len(labels) != num_boxes:
        raise ValueError(f"targets[{i}] has {num_boxes} boxes but {len(labels)} labels")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(f"targets[{i}]['labels'] must be 0-based classes in 0..{num_classes - 1}, got "
                         f"{sorted(set(labels.tolist()))}")
    return labels


def _regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    if beta > 0:
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    return F.l1_loss(pred, target, reduction="sum")


# --------------------------------------------------------------------------------------------- construction
def build_model(name_or_config: str | ModelConfig) -> QDTrack:
    """A randomly initialised QDTrack from a config name (``r50_fpn``, ``small``) or a ModelConfig."""
    if isinstance(name_or_config, str):
        return QDTrack(model_config(name_or_config))
    if isinstance(name_or_config, ModelConfig):
        return QDTrack(name_or_config)
    raise TypeError(f"build_model takes a config name or a ModelConfig, got {type(name_or_config).__name__}")


def save_checkpoint(path: str | os.PathLike, model: QDTrack, extra: dict | None = None) -> Path:
    """Atomically write {"model_config": asdict(config), "model": state_dict, **extra}; returns the path."""
    extra = dict(extra or {})
    clash = {"model_config", "model"} & set(extra)
    if clash:
        raise ValueError(f"extra may not contain {sorted(clash)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"model_config": dataclasses.asdict(model.config), "model": state, **extra}, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[QDTrack, dict]:
    """Load a checkpoint written by save_checkpoint; returns (model in eval mode, the extra entries)."""
    ckpt = read_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        hint = ""
        if isinstance(ckpt, dict) and ("state_dict" in ckpt or any(str(k).startswith("detector.") for k in ckpt)):
            hint = "; it looks like an mmtrack checkpoint: convert it with `darth-ray convert-mmtrack`"
        raise InputError(path, "not a darth_ray checkpoint (expected keys 'model_config' and 'model')" + hint)
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise InputError(path, f"bad model_config: {e}") from None
    model = QDTrack(config)
    if not isinstance(ckpt["model"], dict):
        raise InputError(path, "'model' is not a state dict")
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(expected[k].shape)})" for k, v in ckpt["model"].items()
             if k in expected and torch.is_tensor(v) and v.shape != expected[k].shape]
    if wrong:
        raise InputError(path, f"weights do not fit model config {config.name!r}: shape mismatch {_some(wrong)}")
    result = model.load_state_dict(ckpt["model"], strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing keys {_some(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {_some(result.unexpected_keys)}")
    if problems:
        raise InputError(path, f"weights do not fit model config {config.name!r}: " + "; ".join(problems))
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k not in ("model_config", "model")}


def _some(keys: Sequence[str], n: int = 8) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


__all__ = ["QDTrack", "build_model", "save_checkpoint", "load_checkpoint"]

"""Every architectural knob of the QDTrack detector + track head, in one frozen dataclass.

Two named configurations:
- ``r50_fpn``: MMDetection's QDTrack (``qdtrack_faster-rcnn_r50_fpn_4e_base``, the model DARTH adapts); a converted
  mmtrack 0.14 checkpoint reproduces MMDetection's outputs with it.
- ``small``: a CPU-friendly ResNet-18 FPN for the synthetic benchmark (frames ~320x192 to 480x288, people ~12-60 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from darth_ray.io import dataclass_from_dict

# FPN levels P2..P6 and their strides are fixed by the architecture (P6 = max-pool of P5).
FPN_STRIDES = (4, 8, 16, 32, 64)
# RoI features (box head and track head) come from P2..P5.
ROI_STRIDES = (4, 8, 16, 32)
RESNET_DEPTHS = (18, 34, 50, 101)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "r50_fpn"

    # Backbone: torchvision ResNet; caffe style puts the stride on the 1x1 conv of each stage's first bottleneck.
    depth: int = 50
    caffe_style: bool = True
    frozen_stages: int = 1  # -1: nothing frozen, 0: stem, k: stem + layer1..layer{k} (mmdet semantics)
    frozen_bn: bool = True  # BN uses stored statistics, affine not trained (mmdet requires_grad=False, norm_eval)

    # Input normalisation, given in the network's channel order (BGR if input_bgr).
    input_bgr: bool = True
    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_divisor: int = 32
    # Evaluation resizes each frame to fit this (w, h) keeping its ratio (mmdet's test pipeline; 1920x1080 ->
    # 1088x612); DARTH's views use it too unless DarthConfig.img_scale is set. None = the native frame.
    test_scale: tuple[int, int] | None = (1088, 1088)

    fpn_channels: int = 256

    # Anchors (mmdet AnchorGenerator): base size = level stride, sizes = stride * scale, ratio = h / w.
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    round_anchors: bool = False  # torchvision rounds base anchors, mmdet does not
    clip_border: bool = False  # clip decoded boxes to the image (mmdet clip_border) in both box coders

    # RPN
    rpn_pre_nms_top_n_train: int = 2000  # per level
    rpn_post_nms_top_n_train: int = 1000  # per image
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_min_box_size: float = 0.0  # proposals need width and height > this
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_min_pos_iou: float = 0.3  # low-quality matches (best anchor of a gt) need at least this IoU
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_box_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    rpn_smooth_l1_beta: float = 1.0 / 9.0  # 0 means plain L1

    # RoI feature extraction (mmcv RoIAlign + mmdet SingleRoIExtractor level mapping)
    roi_output_size: int = 7
    roi_sampling_ratio: int = 0  # 0 = adaptive
    roi_aligned: bool = True
    roi_finest_scale: float = 56.0

    # Box head (Shared2FCBBoxHead)
    box_head_dim: int = 1024
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    num_classes: int = 1  # foreground classes; labels are 0-based indices into the dataset's class names

    # Track (embedding) head: QuasiDenseEmbedHead
    embed_num_convs: int = 4
    embed_conv_channels: int = 256
    embed_fc_dim: int = 1024
    embed_dim: int = 256
    embed_gn_groups: int = 32

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError(f"invalid ModelConfig {self.name!r}: " + "; ".join(problems))

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of dataclasses.asdict (e.g. from a checkpoint); unknown fields raise ValueError. A checkpoint
        written before test_scale existed gets its named configuration's (a `small` one keeps the native frame)."""
        if "test_scale" not in d and d.get("name") in _CONFIGS:
            d = {**d, "test_scale": _CONFIGS[d["name"]].test_scale}
        return dataclass_from_dict(cls, d)


def _problems(c: ModelConfig) -> list[str]:
    p = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            p.append(message)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    def fraction(v: Any) -> bool:
        return number(v) and 0.0 <= v <= 1.0

    check(c.depth in RESNET_DEPTHS, f"depth must be one of {RESNET_DEPTHS}, got {c.depth!r}")
    check(not (c.caffe_style and c.depth in (18, 34)),
          f"caffe_style only changes bottleneck ResNets (depth 50/101), got depth {c.depth}")
    check(isinstance(c.frozen_stages, int) and -1 <= c.frozen_stages <= 4,
          f"frozen_stages must be an int in -1..4, got {c.frozen_stages!r}")
    for name in ("pixel_mean", "pixel_std"):
        v = getattr(c, name)
        check(isinstance(v, tuple) and len(v) == 3 and all(number(x) for x in v),
              f"{name} must be 3 finite numbers, got {v!r}")
    check(isinstance(c.pixel_std, tuple) and all(number(x) and x > 0 for x in c.pixel_std),
          f"pixel_std must be positive, got {c.pixel_std!r}")
    check(positive_int(c.size_divisor), f"size_divisor must be a positive int, got {c.size_divisor!r}")
    check(c.test_scale is None or (isinstance(c.test_scale, tuple) and len(c.test_scale) == 2
                                   and all(positive_int(x) for x in c.test_scale)),
          f"test_scale must be None or (w, h) of positive ints, got {c.test_scale!r}")
    check(positive_int(c.fpn_channels), f"fpn_channels must be a positive int, got {c.fpn_channels!r}")
    for name in ("anchor_scales", "anchor_ratios"):
        v = getattr(c, name)
        check(isinstance(v, tuple) and len(v) > 0 and all(number(x) and x > 0 for x in v),
              f"{name} must be a non-empty tuple of positive numbers, got {v!r}")
    for name in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                 "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                 "box_detections_per_img", "roi_output_size", "box_head_dim", "embed_conv_channels",
                 "embed_fc_dim", "embed_dim", "embed_gn_groups"):
        v = getattr(c, name)
        check(positive_int(v), f"{name} must be a positive int, got {v!r}")
    for name in ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_min_pos_iou",
                 "box_fg_iou_thresh", "box_bg_iou_thresh", "box_score_thresh", "box_nms_thresh"):
        v = getattr(c, name)
        check(fraction(v), f"{name} must be in [0, 1], got {v!r}")
    for name in ("rpn_positive_fraction", "box_positive_fraction"):
        v = getattr(c, name)
        check(fraction(v) and v > 0, f"{name} must be in (0, 1], got {v!r}")
    if fraction(c.rpn_bg_iou_thresh) and fraction(c.rpn_fg_iou_thresh):
        check(c.rpn_bg_iou_thresh <= c.rpn_fg_iou_thresh,
              f"rpn_bg_iou_thresh ({c.rpn_bg_iou_thresh}) must not exceed rpn_fg_iou_thresh ({c.rpn_fg_iou_thresh})")
    if fraction(c.box_bg_iou_thresh) and fraction(c.box_fg_iou_thresh):
        check(c.box_bg_iou_thresh <= c.box_fg_iou_thresh,
              f"box_bg_iou_thresh ({c.box_bg_iou_thresh}) must not exceed box_fg_iou_thresh ({c.box_fg_iou_thresh})")
    check(number(c.rpn_min_box_size) and c.rpn_min_box_size >= 0,
          f"rpn_min_box_size must be >= 0, got {c.rpn_min_box_size!r}")
    check(number(c.rpn_smooth_l1_beta) and c.rpn_smooth_l1_beta >= 0,
          f"rpn_smooth_l1_beta must be >= 0, got {c.rpn_smooth_l1_beta!r}")
    for name in ("rpn_box_stds", "box_stds"):
        v = getattr(c, name)
        check(isinstance(v, tuple) and len(v) == 4 and all(number(x) and x > 0 for x in v),
              f"{name} must be 4 positive numbers, got {v!r}")
    check(isinstance(c.roi_sampling_ratio, int) and c.roi_sampling_ratio >= 0,
          f"roi_sampling_ratio must be an int >= 0, got {c.roi_sampling_ratio!r}")
    check(number(c.roi_finest_scale) and c.roi_finest_scale > 0,
          f"roi_finest_scale must be positive, got {c.roi_finest_scale!r}")
    check(positive_int(c.num_classes), f"num_classes must be a positive int, got {c.num_classes!r}")
    check(isinstance(c.embed_num_convs, int) and c.embed_num_convs >= 0,
          f"embed_num_convs must be an int >= 0, got {c.embed_num_convs!r}")
    if positive_int(c.embed_conv_channels) and positive_int(c.embed_gn_groups):
        check(c.embed_conv_channels % c.embed_gn_groups == 0,
              f"embed_conv_channels ({c.embed_conv_channels}) must be divisible by embed_gn_groups "
              f"({c.embed_gn_groups})")
    return p


R50_FPN = ModelConfig()

SMALL = ModelConfig(
    name="small",
    depth=18,
    caffe_style=False,
    frozen_stages=-1,  # trained from scratch on the synthetic benchmark
    frozen_bn=False,  # BN learns its statistics in source training; DARTH freezes it via dataclasses.replace
    input_bgr=False,
    pixel_mean=(123.675, 116.28, 103.53),
    pixel_std=(58.395, 57.12, 57.375),
    test_scale=None,  # trains, adapts and evaluates at the embedded benchmark's native 320x192
    fpn_channels=64,
    # Sizes 12/24/48/96/192, tall ratios: a person 12-60 px tall (w ~0.4 h) has a best anchor with IoU ~0.35-0.5
    # wherever it sits on the grid (mmdet's scale 8 gives 0.05-0.3 below 30 px); low-quality matching does the rest.
    anchor_scales=(3.0,),
    anchor_ratios=(1.0, 2.0, 3.0),
    rpn_pre_nms_top_n_train=1000,
    rpn_post_nms_top_n_train=500,
    rpn_pre_nms_top_n_test=500,
    rpn_post_nms_top_n_test=300,
    box_head_dim=256,
    box_batch_size_per_image=128,
    embed_num_convs=2,
    embed_conv_channels=64,
    embed_fc_dim=256,
    embed_dim=128,
    embed_gn_groups=16,
)

_CONFIGS = {"r50_fpn": R50_FPN, "small": SMALL}


def model_config(name: str) -> ModelConfig:
    """The named configuration: ``r50_fpn`` or ``small``."""
    try:
        return _CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose from {', '.join(_CONFIGS)}") from None

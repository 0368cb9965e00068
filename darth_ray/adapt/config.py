"""Every DARTH knob (what Ray Tune searches), the adaptation method and the loop's settings, in one frozen
dataclass.

Defaults are the published configuration (mattiasegu/darth,
``configs/adapters/darth/darth_qdtrack_faster_rcnn_r50_fpn_4e_base.py`` and mmtrack's ``SeqPhotoMetricDistortion``;
the 12e configs add a linear lr warm-up and steps at epochs 8 and 11, expressible with the same fields).
``aug_strength`` scales every augmentation range at once: 0 = no augmentation (the plain resized frame), 1 = the
published ranges, 2 = twice as wide.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from darth_ray.adapt.amp import AMP_MODES
from darth_ray.data.photometric import PhotometricRanges
from darth_ray.io import dataclass_from_dict
from darth_ray.models.track_losses import LOSS_TRACK_AUX_WEIGHT, LOSS_TRACK_WEIGHT

PUBLISHED_PHOTOMETRIC = PhotometricRanges()
# "mmtrack": the published float BGR/HSV distortion; "affine": a fast uint8 approximation (a deliberate difference).
PHOTOMETRIC_IMPLS = ("mmtrack", "affine")
PROTOCOLS = ("offline", "online")
RESETS = ("episodic", "continual")

MAX_AUG_STRENGTH = 2.0
# Smallest img_scale side: the detector pads its input to a multiple of 32 (size_divisor, the backbone's C5 stride), so
# a smaller view would be mostly padding, with less than one cell of the deepest feature map (7x7 -> 32x32).
MIN_IMG_SCALE = 32


@dataclass(frozen=True, kw_only=True)
class AugmentationRanges(PhotometricRanges):
    """The view augmentation ranges after scaling by ``aug_strength`` (what ``build_views`` samples from)."""

    scale_range: tuple[float, float]  # ratio_range of the keep-ratio resize to img_scale
    flip_prob: float


@dataclass(frozen=True)
class DarthConfig:
    # The test-time adaptation method (darth_ray/adapt/methods.py: source, adabn, tent, mean_teacher, kd, darth);
    # the fields below are its settings, each method reading those it uses.
    method: str = "darth"
    # How the target is seen (one of PROTOCOLS; README "Protocols"): "offline" adapts for `epochs` epochs over the
    # shuffled target frames, then tracks with the adapted model (adapt/loop.py); "online" streams each sequence once
    # in frame order, tracking every batch before adapting on it (adapt/online.py), with `reset` (one of RESETS):
    # "episodic" restarts the method from the source model at every sequence, "continual" carries it on.
    protocol: str = "offline"
    reset: str | None = None  # online only, and required there
    # View augmentation (DARTH.md "Teacher view" / "Student view" / "Contrastive view").
    aug_strength: float = 1.0
    scale_range: tuple[float, float] = (0.8, 1.2)
    flip_prob: float = 0.5
    photometric_prob: float = PUBLISHED_PHOTOMETRIC.photometric_prob
    brightness_delta: float = PUBLISHED_PHOTOMETRIC.brightness_delta
    contrast_range: tuple[float, float] = PUBLISHED_PHOTOMETRIC.contrast_range
    saturation_range: tuple[float, float] = PUBLISHED_PHOTOMETRIC.saturation_range
    hue_delta: float = PUBLISHED_PHOTOMETRIC.hue_delta
    channel_swap_prob: float = PUBLISHED_PHOTOMETRIC.channel_swap_prob
    photometric_impl: str = "mmtrack"  # one of PHOTOMETRIC_IMPLS
    # Views are resized to fit img_scale (w, h) keeping the ratio (x scale_range, mmdet's ratio_range) and cropped
    # to at most img_scale; None = the model's own scale (ModelConfig.test_scale; the frame size if that is None).
    img_scale: tuple[int, int] | None = None
    # The plain frame is first resized to frame_size (w, h), ignoring its ratio, before pseudo-labels and views
    # (1920x1080 in the authors' pedestrian target configs); None = as loaded.
    frame_size: tuple[int, int] | None = None

    # Losses: total = rpn_weight * rpn + roi_weight * roi + contrastive_weight * track losses.
    rpn_weight: float = 0.1
    roi_weight: float = 0.1
    contrastive_weight: float = 1.0
    # The two QDTrack track losses inside the contrastive loss (the track head's loss_track, loss_track_aux).
    loss_track_weight: float = LOSS_TRACK_WEIGHT
    loss_track_aux_weight: float = LOSS_TRACK_AUX_WEIGHT
    # Teacher = (1 - m) * teacher + m * student after every step; 0 = a frozen teacher (the paper's ablation).
    # Given for base_batch_size frames per step, like lr (see scale_to_batch).
    ema_momentum: float = 0.002
    # Teacher detections scoring above this become pseudo-boxes.
    conf_thr: float = 0.7

    # Re-estimate every BatchNorm's running statistics on the target frames before adapting (AdaBN; BN stays frozen
    # while adapting, as published). For models whose BN statistics were learned on the source domain.
    target_bn_stats: bool = False

    # Optimiser and schedule (SGD; lr x lr_gamma at each epoch in lr_steps; mmcv's linear warm-up over the first
    # warmup_iters steps, from lr x warmup_ratio).
    # lr and ema_momentum are the published ones for a total batch of base_batch_size frames (8 GPUs x 2). With
    # scale_to_batch, a real total batch B = frames_per_batch x workers keeps the per-frame behaviour:
    # lr x B / base_batch_size and m' = 1 - (1 - m) ** (B / base_batch_size); without, both are used as given.
    lr: float = 0.002
    base_batch_size: int = 16
    scale_to_batch: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 35.0  # max L2 norm of all gradients; None = no clipping
    epochs: int = 4
    lr_steps: tuple[int, ...] = (3,)
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_ratio: float = 0.1  # mmcv's default; the 12e configs use 0.001
    frames_per_batch: int = 2
    seed: int = 0
    # Mixed precision of the forwards (darth_ray/adapt/amp.py): off (float32), bf16 (CUDA or CPU) or fp16 (CUDA,
    # with a gradient scaler). Off by default: the published float32 results on every device; bf16 on GPUs.
    amp: str = "off"
    # The student and teacher in channels_last memory format (convolutions on NHWC; tensor-core GPUs often run them
    # faster, CPUs often slower): a speed option, the numbers stay the same up to float rounding. gpu_check.py
    # measures whether it helps on a GPU.
    channels_last: bool = False

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError("invalid DarthConfig: " + "; ".join(problems))

    def effective_ranges(self) -> AugmentationRanges:
        """Ranges scaled by aug_strength. Intervals shrink/grow around the identity (1 for factors, 0 for deltas);
        probabilities of flip and channel swap grow with strength up to the published value, never beyond it
        (a flip that always happens adds no diversity)."""
        k = self.aug_strength

        def around_one(r: tuple[float, float]) -> tuple[float, float]:
            return (max(0.0, 1.0 + (r[0] - 1.0) * k), 1.0 + (r[1] - 1.0) * k)

        return AugmentationRanges(
            scale_range=around_one(self.scale_range),
            flip_prob=self.flip_prob * min(k, 1.0),
            photometric_prob=self.photometric_prob,
            brightness_delta=min(self.brightness_delta * k, 255.0),
            contrast_range=around_one(self.contrast_range),
            saturation_range=around_one(self.saturation_range),
            hue_delta=min(self.hue_delta * k, 180.0),
            channel_swap_prob=self.channel_swap_prob * min(k, 1.0),
        )

    def batch_ratio(self, workers: int = 1) -> float:
        """Total frames per step (frames_per_batch x workers) over base_batch_size; 1 without scale_to_batch."""
        return self.frames_per_batch * workers / self.base_batch_size if self.scale_to_batch else 1.0

    def scaled_lr(self, workers: int = 1) -> float:
        """The optimiser's lr for `workers` data-parallel workers of frames_per_batch frames each."""
        return self.lr * self.batch_ratio(workers)

    def scaled_ema_momentum(self, workers: int = 1) -> float:
        """The teacher's EMA momentum per step: one step of B frames moves the teacher as far as B / base_batch_size
        steps of the published batch."""
        ratio = self.batch_ratio(workers)
        return self.ema_momentum if ratio == 1 else 1.0 - (1.0 - self.ema_momentum) ** ratio  # m exactly as given

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """lr multiplier at 0-based `step`: mmcv's step policy (by epoch) times its linear warm-up (by iteration)."""
        factor = self.lr_gamma ** sum(step // steps_per_epoch >= e for e in self.lr_steps)
        if step < self.warmup_iters:
            factor *= 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return factor

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DarthConfig":
        """Build from a plain dict (Ray Tune's config); unknown keys raise ValueError."""
        if "target_size" in d:  # a field of older versions, with other semantics: not mapped silently
            raise ValueError("target_size was replaced by img_scale: views now resize to fit img_scale (w, h) "
                             "keeping the ratio and crop to at most it, and are padded to the batch maximum")
        return dataclass_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _problems(c: DarthConfig) -> list[str]:
    p: list[str] = []

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def in_range(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
        v = getattr(c, name)
        ok = number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            p.append(f"{name} must be in {interval}, got {v!r}")

    def interval(name: str, lo: float, lo_open: bool) -> bool:
        v = getattr(c, name)
        ok = (isinstance(v, tuple) and len(v) == 2 and all(number(x) for x in v)
              and (v[0] > lo if lo_open else v[0] >= lo) and v[0] <= v[1])
        if not ok:
            p.append(f"{name} must be a pair (low, high) with {lo} {'<' if lo_open else '<='} low <= high, got {v!r}")
        return ok

    in_range("aug_strength", 0.0, MAX_AUG_STRENGTH)
    if interval("scale_range", 0.0, lo_open=True) and number(c.aug_strength):
        low = 1.0 + (c.scale_range[0] - 1.0) * c.aug_strength
        if low <= 0:
            p.append(f"scale_range {c.scale_range!r} scaled by aug_strength {c.aug_strength} has low {low:g} <= 0")
    interval("contrast_range", 0.0, lo_open=False)
    interval("saturation_range", 0.0, lo_open=False)
    in_range("flip_prob", 0.0, 1.0)
    in_range("photometric_prob", 0.0, 1.0)
    in_range("channel_swap_prob", 0.0, 1.0)
    in_range("brightness_delta", 0.0, 255.0)
    in_range("hue_delta", 0.0, 180.0)
    for name, low in (("img_scale", MIN_IMG_SCALE), ("frame_size", 1)):
        size = getattr(c, name)
        if size is not None and not (isinstance(size, tuple) and len(size) == 2
                                     and all(integer(x) and x >= low for x in size)):
            p.append(f"{name} must be None or (w, h) of ints >= {low}, got {size!r}")
    from darth_ray.adapt.methods import METHODS  # here, not at the top: the methods import this module

    if c.method not in METHODS:
        p.append(f"method must be one of {', '.join(METHODS)}, got {c.method!r}")
    if c.protocol not in PROTOCOLS:
        p.append(f"protocol must be one of {', '.join(PROTOCOLS)}, got {c.protocol!r}")
    elif c.protocol == "online" and c.reset not in RESETS:
        p.append(f"the online protocol needs reset {' or '.join(RESETS)}, got {c.reset!r}")
    elif c.protocol == "offline" and c.reset is not None:
        p.append(f"reset {c.reset!r} applies to the online protocol only (offline adapts on every sequence at once)")
    if c.amp not in AMP_MODES:
        p.append(f"amp must be one of {', '.join(AMP_MODES)}, got {c.amp!r}")
    if c.photometric_impl not in PHOTOMETRIC_IMPLS:
        p.append(f"photometric_impl must be one of {', '.join(PHOTOMETRIC_IMPLS)}, got {c.photometric_impl!r}")

    for name in ("rpn_weight", "roi_weight", "contrastive_weight", "loss_track_weight", "loss_track_aux_weight"):
        in_range(name, 0.0, math.inf, hi_open=True)
    in_range("ema_momentum", 0.0, 1.0)
    in_range("conf_thr", 0.0, 1.0)

    in_range("lr", 0.0, math.inf, lo_open=True, hi_open=True)
    in_range("momentum", 0.0, 1.0, hi_open=True)
    in_range("weight_decay", 0.0, math.inf, hi_open=True)
    if c.grad_clip is not None:
        in_range("grad_clip", 0.0, math.inf, lo_open=True, hi_open=True)
    if not (integer(c.epochs) and c.epochs >= 1):
        p.append(f"epochs must be an int >= 1, got {c.epochs!r}")
    steps = c.lr_steps
    if not (isinstance(steps, tuple) and all(integer(s) and s >= 1 for s in steps)
            and all(a < b for a, b in zip(steps, steps[1:]))):
        p.append(f"lr_steps must be a tuple of increasing ints >= 1 (epochs), got {steps!r}")
    in_range("lr_gamma", 0.0, 1.0, lo_open=True)
    if not (integer(c.warmup_iters) and c.warmup_iters >= 0):
        p.append(f"warmup_iters must be an int >= 0, got {c.warmup_iters!r}")
    in_range("warmup_ratio", 0.0, 1.0, lo_open=True)
    if not (integer(c.base_batch_size) and c.base_batch_size >= 1):
        p.append(f"base_batch_size must be an int >= 1, got {c.base_batch_size!r}")
    if not (integer(c.frames_per_batch) and c.frames_per_batch >= 1):
        p.append(f"frames_per_batch must be an int >= 1, got {c.frames_per_batch!r}")
    for name in ("target_bn_stats", "scale_to_batch", "channels_last"):
        if not isinstance(getattr(c, name), bool):
            p.append(f"{name} must be true or false, got {getattr(c, name)!r}")
    if not (integer(c.seed) and c.seed >= 0):
        p.append(f"seed must be an int >= 0, got {c.seed!r}")
    return p


# `--help` of every DarthConfig field: what it changes, its range, and the published value (the default unless
# said otherwise). tests/test_adapt_config.py checks that every field has one.
FIELD_HELP = {
    "method": "the test-time adaptation method: source (no update), adabn (target BN statistics), tent (entropy of "
              "the class scores, BN affine trained), mean_teacher (supervised losses on the EMA teacher's "
              "pseudo-labels), kd (DARTH without the contrastive loss), darth",
    "protocol": "offline: epochs over the target frames, then tracking; online: every sequence streams once in "
                "frame order, each batch tracked before one adaptation step on it (its tracks are the results)",
    "reset": "online only: episodic restarts from the source model at every sequence, continual carries over "
             "(in the dataset's order)",
    "aug_strength": "scales every view augmentation range at once: 0 = the plain resized frame, 1 = the published "
                    "ranges, 2 = twice as wide; range 0-2",
    "scale_range": "random rescale of the views around img_scale (mmdet ratio_range); pair low <= high, low > 0",
    "flip_prob": "probability of a horizontal flip of the teacher and contrastive views; 0-1",
    "photometric_prob": "probability of each photometric distortion (brightness, contrast, saturation, hue) of the "
                        "student and contrastive views; 0-1",
    "brightness_delta": "largest brightness shift, in 0-255 pixel units; 0-255",
    "contrast_range": "contrast factor range; pair 0 <= low <= high",
    "saturation_range": "HSV saturation factor range; pair 0 <= low <= high",
    "hue_delta": "largest HSV hue shift in degrees; 0-180",
    "channel_swap_prob": "probability of a random colour channel permutation; 0-1",
    "photometric_impl": "mmtrack: the published float BGR/HSV distortion; affine: a faster uint8 approximation (a "
                        "deliberate difference)",
    "img_scale": "views resize to fit W H keeping the ratio, then crop to at most W H; unset: the model's test "
                 "scale (published 1088 1088 for r50_fpn)",
    "frame_size": "the plain frame is first resized to W H ignoring its ratio, before pseudo-labels and views "
                  "(published 1920 1080 for the pedestrian targets); unset: as loaded",
    "rpn_weight": "weight of the RPN consistency loss (student vs teacher objectness and deltas); >= 0",
    "roi_weight": "weight of the RoI-head consistency loss (class logits and deltas on the teacher's proposals); >= 0",
    "contrastive_weight": "weight of the patch contrastive loss (QDTrack's track losses between the student and "
                          "contrastive views; 0 = the KD ablation); >= 0",
    "loss_track_weight": "weight of the multi-positive cross-entropy inside the contrastive loss; >= 0",
    "loss_track_aux_weight": "weight of the L2 auxiliary track loss inside the contrastive loss; >= 0",
    "ema_momentum": "the student's weight in the teacher's EMA after every step (0 = a frozen teacher), for a batch "
                    "of base-batch-size frames (see scale-to-batch); 0-1",
    "conf_thr": "teacher detections scoring above it become pseudo-boxes (higher: fewer, cleaner); 0-1",
    "target_bn_stats": "re-estimate every BatchNorm's statistics on the target frames first (AdaBN); published: "
                       "false (mmdet's R50 keeps ImageNet's)",
    "lr": "SGD learning rate for a batch of base-batch-size frames (see scale-to-batch); > 0",
    "base_batch_size": "the total batch lr and ema-momentum were set for (8 GPUs x 2 frames); >= 1",
    "scale_to_batch": "keep the per-frame behaviour for the real batch B = frames-per-batch x workers: lr x "
                      "B/base, m' = 1 - (1 - m)^(B/base)",
    "momentum": "SGD momentum; 0 <= m < 1",
    "weight_decay": "SGD weight decay; >= 0",
    "grad_clip": "largest L2 norm of all gradients (unset: no clipping); > 0",
    "epochs": "passes over the target frames; >= 1 (published 4; 12 for the SHIFT/BDD100K targets)",
    "lr_steps": "epochs after which lr is multiplied by lr-gamma; increasing ints >= 1",
    "lr_gamma": "lr factor at each lr step; 0 < g <= 1",
    "warmup_iters": "steps of linear lr warm-up (published 1000 in the 12e configs); >= 0",
    "warmup_ratio": "lr factor at the first warm-up step (12e configs: 0.001); 0 < r <= 1",
    "frames_per_batch": "target frames per step per worker; >= 1",
    "seed": "seeds the frame order and the views (a run resumed from a checkpoint continues exactly)",
    "amp": "mixed precision of the forwards: off (float32, as published), bf16 (CUDA or CPU), fp16 (CUDA, with a "
           "gradient scaler); losses and EMA stay float32",
    "channels_last": "the networks in channels_last memory format (often faster convolutions on tensor-core GPUs, "
                     "slower on CPUs; results equal up to float rounding)",
}

"""Supervised QDTrack training on a labelled (source) domain: detection losses on the key frame plus the
quasi-dense track losses between key and reference frame, as mmtrack's QDTrack does.

A flat loop in the spirit of torchvision's references/detection/train.py. `last.pt` (every `checkpoint_every`
steps and at the end) holds model, optimizer, scheduler, step and RNG state; `final.pt` holds what tracking and
adaptation need (the model, its classes and training settings: half of last.pt's size). Both are written
atomically, and a rerun with the same `out`, data, split and settings resumes from `last.pt` (darth_ray/io.py's
`claim_output_dir` checks them).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from tqdm import tqdm

from darth_ray.adapt.config import AugmentationRanges
from darth_ray.adapt.views import Geometry, map_boxes, sample_geometry
from darth_ray.data.dataset import dataset_options, load_dataset
from darth_ray.data.mot import Sequence
from darth_ray.data.photometric import PhotometricRanges, apply_colour, colour_transform
from darth_ray.data.sampling import sample_frame_pairs
from darth_ray.data.sharding import frame_counts
from darth_ray.io import RESUME_FILE, claim_output_dir
from darth_ray.models.config import ModelConfig, model_config
from darth_ray.models.qdtrack import build_model, load_checkpoint, save_checkpoint
from darth_ray.models.track_losses import (LOSS_TRACK_AUX_WEIGHT, LOSS_TRACK_WEIGHT, assign_and_sample,
                                           track_losses)

log = logging.getLogger(__name__)

# What `train-source` writes in its output directory (its darth_run.json lists them).
TRAIN_SOURCE_OUTPUTS = (RESUME_FILE, "final.pt", "train_log.jsonl")


@dataclass(frozen=True)
class SourceTrainConfig:
    model: str = "small"
    epochs: int = 12
    batch_size: int = 2             # key/reference pairs per step
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    lr_drop_at: tuple[float, ...] = (0.75,)  # fractions of training where lr is multiplied by 0.1
    grad_clip: float | None = 35.0  # max L2 norm of all gradients; None = no clipping
    frame_range: int = 10
    flip_prob: float = 0.5
    # mmtrack's source pipeline: both frames of a pair resized to fit img_scale (w, h) keeping the ratio, times one
    # ratio drawn from scale_range, flipped together, each cropped to at most img_scale at its own offset; boxes are
    # never clipped. None = the native frames, uncropped.
    img_scale: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    loss_track_weight: float = LOSS_TRACK_WEIGHT  # multi-positive cross-entropy (the track head's loss_track)
    loss_track_aux_weight: float = LOSS_TRACK_AUX_WEIGHT  # margin L2 on cosine similarities (loss_track_aux)
    # mmtrack's SeqPhotoMetricDistortion (published ranges, shared by key and reference frame), each op applied
    # with this probability; 0 = off. Off by default: on the embedded benchmark's 3-epoch small model it cost 11
    # HOTA on the clean domain (28.4 vs 39.3) and left fog undetected.
    photometric_prob: float = 0.0
    checkpoint_every: int = 100
    seed: int = 0
    max_steps: int | None = None    # stop early (smoke tests); None = all epochs

    def __post_init__(self):
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight_decay", self.weight_decay >= 0, ">= 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
                  ("lr_drop_at", all(0 < f < 1 for f in self.lr_drop_at), "fractions in (0, 1)"),
                  ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
                  ("frame_range", self.frame_range >= 1, ">= 1"),
                  ("flip_prob", 0 <= self.flip_prob <= 1, "in [0, 1]"),
                  ("img_scale", self.img_scale is None or (len(self.img_scale) == 2 and min(self.img_scale) >= 32),
                   "None or (w, h), each >= 32"),
                  ("scale_range", len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1],
                   "(low, high) with 0 < low <= high"),
                  ("loss_track_weight", self.loss_track_weight >= 0, ">= 0"),
                  ("loss_track_aux_weight", self.loss_track_aux_weight >= 0, ">= 0"),
                  ("photometric_prob", 0 <= self.photometric_prob <= 1, "in [0, 1]"),
                  ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
                  ("max_steps", self.max_steps is None or self.max_steps >= 1, ">= 1 or None")]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"SourceTrainConfig.{name} must be {rule}, got {getattr(self, name)!r}")


def _load_pair_batch(seqs: dict[str, Sequence], pairs, flip: torch.Tensor, colours: list[torch.Tensor | None],
                     geometries: list[tuple[Geometry, Geometry]] | None = None):
    """Key and reference images [B, 3, H, W] (zero-padded to the largest), their sizes (h, w) and their targets
    (boxes as tensors, ids shifted to >= 1, labels 0-based).
    ``colours[i]`` is pair i's photometric distortion (a colour map for ``apply_colour``) or None;
    ``geometries[i]``: the views of pair i's key and reference frame (then ``flip`` is theirs)."""
    images, targets = [], []
    for which in (1, 2):  # key frames first, then reference frames
        for i, ((name, *frames), f, colour) in enumerate(zip(pairs, flip, colours)):
            seq, frame = seqs[name], frames[which - 1]
            img = seq.load_image(frame)
            if colour is not None:
                img = apply_colour(img, colour)
            t = seq.targets(frame)
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            target = {"ids": torch.as_tensor(t["ids"], dtype=torch.int64) + 1,
                      "labels": torch.as_tensor(t["labels"], dtype=torch.int64) - 1}
            if geometries is not None:
                geo = geometries[i][which - 1]
                boxes, keep = map_boxes(boxes, geo, tuple(img.shape[-2:]))
                img, boxes, target = _view(img, geo), boxes[keep], {k: v[keep] for k, v in target.items()}
            elif f:  # the same flip for key and reference keeps the pair consistent
                img = img.flip(-1)
                boxes = torch.stack([seq.info.width - boxes[:, 2], boxes[:, 1], seq.info.width - boxes[:, 0],
                                     boxes[:, 3]], dim=1)
            images.append(img)
            targets.append({"boxes": boxes, **target})
    sizes = [tuple(img.shape[-2:]) for img in images]
    batch = images[0].new_zeros(len(images), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for img, canvas in zip(images, batch):
        canvas[:, :img.shape[-2], :img.shape[-1]] = img
    return batch, sizes, targets


def _pair_geometries(u: list[float], frame_hw: tuple[int, int], cfg: SourceTrainConfig) -> tuple[Geometry, Geometry]:
    """A pair's key and reference views from 6 uniforms: one scale and flip (mmtrack's SeqResize and SeqRandomFlip
    with share_params), a crop each (SeqRandomCrop without)."""
    ranges = AugmentationRanges(scale_range=cfg.scale_range, flip_prob=cfg.flip_prob)
    key, ref = ([u[0], u[1], *crop] for crop in (u[2:4], u[4:6]))
    return (sample_geometry(key, frame_hw, cfg.img_scale, ranges),
            sample_geometry(ref, frame_hw, cfg.img_scale, ranges))


def _view(image: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """The view `geo` of a uint8 frame [3, H, W]: resized (bilinear without antialiasing, mmcv's imresize),
    cropped, flipped."""
    if tuple(image.shape[-2:]) != (geo.scaled_h, geo.scaled_w):
        image = TF.resize(image[None], [geo.scaled_h, geo.scaled_w], antialias=False)[0]
    image = image[:, geo.crop_y:geo.crop_y + geo.out_h, geo.crop_x:geo.crop_x + geo.out_w]
    return image.flip(-1) if geo.flip else image


def qdtrack_losses(model, images: torch.Tensor, targets: list[dict], num_pairs: int,
                   loss_track_weight: float = LOSS_TRACK_WEIGHT, loss_track_aux_weight: float = LOSS_TRACK_AUX_WEIGHT,
                   image_sizes: list[tuple[int, int]] | None = None,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """All supervised losses for `num_pairs` key frames followed by their `num_pairs` reference frames (the two
    track losses weighted as given). `image_sizes` (h, w): each image's content in a padded batch (None: all of
    it); `generator` draws the track head's proposal samples (None: the global RNG)."""
    sizes = image_sizes or [tuple(images.shape[-2:])] * len(images)
    feats = model.features(model.normalize(images, image_sizes))
    logits, deltas = model.rpn_head(feats)
    proposals = model.proposals(feats, logits, deltas, sizes)
    key = slice(0, num_pairs)
    pick = lambda xs: [x[key] for x in xs]
    losses = model.detection_losses(pick(feats), pick(logits), pick(deltas), proposals[key], targets[key],
                                    sizes[key])
    samples = [assign_and_sample(p.detach(), t["boxes"].to(p.device), t["ids"].to(p.device), generator=generator)
               for p, t in zip(proposals, targets)]
    embeds = model.embed(feats, [s.boxes for s in samples])
    losses.update(track_losses(embeds[key], samples[key], embeds[num_pairs:], samples[num_pairs:],
                               loss_track_weight, loss_track_aux_weight))
    return losses


def _lr_factor(step: int, total: int, cfg: SourceTrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    drops = sum(step >= int(f * total) for f in cfg.lr_drop_at)
    return warm * 0.1 ** drops


def _provenance(data_dir: Path, split: str | None, cfg: SourceTrainConfig, images: Path | None = None,
                classes: list[str] | None = None, class_map: dict[str, str] | None = None,
                model: ModelConfig | None = None) -> dict:
    """What a training's result depends on; how often it checkpoints changes nothing it computes. An image root,
    a class choice and a model given field by field count when given (runs without them keep the record they
    always had)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"}
    return {"data": str(Path(data_dir).resolve()), "split": split, **settings,
            **dataset_options(images, classes, class_map),
            **({"model_config": dataclasses.asdict(model)} if model else {})}


def train_source(data_dir: Path, out_dir: Path, cfg: SourceTrainConfig = SourceTrainConfig(),
                 split: str | None = None, resume: bool = True, show_progress: bool = True,
                 images: Path | None = None, classes: list[str] | None = None,
                 class_map: dict[str, str] | None = None, device: str = "cpu",
                 architecture: ModelConfig | None = None) -> Path:
    """Train on every labelled sequence of `data_dir` (any dataset `load_dataset` reads, with its `split`, `images`
    and `classes`) on `device`; returns `out_dir/final.pt`. The model gets one class per dataset class (`architecture`
    otherwise, by default cfg.model's); the checkpoint records the class names."""
    out_dir = Path(out_dir)
    sequences, class_names = load_dataset(data_dir, split, images, classes, class_map, require_images=True,
                                          require_gt=True)
    seqs = {s.name: s for s in sequences}
    counts = frame_counts(sequences)
    steps_per_epoch = max(1, sum(counts.values()) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps,
                                                                           steps_per_epoch * cfg.epochs)
    torch.manual_seed(cfg.seed)
    model = build_model(dataclasses.replace(architecture or model_config(cfg.model),
                                            num_classes=len(class_names))).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, cfg))
    generator = torch.Generator().manual_seed(cfg.seed)
    photometric = PhotometricRanges(photometric_prob=cfg.photometric_prob)
    step = 0
    last = out_dir / RESUME_FILE
    provenance = _provenance(data_dir, split, cfg, images, classes, class_map, architecture)
    if claim_output_dir(out_dir, "train-source", provenance, TRAIN_SOURCE_OUTPUTS, resume=resume,
                        defaults=_provenance(data_dir, split, SourceTrainConfig())):
        model, state = load_checkpoint(last, map_location=device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, cfg))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"])
        step = state["step"]
        log.info("resuming source training from %s at step %d/%d", last, step, total)

    def checkpoint(path: Path, resumable: bool = True) -> None:
        record = {"step": step, "train_config": dataclasses.asdict(cfg), "data": str(data_dir),
                  "classes": list(class_names)}
        if resumable:
            record.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                          rng=generator.get_state())
        save_checkpoint(path, model, record)

    metrics_file = out_dir / "train_log.jsonl"
    model.train()
    bar = tqdm(total=total, initial=step, unit="step", desc="source training", disable=not show_progress)
    pairs, pairs_epoch = None, -1
    while step < total:
        epoch, index = divmod(step, steps_per_epoch)
        if epoch != pairs_epoch:  # the pair order of an epoch depends only on (seed, epoch): resumable
            pairs, pairs_epoch = sample_frame_pairs(counts, cfg.frame_range, seed=cfg.seed + epoch), epoch
        batch = pairs[index * cfg.batch_size:(index + 1) * cfg.batch_size]
        geometries = None
        if cfg.img_scale is None:  # native frames: the random stream of runs from before the views
            flip = torch.rand(len(batch), generator=generator) < cfg.flip_prob
        else:
            draws = torch.rand(len(batch), 6, generator=generator, dtype=torch.float64)
            geometries = [_pair_geometries(u.tolist(), (seqs[name].info.height, seqs[name].info.width), cfg)
                          for (name, *_), u in zip(batch, draws)]
            flip = [key.flip for key, _ in geometries]
        colours = [None] * len(batch)
        if cfg.photometric_prob > 0:  # drawn only when on: with it off, training repeats the earlier random stream
            colours = [colour_transform(u.tolist(), photometric).float()
                       for u in torch.rand(len(batch), 12, generator=generator, dtype=torch.float64)]
        images, sizes, targets = _load_pair_batch(seqs, batch, flip, colours, geometries)
        images = images.to(device)
        t0 = time.perf_counter()
        losses = qdtrack_losses(model, images, targets, len(batch), cfg.loss_track_weight, cfg.loss_track_aux_weight,
                                sizes)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss at step {step}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 10 == 0 or step == total:
            record = {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                      "step_time": time.perf_counter() - t0, **{k: v.item() for k, v in losses.items()}}
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_every == 0 and step < total:
            checkpoint(last)
    bar.close()
    checkpoint(out_dir / "final.pt", resumable=False)
    checkpoint(last)
    log.info("source training finished: %s", out_dir / "final.pt")
    return out_dir / "final.pt"

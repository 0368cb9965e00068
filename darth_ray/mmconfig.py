"""The DARTH authors' OpenMMLab config files (mmtrack 0.14 / mmcv style), read into darth_ray's configurations.

A config file is read with OpenMMLab's own reader (``mmengine.Config``: ``_base_`` chains, ``_delete_``, key-by-key
merging) and then walked key by key. Every key either maps to a darth_ray field (``model``: ModelConfig fields plus
the class list and the test scale; ``darth``: DarthConfig; ``training``: SourceTrainConfig; ``tracker``:
QuasiDenseTracker; ``data``: the dataset files and scales), is checked against the one value darth_ray implements
(``model.detector.neck.num_outs`` must be 5), or is listed as ignored with the reason (logging, checkpoint URLs,
distributed backend). Anything else is an error naming the file and the key: a setting darth_ray cannot honour is
never dropped silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darth_ray.io import InputError

# Top-level keys that change nothing darth_ray computes, with the reason `config show` prints.
IGNORED_TOP = {
    "checkpoint_config": "checkpoint cadence: darth_ray's --checkpoint-every",
    "log_config": "logging hooks: darth_ray logs to adapt_log.jsonl and W&B",
    "dist_params": "distributed backend: Ray Train chooses gloo/nccl",
    "find_unused_parameters": "DDP option: darth_ray averages gradients itself",
    "log_level": "logging", "load_from": "checkpoint path: --source", "resume_from": "resume: --out/last.pt",
    "workflow": "runner workflow", "opencv_num_threads": "loader threads", "mp_start_method": "loader processes",
    "evaluation": "evaluation cadence and metrics: every epoch, HOTA/MOTA/IDF1", "work_dir": "output: --out",
    "gpu_ids": "devices: Ray Train", "seed": "--seed", "deterministic": "darth_ray is deterministic by design",
    "fp16": "mixed precision", "auto_resume": "darth_ray resumes from --out",
    "custom_imports": "mmcv module imports",
}
# Top-level helper variables of the authors' files: their values reach darth_ray through `model` and `data`.
VARIABLES = {"dataset_type", "data_root", "img_norm_cfg", "norm_cfg", "train_pipeline", "test_pipeline",
             "teacher_pipeline", "student_pipeline", "contrastive_pipeline", "out_pipeline"}
IGNORED_PATHS = {
    "model.init_cfg": "pretrained weights by URL: darth_ray starts from --source (see convert-mmtrack)",
    "model.detector.init_cfg": "pretrained weights by URL: darth_ray starts from --source",
    "model.detector.backbone.init_cfg": "ImageNet weights by URL: darth_ray starts from --source",
    "data.workers_per_gpu": "loader processes", "data.persistent_workers": "loader processes",
}
KNOWN_TOP = {"model", "data", "optimizer", "optimizer_config", "lr_config", "total_epochs", "custom_hooks"}
RESNET_STAGE_CHANNELS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512],
                         50: [256, 512, 1024, 2048], 101: [256, 512, 1024, 2048]}
FPN_STRIDES = [4, 8, 16, 32, 64]
ROI_STRIDES = [4, 8, 16, 32]
# What darth_ray's SeqPhotoMetricDistortion implements (mmtrack's defaults): field -> (mmtrack key, default).
PHOTOMETRIC = {"brightness_delta": ("brightness_delta", 32), "contrast_range": ("contrast_range", (0.5, 1.5)),
               "saturation_range": ("saturation_range", (0.5, 1.5)), "hue_delta": ("hue_delta", 18)}


@dataclass
class ResolvedConfig:
    """A config file in darth_ray's terms. ``kind`` is "darth" (an adapter config) or "qdtrack" (source training)."""

    path: str
    kind: str
    model: dict = field(default_factory=dict)
    darth: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    tracker: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    ignored: dict = field(default_factory=dict)  # dotted key -> why it changes nothing here

    def to_dict(self) -> dict:
        sections = {"model": self.model, "darth" if self.kind == "darth" else "training":
                    self.darth if self.kind == "darth" else self.training,
                    "tracker": self.tracker, "data": self.data}
        return json.loads(json.dumps({"config": self.path, "kind": self.kind, **sections,
                                      "ignored": self.ignored}))


class _Walker:
    """Reads values by dotted path and remembers which keys were read, so the leftovers can be reported."""

    def __init__(self, cfg: dict, path: str):
        self.cfg, self.path = cfg, path
        self.read: set[str] = set()
        self.problems: list[str] = []

    def has(self, dotted: str) -> bool:
        try:
            self._lookup(dotted)
            return True
        except KeyError:
            return False

    def _lookup(self, dotted: str) -> Any:
        node: Any = self.cfg
        for part in dotted.split("."):
            if isinstance(node, list):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(dotted)
        return node

    def get(self, dotted: str, default: Any = KeyError) -> Any:
        """The value at `dotted` (marked as read), or `default` when absent (KeyError: required)."""
        try:
            value = self._lookup(dotted)
        except KeyError:
            if default is KeyError:
                self.problems.append(f"{dotted}: missing")
            return None if default is KeyError else default
        self._mark(dotted, value)
        return value

    def _mark(self, dotted: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                self._mark(f"{dotted}.{k}", v)
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            for i, v in enumerate(value):
                self._mark(f"{dotted}.{i}", v)
        else:
            self.read.add(dotted)

    def expect(self, dotted: str, allowed: Any, default: Any = KeyError, why: str = "") -> Any:
        """Read `dotted` and require one of the values darth_ray implements."""
        value = self.get(dotted, default)
        options = allowed if isinstance(allowed, (set, frozenset)) else {_freeze(allowed)}
        if value is not None and _freeze(value) not in options:
            why = f" ({why})" if why else ""
            if isinstance(value, dict) and isinstance(allowed, dict):  # name the keys that differ
                for key in sorted(value.keys() | allowed.keys()):
                    if _freeze(value.get(key)) != _freeze(allowed.get(key)):
                        self.problems.append(f"{dotted}.{key}={value.get(key)!r}: darth_ray implements "
                                             f"{allowed.get(key)!r}{why}")
            else:
                wanted = " or ".join(repr(_thaw(o)) for o in options)
                self.problems.append(f"{dotted}={value!r}: darth_ray implements {wanted}{why}")
        return value

    def fail(self, dotted: str, message: str) -> None:
        self.problems.append(f"{dotted}: {message}")

    def leftovers(self, ignored: dict[str, str]) -> list[str]:
        out = []
        for dotted in _leaves(self.cfg):
            if dotted in self.read or any(dotted == p or dotted.startswith(p + ".") for p in ignored):
                continue
            out.append(dotted)
        return out


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _thaw(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _contains(node: Any, value: Any) -> bool:
    """Whether `value` (a dict or list) appears anywhere inside `node`."""
    if not isinstance(value, (dict, list)) or not value:
        return False
    if _freeze(node) == _freeze(value):
        return True
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return any(_contains(child, value) for child in children)


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{prefix}.{i}")]
    return [prefix]


def load_config_file(path: str | Path) -> dict:
    """The merged config as a plain dict (mmengine resolves `_base_`); a missing file or base file is an
    InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        from mmengine.config import Config
    except ImportError:  # pragma: no cover - a declared dependency
        raise InputError(path, "reading OpenMMLab config files needs mmengine (pip install mmengine)") from None
    try:
        return Config.fromfile(str(path)).to_dict()
    except FileNotFoundError as e:
        missing = Path(e.filename or str(e)).resolve() if getattr(e, "filename", None) else str(e)
        raise InputError(path, f"its _base_ chain names a file that does not exist: {missing}") from None
    except (SyntaxError, NameError, TypeError, ValueError, KeyError, AttributeError, ImportError) as e:
        raise InputError(path, f"cannot read this config file: {type(e).__name__}: {e}") from None


def read_config(path: str | Path) -> ResolvedConfig:
    """Resolve an mmtrack QDTrack (source training) or DARTH adapter config file; see the module docstring."""
    cfg = load_config_file(path)
    if "data" not in cfg:
        raise InputError(path, "has no `data` section: a base file that other configs inherit; give a config with "
                               "data (e.g. ..._4e_dancetrack.py)")
    w = _Walker(cfg, str(path))
    model_type = w.get("model.type", None)
    kinds = {"DARTHQDTrack": "darth", "QDTrack": "qdtrack"}
    if model_type not in kinds:
        raise InputError(path, f"model.type={model_type!r}: darth_ray reads QDTrack (source training) and "
                               "DARTHQDTrack (adaptation) configs")
    out = ResolvedConfig(path=str(path), kind=kinds[model_type])
    ignored = {k: v for k, v in IGNORED_TOP.items() if k in cfg}
    sections = {"model": cfg.get("model"), "data": cfg.get("data")}
    ignored.update({k: "a variable of the file; its value is read where model/data use it"
                    for k, v in cfg.items() if k in VARIABLES or (k not in KNOWN_TOP and _contains(sections, v))})
    ignored.update({k: v for k, v in IGNORED_PATHS.items() if w.has(k)})

    out.model = _model(w)
    test = _test_pipeline(w, out.model)
    out.model["test_scale"] = test["test_scale"]
    out.tracker = _tracker(w)
    out.data = _data(w, out, test)
    loss_weights = _track_loss_weights(w)
    if out.kind == "darth":
        out.darth = {**_darth(w, out.model), **loss_weights}
        out.darth.update(_schedule(w, warmup_field="warmup_iters"))
        out.darth["frames_per_batch"] = w.get("data.samples_per_gpu")
        if out.data.get("frame_size") is not None:
            out.darth["frame_size"] = out.data["frame_size"]
    else:
        out.training = {**_training(w, out), **loss_weights}
    leftovers = w.leftovers(ignored)
    problems = w.problems + [f"{k}: darth_ray does not know this key (it would be ignored)" for k in leftovers]
    if problems:
        raise InputError(path, "settings darth_ray cannot honour:\n  " + "\n  ".join(problems))
    out.ignored = dict(sorted(ignored.items()))
    return out


def _model(w: _Walker) -> dict:
    d = "model.detector"
    w.expect(f"{d}.type", "FasterRCNN")
    b = f"{d}.backbone"
    w.expect(f"{b}.type", "ResNet")
    depth = w.expect(f"{b}.depth", {18, 34, 50, 101})
    style = w.expect(f"{b}.style", {"caffe", "pytorch"}, default="pytorch")
    w.expect(f"{b}.num_stages", 4, default=4)
    w.expect(f"{b}.out_indices", [0, 1, 2, 3], default=[0, 1, 2, 3])
    w.expect(f"{b}.norm_cfg.type", "BN", default="BN")
    bn_trained = w.get(f"{b}.norm_cfg.requires_grad", True)
    norm_eval = w.get(f"{b}.norm_eval", True)
    if bool(bn_trained) == bool(norm_eval):
        w.fail(f"{b}.norm_cfg.requires_grad / norm_eval", f"{bn_trained} / {norm_eval}: darth_ray's BN is either "
               "frozen (requires_grad=False, norm_eval=True) or trained (True / False)")
    model = {"depth": depth, "caffe_style": style == "caffe", "frozen_stages": w.get(f"{b}.frozen_stages", -1),
             "frozen_bn": not bn_trained}

    n = f"{d}.neck"
    w.expect(f"{n}.type", "FPN")
    w.expect(f"{n}.in_channels", RESNET_STAGE_CHANNELS.get(depth, []))
    model["fpn_channels"] = channels = w.get(f"{n}.out_channels")
    w.expect(f"{n}.num_outs", 5, why="P2..P6, P6 = max-pool of P5")
    for key, value in (("start_level", 0), ("add_extra_convs", False), ("relu_before_extra_convs", False)):
        w.expect(f"{n}.{key}", value, default=value)

    r = f"{d}.rpn_head"
    w.expect(f"{r}.type", "RPNHead")
    w.expect(f"{r}.in_channels", channels)
    w.expect(f"{r}.feat_channels", channels)
    w.expect(f"{r}.anchor_generator.type", "AnchorGenerator")
    model["anchor_scales"] = tuple(float(s) for s in w.get(f"{r}.anchor_generator.scales"))
    model["anchor_ratios"] = tuple(float(s) for s in w.get(f"{r}.anchor_generator.ratios"))
    w.expect(f"{r}.anchor_generator.strides", FPN_STRIDES)
    clip = _coder(w, f"{r}.bbox_coder", model, "rpn_box_stds")
    w.expect(f"{r}.loss_cls", {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0})
    loss_bbox = w.get(f"{r}.loss_bbox")
    if loss_bbox == {"type": "L1Loss", "loss_weight": 1.0}:
        model["rpn_smooth_l1_beta"] = 0.0
    elif isinstance(loss_bbox, dict) and loss_bbox.get("type") == "SmoothL1Loss" \
            and loss_bbox.get("loss_weight", 1.0) == 1.0:
        model["rpn_smooth_l1_beta"] = float(loss_bbox.get("beta", 1.0))
    else:
        w.fail(f"{r}.loss_bbox", f"{loss_bbox!r}: darth_ray implements SmoothL1Loss or L1Loss with weight 1")

    h = f"{d}.roi_head"
    w.expect(f"{h}.type", "StandardRoIHead")
    _roi_extractor(w, f"{h}.bbox_roi_extractor", model, channels)
    bh = f"{h}.bbox_head"
    w.expect(f"{bh}.type", "Shared2FCBBoxHead")
    w.expect(f"{bh}.in_channels", channels)
    model["box_head_dim"] = w.get(f"{bh}.fc_out_channels")
    w.expect(f"{bh}.roi_feat_size", model["roi_output_size"])
    model["num_classes"] = w.get(f"{bh}.num_classes")
    w.expect(f"{bh}.reg_class_agnostic", False, default=False)
    if _coder(w, f"{bh}.bbox_coder", model, "box_stds") != clip:
        w.fail(f"{bh}.bbox_coder.clip_border", "must equal the RPN's (darth_ray has one clip_border)")
    model["clip_border"] = clip
    w.expect(f"{bh}.loss_cls", {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0})
    w.expect(f"{bh}.loss_bbox", {"type": "L1Loss", "loss_weight": 1.0})

    t = f"{d}.train_cfg"
    a = f"{t}.rpn.assigner"
    w.expect(f"{a}.type", "MaxIoUAssigner")
    model["rpn_fg_iou_thresh"] = w.get(f"{a}.pos_iou_thr")
    model["rpn_bg_iou_thresh"] = w.get(f"{a}.neg_iou_thr")
    model["rpn_min_pos_iou"] = w.get(f"{a}.min_pos_iou")
    w.expect(f"{a}.match_low_quality", True)
    w.expect(f"{a}.ignore_iof_thr", -1, default=-1)
    s = f"{t}.rpn.sampler"
    w.expect(f"{s}.type", "RandomSampler")
    model["rpn_batch_size_per_image"] = w.get(f"{s}.num")
    model["rpn_positive_fraction"] = w.get(f"{s}.pos_fraction")
    w.expect(f"{s}.neg_pos_ub", -1, default=-1)
    w.expect(f"{s}.add_gt_as_proposals", False)
    for key, value in (("allowed_border", -1), ("pos_weight", -1), ("debug", False)):
        w.expect(f"{t}.rpn.{key}", value, default=value)
    p = f"{t}.rpn_proposal"
    model["rpn_pre_nms_top_n_train"] = w.get(f"{p}.nms_pre")
    model["rpn_post_nms_top_n_train"] = w.get(f"{p}.max_per_img")
    model["rpn_nms_thresh"] = w.get(f"{p}.nms.iou_threshold")
    w.expect(f"{p}.nms.type", "nms")
    model["rpn_min_box_size"] = float(w.get(f"{p}.min_bbox_size", 0))
    a = f"{t}.rcnn.assigner"
    w.expect(f"{a}.type", "MaxIoUAssigner")
    model["box_fg_iou_thresh"] = w.get(f"{a}.pos_iou_thr")
    model["box_bg_iou_thresh"] = w.get(f"{a}.neg_iou_thr")
    w.expect(f"{a}.min_pos_iou", model["box_fg_iou_thresh"], why="min_pos_iou = pos_iou_thr")
    w.expect(f"{a}.match_low_quality", False)
    w.expect(f"{a}.ignore_iof_thr", -1, default=-1)
    s = f"{t}.rcnn.sampler"
    w.expect(f"{s}.type", "RandomSampler")
    model["box_batch_size_per_image"] = w.get(f"{s}.num")
    model["box_positive_fraction"] = w.get(f"{s}.pos_fraction")
    w.expect(f"{s}.neg_pos_ub", -1, default=-1)
    w.expect(f"{s}.add_gt_as_proposals", True)
    w.expect(f"{t}.rcnn.pos_weight", -1, default=-1)
    w.expect(f"{t}.rcnn.debug", False, default=False)

    tc = f"{d}.test_cfg"
    model["rpn_pre_nms_top_n_test"] = w.get(f"{tc}.rpn.nms_pre")
    model["rpn_post_nms_top_n_test"] = w.get(f"{tc}.rpn.max_per_img")
    w.expect(f"{tc}.rpn.nms", {"type": "nms", "iou_threshold": model["rpn_nms_thresh"]},
             why="one RPN NMS threshold for training and testing")
    w.expect(f"{tc}.rpn.min_bbox_size", model["rpn_min_box_size"], default=0)
    model["box_score_thresh"] = w.get(f"{tc}.rcnn.score_thr")
    w.expect(f"{tc}.rcnn.nms.type", "nms")
    model["box_nms_thresh"] = w.get(f"{tc}.rcnn.nms.iou_threshold")
    model["box_detections_per_img"] = w.get(f"{tc}.rcnn.max_per_img")

    th = "model.track_head"
    w.expect(f"{th}.type", "QuasiDenseTrackHead")
    track_roi: dict = {}
    _roi_extractor(w, f"{th}.roi_extractor", track_roi, channels)
    if track_roi != {k: model[k] for k in track_roi}:
        w.fail(f"{th}.roi_extractor", "must equal the box head's RoI extractor (darth_ray shares one)")
    e = f"{th}.embed_head"
    w.expect(f"{e}.type", "QuasiDenseEmbedHead")
    model["embed_num_convs"] = w.get(f"{e}.num_convs")
    w.expect(f"{e}.num_fcs", 1)
    model["embed_conv_channels"] = w.get(f"{e}.conv_out_channels", 256)
    model["embed_fc_dim"] = w.get(f"{e}.fc_out_channels", 1024)
    model["embed_dim"] = w.get(f"{e}.embed_channels")
    w.expect(f"{e}.norm_cfg.type", "GN")
    model["embed_gn_groups"] = w.get(f"{e}.norm_cfg.num_groups")
    w.expect(f"{th}.loss_bbox", {"type": "L1Loss", "loss_weight": 1.0}, default={"type": "L1Loss", "loss_weight": 1.0})
    ta = f"{th}.train_cfg"
    w.expect(f"{ta}.assigner", {"type": "MaxIoUAssigner", "pos_iou_thr": 0.7, "neg_iou_thr": 0.5, "min_pos_iou": 0.5,
                                "match_low_quality": False, "ignore_iof_thr": -1})
    w.expect(f"{ta}.sampler", {"type": "CombinedSampler", "num": 256, "pos_fraction": 0.5, "neg_pos_ub": 3,
                               "add_gt_as_proposals": True, "pos_sampler": {"type": "InstanceBalancedPosSampler"},
                               "neg_sampler": {"type": "RandomSampler"}})
    return model


def _track_loss_weights(w: _Walker) -> dict:
    """The weights of the track head's two losses (training or DARTH settings); their other values are fixed."""
    e = "model.track_head.embed_head"
    w.expect(f"{e}.loss_track.type", "MultiPosCrossEntropyLoss")
    w.expect(f"{e}.loss_track_aux.type", "L2Loss")
    for key, value in (("neg_pos_ub", 3), ("pos_margin", 0), ("neg_margin", 0.1), ("hard_mining", True)):
        w.expect(f"{e}.loss_track_aux.{key}", value)
    return {"loss_track_weight": float(w.get(f"{e}.loss_track.loss_weight", 1.0)),
            "loss_track_aux_weight": float(w.get(f"{e}.loss_track_aux.loss_weight", 1.0))}


def _coder(w: _Walker, path: str, model: dict, stds_field: str) -> bool:
    w.expect(f"{path}.type", "DeltaXYWHBBoxCoder")
    w.expect(f"{path}.target_means", [0.0, 0.0, 0.0, 0.0], default=[0.0, 0.0, 0.0, 0.0])
    model[stds_field] = tuple(float(s) for s in w.get(f"{path}.target_stds"))
    return bool(w.get(f"{path}.clip_border", True))


def _roi_extractor(w: _Walker, path: str, model: dict, channels: int) -> None:
    w.expect(f"{path}.type", "SingleRoIExtractor")
    w.expect(f"{path}.roi_layer.type", "RoIAlign")
    model["roi_output_size"] = w.get(f"{path}.roi_layer.output_size")
    model["roi_sampling_ratio"] = w.get(f"{path}.roi_layer.sampling_ratio", 0)
    model["roi_aligned"] = bool(w.get(f"{path}.roi_layer.aligned", True))
    w.expect(f"{path}.out_channels", channels)
    w.expect(f"{path}.featmap_strides", ROI_STRIDES)
    model["roi_finest_scale"] = float(w.get(f"{path}.finest_scale", 56))


def _normalize(w: _Walker, path: str) -> dict:
    """A Normalize/SeqNormalize step as ModelConfig fields (mean and std in the network's channel order)."""
    to_rgb = bool(w.get(f"{path}.to_rgb", True))
    return {"input_bgr": not to_rgb, "pixel_mean": tuple(float(x) for x in w.get(f"{path}.mean")),
            "pixel_std": tuple(float(x) for x in w.get(f"{path}.std"))}


def _steps(w: _Walker, path: str) -> dict[str, tuple[int, dict]]:
    """A pipeline's steps by type (index, step); a type twice is an error."""
    pipeline = w.get(path, None) or []
    if not isinstance(pipeline, list):
        w.fail(path, "must be a list of transforms")
        return {}
    steps: dict[str, tuple[int, dict]] = {}
    for i, step in enumerate(pipeline):
        kind = step.get("type") if isinstance(step, dict) else None
        if kind in steps:
            w.fail(f"{path}.{i}", f"{kind} appears twice")
        steps[kind] = (i, step)
    return steps


def _test_pipeline(w: _Walker, model: dict) -> dict:
    """Evaluation scale and normalisation from data.test's pipeline (data.val must agree)."""
    path = "data.test.pipeline"
    steps = _steps(w, path)
    allowed = {"LoadImageFromFile", "MultiScaleFlipAug"}
    for kind, (i, _) in steps.items():
        if kind not in allowed:
            w.fail(f"{path}.{i}.type", f"{kind}: darth_ray's evaluation pipeline is load -> resize -> normalise")
    if "MultiScaleFlipAug" not in steps:
        w.fail(path, "no MultiScaleFlipAug step (darth_ray needs the test scale)")
        return {"test_scale": None}
    i = steps["MultiScaleFlipAug"][0]
    aug = f"{path}.{i}"
    scale = w.get(f"{aug}.img_scale")
    w.expect(f"{aug}.flip", False, default=False)
    inner = _steps(w, f"{aug}.transforms")
    for kind, (j, _) in inner.items():
        if kind not in {"Resize", "RandomFlip", "Normalize", "Pad", "ImageToTensor", "VideoCollect",
                        "DefaultFormatBundle", "Collect"}:
            w.fail(f"{aug}.transforms.{j}.type", f"{kind}: not part of darth_ray's evaluation pipeline")
    if "Resize" in inner:
        w.expect(f"{aug}.transforms.{inner['Resize'][0]}.keep_ratio", True)
    if "Normalize" in inner:
        model.update(_normalize(w, f"{aug}.transforms.{inner['Normalize'][0]}"))
    if "Pad" in inner:
        model["size_divisor"] = w.get(f"{aug}.transforms.{inner['Pad'][0]}.size_divisor")
    for key in ("to_float32",):
        if "LoadImageFromFile" in steps:
            w.get(f"{path}.{steps['LoadImageFromFile'][0]}.{key}", None)
    _same_as_test(w, "data.val.pipeline", "data.test.pipeline")
    return {"test_scale": tuple(scale) if scale else None}


def _same_as_test(w: _Walker, path: str, test_path: str) -> None:
    if w.has(path) and _freeze(w.get(path)) != _freeze(w.get(test_path)):
        w.fail(path, f"differs from {test_path} (darth_ray evaluates one way)")


def _tracker(w: _Walker) -> dict:
    tracker = dict(w.get("model.tracker", {}) or {})
    kind = tracker.pop("type", None)
    if kind not in ("QDTracker", "QuasiDenseTracker", "QuasiDenseEmbedTracker", None):
        w.fail("model.tracker.type", f"{kind!r}: darth_ray implements QDTrack's QuasiDenseTracker")
    known = {"init_score_thr", "obj_score_thr", "match_score_thr", "memo_tracklet_frames", "memo_backdrop_frames",
             "memo_momentum", "nms_conf_thr", "nms_backdrop_iou_thr", "nms_class_iou_thr", "with_cats",
             "match_metric"}
    for key in sorted(set(tracker) - known):
        w.fail(f"model.tracker.{key}", "not a QuasiDenseTracker setting darth_ray implements")
    return {k: v for k, v in tracker.items() if k in known}


def _dataset(w: _Walker, path: str) -> dict:
    return {"type": w.get(f"{path}.type"), "ann_file": w.get(f"{path}.ann_file"),
            "img_prefix": w.get(f"{path}.img_prefix"), "classes": list(w.get(f"{path}.classes", []) or [])}


def _data(w: _Walker, out: ResolvedConfig, test: dict) -> dict:
    """Dataset files and scales. The adaptation (or training) set is data.train; evaluation is data.test."""
    train_path = "data.train"
    train = w.get(train_path, None)
    if isinstance(train, dict) and train.get("type") == "ConcatDataset":
        w.fail(train_path, f"ConcatDataset of {len(train.get('datasets', []))}: darth_ray trains on one dataset")
        train, train_path = (train.get("datasets") or [{}])[0], "data.train.datasets.0"
    elif isinstance(train, list):
        if len(train) != 1:
            w.fail(train_path, f"{len(train)} training datasets: darth_ray trains and adapts on one")
        train_path = f"{train_path}.0"
    data = {"train": _dataset(w, train_path), "test": _dataset(w, "data.test"), "test_scale": test["test_scale"]}
    if w.has("data.val"):
        val = _dataset(w, "data.val")
        if val != data["test"]:
            w.fail("data.val", "differs from data.test (darth_ray evaluates on one set)")
    for key in ("samples_per_gpu",):
        w.get(f"data.{key}", None)
    for key in ("visibility_thr",):
        w.get(f"{train_path}.{key}", None)  # frames are kept whatever the labels say: labels are not used
    sampler = w.get(f"{train_path}.ref_img_sampler", None) or {}
    if sampler:
        w.expect(f"{train_path}.ref_img_sampler.method", "uniform", default="uniform")
        w.expect(f"{train_path}.ref_img_sampler.num_ref_imgs", 1, default=1)
        data["frame_range"] = sampler.get("frame_range")
    for key in ("key_img_sampler",):
        w.expect(f"{train_path}.{key}", {"interval": 1}, default={"interval": 1})
    for split in ("test", "val"):
        for key in ("ref_img_sampler",):
            w.expect(f"data.{split}.{key}", None, default=None)
    classes = data["test"]["classes"] or data["train"]["classes"]
    out.model["classes"] = classes
    if classes and len(classes) != out.model.get("num_classes"):
        w.fail("data.test.classes", f"{len(classes)} classes but the model has num_classes="
                                    f"{out.model.get('num_classes')}")
    data.update(_train_pipeline(w, f"{train_path}.pipeline", out.kind))
    return data


def _train_pipeline(w: _Walker, path: str, kind: str) -> dict:
    """The training (adaptation) loader's pipeline: for DARTH, the plain frame the teacher labels."""
    steps = _steps(w, path)
    found: dict = {"frame_size": None}
    formatting = {"LoadMultiImagesFromFile", "SeqLoadAnnotations", "MatchInstances", "VideoCollect",
                  "SeqDefaultFormatBundle"}
    for step_kind, (i, step) in steps.items():
        at = f"{path}.{i}"
        if step_kind in formatting:
            w.get(at)  # loading and formatting: darth_ray loads frames and boxes its own way
        elif step_kind == "SeqRandomFlip":
            found["flip_prob"] = w.get(f"{at}.flip_ratio")
            if kind == "qdtrack":
                w.expect(f"{at}.share_params", True, why="key and reference frame are flipped together")
            else:
                w.get(f"{at}.share_params", None)
        elif step_kind == "SeqResize" and kind == "darth":
            w.expect(f"{at}.keep_ratio", False, why="the plain frame is resized to a fixed size")
            found["frame_size"] = tuple(w.get(f"{at}.img_scale"))
            w.get(f"{at}.share_params", None)
            w.expect(f"{at}.bbox_clip_border", False, default=True)
        elif kind == "qdtrack" and step_kind in {"SeqResize", "SeqPhotoMetricDistortion", "SeqRandomCrop",
                                                  "SeqNormalize", "SeqPad"}:
            found.setdefault("source_pipeline", {})[step_kind] = at  # read by _source_views
        else:
            w.fail(f"{at}.type", f"{step_kind}: not in darth_ray's {'target' if kind == 'darth' else 'source'} "
                                 "frame pipeline")
    if kind == "darth" and "flip_prob" in found:
        # The authors flip the plain frame before the teacher labels it; the views flip again on their own, so
        # only the teacher's input is mirrored: darth_ray labels the unflipped frame (equivalent up to the
        # detector's left-right asymmetry).
        found["plain_frame_flip_prob"] = found.pop("flip_prob")
    return found


def _pipeline_views(w: _Walker, path: str, photometric: bool) -> dict:
    """A flip -> resize -> crop (-> photometric) view pipeline as DarthConfig fields."""
    steps = _steps(w, path)
    order = ["SeqRandomFlip", "SeqResize", "SeqRandomCrop"] + (["SeqPhotoMetricDistortion"] if photometric else [])
    if list(steps) != order:
        w.fail(path, f"steps {list(steps)}: darth_ray builds {order}")
        return {}
    flip, resize, crop = (f"{path}.{steps[k][0]}" for k in order[:3])
    view = {"flip_prob": w.get(f"{flip}.flip_ratio"),
            "img_scale": tuple(w.get(f"{resize}.img_scale")),
            "scale_range": tuple(w.get(f"{resize}.ratio_range", (1.0, 1.0)))}
    w.get(f"{flip}.share_params", None)
    w.get(f"{resize}.share_params", None)
    w.get(f"{crop}.share_params", None)
    w.expect(f"{resize}.keep_ratio", True)
    w.expect(f"{resize}.bbox_clip_border", False, why="pseudo-boxes are never clipped (mmtrack's setting)")
    w.expect(f"{crop}.bbox_clip_border", False, why="pseudo-boxes are never clipped (mmtrack's setting)")
    w.expect(f"{crop}.allow_negative_crop", True, default=False, why="a crop without pseudo-boxes is kept")
    w.expect(f"{crop}.crop_size", list(view["img_scale"]), why="darth_ray crops at most to img_scale")
    if photometric:
        view.update(_photometric(w, f"{path}.{steps['SeqPhotoMetricDistortion'][0]}"))
    return view


def _photometric(w: _Walker, path: str) -> dict:
    w.get(f"{path}.share_params", None)
    # mmtrack applies each distortion, and the channel permutation, with probability 0.5 (not configurable there)
    values: dict[str, Any] = {"photometric_prob": 0.5, "channel_swap_prob": 0.5}
    for name, (key, default) in PHOTOMETRIC.items():
        value = w.get(f"{path}.{key}", default)
        values[name] = tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)
    return values


def _darth(w: _Walker, model: dict) -> dict:
    m = "model"
    darth: dict = {"conf_thr": w.get(f"{m}.conf_thr", 0.0)}
    w.expect(f"{m}.teacher.eval_mode_teacher", True, default=True)
    w.expect(f"{m}.teacher.eval_teacher_preds", False, default=False)
    rpn = f"{m}.loss_rpn_distillation"
    w.expect(f"{rpn}.type", "RPNDistillationLoss")
    darth["rpn_weight"] = w.get(f"{rpn}.loss_weight")
    w.expect(f"{rpn}.reg_valid_threshold", 0.1, default=0.1, why="box deltas count where teacher - student > 0.1")
    roi = f"{m}.loss_roi_distillation"
    w.expect(f"{roi}.type", "ROIDistillationLoss")
    darth["roi_weight"] = w.get(f"{roi}.loss_weight")

    teacher = _pipeline_views(w, f"{m}.teacher_pipeline", photometric=False)
    contrastive = _pipeline_views(w, f"{m}.contrastive_pipeline", photometric=True)
    student = _steps(w, f"{m}.student_pipeline")
    if list(student) != ["SeqPhotoMetricDistortion"]:
        w.fail(f"{m}.student_pipeline", f"steps {list(student)}: darth_ray's student view is the teacher view + "
                                        "SeqPhotoMetricDistortion")
        student_photometric = {}
    else:
        student_photometric = _photometric(w, f"{m}.student_pipeline.0")
    geometry = {k: contrastive.get(k) for k in teacher}
    if teacher and contrastive and geometry != teacher:
        w.fail(f"{m}.contrastive_pipeline", "its flip/resize/crop differ from teacher_pipeline's (darth_ray uses one "
                                            "set of view ranges)")
    photometric = {k: contrastive.get(k) for k in student_photometric}
    if contrastive and student_photometric and photometric != student_photometric:
        w.fail(f"{m}.student_pipeline", "its SeqPhotoMetricDistortion differs from contrastive_pipeline's")
    darth.update(teacher)
    darth.update(student_photometric)

    out = _steps(w, f"{m}.out_pipeline")
    for kind, (i, _) in out.items():
        at = f"{m}.out_pipeline.{i}"
        if kind == "SeqNormalize":
            norm = _normalize(w, at)
            if any(model.get(k) != v for k, v in norm.items()):
                w.fail(at, f"normalises {norm} but the test pipeline {[model.get(k) for k in norm]} (darth_ray's "
                           "model has one input normalisation)")
        elif kind == "SeqPad":
            w.expect(f"{at}.size_divisor", model.get("size_divisor", 32))
        elif kind == "MatchInstances":
            w.expect(f"{at}.skip_nomatch", False, why="every pseudo-instance keeps its id in every view")
        elif kind == "VideoCollect":
            w.get(at)
        else:
            w.fail(f"{at}.type", f"{kind}: not in darth_ray's view formatting (normalise, pad, match)")

    hooks = w.get("custom_hooks", []) or []
    ema = [i for i, h in enumerate(hooks) if isinstance(h, dict) and h.get("type") == "EMATrainHook"]
    for i, hook in enumerate(hooks):
        if i not in ema:
            w.fail(f"custom_hooks.{i}.type", f"{hook.get('type') if isinstance(hook, dict) else hook!r}: darth_ray "
                                             "implements only EMATrainHook")
    if len(ema) != 1:
        w.fail("custom_hooks", "a DARTH config needs exactly one EMATrainHook (the teacher update)")
    else:
        at = f"custom_hooks.{ema[0]}"
        w.get(f"{at}.type")
        momentum = darth["ema_momentum"] = w.get(f"{at}.momentum", 0.0002)
        w.expect(f"{at}.interval", 1, default=1)
        warm_up = w.get(f"{at}.warm_up", 100)
        # The hook uses min(m, (1 + step) / (warm_up + step)), which is m at every step when 1 / warm_up >= m.
        if warm_up and momentum > 1.0 / warm_up:
            w.fail(f"{at}.warm_up", f"{warm_up} slows the EMA at the start (momentum {momentum} > 1/warm_up); "
                                    "darth_ray's EMA has no warm-up")
    return darth


def _schedule(w: _Walker, warmup_field: str) -> dict:
    """Optimiser, gradient clipping, epochs and lr schedule."""
    w.expect("optimizer.type", "SGD")
    schedule = {"lr": w.get("optimizer.lr"), "momentum": w.get("optimizer.momentum", 0.0),
                "weight_decay": w.get("optimizer.weight_decay", 0.0)}
    w.expect("optimizer_config.type", {"OptimizerHook", "CustomOptimizerHook"}, default="OptimizerHook")
    clip = w.get("optimizer_config.grad_clip", None)
    if clip is not None:
        w.expect("optimizer_config.grad_clip.norm_type", 2, default=2)
        schedule["grad_clip"] = float(w.get("optimizer_config.grad_clip.max_norm"))
    else:
        schedule["grad_clip"] = None
    w.expect("lr_config.policy", "step")
    steps = w.get("lr_config.step")
    schedule["lr_steps"] = tuple(steps) if isinstance(steps, (list, tuple)) else (steps,)
    schedule["lr_gamma"] = w.get("lr_config.gamma", 0.1)
    warmup = w.expect("lr_config.warmup", {"linear", None}, default=None)
    schedule[warmup_field] = w.get("lr_config.warmup_iters", 0) if warmup else 0
    if warmup:
        schedule["warmup_ratio"] = w.get("lr_config.warmup_ratio", 0.1)
    w.expect("lr_config.warmup_by_epoch", False, default=False)
    w.expect("lr_config.by_epoch", True, default=True)
    schedule["epochs"] = w.get("total_epochs")
    return schedule


def _training(w: _Walker, out: ResolvedConfig) -> dict:
    """Source training (train-source) settings of a QDTrack config."""
    schedule = _schedule(w, warmup_field="warmup_steps")
    epochs = schedule["epochs"]
    training = {"epochs": epochs, "batch_size": w.get("data.samples_per_gpu"), "lr": schedule["lr"],
                "momentum": schedule["momentum"], "weight_decay": schedule["weight_decay"],
                "warmup_steps": schedule["warmup_steps"], "grad_clip": schedule["grad_clip"],
                "lr_drop_at": tuple(s / epochs for s in schedule["lr_steps"]) if epochs else ()}
    if schedule["lr_gamma"] != 0.1:
        w.fail("lr_config.gamma", f"{schedule['lr_gamma']}: train-source multiplies lr by 0.1 at each step")
    if schedule.get("warmup_ratio") not in (None, 0.001):
        w.fail("lr_config.warmup_ratio", f"{schedule['warmup_ratio']}: train-source warms up from lr/1000")
    if out.data.get("frame_range") is not None:
        training["frame_range"] = out.data["frame_range"]
    if "flip_prob" in out.data:
        training["flip_prob"] = out.data.pop("flip_prob")
    training.update(_source_views(w, out.data.pop("source_pipeline", {}), out.model))
    return training


def _source_views(w: _Walker, steps: dict[str, str], model: dict) -> dict:
    """QDTrack's source pipeline (step type -> dotted path) as SourceTrainConfig fields: one resize for key and
    reference frame, a crop each, boxes never clipped, the model's normalisation and padding."""
    views: dict = {}
    resize, crop = steps.get("SeqResize"), steps.get("SeqRandomCrop")
    if (resize is None) != (crop is None):
        w.fail(resize or crop, "darth_ray resizes to fit img_scale and crops to at most img_scale: both steps or "
                               "neither")
    elif resize:
        views["img_scale"] = scale = tuple(w.get(f"{resize}.img_scale"))
        views["scale_range"] = tuple(w.get(f"{resize}.ratio_range", (1.0, 1.0)))
        w.expect(f"{resize}.keep_ratio", True)
        w.expect(f"{resize}.share_params", True, why="key and reference frame share one scale")
        w.expect(f"{crop}.crop_size", list(scale), why="darth_ray crops to at most img_scale")
        w.expect(f"{crop}.share_params", False, why="key and reference frame are cropped independently")
        w.expect(f"{crop}.allow_negative_crop", False, default=False)
        for at in (resize, crop):
            w.expect(f"{at}.bbox_clip_border", False, default=True, why="boxes are never clipped")
    photometric = steps.get("SeqPhotoMetricDistortion")
    if photometric:
        w.expect(f"{photometric}.share_params", True, why="key and reference frame share one distortion")
        for key, default in PHOTOMETRIC.values():
            w.expect(f"{photometric}.{key}", default, default=default, why="train-source uses mmtrack's defaults")
        views["photometric_prob"] = 0.5
    if "SeqNormalize" in steps:
        norm = _normalize(w, steps["SeqNormalize"])
        if any(model.get(k) != v for k, v in norm.items()):
            w.fail(steps["SeqNormalize"], f"normalises {norm} but the test pipeline "
                                          f"{[model.get(k) for k in norm]} (the model has one input normalisation)")
    if "SeqPad" in steps:
        w.expect(f"{steps['SeqPad']}.size_divisor", model.get("size_divisor", 32))
    return views


def model_config_from_file(path: str | Path):
    """The ModelConfig an mmtrack config file describes (r50_fpn overridden field by field), and its class list."""
    return _model_config(read_config(path))


def _model_config(resolved: ResolvedConfig):
    import dataclasses

    from darth_ray.models.config import R50_FPN, ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.model.items() if k in fields}
    config = dataclasses.replace(R50_FPN, **values)
    if config != R50_FPN:
        config = dataclasses.replace(config, name=Path(resolved.path).stem)
    return config, list(resolved.model.get("classes") or [])


def training_settings(path: str | Path) -> dict:
    """What `darth-ray train-source --config FILE` runs: the file's SourceTrainConfig fields, its model (r50_fpn
    overridden field by field) and its classes."""
    resolved = read_config(path)
    if resolved.kind != "qdtrack":
        raise InputError(path, f"is a {resolved.kind} adapter config; train-source takes a QDTrack source-training "
                               "config (e.g. qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py)")
    model, classes = _model_config(resolved)
    return {"training": resolved.training, "model": model, "classes": classes}


def darth_settings(path: str | Path, source: str | Path) -> dict:
    """What `darth-ray adapt --config FILE --source CKPT` runs: the file's DarthConfig fields, tracker values and
    classes. The file's model must be the checkpoint's (a converted mmtrack checkpoint records it): a difference
    is an error naming each field, never a silent mix of the two."""
    import dataclasses

    import torch

    from darth_ray.adapt.config import DarthConfig
    from darth_ray.models.config import ModelConfig

    resolved = read_config(path)
    if resolved.kind != "darth":
        raise InputError(path, f"is a {resolved.kind} (source training) config; adapt takes a DARTH adapter config")
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        stored = ModelConfig.from_dict(checkpoint["model_config"])
    except Exception as e:  # noqa: BLE001 - any failure means the checkpoint cannot be compared
        raise InputError(source, f"cannot read its model configuration ({type(e).__name__}: {e})") from None
    differences = [f"{name}: {resolved.model[name]!r} in the config, {getattr(stored, name)!r} in the checkpoint"
                   for name in (f.name for f in dataclasses.fields(ModelConfig)) if name != "name"
                   and name in resolved.model and _freeze(resolved.model[name]) != _freeze(getattr(stored, name))]
    stored_classes = checkpoint.get("classes")
    if stored_classes is not None and list(stored_classes) != list(resolved.model.get("classes") or []):
        differences.append(f"classes: {resolved.model.get('classes')} in the config, {stored_classes} in the "
                           "checkpoint")
    if differences:
        raise InputError(path, f"describes another model than {source}:\n  " + "\n  ".join(differences)
                         + f"\n(convert the source with `darth-ray convert-mmtrack --config` of its training config)")
    DarthConfig.from_dict(resolved.darth)  # every value the file sets is a valid DarthConfig field
    return {"darth": resolved.darth, "tracker": resolved.tracker, "classes": resolved.model.get("classes") or None}

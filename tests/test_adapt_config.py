import math

import pytest

from darth_ray.adapt.config import DarthConfig


def test_defaults_are_the_published_values():
    c = DarthConfig()
    assert c.aug_strength == 1.0
    assert c.scale_range == (0.8, 1.2)
    assert c.flip_prob == 0.5
    assert c.photometric_prob == 0.5
    assert c.brightness_delta == 32
    assert c.contrast_range == (0.5, 1.5)
    assert c.saturation_range == (0.5, 1.5)
    assert c.hue_delta == 18
    assert c.channel_swap_prob == 0.5
    assert c.img_scale is None and c.frame_size is None  # the model's own scale; frames as loaded
    assert c.photometric_impl == "mmtrack"
    assert (c.rpn_weight, c.roi_weight, c.contrastive_weight) == (0.1, 0.1, 1.0)
    assert c.ema_momentum == 0.002
    assert c.conf_thr == 0.7
    assert (c.lr, c.momentum, c.weight_decay, c.grad_clip) == (0.002, 0.9, 1e-4, 35)
    assert (c.epochs, c.lr_steps, c.lr_gamma) == (4, (3,), 0.1)
    assert c.frames_per_batch == 2
    assert c.base_batch_size == 16  # the published lr is for 8 GPUs x 2 frames
    assert c.scale_to_batch is True and c.warmup_iters == 0


def test_lr_scales_linearly_with_the_total_batch(tiny):
    assert DarthConfig().scaled_lr() == pytest.approx(0.002 * 2 / 16)
    assert DarthConfig(frames_per_batch=4).scaled_lr(workers=4) == pytest.approx(0.002)
    from darth_ray.adapt.loop import AdaptationRun
    from darth_ray.data.mot import load_sequences
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    run = AdaptationRun(tiny / "source.pt", sequences, [(sequences[0].name, 1)], DarthConfig(lr=0.004), workers=2)
    assert run.method.optimizer.param_groups[0]["lr"] == pytest.approx(0.004 * 2 * 2 / 16)
    assert run.method.ema_momentum == pytest.approx(1 - (1 - 0.002) ** (2 * 2 / 16))
    assert DarthConfig(scale_to_batch=False).scaled_lr(workers=3) == 0.002


def test_ema_momentum_keeps_the_per_frame_rate_of_the_published_batch():
    # 2 frames per step: 8 steps move the teacher as far as one published step of 16 frames
    m = DarthConfig().scaled_ema_momentum()
    assert m == pytest.approx(1 - (1 - 0.002) ** (2 / 16))
    assert (1 - m) ** 8 == pytest.approx(1 - 0.002)
    assert DarthConfig(frames_per_batch=4).scaled_ema_momentum(workers=4) == pytest.approx(0.002)
    assert DarthConfig(frames_per_batch=8, ema_momentum=0.5).scaled_ema_momentum(workers=4) == pytest.approx(0.75)
    assert DarthConfig(scale_to_batch=False).scaled_ema_momentum(workers=3) == 0.002
    assert DarthConfig(ema_momentum=0.0).scaled_ema_momentum() == 0.0  # a frozen teacher stays frozen


def test_lr_schedule_of_the_12e_configs_linear_warmup_and_steps():
    c = DarthConfig(epochs=12, lr_steps=(8, 11), warmup_iters=1000, warmup_ratio=0.001)
    per_epoch = 500
    assert c.lr_factor(0, per_epoch) == pytest.approx(0.001)  # mmcv LinearWarmup starts at lr x warmup_ratio
    assert c.lr_factor(500, per_epoch) == pytest.approx(1 - 0.5 * 0.999)
    assert c.lr_factor(999, per_epoch) == pytest.approx(1 - 0.001 * 0.999)
    assert c.lr_factor(1000, per_epoch) == 1.0
    assert c.lr_factor(8 * per_epoch - 1, per_epoch) == 1.0
    assert c.lr_factor(8 * per_epoch, per_epoch) == pytest.approx(0.1)
    assert c.lr_factor(11 * per_epoch, per_epoch) == pytest.approx(0.01)
    # the warm-up multiplies the step policy's lr when both apply (an epoch shorter than the warm-up)
    assert c.lr_factor(900, 100) == pytest.approx(0.1 * (1 - 0.1 * 0.999))  # epoch 9
    assert DarthConfig().lr_factor(0, 10) == 1.0 and DarthConfig().lr_factor(30, 10) == pytest.approx(0.1)


@pytest.mark.parametrize("field, value", [
    ("aug_strength", -0.1), ("aug_strength", 2.5), ("aug_strength", math.nan),
    ("scale_range", (0.0, 1.2)), ("scale_range", (1.2, 0.8)), ("scale_range", (0.8,)),
    ("flip_prob", 1.5), ("photometric_prob", -0.5), ("channel_swap_prob", 2.0),
    ("brightness_delta", -1.0), ("brightness_delta", 300.0),
    ("contrast_range", (-0.5, 1.5)), ("saturation_range", (1.5, 0.5)),
    ("hue_delta", 200.0), ("img_scale", (1088,)), ("img_scale", (1088.0, 608)), ("img_scale", (0, 608)),
    ("frame_size", (1920, -1080)), ("photometric_impl", "yiq"), ("scale_to_batch", 1),
    ("warmup_iters", -1), ("warmup_iters", 1.5), ("warmup_ratio", 0.0), ("warmup_ratio", 1.5),
    ("rpn_weight", -0.1), ("roi_weight", math.inf), ("contrastive_weight", "1"),
    ("ema_momentum", -0.1), ("ema_momentum", 1.5), ("conf_thr", 1.2),
    ("lr", 0.0), ("momentum", 1.0), ("weight_decay", -1e-4), ("grad_clip", 0.0),
    ("epochs", 0), ("epochs", 2.0), ("lr_steps", (3, 2)), ("lr_steps", (0,)), ("lr_gamma", 0.0),
    ("frames_per_batch", 0), ("base_batch_size", 0), ("seed", -1), ("seed", True), ("target_bn_stats", "yes"),
])
def test_every_invalid_field_names_itself(field, value):
    with pytest.raises(ValueError, match=field):
        DarthConfig(**{field: value})


def test_message_gives_the_allowed_range():
    with pytest.raises(ValueError, match=r"ema_momentum must be in \[0, 1\], got 1.5"):
        DarthConfig(ema_momentum=1.5)


def test_strength_that_would_make_scales_non_positive_is_rejected():
    DarthConfig(scale_range=(0.4, 1.6), aug_strength=1.5)  # low 1 - 0.6 * 1.5 = 0.1
    with pytest.raises(ValueError, match="scale_range.*aug_strength"):
        DarthConfig(scale_range=(0.4, 1.6), aug_strength=2.0)  # low 1 - 0.6 * 2 = -0.2


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError, match="flip_prob.*conf_thr"):
        DarthConfig(flip_prob=2.0, conf_thr=-1.0)


def test_optional_fields_accept_none_and_valid_values():
    assert DarthConfig(grad_clip=None).grad_clip is None
    assert DarthConfig(img_scale=(1088, 1088)).img_scale == (1088, 1088)
    assert DarthConfig(frame_size=(1920, 1080), photometric_impl="affine").frame_size == (1920, 1080)
    assert DarthConfig(lr_steps=()).lr_steps == ()


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ValueError, match="ema_momentun"):
        DarthConfig.from_dict({"ema_momentun": 0.01})


def test_from_dict_to_dict_round_trip_with_lists():
    c = DarthConfig.from_dict({"scale_range": [0.7, 1.3], "img_scale": [1088, 1088], "rpn_weight": 0.5})
    assert c.scale_range == (0.7, 1.3) and c.img_scale == (1088, 1088) and c.rpn_weight == 0.5
    assert DarthConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["ema_momentum"] == 0.002


def test_from_dict_names_the_replaced_target_size():
    with pytest.raises(ValueError, match="target_size was replaced by img_scale"):
        DarthConfig.from_dict({"target_size": [1088, 608]})


def test_from_dict_validates():
    with pytest.raises(ValueError, match="conf_thr"):
        DarthConfig.from_dict({"conf_thr": 2})


def test_effective_ranges_scale_with_strength():
    none = DarthConfig(aug_strength=0.0).effective_ranges()
    assert none.scale_range == (1.0, 1.0) and none.flip_prob == 0.0 and none.channel_swap_prob == 0.0
    assert none.brightness_delta == 0.0 and none.hue_delta == 0.0
    assert none.contrast_range == (1.0, 1.0) and none.saturation_range == (1.0, 1.0)

    published = DarthConfig().effective_ranges()
    assert published.scale_range == pytest.approx((0.8, 1.2)) and published.flip_prob == 0.5
    assert published.brightness_delta == 32 and published.hue_delta == 18
    assert published.contrast_range == pytest.approx((0.5, 1.5))

    half = DarthConfig(aug_strength=0.5).effective_ranges()
    assert half.scale_range == pytest.approx((0.9, 1.1)) and half.flip_prob == 0.25
    assert half.brightness_delta == 16 and half.saturation_range == pytest.approx((0.75, 1.25))

    double = DarthConfig(aug_strength=2.0).effective_ranges()
    assert double.scale_range == pytest.approx((0.6, 1.4))
    assert double.contrast_range == pytest.approx((0.0, 2.0))
    assert double.brightness_delta == 64 and double.hue_delta == 36
    assert double.flip_prob == 0.5  # probabilities stop at the published value
    assert double.photometric_prob == 0.5


def test_embedded_darth_settings_are_valid_overrides():
    from darth_ray.embedded import DARTH_SETTINGS

    config = DarthConfig(**DARTH_SETTINGS)
    assert config.effective_ranges().photometric_prob == DARTH_SETTINGS["photometric_prob"]


def test_help_explains_every_darth_knob(capsys):
    import dataclasses

    from darth_ray.adapt.config import FIELD_HELP
    from darth_ray.cli import main

    assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(DarthConfig)}
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--conf-thr X teacher detections scoring above it become" in text
    assert "(published 1088 1088 for r50_fpn) (default: None)" in text

"""Scales: evaluation resizes to the model's test_scale, DARTH resizes the plain frame to frame_size and builds
its views at img_scale (or the model's own scale)."""
import dataclasses

import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.eval.track import detect_and_embed
from darth_ray.models.config import ModelConfig, model_config
from darth_ray.models.qdtrack import QDTrack, build_model, load_checkpoint, save_checkpoint


def _spy_on_inputs(model: QDTrack, monkeypatch) -> list[tuple[int, int]]:
    """Sizes of the images the model normalises; its detector returns one fixed box in input pixels."""
    seen = []
    normalize = model.normalize

    def spy(images, image_sizes=None):
        seen.append(tuple(images.shape[-2:]))
        return normalize(images, image_sizes)

    monkeypatch.setattr(model, "normalize", spy)
    box = {"boxes": torch.tensor([[108.8, 61.2, 217.6, 122.4]]), "scores": torch.tensor([0.9])}
    monkeypatch.setattr(model, "detect", lambda feats, proposals, sizes: [box] * len(sizes))
    return seen


def test_a_1920x1080_frame_is_evaluated_at_1088x612_and_boxes_map_back(monkeypatch):
    model = build_model(dataclasses.replace(model_config("small"), test_scale=(1088, 1088))).eval()
    seen = _spy_on_inputs(model, monkeypatch)
    frames = torch.randint(0, 256, (1, 3, 1080, 1920), dtype=torch.uint8)
    out = detect_and_embed(model, frames)
    assert seen == [(612, 1088)]
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[192.0, 108.0, 384.0, 216.0]]))
    detect_and_embed(model, frames, max_size=544)  # `track --max-size` overrides the model's scale
    assert seen[-1] == (306, 544)


def test_the_small_model_evaluates_at_the_native_frame(monkeypatch):
    model = build_model("small").eval()
    seen = _spy_on_inputs(model, monkeypatch)
    detect_and_embed(model, torch.zeros(1, 3, 192, 320, dtype=torch.uint8))
    assert model.config.test_scale is None and seen == [(192, 320)]


def test_evaluation_resize_is_bilinear_without_antialiasing(monkeypatch):
    import cv2

    model = build_model(dataclasses.replace(model_config("small"), test_scale=(64, 64))).eval()
    captured = []
    monkeypatch.setattr(model, "normalize", lambda images, sizes=None: captured.append(images) or
                        QDTrack.normalize(model, images, sizes))
    frame = torch.randint(0, 256, (1, 3, 90, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    detect_and_embed(model, frame)
    reference = cv2.resize(frame[0].permute(1, 2, 0).numpy(), (64, 36), interpolation=cv2.INTER_LINEAR)
    difference = (captured[0][0].permute(1, 2, 0) - torch.from_numpy(reference).float()).abs()
    assert captured[0].shape[-2:] == (36, 64) and difference.max() <= 1  # cv2 rounds in fixed point
    antialiased = torch.nn.functional.interpolate(frame.float(), size=(36, 64), mode="bilinear", antialias=True)
    assert (antialiased[0].permute(1, 2, 0) - torch.from_numpy(reference)).abs().max() > 10  # what it is not


def test_checkpoints_without_test_scale_get_their_named_configs(tmp_path):
    for name, expected in (("small", None), ("r50_fpn", (1088, 1088))):
        stored = dataclasses.asdict(model_config(name))
        del stored["test_scale"]  # written before the field existed
        assert ModelConfig.from_dict(stored).test_scale == expected
    save_checkpoint(tmp_path / "small.pt", build_model("small"))
    ckpt = torch.load(tmp_path / "small.pt", weights_only=True)
    del ckpt["model_config"]["test_scale"]
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")[0].config.test_scale is None


@pytest.mark.parametrize("value", [(1088,), (1088.0, 1088), (0, 600), 1088])
def test_test_scale_is_validated(value):
    with pytest.raises(ValueError, match="test_scale"):
        dataclasses.replace(model_config("small"), test_scale=value)


def test_darth_resizes_the_plain_frame_to_frame_size_and_views_to_the_model_scale(monkeypatch):
    source = build_model(dataclasses.replace(model_config("small"), test_scale=(64, 64)))
    darth = Darth.from_source(source, DarthConfig(frame_size=(160, 90), aug_strength=0.0))
    seen = {}

    def pseudo_labels(frames):
        seen["plain"] = tuple(frames.shape[-2:])
        return [torch.tensor([[16.0, 9.0, 48.0, 45.0]])] * len(frames)

    monkeypatch.setattr(darth, "pseudo_labels", pseudo_labels)
    import darth_ray.adapt.darth as darth_module
    build_views = darth_module.build_views

    def spy(*args, **kwargs):
        views = build_views(*args, **kwargs)
        seen["views"] = views.teacher_sizes
        return views

    monkeypatch.setattr(darth_module, "build_views", spy)
    frames = torch.randint(0, 256, (2, 3, 60, 120), dtype=torch.uint8)
    losses = darth.losses(frames, torch.Generator().manual_seed(0))
    assert seen["plain"] == (90, 160)  # resized to frame_size (w, h), ratio not kept
    assert seen["views"] == [(36, 64)] * 2  # fitted into test_scale (64, 64)
    assert torch.isfinite(losses["loss_total"])

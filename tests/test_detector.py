"""QDTrack detector on torchvision components: shapes, mmdet numerics on hand-computed cases, training signal,
checkpoints and config validation."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from darth_ray.io import InputError
from darth_ray.models.config import ModelConfig, model_config
from darth_ray.models.detector import assign_by_iou, base_anchors, batched_nms, decode_boxes
from darth_ray.models.qdtrack import QDTrack, build_model, load_checkpoint, save_checkpoint

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("small").eval()


def test_small_forward_shapes(small):
    images = torch.randint(0, 256, (2, 3, 190, 318), dtype=torch.uint8)
    sizes = [(190, 318), (180, 300)]
    with torch.no_grad():
        x = small.normalize(images, sizes)
        assert x.shape == (2, 3, 192, 320)
        assert (x[:, :, 190:] == 0).all() and (x[:, :, :, 318:] == 0).all() and (x[1, :, 180:] == 0).all()
        feats = small.features(x)
        assert [tuple(f.shape) for f in feats] == [(2, 64, 48, 80), (2, 64, 24, 40), (2, 64, 12, 20),
                                                   (2, 64, 6, 10), (2, 64, 3, 5)]
        logits, deltas = small.rpn_head(feats)
        assert [tuple(l.shape) for l in logits] == [(2, 3) + tuple(f.shape[-2:]) for f in feats]
        assert [tuple(d.shape) for d in deltas] == [(2, 12) + tuple(f.shape[-2:]) for f in feats]
        anchors = small.anchors(feats, (192, 320))
        assert [a.shape[0] for a in anchors] == [f.shape[-2] * f.shape[-1] * 3 for f in feats]
        proposals, scores = small.proposals(feats, logits, deltas, sizes, return_scores=True)
        assert len(proposals) == 2 and all(0 < len(p) <= 300 and p.shape[1] == 4 for p in proposals)
        assert all((s[:-1] >= s[1:]).all() and s.shape == p.shape[:1] for p, s in zip(proposals, scores))
        class_logits, box_deltas = small.roi_head(feats, proposals)
        n = sum(len(p) for p in proposals)
        assert class_logits.shape == (n, 2) and box_deltas.shape == (n, 4)
        dets = small.detect(feats, proposals, sizes)
        for d in dets:
            assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) <= 100
            assert (d["scores"] > 0.05).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
        boxes = [torch.tensor([[10.0, 20.0, 30.0, 80.0], [0.0, 0.0, 5.0, 5.0]]), torch.zeros((0, 4))]
        embeds = small.embed(feats, boxes)
        assert embeds[0].shape == (2, 128) and embeds[1].shape == (0, 128)
        # each image's embeddings depend on its own features only
        alone = small.embed([f[:1] for f in feats], boxes[:1])[0]
        assert torch.allclose(alone, embeds[0], atol=1e-5)


def _like_r50(**fields) -> QDTrack:
    """A cheap (ResNet-18) model that shares the given r50_fpn settings."""
    r50 = model_config("r50_fpn")
    return QDTrack(dataclasses.replace(model_config("small"), **{f: getattr(r50, f) for f in fields}))


def test_normalize_r50_is_bgr_minus_mean():
    model = _like_r50(input_bgr=True, pixel_mean=True, pixel_std=True)
    rgb = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 40, 50)
    x = model.normalize(rgb)
    assert x.shape == (1, 3, 64, 64)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([30 - 103.53, 20 - 116.28, 10 - 123.675]))
    assert (x[:, :, 40:] == 0).all() and (x[:, :, :, 50:] == 0).all()


def test_anchors_unrounded_mmdet_order():
    cfg = model_config("r50_fpn")
    r = math.sqrt(0.5)
    base = base_anchors(4, cfg.anchor_scales, cfg.anchor_ratios)
    expected = torch.tensor([[-16 / r, -16 * r, 16 / r, 16 * r],  # ratio 0.5 (h/w): 45.25 x 22.63
                             [-16.0, -16.0, 16.0, 16.0],
                             [-16 * r, -16 / r, 16 * r, 16 / r]])
    assert torch.allclose(base, expected, atol=1e-5)
    assert base[0, 0].item() != round(base[0, 0].item())  # unrounded, unlike torchvision
    assert base_anchors(4, cfg.anchor_scales, cfg.anchor_ratios, rounded=True)[0].tolist() == [-23, -11, 23, 11]

    model = _like_r50(anchor_scales=True, anchor_ratios=True, round_anchors=True)
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)] + [torch.zeros(1, 1, 1, 1)] * 3
    anchors = model.anchors(feats, (8, 12))
    assert [a.shape for a in anchors] == [(18, 4), (6, 4), (3, 4), (3, 4), (3, 4)]
    # order (y, x, anchor): index (y * w + x) * A + a; level 0 stride 4
    assert torch.allclose(anchors[0][4], torch.tensor([4 - 16.0, -16.0, 4 + 16.0, 16.0]))
    assert torch.allclose(anchors[0][15], torch.tensor([8 - 16 / r, 4 - 16 * r, 8 + 16 / r, 4 + 16 * r]), atol=1e-5)
    # level 1 (stride 8, base 64 for scale 8): x = 1 shifts by 8
    assert torch.allclose(anchors[1][4], torch.tensor([8 - 32.0, -32.0, 8 + 32.0, 32.0]))


def test_decode_hand_checked():
    ref = torch.tensor([[10.0, 20.0, 50.0, 100.0]])  # centre (30, 60), 40 x 80
    d = torch.tensor([[0.5, -0.25, math.log(2.0), 0.0]])
    assert torch.allclose(decode_boxes(ref, d, (1, 1, 1, 1)), torch.tensor([[10.0, 0.0, 90.0, 80.0]]))
    # RoI-head stds: the same box from deltas scaled by 1 / std
    d_roi = d / torch.tensor([0.1, 0.1, 0.2, 0.2])
    assert torch.allclose(decode_boxes(ref, d_roi, (0.1, 0.1, 0.2, 0.2)), torch.tensor([[10.0, 0.0, 90.0, 80.0]]))
    # log-size deltas clamp at +-log(1000/16) on both sides (torchvision clamps only from above)
    big = decode_boxes(ref, torch.tensor([[0.0, 0.0, 10.0, -10.0]]), (1, 1, 1, 1))[0]
    assert torch.allclose(big, torch.tensor([30 - 1250.0, 60 - 0.64, 30 + 1250.0, 60 + 0.64]), atol=1e-3)


def test_assigner_low_quality_needs_min_iou():
    iou = torch.tensor([[0.80, 0.10, 0.50, 0.00],   # gt 0: a clear positive
                        [0.00, 0.40, 0.40, 0.20],   # gt 1: best 0.40 >= 0.3 -> takes both columns at 0.40
                        [0.00, 0.00, 0.00, 0.25]])  # gt 2: best 0.25 < 0.3 -> no low-quality match
    matched = assign_by_iou(iou, 0.7, 0.3, 0.3, match_low_quality=True)
    assert matched.tolist() == [0, 1, 1, -1]
    assert assign_by_iou(iou, 0.7, 0.3, 0.3, match_low_quality=False).tolist() == [0, -2, -2, -1]
    assert assign_by_iou(torch.zeros(0, 3), 0.7, 0.3, 0.3, True).tolist() == [-1, -1, -1]


def test_batched_nms_separates_groups_and_sorts():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.95, 0.1])
    keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1, 1]), 0.5)
    assert keep.tolist() == [2, 0, 3]  # box 1 suppressed by box 0 of its own group only


def _synthetic_image():
    g = torch.Generator().manual_seed(1)
    image = torch.randint(60, 100, (1, 3, 192, 320), generator=g).to(torch.uint8)
    boxes = torch.tensor([[40.0, 60.0, 60.0, 110.0], [150.0, 40.0, 166.0, 80.0], [230.0, 100.0, 258.0, 170.0]])
    colours = [(230, 40, 40), (40, 230, 40), (230, 230, 40)]
    for (x1, y1, x2, y2), c in zip(boxes.int().tolist(), colours):
        image[0, :, y1:y2, x1:x2] = torch.tensor(c, dtype=torch.uint8).view(3, 1, 1)
    return image, boxes


def test_detection_losses_decrease():
    torch.manual_seed(0)
    model = build_model("small").train()
    image, boxes = _synthetic_image()
    sizes = [tuple(image.shape[-2:])]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = model.backbone.layer1[0].conv1.weight.detach().clone()
    history = []
    for _ in range(20):
        feats = model.features(model.normalize(image))
        logits, deltas = model.rpn_head(feats)
        proposals = model.proposals(feats, logits, deltas, sizes)
        losses = model.detection_losses(feats, logits, deltas, proposals, [{"boxes": boxes}], sizes)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[:3], history[-3:]
    mean = lambda hs, k: sum(h[k] for h in hs) / len(hs)
    assert mean(last, "loss_rpn_cls") < 0.7 * mean(first, "loss_rpn_cls")
    assert mean(last, "loss_cls") < 0.7 * mean(first, "loss_cls")
    assert sum(map(sum, (h.values() for h in last))) < 0.7 * sum(map(sum, (h.values() for h in first)))
    assert not torch.equal(before, model.backbone.layer1[0].conv1.weight)  # gradients reach the backbone
    # an image without any box is all background
    feats = model.features(model.normalize(image))
    logits, deltas = model.rpn_head(feats)
    empty = model.detection_losses(feats, logits, deltas, model.proposals(feats, logits, deltas, sizes),
                                   [{"boxes": torch.zeros((0, 4))}], sizes)
    assert empty["loss_rpn_bbox"].item() == 0 and empty["loss_bbox"].item() == 0
    assert torch.isfinite(empty["loss_cls"]) and empty["loss_cls"].item() > 0


def test_r50_caffe_style_and_freezing():
    model = build_model("r50_fpn")
    first = model.backbone.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # caffe style
    assert not model.backbone.conv1.weight.requires_grad and not model.backbone.layer1[0].conv2.weight.requires_grad
    assert model.backbone.layer2[0].conv2.weight.requires_grad
    assert not model.backbone.layer3[0].bn1.weight.requires_grad  # frozen BN everywhere
    model.train()
    assert not model.backbone.layer4[0].bn1.training and model.fpn.training
    sd = model.state_dict()
    assert "backbone.layer3.5.conv3.weight" in sd and "embed_head.convs.3.gn.weight" in sd
    assert "backbone.layer1.0.bn1.num_batches_tracked" in sd and "pixel_mean" not in sd
    small = build_model("small")
    assert small.backbone.layer2[0].conv1.stride == (2, 2)  # BasicBlock: stride on the first 3x3
    assert all(p.requires_grad for p in small.parameters())


def test_checkpoint_round_trip(small, tmp_path):
    path = tmp_path / "ckpt" / "small.pt"
    save_checkpoint(path, small, extra={"step": 7})
    model, extra = load_checkpoint(path)
    assert extra == {"step": 7} and model.config == small.config and not model.training
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), model.state_dict().values()))
    image, _ = _synthetic_image()
    with torch.no_grad():
        a, b = small(image)[0], model(image)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model_config", "model", "step"} and raw["model_config"]["name"] == "small"


def test_load_checkpoint_errors(small, tmp_path):
    with pytest.raises(InputError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(InputError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"meta": {}, "state_dict": {"detector.backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "mm.pth")
    with pytest.raises(InputError, match="convert-mmtrack"):
        load_checkpoint(tmp_path / "mm.pth")
    cfg = dataclasses.asdict(small.config)
    torch.save({"model_config": {**cfg, "depth": 7}, "model": {}}, tmp_path / "badcfg.pt")
    with pytest.raises(InputError, match="bad model_config.*depth"):
        load_checkpoint(tmp_path / "badcfg.pt")
    torch.save({"model_config": {**cfg, "fpn_channels": 32}, "model": small.state_dict()}, tmp_path / "shape.pt")
    with pytest.raises(InputError, match="shape mismatch.*fpn.inner_blocks"):
        load_checkpoint(tmp_path / "shape.pt")
    sd = dict(small.state_dict())
    del sd["rpn.cls_logits.bias"]
    torch.save({"model_config": cfg, "model": sd}, tmp_path / "missing.pt")
    with pytest.raises(InputError, match="missing keys rpn.cls_logits.bias"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("change, message", [
    ({"depth": 20}, "depth must be one of"),
    ({"depth": 18}, "caffe_style only changes bottleneck"),
    ({"num_classes": 0}, "num_classes must be a positive int"),
    ({"rpn_bg_iou_thresh": 0.8}, "rpn_bg_iou_thresh .* must not exceed rpn_fg_iou_thresh"),
    ({"pixel_std": (1.0, 0.0, 1.0)}, "pixel_std must be positive"),
    ({"anchor_ratios": ()}, "anchor_ratios must be a non-empty tuple"),
    ({"embed_conv_channels": 100}, "divisible by embed_gn_groups"),
    ({"box_score_thresh": 1.5}, r"box_score_thresh must be in \[0, 1\]"),
    ({"rpn_post_nms_top_n_test": 0}, "rpn_post_nms_top_n_test must be a positive int"),
    ({"frozen_stages": 5}, "frozen_stages must be an int in -1..4"),
])
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(model_config("r50_fpn"), **change)


def test_named_configs():
    r50, small = model_config("r50_fpn"), model_config("small")
    assert (r50.depth, r50.caffe_style, r50.fpn_channels, r50.num_anchors, r50.box_head_dim) == (50, True, 256, 3, 1024)
    assert (r50.rpn_nms_thresh, r50.box_score_thresh, r50.box_nms_thresh, r50.box_detections_per_img) == \
        (0.7, 0.05, 0.5, 100)
    assert not r50.round_anchors and not r50.clip_border and r50.input_bgr
    assert (small.depth, small.fpn_channels, small.box_head_dim, small.box_batch_size_per_image) == (18, 64, 256, 128)
    assert ModelConfig.from_dict(dataclasses.asdict(small)) == small
    assert ModelConfig.from_dict({**dataclasses.asdict(small), "anchor_ratios": [1.0, 2.0]}).anchor_ratios == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\): colour"):
        ModelConfig.from_dict({**dataclasses.asdict(small), "colour": 1})
    with pytest.raises(ValueError, match="unknown model config 'r101'"):
        model_config("r101")
    with pytest.raises(TypeError):
        build_model(3)


def _three_class_model() -> QDTrack:
    torch.manual_seed(0)
    return QDTrack(dataclasses.replace(model_config("small"), num_classes=3)).eval()


def test_multiclass_detect_is_mmdet_multiclass_nms(monkeypatch):
    """Each (proposal, class) is a candidate decoded with that class's deltas; NMS within a class only; the best
    box_detections_per_img overall; labels 0-based."""
    model = _three_class_model()
    proposals = [torch.tensor([[10.0, 10, 50, 90], [12, 10, 52, 90], [200, 50, 240, 150]])]
    probs = torch.tensor([[0.60, 0.30, 0.01, 0.09],   # classes 0, 1, 2, background
                          [0.50, 0.35, 0.02, 0.13],   # overlaps proposal 0 (IoU 0.9)
                          [0.04, 0.90, 0.03, 0.03]])
    deltas = torch.tensor([[0.0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0]]).repeat(3, 1)  # class k: its own shift
    monkeypatch.setattr(model, "roi_head", lambda feats, boxes: (probs.log(), deltas))
    det = model.detect([], proposals, [(192, 320)])[0]
    # class 0: 0.60 suppresses 0.50; class 1: 0.90, and 0.35 suppresses 0.30; 0.35 overlaps class 0's 0.60 box
    assert det["labels"].tolist() == [1, 0, 1]
    assert torch.allclose(det["scores"], torch.tensor([0.90, 0.60, 0.35]))
    stds = model.config.box_stds
    expected = [decode_boxes(proposals[0][i:i + 1], deltas[i:i + 1, 4 * k:4 * k + 4], stds)[0]
                for i, k in ((2, 1), (0, 0), (1, 1))]
    assert torch.allclose(det["boxes"], torch.stack(expected))
    assert not torch.allclose(expected[0], proposals[0][2])  # class 1's deltas moved its box
    top2 = dataclasses.replace(model.config, box_detections_per_img=2)
    monkeypatch.setattr(model, "config", top2)
    assert model.detect([], proposals, [(192, 320)])[0]["labels"].tolist() == [1, 0]


def test_multiclass_losses_train_the_target_class():
    """A positive is classified as its gt's class and regressed by that class's deltas only."""
    model = _three_class_model().train()
    image, boxes = _synthetic_image()
    sizes = [tuple(image.shape[-2:])]

    def losses(label):
        torch.manual_seed(1)  # the same RPN and RoI samples for every label
        feats = model.features(model.normalize(image))
        logits, deltas = model.rpn_head(feats)
        proposals = model.proposals(feats, logits, deltas, sizes)
        target = {"boxes": boxes, "labels": torch.full((len(boxes),), label)}
        return model.detection_losses(feats, logits, deltas, proposals, [target], sizes)

    def grad(loss, param):
        model.zero_grad()
        loss.backward()
        return param.grad.clone()

    rows = grad(losses(2)["loss_bbox"], model.box_head.bbox_pred.weight).abs().view(3, 4, -1).sum(dim=(1, 2))
    assert rows[0] == 0 and rows[1] == 0 and rows[2] > 0
    # cross entropy: d loss / d bias_k = mean softmax_k - share of the RoIs whose target is k; the same RoIs
    # labelled 2 instead of 0 move exactly the positives' share from class 0 to class 2
    bias = model.box_head.cls_score.bias
    share = grad(losses(2)["loss_cls"], bias) - grad(losses(0)["loss_cls"], bias)
    assert share[2] < 0 and torch.allclose(share, torch.stack([-share[2], torch.tensor(0.0), share[2],
                                                               torch.tensor(0.0)]), atol=1e-6)
    with pytest.raises(ValueError, match=r"\['labels'\] must be 0-based classes in 0..2, got \[3\]"):
        losses(3)

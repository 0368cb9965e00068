"""mmtrack checkpoint conversion: the converted r50_fpn model reproduces MMDetection's own QDTrack outputs
(../shared/qdtrack-reference), and every malformed input gives a clear InputError."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from darth_ray.io import InputError
from darth_ray.models.convert_mmtrack import convert_mmtrack_checkpoint, convert_mmtrack_state_dict
from darth_ray.models.qdtrack import load_checkpoint

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "qdtrack-reference"
if not (REFERENCE_DIR / "mmdet_qdtrack_seed0.pt").is_file():
    pytest.skip(f"MMDetection reference outputs not found at {REFERENCE_DIR} (the shared/ directory beside the "
                "repository)", allow_module_level=True)

torch.set_num_threads(2)


def _generator():
    spec = importlib.util.spec_from_file_location("make_mmtrack_ckpt", REFERENCE_DIR / "make_mmtrack_ckpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mmtrack_sd():
    return _generator().state_dict()


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE_DIR / "mmdet_qdtrack_seed0.pt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def outputs(mmtrack_sd, reference, tmp_path_factory):
    """Convert through files exactly as the CLI does, load, and run the reference image once."""
    d = tmp_path_factory.mktemp("convert")
    src = d / "qdtrack_mmtrack.pth"
    torch.save({"meta": {"mmtrack_version": "0.14.0", "CLASSES": ("pedestrian",)}, "state_dict": mmtrack_sd}, src)
    dst = convert_mmtrack_checkpoint(src, d / "qdtrack_r50.pt")
    src.unlink()
    model, extra = load_checkpoint(dst)
    assert model.config.name == "r50_fpn" and not model.training
    assert extra["converted_from"]["path"] == str(src)
    size = tuple(reference["image_bgr"].shape[-2:])
    with torch.no_grad():
        feats = model.features(model.normalize(reference["image_bgr"].flip(0)[None]))  # the model takes RGB
        logits, deltas = model.rpn_head(feats)
        proposals, proposal_scores = model.proposals(feats, logits, deltas, [size], return_scores=True)
        det = model.detect(feats, proposals, [size])[0]
        emb = model.embed(feats, [reference["boxes"]])[0]
    return dict(model=model, fpn=feats, rpn_cls=logits, rpn_reg=deltas, proposals=proposals[0],
                proposal_scores=proposal_scores[0], det=det, embeddings=emb)


def _rel(ours, ref):
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def _same_ranked_boxes(boxes, scores, ref_boxes, ref_scores, box_tol=1e-2, tie_tol=1e-5):
    """Same boxes and scores in the same order, except that boxes whose reference scores tie (to float rounding)
    may swap places."""
    assert boxes.shape == ref_boxes.shape
    assert torch.allclose(scores, ref_scores, atol=5e-5, rtol=0)
    dist = torch.cdist(boxes.double(), ref_boxes.double(), p=float("inf"))  # [ours, ref]
    close = dist < box_tol
    tied = (ref_scores[:, None] - ref_scores[None, :]).abs() <= tie_tol  # [rank i, ref j]
    ok = (close & tied).any(dim=1)
    assert ok.all(), f"ranks {ok.logical_not().nonzero().view(-1)[:10].tolist()} differ from the reference"
    assert close.any(dim=0).all(), "some reference boxes are not produced"
    in_place = dist.diagonal() < box_tol
    return int(in_place.logical_not().sum())


def test_generator_matches_reference(mmtrack_sd, reference):
    h = hashlib.sha256()
    for k in sorted(mmtrack_sd):
        h.update(k.encode())
        h.update(mmtrack_sd[k].float().numpy().tobytes())
    assert h.hexdigest() == reference["checkpoint_sha256"]


def test_fpn_and_rpn_maps_match(outputs, reference):
    for level in range(5):
        assert outputs["fpn"][level].shape == reference["fpn"][level].shape
        assert _rel(outputs["fpn"][level], reference["fpn"][level]) < 1e-3  # reference stored as float16
        assert _rel(outputs["rpn_cls"][level], reference["rpn_cls"][level]) < 1e-4
        assert _rel(outputs["rpn_reg"][level], reference["rpn_reg"][level]) < 1e-4


def test_proposals_match(outputs, reference):
    swapped = _same_ranked_boxes(outputs["proposals"], outputs["proposal_scores"], reference["proposals"],
                                 reference["proposal_scores"])
    assert swapped <= 4  # only a couple of exact ties in the reference


def test_detections_match(outputs, reference):
    det = outputs["det"]
    assert len(det["boxes"]) == 100
    assert (det["scores"] > 0.05).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
    _same_ranked_boxes(det["boxes"], det["scores"], reference["det_bboxes"], reference["det_scores"])
    assert (det["boxes"][:, 0] < 0).any()  # not clipped to the image, as in the reference


def test_embeddings_match(outputs, reference):
    cos = torch.nn.functional.cosine_similarity(outputs["embeddings"], reference["embeddings"], dim=1)
    assert cos.min() > 0.999
    assert _rel(outputs["embeddings"], reference["embeddings"]) < 1e-4


def test_class_rows_and_regressor_layout(mmtrack_sd):
    ours = convert_mmtrack_state_dict(mmtrack_sd)
    src = "detector.roi_head.bbox_head."
    # mmdet fc_cls rows are [pedestrian, background]; our logits columns are the same.
    assert ours["box_head.cls_score.bias"].tolist() == [0.5, -0.5]
    assert torch.equal(ours["box_head.cls_score.weight"], mmtrack_sd[src + "fc_cls.weight"])
    assert torch.equal(ours["box_head.bbox_pred.weight"], mmtrack_sd[src + "fc_reg.weight"])
    assert torch.equal(ours["fpn.inner_blocks.3.0.weight"], mmtrack_sd["detector.neck.lateral_convs.3.conv.weight"])
    assert torch.equal(ours["rpn.conv.0.0.bias"], mmtrack_sd["detector.rpn_head.rpn_conv.bias"])


def test_eight_class_rows_keep_mmdet_order(mmtrack_sd):
    """BDD100K's 8 classes: fc_cls rows [8 classes, background], fc_reg 4 rows per class, copied row for row, and
    a detection of class k is decoded with fc_reg rows 4k..4k+3."""
    import dataclasses

    from darth_ray.models.config import R50_FPN
    from darth_ray.models.qdtrack import QDTrack

    src = "detector.roi_head.bbox_head."
    sd = dict(mmtrack_sd)
    sd[src + "fc_cls.weight"] = torch.zeros(9, 1024)
    sd[src + "fc_cls.bias"] = torch.arange(9.0)  # row k: class k; row 8: the background
    sd[src + "fc_cls.bias"][5] = 20.0  # class 5 (bus) wins every RoI
    sd[src + "fc_reg.weight"] = torch.zeros(32, 1024)
    sd[src + "fc_reg.bias"] = torch.zeros(32)
    sd[src + "fc_reg.bias"][4 * 5] = 1.0  # class 5's dx: a shift by 0.1 box widths
    config = dataclasses.replace(R50_FPN, num_classes=8)
    ours = convert_mmtrack_state_dict(sd, config=config)
    assert torch.equal(ours["box_head.cls_score.bias"], sd[src + "fc_cls.bias"])
    assert torch.equal(ours["box_head.bbox_pred.bias"], sd[src + "fc_reg.bias"])
    model = QDTrack(config).eval()
    model.load_state_dict(ours)
    proposal = torch.tensor([[100.0, 100.0, 200.0, 300.0]])
    with torch.no_grad():
        feats = model.features(model.normalize(torch.zeros(1, 3, 320, 320)))
        det = model.detect(feats, [proposal], [(320, 320)])[0]
    assert det["labels"].tolist() == [5]
    assert torch.allclose(det["boxes"], torch.tensor([[110.0, 100.0, 210.0, 300.0]]))
    with pytest.raises(InputError, match=r"shape mismatch: .*fc_cls.bias \(2,\) \(expected \(9,\)\)"):
        convert_mmtrack_state_dict(mmtrack_sd, config=config)


def test_bare_and_wrapped_state_dicts_agree(mmtrack_sd):
    bare = convert_mmtrack_state_dict(mmtrack_sd)
    wrapped = convert_mmtrack_state_dict({"meta": {}, "state_dict": mmtrack_sd})
    assert bare.keys() == wrapped.keys() and len(bare) == len(mmtrack_sd)
    assert all(torch.equal(bare[k], wrapped[k]) for k in bare)


def test_bare_state_dict_file_is_read(mmtrack_sd, tmp_path):
    sd = {k: v for k, v in mmtrack_sd.items() if not k.startswith("detector.backbone.layer4.2.")}
    torch.save(sd, tmp_path / "bare.pth")
    with pytest.raises(InputError, match="missing keys: detector.backbone.layer4.2.bn1.bias"):
        convert_mmtrack_checkpoint(tmp_path / "bare.pth", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("this is not a checkpoint\n")
    with pytest.raises(InputError, match="not a torch checkpoint") as e:
        convert_mmtrack_checkpoint(p, tmp_path / "out.pt")
    assert e.value.path == str(p)
    with pytest.raises(InputError, match="no such file"):
        convert_mmtrack_checkpoint(tmp_path / "absent.pth", tmp_path / "out.pt")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InputError, match="no state dict found"):
        convert_mmtrack_checkpoint(tmp_path / "list.pth", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_detector_only_checkpoint(tmp_path):
    sd = _generator().state_dict(drop_embed=True)  # what make_mmtrack_ckpt.py --drop-embed writes
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "det_only.pth")
    with pytest.raises(InputError) as e:
        convert_mmtrack_checkpoint(tmp_path / "det_only.pth", tmp_path / "out.pt")
    assert "missing track_head.embed_head (this is a detector-only checkpoint)" in str(e.value)
    assert "det_only.pth" in str(e.value)
    assert not (tmp_path / "out.pt").exists()


def test_unknown_keys_are_named(mmtrack_sd):
    sd = dict(mmtrack_sd)
    sd["detector.roi_head.mask_head.conv_logits.weight"] = torch.zeros(1)
    sd["ema_detector.backbone.conv1.weight"] = torch.zeros(1)
    with pytest.raises(InputError, match="unknown keys") as e:
        convert_mmtrack_state_dict(sd, source="x.pth")
    assert "detector.roi_head.mask_head.conv_logits.weight" in str(e.value)
    assert "ema_detector.backbone.conv1.weight" in str(e.value)
    assert str(e.value).startswith("x.pth: ")


def test_missing_keys_are_named(mmtrack_sd):
    sd = dict(mmtrack_sd)
    del sd["detector.rpn_head.rpn_cls.bias"]
    del sd["track_head.embed_head.fc_embed.weight"]
    with pytest.raises(InputError, match="missing keys") as e:
        convert_mmtrack_state_dict(sd)
    msg = str(e.value)
    assert "detector.rpn_head.rpn_cls.bias" in msg and "track_head.embed_head.fc_embed.weight" in msg
    assert "detector-only" not in msg  # only part of the embed head is missing


def test_shape_mismatch_is_named(mmtrack_sd):
    sd = dict(mmtrack_sd)
    sd["detector.roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)  # an 80-class COCO head
    sd["detector.roi_head.bbox_head.fc_reg.weight"] = torch.zeros(8, 1024)  # torchvision-style background slot
    with pytest.raises(InputError, match="shape mismatch") as e:
        convert_mmtrack_state_dict(sd)
    msg = str(e.value)
    assert "detector.roi_head.bbox_head.fc_cls.weight (81, 1024) (expected (2, 1024))" in msg
    assert "detector.roi_head.bbox_head.fc_reg.weight (8, 1024) (expected (4, 1024))" in msg


def test_non_tensor_value(mmtrack_sd):
    sd = dict(mmtrack_sd)
    sd["detector.rpn_head.rpn_cls.bias"] = [0.0, 0.0, 0.0]
    with pytest.raises(InputError, match="detector.rpn_head.rpn_cls.bias is a list, not a tensor"):
        convert_mmtrack_state_dict(sd)


CONFIGS = REFERENCE_DIR.parent / "darth-configs"


def _darth_checkpoint(mmtrack_sd, path):
    """A DARTH adapted checkpoint as the authors' runner saves it: student under QDTrack's names, EMA teacher
    under teacher_*; here the teacher's weights are the student's + 1, so the two can be told apart."""
    teacher = {f"teacher_{k}": v + 1 for k, v in mmtrack_sd.items()}
    torch.save({"meta": {}, "state_dict": {**mmtrack_sd, **teacher}}, path)
    return path


def test_darth_checkpoint_student_by_default_and_teacher_on_request(mmtrack_sd, tmp_path):
    src = _darth_checkpoint(mmtrack_sd, tmp_path / "darth.pth")
    key = "detector.rpn_head.rpn_cls.weight"
    student, extra = load_checkpoint(convert_mmtrack_checkpoint(src, tmp_path / "student.pt"))
    assert torch.equal(student.state_dict()["rpn.cls_logits.weight"], mmtrack_sd[key])
    assert extra["converted_from"]["format"] == "mmtrack-0.14 DARTH (student)"
    teacher, _ = load_checkpoint(convert_mmtrack_checkpoint(src, tmp_path / "teacher.pt", take="teacher"))
    assert torch.equal(teacher.state_dict()["rpn.cls_logits.weight"], mmtrack_sd[key] + 1)
    with pytest.raises(InputError, match="not a DARTH one"):
        convert_mmtrack_state_dict(mmtrack_sd, take="teacher")


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="the authors' configs are absent")
def test_config_gives_the_normalisation_style_and_classes(mmtrack_sd, tmp_path):
    src = tmp_path / "bdd_ped.pth"
    torch.save({"state_dict": mmtrack_sd}, src)
    config = CONFIGS / "adapters" / "darth" / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack_from_bdd.py"
    model, extra = load_checkpoint(convert_mmtrack_checkpoint(src, tmp_path / "out.pt", config=config))
    assert model.config.input_bgr is False and model.config.pixel_std == (58.395, 57.12, 57.375)
    assert model.config.name == config.stem and extra["classes"] == ["pedestrian"]
    assert extra["converted_from"]["config"] == str(config)
    default, extra = load_checkpoint(convert_mmtrack_checkpoint(src, tmp_path / "default.pt"))
    assert default.config.input_bgr is True and extra["classes"] == ["pedestrian"]

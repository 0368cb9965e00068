"""The DARTH authors' config files (../shared/darth-configs/) read into darth_ray's configurations."""
import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from darth_ray.cli import main
from darth_ray.io import InputError
from darth_ray.mmconfig import read_config
from darth_ray.models.config import R50_FPN

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "darth-configs"
if not CONFIGS.is_dir():  # CI clones next to shared/; a developer checkout may sit elsewhere
    CONFIGS = Path("/work/shared/darth-configs")
ADAPTERS = CONFIGS / "adapters" / "darth"
SOURCE = CONFIGS / "mot" / "qdtrack"
ALL = sorted(p for p in CONFIGS.rglob("*.py"))

pytestmark = pytest.mark.skipif(not CONFIGS.is_dir(), reason="the authors' configs (shared/darth-configs) are absent")


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_resolves_or_fails_naming_the_file(path):
    try:
        resolved = read_config(path)
    except InputError as e:
        assert e.path == str(path) and e.message.strip()
        assert "Traceback" not in str(e)
        return
    assert resolved.kind in ("darth", "qdtrack")
    assert resolved.model["num_classes"] == len(resolved.model["classes"])


def test_dancetrack_adapter_config_is_the_published_darth():
    c = read_config(ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py")
    assert c.kind == "darth"
    d = c.darth
    assert (d["conf_thr"], d["rpn_weight"], d["roi_weight"], d["ema_momentum"]) == (0.7, 0.1, 0.1, 0.002)
    assert (d["img_scale"], d["scale_range"], d["flip_prob"]) == ((1088, 1088), (0.8, 1.2), 0.5)
    assert d["frame_size"] == (1920, 1080) == c.data["frame_size"]  # the plain frame the teacher labels
    assert (d["brightness_delta"], d["contrast_range"], d["saturation_range"], d["hue_delta"]) == \
        (32.0, (0.5, 1.5), (0.5, 1.5), 18.0)
    assert (d["lr"], d["momentum"], d["weight_decay"], d["grad_clip"]) == (0.002, 0.9, 1e-4, 35.0)
    assert (d["epochs"], d["lr_steps"], d["lr_gamma"], d["warmup_iters"], d["frames_per_batch"]) == (4, (3,), 0.1, 0, 2)
    assert c.tracker["init_score_thr"] == 0.9 and c.tracker["memo_tracklet_frames"] == 30
    assert c.model["test_scale"] == (1088, 1088) and c.model["classes"] == ["pedestrian"]
    assert c.data["train"]["ann_file"] == "data/dancetrack/annotations/val_cocoformat.json"
    # the detector the file describes is darth_ray's r50_fpn, field for field
    r50 = dataclasses.asdict(R50_FPN)
    assert {k: v for k, v in c.model.items() if k in r50} == {k: r50[k] for k in c.model if k in r50}
    assert len([k for k in c.model if k in r50]) >= 40
    assert "log_config" in c.ignored and "model.init_cfg" in c.ignored


def test_bdd_target_config_carries_imagenet_normalisation_and_a_step_schedule():
    c = read_config(ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack_from_bdd.py")
    assert c.model["input_bgr"] is False
    assert c.model["pixel_mean"] == (123.675, 116.28, 103.53) and c.model["pixel_std"] == (58.395, 57.12, 57.375)


def test_source_training_config():
    c = read_config(SOURCE / "qdtrack_faster-rcnn_r50_fpn_12e_dancetrack.py")
    assert c.kind == "qdtrack" and not c.darth
    t = c.training
    assert (t["epochs"], t["batch_size"], t["lr"], t["frame_range"]) == (12, 2, 0.02, 10)
    assert t["lr_drop_at"] == pytest.approx((8 / 12, 11 / 12))
    assert t["img_scale"] == (1088, 1088) and t["photometric_prob"] == 0.5


def test_missing_base_file_is_named(capsys):
    path = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_12e_bdd_as_shift.py"
    assert main(["config", "show", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "darth_qdtrack_faster_rcnn_r50_fpn_12e_base.py" in err and "does not exist" in err
    assert "Traceback" not in err


def test_keys_darth_ray_cannot_honour_are_errors_naming_them(tmp_path):
    cfg = tmp_path / "mine.py"
    cfg.write_text(textwrap.dedent(f"""
        _base_ = ['{ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"}']
        model = dict(detector=dict(neck=dict(num_outs=4)), my_new_loss=dict(loss_weight=1.0))
        custom_hooks = [dict(type='EMATrainHook', momentum=0.05, warm_up=100)]
    """))
    with pytest.raises(InputError) as e:
        read_config(cfg)
    message = str(e.value)
    assert message.startswith(str(cfg))
    assert "model.detector.neck.num_outs=4" in message
    assert "model.my_new_loss.loss_weight" in message
    assert "custom_hooks.0.warm_up" in message  # 0.05 > 1/100: the EMA warm-up would change the teacher


def test_config_show_json(capsys):
    path = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_mot17-private-half.py"
    assert main(["config", "show", "--config", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"config", "kind", "model", "darth", "tracker", "data", "ignored"}
    assert shown["darth"]["img_scale"] == [1088, 1088] and shown["model"]["test_scale"] == [1088, 1088]
    assert main(["config", "show", "--config", str(path)]) == 0
    text = capsys.readouterr().out
    assert "[darth]" in text and "conf_thr = 0.7" in text and "[ignored]" in text


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory):
    """What `convert-mmtrack` makes of an mmtrack QDTrack checkpoint: the shared reference generator's well-
    conditioned weights (random weights give huge boxes whose adaptive RoIAlign takes minutes on a CPU)."""
    import importlib.util

    import torch

    from darth_ray.models.convert_mmtrack import convert_mmtrack_checkpoint

    generator = CONFIGS.parent / "qdtrack-reference" / "make_mmtrack_ckpt.py"
    spec = importlib.util.spec_from_file_location("make_mmtrack_ckpt", generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d = tmp_path_factory.mktemp("r50")
    torch.save({"state_dict": module.state_dict()}, d / "qdtrack.pth")
    return convert_mmtrack_checkpoint(d / "qdtrack.pth", d / "qdtrack.pt")


def test_every_adapter_config_builds_a_darth_config():
    from darth_ray.adapt.config import DarthConfig

    built = 0
    for path in sorted(ADAPTERS.glob("*.py")):
        try:
            resolved = read_config(path)
        except InputError:
            continue
        config = DarthConfig.from_dict(resolved.darth)
        assert config.conf_thr == 0.7 and config.img_scale == (1088, 1088) and config.scale_to_batch
        built += 1
    assert built >= 5


def test_adapt_config_must_describe_the_source_model(tiny):
    from darth_ray.mmconfig import darth_settings

    with pytest.raises(InputError) as e:
        darth_settings(ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py", tiny / "source.pt")
    assert "depth: 50 in the config, 18 in the checkpoint" in str(e.value)
    assert "input_bgr: True in the config, False in the checkpoint" in str(e.value)


def test_adapt_runs_what_the_config_file_describes(tiny, tmp_path, r50_checkpoint):
    import shutil

    # one tiny night sequence cut to 2 frames, without labels: one DARTH step of r50_fpn, no tracking
    sequence = sorted((tiny / "bench" / "night" / "val").iterdir())[0]
    target = tmp_path / "target" / sequence.name
    shutil.copytree(sequence, target, ignore=shutil.ignore_patterns("gt", "00000003.*", "00000004.*", "00000005.*",
                                                                     "00000006.*"))
    ini = target / "seqinfo.ini"
    ini.write_text(ini.read_text().replace("seqLength=6", "seqLength=2"))
    target = target.parent
    out = tmp_path / "out"
    config = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"
    argv = ["adapt", "--config", str(config), "--source", str(r50_checkpoint), "--target", str(target),
            "--out", str(out), "--epochs", "1", "--img-scale", "64", "64", "--frame-size", "96", "64", "-q"]
    assert main(argv) == 0
    run = json.loads((out / "darth_run.json").read_text())["provenance"]
    # from the file
    assert (run["conf_thr"], run["ema_momentum"], run["lr"], run["lr_steps"]) == (0.7, 0.002, 0.002, [3])
    assert (run["photometric_prob"], run["brightness_delta"], run["scale_range"]) == (0.5, 32.0, [0.8, 1.2])
    assert run["classes"] == ["pedestrian"]
    # the command line wins
    assert (run["epochs"], run["img_scale"], run["frame_size"]) == (1, [64, 64], [96, 64])
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["epoch"] == 0  # 2 frames, 2 per step, 1 epoch

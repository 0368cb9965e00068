"""`darth-ray train-source --config FILE`: the authors' QDTrack source-training config drives source training
(model, classes, optimiser, schedule, loss weights, views); command-line options override it."""
import json

import pytest
import torch

from darth_ray.cli import main
from test_mmconfig import ADAPTERS, CONFIGS, SOURCE

needs_configs = pytest.mark.skipif(not CONFIGS.is_dir(),
                                   reason="the authors' configs (shared/darth-configs) are absent")
DANCETRACK = SOURCE / "qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"


@needs_configs
def test_train_source_runs_what_the_config_file_describes(tiny, tmp_path):
    out = tmp_path / "src"
    # r50_fpn on 64x64 views, 2 steps: seconds on a CPU
    argv = ["train-source", "--config", str(DANCETRACK), "--data", str(tiny / "bench" / "source"), "--split",
            "train", "--out", str(out), "--max-steps", "2", "--img-scale", "64", "64", "--batch-size", "1",
            "--lr", "0.001", "--threads", "1", "-q"]
    assert main(argv) == 0
    run = json.loads((out / "darth_run.json").read_text())["provenance"]
    # from the file
    assert (run["epochs"], run["lr_drop_at"], run["momentum"], run["weight_decay"]) == (4, [0.75], 0.9, 1e-4)
    assert (run["warmup_steps"], run["grad_clip"], run["frame_range"], run["flip_prob"]) == (0, 35.0, 10, 0.5)
    assert (run["photometric_prob"], run["scale_range"]) == (0.5, [0.8, 1.2])
    assert (run["loss_track_weight"], run["loss_track_aux_weight"]) == (0.25, 1.0)
    assert run["classes"] == ["pedestrian"] and run["model"] == "r50_fpn"
    model = run["model_config"]
    assert (model["depth"], model["caffe_style"], model["frozen_stages"], model["test_scale"]) == (50, True, 1,
                                                                                                  [1088, 1088])
    # the command line wins
    assert (run["img_scale"], run["lr"], run["batch_size"], run["max_steps"]) == ([64, 64], 0.001, 1, 2)
    checkpoint = torch.load(out / "final.pt", weights_only=True)
    assert checkpoint["model_config"]["depth"] == 50 and checkpoint["classes"] == ["pedestrian"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["loss_track_aux"] > 0


@needs_configs
def test_train_source_config_errors_are_one_line_naming_the_file(tiny, tmp_path, capsys):
    data = ["--data", str(tiny / "bench" / "source"), "--split", "train", "--max-steps", "1", "-q"]
    adapter = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"
    assert main(["train-source", "--config", str(adapter), "--out", str(tmp_path / "a"), *data]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"darth-ray train-source: error: {adapter}: is a darth adapter config")
    assert len(err.strip().splitlines()) == 1
    shift = SOURCE / "qdtrack_faster-rcnn_r50_fpn_6e_shift_track.py"  # flips key and reference independently
    assert main(["train-source", "--config", str(shift), "--out", str(tmp_path / "b"), *data]) == 2
    err = capsys.readouterr().err
    assert str(shift) in err and "data.train.pipeline.3.share_params=False" in err
    assert not (tmp_path / "a" / "final.pt").exists() and not (tmp_path / "b" / "final.pt").exists()


def test_pair_views_share_scale_and_flip_crop_on_their_own_and_keep_boxes_unclipped(tiny):
    from darth_ray.data.mot import load_sequences
    from darth_ray.source_training import SourceTrainConfig, _load_pair_batch, _pair_geometries

    cfg = SourceTrainConfig(img_scale=(64, 64), scale_range=(1.5, 1.5), flip_prob=0.5)
    key, ref = _pair_geometries([0.9, 0.3, 0.0, 0.0, 0.99, 0.0], (64, 96), cfg)
    # 64 x 1.5 = 96: the 96x64 frame keeps its size, and each frame is cropped to 64x64 at its own offset
    assert (key.scaled_h, key.scaled_w, key.out_h, key.out_w) == (ref.scaled_h, ref.scaled_w, ref.out_h,
                                                                    ref.out_w) == (64, 96, 64, 64)
    assert not key.flip and not ref.flip and (key.crop_x, ref.crop_x) == (0, 32)
    assert _pair_geometries([0.1, 0.3, 0.0, 0.0, 0.99, 0.0], (64, 96), cfg)[1].flip  # one flip for both

    seq = load_sequences(tiny / "bench" / "source", split="train")[0]
    images, sizes, targets = _load_pair_batch({seq.name: seq}, [(seq.name, 1, 2)], [False], [None], [(key, ref)])
    assert images.shape == (2, 3, 64, 64) and sizes == [(64, 64), (64, 64)]
    assert torch.equal(images[0], seq.load_image(1)[:, :, :64])  # the key frame's left 64 columns
    assert torch.equal(images[1], seq.load_image(2)[:, :, 32:])
    frame = torch.as_tensor(seq.targets(1)["boxes"], dtype=torch.float32).reshape(-1, 4)
    assert torch.equal(targets[0]["boxes"], frame)  # crop at x=0: every box as it was, past the crop or not
    shifted = torch.as_tensor(seq.targets(2)["boxes"], dtype=torch.float32).reshape(-1, 4) - torch.tensor(
        [32.0, 0.0, 32.0, 0.0])
    assert torch.equal(targets[1]["boxes"], shifted)
    assert (frame[:, 2] > 64).any() or (shifted[:, 0] < 0).any()  # a box leaving its crop is kept, unclipped

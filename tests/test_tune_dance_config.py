"""experiments/tune_dance.py --config: the authors' DARTH config file is every trial's base configuration (the
searched knobs override it per trial, command-line options override the file); checked before Ray starts."""
import pytest
import torch

from darth_ray.distributed.tune import ExperimentConfig
from experiments import tune_dance
from test_mmconfig import ADAPTERS, CONFIGS, r50_checkpoint  # noqa: F401 - a fixture
from test_tune_dance import no_ray_start  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(not CONFIGS.is_dir(), reason="the authors' configs (shared/darth-configs) are absent")
DANCETRACK = ADAPTERS / "darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack.py"


class _Built(Exception):
    """Stops main once the ExperimentConfig is built, before Ray starts."""


def built_experiment(argv, monkeypatch):
    """The ExperimentConfig tune_dance.main builds from `argv` (Ray never starts)."""
    from darth_ray.distributed import tune

    built = []

    def capture(**fields):
        built.append(ExperimentConfig(**fields))
        raise _Built

    monkeypatch.setattr(tune, "ExperimentConfig", capture)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(_Built):
            tune_dance.main(argv)
    finally:
        torch.set_num_threads(threads)  # main uses every core
    return built[0]


def test_config_file_is_every_trials_base(tiny, tmp_path, monkeypatch, r50_checkpoint, no_ray_start):  # noqa: F811
    from darth_ray.distributed.tune import trial_param_space

    monkeypatch.chdir(tmp_path)  # main moves into --runs
    argv = ["--config", str(DANCETRACK), "--data", str(tiny / "bench" / "night"), "--split", "val", "--source",
            str(r50_checkpoint), "--runs", str(tmp_path / "runs"), "--searched", "lr", "conf_thr"]
    exp = built_experiment(argv, monkeypatch)
    darth, tracker = exp.loop.darth, exp.loop.tracker
    # the file's DARTH settings, tracker values and scales
    assert (darth.conf_thr, darth.rpn_weight, darth.roi_weight, darth.ema_momentum) == (0.7, 0.1, 0.1, 0.002)
    assert (darth.epochs, darth.lr_steps, darth.lr, darth.photometric_prob) == (4, (3,), 0.002, 0.5)
    assert (darth.img_scale, darth.frame_size, darth.scale_range) == ((1088, 1088), (1920, 1080), (0.8, 1.2))
    assert (darth.loss_track_weight, darth.loss_track_aux_weight) == (0.25, 1.0)
    assert not darth.target_bn_stats  # the embedded benchmark's settings stay out of a real experiment
    assert (tracker["init_score_thr"], tracker["memo_tracklet_frames"], tracker["match_metric"]) == (0.9, 30,
                                                                                                     "bisoftmax")
    # the searched knobs override the file per trial; the rest of the file reaches every trial
    space = trial_param_space(exp)["darth"]
    assert not isinstance(space["lr"], float) and not isinstance(space["conf_thr"], float)
    assert space["frame_size"] == (1920, 1080) and space["rpn_weight"] == 0.1
    # an option given on the command line overrides the file
    exp = built_experiment([*argv, "--epochs", "1", "--seed", "3"], monkeypatch)
    assert (exp.loop.darth.epochs, exp.loop.darth.seed, exp.loop.darth.lr_steps) == (1, 3, (3,))


def test_config_file_is_checked_before_ray_starts(tiny, tmp_path, capsys, no_ray_start):  # noqa: F811
    given = ["--data", str(tiny / "bench" / "night"), "--split", "val", "--runs", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_:  # the small tiny model is not the file's r50_fpn
        tune_dance.main(["--config", str(DANCETRACK), "--source", str(tiny / "source.pt"), *given])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --config: {DANCETRACK.resolve()}: describes another model" in err and "depth: 50 in the config" in err
    with pytest.raises(SystemExit):
        tune_dance.main(["--config", str(DANCETRACK), "--runs", str(tmp_path / "runs")])
    assert "argument --config: needs --source" in capsys.readouterr().err

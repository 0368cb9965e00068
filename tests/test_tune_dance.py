"""experiments/tune_dance.py, the Tune driver: its arguments are checked before Ray starts, and its ranking."""
import pytest

from experiments import tune_dance  # a namespace package: the repository root is on sys.path


@pytest.fixture
def no_ray_start(monkeypatch):
    """ray.init fails the test: every bad argument must be refused before Ray (and its workers) start."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


@pytest.mark.parametrize("flags, names", [
    (["--data", "{tmp}/missing"], "--data"),
    (["--split", "test"], "--split"),
    (["--source", "{tmp}/missing.pt"], "--source"),
    (["--source", "{tmp}/notes.txt"], "--source"),
    (["--source", None], "--source"),  # --data without --source
    (["--epochs", "0"], "--epochs"),
    (["--threads-per-worker", "0"], "--threads-per-worker"),
    (["--max-concurrent-trials", "0"], "--max-concurrent-trials"),
    (["--num-samples", "0"], "--num-samples"),
    (["--workers-per-trial", "0"], "--workers-per-trial"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker"),
    (["--max-failures", "-2"], "--max-failures"),
    (["--searched", "lr", "not_a_knob"], "--searched"),
])
def test_bad_arguments_stop_before_ray_with_one_line_naming_the_flag(flags, names, tiny, tmp_path, capsys,
                                                                     no_ray_start):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    given = {"--data": str(tiny / "bench" / "night"), "--split": "val", "--source": str(tiny / "source.pt"),
             "--runs": str(tmp_path / "runs")}
    flag, *values = flags
    given[flag] = [v.format(tmp=tmp_path) for v in values] if values != [None] else None
    argv = [str(x) for k, v in given.items() if v is not None for x in (k, *([v] if isinstance(v, str) else v))]
    with pytest.raises(SystemExit) as exit_:
        tune_dance.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"argument {names}" in err and "Traceback" not in err
    if flag == "--searched":
        assert "not_a_knob" in err and "aug_strength" in err  # lists the knobs it knows


def test_embedded_domain_and_split_are_checked_before_the_benchmark_is_generated(tmp_path, capsys, no_ray_start):
    for argv, flag in ((["--target-domain", "moon"], "--target-domain"), (["--split", "test"], "--split")):
        with pytest.raises(SystemExit):
            tune_dance.main([*argv, "--runs", str(tmp_path)])
        assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "benchmark").exists()


def test_embedded_trials_start_from_the_benchmark_settings():
    from darth_ray.adapt.config import DarthConfig
    from darth_ray.embedded import DARTH_SETTINGS

    embedded = tune_dance.base_darth_config(tune_dance.parse_args(["--epochs", "3", "--seed", "2"]))
    assert embedded == {**DARTH_SETTINGS, "epochs": 3, "lr_steps": (2,), "seed": 2}
    assert DarthConfig.from_dict(embedded).target_bn_stats is True
    own_data = tune_dance.base_darth_config(tune_dance.parse_args(["--data", "/data/DanceTrack", "--epochs", "3"]))
    assert "target_bn_stats" not in own_data and own_data["epochs"] == 3  # published defaults on real data


def test_a_bad_sampler_range_stops_before_ray_naming_the_knob(tiny, tmp_path, capsys, no_ray_start, monkeypatch):
    from ray import tune

    monkeypatch.chdir(tmp_path)  # main moves into --runs
    monkeypatch.setitem(tune_dance.SEARCH_SPACE["darth"], "conf_thr", tune.uniform(0.5, 1.5))
    argv = ["--data", str(tiny / "bench" / "night"), "--split", "val", "--source", str(tiny / "source.pt"),
            "--runs", str(tmp_path / "runs"), "--searched", "lr", "conf_thr"]
    assert tune_dance.main(argv) == 2
    assert capsys.readouterr().err == ("error: search space darth.conf_thr: 1.5 is out of range: invalid DarthConfig: "
                                       "conf_thr must be in [0, 1], got 1.5\n")

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


def coco_argv(root, tmp_path, **flags) -> list[str]:
    """tune_dance arguments for the two-class COCO-video night domain, `flags` replacing ({"--x": None} drops one)."""
    given = {"--data": str(root / "bench" / "night" / "annotations" / "val_cocofmt.json"),
             "--images": str(root / "bench" / "night" / "val"), "--source": str(root / "source.pt"),
             "--runs": str(tmp_path / "runs"), **flags}
    return [x for k, v in given.items() if v is not None for x in (k, *([v] if isinstance(v, str) else v))]


@pytest.mark.parametrize("flags, name, message", [
    ({"--images": None}, "--data", "no image root was given"),
    ({"--images": "{tmp}/missing"}, "--images", "not a directory"),
    ({"--classes": ["pedestrian", "car"]}, "--data", "class 'car' is not a category of this dataset"),
    ({"--class-map": "person=human"}, "--data", "class_map maps 'person'"),
    ({"--split": "val"}, "--split", "no 'val' split in"),
    ({"--classes": "pedestrian"}, "--source", "the model has 2 classes, the target data 1 (pedestrian)"),
    ({"--select-by": "bogus"}, "--select-by/--metric", "invalid choice: 'bogus' (choose from 'HOTA', 'mHOTA', "
     "'lf_agreement', 'lf_stability', 'lf_confidence', 'lf_long_tracks')"),
    ({"--class-map": "pedestrian"}, "--class-map", "expected MODEL_CLASS=DATASET_CATEGORY"),
    # a MOTChallenge folder has one class, pedestrian
    ({"--data": "{bench}/night", "--split": "val", "--images": None, "--classes": "ball"}, "--data",
     "class 'ball' is not a category of this dataset: ['pedestrian']"),
    # the embedded benchmark is MOTChallenge folders of pedestrians
    ({"--data": None, "--images": None, "--classes": "pedestrian"}, "--classes", "only with --data"),
])
def test_bad_dataset_options_stop_before_ray_with_one_line_naming_the_flag(flags, name, message, tiny_two_classes,
                                                                           tmp_path, capsys, no_ray_start):
    paths = {"tmp": tmp_path, "bench": tiny_two_classes / "bench"}
    flags = {k: [x.format(**paths) for x in v] if isinstance(v, list) else v and v.format(**paths)
             for k, v in flags.items()}
    with pytest.raises(SystemExit) as exit_:
        tune_dance.main(coco_argv(tiny_two_classes, tmp_path, **flags))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"argument {name}: " in err and message in err and "Traceback" not in err, err


def test_a_coco_video_target_and_its_metric_reach_the_experiment(tiny_two_classes, tmp_path, monkeypatch):
    import ray

    import darth_ray.distributed.tune as tune_module

    started = {}
    monkeypatch.chdir(tmp_path)  # main moves into --runs
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    monkeypatch.setattr(tune_module, "run_experiment", lambda exp, resume: started.update(exp=exp) or "grid")
    monkeypatch.setattr(tune_dance, "report", lambda grid, exp: 0)
    argv = coco_argv(tiny_two_classes, tmp_path, **{"--classes": ["pedestrian", "ball"], "--metric": "mHOTA",
                                                    "--class-map": "pedestrian=pedestrian",
                                                    "--address": "ray://nowhere", "--max-concurrent-trials": "1"})
    assert tune_dance.main(argv) == 0
    exp = started["exp"]
    assert exp.metric == "mHOTA" and exp.name == "darth-val_cocofmt"
    night = tiny_two_classes / "bench" / "night"
    assert (exp.loop.target, exp.loop.split) == (str(night / "annotations" / "val_cocofmt.json"), None)
    assert exp.loop.images == str(night / "val") and exp.loop.classes == ("pedestrian", "ball")
    assert exp.loop.class_map == {"pedestrian": "pedestrian"}
    sequences, names = exp.loop.load_target()  # what each trial's workers read
    assert names == ["pedestrian", "ball"] and [s.name for s in sequences] == ["synth-val-01"]


class FakeResult:
    """What trial_row reads of a ray.tune.Result."""

    def __init__(self, path, metrics):
        self.path, self.metrics, self.error = str(path), metrics, None
        self.config = {"darth": {"lr": metrics["lr"]}}


def experiment_of(tmp_path, metric: str, scores: dict[str, dict]):
    """An ExperimentConfig ranking by `metric` and the results of its trials, {trial: its last evaluation}, as
    Tune returns them and wrote them under tmp_path/exp."""
    import json

    from ray import tune

    from darth_ray.distributed.tune import ExperimentConfig
    from darth_ray.distributed.train import TrainLoopConfig

    source = tmp_path / "source.pt"
    source.write_bytes(b"")
    exp = ExperimentConfig(name="exp", storage_path=str(tmp_path), metric=metric,
                           loop=TrainLoopConfig(source=str(source), target=str(tmp_path)),
                           search_space={"darth": {"lr": tune.loguniform(1e-3, 2e-3)}})
    grid = []
    for name, s in scores.items():
        metrics = {**{k: 1.0 for k in ("DetA", "AssA", "MOTA", "IDF1", "mMOTA", "mIDF1")}, **s,
                   f"best_{metric}": s[metric], "epoch": 1, "trial_id": name}
        (tmp_path / "exp" / name).mkdir(parents=True)
        (tmp_path / "exp" / name / "result.json").write_text(json.dumps({**metrics, "config": {"lr": s["lr"]}}))
        grid.append(FakeResult(tmp_path / "exp" / name, metrics))
    return exp, grid


def test_trials_are_ranked_by_the_experiment_metric(tmp_path, capsys):
    import json

    # a has the better HOTA, b the better mean over classes
    scores = {"a": {"HOTA": 40.0, "mHOTA": 20.0, "lr": 1e-3}, "b": {"HOTA": 30.0, "mHOTA": 25.0, "lr": 2e-3}}
    exp, grid = experiment_of(tmp_path, "mHOTA", scores)
    assert tune_dance.report(grid, exp) == 0
    best = json.loads((tmp_path / "exp" / "best.json").read_text())
    assert [(r["trial"], r["mHOTA"], r["HOTA"]) for r in best] == [("b", 25.0, 30.0), ("a", 20.0, 40.0)]
    out = capsys.readouterr().out
    assert "best trials of exp (by mHOTA):\n1. b: mHOTA 25.00  mMOTA 1.00" in out
    page = (tmp_path / "exp" / "report.html").read_text()
    assert "best: b, mHOTA 25.00" in page and "<th>best mHOTA</th>" in page
    assert "selected with the target's labels (oracle)" in out


def test_trials_ranked_without_labels_and_each_scores_correlation_with_hota(tmp_path, capsys):
    import json

    # by lf_agreement b, c, a; by HOTA a, b, c: rank differences 2, 1, 1 -> Spearman 1 - 6 x 6 / (3 x 8) = -0.5
    scores = {"a": {"HOTA": 40.0, "lf_agreement": 0.5, "lr": 1e-3},
              "b": {"HOTA": 30.0, "lf_agreement": 0.7, "lr": 2e-3},
              "c": {"HOTA": 20.0, "lf_agreement": 0.6, "lr": 1.5e-3}}
    exp, grid = experiment_of(tmp_path, "lf_agreement", scores)
    assert tune_dance.report(grid, exp) == 0
    best = json.loads((tmp_path / "exp" / "best.json").read_text())
    assert [(r["trial"], r["lf_agreement"], r["HOTA"]) for r in best] == [("b", 0.7, 30.0), ("c", 0.6, 20.0),
                                                                         ("a", 0.5, 40.0)]
    out = capsys.readouterr().out
    assert "best trials of exp (by lf_agreement):\n1. b: lf_agreement 0.70  HOTA 30.00" in out
    assert "selected without labels" in out and "lf_agreement     -0.50 (3 trials)" in out
    correlation = json.loads((tmp_path / "exp" / "label_free.json").read_text())["lf_agreement"]
    assert correlation == {"spearman": pytest.approx(-0.5), "trials": 3}


def test_a_dataset_root_without_split_is_read_at_its_val_split(tiny, tmp_path):
    parser = tune_dance.build_parser()
    args = parser.parse_args(["--data", str(tiny / "bench" / "night"), "--source", str(tiny / "source.pt"),
                              "--runs", str(tmp_path)])
    tune_dance.check_inputs(parser, args)
    assert args.split == "val"


def test_repeats_are_ranked_by_their_mean_and_need_fifo(tmp_path, capsys, no_ray_start):
    rows = [{"trial": t, "HOTA": h, "config": {"lr": lr}, "error": e}
            for t, h, lr, e in (("a", 60.0, 0.1, None), ("b", 64.0, 0.1, None), ("c", 61.0, 0.2, None),
                                ("d", None, 0.2, "diverged"), ("e", 70.0, 0.3, "diverged"))]
    ranked = tune_dance.rank_configurations(rows, "HOTA")
    assert [(g["config"], g["mean"], g["n"], g["trials"]) for g in ranked] == [
        ({"lr": 0.1}, 62.0, 2, ["a", "b"]), ({"lr": 0.2}, 61.0, 1, ["c"])]
    assert ranked[0]["std"] == pytest.approx(8 ** 0.5) and ranked[1]["std"] == 0.0
    with pytest.raises(SystemExit):  # before the benchmark and the source model are made
        tune_dance.main(["--repeats", "2", "--runs", str(tmp_path / "runs")])
    assert "argument --repeats: needs --scheduler fifo" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_protocol_and_reset_reach_every_trial_and_bad_combinations_stop_first(tmp_path, capsys, no_ray_start):
    args = tune_dance.parse_args(["--protocol", "online", "--reset", "episodic"])
    assert {k: tune_dance.base_darth_config(args)[k] for k in ("protocol", "reset")} == {
        "protocol": "online", "reset": "episodic"}
    for argv, message in ((["--protocol", "online"], "the online protocol needs reset"),
                          (["--protocol", "online", "--reset", "continual", "--workers-per-trial", "2"],
                           "it runs on 1 worker, not 2")):
        with pytest.raises(SystemExit):
            tune_dance.main([*argv, "--runs", str(tmp_path / "runs")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()

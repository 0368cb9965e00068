"""The command line on the paper's dataset formats: the real BDD100K sample (../shared/real-data)."""
import json
from pathlib import Path

import pytest

from darth_ray.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "bdd100k-sample"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="the real BDD100K sample (shared/real-data) is absent")


@pytest.mark.parametrize("gt", ["labels", "annotations/box_track_debug_cocofmt.json"])
def test_evaluate_ground_truth_against_itself_per_class(gt, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--gt", str(SAMPLE / gt), "--results", str(SAMPLE / "labels"), "--json", str(out)]
    if gt.endswith(".json"):
        argv += ["--images", str(SAMPLE / "images")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "mHOTA" in text and "timeofday=night" in text
    metrics = json.loads(out.read_text())
    assert metrics["COMBINED"]["HOTA"] == pytest.approx(100.0)
    assert metrics["COMBINED"]["mHOTA"] == pytest.approx(100.0)
    assert {"car", "AVERAGE"} <= set(metrics["CLASSES"])
    assert all(row["HOTA"] == pytest.approx(100.0) for row in metrics["CLASSES"].values())


def test_evaluate_keeps_only_the_classes_asked_for(tmp_path):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--gt", str(SAMPLE / "labels"), "--results", str(SAMPLE / "labels"),
                 "--classes", "car", "truck", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["CLASSES"]) <= {"car", "truck", "AVERAGE"}


def test_bad_class_map_names_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--gt", str(SAMPLE / "labels"), "--results", str(SAMPLE / "labels"), "--class-map", "car"])
    assert e.value.code == 2
    assert "--class-map" in capsys.readouterr().err


def test_train_source_takes_the_dataset_options(tmp_path):
    """--images/--classes/--class-map reach the reader and the run's provenance (a resume with another choice is
    refused); an unknown class in --class-map is an error naming it, before any training."""
    coco = SAMPLE / "annotations" / "box_track_debug_cocofmt.json"
    out = tmp_path / "src"
    data = ["--data", str(coco), "--images", str(SAMPLE / "images"), "--classes", "person", "car"]
    run_args = ["--max-steps", "1", "--model", "small", "-q"]
    assert main(["train-source", *data, "--class-map", "person=pedestrian", "--out", str(out), *run_args]) == 0
    run = json.loads((out / "darth_run.json").read_text())["provenance"]
    assert run["classes"] == ["person", "car"] and run["class_map"] == {"person": "pedestrian"}
    import torch

    assert torch.load(out / "final.pt", weights_only=True)["model_config"]["num_classes"] == 2
    bad = ["train-source", *data, "--class-map", "rider=cyclist", "--out", str(tmp_path / "bad"), *run_args]
    assert main(bad) == 2 and not (tmp_path / "bad" / "final.pt").exists()

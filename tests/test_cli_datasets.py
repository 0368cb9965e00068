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

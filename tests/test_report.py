"""The Tune experiment report (darth_ray/eval/report.py), read from a Tune experiment folder built by hand the way
Tune writes it: trial folders with result.json, or progress.csv and params.json; error.txt; best.json."""
from __future__ import annotations

import json
import math
import re
import urllib.parse

import pytest

from darth_ray.eval.report import metrics_table, read_trials, write_experiment_report
from darth_ray.io import InputError

PNG = b"\x89PNG\r\n\x1a\n"


def result(epoch: int, hota: float, config: dict, **extra) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "HOTA": hota, "DetA": hota + 1, "AssA": hota - 1, "MOTA": hota,
            "IDF1": hota, "IDSW": 2, "trial_id": extra.pop("trial_id"), "config": config, **extra}


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "runs" / "tune" / "night"
    # trial a: result.json; evaluated at epochs 1 and 2, the results between them repeat the latest evaluation;
    # its checkpoint (from Ray Train, outside the trial folder) holds the best evaluation's video and metrics
    checkpoint = exp / "train" / "a" / "checkpoint_000003"
    (checkpoint / "videos").mkdir(parents=True)
    (checkpoint / "videos" / "synth-val-01.mp4").write_bytes(b"video")
    (checkpoint / "videos" / "metrics.json").write_text("{}")
    config_a = {"lr": 0.001, "conf_thr": 0.6, "views": "geometric"}
    rows = [result(0, math.nan, config_a, trial_id="a"), result(1, 40.0, config_a, trial_id="a"),
            result(1, 40.0, config_a, trial_id="a"), result(2, 61.5, config_a, trial_id="a",
                                                           checkpoint_path=str(checkpoint))]
    (exp / "trial_a_0").mkdir(parents=True)
    (exp / "trial_a_0" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (exp / "trial_a_0" / "progress.csv").write_text("epoch,HOTA\n")
    # trial b: progress.csv and params.json only, its video in its own folder
    (exp / "trial_b_1" / "videos").mkdir(parents=True)
    (exp / "trial_b_1" / "videos" / "synth-val-01.gif").write_bytes(b"gif")
    (exp / "trial_b_1" / "params.json").write_text(json.dumps({"lr": 0.004, "conf_thr": 0.8, "views": "geometric"}))
    (exp / "trial_b_1" / "progress.csv").write_text("epoch,HOTA,DetA,AssA,MOTA,IDF1,IDSW,trial_id\n"
                                                    "0,nan,nan,nan,nan,nan,nan,b\n1,50.25,51,49,50,50,3,b\n")
    # trial c: never evaluated, failed
    (exp / "trial_c_2").mkdir()
    (exp / "trial_c_2" / "result.json").write_text(json.dumps(result(0, math.nan, {"lr": 0.01, "conf_thr": 0.5},
                                                                     trial_id="c")) + "\n")
    (exp / "trial_c_2" / "error.txt").write_text("Traceback ...\nFloatingPointError: non-finite DARTH loss\n")
    (exp / "best.json").write_text("[]")
    return exp


def test_report_and_summary_of_an_experiment(experiment):
    report = write_experiment_report(experiment)
    assert report == experiment / "report.html"
    assert (experiment / "summary.png").read_bytes()[:8] == PNG and (experiment / "summary.png").stat().st_size > 5000
    page = report.read_text()
    assert "<script" not in page and "http" not in page  # opens offline
    hrefs = re.findall(r'(?:href|src)="([^"]+)"', page)
    for href in hrefs:  # every link is relative and leads to a file or folder of the experiment
        assert (experiment / urllib.parse.unquote(href)).exists(), href
    for target in ("train/a/checkpoint_000003", "train/a/checkpoint_000003/videos/synth-val-01.mp4",
                   "train/a/checkpoint_000003/videos/metrics.json", "trial_a_0/result.json",
                   "trial_b_1/videos/synth-val-01.gif", "trial_b_1/progress.csv", "summary.png", "best.json"):
        assert target in hrefs, target
    body = page[page.index("<table>"):]
    assert body.index(">a</a>") < body.index(">b</a>") < body.index(">c</a>")  # ranked by best HOTA
    assert "best: a, HOTA 61.50" in page and "3 trials, 2 evaluated" in page
    assert "FloatingPointError: non-finite DARTH loss" in page
    assert "<th>lr</th>" in body and "<th>conf_thr</th>" in body and "<th>views</th>" not in body  # searched only


def test_trials_read_as_tune_wrote_them(experiment):
    a, b, c = read_trials(experiment)
    assert (a.name, b.name, c.name) == ("a", "b", "c")
    assert {e: r["HOTA"] for e, r in a.evaluations.items()} == {1: 40.0, 2: 61.5}
    assert b.best_hota == 50.25 and b.last_evaluation["IDSW"] == 3 and b.config["lr"] == 0.004
    assert c.best_hota is None and c.error == "FloatingPointError: non-finite DARTH loss"


def test_a_pbt_trial_keeps_the_epochs_its_result_json_lost(tmp_path):
    # Tune rewrites a trial's result.json when PBT exploits it (the rows before are gone); progress.csv keeps them
    config = {"lr": 0.002, "conf_thr": 0.7}
    trial = tmp_path / "trial_d_3"
    trial.mkdir()
    trial.joinpath("result.json").write_text("".join(json.dumps(result(e, 60.0 + e, config, trial_id="d",
                                                                        evaluated=True)) + "\n" for e in (3, 4)))
    trial.joinpath("progress.csv").write_text("epoch,HOTA,evaluated,trial_id\n" + "".join(
        f"{e},{60.0 + e},True,d\n" for e in (1, 2, 3, 4)))
    (d,) = read_trials(tmp_path)
    assert sorted(d.evaluations) == [1, 2, 3, 4] and d.results[0]["evaluated"] is True
    assert d.config == config and d.best_hota == 64.0


def test_bad_experiment_folders_are_named(experiment, tmp_path):
    with open(experiment / "trial_a_0" / "result.json", "a") as f:
        f.write('{"epoch": 3, "HOTA": \n')
    with pytest.raises(InputError, match=r"trial_a_0/result.json:5: not a JSON line"):
        write_experiment_report(experiment)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Tune trials here"):
        write_experiment_report(tmp_path / "empty")


def test_metrics_table_has_a_row_per_sequence():
    row = {"HOTA": 50.0, "DetA": 51.0, "AssA": 49.0, "MOTA": 40.0, "IDF1": 45.0, "IDSW": 7}
    columns, rows = metrics_table({"seq-1": row, "COMBINED": row, "CLASSES": {"pedestrian": row}})
    assert columns == ["sequence", "HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW"]
    assert rows == [["seq-1", 50.0, 51.0, 49.0, 40.0, 45.0, 7], ["COMBINED", 50.0, 51.0, 49.0, 40.0, 45.0, 7]]

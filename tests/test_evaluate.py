"""The evaluator against published reference values, TrackEval's own file-based pipeline, and bad input."""
import json
import shutil
from pathlib import Path

import motmetrics
import numpy as np
import pytest

from darth_ray.cli import main
from darth_ray.data.mot import SeqInfo, read_mot_file
from darth_ray.eval.metrics import COMBINED, evaluate, format_table

TUD = Path(motmetrics.__file__).parent / "data"
SEQS = ["TUD-Campus", "TUD-Stadtmitte"]


@pytest.fixture
def tud(tmp_path):
    """motmetrics' sample MOT15 sequences (real data) laid out as a MOTChallenge split."""
    for name in SEQS:
        gt = read_mot_file(TUD / name / "gt.txt")
        d = tmp_path / "gt" / name
        (d / "gt").mkdir(parents=True)
        shutil.copy(TUD / name / "gt.txt", d / "gt" / "gt.txt")
        (d / "seqinfo.ini").write_text(SeqInfo(name, "img1", 25, int(gt.frames.max()), 640, 480, ".jpg").to_ini())
        (tmp_path / "res").mkdir(exist_ok=True)
        shutil.copy(TUD / name / "test.txt", tmp_path / "res" / f"{name}.txt")
    return tmp_path


def test_reproduces_motchallenge_devkit_reference_values(tud):
    # Reference values from motmetrics' test_motchallenge_files (computed with the MOTChallenge devkit).
    m = evaluate(tud / "gt", tud / "res")
    expected = {  # IDF1, IDP, IDR, recall, precision, MT, ML, FP, FN, IDSW, Frag, MOTA
        "TUD-Campus": (0.557659, 0.729730, 0.451253, 0.582173, 0.941441, 1, 1, 13, 150, 7, 7, 0.526462),
        "TUD-Stadtmitte": (0.644619, 0.819760, 0.531142, 0.608997, 0.939920, 5, 1, 45, 452, 7, 6, 0.564014),
        COMBINED: (0.624296, 0.799176, 0.512211, 0.602640, 0.940268, 6, 2, 58, 602, 14, 13, 0.555116),
    }
    for name, (idf1, idp, idr, rec, prec, mt, ml, fp, fn, idsw, frag, mota) in expected.items():
        r = m[name]
        np.testing.assert_allclose([r["IDF1"], r["IDP"], r["IDR"], r["Recall"], r["Precision"], r["MOTA"]],
                                   np.array([idf1, idp, idr, rec, prec, mota]) * 100, atol=1e-3)
        assert (r["MT"], r["ML"], r["FP"], r["FN"], r["IDSW"], r["Frag"]) == (mt, ml, fp, fn, idsw, frag)


def test_hota_matches_trackeval_file_pipeline(tud, tmp_path):
    """Our in-memory preprocessing + HOTA equals TrackEval's own MotChallenge2DBox run on the same files."""
    import trackeval

    bench = tmp_path / "te"
    for name in SEQS:
        shutil.copytree(tud / "gt" / name, bench / "gt" / "MOT15-train" / name)
        (bench / "tr" / "MOT15-train" / "ours" / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(tud / "res" / f"{name}.txt", bench / "tr" / "MOT15-train" / "ours" / "data" / f"{name}.txt")
    (bench / "seqmap.txt").write_text("name\n" + "\n".join(SEQS) + "\n")
    eval_cfg = {**trackeval.Evaluator.get_default_eval_config(), "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "TIME_PROGRESS": False,
                "LOG_ON_ERROR": None, "USE_PARALLEL": False}
    ds_cfg = {**trackeval.datasets.MotChallenge2DBox.get_default_dataset_config(), "GT_FOLDER": str(bench / "gt"),
              "TRACKERS_FOLDER": str(bench / "tr"), "BENCHMARK": "MOT15", "SPLIT_TO_EVAL": "train",
              "SEQMAP_FILE": str(bench / "seqmap.txt"), "TRACKERS_TO_EVAL": ["ours"], "PRINT_CONFIG": False,
              "SKIP_SPLIT_FOL": False}
    out, _ = trackeval.Evaluator(eval_cfg).evaluate([trackeval.datasets.MotChallenge2DBox(ds_cfg)],
                                                    [trackeval.metrics.HOTA({"PRINT_CONFIG": False})])
    ref = out["MotChallenge2DBox"]["ours"]
    ours = evaluate(tud / "gt", tud / "res", benchmark="MOT15")
    for name in SEQS + [COMBINED]:
        te = ref["COMBINED_SEQ" if name == COMBINED else name]["pedestrian"]["HOTA"]
        for key in ("HOTA", "DetA", "AssA", "LocA"):
            assert ours[name][key] == pytest.approx(float(np.mean(te[key])) * 100, abs=1e-9), (name, key)


def test_ground_truth_against_itself_is_perfect(tud, tmp_path):
    res = tmp_path / "self"
    res.mkdir()
    for name in SEQS:
        shutil.copy(TUD / name / "gt.txt", res / f"{name}.txt")
    m = evaluate(tud / "gt", res)
    for row in m.values():
        for key in ("HOTA", "DetA", "AssA", "LocA", "MOTA", "IDF1", "Recall", "Precision"):
            assert row[key] == pytest.approx(100.0), key
        assert row["IDSW"] == row["FP"] == row["FN"] == 0


def test_mot17_distractors_and_ignored_boxes(tmp_path):
    """A tracker box on a distractor (class 7) is not a FP; conf-0 ground truth is not a miss."""
    d = tmp_path / "gt" / "MOT17-x"
    (d / "gt").mkdir(parents=True)
    (d / "seqinfo.ini").write_text(SeqInfo("MOT17-x", "img1", 30, 2, 100, 100, ".jpg").to_ini())
    (d / "gt" / "gt.txt").write_text("1,1,0,0,10,20,1,1,1\n1,2,50,50,10,20,1,7,1\n1,3,80,0,10,20,0,1,1\n"
                                     "2,1,1,0,10,20,1,1,1\n")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "MOT17-x.txt").write_text("1,5,0,0,10,20,1,-1,-1,-1\n1,6,50,50,10,20,1,-1,-1,-1\n"
                                                  "2,5,1,0,10,20,1,-1,-1,-1\n2,7,60,60,10,20,1,-1,-1,-1\n")
    r = evaluate(tmp_path / "gt", tmp_path / "res")["MOT17-x"]
    assert (r["FP"], r["FN"], r["IDSW"], r["GT_Dets"]) == (1, 0, 0, 2)   # only the box at (60,60) in frame 2
    assert r["MOTA"] == pytest.approx(50.0)


def test_cli_writes_json_and_rejects_bad_results(tud, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", "--gt", str(tud / "gt"), "--results", str(tud / "res"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {*SEQS, COMBINED} and data[COMBINED]["IDSW"] == 14
    assert "COMBINED" in capsys.readouterr().out

    (tud / "res" / "MOT17-99.txt").write_text("1,1,0,0,1,1,1,-1,-1,-1\n")
    assert main(["evaluate", "--gt", str(tud / "gt"), "--results", str(tud / "res")]) == 2
    assert "MOT17-99.txt: results for sequence 'MOT17-99', which is not in the ground truth" in capsys.readouterr().err
    (tud / "res" / "MOT17-99.txt").unlink()

    (tud / "res" / "TUD-Campus.txt").write_text("1,1,0,0,1,1,1,-1,-1,-1\n500,1,0,0,1,1,1,-1,-1,-1\n")
    assert main(["evaluate", "--gt", str(tud / "gt"), "--results", str(tud / "res")]) == 2
    assert "TUD-Campus.txt:2: frame 500 is outside 1..71" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--gt", str(tud / "gt"), "--results", str(empty)]) == 2
    assert "no result files" in capsys.readouterr().err
    (tud / "res" / "TUD-Campus.txt").unlink()
    assert main(["evaluate", "--gt", str(tud / "gt"), "--results", str(tud / "res")]) == 2
    assert "no results for 1 ground-truth sequence(s): TUD-Campus" in capsys.readouterr().err


def _write_benchmark(root: Path, gt: dict[str, list[str]], results: dict[str, list[str]], frames=10):
    for name, rows in gt.items():
        d = root / "gt" / name
        (d / "gt").mkdir(parents=True)
        (d / "seqinfo.ini").write_text(SeqInfo(name, "img1", 30, frames, 200, 100, ".jpg").to_ini())
        (d / "gt" / "gt.txt").write_text("".join(f"{r}\n" for r in rows))
    (root / "res").mkdir()
    for name, rows in results.items():
        (root / "res" / f"{name}.txt").write_text("".join(f"{r}\n" for r in rows))
    return root / "gt", root / "res"


@pytest.mark.parametrize("first, second", [(2**53, 2**53 + 1), (2**63 - 2, 2**63 - 1)])
def test_large_ids_score_like_small_ids(tmp_path, first, second):
    """A float reads 2**53 + 1 as 2**53: one gt person for two, HOTA 100 and no id switch. The tracker here
    follows gt id `first` (frames 1-5) with its own id `first` for frames 1-3, then with `second`: one switch."""
    def scores(root, a, b):
        gt = [f"{t},{a if t <= 5 else b},{10 * t},20,30,60,1,1,1" for t in range(1, 11)]
        res = [f"{t},{a if t <= 3 else b},{10 * t},20,30,60,1,-1,-1,-1" for t in range(1, 11)]
        return evaluate(*_write_benchmark(root, {"MOT17-x": gt}, {"MOT17-x": res}))

    small, large = scores(tmp_path / "small", 1, 2), scores(tmp_path / "large", first, second)
    assert small["MOT17-x"]["IDSW"] == 1 and small["MOT17-x"]["HOTA"] < 99
    assert large == small


def test_result_file_with_a_byte_order_mark(tud):
    before = evaluate(tud / "gt", tud / "res")
    path = tud / "res" / "TUD-Campus.txt"
    path.write_text("\ufeff" + path.read_text())
    assert evaluate(tud / "gt", tud / "res") == before


def test_loca_is_nan_without_true_positives(tmp_path):
    """LocA averages the IoU of true positives; TrackEval prints 100 when there are none (1e-10 / 1e-10)."""
    gt = [f"{t},1,10,20,30,60,1,1,1" for t in range(1, 11)]
    hits = [f"{t},1,12,20,30,60,1,-1,-1,-1" for t in range(1, 11)]
    misses = [f"{t},1,150,20,30,60,1,-1,-1,-1" for t in range(1, 11)]
    m = evaluate(*_write_benchmark(tmp_path, {"a": gt, "b": gt, "c": gt}, {"a": hits, "b": misses, "c": []}))
    assert np.isnan(m["b"]["LocA"]) and np.isnan(m["c"]["LocA"]) and m["b"]["HOTA"] == m["c"]["HOTA"] == 0
    assert 80 < m["a"]["LocA"] < 100 and m[COMBINED]["LocA"] == pytest.approx(m["a"]["LocA"])  # weighted by true positives
    assert "nan" in format_table(m).splitlines()[3]

    none = evaluate(*_write_benchmark(tmp_path / "none", {"b": gt}, {"b": misses}))
    assert np.isnan(none[COMBINED]["LocA"])


def test_any_dataset_entry_point_keeps_the_motchallenge_path(tud):
    """evaluate_dataset (what the CLI calls for every format) on a MOTChallenge folder: the same rows, table and JSON
    as before there were other formats, and no class or attribute tables."""
    from darth_ray.eval.metrics import evaluate_dataset, format_report

    report = evaluate_dataset(tud / "gt", tud / "res")
    expected = evaluate(tud / "gt", tud / "res")
    assert report.sequences == expected and report.to_dict() == expected
    assert report.classes == {} and report.attributes == {}
    assert format_report(report) == format_table(expected)

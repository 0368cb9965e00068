"""Multi-class evaluation as BDD100K scores it (per class, class-averaged, per video attribute, crowd regions),
against TrackEval's own BDD100K dataset class, and the multi-class result files (MOTChallenge text, Scalabel JSON)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from darth_ray.data.dataset import load_dataset
from darth_ray.data.results import read_scalabel_results, results_to_tracks, write_results, write_scalabel_results
from darth_ray.eval.metrics import (AVERAGE, BY_ATTRIBUTE, BY_CLASS, COMBINED, evaluate_dataset, format_report,
                                    score_report, score_results)
from darth_ray.io import InputError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "bdd100k-sample"
if not SAMPLE.is_dir():  # the worktree layout: /work/<worktree>/tests, /work/shared
    SAMPLE = Path("/work/shared/real-data/bdd100k-sample")
COCO = SAMPLE / "annotations" / "box_track_debug_cocofmt.json"


def gt_as_results(sequences, dropped=()):
    """Every scored ground-truth box as a tracker result (labels 0-based), less the (sequence, frame) in `dropped`."""
    out = {}
    for seq in sequences:
        g = seq.gt
        keep = (g.conf != 0) & ~np.isin(g.frames, [f for s, f in dropped if s == seq.name])
        boxes = g.boxes[keep].copy()
        boxes[:, 2:] += boxes[:, :2]
        out[seq.name] = {"frames": g.frames[keep], "ids": g.ids[keep], "boxes": boxes, "scores": np.ones(keep.sum()),
                         "labels": g.classes[keep].astype(np.int64) - 1}
    return out


def write_all(out: Path, sequences, results, scalabel: bool) -> Path:
    for seq in sequences:
        if scalabel:
            write_scalabel_results(out / f"{seq.name}.json", seq, **results[seq.name])
        else:
            r = results[seq.name]
            write_results(out / f"{seq.name}.txt", r["frames"], r["ids"], r["boxes"], r["scores"], r["labels"])
    return out


@pytest.mark.parametrize("result_format", ["scalabel", "text"])
@pytest.mark.parametrize("data", [SAMPLE / "labels", COCO], ids=["scalabel", "coco_video"])
def test_ground_truth_against_itself_is_100_per_class_on_the_real_sample(tmp_path, data, result_format):
    sequences, names = load_dataset(data)
    out = write_all(tmp_path / "res", sequences, gt_as_results(sequences), result_format == "scalabel")
    report = evaluate_dataset(data, out)
    assert list(report.classes) == ["pedestrian", "car", AVERAGE]  # the classes with ground truth, in model order
    rows = [*report.classes.values(), *report.sequences.values(), *report.attributes.values()]
    for row in rows:
        for key in ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "Recall", "Precision"):
            assert row[key] == pytest.approx(100.0, abs=1e-9), key
        assert row["FP"] == row["FN"] == row["IDSW"] == 0
    assert report.classes["car"]["GT_Dets"] == 78 and report.classes[AVERAGE]["GT_Dets"] == 120
    assert report.sequences[COMBINED]["mHOTA"] == pytest.approx(100.0)
    assert {"timeofday=night", "timeofday=daytime", "weather=rainy", "scene=highway"} <= set(report.attributes)


def test_per_class_metrics_and_groups_follow_the_boxes():
    """Dropping day frames lowers pedestrian and car there, not the night video; the class mean, COMBINED and the
    attribute groups are made from the same per-class numbers."""
    sequences, _ = load_dataset(SAMPLE / "labels")
    night, day = sequences
    report = score_report(sequences, gt_as_results(sequences, dropped=[(day.name, 2), (day.name, 5)]))
    pedestrian, car = report.classes["pedestrian"], report.classes["car"]
    assert pedestrian["HOTA"] < 100 and car["HOTA"] < 100 and pedestrian["FP"] == car["FP"] == 0
    assert pedestrian["FN"] + car["FN"] == report.sequences[day.name]["FN"] == report.sequences[COMBINED]["FN"]
    for key in ("HOTA", "MOTA", "IDF1"):
        assert report.classes[AVERAGE][key] == pytest.approx((pedestrian[key] + car[key]) / 2)
        assert report.sequences[COMBINED]["m" + key] == pytest.approx(report.classes[AVERAGE][key])
    assert report.attributes["timeofday=night"] == report.sequences[night.name]
    assert report.attributes["timeofday=daytime"] == report.sequences[day.name]
    assert report.attributes["state=New York"] == report.sequences[COMBINED]
    only = score_report(sequences, gt_as_results(sequences), attributes=["timeofday"]).attributes
    assert list(only) == ["timeofday=daytime", "timeofday=night"]
    assert score_results(sequences, gt_as_results(sequences))[night.name]["HOTA"] == pytest.approx(100)
    text = format_report(report)
    assert "mHOTA" in text and "\nAVERAGE " in text and "\ntimeofday=night " in text
    data = report.to_dict()
    assert data[COMBINED] == report.sequences[COMBINED] and set(data[BY_CLASS]) == {"pedestrian", "car", AVERAGE}
    assert data[BY_ATTRIBUTE]["weather=clear"] == report.sequences[night.name]


def scalabel_video(name, boxes_per_frame, attributes=None):
    """Scalabel frames from [(id, category, (x1, y1, x2, y2), crowd), ...] per frame."""
    return [{"name": f"{name}-{f + 1:07d}.jpg", "videoName": name, "frameIndex": f, "attributes": attributes or {},
             "labels": [{"id": i, "category": c, "box2d": dict(zip(("x1", "y1", "x2", "y2"), b)),
                         "attributes": {"crowd": crowd}} for i, c, b, crowd in labels]}
            for f, labels in enumerate(boxes_per_frame)]


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_crowd_regions_of_any_class_remove_only_unmatched_tracker_boxes_mostly_inside(tmp_path):
    # One pedestrian; a crowd of cars (a chosen class) and a crowd of buses (not chosen: class 0), both ignore
    # regions for every class.
    gt = [("p", "pedestrian", (0, 0, 9, 19), False), ("cc", "car", (100, 0, 139, 39), True),
          ("bc", "bus", (200, 0, 239, 39), True)]
    write_json(tmp_path / "gt" / "v.json", scalabel_video("v", [gt]))
    (seq,), names = load_dataset(tmp_path / "gt", classes=["pedestrian", "car"])
    assert seq.gt.classes.tolist() == [1, 2, 0] and seq.gt.conf.tolist() == [1, 0, 0]

    def frame(*labels):
        return [{"name": "v-0000001.jpg", "videoName": "v", "frameIndex": 0, "labels": [
            {"id": str(k), "category": c, "box2d": dict(zip(("x1", "y1", "x2", "y2"), b)), "score": 0.9}
            for k, (c, b) in enumerate(labels)]}]

    cases = {  # tracker boxes -> (pedestrian FP, car FP)
        "pedestrian in the car crowd, car in the bus crowd": ([("pedestrian", (105, 5, 124, 34)),
                                                              ("car", (205, 5, 234, 34))], (0, 0)),
        "half inside": ([("car", (120, 0, 159, 39))], (0, 1)),  # IoA 0.5 is not more than half
        "outside": ([("car", (300, 0, 339, 39))], (0, 1)),
        "a matched pedestrian in a crowd counts": ([("pedestrian", (0, 0, 9, 19)), ("pedestrian", (0, 21, 9, 40))],
                                                   (1, 0)),
    }
    for case, (labels, (ped_fp, car_fp)) in cases.items():
        write_json(tmp_path / "res" / "v.json", frame(*labels))
        classes = evaluate_dataset(tmp_path / "gt", tmp_path / "res", classes=["pedestrian", "car"]).classes
        assert classes["pedestrian"]["FP"] == ped_fp, case
        assert classes.get("car", {"FP": 0})["FP"] == car_fp, case
        assert classes[AVERAGE]["FP"] == ped_fp  # the mean row is over classes with ground truth: pedestrian only


def perturbed_sample(tmp_path: Path, rng: np.random.Generator):
    """A copy of the real sample's labels with crowd regions (a pedestrian track marked crowd, an 'other vehicle' and
    a crowd bus, outside the chosen classes), and tracker results made from it: jittered boxes, dropped boxes, an
    id swap, cars called trucks, false positives inside and outside the crowd regions."""
    for src in sorted((SAMPLE / "labels").glob("*.json")):
        frames = json.loads(src.read_text())["frames"]
        for frame in frames:
            for label in frame["labels"]:
                if label["category"] == "pedestrian" and int(label["id"]) % 3 == 0:
                    label["attributes"]["crowd"] = True
            frame["labels"] += [{"id": "ov", "category": "other vehicle", "attributes": {},
                                 "box2d": {"x1": 600.0, "y1": 300.0, "x2": 700.0, "y2": 380.0}},
                                {"id": "bus", "category": "bus", "attributes": {"crowd": True},
                                 "box2d": {"x1": 900.0, "y1": 200.0, "x2": 1100.0, "y2": 400.0}}]
        write_json(tmp_path / "gt" / src.name, frames)
    classes = ["pedestrian", "car", "truck", "bicycle"]  # TrackEval's BDD100K wants a class of each super category
    sequences, _ = load_dataset(tmp_path / "gt", classes=classes)
    results = {}
    for seq in sequences:
        g = seq.gt
        rows = np.flatnonzero(g.conf != 0)
        rows = rows[rng.random(len(rows)) > 0.15]  # missed boxes
        boxes = g.boxes[rows] + rng.normal(0, 4, (len(rows), 4))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 2)
        ids, labels = g.ids[rows].copy(), g.classes[rows].astype(np.int64) - 1
        first, second = np.unique(ids)[:2]
        late = g.frames[rows] > 3
        was_first, was_second = late & (ids == first), late & (ids == second)
        ids[was_first], ids[was_second] = second, first  # an identity switch
        labels[(labels == 1) & (ids % 4 == 1)] = 2  # some cars called trucks
        crowd = g.boxes[g.conf == 0]
        extra = np.concatenate([crowd + rng.normal(0, 3, crowd.shape),  # inside the ignore regions
                                rng.uniform(0, 600, (10, 4)) * [2, 1, 0.1, 0.2] + [0, 0, 10, 10]])  # elsewhere
        extra_frames = np.concatenate([g.frames[g.conf == 0], rng.integers(1, seq.num_frames + 1, 10)])
        all_boxes = np.concatenate([boxes, extra])
        all_boxes[:, 2:] += all_boxes[:, :2]
        results[seq.name] = {"frames": np.concatenate([g.frames[rows], extra_frames]),
                             "ids": np.concatenate([ids, 1000 + np.arange(len(extra))]), "boxes": all_boxes,
                             "scores": rng.uniform(0.3, 1, len(all_boxes)),
                             "labels": np.concatenate([labels, rng.integers(0, len(classes), len(extra))])}
    write_all(tmp_path / "res", sequences, results, scalabel=True)
    return sequences, classes


def trackeval_frames(tracks, num_frames, classes, gt: bool):
    """TrackEval's BDD100K layout of Tracks: x2 = x + w (it reads corners without the +1); class 0 (an ignore
    region of a category outside the chosen classes) as one of its distractor categories."""
    frames = [{"index": f, "labels": []} for f in range(num_frames)]
    for f, i, (x, y, w, h), conf, c in zip(tracks.frames, tracks.ids, tracks.boxes, tracks.conf, tracks.classes):
        label = {"id": int(i), "category": classes[int(c) - 1] if c > 0 else "other vehicle",
                 "box2d": {"x1": x, "y1": y, "x2": x + w, "y2": y + h}}
        if gt:
            label["attributes"] = {"Crowd": bool(conf == 0)}
        frames[f - 1]["labels"].append(label)
    return frames


def test_per_class_metrics_match_trackeval_bdd100k_on_a_perturbed_real_sample(tmp_path):
    import trackeval

    sequences, classes = perturbed_sample(tmp_path, np.random.default_rng(0))
    ours = evaluate_dataset(tmp_path / "gt", tmp_path / "res", classes=classes)
    results = read_scalabel_results(tmp_path / "res", sequences)
    te = tmp_path / "trackeval"
    for seq in sequences:
        write_json(te / "gt" / f"{seq.name}.json", trackeval_frames(seq.gt, seq.num_frames, classes, gt=True))
        write_json(te / "trackers" / "ours" / "data" / f"{seq.name}.json",
                   trackeval_frames(results[seq.name], seq.num_frames, classes, gt=False))
    eval_cfg = {**trackeval.Evaluator.get_default_eval_config(), "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "TIME_PROGRESS": False,
                "LOG_ON_ERROR": None, "USE_PARALLEL": False}
    ds_cfg = {**trackeval.datasets.BDD100K.get_default_dataset_config(), "GT_FOLDER": str(te / "gt"),
              "TRACKERS_FOLDER": str(te / "trackers"), "CLASSES_TO_EVAL": classes, "PRINT_CONFIG": False}
    quiet = {"PRINT_CONFIG": False}
    metrics = [trackeval.metrics.HOTA(quiet), trackeval.metrics.CLEAR(quiet), trackeval.metrics.Identity(quiet)]
    out, _ = trackeval.Evaluator(eval_cfg).evaluate([trackeval.datasets.BDD100K(ds_cfg)], metrics)
    ref = out["BDD100K"]["ours"]["COMBINED_SEQ"]

    def theirs(cls):
        r = ref[cls]
        return {"HOTA": np.mean(r["HOTA"]["HOTA"]) * 100, "DetA": np.mean(r["HOTA"]["DetA"]) * 100,
                "AssA": np.mean(r["HOTA"]["AssA"]) * 100, "LocA": np.mean(r["HOTA"]["LocA"]) * 100,
                "MOTA": r["CLEAR"]["MOTA"] * 100, "IDF1": r["Identity"]["IDF1"] * 100, "IDSW": r["CLEAR"]["IDSW"],
                "FP": r["CLEAR"]["CLR_FP"], "FN": r["CLEAR"]["CLR_FN"]}

    assert set(ours.classes) == {*classes, AVERAGE}
    assert ours.classes["truck"]["GT_Dets"] == 0 and ours.classes["truck"]["FP"] > 0  # results of a class without gt
    for cls in classes:
        expected = theirs(cls)
        for key, value in expected.items():
            mine = ours.classes[cls][key]
            # Undefined here, a number there: LocA without true positives (NaN; TrackEval 100), MOTA without
            # ground truth (-inf from py-motmetrics; TrackEval divides by max(1, GT_Dets)).
            if not (key == "LocA" and math.isnan(mine) or key == "MOTA" and mine == -math.inf):
                assert mine == pytest.approx(value, abs=1e-9), (cls, key)
    for key in ("HOTA", "DetA", "AssA", "MOTA", "IDF1"):  # the mean over the classes with ground truth
        assert ours.classes[AVERAGE][key] == pytest.approx((theirs("pedestrian")[key] + theirs("car")[key]) / 2)
        assert ours.sequences[COMBINED][key] == pytest.approx(theirs("cls_comb_det_av")[key], abs=1e-9)
    assert 0 < ours.classes["car"]["HOTA"] < 95 and ours.classes["pedestrian"]["IDSW"] + ours.classes["car"]["IDSW"]

    # The ignore regions matter here: without them, more false positives
    for path in (tmp_path / "gt").glob("*.json"):
        frames = json.loads(path.read_text())
        for frame in frames:
            frame["labels"] = [label for label in frame["labels"] if label["category"] != "other vehicle"
                               and not label["attributes"].get("crowd")]
        write_json(tmp_path / "gt_without_ignore_regions" / path.name, frames)
    plain = evaluate_dataset(tmp_path / "gt_without_ignore_regions", tmp_path / "res", classes=classes)
    assert plain.sequences[COMBINED]["FP"] > ours.sequences[COMBINED]["FP"]


def test_result_files_for_several_classes(tmp_path):
    (day,) = [s for s in load_dataset(SAMPLE / "labels")[0] if s.name.startswith("b1cac6a7")]
    r = {"frames": [2, 1, 2], "ids": [1, 7, 3], "boxes": [[1, 2, 11.5, 22], [0, 0, 5, 5], [3, 3, 8, 9]],
         "scores": [0.9, 0.5, 0.25], "labels": [2, 0, 7]}
    text = write_results(tmp_path / "t.txt", **{k: v for k, v in r.items() if k != "boxes"}, boxes_xyxy=r["boxes"])
    assert text.read_text().splitlines() == ["1,7,0.00,0.00,5.00,5.00,0.5000,1,-1,-1",
                                             "2,1,1.00,2.00,10.50,20.00,0.9000,3,-1,-1",
                                             "2,3,3.00,3.00,5.00,6.00,0.2500,8,-1,-1"]
    path = write_scalabel_results(tmp_path / "s" / f"{day.name}.json", day, **r)
    frames = json.loads(path.read_text())
    assert [f["frameIndex"] for f in frames] == list(range(6)) and frames[5]["labels"] == []
    assert frames[0]["name"] == f"{day.name}-0000001.jpg" and frames[0]["videoName"] == day.name
    assert frames[1]["labels"][0] == {"id": "1", "category": "car", "score": 0.9,
                                      "box2d": {"x1": 1.0, "y1": 2.0, "x2": 10.5, "y2": 21.0}}  # inclusive corners
    assert frames[1]["labels"][1]["category"] == "bicycle"
    back = read_scalabel_results(tmp_path / "s", [day])[day.name]
    expected = results_to_tracks(**r)
    for column in ("frames", "boxes", "conf", "classes"):
        np.testing.assert_allclose(getattr(back, column), getattr(expected, column), atol=1e-9, err_msg=column)
    assert back.ids.tolist() == [1, 2, 3]  # Scalabel ids are strings: numbered per video in order of appearance
    with pytest.raises(ValueError, match="need labels"):
        write_scalabel_results(tmp_path / "x.json", day, **{k: v for k, v in r.items() if k != "labels"})
    with pytest.raises(ValueError, match="label 8 is outside 0..7"):
        write_scalabel_results(tmp_path / "x.json", day, **{**r, "labels": [0, 0, 8]})


def results_case(edit):
    frames = scalabel_video("v", [[("a", "pedestrian", (0, 0, 9, 9), False), ("b", "car", (20, 0, 29, 9), False)]] * 2)
    for frame in frames:
        for label in frame["labels"]:
            label.pop("attributes")
    edit(frames)
    return frames


RESULT_ERRORS = [
    (lambda f: f[1]["labels"][0].update(category="spaceship"),
     r"\[1\] \(video 'v'\) labels\[0\]: category 'spaceship' is not one of the evaluated classes"),
    (lambda f: f[1].update(videoName="w"), r"\[1\]: results for video 'w', which is not in the ground truth"),
    (lambda f: f[1].update(frameIndex=2), r"\[1\]: frameIndex 2 is outside 0..1 of video 'v'"),
    (lambda f: f[1].update(frameIndex=0), r"\[1\]: frame 0 of video 'v' is listed twice"),
    (lambda f: f[0]["labels"][1].update(id="a"), r"\[0\] \(video 'v'\) labels\[1\]: id 'a' appears twice in frame 0"),
    (lambda f: f[0]["labels"][1]["box2d"].update(x2=18), r"labels\[1\]: box2d has x2 < x1 - 1"),
    (lambda f: f[0]["labels"][1].update(score="high"), r"labels\[1\]: 'score' is 'high', not a number"),
]


@pytest.mark.parametrize("edit, message", RESULT_ERRORS)
def test_bad_scalabel_results_name_the_file_and_the_record(tmp_path, edit, message):
    write_json(tmp_path / "gt" / "v.json", results_case(lambda f: None))
    write_json(tmp_path / "res" / "v.json", results_case(edit))
    with pytest.raises(InputError, match=r"res/v.json: .*" + message):
        evaluate_dataset(tmp_path / "gt", tmp_path / "res", classes=["pedestrian", "car"])


def test_results_without_a_needed_class_or_a_video_are_refused(tmp_path):
    write_json(tmp_path / "gt" / "v.json", results_case(lambda f: None))
    write_json(tmp_path / "gt" / "w.json", [{**f, "videoName": "w"} for f in results_case(lambda f: None)])
    write_json(tmp_path / "res" / "v.json", results_case(lambda f: None))
    with pytest.raises(InputError, match=r"res: no results for 1 ground-truth video\(s\): w"):
        evaluate_dataset(tmp_path / "gt", tmp_path / "res")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "v.txt").write_text("1,1,0,0,10,10,0.9,1,-1,-1\n2,1,0,0,10,10,0.9,-1,-1,-1\n")
    (tmp_path / "txt" / "w.txt").write_text("")
    with pytest.raises(InputError, match=r"v.txt:2: class -1 is not one of this dataset's classes 1..8 "
                                         r"\(pedestrian, rider, .*\); results of several classes need one"):
        evaluate_dataset(tmp_path / "gt", tmp_path / "txt")
    # One class: a result file without classes means that class
    report = evaluate_dataset(tmp_path / "gt", tmp_path / "txt", classes=["pedestrian"])
    assert report.classes["pedestrian"]["GT_Dets"] == 4 and report.sequences["v"]["FP"] == 0
    with pytest.raises(ValueError, match="MOTChallenge folders only"):
        evaluate_dataset(tmp_path / "gt", tmp_path / "txt", classes=["pedestrian"], benchmark="MOT17")


def test_results_in_benchmark_categories_left_out_of_the_evaluation_are_skipped(tmp_path):
    """An 8-class BDD100K model's results, scored with --classes car: its pedestrians are not errors."""
    from darth_ray.eval.metrics import evaluate_dataset

    sample = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "bdd100k-sample" / "labels"
    if not sample.is_dir():
        pytest.skip("the real BDD100K sample is absent")
    report = evaluate_dataset(sample, sample, classes=["car"])
    assert set(report.classes) == {"car", "AVERAGE"} and report.classes["car"]["HOTA"] == pytest.approx(100.0)

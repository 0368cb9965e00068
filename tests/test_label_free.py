"""Label-free model selection (darth_ray/eval/label_free.py): each score on crafted detections and tracks, on a
sequence without ground truth, reported beside HOTA (W&B, Tune's ranking) and correlated with it in the report."""
from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from darth_ray.eval import label_free
from darth_ray.eval.label_free import (LABEL_FREE_METRICS, agreement, box_overlap, label_free_scores, sampled_frames,
                                       track_scores, view_overlaps)


def dets(*boxes, labels=None) -> dict[str, torch.Tensor]:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.long) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "labels": labels}


def test_agreement_is_one_for_identical_detections_and_lower_when_boxes_move():
    a = dets([0, 0, 10, 10], [20, 0, 30, 10])
    assert agreement(box_overlap(a, a)) == pytest.approx(1.0)
    # one box taller by a fifth: IoU 100/120; the other moved past IoU 0.5: unmatched
    moved = dets([0, 0, 10, 12], [26, 0, 36, 10])
    assert agreement(box_overlap(a, moved)) == pytest.approx(2 * (100 / 120) / 4)
    assert agreement(box_overlap(a, dets([0, 0, 10, 10]))) == pytest.approx(2 / 3)  # a box vanished
    assert agreement(box_overlap(a, dets([0, 0, 10, 10], [20, 0, 30, 10], labels=[1, 1]))) == 0.0  # other class
    assert agreement(box_overlap(dets(), dets())) == 1.0  # both see nothing


def test_track_scores_count_crafted_short_tracks():
    def tracks(ids, scores):
        return {"ids": np.array(ids), "scores": np.array(scores, dtype=float)}

    # sequence a: track 1 in 6 frames, track 2 in 2, track 3 in 5 (MIN_TRACK_FRAMES); sequence b: track 1 in 1
    results = {"a": tracks([1] * 6 + [2] * 2 + [3] * 5, [0.9] * 13), "b": tracks([1], [0.5])}
    scores = track_scores(results)
    assert scores["lf_long_tracks"] == 2 / 4
    assert scores["lf_confidence"] == pytest.approx((0.9 * 13 + 0.5) / 14)
    assert track_scores({"a": tracks([], [])}) == {"lf_confidence": 0.0, "lf_long_tracks": 0.0}
    assert set(label_free_scores(results, [])) == set(LABEL_FREE_METRICS)


class BrightBox:
    """A detector of the bright rectangle in a frame, its box shifted right by `shift` px: it sees a flipped frame
    as it sees the frame (equivariant)."""

    def __init__(self, shift: int = 0):
        self.shift = shift

    def eval(self):
        return self

    def detect(self, frames: torch.Tensor) -> list[dict]:
        out = []
        for frame in frames:
            ys, xs = torch.nonzero(frame[0] > 200, as_tuple=True)
            x1, x2 = int(xs.min()) + self.shift, int(xs.max()) + 1 + self.shift
            box = torch.tensor([[x1, int(ys.min()), x2, int(ys.max()) + 1]], dtype=torch.float32)
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])})
        return out


class FixedBox(BrightBox):
    """Always the same box, wherever the rectangle is: not equivariant."""

    def detect(self, frames):
        return [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])} for _ in frames]


class UnlabeledSequence:
    """Frames with a bright rectangle at x 20..40, y 10..30 of a 96x64 frame, and no ground truth at all."""

    name, num_frames = "unlabeled", 25

    def load_image(self, frame: int) -> torch.Tensor:
        image = torch.zeros(3, 64, 96, dtype=torch.uint8)
        image[:, 10:30, 20:40] = 255
        return image


def test_agreement_and_stability_of_crafted_detectors(monkeypatch):
    monkeypatch.setattr(label_free, "detect_and_embed", lambda model, images: model.detect(images))
    seq = UnlabeledSequence()
    same = view_overlaps(BrightBox(), BrightBox(), seq)
    assert agreement(same["lf_agreement"]) == 1.0 and agreement(same["lf_stability"]) == 1.0
    assert sampled_frames(seq.num_frames) == [1, 13, 25]  # one in ten at most
    assert same["lf_agreement"][1] == 2 * 3  # a box from each side on each
    # a reference 5 px to the right: IoU (15 x 20) / (2 x 400 - 300) = 0.6
    assert agreement(view_overlaps(BrightBox(), BrightBox(shift=5), seq)["lf_agreement"]) == pytest.approx(0.6)
    # the fixed box spans x 10..30, the one found on the mirrored frame 66..86 once flipped back: no overlap
    assert agreement(view_overlaps(FixedBox(), FixedBox(), seq)["lf_stability"]) == 0.0


def test_scores_of_a_real_model_on_a_sequence_without_ground_truth(tiny, tmp_path, monkeypatch):
    from darth_ray.data.mot import load_sequences
    from darth_ray.distributed.train import evaluate_sharded
    from darth_ray.models.qdtrack import load_checkpoint

    source = load_sequences(tiny / "bench" / "night", split="val")[0]
    copy = shutil.copytree(source.root, tmp_path / source.name, ignore=shutil.ignore_patterns("gt"))
    (copy / "seqinfo.ini").write_text((copy / "seqinfo.ini").read_text().replace("seqLength=6", "seqLength=2"))
    sequences = load_sequences(copy)
    assert not sequences[0].has_gt
    model, _ = load_checkpoint(tiny / "source.pt")
    monkeypatch.setattr(label_free, "CONFIDENT", 0.3)  # the random-init model's scores are about 0.45
    overlaps = view_overlaps(model, model, sequences[0])
    assert overlaps["lf_agreement"][1] > 0 and agreement(overlaps["lf_agreement"]) == pytest.approx(1.0)
    # as the Ray Train worker evaluates: nothing to score against, the label-free scores all the same
    _, with_labels, scores = evaluate_sharded(model, sequences, {"init_score_thr": 0.05, "obj_score_thr": 0.05},
                                              rank=0, world=1, reference=model)
    assert with_labels == {} and set(scores) == set(LABEL_FREE_METRICS)
    assert all(0.0 <= v <= 1.0 for v in scores.values()) and scores["lf_agreement"] == pytest.approx(1.0)
    assert scores["lf_confidence"] > 0.3 and scores["lf_long_tracks"] == 0.0  # 2 frames: every track is short


def test_wandb_logs_label_free_scores_beside_hota():
    from darth_ray.distributed.tune import WandbCallback

    logged = []
    callback = WandbCallback({}, "exp", "/nowhere", workers=1)
    callback._logger = lambda trial: SimpleNamespace(log_eval=lambda step, metrics: logged.append(metrics) or set())
    scores = {"HOTA": math.nan, "lf_agreement": 0.8, "lf_stability": 0.7, "lf_confidence": 0.6,
              "lf_long_tracks": 0.5}  # a target without ground truth: HOTA NaN, the scores still logged
    callback.on_trial_result(0, [], SimpleNamespace(trial_id="t"), {"step": 4, "evaluated": True, **scores})
    assert {k: logged[0][k] for k in LABEL_FREE_METRICS} == {k: scores[k] for k in LABEL_FREE_METRICS}
    assert math.isnan(logged[0]["HOTA"])


def test_tune_may_rank_by_a_label_free_score_and_nothing_else(tmp_path):
    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import ExperimentConfig

    loop = TrainLoopConfig(source=str(tmp_path / "source.pt"), target=str(tmp_path))
    for name in LABEL_FREE_METRICS:
        assert ExperimentConfig(name="e", storage_path=str(tmp_path), loop=loop, metric=name).metric == name
    with pytest.raises(ValueError, match="ExperimentConfig.metric is invalid: 'bogus'"):
        ExperimentConfig(name="e", storage_path=str(tmp_path), loop=loop, metric="bogus")


def write_trial(experiment, name: str, evaluation: dict) -> None:
    folder = experiment / f"trial_{name}"
    folder.mkdir(parents=True)
    rows = [{"epoch": 0, "HOTA": math.nan, "trial_id": name, "config": {"lr": 0.001}},
            {"epoch": 1, "trial_id": name, "config": {"lr": 0.001}, **evaluation}]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_correlates_each_label_free_score_with_hota(tmp_path):
    from darth_ray.eval.report import read_trials, write_experiment_report

    exp = tmp_path / "exp"
    hota = [10.0, 20.0, 30.0, 40.0]
    agreement_ = [0.1, 0.3, 0.2, 0.4]  # ranks 1 3 2 4 against 1 2 3 4: 1 - 6 x (0 + 1 + 1 + 0) / (4 x 15) = 0.8
    confidence = [0.9, 0.8, 0.7, 0.6]  # the reverse order: -1
    for i, name in enumerate("abcd"):
        long_tracks = {"lf_long_tracks": float(i)} if i else {}  # missing in one trial
        write_trial(exp, name, {"HOTA": hota[i], "lf_agreement": agreement_[i], "lf_stability": 0.5,
                                "lf_confidence": confidence[i], **long_tracks})
    report = write_experiment_report(exp, metric="lf_agreement")
    correlations = json.loads((exp / "label_free.json").read_text())
    assert correlations["lf_agreement"] == {"spearman": pytest.approx(0.8), "trials": 4}
    assert correlations["lf_confidence"]["spearman"] == pytest.approx(-1.0)
    assert correlations["lf_stability"] == {"spearman": None, "trials": 4}  # constant: undefined
    assert correlations["lf_long_tracks"] == {"spearman": pytest.approx(1.0), "trials": 3}
    page = report.read_text()
    assert "best: d, lf_agreement 0.40" in page and "selected without labels (label-free)" in page
    assert "<td>lf_agreement</td><td>0.8</td><td>4</td>" in page
    # a target without labels: evaluations that hold label-free scores only still count and rank
    write_trial(exp, "e", {"HOTA": math.nan, "lf_agreement": 0.9})
    assert {t.name: t.best("lf_agreement") for t in read_trials(exp)}["e"] == 0.9

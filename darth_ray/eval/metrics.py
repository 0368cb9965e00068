"""Score tracker output the way MOT papers do: HOTA, DetA, AssA, LocA from TrackEval; MOTA, IDF1, IDSW, FP, FN
from py-motmetrics (IoU 0.5), per sequence and combined (`COMBINED`, as TrackEval names it).

Both libraries see the same preprocessed boxes. The preprocessing is TrackEval's MotChallenge2DBox, done in
memory so that no file layout has to be faked: for files with classes (MOT16/17/20, DanceTrack) tracker boxes
matched (Hungarian, IoU >= 0.5) to a distractor are removed, and only pedestrian ground truth with conf != 0 is
scored; MOT15 files (class -1) keep every ground-truth row with conf != 0. Percentages are 0..100.

LocA is the mean IoU of the true positives, so with none it is undefined and reported as NaN; TrackEval prints
100 there (1e-10 / 1e-10). Like TrackEval, an alpha threshold with no true positives still counts 100 in the mean
over thresholds when some lower threshold has them, so that LocA equals TrackEval's wherever it is defined.
Ids are kept as int64 end to end (relabelled to 0..n-1 per sequence), so large ids never merge.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from darth_ray.data.mot import (DISTRACTOR_CLASSES, PEDESTRIAN, VALID_MOT17_CLASSES, Sequence, Tracks,
                                load_sequences, read_mot_file)
from darth_ray.io import InputError

log = logging.getLogger(__name__)

METRICS = ("HOTA", "DetA", "AssA", "LocA", "MOTA", "IDF1", "IDSW", "FP", "FN")
COMBINED = "COMBINED"
_EPS = np.finfo(float).eps


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of boxes given as x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    wh = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, _EPS), 0.0)


@dataclass
class SequenceData:
    """Preprocessed per-frame ids (contiguous from 0) and gt-vs-tracker IoUs: what every metric consumes."""

    gt_ids: list[np.ndarray]
    tracker_ids: list[np.ndarray]
    similarity: list[np.ndarray]
    num_gt_ids: int
    num_tracker_ids: int

    def trackeval_dict(self) -> dict:
        return {"num_timesteps": len(self.gt_ids), "num_gt_ids": self.num_gt_ids,
                "num_tracker_ids": self.num_tracker_ids,
                "num_gt_dets": int(sum(len(g) for g in self.gt_ids)),
                "num_tracker_dets": int(sum(len(t) for t in self.tracker_ids)),
                "gt_ids": self.gt_ids, "tracker_ids": self.tracker_ids, "similarity_scores": self.similarity}


BENCHMARKS = ("auto", "MOT15", "MOT17")


def preprocess(gt: Tracks, results: Tracks, num_frames: int, benchmark: str = "auto") -> SequenceData:
    """`benchmark`: MOT15 (no classes), MOT17 (classes; also MOT16/20 and DanceTrack), or auto from the file."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    mot15 = benchmark == "MOT15" or (benchmark == "auto" and gt.looks_like_mot15)
    if not mot15 and len(gt):
        bad = ~np.isin(gt.classes, VALID_MOT17_CLASSES)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(gt.path, f"class {gt.classes[i]:g} is not a MOTChallenge class (1..13); "
                                      f"for MOT15-style files evaluate with benchmark MOT15", int(gt.lines[i]))
    gt_ids, tracker_ids, similarity = [], [], []
    for t in range(1, num_frames + 1):
        g, r = gt.frame_rows(t), results.frame_rows(t)
        sim = box_iou_xywh(gt.boxes[g], results.boxes[r])
        trk = results.ids[r]
        classes, conf = gt.classes[g], gt.conf[g]
        if not mot15 and sim.size:
            match = np.where(sim < 0.5 - _EPS, 0.0, sim)
            rows, cols = linear_sum_assignment(-match)
            matched = match[rows, cols] > _EPS
            remove = cols[matched][np.isin(classes[rows[matched]], DISTRACTOR_CLASSES)]
            trk, sim = np.delete(trk, remove), np.delete(sim, remove, axis=1)
        keep = (conf != 0) if mot15 else (conf != 0) & (classes == PEDESTRIAN)
        gt_ids.append(gt.ids[g][keep])
        tracker_ids.append(trk)
        similarity.append(sim[keep])
    gt_ids, n_gt = _relabel(gt_ids)
    tracker_ids, n_trk = _relabel(tracker_ids)
    return SequenceData(gt_ids, tracker_ids, similarity, n_gt, n_trk)


def _relabel(ids_per_frame: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    unique = np.unique(np.concatenate(ids_per_frame)) if ids_per_frame else np.zeros(0, np.int64)
    return [np.searchsorted(unique, ids).astype(np.int64) for ids in ids_per_frame], len(unique)


def _hota(data: SequenceData):
    from trackeval.metrics import HOTA

    return HOTA().eval_sequence(data.trackeval_dict())


def _accumulator(data: SequenceData):
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for g, r, sim in zip(data.gt_ids, data.tracker_ids, data.similarity):
        dist = np.where(sim < 0.5, np.nan, 1.0 - sim)  # motmetrics' iou_matrix(max_iou=0.5)
        acc.update(g, r, dist)
    return acc


def _row(hota: dict, clear: dict) -> dict:
    pct = lambda v: float(np.mean(v)) * 100.0  # HOTA family: mean over TrackEval's 19 alpha thresholds
    loc_a = pct(hota["LocA"]) if hota["HOTA_TP"].any() else math.nan  # no true positive: no IoU to average
    return {"HOTA": pct(hota["HOTA"]), "DetA": pct(hota["DetA"]), "AssA": pct(hota["AssA"]),
            "LocA": loc_a, "MOTA": float(clear["mota"]) * 100.0, "IDF1": float(clear["idf1"]) * 100.0,
            "IDSW": int(clear["num_switches"]), "FP": int(clear["num_false_positives"]),
            "FN": int(clear["num_misses"]), "IDP": float(clear["idp"]) * 100.0, "IDR": float(clear["idr"]) * 100.0,
            "Recall": float(clear["recall"]) * 100.0, "Precision": float(clear["precision"]) * 100.0,
            "MT": int(clear["mostly_tracked"]), "ML": int(clear["mostly_lost"]),
            "Frag": int(clear["num_fragmentations"]), "GT_Dets": int(clear["num_objects"]),
            "GT_IDs": int(clear["num_unique_objects"])}


_CLEAR_METRICS = ["mota", "idf1", "idp", "idr", "recall", "precision", "num_switches", "num_false_positives",
                  "num_misses", "mostly_tracked", "mostly_lost", "num_fragmentations", "num_objects",
                  "num_unique_objects"]


def evaluate_pairs(pairs: dict[str, tuple[Tracks, Tracks, int]], benchmark: str = "auto") -> dict[str, dict]:
    """{seq: (gt, results, num_frames)} -> {seq: metrics, ..., COMBINED: metrics}."""
    import motmetrics as mm
    from trackeval.metrics import HOTA

    if not pairs:
        raise ValueError("nothing to evaluate")
    names = list(pairs)
    data = {name: preprocess(*pairs[name], benchmark=benchmark) for name in names}
    hota = {name: _hota(d) for name, d in data.items()}
    hota[COMBINED] = HOTA().combine_sequences(hota)
    summary = mm.metrics.create().compute_many([_accumulator(data[n]) for n in names], metrics=_CLEAR_METRICS,
                                               names=names, generate_overall=True)
    out = {name: _row(hota[name], summary.loc[name]) for name in names}
    out[COMBINED] = _row(hota[COMBINED], summary.loc["OVERALL"])
    return out


def score_results(sequences: list[Sequence], results: dict[str, dict]) -> dict[str, dict]:
    """Metrics of per-sequence result arrays ({"frames", "ids", "boxes", "scores"}), exactly as if they had been
    written with `write_results` and read back."""
    from darth_ray.data.results import results_to_tracks

    return evaluate_pairs({s.name: (s.gt, results_to_tracks(**results[s.name]), s.num_frames) for s in sequences})


def load_results(results_dir: Path, sequences: list[Sequence]) -> dict[str, Tracks]:
    """Read `<results_dir>/<seq>.txt` for every ground-truth sequence; refuse strays and an empty directory."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(results_dir, "results directory does not exist")
    files = {p.stem: p for p in results_dir.glob("*.txt")}
    if not files:
        raise InputError(results_dir, "no result files (expected one <seq>.txt per sequence)")
    known = {seq.name for seq in sequences}
    strays = sorted(set(files) - known)
    if strays:
        raise InputError(files[strays[0]], f"results for sequence '{strays[0]}', which is not in the ground truth "
                                           f"(known: {', '.join(sorted(known))})")
    missing = [seq.name for seq in sequences if seq.name not in files]
    if missing:
        raise InputError(results_dir / f"{missing[0]}.txt",
                         f"no results for {len(missing)} ground-truth sequence(s): {', '.join(missing)}")
    return {seq.name: read_mot_file(files[seq.name], seq.num_frames, kind="results") for seq in sequences}


def evaluate(gt_dir: Path, results_dir: Path, sequences: list[str] | None = None,
             benchmark: str = "auto") -> dict[str, dict]:
    """Evaluate a results directory against `gt_dir/<seq>/{gt/gt.txt, seqinfo.ini}`."""
    seqs = load_sequences(gt_dir, require_gt=True)
    if sequences is not None:
        seqs = [s for s in seqs if s.name in set(sequences)]
    results = load_results(results_dir, seqs)
    return evaluate_pairs({s.name: (s.gt, results[s.name], s.num_frames) for s in seqs}, benchmark)


def format_table(metrics: dict[str, dict], columns=METRICS) -> str:
    """A fixed-width table, one row per sequence, COMBINED last."""
    width = max(len(COMBINED), *(len(k) for k in metrics))
    head = f"{'sequence':<{width}}  " + "  ".join(f"{c:>7}" for c in columns)
    lines = [head, "-" * len(head)]
    for name, row in metrics.items():
        if name == COMBINED:
            lines.append("-" * len(head))
        cells = [f"{row[c]:7.2f}" if isinstance(row[c], float) else f"{row[c]:7d}" for c in columns]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)

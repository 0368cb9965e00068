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

Datasets read from COCO-video or Scalabel files (BDD100K, SHIFT) are scored as BDD100K scores them (TrackEval's
BDD100K class): each class on its own (ground-truth `classes` and result classes index `class_names`); every
ignore region (conf 0, of any class or none) is class-agnostic, and an unmatched tracker box more than half inside
one is removed; nothing else is. Beside the overall values (every class's boxes pooled, TrackEval's
`cls_comb_det_av`) come the per-class values and their mean, mHOTA, mMOTA and mIDF1 (`cls_comb_cls_av`, which
BDD100K reports), taken over the classes that have ground truth: on a subset of videos a class that never appears
would otherwise count as 0 (its HOTA is 0 in TrackEval). Counts (IDSW, FP, FN) in the mean row are sums, as there.
The same values per video attribute (BDD100K's weather, timeofday, scene): the videos of each value pooled.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from darth_ray.data.mot import (DISTRACTOR_CLASSES, PEDESTRIAN, VALID_MOT17_CLASSES, MotSequence, Sequence,
                                Tracks, load_sequences, read_mot_file)
from darth_ray.data.results import NO_CLASS, read_scalabel_results, results_to_tracks
from darth_ray.boxes import box_ioa_xywh, box_iou_xywh
from darth_ray.io import InputError

log = logging.getLogger(__name__)


class _QuietMotmetrics(logging.Filter):
    """py-motmetrics logs its timings (`partials: 0.03 seconds.`) as INFO on the root logger, a line per
    evaluation on every Ray worker's console; its warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "motmetrics" not in Path(record.pathname).parts


if not any(isinstance(f, _QuietMotmetrics) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_QuietMotmetrics())

METRICS = ("HOTA", "DetA", "AssA", "LocA", "MOTA", "IDF1", "IDSW", "FP", "FN")
COMBINED = "COMBINED"
AVERAGE = "AVERAGE"  # the per-class row of the mean over classes with ground truth (Scalabel's name)
CLASS_MEANS = {"mHOTA": "HOTA", "mMOTA": "MOTA", "mIDF1": "IDF1"}  # BDD100K's class-averaged headline metrics
BY_CLASS, BY_ATTRIBUTE = "CLASSES", "ATTRIBUTES"  # their keys in the JSON beside the sequence rows
_EPS = np.finfo(float).eps


def match_iou(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TrackEval's preprocessing match: Hungarian on IoU, pairs below 0.5 not allowed; (gt rows, tracker cols)."""
    if not sim.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    match = np.where(sim < 0.5 - _EPS, 0.0, sim)
    rows, cols = linear_sum_assignment(-match)
    matched = match[rows, cols] > _EPS
    return rows[matched], cols[matched]


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
            rows, cols = match_iou(sim)
            remove = cols[np.isin(classes[rows], DISTRACTOR_CLASSES)]
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


def preprocess_class(gt: Tracks, results: Tracks, num_frames: int, cls: int) -> SequenceData:
    """TrackEval's BDD100K preprocessing of class `cls` (1-based): its ground truth (conf != 0) against the tracker
    boxes of that class, less the unmatched ones more than half inside an ignore region (conf 0, any class)."""
    gt_ids, tracker_ids, similarity = [], [], []
    for t in range(1, num_frames + 1):
        g, r = gt.frame_rows(t), results.frame_rows(t)
        scored = (gt.conf[g] != 0) & (gt.classes[g] == cls)
        mine = results.classes[r] == cls
        boxes = results.boxes[r][mine]
        sim = box_iou_xywh(gt.boxes[g][scored], boxes)
        unmatched = np.setdiff1d(np.arange(len(boxes)), match_iou(sim)[1])
        in_crowd = (box_ioa_xywh(boxes[unmatched], gt.boxes[g][gt.conf[g] == 0]) > 0.5 + _EPS).any(axis=1)
        keep = np.ones(len(boxes), bool)
        keep[unmatched[in_crowd]] = False
        gt_ids.append(gt.ids[g][scored])
        tracker_ids.append(results.ids[r][mine][keep])
        similarity.append(sim[:, keep])
    gt_ids, n_gt = _relabel(gt_ids)
    tracker_ids, n_trk = _relabel(tracker_ids)
    return SequenceData(gt_ids, tracker_ids, similarity, n_gt, n_trk)


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


@dataclass
class _Part:
    """One sequence and class, scored: what pooling over sequences, classes or attribute groups combines."""

    hota: dict   # TrackEval HOTA's per-sequence result
    clear: dict  # py-motmetrics' partial (cached intermediate counts), which its compute_overall pools


def _score_part(data: SequenceData) -> _Part:
    import motmetrics as mm

    clear = mm.metrics.create().compute(_accumulator(data), metrics=_CLEAR_METRICS, return_cached=True,
                                        return_dataframe=False)
    return _Part(_hota(data), clear)


def _pooled(parts: list[_Part]) -> dict:
    import motmetrics as mm
    from trackeval.metrics import HOTA

    hota = HOTA().combine_sequences(dict(enumerate(p.hota for p in parts)))
    clear = mm.metrics.create().compute_overall([p.clear for p in parts], metrics=_CLEAR_METRICS,
                                                return_dataframe=False)
    return _row(hota, clear)


def class_average(rows: dict[str, dict]) -> dict:
    """The mean of per-class rows over the classes with ground truth (TrackEval's cls_comb_cls_av restricted to
    them): rates are means (LocA over the classes where it is defined), counts are sums."""
    with_gt = [row for row in rows.values() if row["GT_Dets"] > 0]
    template = next(iter(rows.values()))
    out = {}
    for key, value in template.items():
        values = [row[key] for row in with_gt]
        if isinstance(value, int):
            out[key] = int(sum(values))
        else:
            defined = [v for v in values if not math.isnan(v)] if key == "LocA" else values
            out[key] = float(np.mean(defined)) if defined else math.nan
    return out


def _class_summary(parts: dict[str, list[_Part]]) -> tuple[dict, dict[str, dict]]:
    """(every part pooled with mHOTA, mMOTA, mIDF1 added; {class: its parts pooled})."""
    per_class = {name: _pooled(class_parts) for name, class_parts in parts.items()}
    overall = _pooled([p for class_parts in parts.values() for p in class_parts])
    average = class_average(per_class)
    return {**overall, **{m: average[key] for m, key in CLASS_MEANS.items()}}, per_class


@dataclass
class Report:
    """Scores of a dataset. `sequences`: per sequence and COMBINED, every class's boxes pooled (for class-indexed
    data with mHOTA, mMOTA, mIDF1 added); `classes`: per class over all sequences (the classes with ground truth
    or results), then AVERAGE; `attributes`: per video attribute value ("timeofday=night"), its sequences pooled.
    MOTChallenge folders (one class, no attributes) fill only `sequences`."""

    sequences: dict[str, dict]
    classes: dict[str, dict] = field(default_factory=dict)
    attributes: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON of `evaluate --json` and metrics.json: the sequence rows (COMBINED among them, as for
        MOTChallenge data), then CLASSES and ATTRIBUTES where there are any."""
        extra = {BY_CLASS: self.classes} if self.classes else {}
        return {**self.sequences, **extra, **({BY_ATTRIBUTE: self.attributes} if self.attributes else {})}


def attribute_groups(sequences: list[Sequence], keys: list[str] | None = None) -> dict[str, list[str]]:
    """{"key=value": sequence names} per video attribute, sorted; by default every key with text values (BDD100K's
    weather, timeofday, scene). A sequence without the key is in no group of it."""
    if keys is None:
        keys = sorted({k for s in sequences for k, v in s.attributes.items() if isinstance(v, str)})
    groups = defaultdict(list)
    for key in keys:
        for seq in sequences:
            if key in seq.attributes:
                groups[f"{key}={seq.attributes[key]}"].append(seq.name)
    return dict(sorted(groups.items()))


def _class_indexed(tracks: Tracks, seq: Sequence) -> Tracks:
    """Results whose classes are checked against `seq.class_names`; with one class, rows without one (-1) are it."""
    names = seq.class_names
    classes = np.where(tracks.classes == NO_CLASS, 1.0, tracks.classes) if len(names) == 1 else tracks.classes
    bad = (classes != np.round(classes)) | (classes < 1) | (classes > len(names))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(tracks.path or f"results of {seq.name}",
                         f"class {tracks.classes[i]:g} is not one of this dataset's classes 1..{len(names)} "
                         f"({', '.join(names)}); results of several classes need one (column 8 of a result file, "
                         f"the tracker's labels)",
                         int(tracks.lines[i]) if tracks.path is not None else None)
    return replace(tracks, classes=classes)


def evaluate_sequences(sequences: list[Sequence], results: dict[str, Tracks], attributes: list[str] | None = None,
                       benchmark: str = "auto") -> Report:
    """Score results ({seq: Tracks}) of sequences with ground truth. MOTChallenge folders: the MOTChallenge path
    (`benchmark` as in `preprocess`); other formats: per class as BDD100K, by class and by video attribute
    (`attributes`: the keys to group by, see `attribute_groups`)."""
    if not sequences:
        raise ValueError("nothing to evaluate")
    if all(isinstance(s, MotSequence) for s in sequences):
        return Report(evaluate_pairs({s.name: (s.gt, results[s.name], s.num_frames) for s in sequences}, benchmark))
    if benchmark != "auto":
        raise ValueError(f"benchmark {benchmark!r} applies to MOTChallenge folders only")
    names = sequences[0].class_names
    if any(isinstance(s, MotSequence) or s.class_names != names for s in sequences):
        raise ValueError("the sequences to score together must come from one dataset (the same classes)")
    parts = {}  # seq -> {class name: [part]}
    for seq in sequences:
        tracks = _class_indexed(results[seq.name], seq)
        present = set(seq.gt.classes[seq.gt.conf != 0]) | set(tracks.classes)
        # A class absent from both adds nothing; a sequence without any boxes still gets its (empty) row.
        chosen = [k for k in range(1, len(names) + 1) if k in present] or [1]
        parts[seq.name] = {names[k - 1]: [_score_part(preprocess_class(seq.gt, tracks, seq.num_frames, k))]
                           for k in chosen}

    def pooled(seq_names: list[str]) -> tuple[dict, dict]:
        by_class = defaultdict(list)
        for name in seq_names:
            for cls, class_parts in parts[name].items():
                by_class[cls] += class_parts
        return _class_summary({n: by_class[n] for n in names if n in by_class})

    rows = {s.name: pooled([s.name])[0] for s in sequences}
    rows[COMBINED], per_class = pooled(list(parts))
    groups = attribute_groups(sequences, attributes)
    return Report(rows, {**per_class, AVERAGE: class_average(per_class)},
                  {group: pooled(members)[0] for group, members in groups.items()})


def score_report(sequences: list[Sequence], results: dict[str, dict], attributes: list[str] | None = None) -> Report:
    """The Report of per-sequence result arrays ({"frames", "ids", "boxes", "scores"[, "labels"]}), exactly as if
    they had been written with `write_results` and read back."""
    return evaluate_sequences(sequences, {s.name: results_to_tracks(**results[s.name]) for s in sequences},
                              attributes)


def score_results(sequences: list[Sequence], results: dict[str, dict]) -> dict[str, dict]:
    """The per-sequence and COMBINED rows of `score_report` (what training and Tune report)."""
    return score_report(sequences, results).sequences


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


def read_results(path: Path, sequences: list[Sequence]) -> dict[str, Tracks]:
    """Results of every sequence: a folder of `<seq>.txt` (MOTChallenge text, see `load_results`), or Scalabel
    JSON, a file or a folder of *.json without *.txt (see darth_ray.data.results)."""
    path = Path(path)
    scalabel = path.is_file() or (path.is_dir() and not any(path.glob("*.txt")) and any(path.glob("*.json")))
    return read_scalabel_results(path, sequences) if scalabel else load_results(path, sequences)


def evaluate_dataset(data: Path, results: Path, split: str | None = None, images: Path | None = None,
                     classes: list[str] | None = None, class_map: dict[str, str] | None = None,
                     attributes: list[str] | None = None, benchmark: str = "auto") -> Report:
    """Evaluate results (`read_results`) against any dataset `load_dataset` reads (its arguments)."""
    from darth_ray.data.dataset import load_dataset

    sequences, _ = load_dataset(data, split, images, classes, class_map, require_gt=True)
    return evaluate_sequences(sequences, read_results(results, sequences), attributes, benchmark)


def format_table(metrics: dict[str, dict], columns=METRICS, label: str = "sequence") -> str:
    """A fixed-width table, one row per sequence (or class, or attribute value); COMBINED and AVERAGE last."""
    width = max(len(COMBINED), len(label), *(len(k) for k in metrics))
    head = f"{label:<{width}}  " + "  ".join(f"{c:>7}" for c in columns)
    lines = [head, "-" * len(head)]
    previous = None
    for name, row in metrics.items():
        if name in (COMBINED, AVERAGE) and previous not in (COMBINED, AVERAGE):
            lines.append("-" * len(head))
        cells = [f"{row[c]:7.2f}" if isinstance(row[c], float) else f"{row[c]:7d}" for c in columns]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
        previous = name
    return "\n".join(lines)


def format_report(report: Report) -> str:
    """The sequence table (exactly `format_table` for MOTChallenge data), then per class and per attribute."""
    if not report.classes:
        return format_table(report.sequences)
    with_means = METRICS + tuple(CLASS_MEANS)
    tables = [format_table(report.sequences, with_means),
              format_table({**report.classes, COMBINED: report.sequences[COMBINED]}, METRICS, label="class")]
    if report.attributes:
        tables.append(format_table(report.attributes, with_means, label="attribute"))
    return "\n\n".join(tables)

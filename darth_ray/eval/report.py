"""A Tune experiment people can look at: `write_experiment_report(experiment_dir, metric)` writes summary.png (the
metric, HOTA, mHOTA or a label-free score, of each trial over its epochs; each searched hyperparameter against the
trial's best), label_free.json (how well each label-free score ranks the trials as HOTA does: Spearman's rank
correlation over the trials' last evaluations) and report.html (opens offline: no scripts, no remote files; every
link relative) into Tune's experiment folder.

It reads only the files Tune writes, so it works on any experiment folder, finished, running or copied elsewhere:
each trial folder's result.json (one JSON result per line, with the trial's config), or progress.csv with
params.json; error.txt when the trial failed; best.json (tune_dance.py's ranking) when present. A trial's videos are
the *.mp4 / *.gif files (and its per-sequence metrics the *.json) in `videos/` of its trial folder or of its latest
checkpoint (a result's `checkpoint_path`, as Ray Train's TuneReportCallback reports it).

`metrics_table` turns per-sequence scores into the columns and rows of a W&B table.
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from darth_ray.eval.label_free import LABEL_FREE_METRICS
from darth_ray.eval.plots import new_figure, read_jsonl, save_figure, sequence_rows
from darth_ray.eval.visualize import MEDIA_DIR as VIDEO_DIR  # write_eval_media writes a trial's videos there
from darth_ray.io import InputError, atomic_write_json, atomic_write_text

TABLE_METRICS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")
VIDEO_SUFFIXES = (".mp4", ".gif")
REPORT, SUMMARY, CORRELATIONS = "report.html", "summary.png", "label_free.json"
ORACLE_METRICS = ("HOTA", "mHOTA")  # rankings that need the target's labels


@dataclass
class Trial:
    """One trial folder of a Tune experiment: its config and the results it reported, in order."""

    path: Path
    config: dict
    results: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(next((r["trial_id"] for r in self.results if r.get("trial_id")), self.path.name))

    @cached_property
    def evaluations(self) -> dict[float, dict]:
        """{epoch: the last result of that epoch with a finite HOTA or label-free score} (epochs as reported;
        training_iteration where no epoch is). Results between evaluations repeat the latest one, so the last of an
        epoch is it."""
        out = {}
        for r in self.results:
            if any(_finite(r.get(k)) for k in ("HOTA",) + LABEL_FREE_METRICS):
                out[r.get("epoch", r.get("training_iteration", len(out)))] = r
        return out

    @property
    def best_hota(self) -> float | None:
        return self.best("HOTA")

    def best(self, metric: str) -> float | None:
        """The best value of `metric` over the trial's evaluations (None before the first)."""
        return max((r[metric] for r in self.evaluations.values() if _finite(r.get(metric))), default=None)

    @property
    def last_evaluation(self) -> dict:
        return list(self.evaluations.values())[-1] if self.evaluations else {}

    @property
    def error(self) -> str | None:
        """The error the trial stopped with: its last result's `error`, or the last line of Tune's error.txt."""
        reported = next((r["error"] for r in reversed(self.results) if r.get("error")), None)
        if reported:
            return str(reported)
        lines = (self.path / "error.txt").read_text().strip().splitlines() if (self.path / "error.txt").is_file() \
            else []
        return lines[-1] if lines else None

    @property
    def checkpoint(self) -> str | None:
        """The latest checkpoint: the last reported `checkpoint_path`, else Tune's newest checkpoint_* folder."""
        reported = next((r["checkpoint_path"] for r in reversed(self.results) if r.get("checkpoint_path")), None)
        folders = sorted(self.path.glob("checkpoint_*"))
        return str(reported) if reported else (str(folders[-1]) if folders else None)

    def media(self, suffixes: tuple[str, ...]) -> list[Path]:
        """Files with these suffixes in videos/ of the trial folder and of its latest checkpoint."""
        folders = [self.path / VIDEO_DIR] + ([Path(self.checkpoint) / VIDEO_DIR] if self.checkpoint else [])
        return [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if p.suffix in suffixes]


def read_trials(experiment_dir: Path) -> list[Trial]:
    """Every trial folder (one holding result.json or progress.csv) directly in `experiment_dir`."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise InputError(experiment_dir, "no such experiment directory")
    trials = []
    for folder in sorted(p for p in experiment_dir.iterdir() if p.is_dir()):
        jsonl, csv_file = folder / "result.json", folder / "progress.csv"
        if not (jsonl.is_file() or csv_file.is_file()):
            continue
        results = read_jsonl(jsonl) if jsonl.is_file() else []
        config = next((r["config"] for r in results if isinstance(r.get("config"), dict)), None)
        # Tune's result.json loses the rows before a PBT exploit of the trial; progress.csv keeps every row
        rows = _read_progress(csv_file) if csv_file.is_file() else []
        trials.append(Trial(folder, config if config is not None else _params(folder),
                            results if len(results) >= len(rows) else rows))
    if not trials:
        raise InputError(experiment_dir, "no Tune trials here (no <trial>/result.json or <trial>/progress.csv)")
    return trials


def searched_hyperparameters(trials: list[Trial]) -> list[str]:
    """The numeric config keys whose value differs between trials."""
    keys = sorted({k for t in trials for k, v in t.config.items() if _number(v)})
    return [k for k in keys if len({t.config.get(k) for t in trials}) > 1]


def summary_figure(trials: list[Trial], title: str, metric: str = "HOTA"):
    """`metric` per trial over its epochs, then one panel per searched hyperparameter against its best; a trial
    has the same colour in every panel."""
    from matplotlib.ticker import MaxNLocator

    hyperparameters = searched_hyperparameters(trials)
    fig, axes = new_figure(1 + len(hyperparameters))
    evaluated = [(t, f"C{i % 10}") for i, t in enumerate(trials) if t.evaluations]
    for t, colour in evaluated:
        axes[0].plot(list(t.evaluations), [r.get(metric, math.nan) for r in t.evaluations.values()], marker="o",
                     color=colour, label=t.name)
    axes[0].set(title=f"{metric} per trial", xlabel="epoch", ylabel=metric)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if 0 < len(evaluated) <= 12:
        axes[0].legend(fontsize="x-small")
    for ax, key in zip(axes[1:], hyperparameters):
        points = [(t.config[key], t.best(metric), colour) for t, colour in evaluated
                  if _number(t.config.get(key)) and t.best(metric) is not None]
        if points:
            x, y, colours = zip(*points)
            ax.scatter(x, y, c=colours)
        positive = [x for x, _, _ in points if x > 0]
        if positive and len(positive) == len(points) and max(positive) >= 10 * min(positive):
            ax.set_xscale("log")
        ax.set(title=key, xlabel=key, ylabel=f"best {metric}")
    fig.suptitle(title)
    return fig


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (tied values share their mean rank); None when undefined (fewer than two
    pairs, or one side constant)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def label_free_correlations(trials: list[Trial]) -> dict[str, dict]:
    """{score: {"spearman": its rank correlation with HOTA, "trials": how many}} over the trials whose last
    evaluation has both (1: the score ranks these trials exactly as HOTA does)."""
    out = {}
    for name in LABEL_FREE_METRICS:
        pairs = [(t.last_evaluation[name], t.last_evaluation["HOTA"]) for t in trials
                 if _finite(t.last_evaluation.get(name)) and _finite(t.last_evaluation.get("HOTA"))]
        out[name] = {"spearman": spearman(*zip(*pairs)) if pairs else None, "trials": len(pairs)}
    return out


def write_experiment_report(experiment_dir: Path, metric: str = "HOTA") -> Path:
    """Write summary.png, label_free.json and report.html, trials ranked by `metric`, into the experiment folder;
    returns the path of report.html."""
    experiment_dir = Path(experiment_dir)
    trials = read_trials(experiment_dir)
    save_figure(summary_figure(trials, f"Tune experiment {experiment_dir.name}", metric), experiment_dir / SUMMARY)
    correlations = label_free_correlations(trials)
    atomic_write_json(experiment_dir / CORRELATIONS, correlations)
    return atomic_write_text(experiment_dir / REPORT, _html(experiment_dir, trials, metric, correlations))


def metrics_table(scores: dict[str, dict], metrics: tuple[str, ...] = TABLE_METRICS) -> tuple[list[str], list[list]]:
    """(columns, rows) of per-sequence scores ({seq: row, ..., COMBINED: row}, as `score_results` returns them):
    one row per sequence, what `wandb.Table(columns=..., data=...)` takes."""
    rows = [[name, *(row.get(m) for m in metrics)] for name, row in sequence_rows(scores).items()]
    return ["sequence", *metrics], rows


def _html(experiment_dir: Path, trials: list[Trial], metric: str, correlations: dict[str, dict]) -> str:
    hyperparameters = searched_hyperparameters(trials)
    best_of = {t.path: t.best(metric) for t in trials}
    ranked = sorted(trials, key=lambda t: (best_of[t.path] is None, -(best_of[t.path] or 0.0)))
    reported = [m for m in LABEL_FREE_METRICS if any(m in t.last_evaluation for t in trials)]
    columns = tuple(dict.fromkeys((*TABLE_METRICS, metric, *reported)))
    head = ["#", "trial", f"best {metric}", *(f"last {m}" for m in columns), "epochs", *hyperparameters,
            "checkpoint", "videos", "metrics", "error"]
    rows = []
    for rank, t in enumerate(ranked, start=1):
        last = t.last_evaluation
        links = [_link(experiment_dir, t.path / name, name) for name in ("result.json", "progress.csv")
                 if (t.path / name).is_file()] + [_link(experiment_dir, p, p.name) for p in t.media((".json",))]
        cells = [str(rank), _link(experiment_dir, t.path, t.name), _number_text(best_of[t.path]),
                 *(_number_text(last.get(m)) for m in columns), str(len(t.evaluations)),
                 *(_number_text(t.config.get(k)) for k in hyperparameters),
                 _link(experiment_dir, t.checkpoint, "checkpoint") if t.checkpoint else "",
                 " ".join(_link(experiment_dir, p, p.stem) for p in t.media(VIDEO_SUFFIXES)),
                 " ".join(links), html.escape(t.error or "")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    best = ranked[0] if best_of[ranked[0].path] is not None else None
    verdict = (f"best: {html.escape(best.name)}, {metric} {best_of[best.path]:.2f}" if best
               else "no trial has evaluated yet")
    ranking = (f' &middot; {_link(experiment_dir, experiment_dir / "best.json", "best.json")}'
               if (experiment_dir / "best.json").is_file() else "")
    selection = ("selected with the target's labels (oracle)" if metric in ORACLE_METRICS
                 else "selected without labels (label-free)")
    correlation_rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_number_text(c['spearman'])}</td>"
                               f"<td>{c['trials']}</td></tr>" for name, c in correlations.items())
    name = html.escape(experiment_dir.name)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{name}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:nth-child(2),td:last-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body><h1>Tune experiment {name}</h1>
<p>{len(trials)} trials, {len(trials) - list(best_of.values()).count(None)} evaluated; {verdict}{ranking}</p>
<p>Ranked by {html.escape(metric)}: {selection}.</p>
<img src="{SUMMARY}" alt="{metric} per trial over epochs; hyperparameters against {metric}">
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>
{chr(10).join(rows)}
</table>
<h2>Label-free scores against HOTA</h2>
<p>Spearman's rank correlation over the trials' last evaluations
({_link(experiment_dir, experiment_dir / CORRELATIONS, CORRELATIONS)}): 1 = the score ranks the trials as HOTA does.
</p>
<table><tr><th>score</th><th>Spearman with HOTA</th><th>trials</th></tr>
{correlation_rows}
</table></body></html>
"""


def _link(base: Path, target: str | Path, text: str) -> str:
    """An <a> to `target`, relative to `base` (the report keeps working when the folder moves); URIs as they are."""
    target = str(target)
    href = target if "://" in target else urllib.parse.quote(os.path.relpath(target, base))
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _number_text(value) -> str:
    if not _number(value):
        return "" if value is None else html.escape(str(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _params(folder: Path) -> dict:
    path = folder / "params.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg}", e.lineno) from None
    if not isinstance(config, dict):
        raise InputError(path, "not a JSON object (a trial's config)")
    return config


def _read_progress(path: Path) -> list[dict]:
    """progress.csv as result dicts: numbers as numbers, empty cells left out."""
    with open(path, newline="") as f:
        return [{k: _csv_value(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


def _csv_value(text: str):
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text

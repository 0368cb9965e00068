"""Plots written next to the results (PNG): an `adapt` run's loss curves and its evaluation metrics.

Figures are matplotlib `Figure` objects drawn on the Agg canvas (no pyplot, no display, no global backend change)
and saved atomically.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from darth_ray.io import InputError, atomic_write_file

PLOTTED_METRICS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")
SMOOTHING = 20  # steps in the moving average drawn over a loss curve


def new_figure(panels: int, columns: int = 3, panel_size: tuple[float, float] = (4.0, 3.0)):
    """A Figure with `panels` axes in a grid of at most `columns` columns; returns (figure, axes list)."""
    from matplotlib.figure import Figure

    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(panels)]
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    return atomic_write_file(path, lambda tmp: fig.savefig(tmp, dpi=100))


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; a line that is not one is an InputError naming the file and line."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"not a JSON line ({e.msg})", number) from None
        if not isinstance(record, dict):
            raise InputError(path, "not a JSON object", number)
        records.append(record)
    return records


def sequence_rows(metrics: dict) -> dict[str, dict]:
    """The per-sequence (and COMBINED) rows of a metrics.json, without its CLASSES / ATTRIBUTES sections."""
    return {name: row for name, row in metrics.items() if isinstance(row, dict) and "HOTA" in row}


def loss_figure(log: list[dict], title: str):
    """One panel per loss (`loss_*`) against the step, raw and smoothed, and one for the learning rate."""
    steps = np.array([r["step"] for r in log])
    names = sorted({k for r in log for k in r if k.startswith("loss")}) + (["lr"] if any("lr" in r for r in log)
                                                                          else [])
    fig, axes = new_figure(len(names))
    for ax, name in zip(axes, names):
        values = np.array([r.get(name, np.nan) for r in log], dtype=float)
        ax.plot(steps, values, alpha=0.35 if len(values) > SMOOTHING else 1.0, label="per step")
        if len(values) > SMOOTHING:
            smooth = np.convolve(values, np.ones(SMOOTHING) / SMOOTHING, mode="valid")
            ax.plot(steps[SMOOTHING - 1:], smooth, label=f"mean of {SMOOTHING}")
            ax.legend(fontsize="small")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(title)
    return fig


def metrics_figure(runs: dict[str, dict], title: str):
    """One panel per metric of PLOTTED_METRICS: a bar per sequence (and COMBINED) and run ({label: metrics})."""
    rows = {label: sequence_rows(metrics) for label, metrics in runs.items()}
    sequences = list(next(iter(rows.values())))
    fig, axes = new_figure(len(PLOTTED_METRICS), panel_size=(max(4.0, 0.6 * len(sequences) * len(runs)), 3.0))
    width = 0.8 / len(runs)
    x = np.arange(len(sequences))
    for ax, metric in zip(axes, PLOTTED_METRICS):
        for k, (label, run_rows) in enumerate(rows.items()):
            ax.bar(x + k * width, [run_rows.get(s, {}).get(metric, np.nan) for s in sequences], width, label=label)
        ax.set_xticks(x + width * (len(runs) - 1) / 2, sequences, rotation=45, ha="right", fontsize="small")
        ax.set_title(metric)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    return fig


def write_adapt_plots(out_dir: Path, method: str = "DARTH") -> list[Path]:
    """OUT/plots/losses.png from OUT/adapt_log.jsonl (when the method has losses) and, when the run was evaluated,
    OUT/plots/metrics.png from OUT/metrics.json (beside OUT/source_metrics.json when there is one). Returns the
    files written."""
    out_dir = Path(out_dir)
    written = []
    log = read_jsonl(out_dir / "adapt_log.jsonl")
    if any(k.startswith("loss") for r in log for k in r):
        written.append(save_figure(loss_figure(log, f"{method} losses: {out_dir.name}"),
                                   out_dir / "plots" / "losses.png"))
    if (out_dir / "metrics.json").is_file():
        runs = {method: json.loads((out_dir / "metrics.json").read_text())}
        if (out_dir / "source_metrics.json").is_file():
            runs = {"source": json.loads((out_dir / "source_metrics.json").read_text()), **runs}
        written.append(save_figure(metrics_figure(runs, f"evaluation: {out_dir.name}"),
                                   out_dir / "plots" / "metrics.png"))
    return written

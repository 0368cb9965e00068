"""Plots next to the results: an `adapt` run's loss curves and metrics (darth_ray/eval/plots.py). That a real (tiny)
`adapt` run writes them is checked in test_adapt_loop.py::test_cli_train_source_adapt_track."""
from __future__ import annotations

import json

import pytest

from darth_ray.eval.plots import write_adapt_plots
from darth_ray.io import InputError

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def metrics(hota: float) -> dict:
    row = {"HOTA": hota, "DetA": hota + 1, "AssA": hota - 1, "MOTA": hota, "IDF1": hota, "IDSW": 3}
    return {"seq-1": row, "seq-2": row, "COMBINED": row, "CLASSES": {"pedestrian": row}}


def test_loss_and_metric_plots_beside_the_run(tmp_path):
    log = [{"step": s, "epoch": 0, "loss_total": 1.0 / s, "loss_rpn": 0.5, "lr": 0.01} for s in range(1, 31)]
    (tmp_path / "adapt_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    assert write_adapt_plots(tmp_path) == [tmp_path / "plots" / "losses.png"]  # not evaluated: no metrics plot
    assert is_png(tmp_path / "plots" / "losses.png") and not (tmp_path / "plots" / "metrics.png").exists()
    (tmp_path / "metrics.json").write_text(json.dumps(metrics(50.0)))
    (tmp_path / "source_metrics.json").write_text(json.dumps(metrics(40.0)))
    assert write_adapt_plots(tmp_path)[1] == tmp_path / "plots" / "metrics.png"
    assert is_png(tmp_path / "plots" / "metrics.png")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["losses.png", "metrics.png"]  # no temp files


def test_a_bad_log_line_is_named(tmp_path):
    (tmp_path / "adapt_log.jsonl").write_text('{"step": 1, "loss_total": 0.5}\n{"step": 2, "loss_total": \n')
    with pytest.raises(InputError, match=r"adapt_log.jsonl:2: not a JSON line"):
        write_adapt_plots(tmp_path)

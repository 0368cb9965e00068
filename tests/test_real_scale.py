"""r50_fpn DARTH end to end at real resolution on the CPU, so the real-scale path cannot rot unseen: an
mmtrack-layout checkpoint converted, one DARTH step on two generated 1920x1080 JPEG frames (views fit (1088, 1088),
mixed precision bf16), then tracking and scoring with the adapted student. Measured: 50 s on 2 shared cores
(3 min while other jobs loaded them)."""
import json
import sys
from pathlib import Path

import pytest

from darth_ray.cli import main
from darth_ray.models.well_conditioned import write_mmtrack_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_check import write_sequence  # noqa: E402


@pytest.mark.slow
def test_r50_fpn_darth_step_and_tracking_at_1920x1080(tmp_path):
    data = tmp_path / "data"
    write_sequence(data, "dance-like", frames=2, size=(1920, 1080))
    mmtrack = write_mmtrack_checkpoint(tmp_path / "qdtrack.pth")
    assert main(["convert-mmtrack", str(mmtrack), str(tmp_path / "source.pt")]) == 0
    out = tmp_path / "darth"
    assert main(["adapt", "--source", str(tmp_path / "source.pt"), "--target", str(data), "--out", str(out),
                 "--frame-size", "1920", "1080", "--epochs", "1", "--lr-steps", "1", "--amp", "bf16",
                 "--device", "cpu", "-q"]) == 0
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and all(log[0][k] == log[0][k] for k in ("loss_rpn", "loss_roi", "loss_total"))  # not NaN
    assert log[0]["loss_contrastive"] > 0  # the teacher found pseudo-boxes: the whole step ran
    results = (out / "results" / "dance-like.txt").read_text().splitlines()
    assert results and {int(line.split(",")[0]) for line in results} <= {1, 2}
    assert "COMBINED" in json.loads((out / "metrics.json").read_text())

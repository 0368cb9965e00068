"""benchmarks/gpu_check.py runs where only PyTorch is installed (no ray, wandb, motmetrics, trackeval, mmengine,
tqdm) and prints one JSON line with every measurement."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MISSING = ("ray", "wandb", "motmetrics", "trackeval", "mmengine", "tqdm", "optuna")

# Runs the script as __main__ with those packages unimportable, as on a borrowed GPU box.
RUNNER = f"""
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {MISSING!r}:
            raise ImportError(f"No module named {{name!r}} (blocked: not on the GPU box)")
sys.meta_path.insert(0, Missing())
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path({str(REPO / "benchmarks" / "gpu_check.py")!r}, run_name="__main__")
"""


def run_gpu_check(tmp_path, *args: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-c", RUNNER, "--device", "cpu", "--tiny", *args, "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    return done.returncode, json.loads(lines[0]), done.stderr


def test_gpu_check_tiny_on_cpu_without_the_optional_packages(tmp_path):
    rc, report, stderr = run_gpu_check(tmp_path, "--steps", "2", "--frames", "6")
    assert rc == 0 and "errors" not in report, stderr[-3000:]
    # each measurement is on stderr as soon as it is taken: a run cut short by a time limit keeps them
    partial = dict(line.removeprefix("gpu_check ").split(": ", 1) for line in stderr.splitlines()
                   if line.startswith("gpu_check "))
    assert json.loads(partial["darth_fp32"]) == report["darth_fp32"]
    assert json.loads(partial["tracking_frames_per_s"]) == report["tracking_frames_per_s"]
    for mode in ("darth_fp32", "darth_bf16", "darth_bf16_channels_last"):
        assert report[mode]["frames_per_s"] > 0
        assert 0 < report[mode]["outside_model_share"] < 1
        assert set(report[mode]["outside_model_s"]) == {"waiting for frames", "view building", "proposal sampling",
                                                        "EMA update"}
    assert report["amp_speedup"] > 0 and report["channels_last_speedup"] > 0 and report["tracking_frames_per_s"] > 0
    assert report["frame_decoding"]["cv2_cpu_thread_frames_per_s"] > 0
    assert "decode_jpeg_device_frames_per_s" not in report["frame_decoding"]  # on CUDA only
    assert report["cpu_vs_device_loss"]["max_abs_diff"] == 0.0  # the CPU against itself
    assert report["dancetrack_val_100k_frames_8_gpus_hours"] > 0
    assert "ray_train" not in report  # only with --workers


def test_gpu_check_names_a_failed_measurement_and_still_reports_the_others(tmp_path):
    """--workers without Ray installed (a borrowed GPU box): the Ray measurement fails, the rest is reported."""
    rc, report, stderr = run_gpu_check(tmp_path, "--steps", "1", "--frames", "4", "--workers", "2")
    assert rc == 1
    assert list(report["errors"]) == ["ray_train"] and "No module named 'ray'" in report["errors"]["ray_train"]
    assert "ray_train" not in report and "Traceback" in stderr
    assert report["darth_fp32"]["frames_per_s"] > 0 and report["tracking_frames_per_s"] > 0
    assert report["dancetrack_val_100k_frames_8_gpus_hours"] > 0  # from one device's rate, without Ray's

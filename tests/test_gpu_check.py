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


def test_gpu_check_tiny_on_cpu_without_the_optional_packages(tmp_path):
    done = subprocess.run([sys.executable, "-c", RUNNER, "--device", "cpu", "--tiny", "--steps", "2", "--frames", "6",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    report = json.loads(lines[0])
    for mode in ("darth_fp32", "darth_bf16"):
        assert report[mode]["frames_per_s"] > 0
        assert 0 < report[mode]["outside_model_share"] < 1
        assert set(report[mode]["outside_model_s"]) == {"waiting for frames", "view building", "proposal sampling",
                                                        "EMA update"}
    assert report["amp_speedup"] > 0 and report["tracking_frames_per_s"] > 0
    assert report["cpu_vs_device_loss"]["max_abs_diff"] == 0.0  # the CPU against itself
    assert report["dancetrack_val_100k_frames_8_gpus_hours"] > 0
    assert "ray_train" not in report  # only with --workers

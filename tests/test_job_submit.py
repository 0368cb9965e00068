"""`ray job submit --working-dir . -- python experiments/tune_dance.py` against a real local head with a second
node joined to it: the job succeeds, Tune ranks its trial by HOTA and writes best.json where we asked."""
import json
import subprocess
from pathlib import Path

import pytest

from darth_ray.distributed.cluster import ray_cli_env, ray_executable

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_job_submit_runs_tune_dance_on_a_two_node_cluster(local_ray_head, tiny, tmp_path):
    local_ray_head.add_worker(num_cpus=1)
    runs = tmp_path / "runs"
    command = [ray_executable(), "job", "submit", "--address", local_ray_head.dashboard_url,
               "--working-dir", str(REPO), "--submission-id", "darth-job-test",
               "--runtime-env-json", json.dumps({"env_vars": {"WANDB_MODE": "offline"}}), "--",
               "python", "experiments/tune_dance.py", "--data", str(tiny / "bench" / "night"), "--split", "val",
               "--source", str(tiny / "source.pt"), "--runs", str(runs), "--name", "job", "--num-samples", "1",
               "--epochs", "1", "--scheduler", "fifo", "--threads-per-worker", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, env=ray_cli_env())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()
    status = subprocess.run([ray_executable(), "job", "status", "--address", local_ray_head.dashboard_url,
                             "darth-job-test"], capture_output=True, text=True, timeout=60, env=ray_cli_env())
    assert "succeeded" in (status.stdout + status.stderr).lower()

    best = json.loads((runs / "tune" / "job" / "best.json").read_text())
    assert len(best) == 1 and isinstance(best[0]["HOTA"], float)
    assert set(best[0]["config"]) == {"aug_strength", "photometric_prob", "channel_swap_prob", "rpn_weight",
                                      "roi_weight", "contrastive_weight", "ema_momentum", "conf_thr", "lr"}
    assert "best trials of job" in result.stdout
    assert list((runs / "tune" / "job" / "wandb").glob("offline-run-*"))  # one W&B run for the trial


"""`ray job submit --working-dir . -- python experiments/tune_dance.py` against a real local head with a second
node joined to it: the job succeeds, Tune ranks its trial by HOTA and writes best.json where we asked."""
import json
import subprocess
from pathlib import Path

import pytest

from ray_cluster import ray_cli_env, ray_executable

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
    # A console a person reads: a line per trial event, not Tune's config tables, Ray Train's echo of every
    # report or py-motmetrics' timings.
    output = result.stdout + result.stderr
    assert "epoch 1/1: HOTA" in output and "[1/1 trials done" in output
    for noise in ("started with configuration", "Reporting training result", "partials:",
                  "may be a performance bottleneck"):  # a trial's wandb.init in the driver, ~4 s
        assert noise not in output, noise
    assert list((runs / "tune" / "job" / "wandb").glob("offline-run-*"))  # one W&B run for the trial
    report = (runs / "tune" / "job" / "report.html").read_text()  # the offline report, linking the trial
    trial_id = best[0]["trial"].split("=")[0]  # the report escapes the rest of Tune's long trial name
    assert trial_id in report and (runs / "tune" / "job" / "summary.png").stat().st_size > 0



def readme_cluster_commands() -> list[str]:
    """The command lines of the README's local cluster walk-through (its "Clusters" section's code block)."""
    section = (REPO / "README.md").read_text().split("\n## Clusters\n", 1)[1]
    block = section.split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_walk_through_runs_in_its_order_after_a_local_tune_run(tiny, tmp_path):
    """README command 1 (tune_dance.py on a local Ray), then the "Clusters" commands as written, in a shell's
    environment: HOME a fresh directory (the real ~/.ray is never touched) and no Ray auth settings but the README's.
    Only the ports (free ones, loopback) and the size of the Tune run differ."""
    import re
    import shlex
    import sys

    from ray_cluster import start_ray_head

    shell = {"HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None,
             "RAY_AUTH_TOKEN_PATH": None, "WANDB_MODE": "disabled"}
    tiny_run = ["--data", str(tiny / "bench" / "night"), "--split", "val", "--source", str(tiny / "source.pt"),
                "--num-samples", "1", "--epochs", "1", "--scheduler", "fifo", "--wandb-mode", "disabled"]

    def run(argv: list[str], runs: str) -> str:
        if argv[-1] == "experiments/tune_dance.py":
            argv = argv + tiny_run + ["--runs", str(tmp_path / runs)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=ray_cli_env(shell))
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    run([sys.executable, "experiments/tune_dance.py"], "local")  # README command 1
    assert not (tmp_path / "home" / ".ray").exists()  # no token left to change what the next commands do

    head, output = None, ""
    try:
        for line in readme_cluster_commands():
            submitted = re.search(r"raysubmit_\w+", output)
            if submitted:
                line = line.replace("<submission id>", submitted.group())
            if head is not None:
                line = line.replace("http://127.0.0.1:8265", head.dashboard_url)
            argv = shlex.split(line, comments=True)
            if ">" in argv:  # `> /dev/null`: the output is captured here anyway
                argv = argv[:argv.index(">")]
            if argv[0] == "export":
                name, value = argv[1].split("=", 1)
                shell[name] = value
            elif argv[:2] == ["ray", "start"]:
                assert argv[-1] == "&" and {"--head", "--dashboard-port", "--block"} <= set(argv)
                head = start_ray_head(num_cpus=2, env=shell)  # the same flags, on free loopback ports
                assert {"--head", "--block"} <= set(head.args)
                assert any(a.startswith("--dashboard-port=") for a in head.args)
            else:
                assert argv[0] == "ray", line
                output = run([ray_executable(), *argv[1:]], "job")
        assert "succeeded" in output.lower()  # `ray job status`
        assert json.loads((tmp_path / "job" / "tune" / "darth-night" / "best.json").read_text())[0]["HOTA"] >= 0
    finally:
        if head is not None:
            head.stop()

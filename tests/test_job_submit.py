"""The README's walk-through: command 1 (tune_dance.py on a local Ray), then `ray job submit --working-dir . --
python experiments/tune_dance.py` against a real local head with a second node joined to it: the job succeeds,
Tune ranks its trial by HOTA, writes best.json, the report and one W&B run where we asked, and the console is one a
person reads."""
import json
import subprocess
from pathlib import Path

import pytest

from ray_cluster import ray_cli_env, ray_executable

REPO = Path(__file__).resolve().parents[1]


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
    Only the ports (free ones, loopback), a second node joined to the head, offline W&B for the job and the size of
    the Tune run differ."""
    import re
    import shlex
    import sys

    from ray_cluster import start_ray_head

    shell = {"HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None,
             "RAY_AUTH_TOKEN_PATH": None, "WANDB_MODE": "offline"}
    tiny_run = ["--data", str(tiny / "bench" / "night"), "--split", "val", "--source", str(tiny / "source.pt"),
                "--num-samples", "1", "--epochs", "1", "--scheduler", "fifo", "--threads-per-worker", "1"]

    def run(argv: list[str], runs: str) -> str:
        if argv[-1] == "experiments/tune_dance.py":
            wandb = ["--wandb-mode", "disabled"] if runs == "local" else []  # the job's W&B run is checked below
            argv = argv + tiny_run + wandb + ["--runs", str(tmp_path / runs)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=ray_cli_env(shell))
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    run([sys.executable, "experiments/tune_dance.py"], "local")  # README command 1
    assert not (tmp_path / "home" / ".ray").exists()  # no token left to change what the next commands do

    head, output, submitted_output = None, "", ""
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
                head.add_worker(num_cpus=1, env=shell)  # a second node, as a cluster has
            else:
                assert argv[0] == "ray", line
                output = run([ray_executable(), *argv[1:]], "job")
            if argv[:3] == ["ray", "job", "submit"]:
                submitted_output = output
        assert "succeeded" in output.lower() and "succeeded" in submitted_output.lower()  # status and submit
        job = tmp_path / "job" / "tune" / "darth-night"
        best = json.loads((job / "best.json").read_text())
        assert len(best) == 1 and isinstance(best[0]["HOTA"], float) and best[0]["HOTA"] >= 0
        assert set(best[0]["config"]) == {"aug_strength", "photometric_prob", "channel_swap_prob", "rpn_weight",
                                          "roi_weight", "contrastive_weight", "ema_momentum", "conf_thr", "lr"}
        # A console a person reads: a line per trial event, not Tune's config tables, Ray Train's echo of every
        # report or py-motmetrics' timings.
        assert "best trials of darth-night" in submitted_output
        assert "epoch 1/1: HOTA" in submitted_output and "[1/1 trials done" in submitted_output
        for noise in ("started with configuration", "Reporting training result", "partials:",
                      "may be a performance bottleneck"):  # a trial's wandb.init in the driver, ~4 s
            assert noise not in submitted_output, noise
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # one W&B run for the trial
        report = (job / "report.html").read_text()  # the offline report, linking the trial
        trial_id = best[0]["trial"].split("=")[0]  # the report escapes the rest of Tune's long trial name
        assert trial_id in report and (job / "summary.png").stat().st_size > 0
    finally:
        if head is not None:
            head.stop()

"""The README's two commands are the ones CI and users run: keep them in sync with .ci/run and the code."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks[:2] for line in block.strip().splitlines()]


def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert tests in ci, f".ci/run must run the README's test command verbatim: {tests}"
    assert main_job.endswith("experiments/tune_dance.py")
    for command in (main_job, tests):  # a fresh machine has only Python: each command makes its own venv
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install")


def test_entry_points_answer_help():
    for argv in (["-m", "darth_ray.cli", "--help"], [str(REPO / "experiments" / "tune_dance.py"), "--help"]):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout

"""experiments/darth_table.py on the tiny benchmark: the rows asked for, cached runs reused, README sections replaced."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_table_script():
    spec = importlib.util.spec_from_file_location("darth_table", REPO / "experiments" / "darth_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def table(tiny, tmp_path, monkeypatch):
    module = load_table_script()
    runs = tmp_path / "runs"
    runs.mkdir()
    source = shutil.copy(tiny / "source.pt", runs / "source.pt")
    monkeypatch.setattr(module, "ensure_benchmark", lambda _: tiny / "bench")
    monkeypatch.setattr(module, "ensure_source_model", lambda _runs, _bench: source)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- domain-gap:start -->\nold gap\n<!-- domain-gap:end -->\nmiddle\n"
                      "<!-- darth-table:start -->\nold table\n<!-- darth-table:end -->\nend\n")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module, runs, readme


def test_table_rows_cache_and_readme(table, monkeypatch):
    module, runs, readme = table
    argv = ["--runs", str(runs), "--domains", "night", "--epochs", "1", "--threads", "1",
            "--variants", "DARTH", "frozen teacher (no EMA)"]
    assert module.main(argv) == 0
    text = readme.read_text()
    assert "old gap" not in text and "old table" not in text
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n")
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()
            if line.startswith("| ") and "HOTA" not in line]
    assert rows == ["source (training domain)", "night",
                    "**night**: source only", "night: target BN statistics only (no DARTH)",
                    "night: DARTH", "night: frozen teacher (no EMA)"]
    run_dirs = sorted(p.name.rsplit("-", 1)[0] for p in runs.glob("table/*/night/*") if p.is_dir())
    assert run_dirs == ["DARTH", "frozen_teacher_no_EMA"]
    frozen = next(runs.glob("table/*/night/frozen_teacher_no_EMA-*"))
    assert json.loads((frozen / "summary.json").read_text())["darth_config"]["ema_momentum"] == 0.0

    # A second run with the same settings adapts nothing and writes the same table.
    def no_adapt(*args, **kwargs):
        raise AssertionError("a cached run was adapted again")

    monkeypatch.setattr(module, "adapt", no_adapt)
    assert module.main(argv) == 0
    assert readme.read_text() == text


def test_unknown_variant_is_refused(table, capsys):
    module, runs, _ = table
    with pytest.raises(SystemExit):
        module.main(["--runs", str(runs), "--variants", "DARTH", "no such row"])
    assert "invalid choice: 'no such row'" in capsys.readouterr().err

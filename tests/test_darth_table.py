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
                      "<!-- methods-table:start -->\nold methods\n<!-- methods-table:end -->\n"
                      "<!-- darth-table:start -->\nold table\n<!-- darth-table:end -->\nend\n")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module, runs, readme


def table_rows(text: str, marker: str) -> list[list[str]]:
    section = text.split(f"<!-- {marker}:start -->")[1].split(f"<!-- {marker}:end -->")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and "HOTA" not in line]


def test_table_rows_seeds_cache_and_readme(table, monkeypatch):
    module, runs, readme = table
    argv = ["--runs", str(runs), "--domains", "night", "--methods", "source", "adabn", "tent",
            "--protocols", "offline", "online", "--seeds", "0", "1", "--epochs", "1", "--threads", "1",
            "--ablations", "night", "--variants", "frozen teacher (no EMA)"]
    assert module.main(argv) == 0
    text = readme.read_text()
    assert not any(old in text for old in ("old gap", "old methods", "old table"))
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n")
    gap = table_rows(text, "domain-gap")
    assert [r[0] for r in gap] == ["source (training domain)", "night"] and (gap[1][-1] == "n/a" or gap[1][-1].endswith("%"))
    methods = table_rows(text, "methods-table")
    assert [r[0] for r in methods] == ["clean domain, source model (the ceiling)", "**night**: source only",
                                       "night: AdaBN, offline", "night: AdaBN, online",
                                       "night: Tent, offline", "night: Tent, online"]
    # Methods that learn: mean ± sd over the two seeds; the others ran once.
    assert all("±" in c for r in methods[4:] for c in r[1:]) and not any("±" in c for r in methods[:4] for c in r)
    assert [r[0] for r in table_rows(text, "darth-table")] == ["**night**: DARTH", "night: frozen teacher (no EMA)"]

    run_dirs = sorted(p.name.rsplit("-", 1)[0] for p in runs.glob("table/*/*/*") if p.is_dir())
    assert run_dirs == ["adabn_offline", "adabn_online", "darth_offline", "frozen_teacher_no_EMA", "source_offline",
                        "source_offline", "tent_offline", "tent_offline", "tent_online", "tent_online"]
    seeds = sorted((json.loads((p / "summary.json").read_text())["darth_config"]["seed"],
                    json.loads((p / "summary.json").read_text())["darth_config"]["protocol"])
                   for p in runs.glob("table/*/night/tent_*"))
    assert seeds == [(0, "offline"), (0, "online"), (1, "offline"), (1, "online")]
    frozen = next(runs.glob("table/*/night/frozen_teacher_no_EMA-*"))
    assert json.loads((frozen / "summary.json").read_text())["darth_config"]["ema_momentum"] == 0.0

    # A second run with the same settings adapts nothing and writes the same table.
    def no_adapt(*args, **kwargs):
        raise AssertionError("a cached run was adapted again")

    monkeypatch.setattr(module, "adapt", no_adapt)
    assert module.main(argv) == 0
    assert readme.read_text() == text


@pytest.mark.parametrize("option, value", [("--variants", "no such row"), ("--methods", "bn"),
                                           ("--domains", "snow"), ("--protocols", "streaming")])
def test_unknown_rows_are_refused(table, capsys, option, value):
    module, runs, _ = table
    with pytest.raises(SystemExit):
        module.main(["--runs", str(runs), option, value])
    assert f"invalid choice: '{value}'" in capsys.readouterr().err


def test_a_device_that_is_not_there_is_refused_before_any_run(table, capsys, monkeypatch):
    import torch

    module, runs, _ = table
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        module.main(["--runs", str(runs), "--device", "cuda"])
    assert "--device: cuda: CUDA is not available" in capsys.readouterr().err
    assert not (runs / "table").exists()


def test_runs_on_another_device_are_cached_apart(table, tiny, monkeypatch):
    module, runs, _ = table
    calls = []
    monkeypatch.setattr(module, "adapt", lambda source, target, out, config, **kw: calls.append((out, kw["device"])))
    cpu, gpu = (module.Runs(runs / "source.pt", tiny / "bench", runs / "cache", 1, device)
                for device in ("cpu", "cuda:1"))
    for r in (cpu, gpu):
        with pytest.raises(FileNotFoundError):  # the stand-in wrote no metrics.json
            r.metrics("night", "darth offline", r.config())
    (cpu_out, cpu_device), (gpu_out, gpu_device) = calls
    assert (cpu_device, gpu_device) == ("cpu", "cuda:1")
    assert gpu_out.name == cpu_out.name + "-cuda1"  # CPU caches keep their names

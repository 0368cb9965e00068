"""Nothing lost, nothing mixed (darth_ray/io.py's rules): outputs never overwrite inputs or another command's
outputs, a resume checks everything the result depends on, atomic files get normal permissions, and bad input is
one line naming the file or flag."""
import json
import os
import shutil

import pytest
import torch

from darth_ray.cli import main
from darth_ray.io import atomic_torch_save, atomic_write_json, atomic_write_text
from darth_ray.models.qdtrack import build_model, save_checkpoint


def adapt_argv(tiny, out, *extra, source=None, target="night"):
    """One DARTH step per epoch (all 12 tiny frames in one batch), so each run takes seconds."""
    return ["adapt", "--source", str(source or tiny / "source.pt"), "--target", str(tiny / "bench" / target),
            "--split", "val", "--out", str(out), "--epochs", "1", "--lr-steps", "1", "--frames-per-batch", "12",
            "-q", *extra]


def train_source_argv(tiny, out, data="source", *extra):
    return ["train-source", "--data", str(tiny / "bench" / data), "--split", "train", "--out", str(out),
            "--max-steps", "1", "--batch-size", "1", "-q", *extra]


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    return err


# -- 1. an output never overwrites an input or another command's outputs --------------------------------------

def test_adapt_into_train_source_output_is_refused_even_with_no_resume(tiny, tmp_path, capsys):
    src = tmp_path / "src"
    assert main(train_source_argv(tiny, src)) == 0
    model = (src / "final.pt").read_bytes()
    for extra in ((), ("--no-resume",)):
        assert main(adapt_argv(tiny, src, *extra, source=src / "final.pt")) == 2
        assert "holds the outputs of `darth-ray train-source`" in error_line(capsys)
    # a directory train-source wrote before darth_run.json existed is recognised too
    (src / "darth_run.json").unlink()
    assert main(adapt_argv(tiny, src, "--no-resume", source=src / "final.pt")) == 2
    assert "holds the outputs of `darth-ray train-source`" in error_line(capsys)
    assert (src / "final.pt").read_bytes() == model
    # ... and the other way round, and track
    assert main(adapt_argv(tiny, tmp_path / "adapted")) == 0
    assert main(train_source_argv(tiny, tmp_path / "adapted", "source", "--no-resume")) == 2
    assert "holds the outputs of `darth-ray adapt`" in error_line(capsys)
    assert main(["track", "--checkpoint", str(src / "final.pt"), "--data", str(tiny / "bench" / "night"),
                 "--split", "val", "--out", str(src), "-q"]) == 2
    assert "holds the outputs of `darth-ray train-source`" in error_line(capsys)


def test_an_output_that_is_an_input_is_refused(tiny, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(tiny / "source.pt", mine / "final.pt")
    model = (mine / "final.pt").read_bytes()
    assert main(adapt_argv(tiny, mine, "--no-resume", source=mine / "final.pt")) == 2
    err = error_line(capsys)
    assert f"{mine / 'final.pt'}: is an input of adapt, which would overwrite it" in err
    assert (mine / "final.pt").read_bytes() == model

    results = tmp_path / "trk"
    assert main(["track", "--checkpoint", str(tiny / "source.pt"), "--data", str(tiny / "bench" / "night"),
                 "--split", "val", "--out", str(results), "-q"]) == 0
    written = (results / "synth-val-01.txt").read_text()
    gt = tiny / "bench" / "night" / "val"
    assert main(["evaluate", "--gt", str(gt), "--results", str(results),
                 "--json", str(results / "synth-val-01.txt")]) == 2
    assert "--json would overwrite it" in error_line(capsys)
    assert (results / "synth-val-01.txt").read_text() == written
    assert main(["evaluate", "--gt", str(gt), "--results", str(results), "--json", str(results / "metrics.json")]) == 2
    assert "is an output of `darth-ray track`" in error_line(capsys)
    assert main(["convert-mmtrack", str(mine / "final.pt"), str(mine / "final.pt")]) == 2
    assert "OUTPUT would overwrite it" in error_line(capsys)


# -- 2. a resume checks everything the result depends on -------------------------------------------------------

def test_train_source_resume_on_other_data_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "src"
    assert main(train_source_argv(tiny, out, "source")) == 0
    assert main(train_source_argv(tiny, out, "night")) == 2
    err = error_line(capsys)
    bench = tiny.resolve() / "bench"
    assert f"data: {bench / 'source'} -> {bench / 'night'})" in err and "--no-resume" in err
    assert main(train_source_argv(tiny, out, "source")) == 0  # the same inputs resume (and find it finished)
    assert main(train_source_argv(tiny, out, "night", "--no-resume")) == 0
    record = json.loads((out / "darth_run.json").read_text())
    assert record["command"] == "train-source" and record["provenance"]["data"] == str(bench / "night")


def test_adapt_resume_checks_source_by_content_and_target(tiny, tmp_path, capsys):
    out, source = tmp_path / "adapted", tmp_path / "source.pt"
    shutil.copy(tiny / "source.pt", source)
    assert main(adapt_argv(tiny, out, source=source)) == 0
    first_log = (out / "adapt_log.jsonl").read_text()
    assert main(adapt_argv(tiny, out, source=source)) == 0  # unchanged: resumes, nothing to redo
    assert (out / "adapt_log.jsonl").read_text() == first_log

    assert main(adapt_argv(tiny, out, source=source, target="source")) == 2
    err = error_line(capsys)
    assert f"target: {tiny.resolve() / 'bench' / 'night'} -> {tiny.resolve() / 'bench' / 'source'}" in err

    torch.manual_seed(7)
    save_checkpoint(source, build_model("small"))  # same path, other weights
    assert main(adapt_argv(tiny, out, source=source)) == 2
    err = error_line(capsys)
    assert "source_sha256: " in err and "source: " not in err.replace("source_sha256", "")

    # --no-resume starts over: no log line of the first run is left to mix with the new one's
    assert main(adapt_argv(tiny, out, "--no-resume", source=source)) == 0
    assert [json.loads(line)["step"] for line in (out / "adapt_log.jsonl").read_text().splitlines()] == [1]


def test_adapt_last_pt_without_a_record_is_not_resumed_blindly(tiny, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(adapt_argv(tiny, out)) == 0
    (out / "darth_run.json").unlink()  # as an earlier darth_ray left it
    assert main(adapt_argv(tiny, out)) == 2
    err = error_line(capsys)
    assert f"{out / 'last.pt'}: has no darth_run.json" in err and "--no-resume" in err
    assert main(adapt_argv(tiny, out, "--no-resume")) == 0


# -- 6. errors name the right thing, in one line ----------------------------------------------------------------

def test_truncated_adapt_checkpoint_is_one_line_naming_it(tiny, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(adapt_argv(tiny, out, "--epochs", "2", "--lr-steps", "2")) == 0
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[:len(data) // 2])
    assert main(adapt_argv(tiny, out, "--epochs", "2", "--lr-steps", "2")) == 2
    assert f"{out / 'last.pt'}: not a readable torch checkpoint" in error_line(capsys)


def test_track_device_cuda_without_cuda_says_so(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["track", "--checkpoint", str(tiny / "source.pt"), "--data", str(tiny / "bench" / "night"),
            "--split", "val", "--out", str(tmp_path / "trk"), "-q"]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "--device: cuda: CUDA is not available" in error_line(capsys)
    assert main([*argv, "--device", "gpu"]) == 2
    assert "--device: 'gpu' is not a torch device" in error_line(capsys)


@pytest.mark.parametrize("flag, value, message", [("--max-size", "-5", "must be >= 1, got -5"),
                                                  ("--batch-size", "0", "must be >= 1, got 0"),
                                                  ("--batch-size", "two", "expected a whole number >= 1")])
def test_track_numbers_are_checked_at_parse_time(tiny, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["track", "--checkpoint", str(tiny / "source.pt"), "--data", str(tiny / "bench" / "night"),
              "--split", "val", "--out", str(tmp_path / "trk"), flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_track_sequence_refuses_bad_sizes(tiny):
    from darth_ray.data.mot import load_sequences
    from darth_ray.eval.track import track_sequence
    from darth_ray.models.tracker import QuasiDenseTracker

    model = build_model("small")
    seq = load_sequences(tiny / "bench" / "night", split="val")[0]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        track_sequence(model, seq, QuasiDenseTracker(), batch_size=0)
    with pytest.raises(ValueError, match="max_size must be None or an int >= 1, got -5"):
        track_sequence(model, seq, QuasiDenseTracker(), max_size=-5)


def test_img_scale_too_small_for_the_detector_is_refused(tiny, tmp_path, capsys):
    from darth_ray.adapt.config import DarthConfig

    assert main(adapt_argv(tiny, tmp_path / "a", "--img-scale", "7", "7")) == 2
    assert "img_scale must be None or (w, h) of ints >= 32, got (7, 7)" in error_line(capsys)
    assert DarthConfig(img_scale=(32, 64)).img_scale == (32, 64)


@pytest.mark.parametrize("command", ["track", "adapt", "train-source", "synth"])
def test_out_naming_an_existing_file_is_refused_up_front(tiny, tmp_path, capsys, monkeypatch, command):
    import darth_ray.eval.track

    monkeypatch.setattr(darth_ray.eval.track, "track_sequences", lambda *a, **k: pytest.fail("tracked first"))
    out = tmp_path / "taken"
    out.write_text("mine\n")
    argv = {"track": ["track", "--checkpoint", str(tiny / "source.pt"), "--data", str(tiny / "bench" / "night"),
                      "--split", "val", "--out", str(out), "-q"],
            "adapt": adapt_argv(tiny, out),
            "train-source": train_source_argv(tiny, out),
            "synth": ["synth", "--out", str(out), "-q"]}[command]
    assert main(argv) == 2
    assert f"{out}: --out names an existing file; it must be a directory" in error_line(capsys)
    assert out.read_text() == "mine\n"


# -- 7. atomic files get the permissions a plain write would ----------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_files_get_the_mode_a_plain_write_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        writers = {"a.json": lambda p: atomic_write_json(p, {"x": 1}), "b.txt": lambda p: atomic_write_text(p, "x"),
                   "c.pt": lambda p: atomic_torch_save({"x": torch.zeros(1)}, p)}
        for name, write in writers.items():
            write(tmp_path / name)
            assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(0o666 & ~umask), name
            os.chmod(tmp_path / name, 0o640)  # replacing a file keeps its mode, as a plain write does
            write(tmp_path / name)
            assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(0o640), name
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writers)  # no temporary file left
    finally:
        os.umask(old)


# -- 9. adapt_log.jsonl labels each step with its own epoch -----------------------------------------------------

def test_adapt_log_epoch_is_the_steps_own(tiny, tmp_path):
    out = tmp_path / "adapted"
    assert main(adapt_argv(tiny, out, "--epochs", "2", "--lr-steps", "2", "--frames-per-batch", "6")) == 0
    log = [json.loads(line) for line in (out / "adapt_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in log] == [(1, 0), (2, 0), (3, 1), (4, 1)]


def test_starting_over_removes_only_the_previous_runs_own_outputs(tmp_path):
    from darth_ray.io import claim_output_dir

    out = tmp_path / "trk"
    assert claim_output_dir(out, "track", {"data": "a"}, ["a.txt", "metrics.json"]) is False
    for name in ("a.txt", "metrics.json", "notes.txt"):
        (out / name).write_text("x")
    (tmp_path / "victim").write_text("keep")
    record = json.loads((out / "darth_run.json").read_text())
    record["outputs"].append("../victim")  # a record is data, never a licence to delete outside its directory
    (out / "darth_run.json").write_text(json.dumps(record))
    assert claim_output_dir(out, "track", {"data": "b"}, ["b.txt", "metrics.json"], resume=True) is False
    assert sorted(p.name for p in out.iterdir()) == ["darth_run.json", "notes.txt"]
    assert (tmp_path / "victim").read_text() == "keep"
    assert json.loads((out / "darth_run.json").read_text())["provenance"] == {"data": "b"}


def test_json_outputs_are_strict_json(tmp_path):
    """NaN (LocA without true positives) and infinities are not JSON: written as null, readable by any parser."""
    import math

    from darth_ray.io import atomic_write_json

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    path = atomic_write_json(tmp_path / "m.json", {"LocA": math.nan, "rows": [1.5, -math.inf], "n": 3})
    assert json.loads(path.read_text(), parse_constant=refuse) == {"LocA": None, "rows": [1.5, None], "n": 3}

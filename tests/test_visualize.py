"""Track videos (darth_ray/eval/visualize.py, `darth-ray visualize`): one video frame per tracked frame, ids keep
their colour, result sets side by side, bad input refused naming the file."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageSequence

from darth_ray.cli import main
from darth_ray.data.mot import load_sequences
from darth_ray.eval.metrics import read_results
from darth_ray.eval.visualize import VideoConfig, id_colour, sequence_video

FRAMES, WIDTH, HEIGHT = 8, 160, 120
LEFT, RIGHT = (20, 20, 50, 70), (96, 30, 44, 60)  # boxes x, y, w, h


def mot_rows(boxes: dict[int, tuple], frames, tail: str) -> str:
    """MOTChallenge rows: every id of `boxes` ({id: xywh}) in each of `frames`."""
    return "".join(f"{f},{i},{x},{y},{w},{h},{tail}\n" for f in frames for i, (x, y, w, h) in boxes.items())


@pytest.fixture
def data(tmp_path):
    """One MOTChallenge sequence of flat grey frames (ground truth: one person at LEFT) under tmp_path/data."""
    seq = tmp_path / "data" / "seq-a"
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname=seq-a\nimDir=img1\nframeRate=10\nseqLength={FRAMES}\n"
                                     f"imWidth={WIDTH}\nimHeight={HEIGHT}\nimExt=.jpg\n")
    for f in range(1, FRAMES + 1):
        cv2.imwrite(str(seq / "img1" / f"{f:08d}.jpg"), np.full((HEIGHT, WIDTH, 3), 60, np.uint8))
    (seq / "gt" / "gt.txt").write_text(mot_rows({1: LEFT}, range(1, FRAMES + 1), "1,1,1"))
    return tmp_path / "data"


def write_results(folder, text: str):
    folder.mkdir(parents=True)
    (folder / "seq-a.txt").write_text(text)
    return folder


def decode_mp4(path) -> list[np.ndarray]:
    """Every frame of a video file, RGB."""
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def edge_colour(frame: np.ndarray, box, x_offset: int = 0) -> np.ndarray:
    """The median colour along the middle of a box's left edge (lossy codecs blur single pixels)."""
    x, y, w, h = box
    return np.median(frame[y + h // 3: y + 2 * h // 3, x_offset + x], axis=0)


def test_video_has_one_frame_per_tracked_frame_and_ids_keep_their_colour(data, tmp_path):
    seq = load_sequences(data)[0]
    # id 5 on the left in every frame, id 9 on the right in the first half only; then the two swapped, and nothing
    # tracked in the last two frames (still frames of the video)
    first = write_results(tmp_path / "first", mot_rows({5: LEFT}, range(1, FRAMES + 1), "0.9,-1,-1,-1")
                          + mot_rows({9: RIGHT}, range(1, FRAMES // 2 + 1), "0.9,-1,-1,-1"))
    second = write_results(tmp_path / "second", mot_rows({9: LEFT, 5: RIGHT}, range(1, FRAMES - 1), "0.9,-1,-1,-1"))
    videos = {}
    for run in (first, second):
        tracks = read_results(run, [seq])[seq.name]
        videos[run.name] = decode_mp4(sequence_video(seq, {run.name: tracks}, tmp_path / f"{run.name}.mp4",
                                                     VideoConfig(trail=0)))
    assert [len(v) for v in videos.values()] == [FRAMES, FRAMES]
    assert videos["first"][0].shape == (HEIGHT, WIDTH, 3)
    five, nine = np.array(id_colour(5)), np.array(id_colour(9))
    assert np.abs(five - nine).max() > 100  # far apart, so the checks below tell them apart
    for frame in videos["first"]:
        assert np.abs(edge_colour(frame, LEFT) - five).max() < 40
    assert np.abs(edge_colour(videos["first"][0], RIGHT) - nine).max() < 40
    assert np.abs(edge_colour(videos["first"][-1], RIGHT) - 60).max() < 20  # id 9 ended: background only
    for frame in videos["second"][:-2]:  # the same id, the same colour, wherever and with whichever other ids
        assert np.abs(edge_colour(frame, RIGHT) - five).max() < 40
        assert np.abs(edge_colour(frame, LEFT) - nine).max() < 40
    assert np.abs(edge_colour(videos["second"][-1], LEFT) - 60).max() < 20


def test_cli_compare_gif_side_by_side_with_ground_truth(data, tmp_path, capsys):
    source = write_results(tmp_path / "source" / "results", mot_rows({3: LEFT}, range(1, FRAMES + 1), "0.9,-1,-1,-1"))
    adapted = write_results(tmp_path / "adapted" / "results", mot_rows({4: RIGHT}, range(1, FRAMES + 1),
                                                                       "0.9,-1,-1,-1"))
    out = tmp_path / "videos"
    assert main(["visualize", "--data", str(data), "--results", str(adapted), "--compare", str(source), "--gt",
                 "--format", "gif", "--trail", "3", "--out", str(out), "-q"]) == 0
    assert f"wrote 1 videos to {out}" in capsys.readouterr().out
    gif = Image.open(out / "seq-a.gif")
    frames = [np.array(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == FRAMES and gif.info["duration"] == 100  # the sequence's 10 frames/s
    assert frames[0].shape == (HEIGHT, 2 * WIDTH + 4, 3)  # adapted | 4-pixel gap | source
    offset = WIDTH + 4
    for frame in frames:
        assert np.abs(edge_colour(frame, RIGHT) - id_colour(4)).max() < 40            # adapted, left panel
        assert np.abs(edge_colour(frame, LEFT, offset) - id_colour(3)).max() < 40     # source, right panel
        assert np.abs(edge_colour(frame, LEFT) - 255).max() < 40  # ground truth (white) where adapted has no box
    record = json.loads((out / "darth_run.json").read_text())
    assert record["command"] == "visualize" and record["outputs"] == ["seq-a.gif"]


def test_cli_refuses_bad_input_naming_it(data, tmp_path, capsys):
    results = write_results(tmp_path / "results", mot_rows({1: LEFT}, range(1, FRAMES + 1), "0.9,-1,-1,-1"))
    (results / "seq-b.txt").write_text("1,1,0,0,5,5,1,-1,-1,-1\n")
    argv = ["visualize", "--data", str(data), "--results", str(results), "-q"]
    assert main(argv + ["--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{results / 'seq-b.txt'}: results for sequence 'seq-b'" in err
    (results / "seq-b.txt").unlink()
    assert main(argv + ["--out", str(results)]) == 2
    assert f"{results}: is the --results directory" in capsys.readouterr().err
    assert main(argv + ["--out", str(tmp_path / "v"), "--trail", "-1"]) == 2
    assert "trail must be >= 0" in capsys.readouterr().err
    assert sorted(p.name for p in results.iterdir()) == ["seq-a.txt"]  # nothing written beside the results


def test_the_trackers_result_arrays_draw_as_their_result_file_does(data, tmp_path):
    """What a Train worker hands over for its W&B video: the arrays of track_sequence (boxes x1y1x2y2)."""
    from darth_ray.data.results import write_results as write_result_file

    seq = load_sequences(data)[0]
    x, y, w, h = LEFT
    arrays = {"frames": np.arange(1, FRAMES + 1), "ids": np.full(FRAMES, 5),
              "boxes": np.tile([x, y, x + w, y + h], (FRAMES, 1)).astype(float), "scores": np.full(FRAMES, 0.9)}
    write_result_file(tmp_path / "results" / "seq-a.txt", *(arrays[k] for k in ("frames", "ids", "boxes", "scores")))
    from_file = read_results(tmp_path / "results", [seq])[seq.name]
    videos = [decode_mp4(sequence_video(seq, {"adapted": results}, tmp_path / f"{name}.mp4"))
              for name, results in (("arrays", arrays), ("file", from_file))]
    assert len(videos[0]) == FRAMES and all(np.array_equal(a, b) for a, b in zip(*videos))
    assert np.abs(edge_colour(videos[0][0], LEFT) - id_colour(5)).max() < 40

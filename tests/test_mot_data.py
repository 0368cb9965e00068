"""MOTChallenge/DanceTrack reading, bad-input errors, sharding, pair sampling and result writing."""
from pathlib import Path

import numpy as np
import pytest

from darth_ray.data.mot import SeqInfo, Sequence, load_sequences, read_mot_file, read_seqmap
from darth_ray.data.results import format_results, write_results
from darth_ray.data.sampling import sample_frame_pairs
from darth_ray.data.sharding import shard_frames, shard_sequences
from darth_ray.io import InputError


def make_seq(root: Path, name: str, gt_rows: list[str], length=5, w=64, h=48, images=True) -> Path:
    d = root / name
    (d / "gt").mkdir(parents=True)
    (d / "seqinfo.ini").write_text(SeqInfo(name, "img1", 20, length, w, h, ".jpg").to_ini())
    (d / "gt" / "gt.txt").write_text("\n".join(gt_rows) + "\n")
    if images:
        import cv2

        (d / "img1").mkdir()
        for f in range(1, length + 1):
            cv2.imwrite(str(d / "img1" / f"{f:08d}.jpg"), np.full((h, w, 3), 10 * f, dtype=np.uint8))
    return d


MOT17_ROWS = ["1,1,10,10,5,10,1,1,1.0", "1,2,20,10,5,10,0,1,0.5", "1,3,30,10,5,10,1,7,1.0",
              "2,1,11,10,5,10,1,1,1.0"]


def test_sequence_reads_mot17_gt_and_targets(tmp_path):
    seq = Sequence(make_seq(tmp_path, "MOT17-02", MOT17_ROWS))
    assert seq.num_frames == 5 and seq.info.width == 64
    assert len(seq.gt) == 4 and list(seq.gt.frame_rows(1).indices(4)[:2]) == [0, 3]
    t = seq.targets(1)
    # only the pedestrian with conf 1 is a training target; the ignored one and the static person are ignore boxes
    np.testing.assert_array_equal(t["ids"], [1])
    np.testing.assert_allclose(t["boxes"], [[10, 10, 15, 20]])
    assert len(t["ignore_boxes"]) == 2
    img = seq.load_image(2)
    assert img.shape == (3, 48, 64) and abs(int(img.float().mean()) - 20) <= 2


def test_mot15_rows_with_world_coordinates_are_all_pedestrians(tmp_path):
    seq = Sequence(make_seq(tmp_path, "TUD", ["1,1,10,10,5,10,1,4.48,5.50,0", "1,2,30,10,5,10,1,-1,-1,-1"],
                            images=False))
    assert seq.gt.looks_like_mot15
    np.testing.assert_array_equal(seq.targets(1)["ids"], [1, 2])


@pytest.mark.parametrize("row, message, line", [
    ("1,1,10,10,5", "expected 6 to 10", 2),
    ("1,1,10,abc,5,10,1,1,1", "non-numeric", 2),
    ("9,1,10,10,5,10,1,1,1", "frame 9 is outside 1..5", 2),
    ("0,1,10,10,5,10,1,1,1", "frame 0 is outside", 2),
    ("1,1.5,10,10,5,10,1,1,1", "must be integers", 2),
    ("1,1,10,10,0,10,1,1,1", "width and height must be positive", 2),
    ("1,1,12,12,5,10,1,1,1", "id 1 appears twice in frame 1", 2),
    ("1,9223372036854775808,10,10,5,10,1,1,1", "must be integers within int64", 2),   # 2**63
    ("1,-9223372036854775809,10,10,5,10,1,1,1", "must be integers within int64", 2),
    ("1,1e30,10,10,5,10,1,1,1", "must be integers within int64", 2),
    ("1,9007199254740993.5,10,10,5,10,1,1,1", "must be integers", 2),   # a float reads 2**53 + 1.5 as 2**53 + 2
    ("1,1,10,10,5,nan,1,1,1", "non-finite value", 2),
])
def test_malformed_gt_rows_name_file_and_line(tmp_path, row, message, line):
    path = tmp_path / "gt.txt"
    path.write_text("1,1,10,10,5,10,1,1,1\n" + row + "\n")
    with pytest.raises(InputError, match=message) as err:
        read_mot_file(path, seq_length=5)
    assert err.value.path == str(path) and err.value.line == line
    assert f"gt.txt:{line}:" in str(err.value)


def test_ids_are_read_exactly_within_int64(tmp_path):
    """Ids above 2**53 stay distinct (a float merges 2**53 and 2**53 + 1); integral float spellings are accepted."""
    path = tmp_path / "gt.txt"
    path.write_text("1,9007199254740992,0,0,5,10\n1,9007199254740993.000000,9,0,5,10\n"
                    "2,9223372036854775807,0,0,5,10\n2,-9223372036854775808,9,0,5,10\n3,7.0,0,0,5,10\n"
                    "4.000,1e1,0,0,5,10\n")
    tracks = read_mot_file(path, seq_length=4)
    assert tracks.ids.dtype == np.int64
    assert tracks.ids.tolist() == [2**53, 2**53 + 1, 2**63 - 1, -2**63, 7, 10]
    assert tracks.frames.tolist() == [1, 1, 2, 2, 3, 4]


def test_large_id_does_not_make_the_duplicate_check_overflow(tmp_path):
    """With an id of 2**62, frame 1 / id 5 and frame 5 / id 1 once had the same int64 key: a false duplicate."""
    path = tmp_path / "gt.txt"
    path.write_text("1,4611686018427387904,0,0,5,10\n1,5,9,0,5,10\n5,1,0,0,5,10\n")
    assert read_mot_file(path, seq_length=5).ids.tolist() == [2**62, 5, 1]
    path.write_text("1,4611686018427387904,0,0,5,10\n1,5,9,0,5,10\n5,1,0,0,5,10\n1,4611686018427387904.0,0,0,5,10\n")
    with pytest.raises(InputError, match="id 4611686018427387904 appears twice in frame 1") as err:
        read_mot_file(path, seq_length=5)
    assert err.value.line == 4


def _noise_jpeg(w=64, h=48, **exif_thumbnail) -> bytes:
    """A JPEG whose compressed data fills most of the file (noise), optionally with an EXIF thumbnail that has its
    own end-of-image marker."""
    import cv2

    ok, enc = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    data = enc.tobytes()
    if exif_thumbnail:
        thumb = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        payload = b"Exif\0\0" + thumb
        data = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    return data


@pytest.mark.parametrize("thumbnail", [False, True])
def test_truncated_jpeg_is_refused_naming_the_file(tmp_path, thumbnail):
    """libjpeg decodes a JPEG cut at 60 % with only a warning; the frame must be refused, not used half grey."""
    seq = Sequence(make_seq(tmp_path, "s", MOT17_ROWS, length=2))
    data = _noise_jpeg(thumbnail=True) if thumbnail else _noise_jpeg()
    seq.image_path(1).write_bytes(data)
    assert seq.load_image(1).shape == (3, 48, 64)
    seq.image_path(1).write_bytes(data[:int(len(data) * 0.6)])
    with pytest.raises(InputError, match="truncated or corrupt image") as err:
        seq.load_image(1)
    assert err.value.path == str(seq.image_path(1))


def test_truncated_png_and_empty_image_are_refused(tmp_path):
    import cv2

    d = make_seq(tmp_path, "s", MOT17_ROWS, length=2)
    (d / "seqinfo.ini").write_text(SeqInfo("s", "img1", 20, 2, 64, 48, ".png").to_ini())
    seq = Sequence(d)
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))[1].tobytes()
    seq.image_path(1).write_bytes(png)
    assert seq.load_image(1).shape == (3, 48, 64)
    for broken in (png[:int(len(png) * 0.6)], b""):
        seq.image_path(1).write_bytes(broken)
        with pytest.raises(InputError, match=r"00000001.png: truncated or corrupt image"):
            seq.load_image(1)


@pytest.mark.parametrize("with_bom", ["val/s1/seqinfo.ini", "val/s1/gt/gt.txt", "val_seqmap.txt"])
def test_text_files_with_a_byte_order_mark_are_read(tmp_path, with_bom):
    """Windows editors start UTF-8 files with a BOM; seqinfo.ini, gt.txt and seqmaps must read as without one."""
    make_seq(tmp_path / "val", "s1", MOT17_ROWS, images=False)
    (tmp_path / "val_seqmap.txt").write_text("name\ns1\n")
    path = tmp_path / with_bom
    path.write_text("\ufeff" + path.read_text())
    (seq,) = load_sequences(tmp_path, split="val")
    assert seq.info.seq_length == 5 and len(seq.gt) == 4 and seq.gt.frames[0] == 1


def test_text_that_is_not_utf8_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_bytes(b"1,1,10,10,5,10,1,1,1\n1,2,\xe9,10,5,10,1,1,1\n")
    with pytest.raises(InputError, match="not UTF-8 text") as err:
        read_mot_file(path)
    assert err.value.line == 2
    (tmp_path / "seqinfo.ini").write_bytes("[Sequence]\nname=é\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"seqinfo.ini:1: not UTF-8 text"):
        SeqInfo.read(tmp_path / "seqinfo.ini")


def test_missing_seqinfo_images_and_seqmap_errors(tmp_path):
    d = make_seq(tmp_path, "a", MOT17_ROWS)
    (d / "img1" / "00000003.jpg").unlink()
    with pytest.raises(InputError, match="00000003.jpg: missing image"):
        load_sequences(tmp_path, require_images=True)
    (tmp_path / "b").mkdir()
    with pytest.raises(InputError, match=r"b/seqinfo.ini: missing seqinfo.ini"):
        load_sequences(tmp_path)
    (tmp_path / "b" / "seqinfo.ini").write_text("[Sequence]\nname=b\nimWidth=10\nimHeight=10\n")
    with pytest.raises(InputError, match="has no 'seqLength'"):
        load_sequences(tmp_path)
    (tmp_path / "seqmap.txt").write_text("name\nzzz\n")
    with pytest.raises(InputError, match="lists sequence 'zzz'"):
        load_sequences(tmp_path, seqmap=tmp_path / "seqmap.txt")
    (tmp_path / "bad_seqmap.txt").write_text("a\n")
    with pytest.raises(InputError, match="header line 'name'"):
        read_seqmap(tmp_path / "bad_seqmap.txt")
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(d / "img1")
    with pytest.raises(InputError, match="missing image directory"):
        Sequence(d, require_images=True)


def test_split_with_seqmap(tmp_path):
    for name in ("s2", "s1", "s3"):
        make_seq(tmp_path / "val", name, MOT17_ROWS, images=False)
    assert [s.name for s in load_sequences(tmp_path, split="val")] == ["s1", "s2", "s3"]
    (tmp_path / "val_seqmap.txt").write_text("name\ns3\ns1\n")
    assert [s.name for s in load_sequences(tmp_path, split="val")] == ["s3", "s1"]


def test_shard_sequences_balanced_deterministic_and_complete():
    counts = {"a": 100, "b": 40, "c": 60, "d": 50, "e": 50}
    shards = shard_sequences(counts, 2)
    assert shards == shard_sequences(dict(counts), 2)
    assert sorted(sum(shards, [])) == sorted(counts)
    loads = [sum(counts[n] for n in s) for s in shards]
    assert max(loads) - min(loads) <= 10, loads   # LPT: a(100)|c(60) d(50)... -> 150 / 150
    assert shard_sequences(counts, 7)[5:] == [[], []]
    with pytest.raises(ValueError, match="num_shards"):
        shard_sequences(counts, 0)


def test_shard_frames_every_frame_exactly_once():
    counts = {"a": 7, "b": 3, "c": 10}
    shards = shard_frames(counts, 3)
    assert [len(s) for s in shards] == [7, 7, 6]
    flat = sum(shards, [])
    assert len(flat) == len(set(flat)) == 20
    assert shards[0][0] == ("a", 1) and shards[2][-1] == ("c", 10)


def test_frame_pairs_stay_in_window_and_sequence():
    pairs = sample_frame_pairs({"a": 30, "b": 1}, frame_range=3, seed=1)
    assert len(pairs) == 31
    for name, key, ref in pairs:
        if name == "a":
            assert ref != key and abs(ref - key) <= 3 and 1 <= ref <= 30
        else:
            assert key == ref == 1
    assert pairs == sample_frame_pairs({"a": 30, "b": 1}, frame_range=3, seed=1)
    assert pairs != sample_frame_pairs({"a": 30, "b": 1}, frame_range=3, seed=2)


def test_results_round_trip(tmp_path):
    path = write_results(tmp_path / "s.txt", frames=[2, 1], ids=[1, 3], boxes_xyxy=[[1, 2, 11, 22], [0, 0, 5, 5]],
                         scores=[0.9, 0.5])
    assert path.read_text().splitlines() == ["1,3,0.00,0.00,5.00,5.00,0.5000,-1,-1,-1",
                                             "2,1,1.00,2.00,10.00,20.00,0.9000,-1,-1,-1"]
    tracks = read_mot_file(path, seq_length=2, kind="results")
    np.testing.assert_allclose(tracks.boxes, [[0, 0, 5, 5], [1, 2, 10, 20]])
    with pytest.raises(ValueError, match="start at 1"):
        format_results([1], [0], [[0, 0, 1, 1]], [1.0])


def test_input_error_survives_pickling():
    """Errors raised in Ray workers travel to the driver pickled: the message must arrive intact."""
    import pickle

    e = pickle.loads(pickle.dumps(InputError("/data/seq/gt/gt.txt", "bad row", 7)))
    assert isinstance(e, InputError) and str(e) == "/data/seq/gt/gt.txt:7: bad row" and e.line == 7

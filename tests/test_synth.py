"""The embedded synthetic benchmark: layout, ground truth, determinism, domain shifts, DanceTrack-like difficulty."""
from __future__ import annotations

import configparser
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from darth_ray.data import synth
from darth_ray.data.synth import (DEFAULT_TARGET_DOMAINS, PIXEL_DOMAINS, SCENE_DOMAINS, SynthConfig,
                                  benchmark_matches, generate_benchmark, make_scene, render_frame, scene_ground_truth,
                                  source_split_key)

TINY = dict(width=96, height=64, frames=6, train_sequences=2, val_sequences=1, people=4)
ALL_DOMAINS = ("source",) + DEFAULT_TARGET_DOMAINS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, SynthConfig, dict]:
    out = tmp_path_factory.mktemp("synth") / "bench"
    config = SynthConfig(**TINY)
    manifest = generate_benchmark(out, config, progress=False)
    return out, config, manifest


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_gt(path: Path) -> np.ndarray:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert all(len(r) == 9 for r in rows), "DanceTrack gt rows have 9 columns"
    return np.array(rows, dtype=float)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def high_frequency_energy(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    detail = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0))
    return float(detail[mask].mean() if mask is not None else detail.mean())


# ------------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("field, value", [
    ("frames", 1), ("width", 100), ("width", 32), ("height", 48), ("height", 70), ("people", 0),
    ("shift_strength", 1.5), ("shift_strength", -0.1), ("train_sequences", 0), ("val_sequences", 0), ("seed", -1),
    ("jpeg_quality", 0), ("frames", 2.5),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**{field: value})


def test_config_lists_unknown_domains():
    with pytest.raises(ValueError, match=r"domains.*'rain'.*known: source, night, fog, noise_blur, texture"):
        SynthConfig(domains=("source", "rain"))
    with pytest.raises(ValueError, match="domains"):
        SynthConfig(domains=())
    with pytest.raises(ValueError, match="domains"):
        SynthConfig(domains="night")
    with pytest.raises(ValueError, match="twice"):
        SynthConfig(domains=("night", "night"))


def test_config_defaults_and_round_trip():
    config = SynthConfig()
    assert (config.width, config.height) == (320, 192)
    assert len(DEFAULT_TARGET_DOMAINS) >= 3 and config.domains == ALL_DOMAINS
    assert SynthConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SynthConfig(domains=["fog"]).domains == ("fog",)


# ------------------------------------------------------------------------------------------------ layout


def test_layout_seqinfo_and_seqmaps(tiny):
    out, config, manifest = tiny
    for domain in ALL_DOMAINS:
        for split, count in (("train", 2), ("val", 1)):
            names = [f"synth-{split}-{k:02d}" for k in range(1, count + 1)]
            assert (out / domain / f"{split}_seqmap.txt").read_text() == "name\n" + "".join(n + "\n" for n in names)
            assert sorted(p.name for p in (out / domain / split).iterdir()) == names
            for name in names:
                seq = out / domain / split / name
                ini = configparser.ConfigParser()
                ini.read(seq / "seqinfo.ini")
                assert dict(ini["Sequence"]) == {"name": name, "imdir": "img1", "framerate": "20", "seqlength": "6",
                                                 "imwidth": "96", "imheight": "64", "imext": ".jpg"}
                images = sorted((seq / "img1").iterdir())
                assert [p.name for p in images] == [f"{t:08d}.jpg" for t in range(1, 7)]
                image = cv2.imread(str(images[0]))
                assert image.shape == (64, 96, 3)
                assert (seq / "gt" / "gt.txt").stat().st_size > 0
    on_disk = json.loads((out / "benchmark.json").read_text())
    assert on_disk == manifest
    assert on_disk["config"] == config.to_dict()
    assert on_disk["domains"]["fog"]["val"]["sequences"] == ["synth-val-01"]
    assert on_disk["domains"]["fog"]["val"]["frames"] == 6
    assert "grey" in on_disk["domains"]["fog"]["description"]
    assert benchmark_matches(out, config)
    assert not benchmark_matches(out, SynthConfig(**{**TINY, "seed": 1}))


def test_gt_rows_are_well_formed(tiny):
    out, config, _ = tiny
    total = 0
    for split in ("train", "val"):
        for seq in sorted((out / "source" / split).iterdir()):
            gt = read_gt(seq / "gt" / "gt.txt")
            total += len(gt)
            frames, ids, boxes = gt[:, 0], gt[:, 1], gt[:, 2:6]
            assert np.all(gt[:, 6:] == 1)
            assert np.all(frames == frames.astype(int)) and frames.min() >= 1 and frames.max() <= config.frames
            assert np.all(np.diff(frames) >= 0), "rows are sorted by frame"
            assert np.all(ids >= 1) and np.all(ids <= config.people)
            pairs = set(zip(frames.tolist(), ids.tolist()))
            assert len(pairs) == len(gt), "an id appears at most once per frame"
            assert np.all(boxes[:, 2:] > 0)
            assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
            assert np.all(boxes[:, 0] + boxes[:, 2] <= config.width + 1e-6)
            assert np.all(boxes[:, 1] + boxes[:, 3] <= config.height + 1e-6)
    assert total > 0


def test_same_scenes_in_every_domain(tiny):
    out, config, _ = tiny
    for split in ("train", "val"):
        for name in config.sequence_names(split):
            source = (out / "source" / split / name / "gt" / "gt.txt").read_bytes()
            for domain in PIXEL_DOMAINS:
                assert (out / domain / split / name / "gt" / "gt.txt").read_bytes() == source
    # ... while different sequences are different scenes.
    train = [(out / "source" / "train" / n / "gt" / "gt.txt").read_bytes() for n in config.sequence_names("train")]
    assert train[0] != train[1]
    assert train[0] != (out / "source" / "val" / "synth-val-01" / "gt" / "gt.txt").read_bytes()


def test_generation_is_deterministic_and_seed_dependent(tiny, tmp_path):
    out, config, _ = tiny
    again = tmp_path / "again"
    generate_benchmark(again, config, progress=False)
    assert files_under(again) == files_under(out)

    other = tmp_path / "other"
    generate_benchmark(other, SynthConfig(**{**TINY, "seed": 1}), progress=False)
    gt = "source/val/synth-val-01/gt/gt.txt"
    image = "fog/val/synth-val-01/img1/00000003.jpg"
    assert (other / gt).read_bytes() != (out / gt).read_bytes()
    assert (other / image).read_bytes() != (out / image).read_bytes()


def test_regeneration_replaces_an_older_benchmark(tmp_path):
    out = tmp_path / "bench"
    generate_benchmark(out, SynthConfig(**{**TINY, "frames": 8, "domains": ("source", "fog")}), progress=False)
    smaller = SynthConfig(**{**TINY, "train_sequences": 1, "domains": ("source", "fog")})
    manifest = generate_benchmark(out, smaller, progress=False)
    assert not (out / "source" / "train" / "synth-train-02").exists()
    assert len(list((out / "fog" / "val" / "synth-val-01" / "img1").iterdir())) == 6
    assert manifest["config"]["train_sequences"] == 1 and benchmark_matches(out, smaller)
    # Keyword overrides build the config.
    manifest = generate_benchmark(tmp_path / "kw", progress=False, **{**TINY, "domains": ("night",)})
    assert list(manifest["domains"]) == ["night"] and (tmp_path / "kw" / "night" / "val_seqmap.txt").is_file()


# ------------------------------------------------------------------------------------------------ domain shifts


def domain_frames(out: Path, domain: str) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted((out / domain).glob("*/*/img1/*.jpg"))]


def test_each_domain_shifts_appearance_as_intended(tiny):
    out, config, _ = tiny
    frames = {d: np.stack(domain_frames(out, d)).astype(np.float32) for d in ALL_DOMAINS}
    source = frames["source"]
    # night: much darker, and blue-shifted (BGR: blue over red relative to the source).
    assert frames["night"].mean() < 0.6 * source.mean()
    cast = lambda x: x[..., 0].mean() / x[..., 2].mean()
    assert cast(frames["night"]) > 1.1 * cast(source)
    # fog: lower contrast, brighter on average (a blend toward light grey).
    assert frames["fog"].std() < 0.7 * source.std()
    assert frames["fog"].mean() > source.mean()
    # noise_blur: far more high-frequency energy (sensor noise).
    hf = {d: np.mean([high_frequency_energy(f.astype(np.uint8)) for f in frames[d]]) for d in ALL_DOMAINS}
    assert hf["noise_blur"] > 2.0 * hf["source"]
    # fog blurs: less detail than the source.
    assert hf["fog"] < hf["source"]


def test_texture_domain_changes_the_background_not_the_people():
    config = SynthConfig(frames=12, train_sequences=1, val_sequences=1, people=5)
    scene = make_scene(config, "val", 1)
    rows = np.array(scene_ground_truth(scene))
    for t in (0, 6, 11):
        source, texture = render_frame(scene, t, "source"), render_frame(scene, t, "texture")
        on_people = np.zeros(source.shape[:2], bool)
        for _, _, x, y, w, h in rows[rows[:, 0] == t + 1]:
            on_people[int(y) + 1:int(y + h) - 1, int(x) + 1:int(x + w) - 1] = True
        background = ~on_people
        assert high_frequency_energy(texture, background) > 2.0 * high_frequency_energy(source, background)
        diff = np.abs(texture.astype(np.float32) - source.astype(np.float32)).mean(axis=2)
        # Boxes include some background around the limbs, so only "clearly less" inside them.
        assert diff[on_people].mean() < 0.8 * diff[background].mean()


def test_zero_strength_is_the_source_domain():
    config = SynthConfig(width=128, height=64, frames=4, train_sequences=1, val_sequences=1, people=3)
    scene = make_scene(config, "train", 1)
    source = render_frame(scene, 2, "source")
    for domain in PIXEL_DOMAINS:
        assert np.array_equal(render_frame(scene, 2, domain, strength=0.0), source), domain
        assert not np.array_equal(render_frame(scene, 2, domain, strength=1.0), source), domain


def test_render_frame_rejects_bad_arguments():
    scene = make_scene(SynthConfig(width=64, height=64, frames=2, train_sequences=1, val_sequences=1), "val", 1)
    with pytest.raises(ValueError, match="shift_strength"):
        render_frame(scene, 0, "fog", strength=2.0)
    with pytest.raises(ValueError, match="domain"):
        render_frame(scene, 0, "snow")
    with pytest.raises(ValueError, match="frame"):
        render_frame(scene, 2)
    with pytest.raises(ValueError, match="index"):
        make_scene(scene.config, "val", 2)


def test_stronger_shift_moves_further_from_source():
    scene = make_scene(SynthConfig(frames=4, train_sequences=1, val_sequences=1), "val", 1)
    source = render_frame(scene, 1).astype(np.float32)
    for domain in PIXEL_DOMAINS:
        weak, strong = (np.abs(render_frame(scene, 1, domain, strength=s) - source).mean() for s in (0.3, 0.9))
        assert strong > weak > 0, domain


def by_id(rows) -> dict[int, np.ndarray]:
    """{track id: [frames, 5] rows (frame, x, y, w, h)} of scene_ground_truth rows."""
    rows = np.array(rows)
    return {int(i): rows[rows[:, 1] == i][:, [0, 2, 3, 4, 5]] for i in np.unique(rows[:, 1])}


SCENE_CONFIG = SynthConfig(frames=60, train_sequences=1, val_sequences=2, balls=1)


@pytest.mark.parametrize("domain", SCENE_DOMAINS)
def test_scene_domains_are_the_source_scene_at_zero_strength_and_keep_its_stage(domain):
    config = SynthConfig(**{**TINY, "shift_strength": 0.0})
    source, shifted = make_scene(config, "val", 1), make_scene(config, "val", 1, domain)
    assert scene_ground_truth(shifted) == scene_ground_truth(source)
    assert np.array_equal(render_frame(shifted, 3, domain), render_frame(source, 3))
    strong, base = make_scene(SCENE_CONFIG, "val", 1, domain), make_scene(SCENE_CONFIG, "val", 1)
    assert not np.array_equal(render_frame(strong, 30, domain), render_frame(base, 30))
    assert (scene_ground_truth(strong) == scene_ground_truth(base)) == (domain == "uniform")  # clothes only
    assert np.array_equal(strong.background, base.background) and np.array_equal(strong.jitter, base.jitter)


def test_closeup_and_far_change_the_size_of_everyone():
    source = by_id(scene_ground_truth(make_scene(SCENE_CONFIG, "val", 2)))
    for domain, low, high in (("closeup", 1.7, 2.3), ("far", 0.45, 0.6)):
        shifted = by_id(scene_ground_truth(make_scene(SCENE_CONFIG, "val", 2, domain)))
        ratios = []
        for i, rows in source.items():
            common = np.intersect1d(rows[:, 0], shifted[i][:, 0])
            a = rows[np.isin(rows[:, 0], common)][:, 4]
            b = shifted[i][np.isin(shifted[i][:, 0], common)][:, 4]
            ratios.append(np.median(b / a))
        assert low < np.median(ratios) < high, (domain, ratios)


def test_crowd_adds_dancers_and_leaves_the_others_where_they_were():
    s = SCENE_CONFIG.shift_strength
    source, crowd = make_scene(SCENE_CONFIG, "val", 1), make_scene(SCENE_CONFIG, "val", 1, "crowd")
    assert len(crowd.people) == len(source.people) + round(3 * s * len(source.people))
    before, after = by_id(scene_ground_truth(source)), by_id(scene_ground_truth(crowd))
    for i, rows in before.items():   # the source's people and ball, unchanged and with their ids
        assert np.array_equal(after[i], rows)
    new = set(after) - set(before)
    assert len(new) >= len(source.people) and min(new) > max(before)
    costumes = {(p.top, p.bottom) for p in source.people}
    # Extra dancers wear the scene's costumes (jittered as any dancer's): no new look.
    for p in crowd.people[len(source.people):]:
        assert min(np.abs(np.subtract(p.top, t)).max() for t, _ in costumes) <= 24


def test_uniform_dresses_everyone_alike_in_a_costume_of_no_source_scene():
    source, uniform = make_scene(SCENE_CONFIG, "val", 1), make_scene(SCENE_CONFIG, "val", 1, "uniform")
    assert scene_ground_truth(uniform) == scene_ground_truth(source)   # the same dance, other clothes
    looks = {(p.top, p.bottom, p.skin, p.hair) for p in uniform.people}
    assert len(looks) == 1
    top = np.array(next(iter(looks))[0])
    assert all(np.abs(top - np.array(c[0])).max() > 60 for c in synth._COSTUMES)


def test_fast_moves_everyone_farther_between_frames():
    def mean_step(rows) -> float:
        steps = [np.abs(np.diff(r[:, 1] + r[:, 3] / 2)) for r in by_id(rows).values() if len(r) > 1]
        return float(np.mean(np.concatenate(steps)))
    source = mean_step(scene_ground_truth(make_scene(SCENE_CONFIG, "val", 1)))
    fast = mean_step(scene_ground_truth(make_scene(SCENE_CONFIG, "val", 1, "fast")))
    assert fast > 2.5 * source


def test_scene_domains_get_their_own_ground_truth_and_share_the_source_model(tmp_path):
    config = SynthConfig(**{**TINY, "domains": ("source", "night", "crowd"), "balls": 1, "width": 192,
                            "height": 128})
    out = tmp_path / "bench"
    manifest = generate_benchmark(out, config, progress=False)
    gt = {d: read_gt(out / d / "val" / "synth-val-01" / "gt" / "gt.txt") for d in config.domains}
    assert np.array_equal(gt["night"], gt["source"])
    assert len(np.unique(gt["crowd"][:, 1])) > len(np.unique(gt["source"][:, 1]))
    coco = json.loads((out / "crowd" / "annotations" / "val_cocofmt.json").read_text())
    assert len(coco["annotations"]) == len(gt["crowd"])
    image = cv2.imread(str(out / "crowd" / "val" / "synth-val-01" / "img1" / "00000003.jpg"))
    rendered = {d: render_frame(make_scene(config, "val", 1, d), 2, d).astype(float) for d in ("crowd", "source")}
    where = np.abs(rendered["crowd"] - rendered["source"]).max(axis=2) > 40   # the extra dancers
    error = {d: np.abs(image - r)[where].mean() for d, r in rendered.items()}
    assert where.sum() > 100 and error["crowd"] < 0.3 * error["source"]   # the crowd scene's frame, up to JPEG
    # A source model depends on the source frames alone: other target domains, strengths or val splits keep it.
    other = dataclasses.replace(config, domains=("source", "fog"), shift_strength=0.3, val_sequences=3)
    assert source_split_key({"version": manifest["version"], "config": other.to_dict()}) == source_split_key(manifest)
    more_frames = dataclasses.replace(config, frames=7)
    assert source_split_key({"version": manifest["version"], "config": more_frames.to_dict()}) \
        != source_split_key(manifest)


# ------------------------------------------------------------------------------------------------ difficulty


@pytest.fixture(scope="module")
def default_ground_truth() -> dict[str, np.ndarray]:
    config = SynthConfig()
    return {f"{split}-{k}": np.array(scene_ground_truth(make_scene(config, split, k)))
            for split in ("train", "val") for k in range(1, len(config.sequence_names(split)) + 1)}


def test_default_scenes_have_crossings(default_ground_truth):
    crossing_sequences = 0
    for rows in default_ground_truth.values():
        found = False
        for frame in np.unique(rows[:, 0]):
            boxes = rows[rows[:, 0] == frame, 2:6]
            if any(iou(boxes[i], boxes[j]) > 0.3 for i in range(len(boxes)) for j in range(i + 1, len(boxes))):
                found = True
                break
        crossing_sequences += found
    assert crossing_sequences >= 2


def test_default_scenes_have_people_entering_or_leaving(default_ground_truth):
    frames = SynthConfig().frames
    for name, rows in default_ground_truth.items():
        spans = {i: (rows[rows[:, 1] == i, 0].min(), rows[rows[:, 1] == i, 0].max()) for i in np.unique(rows[:, 1])}
        assert any(first > 1 or last < frames for first, last in spans.values()), name
        # Most people are on stage most of the time: many boxes per frame.
        assert len(rows) / frames >= 5, name


def test_default_sizes_are_dancetrack_like(default_ground_truth):
    rows = np.concatenate(list(default_ground_truth.values()))
    inside = (rows[:, 2] > 0) & (rows[:, 2] + rows[:, 4] < 320)   # not clipped at the sides
    heights = rows[inside, 5]
    assert 12 <= heights.min() and heights.max() <= 64
    assert heights.max() - heights.min() > 15, "perspective gives a range of sizes"


def test_gt_box_is_the_drawn_extent_of_the_person():
    """Boxes tightly enclose each person's own pixels (even where another person covers them)."""
    config = SynthConfig(frames=30, train_sequences=1, val_sequences=2)
    scene = make_scene(config, "val", 2)
    tight = 0
    for t in (0, 13, 29):
        for person in scene.people:
            pose = synth.person_pose(person, t, scene)
            box = synth._visible_box(pose, config.width, config.height)
            _, alpha = synth._people_layer([pose], config.width, config.height)
            ys, xs = np.nonzero(alpha[..., 0] > 0.5)
            if box is None:
                assert len(xs) == 0
                continue
            x, y, w, h = box
            assert len(xs) > 0
            # Pixel i spans [i, i + 1]; allow a pixel of anti-aliasing slack, and the box at most 2 px loose.
            assert xs.min() >= x - 1 and xs.max() + 1 <= x + w + 1 and ys.min() >= y - 1 and ys.max() + 1 <= y + h + 1
            x1, y1, x2, y2 = pose.extent()
            if x1 >= 0 and y1 >= 0 and x2 <= config.width and y2 <= config.height:   # not clipped
                assert xs.min() <= x + 2 and xs.max() + 1 >= x + w - 2
                assert ys.min() <= y + 2 and ys.max() + 1 >= y + h - 2
                tight += 1
    assert tight >= 10


def test_nearer_people_are_drawn_over_farther_ones():
    config = SynthConfig(frames=100, train_sequences=1, val_sequences=1)
    scene = make_scene(config, "val", 1)
    checked = 0
    for t in range(0, 100, 3):
        poses = sorted((synth.person_pose(p, t, scene) for p in scene.people), key=lambda p: p.depth)
        layer, _ = synth._people_layer(poses, config.width, config.height)
        alone = [synth._people_layer([pose], config.width, config.height) for pose in poses]
        covered = [a[..., 0] >= 1.0 for _, a in alone]
        for near in range(len(poses)):
            nearer = np.zeros_like(covered[near])
            for other in range(near + 1, len(poses)):
                nearer |= alone[other][1][..., 0] > 0
            for far in range(near):
                overlap = covered[near] & covered[far] & ~nearer
                if overlap.sum() >= 5:
                    # Where both are drawn, only the nearer person shows.
                    assert np.allclose(layer[overlap], alone[near][0][overlap], atol=1.0)
                    checked += 1
    assert checked > 0, "no overlapping pair found to check occlusion order"


def test_balls_are_a_second_class_and_leave_the_people_alone(tiny, tmp_path):
    """`balls` adds a second kind of object (class 2 in gt.txt, category 'ball' in the COCO-video file); the
    default stays people-only with the record (and cache key) it always had."""
    assert "balls" not in SynthConfig(**TINY).to_dict() and SynthConfig(**TINY).classes == ("pedestrian",)
    config = SynthConfig(**{**TINY, "people": 3, "domains": ("source",)}, balls=2)
    assert config.to_dict()["balls"] == 2 and SynthConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="balls must be an integer >= 0"):
        SynthConfig(balls=-1)
    people_only = np.array(scene_ground_truth(make_scene(SynthConfig(**{**TINY, "people": 3}), "val", 1)))
    rows = np.array(scene_ground_truth(make_scene(config, "val", 1)))
    assert np.array_equal(rows[rows[:, 1] <= 3], people_only)  # the same people, unchanged
    assert set(rows[:, 1].astype(int)) == {1, 2, 3, 4, 5}  # balls take ids 4 and 5

    generate_benchmark(tmp_path, config, progress=False)
    gt = np.loadtxt(tmp_path / "source" / "val" / "synth-val-01" / "gt" / "gt.txt", delimiter=",")
    assert np.array_equal(gt[:, 7], np.where(gt[:, 1] > 3, 2, 1))
    from darth_ray.data.dataset import load_dataset

    (seq,), names = load_dataset(tmp_path / "source" / "annotations" / "val_cocofmt.json",
                                 images=tmp_path / "source" / "val", require_images=True)
    assert names == ["pedestrian", "ball"] and seq.num_frames == TINY["frames"]
    targets = seq.targets(1)
    assert targets["labels"].tolist() == [2 if i > 3 else 1 for i in targets["ids"]]
    assert np.allclose(seq.gt.boxes, gt[:, 2:6]) and np.array_equal(seq.gt.ids, gt[:, 1])
    assert not (tiny[0] / "source" / "annotations").exists()  # people only: the MOTChallenge layout alone

"""The JSON dataset formats (mmtrack COCO-video, BDD100K / SHIFT Scalabel), load_dataset, class subsets and maps."""
import json
from pathlib import Path

import numpy as np
import pytest

from darth_ray.data.coco_video import read_coco_video
from darth_ray.data.dataset import load_dataset
from darth_ray.data.mot import MotSequence, SeqInfo
from darth_ray.data.scalabel import BDD100K_CLASSES, SHIFT_CLASSES, read_scalabel
from darth_ray.io import InputError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "bdd100k-sample"
if not SAMPLE.is_dir():  # the worktree layout: /work/<worktree>/tests, /work/shared
    SAMPLE = Path("/work/shared/real-data/bdd100k-sample")


def same_sequences(a, b):
    """Equal frames, image files, attributes and ground truth; instance ids only up to a one-to-one renaming."""
    assert [s.name for s in a] == [s.name for s in b]
    for x, y in zip(a, b):
        assert x.num_frames == y.num_frames and x.info == y.info and x.attributes == y.attributes
        assert [x.image_path(f) for f in range(1, x.num_frames + 1)] == \
               [y.image_path(f) for f in range(1, y.num_frames + 1)]
        for column in ("frames", "boxes", "conf", "classes", "visibility"):
            np.testing.assert_array_equal(getattr(x.gt, column), getattr(y.gt, column), err_msg=column)
        pairs = set(zip(x.gt.ids.tolist(), y.gt.ids.tolist()))
        assert len(pairs) == len({i for i, _ in pairs}) == len({j for _, j in pairs})


def test_real_bdd100k_sample_reads_the_same_from_scalabel_and_coco_video():
    images = SAMPLE / "images"
    coco, coco_classes = load_dataset(SAMPLE / "annotations" / "box_track_debug_cocofmt.json", images=images,
                                      require_images=True, require_gt=True)
    scalabel, scalabel_classes = load_dataset(SAMPLE / "labels", images=images, require_images=True)
    assert coco_classes == scalabel_classes == list(BDD100K_CLASSES)
    same_sequences(coco, scalabel)
    night, day = scalabel
    assert (night.attributes["timeofday"], day.attributes["timeofday"]) == ("night", "daytime")
    assert sum(len(s.gt) for s in scalabel) == 120 and set(day.gt.classes) == {1.0, 3.0}  # pedestrian, car
    assert day.info.width == 1280 and day.info.height == 720 and day.load_image(6).shape == (3, 720, 1280)
    t = day.targets(1)
    assert len(t["boxes"]) == 17 and sorted(set(t["labels"])) == [1, 3] and len(t["ignore_boxes"]) == 0
    # Scalabel corners are inclusive: the COCO file (written by bdd100k's converter) has w = x2 - x1 + 1
    label = json.loads((SAMPLE / "labels" / f"{day.name}.json").read_text())["frames"][0]["labels"][0]["box2d"]
    np.testing.assert_allclose(day.gt.boxes[0], [label["x1"], label["y1"], label["x2"] - label["x1"] + 1,
                                                 label["y2"] - label["y1"] + 1])


def labels(video="v", frames=2, extra=()):
    """Scalabel frames: a pedestrian and a car in every frame, plus `extra` labels (category, crowd) in frame 0."""
    out = []
    for f in range(frames):
        objs = [("p1", "pedestrian", False), ("c1", "car", False)] + ([(f"x{i}", *e) for i, e in
                                                                       enumerate(extra)] if f == 0 else [])
        out.append({"name": f"{video}-{f + 1:07d}.jpg", "videoName": video, "frameIndex": f,
                    "size": {"width": 64, "height": 48},
                    "attributes": {"weather": "rainy", "timeofday": "night" if f else "dawn/dusk"},
                    "labels": [{"id": lid, "category": cat, "attributes": {"crowd": crowd},
                                "box2d": {"x1": 10.0 * k, "y1": 5.0 + f, "x2": 10.0 * k + 7, "y2": 20.0 + f}}
                               for k, (lid, cat, crowd) in enumerate(objs)]})
    return out


def to_coco(frames):
    """The same labels as bdd100k's COCO converter writes them."""
    cats = list(BDD100K_CLASSES)
    ignore_map = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
    coco = {"categories": [{"id": i + 1, "name": c} for i, c in enumerate(cats)], "videos": [], "images": [],
            "annotations": []}
    ids = {}
    for f in frames:
        if not any(v["name"] == f["videoName"] for v in coco["videos"]):
            video = [g["attributes"].items() for g in frames if g["videoName"] == f["videoName"]]
            coco["videos"].append({"id": len(coco["videos"]) + 1, "name": f["videoName"],
                                   "attributes": dict(set.intersection(*map(set, video)))})
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "video_id": len(coco["videos"]), "frame_id": f["frameIndex"],
                               "file_name": f"{f['videoName']}/{f['name']}", **f.get("size", {})})
        for label in f["labels"]:
            b, ignored = label["box2d"], label["category"] in ignore_map
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "instance_id": ids.setdefault(
                    label["id"], len(ids) + 100), "category_id": cats.index(ignore_map.get(label["category"],
                                                                                           label["category"])) + 1,
                "bbox": [b["x1"], b["y1"], b["x2"] - b["x1"] + 1, b["y2"] - b["y1"] + 1],
                "iscrowd": int(label["attributes"]["crowd"] or ignored), "ignore": int(ignored)})
    return coco


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


EXTRA = (("rider", False), ("car", True), ("other person", False), ("trailer", False))


def test_pedestrian_subset_drops_other_categories_and_keeps_crowd_regions(tmp_path):
    """classes=['pedestrian'] (the "Ped." settings): rider and plain cars are dropped as mmtrack drops them; the
    crowd car, 'other person' and 'trailer' stay ignore regions (class 0 outside the chosen classes)."""
    frames = labels(extra=EXTRA)
    scalabel, names = read_scalabel(write(tmp_path / "v.json", frames), tmp_path, classes=["pedestrian"])
    coco, _ = read_coco_video(write(tmp_path / "coco.json", to_coco(frames)), tmp_path, classes=["pedestrian"])
    same_sequences(scalabel, coco)
    (seq,) = scalabel
    assert names == ["pedestrian"] and seq.class_names == ("pedestrian",)
    rows = seq.gt.frame_rows(1)
    # pedestrian (class 1), crowd car (ignored, outside), other person (ignored pedestrian), trailer (ignored truck)
    assert seq.gt.classes[rows].tolist() == [1, 0, 1, 0] and seq.gt.conf[rows].tolist() == [1, 0, 0, 0]
    t = seq.targets(1)
    assert t["labels"].tolist() == [1] and len(t["ignore_boxes"]) == 3
    assert (seq.gt.frames == 2).sum() == 1 and seq.targets(2)["labels"].tolist() == [1]
    assert seq.attributes == {"weather": "rainy"}  # timeofday changes within the video: no video attribute


def test_all_classes_and_a_class_map_from_the_source_model(tmp_path):
    path = write(tmp_path / "v.json", {"frames": labels(extra=EXTRA), "config": None})
    (seq,), names = read_scalabel(path)
    assert names == list(BDD100K_CLASSES) and seq.gt.classes[seq.gt.frame_rows(1)].tolist() == [1, 3, 2, 3, 1, 4]
    # A source model whose classes are called person and vehicle, in its own order
    (seq,), names = read_scalabel(path, classes=["vehicle", "person"],
                                  class_map={"person": "pedestrian", "vehicle": "car"})
    assert names == ["vehicle", "person"] and seq.gt.classes[seq.gt.frame_rows(2)].tolist() == [2, 1]
    _, names = read_scalabel(path, class_map={"person": "pedestrian"})
    assert names == ["person"] + list(BDD100K_CLASSES[1:])
    for classes, class_map, message in [(["person"], None, "class 'person' is not a category"),
                                        (["car"], {"person": "pedestrian"}, "maps 'person', which is not one"),
                                        (["a", "b"], {"a": "car", "b": "car"}, "'car' is chosen twice")]:
        with pytest.raises(InputError, match=message):
            read_scalabel(path, classes=classes, class_map=class_map)


def test_listing_order_is_free_and_sizes_come_from_the_labels_or_the_first_image(tmp_path):
    import cv2

    frames = labels(frames=3)
    del frames[0]["size"]
    (ordered,), _ = read_scalabel(write(tmp_path / "a.json", frames), images=tmp_path / "img")
    (shuffled,), _ = read_scalabel(write(tmp_path / "b" / "v.json", frames[::-1]), images=tmp_path / "img")
    with pytest.raises(InputError, match=r"v-0000001.jpg: missing image \(listed in .*a.json: \[0\]\)"):
        ordered.check_images()
    (tmp_path / "img" / "v").mkdir(parents=True)
    for f in range(1, 4):
        cv2.imwrite(str(tmp_path / "img" / "v" / f"v-{f:07d}.jpg"), np.zeros((30 if f < 3 else 40, 50, 3), np.uint8))
    same_sequences([ordered], [shuffled])
    assert (ordered.info.width, ordered.info.height) == (50, 30) and ordered.load_image(2).shape == (3, 30, 50)
    with pytest.raises(InputError, match="v-0000003.jpg: image is 50x40, the sequence's frames are 50x30"):
        ordered.load_image(3)
    frames[0]["size"] = {"width": 64, "height": 48}  # only the first frame's is read
    (sized,), _ = read_scalabel(write(tmp_path / "c.json", frames))
    assert (sized.info.width, sized.info.height) == (64, 48)
    with pytest.raises(InputError, match="no image root was given"):
        sized.load_image(1)


def test_load_dataset_detects_every_format(tmp_path):
    frames = labels(video="bdd-1")
    write(tmp_path / "bdd" / "labels" / "val" / "bdd-1.json", frames)
    write(tmp_path / "bdd" / "annotations" / "box_track_val_cocofmt.json", to_coco(frames))
    a, names = load_dataset(tmp_path / "bdd" / "labels", split="val", images=tmp_path / "bdd" / "images")
    b, _ = load_dataset(tmp_path / "bdd" / "annotations" / "box_track_val_cocofmt.json",
                        images=tmp_path / "bdd" / "images")
    same_sequences(a, b)
    assert names == list(BDD100K_CLASSES) and a[0].image_path(1) == tmp_path / "bdd/images/bdd-1/bdd-1-0000001.jpg"
    # SHIFT: <split>/front/det_2d.json, images in <split>/front/img/<video>/<name>, its 6 classes
    write(tmp_path / "shift" / "val" / "front" / "det_2d.json", {"frames": labels(video="s1"), "config": None})
    (seq,), names = load_dataset(tmp_path / "shift", split="val")
    assert names == list(SHIFT_CLASSES) and seq.gt.classes.tolist() == [1, 2, 1, 2]
    assert seq.image_path(2) == tmp_path / "shift/val/front/img/s1/s1-0000002.jpg"
    write(tmp_path / "shift" / "val" / "front" / "det_2d.json", labels(video="s1", extra=[("rider", False)]))
    with pytest.raises(InputError, match=r"det_2d.json: \[0\] \(video 's1'\) labels\[2\]: unknown category 'rider'"):
        load_dataset(tmp_path / "shift" / "val" / "front")
    # MOTChallenge: one class, pedestrian, which a class map may rename
    seq_dir = tmp_path / "mot" / "train" / "MOT17-02"
    (seq_dir / "gt").mkdir(parents=True)
    (seq_dir / "seqinfo.ini").write_text(SeqInfo("MOT17-02", "img1", 30, 2, 64, 48, ".jpg").to_ini())
    (seq_dir / "gt" / "gt.txt").write_text("1,1,10,10,5,10,1,1,1\n")
    (seq,), names = load_dataset(tmp_path / "mot", split="train", classes=["person"],
                                 class_map={"person": "pedestrian"})
    assert isinstance(seq, MotSequence) and names == ["person"] and seq.targets(1)["labels"].tolist() == [1]
    with pytest.raises(InputError, match="class 'car' is not a category of this dataset"):
        load_dataset(tmp_path / "mot", split="train", classes=["car"])
    with pytest.raises(InputError, match="no dataset here"):
        load_dataset(tmp_path / "mot")


def coco_case(edit):
    coco = to_coco(labels(frames=3))
    edit(coco)
    return coco


COCO_ERRORS = [
    (lambda c: c["annotations"][1].update(category_id=42), r"annotations\[1\]: unknown category_id 42"),
    (lambda c: c["annotations"][2].update(image_id=99), r"annotations\[2\]: image_id 99 is not in 'images'"),
    (lambda c: c["images"][2].update(frame_id=1), r"images\[2\] \(id 3\): video 'v' has frame 1 twice"),
    (lambda c: c["images"][2].update(frame_id=5), r"images\[2\] \(id 3\): video 'v' has no frame 2 before frame 5"),
    (lambda c: c["images"][0].update(frame_id=-1), r"images\[0\] \(id 1\): frame index -1 is negative"),
    (lambda c: c["images"][1].update(video_id=7), r"images\[1\] \(id 2\): video_id 7 is not in 'videos'"),
    (lambda c: c["images"][1].pop("file_name"), r"images\[1\] has no 'file_name'"),
    (lambda c: c["annotations"][0].pop("bbox"), r"annotations\[0\] has no 'bbox'"),
    (lambda c: c["annotations"][0].pop("instance_id"), r"annotations\[0\] has no 'instance_id'"),
    (lambda c: c["annotations"][3].update(bbox=[1, 2, -3, 4]), r"annotations\[3\]: bbox .* negative width"),
    (lambda c: c["annotations"][3].update(bbox=[1, 2, "3", 4]), r"annotations\[3\]: bbox .* not 4 numbers"),
    (lambda c: c["annotations"][1].update(instance_id=100), r"annotations\[1\]: instance 100 appears twice in frame"),
    (lambda c: c["annotations"][1].update(image_id=True), r"annotations\[1\]: 'image_id' is True, not an integer"),
    (lambda c: c.pop("categories"), r"the file has no 'categories'"),
]


@pytest.mark.parametrize("edit, message", COCO_ERRORS)
def test_bad_coco_video_input_names_the_file_and_the_record(tmp_path, edit, message):
    path = write(tmp_path / "bad_cocofmt.json", coco_case(edit))
    with pytest.raises(InputError, match=r"bad_cocofmt.json: " + message):
        load_dataset(path)


def scalabel_case(edit):
    frames = labels(frames=3)
    edit(frames)
    return frames


SCALABEL_ERRORS = [
    (lambda f: f[1]["labels"][0].update(category="cat"), r"\[1\] \(video 'v'\) labels\[0\]: unknown category 'cat'"),
    (lambda f: f[2]["labels"][1]["box2d"].update(x2=1.0), r"\[2\] \(video 'v'\) labels\[1\]: box2d has x2 < x1"),
    (lambda f: f[2].update(frameIndex=0), r"\[2\]: video 'v' has frame 0 twice"),
    (lambda f: f[1].pop("videoName"), r"\[1\] has no 'videoName'"),
    (lambda f: f[0]["labels"][1].pop("box2d"), r"\[0\] \(video 'v'\) labels\[1\] has no 'box2d'"),
    (lambda f: f[0]["labels"][1]["box2d"].pop("y2"), r"labels\[1\] box2d has no 'y2'"),
    (lambda f: f[0]["labels"][1].update(id="p1"), r"labels\[1\]: instance 1 appears twice in frame 1"),
]


@pytest.mark.parametrize("edit, message", SCALABEL_ERRORS)
def test_bad_scalabel_input_names_the_file_and_the_record(tmp_path, edit, message):
    write(tmp_path / "labels" / "v.json", scalabel_case(edit))
    with pytest.raises(InputError, match=r"v.json: .*" + message):
        load_dataset(tmp_path / "labels")


def test_missing_image_and_broken_json_are_refused(tmp_path):
    path = write(tmp_path / "ann_cocofmt.json", to_coco(labels(frames=2)))
    with pytest.raises(InputError, match=r"images/v/v-0000001.jpg: missing image \(listed in .*ann_cocofmt.json: "
                                         r"images\[0\] \(id 1\)\)"):
        load_dataset(path, images=tmp_path / "images", require_images=True)
    detection_only = {k: v for k, v in json.loads(path.read_text()).items() if k != "videos"}
    with pytest.raises(InputError, match=r"ann_cocofmt.json: neither a COCO-video file"):
        load_dataset(write(path, detection_only))
    path.write_text(path.read_text()[:-20])
    with pytest.raises(InputError, match=r"ann_cocofmt.json:1: not valid JSON"):
        load_dataset(path)

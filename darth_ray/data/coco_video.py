"""mmtrack's CocoVideoDataset JSON (the `*_cocofmt.json` files every target config of the DARTH authors reads).

`videos` [{id, name, attributes?, fps?}], `images` [{id, video_id, frame_id (0-based), file_name, width?,
height?}], `annotations` [{image_id, category_id, instance_id, bbox x/y/w/h, iscrowd?, ignore?, visibility?}],
`categories` [{id, name}]; image files are `<images>/<file_name>` (`img_prefix` in the configs).
`iscrowd` or `ignore` boxes become ignore regions (conf 0), like MOT17's conf 0; bdd100k's converter writes its
ignore classes ('other person', 'other vehicle', 'trailer') as such boxes of pedestrian, car and truck.
A file without `annotations` (a test split) gives sequences without ground truth.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from darth_ray.data.frames import (DEFAULT_FRAME_RATE, FrameSequence, build_tracks, check_frame_indices, field,
                                   load_json, select_classes)
from darth_ray.io import InputError


def is_coco_video(data) -> bool:
    return isinstance(data, dict) and "videos" in data and "images" in data


def read_coco_video(path: Path, images: Path | None = None, classes: list[str] | None = None,
                    class_map: dict[str, str] | None = None, data=None) -> tuple[list[FrameSequence], list[str]]:
    """The file's videos as sequences (sorted by name) and the class names `gt.classes` indexes (1-based).
    `data`: the file's content when the caller has parsed it already."""
    path = Path(path)
    data = load_json(path) if data is None else data
    if not is_coco_video(data):
        raise InputError(path, "not a COCO-video file: expected an object with 'videos' and 'images'")
    categories = {}
    for i, cat in enumerate(field(path, data, "categories", "the file", list)):
        where = f"categories[{i}]"
        cat_id, name = field(path, cat, "id", where, int), field(path, cat, "name", where, str)
        if cat_id in categories or name in categories.values():
            raise InputError(path, f"categories[{i}]: id {cat_id} or name {name!r} appears twice")
        categories[cat_id] = name
    names, index = select_classes(path, list(categories.values()), classes, class_map)

    videos = {}
    for i, video in enumerate(field(path, data, "videos", "the file", list)):
        where = f"videos[{i}]"
        video_id, name = field(path, video, "id", where, int), field(path, video, "name", where, str)
        if video_id in videos or any(v["name"] == name for v in videos.values()):
            raise InputError(path, f"{where}: video id {video_id} or name {name!r} appears twice")
        videos[video_id] = {"name": name, "attributes": field(path, video, "attributes", where, dict, {}),
                            "fps": field(path, video, "fps", where, (int, float), DEFAULT_FRAME_RATE), "images": []}

    image_video = {}  # image id -> (video id, frame number), filled once the video's frames are ordered
    for i, image in enumerate(field(path, data, "images", "the file", list)):
        where = f"images[{i}]"
        image_id, video_id = field(path, image, "id", where, int), field(path, image, "video_id", where, int)
        if video_id not in videos:
            raise InputError(path, f"{where} (id {image_id}): video_id {video_id} is not in 'videos'")
        if image_id in image_video:
            raise InputError(path, f"{where}: image id {image_id} appears twice")
        image_video[image_id] = None
        size = (field(path, image, "width", where, int, None), field(path, image, "height", where, int, None))
        videos[video_id]["images"].append((image_id, field(path, image, "frame_id", where, int),
                                           field(path, image, "file_name", where, str), size, where))
    for video_id, video in videos.items():
        if not video["images"]:
            raise InputError(path, f"video {video['name']!r} (id {video_id}) has no images")
        records = [(path, f"{im[4]} (id {im[0]})") for im in video["images"]]
        order = check_frame_indices(video["name"], [im[1] for im in video["images"]], records)
        video["images"] = [video["images"][i] + (records[i],) for i in order]
        for frame, image in enumerate(video["images"], start=1):
            image_video[image[0]] = (video_id, frame)

    has_gt = "annotations" in data
    rows = defaultdict(list)  # video id -> [(row, record)]
    for i, ann in enumerate(field(path, data, "annotations", "the file", list, [])):
        where = f"annotations[{i}]"
        image_id, cat_id = field(path, ann, "image_id", where, int), field(path, ann, "category_id", where, int)
        if image_id not in image_video:
            raise InputError(path, f"{where}: image_id {image_id} is not in 'images'")
        if cat_id not in categories:
            raise InputError(path, f"{where}: unknown category_id {cat_id} (categories: {categories})")
        ignore = bool(field(path, ann, "iscrowd", where, (int, float), 0) or field(path, ann, "ignore", where,
                                                                                   (int, float), 0))
        cls = index.get(categories[cat_id], 0)
        if cls == 0 and not ignore:
            continue  # a category outside the chosen classes (mmtrack drops it too)
        bbox = field(path, ann, "bbox", where, list)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise InputError(path, f"{where}: bbox {bbox!r} is not 4 numbers [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise InputError(path, f"{where}: bbox {bbox!r} has a negative width or height")
        instance = field(path, ann, "instance_id", where, int, None if ignore else KeyError)
        video_id, frame = image_video[image_id]
        rows[video_id].append(((frame, -1 if instance is None else instance, *bbox, 0.0 if ignore else 1.0, cls,
                                field(path, ann, "visibility", where, (int, float), 1.0)), (path, where)))

    sequences = []
    for video_id, video in videos.items():
        sizes = {im[3] for im in video["images"]}
        if len(sizes) > 1:
            raise InputError(path, f"video {video['name']!r} has frames of different sizes {sorted(sizes, key=str)}")
        size = sizes.pop()
        video_rows = rows.get(video_id, [])
        gt = build_tracks(path, [r for r, _ in video_rows], [w for _, w in video_rows]) if has_gt else None
        sequences.append(FrameSequence(
            video["name"], [im[2] for im in video["images"]], images, gt, path,
            [im[5] for im in video["images"]], names, video["attributes"],
            size=None if None in size else size, frame_rate=video["fps"]))
    return sorted(sequences, key=lambda s: s.name), names

from pathlib import Path

import pytest
import torch

from darth_ray.models.tracker import QuasiDenseTracker, tracker_preset

QDTRACK_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "darth-configs" / "mot" / "qdtrack"

DIM = 6


def emb(k, mix=None, scale=10.0):
    """Appearance code k: a scaled one-hot, optionally blended with a second code."""
    e = torch.zeros(DIM)
    e[k] = 1.0
    if mix is not None:
        other, weight = mix
        e = (1 - weight) * e
        e[other] += weight
    return scale * e


def box(cx, cy, w=20.0, h=40.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def step(tracker, frame_id, dets, labels=None):
    """dets: {name: (box, score, embed)} -> {name: (id, score)} for the tracked outputs."""
    names = list(dets)
    if names:
        boxes = torch.tensor([dets[n][0] for n in names])
        scores = torch.tensor([dets[n][1] for n in names])
        embeds = torch.stack([dets[n][2] for n in names])
    else:
        boxes, scores, embeds = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, DIM)
    out_boxes, out_scores, out_ids = tracker.update(frame_id, boxes, scores, embeds, labels)
    assert out_ids.dtype == torch.long and out_boxes.shape == (len(out_ids), 4)
    assert torch.all(out_ids >= 0)
    result = {}
    for b, s, i in zip(out_boxes, out_scores, out_ids):
        (name,) = [n for n in names if torch.equal(torch.tensor(dets[n][0]), b)]
        result[name] = (int(i), round(float(s), 4))
    return result


def test_crossing_objects_keep_their_identities():
    tracker = QuasiDenseTracker()
    ids = {"A": set(), "B": set()}
    for t in range(11):
        xa, xb = 10.0 * t, 100.0 - 10.0 * t  # they meet at x=50 at t=5
        # at the crossing the boxes overlap (IoU 0.6 at t=5) and the appearances blend
        mix = 0.3 if 4 <= t <= 6 else 0.05
        dets = {
            "B": (box(xb, 10.0), 0.95 if t % 2 else 0.99, emb(1, (0, mix))),
            "A": (box(xa, 0.0), 0.97, emb(0, (1, mix))),
        }
        out = step(tracker, t, dets)
        assert set(out) == {"A", "B"}, f"frame {t}: {out}"
        for name, (track_id, _) in out.items():
            ids[name].add(track_id)
    # ids are handed out in score order: B (0.99) before A (0.97) in frame 0
    assert ids == {"A": {1}, "B": {0}}


def test_occluded_object_gets_its_old_id_back_and_new_object_gets_new_id():
    tracker = QuasiDenseTracker()
    history = []
    for t in range(9):
        dets = {"A": (box(10.0 + t, 0.0), 0.98, emb(0))}
        if not 3 <= t <= 5:  # B is missing for frames 3, 4, 5
            dets["B"] = (box(200.0, 0.0), 0.96, emb(1))
        if t >= 4:  # C appears mid-sequence
            # slightly anti-correlated with B: an exactly orthogonal code would tie B's free
            # memory slot at bi-softmax 0.5, right at match_score_thr
            dets["C"] = (box(400.0 - t, 0.0), 0.93, emb(2, (1, -0.1)))
        history.append(step(tracker, t, dets))
    assert history[0] == {"A": (0, 0.98), "B": (1, 0.96)}
    assert history[3] == {"A": (0, 0.98)}
    assert history[4] == {"A": (0, 0.98), "C": (2, 0.93)}
    assert history[6] == {"A": (0, 0.98), "B": (1, 0.96), "C": (2, 0.93)}
    assert history[8] == history[6]
    assert tracker.num_tracks == 3


def test_tracklet_memory_length():
    def run(memo_tracklet_frames):
        tracker = QuasiDenseTracker(memo_tracklet_frames=memo_tracklet_frames)
        out = None
        for t in range(6):
            dets = {"A": (box(0.0, 0.0), 0.98, emb(0))}
            if t <= 2 or t == 5:  # B last seen at frame 2, back at frame 5
                dets["B"] = (box(300.0, 0.0), 0.97, emb(1))
            out = step(tracker, t, dets)
        return out["B"][0]

    # matching happens before forgetting: a gap of 3 frames is still within a memory of 3
    assert run(3) == 1
    assert run(2) == 2  # forgotten at frame 4 (4 - 2 >= 2): B starts a new track


def test_low_score_object_does_not_start_a_track_but_a_matched_track_continues():
    tracker = QuasiDenseTracker()
    out0 = step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0)), "X": (box(300.0, 0.0), 0.6, emb(3))})
    assert out0 == {"A": (0, 0.95)}
    # X stays a backdrop (matched to itself, never > init 0.9); A continues at 0.6 > obj 0.5
    out1 = step(tracker, 1, {"A": (box(2.0, 0.0), 0.6, emb(0)), "X": (box(301.0, 0.0), 0.6, emb(3))})
    assert out1 == {"A": (0, 0.6)}
    assert len(tracker.backdrops) == 1 and tracker.backdrops[0]["boxes"].shape[0] == 1
    assert tracker.tracks[0]["last_frame"] == 1
    # at 0.4 (< obj_score_thr) A's detection is matched but suppressed: no output, no update,
    # and not turned into a backdrop
    out2 = step(tracker, 2, {"A": (box(4.0, 0.0), 0.4, emb(0)), "X": (box(302.0, 0.0), 0.6, emb(3))})
    assert out2 == {}
    assert tracker.tracks[0]["last_frame"] == 1
    torch.testing.assert_close(tracker.backdrops[0]["embeds"], emb(3)[None])
    # a confident detection of X later starts a track
    out3 = step(tracker, 3, {"A": (box(6.0, 0.0), 0.95, emb(0)), "X": (box(303.0, 0.0), 0.92, emb(3))})
    assert out3 == {"A": (0, 0.95), "X": (1, 0.92)}


def test_embedding_memory_uses_momentum():
    tracker = QuasiDenseTracker()
    step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0))})
    new = emb(0, (1, 0.5))  # [5, 5, 0, ...]
    step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, new)})
    torch.testing.assert_close(tracker.tracks[0]["embed"], 0.2 * emb(0) + 0.8 * new)


def test_duplicate_removal():
    tracker = QuasiDenseTracker()
    dets = {
        "A": (box(0.0, 0.0), 0.99, emb(0)),
        "A_dup": (box(0.0, 2.0), 0.95, emb(1)),  # IoU 0.9 with A > 0.7: removed
        "A_part": (box(0.0, 20.0), 0.95, emb(2)),  # IoU 1/3 < 0.7: kept, starts a track
        "bg": (box(10.0, 0.0), 0.4, emb(3)),  # low score, IoU 1/3 > 0.3 with A: removed
    }
    assert step(tracker, 0, dets) == {"A": (0, 0.99), "A_part": (1, 0.95)}
    assert tracker.backdrops[0]["boxes"].shape[0] == 0


def test_cosine_metric_and_categories():
    # bi-softmax with one detection and one tracklet is 1 whatever the appearance: matched
    tracker = QuasiDenseTracker()
    step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0))})
    far_code = emb(0, (1, 0.6))  # cosine to emb(0) = 0.4 / sqrt(0.52) ~ 0.555
    assert step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, far_code)}) == {"A": (0, 0.95)}
    # cosine metric: 0.55 > 0.5 matches, 0.32 does not and starts a new track
    tracker = QuasiDenseTracker(match_metric="cosine")
    step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0))})
    assert step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, far_code)}) == {"A": (0, 0.95)}
    tracker = QuasiDenseTracker(match_metric="cosine")
    step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0))})
    assert step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, emb(0, (1, 0.75)))}) == {"A": (1, 0.95)}
    # with_cats: the same appearance with another label is a different object
    tracker = QuasiDenseTracker()
    step(tracker, 0, {"A": (box(0.0, 0.0), 0.95, emb(0))}, labels=torch.tensor([0]))
    assert step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, emb(0))}, labels=torch.tensor([1])) == {"A": (1, 0.95)}


def test_empty_frames_and_reset():
    tracker = QuasiDenseTracker()
    assert step(tracker, 0, {}) == {}
    assert step(tracker, 1, {"A": (box(0.0, 0.0), 0.95, emb(0))}) == {"A": (0, 0.95)}
    assert step(tracker, 2, {}) == {}
    assert step(tracker, 3, {"A": (box(1.0, 0.0), 0.95, emb(0)), "B": (box(99.0, 0.0), 0.95, emb(1))}) == {
        "A": (0, 0.95),
        "B": (1, 0.95),
    }
    tracker.reset()
    assert tracker.tracks == {} and tracker.backdrops == []
    assert step(tracker, 0, {"B": (box(99.0, 0.0), 0.95, emb(1))}) == {"B": (0, 0.95)}


@pytest.mark.parametrize(
    "field,value",
    [
        ("init_score_thr", 1.5),
        ("obj_score_thr", -0.1),
        ("memo_tracklet_frames", -1),
        ("memo_backdrop_frames", 1.5),
        ("memo_momentum", 2.0),
        ("nms_class_iou_thr", "0.7"),
        ("with_cats", 1),
        ("match_metric", "euclidean"),
        ("memo_frames", 10),  # unknown field
    ],
)
def test_invalid_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        QuasiDenseTracker(**{field: value})


def test_input_shape_errors():
    tracker = QuasiDenseTracker()
    with pytest.raises(ValueError, match="scores"):
        tracker.update(0, torch.zeros(2, 4), torch.zeros(3), torch.zeros(2, DIM))
    with pytest.raises(ValueError, match="embeds"):
        tracker.update(0, torch.zeros(2, 4), torch.zeros(2), torch.zeros(1, DIM))


def test_with_cats_matches_within_a_category_and_returns_labels():
    """A detection of another class never continues a track (mmtrack's with_cats), even with the same look."""
    def run(with_cats):
        tracker = QuasiDenseTracker(with_cats=with_cats)
        embeds = torch.stack([emb(0), emb(1)])
        boxes = torch.tensor([box(10.0, 10.0), box(100.0, 10.0)])
        first = tracker.update(0, boxes, torch.tensor([0.95, 0.95]), embeds, torch.tensor([0, 1]), return_labels=True)
        # the car (label 1) now looks exactly like the pedestrian track's memory, and the pedestrian is gone
        second = tracker.update(1, boxes[1:], torch.tensor([0.95]), embeds[:1], torch.tensor([1]),
                                return_labels=True)
        return first, second

    (_, _, ids, labels), (_, _, car_ids, car_labels) = run(with_cats=True)
    assert ids.tolist() == [0, 1] and labels.tolist() == [0, 1]
    assert car_ids.tolist() == [2] and car_labels.tolist() == [1]  # a new track, not pedestrian 0
    assert run(with_cats=False)[1][2].tolist() == [0]  # across categories, appearance alone decides


def test_bdd100k_preset_is_the_authors_tracker():
    """The values of qdtrack_faster-rcnn_r50_fpn_12e_base.py (the base of the BDD100K/SHIFT configs)."""
    bdd = tracker_preset("bdd100k")
    assert (bdd["init_score_thr"], bdd["obj_score_thr"], bdd["memo_tracklet_frames"], bdd["with_cats"]) == \
        (0.7, 0.3, 10, True)
    assert tracker_preset("mot17")["init_score_thr"] == 0.9 and tracker_preset("mot17")["memo_tracklet_frames"] == 30
    QuasiDenseTracker(**bdd)
    with pytest.raises(ValueError, match="unknown tracker preset 'kitti'; choose from mot17, bdd100k"):
        tracker_preset("kitti")
    config = QDTRACK_CONFIGS / "qdtrack_faster-rcnn_r50_fpn_12e_base.py"
    if config.is_file():
        from darth_ray.mmconfig import load_config_file

        authors = dict(load_config_file(config)["model"]["tracker"])
        assert authors.pop("type") == "QuasiDenseTracker" and authors == bdd

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.views import build_views, match_indices, render, resizable, sample_geometry
from darth_ray.data.photometric import colour_transform

NO_PHOTOMETRIC = dict(photometric_prob=0.0, channel_swap_prob=0.0)


def _noise(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _locate(view: torch.Tensor, frame: torch.Tensor) -> tuple[int, int, bool]:
    """(x0, y0, flipped) such that view == frame[:, y0:y0 + h, x0:x0 + w] (flipped left-right if flipped)."""
    h, w = view.shape[-2:]
    for flipped in (False, True):
        target = view.flip(-1) if flipped else view
        for y0 in range(frame.shape[1] - h + 1):
            for x0 in range(frame.shape[2] - w + 1):
                if torch.equal(frame[:, y0:y0 + h, x0:x0 + w], target):
                    return x0, y0, flipped
    raise AssertionError("view is not a crop of the frame")


def _expected_boxes(boxes: torch.Tensor, x0: int, y0: int, flipped: bool, w: int, h: int):
    """Hand mapping for a 1:1 crop: shift, flip, clip; keep >= 2 px wide/high and >= 25% of the area."""
    out, ids = [], []
    for i, (bx1, by1, bx2, by2) in enumerate(boxes.tolist()):
        bx1, by1, bx2, by2 = bx1 - x0, by1 - y0, bx2 - x0, by2 - y0
        if flipped:
            bx1, bx2 = w - bx2, w - bx1
        cx1, cy1, cx2, cy2 = max(bx1, 0), max(by1, 0), min(bx2, w), min(by2, h)
        cw, ch = cx2 - cx1, cy2 - cy1
        if cw >= 2 and ch >= 2 and cw * ch >= 0.25 * (bx2 - bx1) * (by2 - by1):
            out.append([cx1, cy1, cx2, cy2])
            ids.append(i + 1)
    return torch.tensor(out).view(-1, 4), ids


def test_aug_strength_zero_gives_the_plain_resized_frame():
    frames = _noise(2, 100, 200)
    boxes = [torch.tensor([[40.0, 20.0, 80.0, 60.0]]), torch.zeros(0, 4)]
    views = build_views(frames, boxes, DarthConfig(aug_strength=0.0, target_size=(100, 50)), _gen(0))
    resized = TF.resize(frames, [50, 100], antialias=False)
    assert torch.equal(views.teacher, resized)
    assert torch.equal(views.student, resized)
    assert torch.equal(views.contrastive, resized)
    assert views.teacher_boxes[0].tolist() == [[20.0, 10.0, 40.0, 30.0]]
    assert views.contrastive_boxes[0].tolist() == [[20.0, 10.0, 40.0, 30.0]]
    assert views.teacher_sizes == [(50, 100), (50, 100)]


def test_padding_keeps_the_fill_value_in_every_view():
    frames = _noise(1, 100, 200)
    config = DarthConfig(aug_strength=0.0, target_size=(104, 56), photometric_prob=1.0)
    views = build_views(frames, [torch.zeros(0, 4)], config, _gen(0), fill=(10, 20, 30))
    resized = TF.resize(frames, [52, 104], antialias=False)  # scale min(104/200, 56/100) = 0.52
    assert views.teacher.shape == (1, 3, 56, 104)
    assert torch.equal(views.teacher[:, :, :52], resized)
    for view in (views.teacher, views.student, views.contrastive):
        assert view[0, :, 52:].flatten(1).unique(dim=1).tolist() == [[10], [20], [30]]


def test_box_mapping_after_forced_flip_and_downscale():
    # 200x100 frame, target (100, 50), scale 1: the whole frame at half size, flipped.
    frames = torch.zeros(1, 3, 100, 200, dtype=torch.uint8)
    frames[:, :, 20:60, 40:80] = 255
    config = DarthConfig(target_size=(100, 50), scale_range=(1.0, 1.0), flip_prob=1.0, **NO_PHOTOMETRIC)
    views = build_views(frames, [torch.tensor([[40.0, 20.0, 80.0, 60.0]])], config, _gen(0))
    # x: 40..80 -> 20..40 at half size -> flipped in a 100-wide view: 60..80; y: 10..30
    assert views.teacher_boxes[0].tolist() == [[60.0, 10.0, 80.0, 30.0]]
    white = views.teacher[0, 0] > 128
    assert white[10:30, 60:80].all() and white.sum() == 20 * 20


@pytest.mark.parametrize("seed", range(6))
def test_white_rectangle_lands_on_its_mapped_box(seed):
    """Flip + upscale + crop with random parameters: the rectangle's pixels agree with the mapped box."""
    frames = torch.zeros(1, 3, 100, 200, dtype=torch.uint8)
    frames[:, :, 30:70, 60:140] = 255
    config = DarthConfig(target_size=(120, 60), scale_range=(1.4, 1.4), **NO_PHOTOMETRIC)
    views = build_views(frames, [torch.tensor([[60.0, 30.0, 140.0, 70.0]])], config, _gen(seed))
    (x1, y1, x2, y2), = views.teacher_boxes[0].tolist()
    view = views.teacher[0, 0].float()
    margin = 2  # bilinear resampling blurs the edges by about a pixel
    assert (view[int(y1) + margin:int(y2) - margin, int(x1) + margin:int(x2) - margin] > 250).all()
    outside = torch.ones_like(view, dtype=torch.bool)
    outside[max(int(y1) - margin, 0):int(y2) + margin + 1, max(int(x1) - margin, 0):int(x2) + margin + 1] = False
    assert (view[outside] < 5).all()
    # The visible white area equals the box area (within the blurred rim).
    assert abs((view / 255).sum().item() - (x2 - x1) * (y2 - y1)) < 2 * ((x2 - x1) + (y2 - y1))


@pytest.mark.parametrize("seed", range(8))
def test_crop_and_flip_mapping_and_matches(seed):
    """Scale 1:1 crops: each view is an exact crop of the frame, so the crop offset and flip can be recovered and
    the boxes, the surviving ids and the match indices checked by hand."""
    frames = _noise(1, 100, 200, seed)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0],       # left corner: lost by crops starting right of x=15
                          [95.0, 45.0, 105.0, 55.0],    # centre: always at least 25% visible
                          [180.0, 80.0, 200.0, 100.0],  # right corner: never visible together with box 1
                          [10.0, 10.0, 190.0, 12.0]])   # thin and wide: cut at one or both ends
    config = DarthConfig(target_size=(100, 50), scale_range=(2.0, 2.0), **NO_PHOTOMETRIC)  # factor 2 * 0.5 = 1
    views = build_views(frames, [boxes], config, _gen(seed))
    ids_seen = []
    for view, view_boxes, view_ids in ((views.teacher, views.teacher_boxes, views.teacher_ids),
                                       (views.contrastive, views.contrastive_boxes, views.contrastive_ids)):
        x0, y0, flipped = _locate(view[0], frames[0])
        expected, ids = _expected_boxes(boxes, x0, y0, flipped, w=100, h=50)
        assert torch.allclose(view_boxes[0], expected)
        assert view_ids[0].tolist() == ids
        assert not {1, 3} <= set(ids)
        ids_seen.append(ids)
    assert torch.equal(views.student, views.teacher)  # photometric off: identical views
    student_idx, contrastive_idx = match_indices(views, 0)
    common = sorted(set(ids_seen[0]) & set(ids_seen[1]))
    assert views.teacher_ids[0][student_idx].tolist() == common
    assert views.contrastive_ids[0][contrastive_idx].tolist() == common
    assert 2 in common


def test_crop_offsets_and_flips_vary_with_the_seed():
    frames = _noise(1, 100, 200, 9)
    config = DarthConfig(target_size=(100, 50), scale_range=(2.0, 2.0), **NO_PHOTOMETRIC)
    located = [_locate(build_views(frames, [torch.zeros(0, 4)], config, _gen(seed)).teacher[0], frames[0])
               for seed in range(12)]
    xs, ys, flips = zip(*located)
    assert len(set(xs)) > 6 and len(set(ys)) > 6 and max(xs) > 50 and max(ys) > 25
    assert set(flips) == {False, True}


def test_a_box_cropped_away_loses_its_match():
    frames = _noise(1, 100, 200, 3)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [95.0, 45.0, 105.0, 55.0], [180.0, 80.0, 200.0, 100.0]])
    config = DarthConfig(target_size=(100, 50), scale_range=(2.0, 2.0), **NO_PHOTOMETRIC)
    lost = 0
    for seed in range(10):
        views = build_views(frames, [boxes], config, _gen(seed))
        student_idx, contrastive_idx = match_indices(views, 0)
        matched = views.teacher_ids[0][student_idx]
        assert torch.equal(matched, views.contrastive_ids[0][contrastive_idx])
        assert matched.numel() <= 2  # boxes 1 and 3 are never both in a 100-pixel-wide crop
        lost += 3 - matched.numel()
    assert lost >= 10


def test_student_has_the_teacher_geometry_with_photometric_on():
    """A mask image: every teacher pixel value maps to one student value (a per-pixel colour map), so no pixel
    moved; white and black map to different colours (the distortion was applied)."""
    frames = torch.zeros(2, 3, 100, 200, dtype=torch.uint8)
    frames[0, :, 20:70, 30:90] = 255
    frames[1, :, 40:90, 100:180] = 200
    boxes = [torch.tensor([[30.0, 20.0, 90.0, 70.0]]), torch.tensor([[100.0, 40.0, 180.0, 90.0]])]
    config = DarthConfig(target_size=(150, 80), photometric_prob=1.0)
    for seed in range(4):
        views = build_views(frames, boxes, config, _gen(seed))
        assert views.teacher_boxes is not views.contrastive_boxes
        for i in range(2):
            teacher, student = views.teacher[i], views.student[i]
            h, w = views.teacher_sizes[i]
            teacher_grey = teacher[0, :h, :w]
            for value in teacher_grey.unique().tolist():
                pixels = student[:, :h, :w][:, teacher_grey == value]
                assert (pixels == pixels[:, :1]).all()
            assert not torch.equal(student, teacher)


def test_brightness_only_shifts_every_pixel_by_one_constant():
    frames = torch.randint(60, 190, (1, 3, 100, 200), dtype=torch.uint8, generator=_gen(5))
    config = DarthConfig(target_size=(100, 50), aug_strength=1.0, photometric_prob=1.0, contrast_range=(1.0, 1.0),
                         saturation_range=(1.0, 1.0), hue_delta=0.0, channel_swap_prob=0.0)
    views = build_views(frames, [torch.zeros(0, 4)], config, _gen(1))
    h, w = views.teacher_sizes[0]
    shift = views.student[0, :, :h, :w].int() - views.teacher[0, :, :h, :w].int()
    assert shift.unique().numel() == 1 and 0 < abs(shift.flatten()[0].item()) <= 32


@pytest.mark.parametrize("op", [dict(saturation_range=(0.0, 2.0)), dict(hue_delta=180.0)])
def test_saturation_and_hue_keep_grey_grey(op):
    grey = torch.randint(0, 256, (1, 1, 100, 200), dtype=torch.uint8, generator=_gen(2)).expand(1, 3, 100, 200)
    config = DarthConfig(target_size=(100, 50), photometric_prob=1.0, brightness_delta=0.0, contrast_range=(1.0, 1.0),
                         channel_swap_prob=0.0, **{"saturation_range": (1.0, 1.0), "hue_delta": 0.0, **op})
    views = build_views(grey.contiguous(), [torch.zeros(0, 4)], config, _gen(0))
    assert torch.equal(views.student, views.teacher)


def test_channel_swap_permutes_channels():
    frames = torch.zeros(1, 3, 100, 200, dtype=torch.uint8)
    frames[0, 0], frames[0, 1], frames[0, 2] = 10, 100, 200
    config = DarthConfig(target_size=(100, 50), photometric_prob=0.0, channel_swap_prob=1.0)
    seen = set()
    for seed in range(12):
        views = build_views(frames, [torch.zeros(0, 4)], config, _gen(seed))
        h, w = views.teacher_sizes[0]
        student = views.student[0, :, :h, :w]
        colour = tuple(student[:, 0, 0].tolist())
        assert sorted(colour) == [10, 100, 200] and (student == student[:, :1, :1]).all()
        seen.add(colour)
    assert len(seen) > 1


def test_same_seed_same_views_and_other_seed_other_views():
    frames = _noise(2, 120, 160)
    boxes = [torch.tensor([[10.0, 10.0, 60.0, 100.0], [80.0, 20.0, 150.0, 110.0]]),
             torch.tensor([[0.0, 0.0, 50.0, 50.0]])]
    config = DarthConfig(target_size=(96, 64))
    a = build_views(frames, boxes, config, _gen(7))
    b = build_views(frames, boxes, config, _gen(7))
    c = build_views(frames, boxes, config, _gen(8))
    for name in ("teacher", "student", "contrastive"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for x, y in zip(a.teacher_boxes + a.contrastive_boxes, b.teacher_boxes + b.contrastive_boxes):
        assert torch.equal(x, y)
    assert not torch.equal(a.student, c.student)


def test_calls_do_not_share_output_memory_and_frame_sizes_may_change():
    config = DarthConfig(target_size=(100, 50))
    frames_a, frames_b = _noise(2, 100, 200, 1), _noise(2, 100, 200, 2)
    no_boxes = [torch.zeros(0, 4)] * 2
    first = build_views(frames_a, no_boxes, config, _gen(0))
    saved = first.teacher.clone(), first.student.clone(), first.contrastive.clone()
    build_views(frames_b, no_boxes, config, _gen(0))
    build_views(_noise(3, 60, 80, 3), [torch.zeros(0, 4)] * 3, config, _gen(0))
    assert torch.equal(first.teacher, saved[0]) and torch.equal(first.student, saved[1])
    assert torch.equal(first.contrastive, saved[2])
    again = build_views(frames_a, no_boxes, config, _gen(0))
    assert torch.equal(again.student, first.student) and torch.equal(again.contrastive, first.contrastive)


def test_zero_pseudo_boxes():
    frames = _noise(2, 100, 200)
    views = build_views(frames, [torch.zeros(0, 4), torch.tensor([[50.0, 20.0, 150.0, 80.0]])],
                        DarthConfig(target_size=(100, 50)), _gen(0))
    assert views.teacher_boxes[0].shape == (0, 4) and views.contrastive_boxes[0].shape == (0, 4)
    assert views.teacher_ids[0].shape == (0,) and views.teacher_ids[0].dtype == torch.int64
    student_idx, contrastive_idx = match_indices(views, 0)
    assert student_idx.numel() == 0 and contrastive_idx.numel() == 0
    assert views.teacher_ids[1].tolist() == [1]
    assert views.student.shape == views.contrastive.shape == (2, 3, 50, 100)
    assert views.student.dtype == torch.uint8


def test_leaves_torch_thread_count_as_it_was():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_views(_noise(1, 100, 200), [torch.zeros(0, 4)], DarthConfig(target_size=(100, 50)), _gen(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        build_views(torch.zeros(1, 3, 10, 10), [torch.zeros(0, 4)], DarthConfig(), _gen(0))
    with pytest.raises(ValueError, match="pseudo-box"):
        build_views(torch.zeros(2, 3, 10, 10, dtype=torch.uint8), [torch.zeros(0, 4)], DarthConfig(), _gen(0))


def test_packed_cpu_path_equals_the_plain_path_used_on_gpu():
    """On CPU frames are packed into RGBX int32 pixels; on GPU the frame is used as it is. Same views."""
    frame = _noise(1, 100, 200, 4)[0]
    ranges = DarthConfig(aug_strength=2.0).effective_ranges()
    for seed in range(6):
        u = torch.rand(16, generator=_gen(seed)).tolist()
        geo = sample_geometry(u[:4], (100, 200), (60, 110), ranges)
        colour = colour_transform(u[4:], ranges).float()
        outputs = []
        for source in (resizable(frame), frame):
            plain, distorted = torch.zeros(2, 3, 60, 110, dtype=torch.uint8)
            render(source, geo, colour, plain, distorted)
            outputs.append((plain, distorted))
        assert resizable(frame).shape == (4, 100, 200)
        assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    frames = _noise(2, 100, 200)
    boxes = [torch.tensor([[40.0, 20.0, 80.0, 60.0]]), torch.zeros(0, 4)]
    config = DarthConfig(target_size=(100, 50))
    cpu = build_views(frames, boxes, config, _gen(0))
    gpu = build_views(frames.cuda(), [b.cuda() for b in boxes], config, _gen(0))
    assert gpu.student.is_cuda and gpu.student.shape == cpu.student.shape
    assert torch.allclose(gpu.teacher_boxes[0].cpu(), cpu.teacher_boxes[0])

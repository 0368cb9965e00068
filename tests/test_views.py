import pytest
import torch
import torchvision.transforms.v2.functional as TF

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.views import _distortion, build_views, match_indices, render, resizable, sample_geometry

NO_PHOTOMETRIC = dict(photometric_prob=0.0, channel_swap_prob=0.0)
AFFINE = dict(photometric_impl="affine")


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


def _expected_boxes(boxes: torch.Tensor, x0: int, y0: int, flipped: bool, w: int):
    """Hand mapping for a 1:1 crop: shift and flip, never clip (mmtrack's bbox_clip_border=False)."""
    out = []
    for bx1, by1, bx2, by2 in boxes.tolist():
        bx1, by1, bx2, by2 = bx1 - x0, by1 - y0, bx2 - x0, by2 - y0
        if flipped:
            bx1, bx2 = w - bx2, w - bx1
        out.append([bx1, by1, bx2, by2])
    return torch.tensor(out).view(-1, 4)


def test_aug_strength_zero_gives_the_plain_resized_frame():
    frames = _noise(2, 100, 200)
    boxes = [torch.tensor([[40.0, 20.0, 80.0, 60.0]]), torch.zeros(0, 4)]
    views = build_views(frames, boxes, DarthConfig(aug_strength=0.0, img_scale=(100, 50)), _gen(0))
    resized = TF.resize(frames, [50, 100], antialias=False)
    assert torch.equal(views.teacher, resized)
    # the mmtrack distortion's HSV round trip is the identity up to float32 rounding
    torch.testing.assert_close(views.student, resized.float(), rtol=0, atol=1e-3)
    torch.testing.assert_close(views.contrastive, resized.float(), rtol=0, atol=1e-3)
    assert views.teacher_boxes[0].tolist() == [[20.0, 10.0, 40.0, 30.0]]
    assert views.contrastive_boxes[0].tolist() == [[20.0, 10.0, 40.0, 30.0]]
    assert views.teacher_sizes == [(50, 100), (50, 100)]


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
def test_views_are_padded_to_the_largest_view_of_their_batch_with_the_fill_value(impl):
    frames = _noise(4, 100, 200)
    config = DarthConfig(img_scale=(150, 80), scale_range=(0.5, 1.5), photometric_prob=1.0, photometric_impl=impl)
    views = build_views(frames, [torch.zeros(0, 4)] * 4, config, _gen(0), fill=(10, 20, 30))
    for canvas, sizes in ((views.teacher, views.teacher_sizes), (views.student, views.teacher_sizes),
                          (views.contrastive, views.contrastive_sizes)):
        assert canvas.shape[-2:] == (max(h for h, _ in sizes), max(w for _, w in sizes))  # no fixed canvas
        assert len(set(sizes)) > 1
        for view, (h, w) in zip(canvas, sizes):
            padding = torch.cat([view[:, h:].flatten(1), view[:, :h, w:].flatten(1)], dim=1)
            assert padding.unique(dim=1).tolist() in ([[10], [20], [30]], [[], [], []])
    # a resized frame of 200x100 fits into img_scale (150, 80) at most 1.5 x 0.4: crops of at most 80x150
    assert max(h for h, _ in views.teacher_sizes) <= 80 and max(w for _, w in views.teacher_sizes) <= 150


def test_views_fit_the_model_scale_keeping_the_ratio():
    """r50_fpn's scale (1088, 1088): a 1920x1080 frame becomes 1088x612 (mmcv.rescale_size), unless img_scale."""
    frames = _noise(1, 1080, 1920)
    config = DarthConfig(aug_strength=0.0, **NO_PHOTOMETRIC)
    views = build_views(frames, [torch.tensor([[960.0, 540.0, 1920.0, 1080.0]])], config, _gen(0),
                        model_scale=(1088, 1088))
    assert views.teacher.shape == (1, 3, 612, 1088) and views.teacher_sizes == [(612, 1088)]
    torch.testing.assert_close(views.teacher_boxes[0], torch.tensor([[544.0, 306.0, 1088.0, 612.0]]))
    assert build_views(frames, [torch.zeros(0, 4)], DarthConfig(aug_strength=0.0, img_scale=(544, 544)), _gen(0),
                       model_scale=(1088, 1088)).teacher_sizes == [(306, 544)]
    # no scale at all: the native frame (the `small` model)
    assert build_views(frames, [torch.zeros(0, 4)], config, _gen(0)).teacher_sizes == [(1080, 1920)]


@pytest.mark.parametrize("ratio, expected", [(1.2, (734, 1305)), (0.8, (489, 870))])
def test_geometry_follows_mmdet_resize_with_ratio_range(ratio, expected):
    """SeqResize(img_scale=(1088, 1088), ratio_range) on 1920x1080: scale int(1088 x ratio), then keep-ratio fit;
    SeqRandomCrop crops to at most (1088, 1088)."""
    ranges = DarthConfig(scale_range=(ratio, ratio)).effective_ranges()
    geo = sample_geometry([0.9, 0.5, 0.999, 0.999], (1080, 1920), (1088, 1088), ranges)
    assert (geo.scaled_h, geo.scaled_w) == expected
    assert (geo.out_h, geo.out_w) == (min(expected[0], 1088), min(expected[1], 1088))
    assert (geo.crop_y, geo.crop_x) == (expected[0] - geo.out_h, expected[1] - geo.out_w)  # the last offset


def test_box_mapping_after_forced_flip_and_downscale():
    # 200x100 frame, target (100, 50), scale 1: the whole frame at half size, flipped.
    frames = torch.zeros(1, 3, 100, 200, dtype=torch.uint8)
    frames[:, :, 20:60, 40:80] = 255
    config = DarthConfig(img_scale=(100, 50), scale_range=(1.0, 1.0), flip_prob=1.0, **NO_PHOTOMETRIC)
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
    config = DarthConfig(img_scale=(120, 60), scale_range=(1.4, 1.4), **NO_PHOTOMETRIC)
    views = build_views(frames, [torch.tensor([[60.0, 30.0, 140.0, 70.0]])], config, _gen(seed))
    (x1, y1, x2, y2), = views.teacher_boxes[0].clamp(min=0).minimum(torch.tensor([120.0, 60.0] * 2)).tolist()
    view = views.teacher[0, 0].float()
    margin = 2  # bilinear resampling blurs the edges by about a pixel
    assert (view[int(y1) + margin:int(y2) - margin, int(x1) + margin:int(x2) - margin] > 250).all()
    outside = torch.ones_like(view, dtype=torch.bool)
    outside[max(int(y1) - margin, 0):int(y2) + margin + 1, max(int(x1) - margin, 0):int(x2) + margin + 1] = False
    assert (view[outside] < 5).all()
    # The visible white area equals the box area (within the blurred rim).
    assert abs((view / 255).sum().item() - (x2 - x1) * (y2 - y1)) < 2 * ((x2 - x1) + (y2 - y1))


@pytest.mark.parametrize("seed", range(8))
def test_crop_and_flip_mapping_keeps_every_box_and_id(seed):
    """Scale 1:1 crops: each view is an exact crop of the frame, so the crop offset and flip can be recovered and
    the boxes checked by hand. No box is clipped or dropped, so every pseudo-instance matches between the views."""
    frames = _noise(1, 100, 200, seed)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0],       # left corner: outside crops starting right of x=20
                          [95.0, 45.0, 105.0, 55.0],    # centre
                          [180.0, 80.0, 200.0, 100.0],  # right corner: never in the same crop as box 1
                          [10.0, 10.0, 190.0, 12.0]])   # thin and wide: cut at one or both ends
    config = DarthConfig(img_scale=(100, 50), scale_range=(2.0, 2.0), **NO_PHOTOMETRIC)  # factor 2 * 0.5 = 1
    views = build_views(frames, [boxes], config, _gen(seed))
    for view, view_boxes, view_ids in ((views.teacher, views.teacher_boxes, views.teacher_ids),
                                       (views.contrastive, views.contrastive_boxes, views.contrastive_ids)):
        x0, y0, flipped = _locate(view[0].round().to(torch.uint8), frames[0])  # HSV round trip: exact once rounded
        assert torch.allclose(view_boxes[0], _expected_boxes(boxes, x0, y0, flipped, w=100))
        assert view_ids[0].tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(views.student, views.teacher.float(), rtol=0, atol=1e-3)  # photometric off
    student_idx, contrastive_idx = match_indices(views, 0)
    assert views.teacher_ids[0][student_idx].tolist() == [1, 2, 3, 4]
    assert views.contrastive_ids[0][contrastive_idx].tolist() == [1, 2, 3, 4]


def test_crop_offsets_and_flips_vary_with_the_seed():
    frames = _noise(1, 100, 200, 9)
    config = DarthConfig(img_scale=(100, 50), scale_range=(2.0, 2.0), **NO_PHOTOMETRIC)
    located = [_locate(build_views(frames, [torch.zeros(0, 4)], config, _gen(seed)).teacher[0], frames[0])
               for seed in range(12)]
    xs, ys, flips = zip(*located)
    assert len(set(xs)) > 6 and len(set(ys)) > 6 and max(xs) > 50 and max(ys) > 25
    assert set(flips) == {False, True}


def test_a_box_half_outside_the_crop_keeps_its_id_and_unclipped_coordinates():
    """mmtrack's SeqRandomCrop(bbox_clip_border=False): the box is shifted, not clipped, and not removed."""
    frames = _noise(1, 100, 200, 3)
    box = torch.tensor([[80.0, 10.0, 120.0, 30.0]])  # 40 px wide
    config = DarthConfig(img_scale=(100, 50), scale_range=(2.0, 2.0), flip_prob=0.0, **NO_PHOTOMETRIC)
    for seed in range(10):
        views = build_views(frames, [box], config, _gen(seed))
        x0, y0, _ = _locate(views.teacher[0], frames[0])
        if 80 < x0 + 100 < 120:  # the crop's right edge cuts the box
            (x1, y1, x2, y2), = views.teacher_boxes[0].tolist()
            assert (x1, y1, x2, y2) == (80.0 - x0, 10.0 - y0, 120.0 - x0, 30.0 - y0) and x2 > 100
            assert views.teacher_ids[0].tolist() == [1] and views.contrastive_ids[0].tolist() == [1]
            break
    else:
        raise AssertionError("no seed cut the box")


def test_only_degenerate_boxes_are_dropped():
    frames = _noise(1, 100, 200, 3)
    boxes = torch.tensor([[10.0, 10.0, 10.0, 30.0], [10.0, 10.0, 30.0, 30.0], [50.0, 40.0, 60.0, 20.0]])
    views = build_views(frames, [boxes], DarthConfig(img_scale=(100, 50), aug_strength=0.0), _gen(0))
    assert views.teacher_ids[0].tolist() == [2] and views.contrastive_ids[0].tolist() == [2]


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
def test_student_has_the_teacher_geometry_with_photometric_on(impl):
    """A mask image: every teacher pixel value maps to one student value (a per-pixel colour map), so no pixel
    moved; white and black map to different colours (the distortion was applied)."""
    frames = torch.zeros(2, 3, 100, 200, dtype=torch.uint8)
    frames[0, :, 20:70, 30:90] = 255
    frames[1, :, 40:90, 100:180] = 200
    boxes = [torch.tensor([[30.0, 20.0, 90.0, 70.0]]), torch.tensor([[100.0, 40.0, 180.0, 90.0]])]
    config = DarthConfig(img_scale=(150, 80), photometric_prob=1.0, photometric_impl=impl)
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
            assert not torch.equal(student.float(), teacher.float())


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
def test_brightness_only_shifts_every_pixel_by_one_constant(impl):
    frames = torch.randint(60, 190, (1, 3, 100, 200), dtype=torch.uint8, generator=_gen(5))
    config = DarthConfig(img_scale=(100, 50), aug_strength=1.0, photometric_prob=1.0, contrast_range=(1.0, 1.0),
                         saturation_range=(1.0, 1.0), hue_delta=0.0, channel_swap_prob=0.0, photometric_impl=impl)
    views = build_views(frames, [torch.zeros(0, 4)], config, _gen(1))
    h, w = views.teacher_sizes[0]
    shift = views.student[0, :, :h, :w].double() - views.teacher[0, :, :h, :w].double()
    assert (shift - shift.flatten()[0]).abs().max() < 1e-3 and 0 < abs(shift.flatten()[0].item()) <= 32


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
@pytest.mark.parametrize("op", [dict(saturation_range=(0.0, 2.0)), dict(hue_delta=180.0)])
def test_saturation_and_hue_keep_grey_grey(op, impl):
    grey = torch.randint(0, 256, (1, 1, 100, 200), dtype=torch.uint8, generator=_gen(2)).expand(1, 3, 100, 200)
    config = DarthConfig(img_scale=(100, 50), photometric_prob=1.0, brightness_delta=0.0, contrast_range=(1.0, 1.0),
                         channel_swap_prob=0.0, photometric_impl=impl,
                         **{"saturation_range": (1.0, 1.0), "hue_delta": 0.0, **op})
    views = build_views(grey.contiguous(), [torch.zeros(0, 4)], config, _gen(0))
    assert torch.equal(views.student.float(), views.teacher.float())


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
def test_channel_swap_permutes_channels(impl):
    frames = torch.zeros(1, 3, 100, 200, dtype=torch.uint8)
    frames[0, 0], frames[0, 1], frames[0, 2] = 10, 100, 200
    config = DarthConfig(img_scale=(100, 50), photometric_prob=0.0, channel_swap_prob=1.0, photometric_impl=impl)
    seen = set()
    for seed in range(12):
        views = build_views(frames, [torch.zeros(0, 4)], config, _gen(seed))
        h, w = views.teacher_sizes[0]
        student = views.student[0, :, :h, :w].round()  # the HSV round trip is exact up to float32 rounding
        colour = tuple(student[:, 0, 0].tolist())
        assert sorted(colour) == [10, 100, 200] and (student == student[:, :1, :1]).all()
        seen.add(colour)
    assert len(seen) > 1


def test_same_seed_same_views_and_other_seed_other_views():
    frames = _noise(2, 120, 160)
    boxes = [torch.tensor([[10.0, 10.0, 60.0, 100.0], [80.0, 20.0, 150.0, 110.0]]),
             torch.tensor([[0.0, 0.0, 50.0, 50.0]])]
    config = DarthConfig(img_scale=(96, 64))
    a = build_views(frames, boxes, config, _gen(7))
    b = build_views(frames, boxes, config, _gen(7))
    c = build_views(frames, boxes, config, _gen(8))
    for name in ("teacher", "student", "contrastive"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for x, y in zip(a.teacher_boxes + a.contrastive_boxes, b.teacher_boxes + b.contrastive_boxes):
        assert torch.equal(x, y)
    assert not torch.equal(a.student, c.student)


def test_calls_do_not_share_output_memory_and_frame_sizes_may_change():
    config = DarthConfig(img_scale=(100, 50))
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
                        DarthConfig(img_scale=(100, 50)), _gen(0))
    assert views.teacher_boxes[0].shape == (0, 4) and views.contrastive_boxes[0].shape == (0, 4)
    assert views.teacher_ids[0].shape == (0,) and views.teacher_ids[0].dtype == torch.int64
    student_idx, contrastive_idx = match_indices(views, 0)
    assert student_idx.numel() == 0 and contrastive_idx.numel() == 0
    assert views.teacher_ids[1].tolist() == [1]
    assert views.student.shape[:2] == views.contrastive.shape[:2] == (2, 3)
    assert views.teacher.dtype == torch.uint8 and views.student.dtype == views.contrastive.dtype == torch.float32


def test_the_mmtrack_distortion_is_not_clipped_and_the_affine_option_is_uint8():
    frames = torch.full((1, 3, 100, 200), 250, dtype=torch.uint8)
    bright = dict(img_scale=(100, 50), photometric_prob=1.0, brightness_delta=30.0, contrast_range=(1.5, 1.5))
    views = build_views(frames, [torch.zeros(0, 4)], DarthConfig(**bright), _gen(0))
    assert views.student.max() > 300  # 250 x 1.5 (+ up to 30 before it), as mmtrack: never clipped to 255
    affine = build_views(frames, [torch.zeros(0, 4)], DarthConfig(**bright, **AFFINE), _gen(0))
    assert affine.student.dtype == torch.uint8 and affine.student.max() == 255


def test_leaves_torch_thread_count_as_it_was():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        build_views(_noise(1, 100, 200), [torch.zeros(0, 4)], DarthConfig(img_scale=(100, 50)), _gen(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        build_views(torch.zeros(1, 3, 10, 10), [torch.zeros(0, 4)], DarthConfig(), _gen(0))
    with pytest.raises(ValueError, match="pseudo-box"):
        build_views(torch.zeros(2, 3, 10, 10, dtype=torch.uint8), [torch.zeros(0, 4)], DarthConfig(), _gen(0))


@pytest.mark.parametrize("impl", ["mmtrack", "affine"])
def test_packed_cpu_path_equals_the_plain_path_used_on_gpu(impl):
    """On CPU frames are packed into RGBX int32 pixels; on GPU the frame is used as it is. Same views."""
    frame = _noise(1, 100, 200, 4)[0]
    ranges = DarthConfig(aug_strength=2.0).effective_ranges()
    for seed in range(6):
        u = torch.rand(17, generator=_gen(seed)).tolist()
        geo = sample_geometry(u[:4], (100, 200), (110, 60), ranges)
        distortion = _distortion(u[4:], ranges, impl, frame.device)
        outputs = []
        for source in (resizable(frame), frame):
            plain = torch.zeros(3, 60, 110, dtype=torch.uint8)
            distorted = torch.zeros(3, 60, 110, dtype=torch.float32 if impl == "mmtrack" else torch.uint8)
            render(source, geo, distortion, plain, distorted)
            outputs.append((plain, distorted))
        assert resizable(frame).shape == (4, 100, 200)
        assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    frames = _noise(2, 100, 200)
    boxes = [torch.tensor([[40.0, 20.0, 80.0, 60.0]]), torch.zeros(0, 4)]
    config = DarthConfig(img_scale=(100, 50))
    cpu = build_views(frames, boxes, config, _gen(0))
    gpu = build_views(frames.cuda(), [b.cuda() for b in boxes], config, _gen(0))
    assert gpu.student.is_cuda and gpu.student.shape == cpu.student.shape
    assert torch.allclose(gpu.teacher_boxes[0].cpu(), cpu.teacher_boxes[0])

"""The faithful photometric distortion against mmtrack's SeqPhotoMetricDistortion computed with OpenCV."""
import cv2
import numpy as np
import pytest
import torch

from darth_ray.data.photometric import (Distortion, PhotometricRanges, distort, draw_distortion, hsv_to_rgb,
                                        rgb_to_hsv)


def mmtrack_reference(bgr: np.ndarray, d: Distortion) -> np.ndarray:
    """mmtrack 0.14 SeqPhotoMetricDistortion.photo_metric_distortion on a float32 BGR image, step for step
    (mmcv.bgr2hsv / hsv2bgr are cv2.cvtColor); the permutation is applied in RGB order as Distortion defines it."""
    img = bgr.astype(np.float32).copy()
    if d.delta is not None:
        img += np.float32(d.delta)
    if d.contrast_first and d.alpha is not None:
        img *= np.float32(d.alpha)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if d.saturation is not None:
        img[..., 1] *= np.float32(d.saturation)
    if d.hue is not None:
        img[..., 0] += np.float32(d.hue)
        img[..., 0][img[..., 0] > 360] -= 360
        img[..., 0][img[..., 0] < 0] += 360
    img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not d.contrast_first and d.alpha is not None:
        img *= np.float32(d.alpha)
    rgb = img[..., ::-1]
    if d.permutation is not None:
        rgb = rgb[..., list(d.permutation)]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _image(seed: int) -> torch.Tensor:
    rgb = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    rgb[:, :10] = rgb[:, :10] // 8  # dark pixels: all channels negative after a negative brightness shift
    rgb[:, 10:20] = rgb[:1, 10:20]  # grey pixels
    return rgb


@pytest.mark.parametrize("d", [
    Distortion(delta=None, alpha=None, contrast_first=True, saturation=1.45, hue=None, permutation=None),
    Distortion(delta=None, alpha=None, contrast_first=True, saturation=0.55, hue=-17.0, permutation=None),
    Distortion(delta=None, alpha=None, contrast_first=False, saturation=None, hue=12.5, permutation=None),
    Distortion(delta=-25.0, alpha=1.4, contrast_first=True, saturation=1.3, hue=17.9, permutation=(2, 0, 1)),
    Distortion(delta=31.0, alpha=0.6, contrast_first=False, saturation=0.7, hue=-9.0, permutation=(1, 2, 0)),
    Distortion(delta=-30.0, alpha=None, contrast_first=True, saturation=None, hue=None, permutation=None),
])
def test_matches_mmtrack_with_opencv_hsv(d):
    for seed in range(3):
        rgb = _image(seed)
        bgr = rgb.permute(1, 2, 0).numpy()[..., ::-1].astype(np.float32)
        expected = torch.from_numpy(mmtrack_reference(bgr, d))
        ours = distort(rgb, d)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=2e-3)


def test_torch_hsv_conversions_match_opencv():
    """The torch formulas (used off the CPU) against cv2.cvtColor on float32, negative values included."""
    rgb = np.random.default_rng(0).uniform(-40, 300, (50, 60, 3)).astype(np.float32)
    rgb[0, :6] = [[5, 5, 5], [0, 0, 0], [-3, -3, -3], [-20, -10, -5], [0, -1, -2], [10, 10, 3]]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    torch.testing.assert_close(rgb_to_hsv(torch.from_numpy(rgb)), torch.from_numpy(hsv), rtol=1e-5, atol=1e-3)
    hsv[..., 1] *= 1.4
    hsv[..., 0] = (hsv[..., 0] + 17) % 360
    expected = torch.from_numpy(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    torch.testing.assert_close(hsv_to_rgb(torch.from_numpy(hsv)), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_distortion_matches_the_cpu_one():
    d = Distortion(delta=-25.0, alpha=1.4, contrast_first=False, saturation=1.3, hue=17.9, permutation=(2, 0, 1))
    torch.testing.assert_close(distort(_image(0).cuda(), d).cpu(), distort(_image(0), d), rtol=1e-5, atol=2e-3)


def test_hsv_changes_are_not_a_colour_space_approximation():
    """A pure saturation change moves a colour along HSV's saturation, as cv2 does (YIQ chroma scaling does not:
    e.g. a saturated red keeps its maximum channel in HSV)."""
    red = torch.tensor([200, 40, 40], dtype=torch.uint8).view(3, 1, 1)
    out = distort(red, Distortion(None, None, True, 0.5, None, None)).flatten().tolist()
    assert out == pytest.approx([200.0, 120.0, 120.0], abs=1e-3)  # V kept, S 0.8 -> 0.4


def test_draws_follow_the_ranges_and_probabilities():
    ranges = PhotometricRanges()
    off = draw_distortion([0.9] * 9 + [0.1, 0.2, 0.3, 0.9], ranges)
    assert off == Distortion(None, None, False, None, None, None)
    on = draw_distortion([0.1, 1.0, 0.1, 0.0, 0.1, 0.5, 0.1, 0.25, 0.1, 0.3, 0.1, 0.2, 0.1], ranges)
    assert on.delta == pytest.approx(32.0) and on.alpha == pytest.approx(0.5) and on.contrast_first
    assert on.saturation == pytest.approx(1.0) and on.hue == pytest.approx(-9.0) and on.permutation == (1, 2, 0)


def test_affine_colour_map_ignores_the_steps_autocast():
    """Views are built inside the DARTH step's autocast region; the affine colour map's matmul must stay float32
    there (in bf16 a share of pixels came out one grey level off)."""
    from darth_ray.data.photometric import apply_colour, colour_transform

    u = [0.1, 0.3, 0.1, 0.9, 0.1, 0.7, 0.1, 0.2, 0.1, 0.8, 0.4, 0.6]  # every change on (0.1 < p)
    colour = colour_transform(u, PhotometricRanges(photometric_prob=0.5)).float()
    image = _image(3)
    exact = apply_colour(image, colour)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(apply_colour(image, colour), exact)

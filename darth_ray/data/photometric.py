"""mmtrack's SeqPhotoMetricDistortion (brightness, contrast, saturation, hue, channel swap) in two implementations,
drawn from the same uniforms:

- ``distort`` (DARTH's default, ``photometric_impl="mmtrack"``): faithful. Float32, brightness and contrast on the
  colour values, saturation and hue in OpenCV's float HSV (cv2.cvtColor on float32, as mmcv.bgr2hsv/hsv2bgr), no
  clipping and no rounding: values may leave 0..255, as in the authors' pipeline. (It runs on RGB: the HSV of an
  RGB image read as RGB is the HSV of the same image read as BGR, and the random channel permutation is uniform
  either way.)
- ``colour_transform`` + ``apply_colour`` (``photometric_impl="affine"``, also source training's optional
  distortion): a fast approximation as one affine colour map per image on uint8, with saturation and hue acting
  on the chroma plane of YIQ (which keeps the map affine), rounded and clamped to 0..255.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

PHOTOMETRIC_DRAWS = 13  # uniforms per distortion, see draw_distortion
_FLT_EPSILON = float(np.finfo(np.float32).eps)  # OpenCV's RGB2HSV_f guards its divisions with it


@dataclass(frozen=True)
class PhotometricRanges:
    """The distortion's ranges; defaults are mmtrack's SeqPhotoMetricDistortion (DARTH's published views)."""

    photometric_prob: float = 0.5  # each op (brightness, contrast, saturation, hue) applied with this probability
    brightness_delta: float = 32.0  # added to all channels, of 255
    contrast_range: tuple[float, float] = (0.5, 1.5)  # multiplies all channels
    saturation_range: tuple[float, float] = (0.5, 1.5)  # multiplies the saturation (mmtrack) or chroma (affine)
    hue_delta: float = 18.0  # hue rotation, degrees
    channel_swap_prob: float = 0.5  # random permutation of the colour channels


@dataclass(frozen=True)
class Distortion:
    """One draw of the distortion; None = that op is skipped."""

    delta: float | None  # brightness
    alpha: float | None  # contrast
    contrast_first: bool  # contrast before the HSV ops (else after them), as mmtrack's random mode
    saturation: float | None
    hue: float | None  # degrees
    permutation: tuple[int, int, int] | None  # output channel c = input channel permutation[c]


def draw_distortion(u: list[float], ranges: PhotometricRanges) -> Distortion:
    """``u``: PHOTOMETRIC_DRAWS uniforms in [0, 1): brightness on/value, contrast on/value, saturation on/value,
    hue on/value, swap on + 3 sort keys (a uniform permutation, as np.random.permutation(3)), contrast position.
    12 uniforms are enough for the affine map (the contrast position then defaults to first)."""
    p = ranges.photometric_prob

    def between(lo: float, hi: float, x: float) -> float:
        return lo + (hi - lo) * x

    return Distortion(
        delta=between(-ranges.brightness_delta, ranges.brightness_delta, u[1]) if u[0] < p else None,
        alpha=between(*ranges.contrast_range, u[3]) if u[2] < p else None,
        contrast_first=len(u) <= 12 or u[12] < 0.5,
        saturation=between(*ranges.saturation_range, u[5]) if u[4] < p else None,
        hue=between(-ranges.hue_delta, ranges.hue_delta, u[7]) if u[6] < p else None,
        permutation=tuple(torch.tensor(u[9:12]).argsort().tolist()) if u[8] < ranges.channel_swap_prob else None,
    )


def distort(image: Tensor, d: Distortion, out: Tensor | None = None) -> Tensor:
    """mmtrack's SeqPhotoMetricDistortion: RGB image [3, h, w] (uint8 or float) -> float32 [3, h, w], unclipped.

    The HSV conversions are OpenCV's on CPU (cv2.cvtColor, what mmcv calls; ~4x faster than the same formulas as
    torch ops there) and ``rgb_to_hsv``/``hsv_to_rgb`` elsewhere.
    """
    out = torch.empty(image.shape, dtype=torch.float32, device=image.device) if out is None else out
    hwc = image.permute(1, 2, 0)
    if image.device.type == "cpu":
        x = np.ascontiguousarray(hwc.numpy(), dtype=np.float32)
        x = torch.from_numpy(_mmtrack_steps(x, d, lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2HSV),
                                            lambda a: cv2.cvtColor(a, cv2.COLOR_HSV2RGB)))
    else:
        x = _mmtrack_steps(hwc.to(torch.float32, copy=True), d, rgb_to_hsv, hsv_to_rgb)
    out.copy_(x.permute(2, 0, 1))
    return out


def _mmtrack_steps(x, d: Distortion, to_hsv, to_rgb):
    """SeqPhotoMetricDistortion.photo_metric_distortion on a float32 [h, w, 3] array (numpy or torch, modified in
    place), in mmtrack's order: brightness, contrast (if first), to HSV, saturation, hue (wrapped into [0, 360]),
    back, contrast (if last), channel permutation. The HSV round trip always runs, as in mmtrack: it is not the
    identity for pixels whose channels are all negative (after a negative brightness shift)."""
    if d.delta is not None:
        x += d.delta
    if d.contrast_first and d.alpha is not None:
        x *= d.alpha
    x = to_hsv(x)
    if d.saturation is not None:
        x[..., 1] *= d.saturation
    if d.hue is not None:
        x[..., 0] += d.hue
        x[..., 0][x[..., 0] > 360] -= 360
        x[..., 0][x[..., 0] < 0] += 360
    x = to_rgb(x)
    if not d.contrast_first and d.alpha is not None:
        x *= d.alpha
    return x if d.permutation is None else x[..., list(d.permutation)]


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """float32 RGB [..., 3] -> HSV [..., 3] (H in degrees [0, 360)) with OpenCV's float formulas (RGB2HSV_f)."""
    r, g, b = rgb.unbind(-1)
    value = torch.maximum(torch.maximum(r, g), b)
    diff = value - torch.minimum(torch.minimum(r, g), b)
    saturation = diff / (value.abs() + _FLT_EPSILON)
    k = 60.0 / (diff + _FLT_EPSILON)
    hue = torch.where(value == r, (g - b) * k, torch.where(value == g, (b - r) * k + 120.0, (r - g) * k + 240.0))
    return torch.stack([torch.where(hue < 0, hue + 360.0, hue), saturation, value], dim=-1)


# OpenCV's HSV2RGB_f: per hue sector, which of (v, p, q, t) is R, G, B.
_SECTOR_RGB = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV [..., 3] (H in degrees) -> float32 RGB [..., 3] with OpenCV's float formulas (HSV2RGB_f)."""
    hue, saturation, value = hsv.unbind(-1)
    h = hue * (6.0 / 360.0)
    h = h - 6.0 * torch.floor(h / 6.0)  # into [0, 6)
    sector = torch.floor(h)
    fraction = h - sector
    table = torch.stack([value, value * (1 - saturation), value * (1 - saturation * fraction),
                         value * (1 - saturation * (1 - fraction))], dim=-1)
    return table.gather(-1, _sector_rgb(h.device)[sector.long().clamp_(0, 5)])


@functools.lru_cache(maxsize=8)
def _sector_rgb(device: torch.device) -> Tensor:
    """_SECTOR_RGB on `device`, copied there once (a copy from host memory waits for the GPU)."""
    return _SECTOR_RGB.to(device)


# RGB -> YIQ (NTSC). Rows of I and Q sum to 0, so grey stays grey under any chroma change.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.5959, -0.2746, -0.3213],
                            [0.2115, -0.5227, 0.3112]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def colour_transform(u: list[float], ranges: PhotometricRanges) -> Tensor:
    """The distortion drawn from ``u`` (see draw_distortion) as one affine colour map [3, 4] = [A | b] (float64),
    rgb' = A @ rgb + b. A scalar contrast commutes with the linear chroma map, so its position does not matter."""
    return affine_map(draw_distortion(u, ranges))


def affine_map(d: Distortion) -> Tensor:
    """``d`` as an affine colour map [3, 4] (float64): saturation scales and hue rotates YIQ's chroma plane."""
    saturation = 1.0 if d.saturation is None else d.saturation
    hue = 0.0 if d.hue is None else math.radians(d.hue)
    cos, sin = math.cos(hue), math.sin(hue)
    chroma = torch.tensor([[1.0, 0.0, 0.0],
                           [0.0, saturation * cos, -saturation * sin],
                           [0.0, saturation * sin, saturation * cos]], dtype=torch.float64)
    matrix = (1.0 if d.alpha is None else d.alpha) * (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)
    if d.permutation is not None:
        matrix = matrix[list(d.permutation)]
    offset = matrix.sum(dim=1) * (d.delta or 0.0)  # brightness comes first: b = A @ (delta, delta, delta)
    return torch.cat([matrix, offset[:, None]], dim=1)


def apply_colour(image: Tensor, colour: Tensor, out: Tensor | None = None, rows_per_chunk: int = 32) -> Tensor:
    """uint8 image [3, h, w], affine colour map [3, 4] -> uint8 [3, h, w] (rounded, clamped to 0..255).

    Chunks of rows keep the float temporaries in the CPU's L2 cache (~5x faster than whole images).
    """
    out = torch.empty_like(image) if out is None else out
    matrix, bias = colour[:, :3], colour[:, 3:] + 0.5  # + 0.5: rounding by truncation
    with torch.autocast(image.device.type, enabled=False):  # views are built inside the step's autocast: addmm
        for start in range(0, image.shape[1], rows_per_chunk):  # would run in bf16 there (pixels off by one)
            chunk = image[:, start:start + rows_per_chunk]
            mapped = torch.addmm(bias, matrix, chunk.reshape(3, -1).float()).clamp_(0, 255)
            # float -> int16 -> uint8 is several times faster than float -> uint8 on CPU, and exact after the clamp.
            out[:, start:start + rows_per_chunk] = mapped.to(torch.int16).view_as(chunk)
    return out

"""mmdet's PhotoMetricDistortion (brightness, contrast, saturation, hue, channel swap) as one affine colour map per
image, applied to uint8 tensors: the DARTH student and contrastive views (darth_ray/adapt/views.py) and the
optional distortion of source training use it.

Saturation and hue act on the chroma plane of YIQ (mmdet scales S and shifts H in HSV; YIQ keeps the map affine).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PhotometricRanges:
    """The distortion's ranges; defaults are mmtrack's SeqPhotoMetricDistortion (DARTH's published views)."""

    photometric_prob: float = 0.5  # each op (brightness, contrast, saturation, hue) applied with this probability
    brightness_delta: float = 32.0  # added to all channels, of 255
    contrast_range: tuple[float, float] = (0.5, 1.5)  # multiplies all channels
    saturation_range: tuple[float, float] = (0.5, 1.5)  # multiplies the chroma
    hue_delta: float = 18.0  # hue rotation, degrees
    channel_swap_prob: float = 0.5  # random permutation of the colour channels


# RGB -> YIQ (NTSC). Rows of I and Q sum to 0, so grey stays grey under any chroma change.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.5959, -0.2746, -0.3213],
                            [0.2115, -0.5227, 0.3112]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def colour_transform(u: list[float], ranges: PhotometricRanges) -> Tensor:
    """mmdet's PhotoMetricDistortion as one affine colour map [3, 4] = [A | b] (float64), rgb' = A @ rgb + b.

    Order as mmdet: brightness, contrast, saturation, hue, channel swap; each op applied with probability
    ``photometric_prob``. (mmdet puts contrast before or after the HSV ops at random; for a linear chroma map a
    scalar factor commutes, so the position does not matter here.) ``u`` = 12 uniforms in [0, 1).
    """
    p = ranges.photometric_prob

    def between(lo: float, hi: float, x: float) -> float:
        return lo + (hi - lo) * x

    delta = between(-ranges.brightness_delta, ranges.brightness_delta, u[1]) if u[0] < p else 0.0
    alpha = between(*ranges.contrast_range, u[3]) if u[2] < p else 1.0
    saturation = between(*ranges.saturation_range, u[5]) if u[4] < p else 1.0
    hue = math.radians(between(-ranges.hue_delta, ranges.hue_delta, u[7])) if u[6] < p else 0.0

    cos, sin = math.cos(hue), math.sin(hue)
    chroma = torch.tensor([[1.0, 0.0, 0.0],
                           [0.0, saturation * cos, -saturation * sin],
                           [0.0, saturation * sin, saturation * cos]], dtype=torch.float64)
    matrix = alpha * (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)
    if u[8] < ranges.channel_swap_prob:
        matrix = matrix[torch.tensor(u[9:12]).argsort()]  # output channel c = input channel perm[c]
    offset = matrix.sum(dim=1) * delta  # brightness comes first: b = A @ (delta, delta, delta)
    return torch.cat([matrix, offset[:, None]], dim=1)


def apply_colour(image: Tensor, colour: Tensor, out: Tensor | None = None, rows_per_chunk: int = 32) -> Tensor:
    """uint8 image [3, h, w], affine colour map [3, 4] -> uint8 [3, h, w] (rounded, clamped to 0..255).

    Chunks of rows keep the float temporaries in the CPU's L2 cache (~5x faster than whole images).
    """
    out = torch.empty_like(image) if out is None else out
    matrix, bias = colour[:, :3], colour[:, 3:] + 0.5  # + 0.5: rounding by truncation
    for start in range(0, image.shape[1], rows_per_chunk):
        chunk = image[:, start:start + rows_per_chunk]
        mapped = torch.addmm(bias, matrix, chunk.reshape(3, -1).float()).clamp_(0, 255)
        # float -> int16 -> uint8 is several times faster than float -> uint8 on CPU, and exact after the clamp.
        out[:, start:start + rows_per_chunk] = mapped.to(torch.int16).view_as(chunk)
    return out

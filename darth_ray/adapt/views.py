"""The three DARTH views of a batch of frames, built on tensors on the frames' device.

- teacher:     random flip + keep-ratio resize (scale jitter around the target size) + random crop of the frame;
- student:     the teacher view + photometric distortion (identical geometry, so outputs align anchor by anchor);
- contrastive: an independent flip / resize / crop / photometric distortion of the frame.

Geometry is mmdet's Resize(keep_ratio, ratio_range) + RandomCrop(target size) + RandomFlip: the frame is resized by
``factor`` (scale jitter x the factor that fits the frame into the target size), cropped to at most the target size
at an integer offset, and flipped. A view of size (h, w) sits at the top left of the (target_h, target_w) output and
the rest is ``fill`` (mmdet pads after the crop and the photometric distortion). Coordinates are continuous pixels
(pixel i covers [i, i + 1)), so boxes map exactly as x * scaled_w / W - crop_x. Pseudo-boxes are clipped to the view
and kept only if at least ``MIN_VISIBLE_SIZE`` pixels wide and high and at least ``MIN_VISIBLE_FRACTION`` of their
area stays inside: a box that leaves the crop loses its match between views.

The photometric distortion (brightness, contrast, saturation, hue, channel swap, each as mmdet's) is one affine
colour map ``A @ rgb + b`` per view (darth_ray/data/photometric.py).

Speed (benchmarks/bench_views.py): uint8 throughout except the colour map, computed in cache-sized row chunks;
only the crop is copied out of the resized frame. On CPU, frames are packed once into 4-byte RGBX pixels (the layout
torch's uint8 resize kernel works in) in buffers kept between calls, since first-touching fresh memory is expensive
here, and the ops run on one thread (see ``_one_intra_op_thread``; building the views in parallel Python threads
was slower too on the shared 2-core machine).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from darth_ray.adapt.config import AugmentationRanges, DarthConfig
from darth_ray.data.photometric import apply_colour, colour_transform

MIN_VISIBLE_SIZE = 2.0  # pixels, width and height of the clipped box
MIN_VISIBLE_FRACTION = 0.25  # of the box's area inside the view

# Columns of the per-image uniform draws (one torch.rand call per batch keeps results reproducible).
_GEOMETRY_DRAWS = 4  # flip, scale, crop x, crop y
_COLOUR_DRAWS = 12  # brightness on/value, contrast on/value, saturation on/value, hue on/value, swap on + 3 keys
_DRAWS = 2 * (_GEOMETRY_DRAWS + _COLOUR_DRAWS)


@dataclass
class Views:
    teacher: Tensor  # [B, 3, th, tw] uint8 RGB
    student: Tensor  # [B, 3, th, tw] uint8 RGB: teacher geometry + photometric distortion
    contrastive: Tensor  # [B, 3, th, tw] uint8 RGB
    teacher_boxes: list[Tensor]  # per image [N_i, 4] x1y1x2y2 in the teacher (= student) view
    contrastive_boxes: list[Tensor]  # per image [M_i, 4] in the contrastive view
    teacher_ids: list[Tensor]  # per image [N_i] int64 pseudo-instance ids (1-based index into pseudo_boxes)
    contrastive_ids: list[Tensor]  # per image [M_i] int64, same ids as the teacher view
    teacher_sizes: list[tuple[int, int]]  # per image (h, w) of the view's content; the rest is padding
    contrastive_sizes: list[tuple[int, int]]


@dataclass(frozen=True)
class Geometry:
    """One view of one frame: resize to (scaled_h, scaled_w), crop (out_h, out_w) at (crop_y, crop_x), maybe flip."""

    scaled_h: int
    scaled_w: int
    crop_y: int
    crop_x: int
    out_h: int
    out_w: int
    flip: bool


def build_views(
    frames: Tensor,
    pseudo_boxes: list[Tensor],
    config: DarthConfig,
    generator: torch.Generator,
    fill: float | tuple[float, float, float] = 0.0,
) -> Views:
    """Teacher, student and contrastive views of ``frames`` [B, 3, H, W] uint8 RGB.

    ``pseudo_boxes[i]`` [N_i, 4] are x1y1x2y2 in frame coordinates; their ids are 1..N_i in both views.
    Random parameters come from ``generator`` only. ``fill`` is the RGB padding value (pass the detector's pixel
    mean to make padding zero after normalisation, as mmdet and torchvision pad normalised images).
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [B, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    num_frames, _, frame_h, frame_w = frames.shape
    if len(pseudo_boxes) != num_frames:
        raise ValueError(f"got {len(pseudo_boxes)} pseudo-box tensors for {num_frames} frames")
    target_w, target_h = config.target_size or (frame_w, frame_h)
    ranges = config.effective_ranges()

    draws = torch.rand(num_frames, _DRAWS, generator=generator, device=generator.device).cpu().double()
    teacher_geo, student_colour, contrastive_geo, contrastive_colour = draws.split(
        [_GEOMETRY_DRAWS, _COLOUR_DRAWS, _GEOMETRY_DRAWS, _COLOUR_DRAWS], dim=1)
    # Rows 0..B-1: teacher geometry + student colours; rows B..2B-1: contrastive geometry + colours.
    geometries = [sample_geometry(u.tolist(), (frame_h, frame_w), (target_h, target_w), ranges)
                  for u in torch.cat([teacher_geo, contrastive_geo])]
    colours = [colour_transform(u.tolist(), ranges).to(frames.device, torch.float32)
               for u in torch.cat([student_colour, contrastive_colour])]

    fill_rgb = torch.tensor(fill if isinstance(fill, (tuple, list)) else (fill,) * 3).round().clamp(0, 255)
    fill_rgb = fill_rgb.to(frames.device, torch.uint8).view(3, 1, 1)
    plain = frames.new_empty(2 * num_frames, 3, target_h, target_w)
    distorted = torch.empty_like(plain)
    with _one_intra_op_thread(frames.device):
        sources = [resizable(frame, _packing_workspace(i, frames)) for i, frame in enumerate(frames)]
        for row, geo in enumerate(geometries):
            render(sources[row % num_frames], geo, colours[row], plain[row], distorted[row])
            for canvas in (plain[row], distorted[row]):
                canvas[:, geo.out_h:, :] = fill_rgb
                canvas[:, :geo.out_h, geo.out_w:] = fill_rgb

    boxes, ids = [], []
    for row, geo in enumerate(geometries):
        mapped, keep = map_boxes(pseudo_boxes[row % num_frames], geo, (frame_h, frame_w))
        boxes.append(mapped[keep])
        ids.append(torch.arange(1, keep.shape[0] + 1, device=keep.device)[keep])
    sizes = [(geo.out_h, geo.out_w) for geo in geometries]
    b = num_frames
    return Views(teacher=plain[:b], student=distorted[:b], contrastive=distorted[b:],
                 teacher_boxes=boxes[:b], contrastive_boxes=boxes[b:], teacher_ids=ids[:b], contrastive_ids=ids[b:],
                 teacher_sizes=sizes[:b], contrastive_sizes=sizes[b:])


def match_indices(views: Views, i: int) -> tuple[Tensor, Tensor]:
    """Indices (into teacher/student boxes, into contrastive boxes) of the pseudo-instances of image i seen in both."""
    same = views.teacher_ids[i][:, None] == views.contrastive_ids[i][None, :]
    student_idx, contrastive_idx = same.nonzero(as_tuple=True)
    return student_idx, contrastive_idx


def sample_geometry(u: list[float], frame_hw: tuple[int, int], target_hw: tuple[int, int],
                    ranges: AugmentationRanges) -> Geometry:
    """``u`` = 4 uniforms in [0, 1): flip, scale, crop x, crop y."""
    (frame_h, frame_w), (target_h, target_w) = frame_hw, target_hw
    lo, hi = ranges.scale_range
    factor = (lo + (hi - lo) * u[1]) * min(target_w / frame_w, target_h / frame_h)
    scaled_h, scaled_w = max(1, int(frame_h * factor + 0.5)), max(1, int(frame_w * factor + 0.5))  # mmcv rounding
    out_h, out_w = min(scaled_h, target_h), min(scaled_w, target_w)
    crop_y = min(int(u[3] * (scaled_h - out_h + 1)), scaled_h - out_h)
    crop_x = min(int(u[2] * (scaled_w - out_w + 1)), scaled_w - out_w)
    return Geometry(scaled_h=scaled_h, scaled_w=scaled_w, crop_y=crop_y, crop_x=crop_x, out_h=out_h, out_w=out_w,
                    flip=u[0] < ranges.flip_prob)


def resizable(frame: Tensor, workspace: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``frame`` [3, H, W] uint8 in the layout the resize is fastest on.

    On CPU: packed RGBX pixels, [4, H, W] uint8 with channels-last strides over one int32 per pixel. torch's
    fast uint8 resize kernel works on 4-byte channels-last pixels (and returns them), and an int32 per pixel
    makes cropping, flipping and splitting into planes cheap. ``workspace``: two int32 [H, W] buffers to pack into
    (the first one is returned). Elsewhere: the frame as it is.
    """
    if frame.device.type != "cpu":
        return frame
    if workspace is None:
        workspace = (frame.new_empty(frame.shape[1:], dtype=torch.int32),
                     frame.new_empty(frame.shape[1:], dtype=torch.int32))
    pixels, plane = workspace
    pixels.copy_(frame[0])
    for channel in (1, 2):
        plane.copy_(frame[channel])
        plane <<= 8 * channel
        pixels |= plane
    # The resize treats the 4 bytes of a pixel as independent channels, so their order in memory does not matter:
    # render() reads the channels back with the same shifts.
    return pixels.unsqueeze(-1).view(torch.uint8).permute(2, 0, 1)  # [4, H, W]


def render(source: Tensor, geo: Geometry, colour: Tensor, plain: Tensor, distorted: Tensor) -> None:
    """Write the view of ``source`` (a ``resizable`` frame) into the top-left (out_h, out_w) of ``plain``
    [3, th, tw], and its colour-mapped copy (``colour`` [3, 4]) into ``distorted``."""
    resized = source
    if source.shape[-2:] != (geo.scaled_h, geo.scaled_w):
        # Bilinear without antialiasing is mmcv's imresize (cv2 INTER_LINEAR, within 1 grey level): the
        # preprocessing the source model was trained and tested with.
        resized = TF.resize(source.unsqueeze(0), [geo.scaled_h, geo.scaled_w], antialias=False)[0]
    rows = slice(geo.crop_y, geo.crop_y + geo.out_h)
    cols = slice(geo.crop_x, geo.crop_x + geo.out_w)
    view = plain[:, :geo.out_h, :geo.out_w]
    if resized.shape[0] == 4:  # packed RGBX
        pixels = resized.permute(1, 2, 0).contiguous().view(torch.int32).squeeze(-1)[rows, cols]
        if geo.flip:
            pixels = pixels.flip(-1)
        for channel in range(3):
            view[channel] = pixels >> (8 * channel)  # int32 -> uint8 keeps the lowest byte
    else:
        crop = resized[:, rows, cols]
        view.copy_(crop.flip(-1) if geo.flip else crop)
    apply_colour(view, colour, out=distorted[:, :geo.out_h, :geo.out_w])


def map_boxes(boxes: Tensor, geo: Geometry, frame_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Frame-coordinate boxes [N, 4] -> (view boxes clipped to the view [N, 4], keep mask [N])."""
    scale_x, scale_y = geo.scaled_w / frame_hw[1], geo.scaled_h / frame_hw[0]
    mapped = boxes.float() * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    mapped = mapped - boxes.new_tensor([geo.crop_x, geo.crop_y, geo.crop_x, geo.crop_y], dtype=torch.float32)
    if geo.flip:
        mapped = torch.stack([geo.out_w - mapped[:, 2], mapped[:, 1], geo.out_w - mapped[:, 0], mapped[:, 3]], dim=1)
    full_area = (mapped[:, 2] - mapped[:, 0]).clamp(min=0) * (mapped[:, 3] - mapped[:, 1]).clamp(min=0)
    clipped = torch.stack([mapped[:, 0].clamp(0, geo.out_w), mapped[:, 1].clamp(0, geo.out_h),
                           mapped[:, 2].clamp(0, geo.out_w), mapped[:, 3].clamp(0, geo.out_h)], dim=1)
    width = clipped[:, 2] - clipped[:, 0]
    height = clipped[:, 3] - clipped[:, 1]
    keep = ((width >= MIN_VISIBLE_SIZE) & (height >= MIN_VISIBLE_SIZE)
            & (width * height >= MIN_VISIBLE_FRACTION * full_area))
    return clipped, keep


@contextlib.contextmanager
def _one_intra_op_thread(device: torch.device) -> Iterator[None]:
    """Run CPU ops single-threaded, restoring torch's thread count after.

    The views are hundreds of small, cache-sized ops; intra-op threads only add a barrier to each, and on a shared
    machine a barrier waits for a descheduled thread: with 2 threads on 2 busy cores a call took seconds instead of
    ~25 ms. (The setting is process-wide while it lasts: do not build views while other threads run torch ops.)
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_workspaces = threading.local()


def _packing_workspace(index: int, frames: Tensor) -> tuple[Tensor, Tensor] | None:
    """Two int32 [H, W] buffers for packing frame ``index``, kept between calls (per thread, latest frame size):
    on the VM this was measured on, first-touching fresh full-frame buffers cost ~4x the packing itself."""
    if frames.device.type != "cpu":
        return None
    cache = _workspaces.__dict__.setdefault("packing", {})
    shape = frames.shape[2:]
    if index not in cache or cache[index][0].shape != shape:
        cache[index] = (torch.empty(shape, dtype=torch.int32), torch.empty(shape, dtype=torch.int32))
    return cache[index]

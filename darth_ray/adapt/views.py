"""The three DARTH views of a batch of frames, built on tensors on the frames' device.

- teacher:     random flip + keep-ratio resize (scale jitter) + random crop of the frame;
- student:     the teacher view + photometric distortion (identical geometry, so outputs align anchor by anchor);
- contrastive: an independent flip / resize / crop / photometric distortion of the frame.

Geometry is the authors' (mattiasegu/darth, mmtrack 0.14): SeqRandomFlip, SeqResize(img_scale, ratio_range,
keep_ratio) and SeqRandomCrop(crop_size=img_scale), all with bbox_clip_border=False. The jittered scale
int(img_scale x ratio) is fitted keeping the frame's ratio (mmcv.rescale_size: long edge to its longer side, short
edge to its shorter side); the resized frame is cropped to at most img_scale at a uniform integer offset, and
flipped. (mmtrack flips before resizing; with a uniform crop offset that is the same distribution of views.)
Coordinates are continuous pixels (pixel i covers [i, i + 1)), so boxes map exactly as x * scaled_w / W - crop_x.
Pseudo-boxes are never clipped: a box that leaves the crop keeps its unclipped coordinates and its id, and only
degenerate boxes (x2 <= x1 or y2 <= y1) are dropped, so every pseudo-instance matches between the views.

Each view of size (h, w) sits at the top left of its batch's canvas: teacher and student views share one canvas
of the largest teacher view's size, the contrastive views another (the authors collate each batch separately and
pad it to its largest image); the rest is ``fill``. The network pads to a multiple of 32 (QDTrack.normalize).

The photometric distortion (darth_ray/data/photometric.py) is mmtrack's SeqPhotoMetricDistortion in float32,
unclipped (``photometric_impl="mmtrack"``, the default: student and contrastive views are float32), or the fast
affine colour map on uint8 (``"affine"``: all views uint8). Resizing runs on uint8 (bilinear without antialiasing,
within a grey level of cv2 on the authors' float32 frames).

Speed (benchmarks/bench_views.py): uint8 geometry; the photometric distortion is computed in cache-sized row chunks;
only the crop is copied out of the resized frame. On CPU, frames are packed once into 4-byte RGBX pixels (the layout
torch's uint8 resize kernel works in) in buffers kept between calls, since first-touching fresh memory is expensive
here, and the ops run on one thread (see ``_one_intra_op_thread``; building the views in parallel Python threads
was slower too on the shared 2-core machine).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from darth_ray.adapt.config import AugmentationRanges, DarthConfig
from darth_ray.data.photometric import PHOTOMETRIC_DRAWS, affine_map, apply_colour, distort, draw_distortion

# Columns of the per-image uniform draws (one torch.rand call per batch keeps results reproducible).
_GEOMETRY_DRAWS = 4  # flip, scale, crop x, crop y
_DRAWS = 2 * (_GEOMETRY_DRAWS + PHOTOMETRIC_DRAWS)

Distort = Callable[[Tensor, Tensor], object]  # (uint8 view [3, h, w], out [3, h, w]) -> writes the distorted view


@dataclass
class Views:
    teacher: Tensor  # [B, 3, th, tw] uint8 RGB
    student: Tensor  # [B, 3, th, tw] RGB, float32 ("mmtrack") or uint8 ("affine"): teacher geometry + photometric
    contrastive: Tensor  # [B, 3, ch, cw] RGB, same dtype as student
    teacher_boxes: list[Tensor]  # per image [N_i, 4] x1y1x2y2 in the teacher (= student) view, unclipped
    contrastive_boxes: list[Tensor]  # per image [M_i, 4] in the contrastive view, unclipped
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
    model_scale: tuple[int, int] | None = None,
) -> Views:
    """Teacher, student and contrastive views of ``frames`` [B, 3, H, W] uint8 RGB.

    ``pseudo_boxes[i]`` [N_i, 4] are x1y1x2y2 in frame coordinates; their ids are 1..N_i in both views.
    Random parameters come from ``generator`` only. ``fill`` is the RGB padding value (pass the detector's pixel
    mean to make padding zero after normalisation). ``model_scale`` (w, h): the scale used when config.img_scale
    is None (the model's own); None = the frame size.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [B, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    num_frames, _, frame_h, frame_w = frames.shape
    if len(pseudo_boxes) != num_frames:
        raise ValueError(f"got {len(pseudo_boxes)} pseudo-box tensors for {num_frames} frames")
    scale = config.img_scale or model_scale or (frame_w, frame_h)
    ranges = config.effective_ranges()

    draws = torch.rand(num_frames, _DRAWS, generator=generator, device=generator.device).cpu().double()
    teacher_geo, student_colour, contrastive_geo, contrastive_colour = draws.split(
        [_GEOMETRY_DRAWS, PHOTOMETRIC_DRAWS, _GEOMETRY_DRAWS, PHOTOMETRIC_DRAWS], dim=1)
    # Rows 0..B-1: teacher geometry + student colours; rows B..2B-1: contrastive geometry + colours.
    geometries = [sample_geometry(u.tolist(), (frame_h, frame_w), scale, ranges)
                  for u in torch.cat([teacher_geo, contrastive_geo])]
    distortions = [_distortion(u.tolist(), ranges, config.photometric_impl, frames.device)
                   for u in torch.cat([student_colour, contrastive_colour])]

    distorted_dtype = torch.float32 if config.photometric_impl == "mmtrack" else torch.uint8
    teacher, student = _canvases(geometries[:num_frames], frames, distorted_dtype)
    contrastive_plain, contrastive = _canvases(geometries[num_frames:], frames, distorted_dtype)
    plain_rows, distorted_rows = [*teacher, *contrastive_plain], [*student, *contrastive]
    fill_rgb = torch.tensor(fill if isinstance(fill, (tuple, list)) else (fill,) * 3, device=frames.device)
    fills = {torch.uint8: fill_rgb.round().clamp(0, 255).to(torch.uint8).view(3, 1, 1),
             torch.float32: fill_rgb.float().view(3, 1, 1)}
    with _one_intra_op_thread(frames.device):
        sources = [resizable(frame, _packing_workspace(i, frames)) for i, frame in enumerate(frames)]
        for row, geo in enumerate(geometries):
            render(sources[row % num_frames], geo, distortions[row], plain_rows[row], distorted_rows[row])
            for canvas in (plain_rows[row], distorted_rows[row]):
                canvas[:, geo.out_h:, :] = fills[canvas.dtype]
                canvas[:, :geo.out_h, geo.out_w:] = fills[canvas.dtype]

    boxes, ids = [], []
    for row, geo in enumerate(geometries):
        mapped, keep = map_boxes(pseudo_boxes[row % num_frames], geo, (frame_h, frame_w))
        boxes.append(mapped[keep])
        ids.append(torch.arange(1, keep.shape[0] + 1, device=keep.device)[keep])
    sizes = [(geo.out_h, geo.out_w) for geo in geometries]
    b = num_frames
    return Views(teacher=teacher, student=student, contrastive=contrastive,
                 teacher_boxes=boxes[:b], contrastive_boxes=boxes[b:], teacher_ids=ids[:b], contrastive_ids=ids[b:],
                 teacher_sizes=sizes[:b], contrastive_sizes=sizes[b:])


def _distortion(u: list[float], ranges: AugmentationRanges, impl: str, device: torch.device) -> Distort:
    """The photometric distortion drawn from ``u`` with implementation ``impl`` (DarthConfig.photometric_impl)."""
    drawn = draw_distortion(u, ranges)
    if impl == "mmtrack":
        return lambda view, out: distort(view, drawn, out=out)
    colour = affine_map(drawn).to(device, torch.float32)
    return lambda view, out: apply_colour(view, colour, out=out)


def _canvases(geometries: list[Geometry], frames: Tensor, distorted_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Plain (uint8) and distorted canvases [n, 3, h, w] of the largest view's size."""
    height, width = max(g.out_h for g in geometries), max(g.out_w for g in geometries)
    plain = frames.new_empty(len(geometries), 3, height, width)
    return plain, torch.empty(plain.shape, dtype=distorted_dtype, device=frames.device)


def match_indices(views: Views, i: int) -> tuple[Tensor, Tensor]:
    """Indices (into teacher/student boxes, into contrastive boxes) of the pseudo-instances of image i seen in both."""
    same = views.teacher_ids[i][:, None] == views.contrastive_ids[i][None, :]
    student_idx, contrastive_idx = same.nonzero(as_tuple=True)
    return student_idx, contrastive_idx


def sample_geometry(u: list[float], frame_hw: tuple[int, int], scale_wh: tuple[int, int],
                    ranges: AugmentationRanges) -> Geometry:
    """``u`` = 4 uniforms in [0, 1): flip, scale, crop x, crop y. ``scale_wh``: img_scale (w, h)."""
    (frame_h, frame_w), (scale_w, scale_h) = frame_hw, scale_wh
    lo, hi = ranges.scale_range
    ratio = lo + (hi - lo) * u[1]
    jittered = (int(scale_w * ratio), int(scale_h * ratio))  # mmdet's Resize.random_sample_ratio
    factor = min(max(jittered) / max(frame_h, frame_w), min(jittered) / min(frame_h, frame_w))  # mmcv.rescale_size
    scaled_h, scaled_w = max(1, int(frame_h * factor + 0.5)), max(1, int(frame_w * factor + 0.5))
    out_h, out_w = min(scaled_h, scale_h), min(scaled_w, scale_w)
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


def render(source: Tensor, geo: Geometry, distortion: Distort, plain: Tensor, distorted: Tensor) -> None:
    """Write the view of ``source`` (a ``resizable`` frame) into the top-left (out_h, out_w) of ``plain``
    [3, th, tw], and its photometrically distorted copy into ``distorted``."""
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
    distortion(view, distorted[:, :geo.out_h, :geo.out_w])


def map_boxes(boxes: Tensor, geo: Geometry, frame_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Frame-coordinate boxes [N, 4] -> (view boxes [N, 4], unclipped; keep mask [N]: not degenerate)."""
    scale_x, scale_y = geo.scaled_w / frame_hw[1], geo.scaled_h / frame_hw[0]
    # Python numbers, not new tensors: a tensor made from host memory would wait for the GPU at every view.
    scale, crop = (scale_x, scale_y, scale_x, scale_y), (geo.crop_x, geo.crop_y, geo.crop_x, geo.crop_y)
    mapped = torch.stack([boxes[:, i].float() * scale[i] - crop[i] for i in range(4)], dim=1)
    if geo.flip:
        mapped = torch.stack([geo.out_w - mapped[:, 2], mapped[:, 1], geo.out_w - mapped[:, 0], mapped[:, 3]], dim=1)
    keep = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])  # mmtrack's only filter without clipping
    return mapped, keep


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

"""DARTH at real scale on one accelerator, in one command; prints ONE JSON line.

    python benchmarks/gpu_check.py [--device cuda] [--steps 6] [--workers N]      # a GPU box, < 5 minutes
    python benchmarks/gpu_check.py --device cpu --tiny                             # the smoke test (tests/)

r50_fpn at the DanceTrack config's scale (1920x1080 frames, views fit into (1088, 1088)), with deterministic
well-conditioned weights (darth_ray/models/well_conditioned.py, converted from mmtrack's layout as a real checkpoint
is) on generated JPEG frames of moving boxes. Measures: DARTH step frames/s in float32, with AMP (bf16 where the
device has it, else fp16) and with AMP in channels_last layout; the share of a step outside model compute (waiting
for frames, view building, proposal sampling for the pseudo-labels, EMA); peak accelerator memory; whether fp16 with
its gradient scaler stays finite (on a GPU that has bf16); JPEG decoding frames/s (OpenCV on one CPU thread, as the
frame pipeline decodes, and torchvision's decode_jpeg on the device); the loss difference between the CPU and the
device on one fixed batch (on CUDA in true float32, and with PyTorch's default TF32 convolutions, which the "fp32"
throughput uses); tracking frames/s; with --workers N, Ray Train frames/s for 1 and N workers (one GPU each). Each
measurement is also printed to stderr when taken; one that fails is named under "errors" (its traceback on stderr)
and the others still run; the exit status is then 1.

Needs only PyTorch, torchvision, OpenCV and numpy besides this checkout (no ray, wandb, motmetrics, trackeval,
mmengine, tqdm): it imports darth_ray from the checkout; tracking is timed, not scored; Ray only for --workers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.machinery
import json
import math
import sys
import tempfile
import time
import traceback
import types
from collections import defaultdict
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _tqdm_if_missing() -> None:
    """darth_ray's loops show tqdm bars (off here); a borrowed GPU box may not have tqdm installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        class Silent:
            def __init__(self, *args, **kwargs): pass
            def __enter__(self): return self
            def __exit__(self, *exc): pass
            def update(self, *args): pass
            def set_postfix(self, *args, **kwargs): pass
            def set_postfix_str(self, *args): pass
            def close(self): pass

        module = types.ModuleType("tqdm")
        module.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)  # torch looks modules up by their spec
        module.tqdm = Silent
        sys.modules["tqdm"] = module


_tqdm_if_missing()

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import darth_ray.adapt.darth as darth_module  # noqa: E402
import darth_ray.adapt.teacher_student as teacher_student_module  # noqa: E402
from darth_ray.adapt.config import DarthConfig  # noqa: E402
from darth_ray.adapt.darth import Darth  # noqa: E402
from darth_ray.adapt.loop import AdaptationRun  # noqa: E402
from darth_ray.data.mot import SeqInfo, load_sequences  # noqa: E402
from darth_ray.eval.track import track_sequence  # noqa: E402
from darth_ray.models.convert_mmtrack import convert_mmtrack_checkpoint  # noqa: E402
from darth_ray.models.qdtrack import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from darth_ray.models.tracker import QuasiDenseTracker  # noqa: E402
from darth_ray.models.well_conditioned import write_mmtrack_checkpoint  # noqa: E402

FULL = {"model": "r50_fpn", "frame": (1920, 1080), "img_scale": None}  # None: the model's test_scale (1088, 1088)
# The smoke test's scale: r50_fpn's 2000 proposals per frame cost ~20 s per step on 2 CPU cores even at this size
# (tests/test_real_scale.py runs r50_fpn at 1920x1080 once).
TINY = {"model": "small", "frame": (256, 144), "img_scale": (256, 256)}
OUTSIDE = ("waiting for frames", "view building", "proposal sampling", "EMA update")


def write_sequence(root: Path, name: str, frames: int, size: tuple[int, int], seed: int = 0, people: int = 12) -> Path:
    """A MOTChallenge sequence of `frames` JPEGs: boxes moving over a textured background, with their gt.txt."""
    width, height = size
    rng = np.random.default_rng(seed)
    seq = root / name
    (seq / "img1").mkdir(parents=True, exist_ok=True)
    (seq / "gt").mkdir(exist_ok=True)
    (seq / "seqinfo.ini").write_text(SeqInfo(name=name, im_dir="img1", frame_rate=30.0, seq_length=frames,
                                             width=width, height=height, im_ext=".jpg").to_ini())
    background = cv2.resize(rng.integers(40, 200, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8),
                            (width, height), interpolation=cv2.INTER_CUBIC)
    box_w, box_h = max(4, width // 24), max(8, height // 6)
    start = rng.uniform([0, 0], [width - box_w, height - box_h], (people, 2))
    velocity = rng.uniform(-width / 100, width / 100, (people, 2))
    colours = rng.integers(0, 256, (people, 3))
    rows = []
    for f in range(1, frames + 1):
        image = background.copy()
        xy = np.abs(start + velocity * f) % [width - box_w, height - box_h]  # bounce-free wrap keeps them inside
        for i, (x, y) in enumerate(xy):
            cv2.rectangle(image, (int(x), int(y)), (int(x) + box_w, int(y) + box_h), colours[i].tolist(), -1)
            rows.append(f"{f},{i + 1},{x:.1f},{y:.1f},{box_w},{box_h},1,1,1\n")
        cv2.imwrite(str(seq / "img1" / f"{f:08d}.jpg"), image)
    (seq / "gt" / "gt.txt").write_text("".join(rows))
    return seq


def source_checkpoint(work: Path, model: str) -> Path:
    """r50_fpn: the well-conditioned weights written as an mmtrack checkpoint and converted, as a user's would be;
    small (--tiny): a seeded random init."""
    if model == "small":
        torch.manual_seed(0)
        return save_checkpoint(work / "source.pt", build_model("small"))
    return convert_mmtrack_checkpoint(write_mmtrack_checkpoint(work / "qdtrack_mmtrack.pth"), work / "source.pt")


def darth_config(scale: dict, amp: str, frames: int, steps: int, channels_last: bool = False) -> DarthConfig:
    """The published DARTH settings at this scale, with enough epochs for `steps` steps (plus warm-up)."""
    steps_per_epoch = max(1, frames // 2)
    return DarthConfig(frame_size=scale["frame"], img_scale=scale["img_scale"], amp=amp, frames_per_batch=2,
                       epochs=math.ceil((steps + 1) / steps_per_epoch), lr_steps=(), channels_last=channels_last)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def fresh_run(source: Path, data: Path, config: DarthConfig, device: torch.device) -> Iterator[AdaptationRun]:
    """An AdaptationRun over every frame of `data`, made after what earlier runs left is freed (their models and
    optimiser state would count in this one's peak memory); its frame threads are closed after."""
    sequences = load_sequences(data, require_images=True)
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    release(device)
    run = AdaptationRun(source, sequences, frames, config, device=str(device))
    try:
        yield run
    finally:
        run.frames_ahead.close()


def release(device: torch.device) -> None:
    """Free what earlier runs left (an AdaptationRun is kept alive by reference cycles until a collection)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_darth(source: Path, data: Path, config: DarthConfig, device: torch.device, steps: int) -> dict:
    """frames/s over `steps` steps after one warm-up step, then where a step's time goes (synchronised timers)."""
    result = {}
    for phase in ("throughput", "breakdown"):
        with fresh_run(source, data, config, device) as run:
            run.run_step()  # warm-up: allocator, first decode, lazy CUDA initialisation
            try:
                times = _timed_pieces(run, device) if phase == "breakdown" else defaultdict(float)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                synchronize(device)
                start = time.perf_counter()
                for _ in range(steps):
                    run.run_step()
                synchronize(device)
                elapsed = time.perf_counter() - start
            finally:
                _restore_pieces()
        if phase == "throughput":
            result["frames_per_s"] = steps * config.frames_per_batch / elapsed
            result["step_s"] = elapsed / steps
            if device.type == "cuda":
                result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        else:
            result["outside_model_share"] = sum(times[k] for k in OUTSIDE) / elapsed
            result["outside_model_s"] = {k: times[k] / steps for k in OUTSIDE}
    return result


def fp16_steps(source: Path, data: Path, config: DarthConfig, device: torch.device, steps: int = 3) -> dict:
    """fp16 autocast with its gradient scaler (GPUs without bf16) for a few steps: finite losses, the loss scale."""
    with fresh_run(source, data, config, device) as run:
        losses = [run.run_step()["loss_total"] for _ in range(steps)]
        scale = run.method.precision.scaler.get_scale()
    return {"loss_total": losses, "finite": all(math.isfinite(v) for v in losses), "loss_scale": scale}


# (module, function, label): the pieces of a DARTH step outside the model, timed by wrapping them where called.
_PIECES = ((darth_module, "build_views", "view building"), (darth_module, "assign_and_sample", "proposal sampling"),
           (teacher_student_module, "ema_update", "EMA update"))
_ORIGINALS = {(module, name): getattr(module, name) for module, name, _ in _PIECES}


def _timed_pieces(run: AdaptationRun, device: torch.device) -> dict[str, float]:
    """Wrap the pieces of a step that are not model compute with synchronised timers; returns their totals."""
    times: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            synchronize(device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(device)
                times[name] += time.perf_counter() - t0
        return wrapper

    for module, name, label in _PIECES:
        setattr(module, name, timed(label, _ORIGINALS[module, name]))
    run.frames_ahead.get = timed("waiting for frames", run.frames_ahead.get)
    return times


def _restore_pieces() -> None:
    for (module, name), fn in _ORIGINALS.items():
        setattr(module, name, fn)


def loss_difference(source: Path, data: Path, config: DarthConfig, device: torch.device) -> dict:
    """The DARTH losses of one fixed batch (one frame, fixed views) in float32 on the CPU and on `device`. On CUDA
    twice: in true float32 (TF32 off) and with PyTorch's default, which runs cuDNN convolutions in TF32."""
    sequence = load_sequences(data, require_images=True)[0]
    frames = sequence.load_image(1)[None]

    def losses(where: str) -> dict[str, float]:
        model, _ = load_checkpoint(source, map_location=where)
        darth = Darth.from_source(model, dataclasses.replace(config, amp="off"))
        with torch.no_grad():
            return {k: float(v) for k, v in darth.losses(frames.to(where), torch.Generator().manual_seed(0)).items()}

    def largest_difference(a: dict, b: dict) -> float:
        return max(abs(a[k] - b[k]) for k in a)

    cpu = losses("cpu")
    default_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        device_fp32 = losses(device.type)
    finally:
        torch.backends.cudnn.allow_tf32 = default_tf32
    result = {"cpu": cpu, "device": device_fp32, "max_abs_diff": largest_difference(cpu, device_fp32)}
    if device.type == "cuda" and default_tf32:
        device_tf32 = losses(device.type)
        result.update(device_tf32=device_tf32, max_abs_diff_tf32=largest_difference(cpu, device_tf32))
    return result


def measure_decoding(data: Path, device: torch.device) -> dict:
    """JPEG decoding frames/s of the generated frames: OpenCV on one CPU thread (what each of the frame pipeline's
    threads does) and, on CUDA, torchvision's decode_jpeg on the device, all frames in one batch."""
    from torchvision.io import decode_jpeg

    files = sorted(load_sequences(data, require_images=True)[0].image_dir.glob("*.jpg"))
    encoded = [f.read_bytes() for f in files]
    start = time.perf_counter()
    for data_bytes in encoded:
        cv2.imdecode(np.frombuffer(data_bytes, np.uint8), cv2.IMREAD_COLOR)
    rates = {"cv2_cpu_thread_frames_per_s": len(encoded) / (time.perf_counter() - start)}
    if device.type == "cuda":
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
        decode_jpeg(tensors, device=device)  # warm-up: nvjpeg's handles
        synchronize(device)
        start = time.perf_counter()
        decode_jpeg(tensors, device=device)
        synchronize(device)
        rates["decode_jpeg_device_frames_per_s"] = len(encoded) / (time.perf_counter() - start)
    return rates


def measure_tracking(source: Path, data: Path, device: torch.device) -> float:
    """Tracking frames/s (detection + embeddings + association) over the sequence, after a warm-up pass."""
    model, _ = load_checkpoint(source, map_location=str(device))
    sequence = load_sequences(data, require_images=True)[0]
    track_sequence(model, sequence, QuasiDenseTracker())  # warm-up
    synchronize(device)
    start = time.perf_counter()
    track_sequence(model, sequence, QuasiDenseTracker())
    synchronize(device)
    return sequence.num_frames / (time.perf_counter() - start)


def measure_ray(source: Path, work: Path, scale: dict, amp: str, workers: int, steps: int, device: torch.device,
                seed: int) -> dict:
    """Ray Train DARTH frames/s (start-up excluded) with 1 and `workers` workers, one GPU each on CUDA."""
    from darth_ray.distributed.train import TrainLoopConfig
    from darth_ray.distributed.tune import fit_trial

    config = darth_config(scale, amp, 2 * (steps + 1), steps)  # one epoch of steps + 1 steps on every worker
    rates = {}
    for n in (1, workers):
        data = write_sequence(work / f"ray_data_{n}", "ray-seq", 2 * (steps + 1) * n, scale["frame"], seed).parent
        loop = TrainLoopConfig(source=str(source), target=str(data), darth=config, checkpoint_every=10 ** 6,
                               report_every=10 ** 6, eval_every_epoch=False, final_eval=False)
        result = fit_trial(loop, n, 1.0 if device.type == "cuda" else 0.0, str(work / "ray"), f"gpu_check_{n}",
                           max_failures=0)
        if result.error:
            raise RuntimeError(f"Ray Train with {n} worker(s) failed: {result.error}")
        rates[n] = result.metrics["adapt_frames_per_s"]
    return {"frames_per_s_1": rates[1], f"frames_per_s_{workers}": rates[workers], "ratio": rates[workers] / rates[1]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=6, help="timed DARTH steps per measurement (after one warm-up)")
    p.add_argument("--frames", type=int, default=16, help="generated frames (the tracking sequence)")
    p.add_argument("--workers", type=int, default=0, help="also Ray Train with 1 and N workers (needs ray, N GPUs)")
    p.add_argument("--tiny", action="store_true",
                   help=f"the small model, {TINY['frame']} frames, views in {TINY['img_scale']} (smoke test)")
    p.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and args.workers > torch.cuda.device_count():
        p.error(f"--workers {args.workers}: this machine has {torch.cuda.device_count()} GPU(s), one per worker")
    scale = TINY if args.tiny else FULL
    # Emulated bf16 (V100, T4) runs slower than fp16 there: bf16 only where the GPU has it.
    amp = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = work / "data"
    started = time.perf_counter()
    source = source_checkpoint(work, scale["model"])
    frames = max(args.frames, 2 * (args.steps + 1))
    write_sequence(data, "check-seq", frames, scale["frame"])
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "model": scale["model"], "frame_size": scale["frame"],
              "view_scale": scale["img_scale"] or (1088, 1088), "frames_per_step": 2}
    if device.type == "cuda":  # PyTorch's default: "fp32" convolutions run in TF32 on Ampere and newer
        report["tf32_convolutions"] = torch.backends.cudnn.allow_tf32
    errors: dict[str, str] = {}

    def measure(key: str, fn, *fn_args) -> None:
        """report[key] = fn(*fn_args), also printed to stderr at once (a run cut short keeps what it measured); a
        failure is named in errors and the check goes on to the next one."""
        try:
            report[key] = fn(*fn_args)
            print(f"gpu_check {key}: {json.dumps(report[key])}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - one broken measurement must not lose the others on a borrowed GPU
            traceback.print_exc()
            where = traceback.extract_tb(e.__traceback__)[-1]
            errors[key] = f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"

    for key, mode, channels_last in (("darth_fp32", "off", False), (f"darth_{amp}", amp, False),
                                     (f"darth_{amp}_channels_last", amp, True)):
        measure(key, measure_darth, source, data, darth_config(scale, mode, frames, args.steps, channels_last),
                device, args.steps)
    rate = {k: v["frames_per_s"] for k, v in report.items() if k.startswith("darth_")}
    if "darth_fp32" in rate and f"darth_{amp}" in rate:
        report["amp_speedup"] = rate[f"darth_{amp}"] / rate["darth_fp32"]
    if f"darth_{amp}_channels_last" in rate and f"darth_{amp}" in rate:
        report["channels_last_speedup"] = rate[f"darth_{amp}_channels_last"] / rate[f"darth_{amp}"]
    if device.type == "cuda" and amp != "fp16":
        measure("fp16_steps", fp16_steps, source, data, darth_config(scale, "fp16", frames, 3), device)
    measure("frame_decoding", measure_decoding, data, device)
    measure("cpu_vs_device_loss", loss_difference, source, data, darth_config(scale, "off", frames, 1), device)
    measure("tracking_frames_per_s", measure_tracking, source, data, device)
    if args.workers:
        measure("ray_train", measure_ray, source, work, scale, amp, args.workers, args.steps, device, 1)
    if rate:
        # 4 epochs over DanceTrack val (~25k frames) on 8 GPUs, at the measured multi-worker efficiency if any
        efficiency = report["ray_train"]["ratio"] / args.workers if "ray_train" in report else 1.0
        report["dancetrack_val_100k_frames_8_gpus_hours"] = 100_000 / (8 * max(rate.values()) * efficiency) / 3600
    if errors:
        report["errors"] = errors
    report["check_s"] = time.perf_counter() - started
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    sys.exit(1 if "errors" in main() else 0)

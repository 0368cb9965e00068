"""The offline protocol's adaptation loop around a method's `step` (DarthConfig.method, adapt/methods.py): which
frames each step sees, learning-rate schedule, checkpoints, resume, and the final evaluation of the adapted student.
`adaptation_loop` is the one outer loop: `darth-ray adapt` runs it in one process with a reporter that writes files
(`FileReporter`), the Ray Train worker on its shard of the frames with one that reports to Ray
(distributed/train.py). The online protocol is adapt/online.py; `adapt` runs either.

Batches are a pure function of (seed, epoch, step): the frame order of an epoch is a permutation seeded by
(seed, epoch) and the view randomness of a step a generator seeded by (seed, rank, step). A run resumed from a
checkpoint therefore continues exactly where it stopped. The frames of the next steps are decoded in background
threads meanwhile (data/prefetch.py), which changes none of this.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.methods import METHODS
from darth_ray.data.dataset import dataset_options, load_dataset
from darth_ray.data.mot import Sequence
from darth_ray.data.prefetch import Prefetcher
from darth_ray.eval.label_free import score_without_labels
from darth_ray.eval.metrics import COMBINED, score_results
from darth_ray.eval.plots import write_adapt_plots
from darth_ray.eval.track import track_and_score, track_sequences
from darth_ray.io import (RESUME_FILE, atomic_torch_save, atomic_write_json, claim_output_dir, file_sha256,
                          read_torch_file)
from darth_ray.models.qdtrack import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 50  # steps between checkpoints of an adaptation (`adapt`, the Ray Train worker)
ERROR_KEY = "error"  # in the report of a run stopped by a non-finite loss: what happened

# What `adapt` writes in its output directory (its darth_run.json lists them).
ADAPT_OUTPUTS = (RESUME_FILE, "final.pt", "adapt_log.jsonl", "results", "metrics.json", "source_metrics.json",
                 "summary.json", "plots")


def step_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """The view randomness of one step: a CPU generator on every device (the proposal sampler's randperm needs one,
    and a step draws the same views on the CPU and on a GPU), seeded by (seed, stream: a rank or a sequence, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) * 1_000_003 + step)


def take_step(method, scheduler, frames: torch.Tensor | None, generator: torch.Generator,
              step: int) -> dict[str, float]:
    """One step of `method` and of its lr `scheduler` (None: the method has no optimiser); returns the losses, the
    lr and the step's time. A non-finite loss raises FloatingPointError naming `step`."""
    t0 = time.perf_counter()
    losses = method.step(frames, generator)
    if scheduler:
        scheduler.step()
        losses["lr"] = method.optimizer.param_groups[0]["lr"]
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"non-finite {method.title} loss at step {step}: {losses}")
    return {**losses, "step_time": time.perf_counter() - t0}


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run's latest checkpoint is the last one before it."""


class AdaptationRun:
    """config.method over a fixed list of (sequence, frame) for `config.epochs` epochs of `steps_per_epoch` steps
    (the offline protocol)."""

    def __init__(self, source: Path, sequences: list[Sequence], frames: list[tuple[str, int]], config: DarthConfig,
                 steps_per_epoch: int | None = None, rank: int = 0, workers: int = 1, device: str = "cpu",
                 stats_sync: Callable[[list[torch.Tensor]], None] | None = None):
        """`workers` data-parallel processes of `config.frames_per_batch` frames each set lr and EMA momentum (the
        batch rule); their gradients are averaged by whoever set them up (hooks on `self.method.params`)."""
        if not frames:
            raise ValueError("no target frames to adapt on")
        if config.protocol != "offline":
            raise ValueError(f"AdaptationRun runs the offline protocol, not {config.protocol!r} (adapt/online.py)")
        source_model, _ = load_checkpoint(source, map_location=device)
        self.source_path, self.config, self.rank, self.workers, self.device = Path(source), config, rank, workers, device
        self.method = METHODS[config.method].from_source(source_model.to(device), config, workers=workers)
        self.source_model = source_model  # the methods copy it: it stays the source
        self.stats_sync = stats_sync  # averages tensors across workers (target BN statistics)
        self.sequences = {s.name: s for s in sequences}
        self.frames = frames
        self.steps_per_epoch = steps_per_epoch or max(1, len(frames) // config.frames_per_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.step = 0
        self.frames_ahead, self.scheduler = None, None  # a method that learns nothing needs neither
        if self.method.learns:
            self.frames_ahead = Prefetcher(lambda step: self.read_frames(self.batch_frames(step)), device,
                                           self.total_steps)
        if self.method.optimizer:  # mmcv's step policy (lr x gamma at each epoch in lr_steps), linear warm-up
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.method.optimizer, lambda s: config.lr_factor(s, self.steps_per_epoch))

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def reference_model(self):
        """What the label-free agreement (eval/label_free.py) compares the adapted student with: the method's EMA
        teacher, the source model for a method without one."""
        return getattr(self.method, "teacher", self.source_model)

    def batch_frames(self, step: int) -> list[tuple[str, int]]:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.frames), generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch))
        b = self.config.frames_per_batch
        picks = [(index * b + j) % len(self.frames) for j in range(b)]
        return [self.frames[int(order[p])] for p in picks]

    def load_batch(self, step: int) -> torch.Tensor:
        return self.load_frames(self.batch_frames(step))

    def load_frames(self, picks: list[tuple[str, int]]) -> torch.Tensor:
        return self.read_frames(picks).to(self.device)

    def read_frames(self, picks: list[tuple[str, int]]) -> torch.Tensor:
        """The frames as one uint8 batch [B, 3, H, W] on the CPU (decoded, resized to the first one's size)."""
        frames = [self.sequences[name].load_image(f) for name, f in picks]
        sizes = {tuple(f.shape) for f in frames}
        if len(sizes) > 1:  # frames stack into one batch (frame_size, when set, resizes them again)
            frames = [torch.nn.functional.interpolate(f[None].float(), size=frames[0].shape[-2:], mode="bilinear")[0]
                      .round().clamp(0, 255).to(torch.uint8) for f in frames]
        return torch.stack(frames)

    def use_target_bn_statistics(self) -> int:
        """Student and teacher BN statistics from one pass over this run's frames (pooled across workers). Before
        the first step, when the method asks for them; a resumed run has them in its checkpoint."""
        chunks = [self.frames[i:i + 4] for i in range(0, len(self.frames), 4)]
        ahead = Prefetcher(lambda i: self.read_frames(chunks[i]), self.device, len(chunks))
        batches = (ahead.get(i) for i in range(len(chunks)))
        try:
            seen = self.method.use_target_bn_statistics(batches, self.stats_sync)
        finally:
            ahead.close()
        log.info("BatchNorm statistics re-estimated on %d target frames", seen)
        return seen

    def run_step(self) -> dict[str, float]:
        frames = self.frames_ahead.get(self.step) if self.frames_ahead else None
        generator = step_generator(self.config.seed, self.rank, self.step)
        self.step += 1
        return take_step(self.method, self.scheduler, frames, generator, self.step)

    def state_dict(self) -> dict:
        scheduler = self.scheduler.state_dict() if self.scheduler else None
        return {**self.method.state_dict(), "scheduler": scheduler, "step": self.step,
                "rng": {"torch": torch.get_rng_state(), "seed": self.config.seed, "rank": self.rank},
                "darth_config": self.config.to_dict(), "source": str(self.source_path)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`, with this run's lr (the same on a resume; PBT restarts a donor's state with
        another)."""
        self.method.load_state_dict(state)
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        if not self.scheduler:
            return
        self.scheduler.load_state_dict(state["scheduler"])
        optimizer = self.method.optimizer
        lr = optimizer.defaults["lr"]  # what this run's method was built with; loading replaced the groups' lr
        self.scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, lr * self.config.lr_factor(self.step, self.steps_per_epoch)

    def save(self, path: Path) -> Path:
        return atomic_torch_save(self.state_dict(), path)

    def save_student(self, path: Path) -> Path:
        """The adapted student as a plain model checkpoint, loadable by `darth-ray track`."""
        return save_checkpoint(path, self.method.model_to_evaluate, {
            "darth_config": self.config.to_dict(), "step": self.step, "source": str(self.source_path)})


def adaptation_loop(run: AdaptationRun, reporter, checkpoint_every: int = CHECKPOINT_EVERY, report_every: int = 1,
                    evaluate: Callable[[], dict] | None = None, eval_every_epoch: bool = False, final_eval: bool = True,
                    share_error: Callable[[str | None], str | None] | None = None,
                    show_progress: bool = False) -> str | None:
    """Steps `run` to its end; after a step, `reporter.report(run, record, save, evaluation)` when it saves (every
    `checkpoint_every` steps and at every epoch's end), evaluates (`evaluate()` at an epoch's end: every epoch with
    `eval_every_epoch`, the last with `final_eval`) or every `report_every` steps. `record`: the step's losses, lr
    and time, at the end also the adaptation throughput of all workers (start-up excluded).

    A non-finite loss ends the run: `reporter.report(run, {"error": ...}, False, None)`, returned (its checkpoints
    stay those before the step; restarting from them would diverge the same way). With several workers,
    `share_error` gives every rank every rank's error so that they stop together."""
    first_step, started = run.step, time.perf_counter()
    with tqdm(total=run.total_steps, initial=run.step, unit="step", desc=run.method.title,
              disable=not show_progress) as bar:
        while run.step < run.total_steps:
            try:
                record, error = run.run_step(), None
            except FloatingPointError as e:
                record, error = None, str(e)
            if share_error is not None:
                error = share_error(error)
            if error:
                reporter.report(run, {ERROR_KEY: error}, False, None)
                return error
            bar.update(1)
            if "loss_total" in record:
                bar.set_postfix(loss=f"{record['loss_total']:.3f}")
            end_of_epoch = run.step % run.steps_per_epoch == 0
            done = run.step == run.total_steps
            if done:
                frames = (run.step - first_step) * run.config.frames_per_batch * run.workers
                record["adapt_frames_per_s"] = frames / (time.perf_counter() - started)
            evaluated = evaluate is not None and end_of_epoch and (final_eval if done else eval_every_epoch)
            evaluation = evaluate() if evaluated else None
            save = run.step % checkpoint_every == 0 or end_of_epoch
            if save or evaluated or run.step % report_every == 0:
                reporter.report(run, record, save, evaluation)
    return None


class FileReporter:
    """`adapt`'s reporter: every record a line of OUT/adapt_log.jsonl (labelled with its step and the step's own
    epoch), the full state to OUT/last.pt when the loop saves, the last evaluation kept."""

    def __init__(self, out_dir: Path):
        self.log_file, self.last = out_dir / "adapt_log.jsonl", out_dir / RESUME_FILE
        self.evaluation, self.saved_step = None, None

    def save(self, run: AdaptationRun) -> None:
        if run.step != self.saved_step:
            run.save(self.last)
            self.saved_step = run.step

    def report(self, run: AdaptationRun, record: dict, save: bool, evaluation: dict | None) -> None:
        with open(self.log_file, "a") as f:
            f.write(json.dumps({"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, **record}) + "\n")
        if save:
            self.save(run)
        if evaluation is not None:
            self.evaluation = evaluation


def adapt(source: Path, target: Path, out_dir: Path, config: DarthConfig = DarthConfig(), split: str | None = None,
          checkpoint_every: int = CHECKPOINT_EVERY, tracker_params: dict | None = None, resume: bool = True,
          evaluate_source: bool = False, show_progress: bool = True, device: str = "cpu",
          images: Path | None = None, classes: list[str] | None = None,
          class_map: dict[str, str] | None = None) -> dict:
    """config.method on every frame of the target sequences with config.protocol: offline (here: epochs, then
    tracking + evaluation of the adapted student) or online (adapt/online.py). `target` is any dataset
    `load_dataset` reads (with `images`, `classes` and `class_map`).

    Writes OUT/last.pt (full state, for resume), OUT/final.pt (the student), OUT/results/<seq>.txt,
    OUT/metrics.json (`evaluate --json` format, its COMBINED row with the label-free scores lf_*: eval/label_free.py),
    OUT/adapt_log.jsonl (per-step losses), OUT/plots/ (losses.png, metrics.png) and OUT/darth_run.json (what the
    run depends on: source checkpoint by path and sha256, target, split, config; a resume must match it).
    A non-finite loss raises NonFiniteLossError naming the step and the last checkpoint before it (OUT/last.pt).
    """
    out_dir = Path(out_dir)
    sequences, _ = load_dataset(target, split=split, images=images, classes=classes, class_map=class_map,
                                require_images=True)
    if config.protocol == "online":  # the other protocol, its own loop
        from darth_ray.adapt.online import adapt_online

        return adapt_online(source, target, sequences, out_dir, config, split, tracker_params, resume,
                            evaluate_source, show_progress, device, images, classes, class_map)
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    run = AdaptationRun(source, sequences, frames, config, device=device)
    reporter = FileReporter(out_dir)
    if claim_adapt_dir(source, target, out_dir, config, split, resume, images, classes, class_map):
        run.load_state_dict(read_torch_file(reporter.last, device))
        reporter.saved_step = run.step
        log.info("resuming %s from %s at step %d/%d", run.method.title, reporter.last, run.step, run.total_steps)
    elif run.method.target_bn_stats:
        run.use_target_bn_statistics()

    def track_student() -> dict:  # the final evaluation: tracks in OUT/results, the label-free scores
        reporter.save(run)  # the last step's state first: a crash while tracking repeats no step
        student = run.method.model_to_evaluate.eval()
        results = track_sequences(student, sequences, out_dir / "results", tracker_params, show_progress=show_progress)
        return {"results": results, "label_free": score_without_labels(student, run.reference_model, sequences,
                                                                       results)}

    evaluate = track_student if all(s.has_gt for s in sequences) else None
    finished_before = run.step == run.total_steps  # a resume after the last step: only the evaluation is left
    error = adaptation_loop(run, reporter, checkpoint_every, evaluate=evaluate, show_progress=show_progress)
    if error:
        last = (f"last good checkpoint: {reporter.last} (step {reporter.saved_step})" if reporter.saved_step is not None
                else "no checkpoint was written before it")
        raise NonFiniteLossError(f"{error}; {last}")
    final = run.save_student(out_dir / "final.pt")
    evaluation = reporter.evaluation or (evaluate() if evaluate and finished_before else {})
    return finish_adapt(out_dir, {"final_checkpoint": str(final), "steps": run.step}, sequences,
                        evaluation.get("results"), config, source, tracker_params, evaluate_source, show_progress,
                        device, evaluation.get("label_free"))


def claim_adapt_dir(source: Path, target: Path, out_dir: Path, config: DarthConfig, split: str | None, resume: bool,
                    images: Path | None, classes: list[str] | None, class_map: dict[str, str] | None) -> bool:
    """OUT as the output directory of `adapt` with this provenance (darth_run.json); True when the run resumes."""
    provenance = {"source": str(Path(source).resolve()), "source_sha256": file_sha256(source),
                  "target": str(Path(target).resolve()), "split": split, **dataset_options(images, classes, class_map),
                  **config.to_dict()}
    return claim_output_dir(out_dir, "adapt", provenance, ADAPT_OUTPUTS, inputs=[source], resume=resume,
                            defaults=DarthConfig().to_dict())


def finish_adapt(out_dir: Path, summary: dict, sequences: list[Sequence], results: dict | None, config: DarthConfig,
                 source: Path, tracker_params: dict | None, evaluate_source: bool, show_progress: bool,
                 device: str, label_free: dict | None = None) -> dict:
    """Scores `results` (OUT/metrics.json, with the `label_free` scores in its COMBINED row; with `evaluate_source`
    also the source model's, OUT/source_metrics.json) when every sequence has ground truth, writes OUT/summary.json
    and OUT/plots/; returns the summary."""
    if results is not None and all(s.has_gt for s in sequences):
        summary["metrics"] = score_results(sequences, results)
        summary["metrics"][COMBINED].update(label_free or {})
        atomic_write_json(out_dir / "metrics.json", summary["metrics"])
        if evaluate_source:
            source_model, _ = load_checkpoint(source, map_location=device)
            _, source_metrics = track_and_score(source_model, sequences, tracker_params, None, show_progress)
            atomic_write_json(out_dir / "source_metrics.json", source_metrics)
            summary["source_metrics"] = source_metrics
    atomic_write_json(out_dir / "summary.json", {**summary, "darth_config": config.to_dict()})
    write_adapt_plots(out_dir, METHODS[config.method].title)
    return summary

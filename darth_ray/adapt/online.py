"""The online protocol (DarthConfig.protocol = "online"; README "Protocols"): each target sequence streams once, in
frame order, in batches of `frames_per_batch` frames. Every batch is FIRST tracked with the current model (one
QuasiDenseTracker whose state carries from batch to batch, exactly as tracking the whole sequence does), THEN used
for one step of the method. The tracks made on the way are the results; there is no second pass.

- reset "episodic": the method (student, teacher, optimiser, BN statistics) restarts from the source model at the
  start of every sequence; "continual": it carries on from one sequence to the next, in the dataset's order (sorted
  by name, unless a MOTChallenge seqmap orders them).
- Target BatchNorm statistics (AdaBN, Tent, DarthConfig.target_bn_stats) cannot be estimated on frames not seen
  yet: before each step they become the average over the frames streamed since the method (re)started, so a
  restarted method tracks its first batch with the source statistics.
- One pass: `epochs` and `lr_steps` do not apply; the lr warm-up does (and restarts with the method).
- A step's view randomness is seeded by (seed, the sequence's position, the batch's position), so an episodic run
  gives the same tracks however its sequences are spread over Ray workers.
- Resume: OUT/last.pt holds the finished sequences' tracks (and, continual, the method after the last one); a rerun
  goes on with the next sequence (a sequence stopped halfway starts over).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.loop import claim_adapt_dir, finish_adapt, step_generator, take_step
from darth_ray.adapt.methods import METHODS
from darth_ray.data.mot import Sequence
from darth_ray.data.prefetch import Prefetcher
from darth_ray.data.results import write_results
from darth_ray.eval.track import SequenceTracking, frame_batches, load_frames, result_columns
from darth_ray.io import RESUME_FILE, atomic_torch_save, read_torch_file
from darth_ray.models.qdtrack import load_checkpoint, save_checkpoint
from darth_ray.models.tracker import QuasiDenseTracker

log = logging.getLogger(__name__)


class OnlineRun:
    """config.method streaming over target sequences, one after the other (the online protocol). `results` holds
    the tracks of every finished sequence."""

    def __init__(self, source: Path, config: DarthConfig, tracker_params: dict | None = None, device: str = "cpu"):
        if config.protocol != "online":
            raise ValueError(f"OnlineRun runs the online protocol, not {config.protocol!r} (adapt/loop.py)")
        self.source_model = load_checkpoint(source, map_location=device)[0].to(device)
        self.source_path, self.config, self.device = Path(source), config, device
        self.tracker = QuasiDenseTracker(**(tracker_params or {}))
        self.method, self.scheduler = None, None  # built at the first sequence (episodic: at every one)
        self.method_steps = 0  # steps since the method (re)started: its lr warm-up, its BN statistics
        self.steps = 0  # all steps of the run
        self.results: dict[str, dict[str, np.ndarray]] = {}

    def start_method(self) -> None:
        """The method as built from the source model."""
        self.method = METHODS[self.config.method].from_source(self.source_model, self.config)
        self.method_steps, self.scheduler = 0, None
        if self.method.optimizer:  # one pass is epoch 0 of a never-ending epoch: no lr steps, only the warm-up
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.method.optimizer, lambda s: self.config.lr_factor(s, steps_per_epoch=math.inf))

    def run(self, sequences: list[Sequence], names: set[str] | None = None,
            finished: Callable[[Sequence], None] | None = None, step_log: Callable[[dict], None] | None = None,
            progress: tqdm | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Stream `sequences` in their order (only those in `names`, when given: a Ray worker's shard), skipping
        those already in `results`; `finished(sequence)` after each, `step_log(record)` after every step."""
        for index, sequence in enumerate(sequences):
            if (names is None or sequence.name in names) and sequence.name not in self.results:
                self.results[sequence.name] = self.stream(index, sequence, step_log, progress)
                if finished:
                    finished(sequence)
        return self.results

    def stream(self, index: int, sequence: Sequence, step_log: Callable[[dict], None] | None = None,
               progress: tqdm | None = None) -> dict[str, np.ndarray]:
        """The tracks of `sequence` (the `index`-th of the run), tracking each batch, then adapting on it."""
        if self.method is None or self.config.reset == "episodic":
            self.start_method()
        tracking = SequenceTracking(self.method.model_to_evaluate, sequence, self.tracker)
        batches = frame_batches(sequence.num_frames, self.config.frames_per_batch)
        with Prefetcher(lambda i: load_frames(sequence, batches[i]), self.device, len(batches)) as ahead:
            for position, frame_ids in enumerate(batches):
                frames = ahead.get(position)
                tracking.track(frame_ids, frames)  # first tracked with the model as it is
                record = self.adapt_on(frames, step_generator(self.config.seed, index, position))  # then learnt from
                if step_log:
                    step_log({"step": self.steps, "sequence": sequence.name, "frames": frame_ids, **record})
                if progress is not None:
                    progress.update(len(frame_ids))
        return tracking.result()

    def adapt_on(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One step of the method on `frames`, after updating its target BN statistics when it uses them."""
        if self.method.target_bn_stats:
            self.method.use_target_bn_statistics([frames], restart=self.method_steps == 0)
        self.method_steps += 1
        self.steps += 1
        return take_step(self.method, self.scheduler, frames, generator, self.steps)

    def save_student(self, path: Path) -> Path:
        """The model as the last sequence left it (continual reset), a plain checkpoint `darth-ray track` loads."""
        return save_checkpoint(path, self.method.model_to_evaluate, {
            "darth_config": self.config.to_dict(), "step": self.steps, "source": str(self.source_path)})

    def state_dict(self) -> dict:
        # As tensors: checkpoints are read back with weights_only=True.
        results = {name: {k: torch.from_numpy(v) for k, v in r.items()} for name, r in self.results.items()}
        state = {"results": results, "steps": self.steps, "darth_config": self.config.to_dict(),
                 "source": str(self.source_path)}
        if self.config.reset == "continual" and self.method is not None:  # episodic restarts it anyway
            scheduler = self.scheduler.state_dict() if self.scheduler else None
            state["method"] = {**self.method.state_dict(), "scheduler": scheduler, "method_steps": self.method_steps}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.results = {name: {k: v.numpy() for k, v in r.items()} for name, r in state["results"].items()}
        self.steps = state["steps"]
        if "method" in state:
            self.start_method()
            self.method.load_state_dict(state["method"])
            self.method_steps = state["method"]["method_steps"]
            if self.scheduler:
                self.scheduler.load_state_dict(state["method"]["scheduler"])


def adapt_online(source: Path, target: Path, sequences: list[Sequence], out_dir: Path, config: DarthConfig,
                 split: str | None, tracker_params: dict | None, resume: bool, evaluate_source: bool,
                 show_progress: bool, device: str, images: Path | None, classes: list[str] | None,
                 class_map: dict[str, str] | None) -> dict:
    """`darth-ray adapt --protocol online` (adapt/loop.py's `adapt` with its arguments, `sequences` read from
    `target`). Writes OUT/results/<seq>.txt as each sequence finishes, OUT/last.pt after it, OUT/adapt_log.jsonl
    (one line per step: its sequence, frames and losses), OUT/metrics.json when the sequences have ground truth,
    OUT/summary.json, OUT/plots/, and with continual reset OUT/final.pt (the model after the last sequence)."""
    run = OnlineRun(source, config, tracker_params, device)
    last = out_dir / RESUME_FILE
    if claim_adapt_dir(source, target, out_dir, config, split, resume, images, classes, class_map):
        run.load_state_dict(read_torch_file(last, device))
        log.info("resuming the online %s after %d finished sequences", METHODS[config.method].title,
                 len(run.results))

    def finished(sequence: Sequence) -> None:
        write_results(out_dir / "results" / f"{sequence.name}.txt", *result_columns(run.results[sequence.name]))
        atomic_torch_save(run.state_dict(), last)

    def step_log(record: dict) -> None:
        with open(out_dir / "adapt_log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    done = sum(s.num_frames for s in sequences if s.name in run.results)
    with tqdm(total=sum(s.num_frames for s in sequences), initial=done, unit="frame",
              desc=f"online {METHODS[config.method].title}", disable=not show_progress) as bar:
        results = run.run(sequences, finished=finished, step_log=step_log, progress=bar)
    summary = {"protocol": "online", "reset": config.reset, "steps": run.steps}
    if config.reset == "continual" and run.method is not None:
        summary["final_checkpoint"] = str(run.save_student(out_dir / "final.pt"))
    return finish_adapt(out_dir, summary, sequences, results, config, source, tracker_params, evaluate_source,
                        show_progress, device)

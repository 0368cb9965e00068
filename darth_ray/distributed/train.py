"""DARTH on Ray Train (Train V2): each TorchTrainer worker adapts on its shard of the target frames.

- The steps, checkpoints and evaluations follow `adaptation_loop` (adapt/loop.py), the loop `darth-ray adapt`
  runs; here `RayReporter` hands them to Ray.
- Frames are split with `shard_frames` (contiguous, equal sizes); every worker runs the same number of steps.
- Gradients are averaged across workers by bucketed all-reduces that start during backward
  (`OverlappedAllReduce`), so students, optimisers and therefore EMA teachers stay identical on every rank without
  wrapping the model in DDP (DARTH calls several model methods per step, not one forward).
- Checkpoints (full DARTH state) are reported through `ray.train.report`; with `FailureConfig(max_failures=k)`
  a crashed worker group restarts from the latest one and finishes the remaining steps.
- Evaluation is sharded by whole sequences (`shard_sequences`); per-sequence results are gathered on every rank
  and scored over all sequences, exactly as a single process scores them (per class on COCO-video and Scalabel
  data, as `darth-ray adapt` scores them), and the label-free scores (eval/label_free.py) with them, also on
  targets without ground truth.
- The online protocol (DarthConfig.protocol, adapt/online.py) shards whole sequences instead: see `stream_shard`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.loop import CHECKPOINT_EVERY, ERROR_KEY, adaptation_loop
from darth_ray.eval.label_free import LABEL_FREE_METRICS
from darth_ray.eval.visualize import write_eval_media
from darth_ray.io import dataclass_from_dict

log = logging.getLogger(__name__)

# Every evaluation reports the overall metrics (every class's boxes pooled) and the class means (BDD100K's mHOTA,
# mMOTA, mIDF1); with one class these equal HOTA, MOTA, IDF1, so a Tune metric of either kind always exists.
EVAL_METRICS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW", "mHOTA", "mMOTA", "mIDF1")
# Every evaluation also reports the label-free scores (eval/label_free.py), with or without ground truth.
REPORTED_METRICS = EVAL_METRICS + LABEL_FREE_METRICS
# What Tune may rank trials by (maximised; each has its best_<metric> in every report): HOTA and mHOTA need the
# target's labels ("oracle" selection), the label-free scores do not.
RANKING_METRICS = ("HOTA", "mHOTA") + LABEL_FREE_METRICS
STATE_FILE = "darth_state.pt"
PROGRESS_FILE = "progress.json"  # evaluation results so far (best HOTA survives a restart)
EVALUATED_KEY = "evaluated"  # true in the report of a new evaluation


@dataclass(frozen=True)
class TrainLoopConfig:
    """What a Ray Train worker runs: the DARTH hyperparameters, data and cadence. It crosses to Ray as a nested dict
    (`to_dict`: Tune's param_space, TorchTrainer's train_loop_config) and is rebuilt once, in the worker."""

    source: str                      # source checkpoint
    target: str                      # target dataset root / split directory
    split: str | None = None
    # How the target is read (load_dataset): the image root of the JSON formats, the classes to keep in the model's
    # order, model class -> dataset category. Plain values: they cross to Ray as JSON.
    images: str | None = None
    classes: tuple[str, ...] | None = None
    class_map: dict[str, str] | None = None
    darth: DarthConfig = DarthConfig()
    tracker: dict = field(default_factory=dict)        # QuasiDenseTracker params
    threads_per_worker: int = 1
    checkpoint_every: int = CHECKPOINT_EVERY  # steps; and at every epoch's end
    report_every: int = 1            # steps between metric reports (a barrier; W&B's train/* rows come from them)
    eval_every_epoch: bool = True
    # A checkpoint directory to start from when the run has none of its own: the Tune checkpoint a trial restarted
    # by PBT continues from (a donor's after an exploit); its hyperparameters are this config's. Read from
    # `start_copy` when set: the trial's private copy of it (Tune deletes a donor's older checkpoints as the donor
    # reports new ones, possibly before this run's workers got resources and read it).
    start_from: str | None = None
    start_copy: str | None = None
    final_eval: bool = True          # track + score the adapted student at the end

    def __post_init__(self):
        def text(value) -> bool:
            return isinstance(value, str) and value.strip() != ""

        problems = []
        if not (self.images is None or text(self.images)):
            problems.append(f"images must be a path (str) or None, got {self.images!r}")
        if not (self.classes is None or (isinstance(self.classes, tuple) and self.classes
                                         and all(text(c) for c in self.classes))):
            problems.append(f"classes must be None or a non-empty tuple of names, got {self.classes!r}")
        if not (self.class_map is None or (isinstance(self.class_map, dict) and self.class_map
                                           and all(text(k) and text(v) for k, v in self.class_map.items()))):
            problems.append(f"class_map must be None or a non-empty dict of names, got {self.class_map!r}")
        if problems:
            raise ValueError("invalid TrainLoopConfig: " + "; ".join(problems))

    def load_target(self) -> tuple[list, list[str]]:
        """The target sequences and their class names, read as `darth-ray adapt` reads them."""
        from darth_ray.data.dataset import load_dataset

        return load_dataset(self.target, split=self.split, images=self.images, classes=self.classes,
                            class_map=self.class_map, require_images=True)

    def dataset_options(self) -> dict:
        """The reading options a run depends on (as `darth-ray adapt` records them)."""
        from darth_ray.data.dataset import dataset_options

        return dataset_options(self.images, self.classes, self.class_map)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainLoopConfig":
        return dataclass_from_dict(cls, {**d, "darth": DarthConfig.from_dict(d.get("darth", {}))})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def average_tensors(tensors: list[torch.Tensor]) -> None:
    """In place: every tensor becomes its mean over all workers (one flattened all-reduce)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def _flat_grads(params: list[torch.Tensor]) -> tuple[torch.Tensor, object]:
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    return flat, dist.all_reduce(flat, async_op=True)


def _average_into(params: list[torch.Tensor], launched: tuple[torch.Tensor, object]) -> None:
    flat, work = launched
    work.wait()
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


class OverlappedAllReduce:
    """Averages the gradients of `params` over all workers during every backward pass, as DDP's reducer does.

    Parameters are grouped into buckets of about `bucket_mb`, in reverse order (backward produces the last layers'
    gradients first). When every gradient of a bucket is accumulated, its all-reduce starts asynchronously while
    backward goes on with earlier layers; when backward ends, the remaining buckets start (zero-filled where a
    parameter got no gradient this step) and all are awaited. Buckets start strictly in order, so every rank issues
    the same sequence of collectives. The model's code needs no call: after `backward()` the gradients are averaged.
    """

    def __init__(self, params: list[torch.Tensor], bucket_mb: float = 4.0):
        bucket_bytes = int(bucket_mb * 2 ** 20)
        self.buckets: list[list[torch.Tensor]] = []
        size = 0
        for p in reversed(params):
            if not self.buckets or size + p.numel() * p.element_size() > bucket_bytes:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.launched: list[tuple[torch.Tensor, object]] = []
        self.pending = [len(b) for b in self.buckets]  # per bucket: gradients still to come this backward
        for index, bucket in enumerate(self.buckets):
            for p in bucket:
                p.register_post_accumulate_grad_hook(lambda _p, i=index: self._ready(i))

    def _ready(self, index: int) -> None:
        if not self.launched and self.pending == [len(b) for b in self.buckets]:  # this backward's first gradient
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        self.pending[index] -= 1
        self._launch_ready(force=False)

    def _launch_ready(self, force: bool) -> None:
        while len(self.launched) < len(self.buckets) and (force or self.pending[len(self.launched)] == 0):
            self.launched.append(_flat_grads(self.buckets[len(self.launched)]))

    def _finish(self) -> None:
        self._launch_ready(force=True)
        for bucket, launched in zip(self.buckets, self.launched):
            _average_into(bucket, launched)
        self.launched = []
        self.pending = [len(b) for b in self.buckets]


def ranks_in_sync(model: torch.nn.Module, world: int) -> bool:
    """True when `model` is bit-identical on every rank (compares a hash of its state)."""
    import hashlib

    if world == 1:
        return True
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    hashes = [None] * world
    dist.all_gather_object(hashes, digest.hexdigest())
    return len(set(hashes)) == 1


def evaluate_sharded(model, sequences, tracker_params: dict, rank: int, world: int,
                     reference) -> tuple[dict, dict, dict]:
    """Track this rank's sequences, gather everyone's results, score all sequences (same on every rank): (results,
    scores against the ground truth ({} without any), label-free scores with `reference` as the agreement's)."""
    from darth_ray.data.sharding import frame_counts, shard_sequences
    from darth_ray.eval.label_free import label_free_scores, view_overlaps
    from darth_ray.eval.track import track_sequence
    from darth_ray.models.tracker import QuasiDenseTracker

    names = set(shard_sequences(frame_counts(sequences), world)[rank])
    mine = [s for s in sequences if s.name in names]
    tracker = QuasiDenseTracker(**tracker_params)
    model.eval()
    results = {s.name: track_sequence(model, s, tracker) for s in mine}
    overlaps = [o for part in _gather([view_overlaps(model, reference, s) for s in mine], world) for o in part]
    results, scores = gather_and_score(sequences, results, world)
    return results, scores, label_free_scores(results, overlaps)


def _gather(part, world: int) -> list:
    """Every rank's `part` (a picklable object), in rank order."""
    if world == 1:
        return [part]
    gathered = [None] * world
    dist.all_gather_object(gathered, part)
    return gathered


def gather_and_score(sequences, results: dict, world: int) -> tuple[dict, dict]:
    """Every rank's `results` (per sequence) gathered and scored over all sequences (the same on every rank)."""
    from darth_ray.eval.metrics import score_results

    results = {k: v for part in _gather(results, world) for k, v in part.items()}
    with_gt = [s for s in sequences if s.has_gt]
    return results, (score_results(with_gt, results) if with_gt else {})


def quiet_report_echo() -> None:
    """Ray Train 2.60 echoes every report (`Reporting training result ...`, the whole metrics dict) at INFO through
    a logger named by its file's path, outside `ray.train`, which RunConfig's LoggingConfig sets; Ray's log files
    keep the record."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_func(config: dict) -> str | None:
    """The per-worker loop handed to TorchTrainer. `config` = TrainLoopConfig fields as a dict. Returns the error
    that stopped the run early (a non-finite loss; the Result's `return_value`), None when it ran to the end."""
    import ray.train

    from darth_ray.adapt.loop import AdaptationRun
    from darth_ray.data.sharding import frame_counts, shard_frames
    from darth_ray.eval.metrics import COMBINED

    loop = TrainLoopConfig.from_dict(config)
    quiet_report_echo()
    darth_config = loop.darth
    torch.set_num_threads(loop.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = str(ray.train.torch.get_device()) if torch.cuda.is_available() else "cpu"

    sequences, _ = loop.load_target()
    if darth_config.protocol == "online":
        return stream_shard(loop, sequences, rank, world, device)
    shards = shard_frames(frame_counts(sequences), world)
    steps_per_epoch = max(1, min(len(s) for s in shards) // darth_config.frames_per_batch)
    run = AdaptationRun(Path(loop.source), sequences, shards[rank], darth_config, steps_per_epoch=steps_per_epoch,
                        rank=rank, workers=world, device=device, stats_sync=average_tensors if world > 1 else None)
    if world > 1:
        OverlappedAllReduce(run.method.params)  # its hooks average every backward's gradients
    last_eval = not_evaluated()  # the evaluations so far: none, or a checkpoint's
    start = loop.start_copy or loop.start_from
    checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(start) if start else None)
    resumed_from = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run.load_state_dict(torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=False))
            if (Path(d) / PROGRESS_FILE).is_file():
                last_eval.update(json.loads((Path(d) / PROGRESS_FILE).read_text()))
        resumed_from = run.step
        log.info("rank %d resumed at step %d/%d", rank, run.step, run.total_steps)
    elif run.method.target_bn_stats:
        run.use_target_bn_statistics()

    if checkpoint is not None and run.step == run.total_steps:  # nothing left (PBT restarted it at its last epoch)
        ray.train.report({"step": run.step, "epoch": run.epoch, "resumed_from_step": resumed_from, **last_eval,
                          EVALUATED_KEY: False, "start_from": loop.start_from},
                         checkpoint=checkpoint if rank == 0 else None)
        return None

    def evaluate() -> dict:  # sharded over the workers, the same scores on every rank
        results, scores, label_free = evaluate_sharded(run.method.model_to_evaluate, sequences, loop.tracker, rank,
                                                       world, run.reference_model)
        evaluation = {**(reported_metrics(scores[COMBINED]) if scores else dict.fromkeys(EVAL_METRICS, math.nan)),
                      **label_free}
        return {"metrics": evaluation, "media": functools.partial(write_eval_media, sequences=sequences,
                                                                  results=results, scores=scores, columns=EVAL_METRICS)}

    reporter = RayReporter(rank, world, resumed_from, loop.start_from, last_eval)
    return adaptation_loop(run, reporter, loop.checkpoint_every, loop.report_every, evaluate, loop.eval_every_epoch,
                           loop.final_eval, share_error=lambda error: _shared_error(error, world, device))


class RayReporter:
    """The worker's reporter for `adaptation_loop`: every rank reports (`ray.train.report` is a barrier), rank 0
    with the checkpoint when the loop saves (the full state, the evaluations so far, a new evaluation's video and
    per-sequence table: eval/visualize.py, at the end the adapted student). Every report carries every metric, NaN
    until the first evaluation and then the latest one: Tune's searchers (Optuna) read HOTA from every result, and
    ASHA's milestones fall on evaluated epochs. `evaluated` marks the report of a new evaluation (W&B's eval/* rows)."""

    def __init__(self, rank: int, world: int, resumed_from: int, start_from: str | None, last_eval: dict):
        self.rank, self.world, self.resumed_from, self.start_from = rank, world, resumed_from, start_from
        self.last_eval = last_eval

    def report(self, run, record: dict, save: bool, evaluation: dict | None) -> None:
        if evaluation is not None:
            new = evaluation["metrics"]
            self.last_eval = {**new, **{f"best_{m}": _best(self.last_eval[f"best_{m}"], new[m])
                                        for m in RANKING_METRICS}}
        metrics = {"step": run.step, "epoch": run.epoch, "resumed_from_step": self.resumed_from, **record,
                   **self.last_eval}
        if ERROR_KEY not in record:
            metrics.update({EVALUATED_KEY: evaluation is not None, "start_from": self.start_from})
            if run.step == run.total_steps:
                metrics["ranks_in_sync"] = ranks_in_sync(run.method.model_to_evaluate, self.world)
        media = evaluation["media"] if evaluation is not None else None
        _report(run, metrics, self.last_eval, save and self.rank == 0, final=run.step == run.total_steps, media=media)


def not_evaluated() -> dict:
    """Every evaluation metric (and best_ ranking metric) as NaN: a report's before the first evaluation."""
    return {k: math.nan for k in REPORTED_METRICS + tuple(f"best_{m}" for m in RANKING_METRICS)}


def check_online_workers(darth: dict, workers: int) -> None:
    """Refuses the online protocol with continual reset on several workers (`darth`: DarthConfig.to_dict()): it
    carries one method through all sequences in order, which sharded sequences cannot do."""
    if darth.get("protocol") == "online" and darth.get("reset") == "continual" and workers > 1:
        raise ValueError(f"the online protocol with continual reset streams every sequence through one model, in "
                         f"order: it runs on 1 worker, not {workers} (episodic reset shards sequences over workers)")


def stream_shard(loop: TrainLoopConfig, sequences: list, rank: int, world: int, device: str) -> str | None:
    """The online protocol on a worker (adapt/online.py): it streams its share of whole sequences
    (`shard_sequences`) with a method of its own. No gradient averaging: online, a model adapts on the frames it
    has just tracked; averaging in gradients of other workers' sequences would adapt it on frames it never saw. With
    episodic reset every sequence's tracks are those one process makes; continual reset needs one worker
    (`check_online_workers`). One report at the end, with the evaluation of every sequence's online tracks and rank
    0's checkpoint of it (PROGRESS_FILE; with continual reset also final.pt, the model after the last sequence; Ray
    Train keeps a result's metrics with its checkpoint). A restarted worker group streams again from the start.
    Returns the error of a non-finite loss, else None."""
    import ray.train

    from darth_ray.adapt.online import OnlineRun
    from darth_ray.data.sharding import frame_counts, shard_sequences
    from darth_ray.eval.metrics import COMBINED

    check_online_workers(loop.darth.to_dict(), world)
    run = OnlineRun(Path(loop.source), loop.darth, loop.tracker, device)
    started, error = time.perf_counter(), None
    try:
        run.run(sequences, names=set(shard_sequences(frame_counts(sequences), world)[rank]))
    except FloatingPointError as e:
        error = str(e)
    error = _shared_error(error, world, device)
    report = {"step": run.steps, "epoch": 1, "resumed_from_step": 0, **not_evaluated(), EVALUATED_KEY: False,
              "start_from": None}
    if error:
        ray.train.report({**report, ERROR_KEY: error})
        return error
    results, scores = gather_and_score(sequences, run.results, world)
    report["adapt_frames_per_s"] = sum(s.num_frames for s in sequences) / (time.perf_counter() - started)
    if scores:
        evaluation = reported_metrics(scores[COMBINED])
        # online tracks get no label-free scores (the model changes while it tracks): they stay NaN
        report.update({**evaluation, **{f"best_{m}": evaluation[m] for m in RANKING_METRICS if m in evaluation},
                       EVALUATED_KEY: True})
    if rank != 0:
        ray.train.report(report)
        return None
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / PROGRESS_FILE).write_text(json.dumps({k: report[k] for k in not_evaluated()}))
        if scores:
            write_eval_media(Path(d), sequences, results, scores, EVAL_METRICS)
        if loop.darth.reset == "continual":
            run.save_student(Path(d) / "final.pt")
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
    return None


def reported_metrics(combined: dict) -> dict:
    """EVAL_METRICS of a COMBINED score row. A MOTChallenge row has no class means: its one class's values are
    the overall ones."""
    from darth_ray.eval.metrics import CLASS_MEANS

    return {k: combined[k] if k in combined else combined[CLASS_MEANS[k]] for k in EVAL_METRICS}


def _best(best: float, value: float) -> float:
    return value if math.isnan(best) else max(best, value)


def _shared_error(error: str | None, world: int, device: str) -> str | None:
    """Every rank's error joined, on every rank; None when no rank had one."""
    if world > 1:
        failed = torch.tensor([float(error is not None)], device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            errors = [None] * world
            dist.all_gather_object(errors, error and f"rank {dist.get_rank()}: {error}")
            error = "; ".join(e for e in errors if e)
    return error


def _report(run, metrics: dict, evaluation: dict, with_checkpoint: bool, final: bool, media=None) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint (DARTH state + `evaluation`, `media(folder)`'s
    files of a new evaluation: eval/visualize.py write_eval_media), and at the end the adapted student."""
    import ray.train
    from ray.train import Checkpoint

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        run.save(Path(d) / STATE_FILE)
        (Path(d) / PROGRESS_FILE).write_text(json.dumps(evaluation))
        if media is not None:
            media(Path(d))
        if final:
            run.save_student(Path(d) / "final.pt")
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

"""Frames off the critical path: batch i + 1 .. i + depth are decoded (and resized) in background threads while
batch i computes; on CUDA they are pinned in the thread and copied with non_blocking=True.

Batches are asked for by index and `load(index)` is a pure function of it (AdaptationRun.batch_frames, a
sequence's frame batches), so prefetching never changes which frames a step sees: asking for an index that is not
in flight (the first step, a resume, a jump) loads it now and restarts read-ahead from there.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch import Tensor


class Prefetcher:
    """`get(i)` returns `load(i)` on `device`, having started `load(i + 1) .. load(i + depth)` (below `count`)."""

    def __init__(self, load: Callable[[int], Tensor], device: str | torch.device, count: int,
                 depth: int = 2, workers: int = 2):
        self.load, self.device, self.count, self.depth = load, torch.device(device), count, depth
        self.pin = self.device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frames")
        self.pending: dict[int, Future] = {}

    def get(self, index: int) -> Tensor:
        future = self.pending.pop(index, None)
        for stale in [i for i in self.pending if not index < i <= index + self.depth]:
            self.pending.pop(stale).cancel()
        for ahead in range(index + 1, min(index + 1 + self.depth, self.count)):
            if ahead not in self.pending:
                self.pending[ahead] = self.pool.submit(self._host_batch, ahead)
        batch = future.result() if future is not None else self._host_batch(index)
        return batch.to(self.device, non_blocking=self.pin)

    def _host_batch(self, index: int) -> Tensor:
        batch = self.load(index)
        return batch.pin_memory() if self.pin else batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Split sequences across Ray workers, balanced by frame count, deterministic, every frame in exactly one shard.

Two granularities:
- `shard_sequences`: whole sequences (tracking and evaluation need a sequence's frames in order on one worker).
  Longest-processing-time-first: largest sequence to the lightest shard, ties broken by position.
- `shard_frames`: contiguous runs of frames, equal in size up to one frame (adaptation steps are per frame, and
  data-parallel workers must run the same number of steps).
"""
from __future__ import annotations

from typing import Sequence as Seq


def shard_sequences(frame_counts: dict[str, int], num_shards: int) -> list[list[str]]:
    """Assign each named sequence to one of `num_shards` shards; each shard's names keep the input order."""
    _check(num_shards)
    loads = [0] * num_shards
    assigned: list[list[str]] = [[] for _ in range(num_shards)]
    order = sorted(range(len(frame_counts)), key=lambda i: -list(frame_counts.values())[i])
    names = list(frame_counts)
    for i in order:
        shard = min(range(num_shards), key=lambda s: (loads[s], s))
        loads[shard] += frame_counts[names[i]]
        assigned[shard].append(names[i])
    position = {name: i for i, name in enumerate(names)}
    return [sorted(shard, key=position.__getitem__) for shard in assigned]


def shard_frames(frame_counts: dict[str, int], num_shards: int) -> list[list[tuple[str, int]]]:
    """Split the concatenated (sequence, frame) list into `num_shards` contiguous runs of near-equal length."""
    _check(num_shards)
    frames = [(name, f) for name, n in frame_counts.items() for f in range(1, n + 1)]
    base, extra = divmod(len(frames), num_shards)
    shards, start = [], 0
    for s in range(num_shards):
        size = base + (1 if s < extra else 0)
        shards.append(frames[start:start + size])
        start += size
    return shards


def _check(num_shards: int) -> None:
    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")


def frame_counts(sequences: Seq) -> dict[str, int]:
    """{name: number of frames} for a list of data.mot.Sequence."""
    return {seq.name: seq.num_frames for seq in sequences}

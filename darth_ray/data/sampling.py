"""Key/reference frame pairs for QDTrack training: the reference frame is drawn within +-`frame_range` frames
of the key frame in the same sequence (mmtrack's `frame_range=10`), never the key frame itself when the
sequence has another frame."""
from __future__ import annotations

import numpy as np


def sample_frame_pairs(frame_counts: dict[str, int], frame_range: int = 10, seed: int = 0,
                       shuffle: bool = True) -> list[tuple[str, int, int]]:
    """One (sequence, key_frame, ref_frame) per frame of every sequence; frames are 1-based."""
    if frame_range < 1:
        raise ValueError(f"frame_range must be >= 1, got {frame_range}")
    rng = np.random.default_rng(seed)
    pairs = []
    for name, n in frame_counts.items():
        if n < 1:
            raise ValueError(f"sequence {name!r} has no frames")
        for key in range(1, n + 1):
            lo, hi = max(1, key - frame_range), min(n, key + frame_range)
            candidates = [f for f in range(lo, hi + 1) if f != key] or [key]
            pairs.append((name, key, int(candidates[rng.integers(len(candidates))])))
    if shuffle:
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return pairs

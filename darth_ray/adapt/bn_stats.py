"""Target BatchNorm statistics (AdaBN, Li et al. 2016): before DARTH adapts, every BatchNorm's running mean and
variance are re-estimated on the unlabeled target frames; BN then stays frozen during adaptation, as published.

Why: a backbone whose BN statistics were learned on the source domain (the embedded `small` model; mmdet's R50
keeps its ImageNet statistics) normalises dark, foggy or noisy target features with source-domain moments. The
mismatch alone suppresses most detections, and with them the teacher's pseudo-boxes that DARTH learns from.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def estimate_bn_statistics(model: nn.Module, batches: Iterable[Tensor],
                           all_reduce_mean: Callable[[list[Tensor]], None] | None = None, restart: bool = True) -> int:
    """Replace the running statistics of every BatchNorm in `model` by their average over the feature extractor's
    passes on `batches` (uint8/float RGB frames [B, 3, H, W]), PyTorch's cumulative BN average. Returns the frames
    seen. `restart=False` goes on with the average of the batches passed since the last restart (the online protocol
    streams its frames in one batch at a time).

    `all_reduce_mean(tensors)` (optional, in place) averages across data-parallel workers, each of which passes
    its own shard; workers then hold identical statistics (exact for equal shard sizes).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.training, m.momentum) for m in bns]
    for m in bns:
        if restart:
            m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches instead of an exponential one
        m.train()
    seen = 0
    try:
        for frames in batches:
            model.features(model.normalize(frames.float()))
            seen += len(frames)
    finally:
        for m, (training, momentum) in zip(bns, saved):
            m.train(training)
            m.momentum = momentum
    if seen == 0:
        raise ValueError("no target frames to estimate BatchNorm statistics on")
    if all_reduce_mean is not None:
        # var_all = mean(var_i + mean_i^2) - mean_all^2: the pooled variance of equally sized shards.
        second = [m.running_var + m.running_mean ** 2 for m in bns]
        means = [m.running_mean for m in bns]
        all_reduce_mean(means + second)
        for m, s in zip(bns, second):
            m.running_var.copy_(s - m.running_mean ** 2)
    return seen

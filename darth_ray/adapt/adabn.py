"""AdaBN (Li et al. 2016; "NORM" in test-time adaptation papers): every BatchNorm's running statistics are
re-estimated on the target frames before the first step (adapt/bn_stats.py), then nothing else changes.
"""
from __future__ import annotations

from darth_ray.adapt.source_only import SourceOnly


class AdaBN(SourceOnly):
    title = "AdaBN"

    @property
    def target_bn_stats(self) -> bool:
        return True

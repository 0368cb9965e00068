"""Source only: the source model tracks the target unchanged (the lower bound every method is compared with).

Steps change nothing and cost nothing: no views, no forward, no optimiser; the loop loads no frames for them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from darth_ray.adapt.method import Method


class SourceOnly(Method):
    title = "source model"
    learns = False

    @property
    def target_bn_stats(self) -> bool:
        return False  # the source model as it is, whatever DarthConfig.target_bn_stats says (that is AdaBN)

    def select_parameters(self) -> list[Tensor]:
        return []

    def step(self, frames: Tensor | None, generator: torch.Generator) -> dict[str, float]:
        return {}

"""Mixed precision for DARTH (DarthConfig.amp): autocast for the network forwards, float32 everywhere else.

- ``off``: float32 throughout (the default: results as published, on every device).
- ``bf16``: the convolutions and linear layers run in bfloat16 under ``torch.autocast``; no gradient scaler is
  needed (bfloat16 has float32's range). Runs on CUDA (Ampere or newer) and on the CPU.
- ``fp16``: float16 autocast with a gradient scaler; CUDA only.

What stays float32 under autocast: every output of the network's modules (FPN features, RPN, box and embedding
heads are cast back by forward hooks, see ``float32_outputs``), so anchors, RoI boxes, box decoding, NMS and
pseudo-labels are computed on float32 boxes (bfloat16 spaces representable coordinates 8 px apart at 1088 px);
the losses (elementwise on those outputs; the track losses' matmuls run with autocast off) and the EMA teacher
update (on float32 parameters).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# QDTrack's modules whose outputs leave the network (features, heads): cast back to float32 after each forward.
_OUTPUT_MODULES = ("fpn", "rpn", "box_head", "embed_head")


class MixedPrecision:
    """Autocast, gradient scaling and the optimiser step for one `amp` mode on one device."""

    def __init__(self, amp: str, device: str | torch.device):
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        self.device_type = torch.device(device).type
        if amp == "fp16" and self.device_type != "cuda":
            raise ValueError(f"amp fp16 needs a CUDA device (its gradient scaler), not {device}; use bf16 or off")
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None

    @property
    def enabled(self) -> bool:
        return self.amp != "off"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the forwards (a no-op context with amp off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.amp])

    def float32(self) -> contextlib.AbstractContextManager:
        """Autocast off inside an autocast region: losses with matmuls stay float32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true scale (before clipping); call after any gradient averaging."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); with fp16, skipped when a gradient overflowed, and the loss scale adapted."""
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler and state:
            self.scaler.load_state_dict(state)


def float32_outputs(model: nn.Module) -> nn.Module:
    """Forward hooks on QDTrack's feature and head modules that return their floating outputs as float32 (a
    no-op without autocast). Hooks live in the modules, so a deep copy (the EMA teacher) has them too."""
    for name in _OUTPUT_MODULES:
        getattr(model, name).register_forward_hook(_outputs_to_float32)
    return model


def _outputs_to_float32(_module: nn.Module, _inputs, output):
    return _to_float32(output)


def _to_float32(x):
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return type(x)((k, _to_float32(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x

"""Mixed precision (DarthConfig.amp): bf16 autocast on the CPU against float32, float32 losses and EMA, checks."""
import pytest
import torch

from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.darth import Darth
from darth_ray.models.qdtrack import load_checkpoint
from test_adapt_loop import crafted_pseudo_labels, frames_of

# Stated tolerance of a bf16 step's losses against float32 (bfloat16 keeps 8 bits of mantissa; measured on the
# tiny model over 3 steps: at most 2.4% on the RoI consistency loss, under 1% on the others).
LOSS_RTOL, LOSS_ATOL = 0.05, 1e-5


def run_steps(tiny, amp: str, steps: int = 3, channels_last: bool = False) -> tuple[Darth, list[dict]]:
    source, _ = load_checkpoint(tiny / "source.pt")
    darth = Darth.from_source(source, DarthConfig(amp=amp, channels_last=channels_last))
    frames = frames_of(tiny)
    return darth, [darth.step(frames, torch.Generator().manual_seed(s)) for s in range(steps)]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bf16_step_losses_stay_close_to_float32_and_finite(tiny, monkeypatch, channels_last):
    monkeypatch.setattr(Darth, "pseudo_labels", crafted_pseudo_labels)
    _, exact = run_steps(tiny, "off")
    darth, mixed = run_steps(tiny, "bf16", channels_last=channels_last)
    for step, (a, b) in enumerate(zip(exact, mixed)):
        assert b["loss_contrastive"] > 0  # the patch-contrastive branch ran
        for name in a:
            assert abs(a[name] - b[name]) <= LOSS_ATOL + LOSS_RTOL * abs(a[name]), (step, name, a[name], b[name])
    # EMA, optimiser and weights stay float32 and finite
    for model in (darth.student, darth.teacher):
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                assert tensor.dtype == torch.float32, name
                assert torch.isfinite(tensor).all(), name


def test_losses_and_network_outputs_are_float32_under_bf16_autocast(tiny, monkeypatch):
    monkeypatch.setattr(Darth, "pseudo_labels", crafted_pseudo_labels)
    source, _ = load_checkpoint(tiny / "source.pt")
    darth = Darth.from_source(source, DarthConfig(amp="bf16"))
    with darth.precision.autocast():
        losses = darth.losses(frames_of(tiny), torch.Generator().manual_seed(0))
        feats = darth.teacher.features(darth.teacher.normalize(frames_of(tiny)))
        logits, deltas = darth.teacher.rpn_head(feats)
        # autocast really is on: a bare conv runs in bfloat16
        assert darth.teacher.backbone.conv1(torch.zeros(1, 3, 32, 32)).dtype == torch.bfloat16
    assert {v.dtype for v in losses.values()} == {torch.float32}
    assert {t.dtype for t in feats + logits + deltas} == {torch.float32}  # anchors and boxes get float32


def test_amp_settings_are_checked():
    with pytest.raises(ValueError, match="amp must be one of off, bf16, fp16"):
        DarthConfig(amp="fp8")
    assert DarthConfig().amp == "off"


def test_fp16_needs_cuda(tiny):
    source, _ = load_checkpoint(tiny / "source.pt")
    with pytest.raises(ValueError, match="amp fp16 needs a CUDA device"):
        Darth.from_source(source, DarthConfig(amp="fp16"))


def test_channels_last_steps_like_the_default_layout_and_keeps_it(tiny, monkeypatch):
    """DarthConfig.channels_last changes the memory layout only: the same losses and weights up to float rounding
    (convolution kernels differ per layout), every 4-d weight of student and EMA teacher NHWC, before and after steps,
    and the state dict loads into a default-layout model."""
    monkeypatch.setattr(Darth, "pseudo_labels", crafted_pseudo_labels)
    source, _ = load_checkpoint(tiny / "source.pt")
    plain, nhwc = (Darth.from_source(source, DarthConfig(channels_last=flag)) for flag in (False, True))
    frames = frames_of(tiny)
    for step in range(2):
        a, b = (d.step(frames, torch.Generator().manual_seed(step)) for d in (plain, nhwc))
        assert b["loss_contrastive"] > 0
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), (step, name)
    for model in (nhwc.student, nhwc.teacher):
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert not plain.student.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for name, tensor in nhwc.student.state_dict().items():
        torch.testing.assert_close(tensor, plain.student.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)
    plain.student.load_state_dict(nhwc.student.state_dict())  # checkpoints do not depend on the layout

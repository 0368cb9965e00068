"""Target BatchNorm statistics: the estimate itself, pooling across workers, and its place in the DARTH loop."""
import pytest
import torch
from torch import nn

from darth_ray.adapt.bn_stats import estimate_bn_statistics
from darth_ray.adapt.config import DarthConfig
from darth_ray.adapt.loop import AdaptationRun
from darth_ray.data.mot import load_sequences


class InputNorm(nn.Module):
    """The smallest model with QDTrack's `normalize` / `features` interface: one BN on the input."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3, momentum=0.3)

    def normalize(self, x):
        return x / 255.0

    def features(self, x):
        return [self.bn(x)]


def channel_stats(x):
    x = (x / 255.0).transpose(0, 1).reshape(3, -1)
    return x.mean(1), x.var(1)


def test_statistics_are_the_target_moments_and_modes_are_restored():
    model = InputNorm().eval()
    frames = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8)
    seen = estimate_bn_statistics(model, [frames[:2], frames[2:]])
    assert seen == 4
    mean, _ = channel_stats(frames)
    torch.testing.assert_close(model.bn.running_mean, mean)
    # the cumulative average of the two batches' variances, not the exponential one (momentum 0.3)
    expected_var = (channel_stats(frames[:2])[1] + channel_stats(frames[2:])[1]) / 2
    torch.testing.assert_close(model.bn.running_var, expected_var)
    assert not model.bn.training and model.bn.momentum == 0.3


def test_workers_pool_their_shards():
    shards = [torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8),
              torch.randint(60, 200, (2, 3, 16, 16), dtype=torch.uint8)]
    other = InputNorm()
    estimate_bn_statistics(other, [shards[1]])
    other_stats = [other.bn.running_mean.clone(), other.bn.running_var + other.bn.running_mean ** 2]

    def all_reduce_mean(tensors):  # this worker's [mean, E[x^2]] averaged with the other worker's
        for t, o in zip(tensors, other_stats):
            t.copy_((t + o) / 2)

    model = InputNorm()
    estimate_bn_statistics(model, [shards[0]], all_reduce_mean)
    mean, var = channel_stats(torch.cat(shards))
    torch.testing.assert_close(model.bn.running_mean, mean)
    torch.testing.assert_close(model.bn.running_var, var, rtol=1e-2, atol=1e-4)  # biased vs unbiased terms


def test_no_frames_is_an_error():
    with pytest.raises(ValueError, match="no target frames"):
        estimate_bn_statistics(InputNorm(), [])


def test_adaptation_starts_from_target_statistics_once(tiny, tmp_path):
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    run = AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(epochs=1, target_bn_stats=True))
    bn = run.method.student.backbone.bn1
    source_mean = bn.running_mean.clone()
    run.run_step()  # a step never estimates statistics as a side effect
    assert torch.equal(bn.running_mean, source_mean)
    run = AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(epochs=1, target_bn_stats=True))
    bn = run.method.student.backbone.bn1
    assert run.use_target_bn_statistics() == len(frames)
    run.run_step()
    first = bn.running_mean.clone()
    assert not torch.allclose(first, source_mean)
    # the stem sees normalised frames only, so its statistics are those of the target frames through conv1
    stacked = run.load_frames(frames).float()
    with torch.no_grad():
        stem = run.method.student.backbone.conv1(run.method.student.normalize(stacked))
    torch.testing.assert_close(first, stem.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    teacher = run.method.teacher.state_dict()
    for name, value in run.method.student.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(teacher[name], value, msg=name)  # BN frozen: EMA keeps them equal
    run.run_step()
    assert torch.equal(bn.running_mean, first)  # estimated once, frozen while adapting
    run.save(tmp_path / "state.pt")
    resumed = AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(epochs=1, target_bn_stats=True))
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    resumed.run_step()
    assert torch.equal(resumed.method.student.backbone.bn1.running_mean, first)


def test_off_by_default_keeps_source_statistics(tiny):
    sequences = load_sequences(tiny / "bench" / "night", split="val")
    frames = [(s.name, f) for s in sequences for f in range(1, s.num_frames + 1)]
    run = AdaptationRun(tiny / "source.pt", sequences, frames, DarthConfig(epochs=1))
    before = run.method.student.backbone.bn1.running_mean.clone()
    run.run_step()
    assert torch.equal(run.method.student.backbone.bn1.running_mean, before)


def test_adapt_estimates_target_statistics_before_its_first_step_only(tiny, tmp_path, monkeypatch):
    from darth_ray.adapt.loop import adapt

    calls = []
    estimate, step = AdaptationRun.use_target_bn_statistics, AdaptationRun.run_step
    monkeypatch.setattr(AdaptationRun, "use_target_bn_statistics", lambda run: calls.append("bn") or estimate(run))
    monkeypatch.setattr(AdaptationRun, "run_step", lambda run: calls.append("step") or step(run))
    config = DarthConfig(epochs=1, target_bn_stats=True)
    for _ in range(2):  # the second call resumes the finished run: statistics come from its checkpoint
        adapt(tiny / "source.pt", tiny / "bench" / "night", tmp_path / "out", config, split="val",
              show_progress=False)
    assert calls == ["bn"] + ["step"] * 6  # called by the loop before the first step, not inside it

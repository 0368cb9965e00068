"""--device on every command that runs a model, and --amp checked before any work."""
import torch

from darth_ray.cli import main
from darth_ray.models.qdtrack import load_checkpoint
from test_outputs import adapt_argv, error_line, train_source_argv


def test_train_source_device(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(train_source_argv(tiny, tmp_path / "gpu", "source", "--device", "cuda")) == 2
    assert "--device: cuda: CUDA is not available" in error_line(capsys)
    assert not (tmp_path / "gpu").exists()
    assert main(train_source_argv(tiny, tmp_path / "auto", "source", "--device", "auto")) == 0  # auto: cpu here
    model, state = load_checkpoint(tmp_path / "auto" / "final.pt")
    assert state["step"] == 1 and next(model.parameters()).device.type == "cpu"


def test_adapt_amp_fp16_without_cuda_is_one_line(tiny, tmp_path, capsys):
    assert main(adapt_argv(tiny, tmp_path / "fp16", "--device", "cpu", "--amp", "fp16")) == 2
    assert "amp fp16 needs a CUDA device" in error_line(capsys)
    assert main(adapt_argv(tiny, tmp_path / "fp8", "--amp", "fp8")) == 2
    assert "amp must be one of off, bf16, fp16, got 'fp8'" in error_line(capsys)

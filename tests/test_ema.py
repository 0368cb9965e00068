import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from darth_ray.adapt.ema import ema_update, make_teacher


def _tiny() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


def _set(module: nn.Sequential, weight, bias, bn_weight, bn_bias, mean, var, batches) -> None:
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([weight]))
        module[0].bias.fill_(bias)
        module[1].weight.fill_(bn_weight)
        module[1].bias.fill_(bn_bias)
        module[1].running_mean.fill_(mean)
        module[1].running_var.fill_(var)
        module[1].num_batches_tracked.fill_(batches)


def test_make_teacher_is_a_frozen_eval_copy():
    student = _tiny().train()
    teacher = make_teacher(student)
    assert not teacher.training and not teacher[1].training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert student.training
    assert teacher[0].weight.data_ptr() != student[0].weight.data_ptr()
    assert torch.equal(teacher[0].weight, student[0].weight)


def test_ema_update_hand_computed():
    student = _tiny()
    teacher = make_teacher(student)
    _set(teacher, [1.0, 2.0], 0.0, 1.0, 0.0, mean=0.0, var=1.0, batches=3)
    _set(student, [3.0, 6.0], 4.0, 5.0, -4.0, mean=4.0, var=5.0, batches=7)
    ema_update(teacher, student, momentum=0.25)
    # teacher = 0.75 * teacher + 0.25 * student
    assert teacher[0].weight.tolist() == [[1.5, 3.0]]
    assert teacher[0].bias.item() == 1.0
    assert teacher[1].weight.item() == 2.0 and teacher[1].bias.item() == -1.0
    assert teacher[1].running_mean.item() == 1.0
    assert teacher[1].running_var.item() == 2.0
    assert teacher[1].num_batches_tracked.item() == 7  # integer buffers are copied
    assert teacher[1].num_batches_tracked.dtype == torch.long
    assert all(not p.requires_grad for p in teacher.parameters())
    # the student is unchanged
    assert student[0].weight.tolist() == [[3.0, 6.0]] and student[1].running_var.item() == 5.0


def test_ema_update_twice_compounds():
    student = _tiny()
    teacher = make_teacher(student)
    _set(teacher, [0.0, 0.0], 0.0, 0.0, 0.0, 0.0, 1.0, 0)
    _set(student, [8.0, 8.0], 8.0, 8.0, 8.0, 8.0, 1.0, 0)
    ema_update(teacher, student, 0.5)
    ema_update(teacher, student, 0.5)
    assert teacher[0].weight.tolist() == [[6.0, 6.0]]  # 0 -> 4 -> 6


def test_ema_update_unwraps_ddp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        student = _tiny()
        teacher = make_teacher(student)
        _set(teacher, [1.0, 2.0], 0.0, 1.0, 0.0, 0.0, 1.0, 0)
        _set(student, [3.0, 6.0], 4.0, 5.0, -4.0, 4.0, 5.0, 7)
        wrapped = DistributedDataParallel(student)
        ema_update(teacher, wrapped, momentum=0.25)
        assert teacher[0].weight.tolist() == [[1.5, 3.0]]
        assert teacher[1].running_mean.item() == 1.0
        assert not any(name.startswith("module.") for name, _ in make_teacher(wrapped).named_parameters())
    finally:
        dist.destroy_process_group()


def test_ema_update_rejects_different_models():
    with pytest.raises(ValueError, match="differ"):
        ema_update(_tiny(), nn.Sequential(nn.Linear(2, 1)), 0.1)

"""FLOP accounting against a hand count."""
import pytest
import torch
from torch import nn

from common.flops import backward_flops_per_image, forward_flops_per_image
from student_trainer.engine.accounting import WorkCounters, compute_flops, kd_flops
from student_trainer.engine.distiller import StepOutput


def _tiny():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_forward_and_backward_flops_match_a_hand_count():
    conv = 2 * (4 * 8 * 8) * (1 * 3 * 3)      # 2 FLOPs per multiply-add, per output value
    linear = 2 * (4 * 8 * 8) * 10
    assert forward_flops_per_image(_tiny(), (1, 8, 8)) == conv + linear
    # backward: conv weight grad (its input needs no grad), linear input grad and weight grad
    assert backward_flops_per_image(_tiny(), (1, 8, 8)) == conv + 2 * linear


def test_backward_measurement_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backward_flops_per_image(model, (1, 8, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_step_costs_add_up_to_the_papers_formula():
    ft, fs, bs, n, k = 100.0, 10.0, 17.0, 64, 48
    unix, kd = WorkCounters(), WorkCounters()
    for _ in range(3):
        unix.add(n, StepOutput(torch.zeros(()), {}, n + k, k, k))
        kd.add(n, StepOutput(torch.zeros(()), {}, n, n, n))
    assert compute_flops(unix, ft, fs, bs) == 3 * (k * ft + (n + k) * fs + k * bs)
    assert kd_flops(unix, ft, fs, bs) == compute_flops(kd, ft, fs, bs) == 3 * n * (ft + fs + bs)
    assert compute_flops(unix, ft, fs, bs) / kd_flops(unix, ft, fs, bs) == pytest.approx(
        (48 * 100 + 112 * 10 + 48 * 17) / (64 * 127))

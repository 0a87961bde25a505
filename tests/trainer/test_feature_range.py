"""The customized target's range: the student's output activation is found by running it, not by name."""

import math

import pytest
import torch
from torch import nn

from customkd.trainer.feature_range import activation_range, output_activation, unreachable
from customkd.trainer.students import create_student


@pytest.mark.parametrize(("name", "activation", "low", "high"), [
    ("mobilenetv3_large_100", nn.Hardswish, -0.375, math.inf),  # pooled → conv_head → Hardswish
    ("tf_efficientnet_lite0", nn.ReLU6, 0.0, 6.0),  # BatchNormAct(ReLU6) → pool
    ("resnet18", nn.ReLU, 0.0, math.inf),
    ("test_vit", nn.Identity, -math.inf, math.inf),  # a LayerNorm ends the path: unbounded
])
def test_output_activation_and_range(name, activation, low, high):
    student = create_student(name, 3, 32 if "vit" not in name else 160)
    found = output_activation(student.features, student, 32 if "vit" not in name else 160)
    assert type(found) is activation
    assert getattr(found, "inplace", False) is False  # it acts on θ^h_t's output, which autograd needs
    assert activation_range(found) == pytest.approx((low, high), abs=1e-4)
    with torch.no_grad():
        size = 32 if "vit" not in name else 160
        f_s = student.features(torch.randn(4, 3, size, size))
    assert float(f_s.min()) >= low - 1e-5 and float(f_s.max()) <= high + 1e-5


def test_unreachable_is_the_mse_part_outside_the_range():
    target = torch.tensor([[-1.375, 0.0, 7.0, 2.0]])
    # below -0.375 by 1, above 6 by 1: (1² + 0 + 1² + 0) / 4
    assert unreachable(target, -0.375, 6.0).tolist() == pytest.approx([0.5])
    assert unreachable(target, -math.inf, math.inf).tolist() == [0.0]

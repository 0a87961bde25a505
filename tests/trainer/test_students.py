"""The student's task head starts small, so the first cross-entropy is ≈ ln C (docs/tuning.md §1)."""

import math

import torch
import torch.nn.functional as F

from tests.conftest import TINY_STUDENT
from trainer.students import create_student


def test_task_head_starts_small_and_first_loss_is_near_ln_c():
    torch.manual_seed(0)
    student = create_student(TINY_STUDENT, num_classes=4, image_size=32)
    assert student.head.weight.std() < 0.02 and student.head.bias.abs().max() == 0
    student.eval()
    with torch.no_grad():
        _, logits = student(torch.randn(16, 3, 32, 32))
    loss = F.cross_entropy(logits, torch.randint(0, 4, (16,)))
    assert abs(float(loss) - math.log(4)) < 0.1

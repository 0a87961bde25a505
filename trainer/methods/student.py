"""``student``: the student alone, no teacher. L = CE(θ^c_s(f_s), y) on labeled samples."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.methods.base import Method, StepInputs, task_loss


@dataclass(frozen=True)
class StudentParams:
    """No settings: the task loss has no weight of its own."""


class StudentOnly(Method):
    uses_teacher = False
    params: StudentParams

    def forward(self, step: StepInputs) -> dict:
        task = task_loss(step.logits, step.labels, step.counts)
        return {"loss": task, "task": task}

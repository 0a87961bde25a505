"""``student``: the student alone, no teacher. L = CE(θ^c_s(f_s), y) on labeled samples."""

from __future__ import annotations

from trainer.methods.base import Method, StepInputs, task_loss


class StudentOnly(Method):
    uses_teacher = False

    def forward(self, step: StepInputs) -> dict:
        task = task_loss(step.logits, step.labels, step.counts)
        return {"loss": task, "task": task}

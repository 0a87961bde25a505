"""``fitnet``: FitNets (Romero et al., ICLR 2015) on the pooled feature — the task-general term only.

L = L_task + λ_g · MSE(P_s(f_s), f_t), with P_s a learnable linear projector d_s → D.
"""

from __future__ import annotations

from torch import nn

from trainer.methods.base import Method, MethodContext, StepInputs, feature_mse, task_loss


class FitNet(Method):
    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.projector = nn.Linear(ctx.student_dim, ctx.teacher_dim)

    def forward(self, step: StepInputs) -> dict:
        task = task_loss(step.logits, step.labels, step.counts)
        general = feature_mse(self.projector(step.student_features), step.teacher_features, step.counts)
        return {"loss": task + self.ctx.config.lambda_general * general, "task": task, "general": general}

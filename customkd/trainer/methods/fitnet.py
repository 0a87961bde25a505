"""``fitnet``: FitNets (Romero et al., ICLR 2015) on the pooled feature — the task-general term only.

L = L_task + λ_g · MSE(P_s(f_s), f_t), with P_s a learnable linear projector d_s → D. ``kd+fitnet`` adds the
registered KD term (:func:`trainer.methods.kd.kd_term`): logits and raw teacher features together, without the
customized (task-specific) term, the control for CustomKD.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from customkd.trainer.methods.base import Method, MethodDims, StepInputs, Term, feature_mse, task_loss


@dataclass(frozen=True)
class FitNetParams:
    lambda_general: float  # λ_g, the weight of the feature term


class FitNet(Method):
    params: FitNetParams

    def __init__(self, dims: MethodDims, params: FitNetParams, terms: tuple[Term, ...] = ()) -> None:
        super().__init__(dims, params, terms)
        self.projector = nn.Linear(dims.student_dim, dims.teacher_dim)

    def own_parts(self, step: StepInputs) -> dict:
        task = task_loss(step.logits, step.labels, step.counts)
        general = feature_mse(self.projector(step.student_features), step.teacher_features, step.counts)
        return {"loss": task + self.params.lambda_general * general, "task": task, "general": general}

"""``kd+fitnet``: Hinton KD on the teacher probe's logits plus the FitNet feature term.

L = L_task + w · T² · KL(p_t ‖ p_s) + λ_g · MSE(P_s(f_s), f_t). The control for CustomKD: logits
and raw teacher features together, without the customized (task-specific) term.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.methods.base import StepInputs
from trainer.methods.fitnet import FitNet, FitNetParams
from trainer.methods.kd import KDParams, soft_target_loss


@dataclass(frozen=True)
class KDFitNetParams(FitNetParams):
    """FitNet's λ_g, plus the KD term's T and w."""

    kd: KDParams


class KDWithFitNet(FitNet):
    params: KDFitNetParams

    def forward(self, step: StepInputs) -> dict:
        parts = super().forward(step)
        kd = soft_target_loss(step.logits, step.probe_logits, self.params.kd.temperature, step.counts)
        return {**parts, "loss": parts["loss"] + self.params.kd.weight * kd, "kd": kd}

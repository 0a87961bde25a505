"""``kd+fitnet``: Hinton KD on the teacher probe's logits plus the FitNet feature term.

L = L_task + w · T² · KL(p_t ‖ p_s) + λ_g · MSE(P_s(f_s), f_t). The control for CustomKD: logits
and raw teacher features together, without the customized (task-specific) term.
"""

from __future__ import annotations

from trainer.methods.base import StepInputs
from trainer.methods.fitnet import FitNet
from trainer.methods.kd import soft_target_loss


class KDWithFitNet(FitNet):
    def forward(self, step: StepInputs) -> dict:
        cfg = self.ctx.config
        parts = super().forward(step)
        kd = soft_target_loss(step.logits, step.probe_logits, cfg.kd_temperature, step.counts)
        return {**parts, "loss": parts["loss"] + cfg.kd_weight * kd, "kd": kd}

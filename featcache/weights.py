"""Reading weights files safely: shared by teachers (extract) and students (distill)."""

from __future__ import annotations

from pathlib import Path

import torch

from featcache.errors import UserError


def load_state_dict_file(path: str | Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """Weights from safetensors or a torch file read with ``weights_only=True`` (never unpickled).

    ``flag`` is the option the user passes the file with, named in the error messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass {flag} with a .safetensors or .pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one clear line
        raise UserError(f"cannot read weights {path} safely ({type(exc).__name__}); convert it to safetensors") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}

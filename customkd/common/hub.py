"""Model-hub access that fails fast offline: shared by teacher loading and pretrained students."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from collections.abc import Iterator


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect (a proxy is trusted to work)."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_mode() -> Iterator[None]:
    """Offline, use only the local Hugging Face cache instead of retrying for a minute."""
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or not hub_reachable()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline

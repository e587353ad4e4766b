"""Serving: drive an ExternalEnv's episodes over HTTP (``PolicyServer``) from anywhere (``PolicyClient``, curl).

The names are imported when first used: ``import relayrl.serving`` loads no HTTP stack. ``PolicyClient`` needs
``httptools`` (its HTTP parser) and the server ``aiohttp``: ``pip install relayrl[serving]``.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "PolicyServer": "relayrl.serving.policy_server",
    "PolicyClient": "relayrl.serving.policy_client",
    "PolicyServerError": "relayrl.serving.policy_client",
    "ServedPolicy": "relayrl.serving.local_policy",
    "ProtocolError": "relayrl.serving.protocol",
    "PolicyActor": "relayrl.serving.inference",  # inference only (``relayrl serve``)
    "inference_env": "relayrl.serving.inference",
}

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'relayrl.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)

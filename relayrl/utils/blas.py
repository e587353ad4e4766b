"""One BLAS thread for small matrix products (a sampler's per-step forward pass, a fragment's value bootstrap): a
second thread slows them down, by milliseconds on loaded cores."""

from __future__ import annotations

from typing import Any

_CONTROLLER = None


def single_blas_thread() -> Any:
    """A context manager limiting the process's BLAS libraries to one thread while it is open."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")

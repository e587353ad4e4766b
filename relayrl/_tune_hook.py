"""Registers relayrl's trainers with Ray Tune as soon as ``ray.tune`` is imported, without importing it here.

Importing Tune costs about a second, so ``import relayrl`` must not do it; yet RLlib 0.7's documentation calls
``tune.run_experiments({... "run": "PPO" ...})`` after importing relayrl, and Tune must then find "PPO".
A meta-path finder wraps the loader of ``ray.tune`` and calls ``register_all()`` right after it executes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    adapter = sys.modules.get("relayrl.agents.tune_adapter")
    if adapter is not None and not hasattr(adapter, "register_all"):
        return  # ray.tune imported by tune_adapter itself (e.g. a Tune worker unpickling a trainable): no cycle
    from relayrl.agents.tune_adapter import register_all

    register_all()


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "ray.tune":
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec with the other finders
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if "ray.tune" in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())

"""Ray Tune integration: each trainer wrapped as a ``ray.tune.Trainable`` and registered by name.

``register_all()`` runs when ``ray.tune`` is imported after relayrl (an import hook set in
``relayrl/__init__.py``) or at once if Tune was already imported. So seed 002's
``tune.run_experiments({"exp": {"run": "PPO", ...}})`` finds our trainers, and Tune never falls back to
looking the name up elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

from ray import tune
from ray.tune.registry import register_trainable

from relayrl.agents.registry import ALGORITHMS, available_algorithms, get_trainer_class
from relayrl.env.registry import _register_with_tune, registered_envs

_WRAPPED: dict[str, type] = {}


def as_trainable(name: str) -> type[tune.Trainable]:
    """The Tune Trainable class for trainer ``name`` (created once)."""
    if name not in _WRAPPED:
        trainer_cls = get_trainer_class(name)

        class _Trainable(_TrainerTrainable):
            _trainer_cls = trainer_cls

        _Trainable.__name__ = _Trainable.__qualname__ = name
        _WRAPPED[name] = _Trainable
    return _WRAPPED[name]


class _TrainerTrainable(tune.Trainable):
    _trainer_cls: Any = None

    @classmethod
    def default_resource_request(cls, config: dict):
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        defaults = cls._trainer_cls._default_config
        get = lambda k: config.get(k, defaults.get(k))  # noqa: E731
        driver = {"CPU": get("num_cpus_for_driver"), "GPU": get("num_gpus") or 0}
        worker = {"CPU": get("num_cpus_per_worker"), "GPU": get("num_gpus_per_worker") or 0}
        return PlacementGroupFactory([driver] + [worker] * int(get("num_workers")))

    def setup(self, config: dict) -> None:
        config = dict(config)
        env = config.pop("env", None)
        self.trainer = self._trainer_cls(config=config, env=env, logger_creator=self.logdir)

    def step(self) -> dict:
        result = self.trainer.train()
        result.pop("done", None)
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        self.trainer.save_to_path(os.path.join(checkpoint_dir, "relayrl"))
        return None

    def load_checkpoint(self, checkpoint: Any) -> None:
        path = checkpoint if isinstance(checkpoint, str) else getattr(checkpoint, "path", None)
        if path and os.path.isdir(os.path.join(path, "relayrl")):
            path = os.path.join(path, "relayrl")
        self.trainer.restore(path)

    def cleanup(self) -> None:
        self.trainer.stop()


def register_all() -> None:
    for name in available_algorithms():
        if name in ALGORITHMS:
            register_trainable(name, as_trainable(name), warn=False)
    for env_name, creator in registered_envs().items():
        _register_with_tune(env_name, creator)

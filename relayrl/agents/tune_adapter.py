"""Ray Tune integration: each trainer wrapped as a ``ray.tune.Trainable`` and registered by name.

``register_all()`` runs when ``ray.tune`` is imported after relayrl (an import hook set in
``relayrl/__init__.py``) or at once if Tune was already imported. So RLlib 0.7's documentation's
``tune.run_experiments({"exp": {"run": "PPO", ...}})`` finds our trainers, and Tune never falls back to
looking the name up elsewhere. ``tune.run(PPOTrainer, ...)`` (a trainer class, as RLlib-era code passes it, a
user's ``build_trainer`` class too) runs the same adapter, registered under the trainer's name.
"""

from __future__ import annotations

import os
from typing import Any

from ray import tune
from ray.tune.registry import register_trainable

from relayrl.agents.registry import ALGORITHMS, available_algorithms, get_trainer_class
from relayrl.env.registry import _register_with_tune, registered_envs
from relayrl.models import registry as model_registry

# Ray Tune's registry categories for models, preprocessors and action distributions (plain strings of
# ray.tune.registry; nothing of RLlib is imported).
_TUNE_CATEGORIES = {"model": "rllib_model", "preprocessor": "rllib_preprocessor", "action_dist": "rllib_action_dist"}

_WRAPPED: dict[str, type] = {}


def as_trainable(name: str, trainer_cls: type | None = None) -> type[tune.Trainable]:
    """The Tune Trainable class for trainer ``name`` (created once); ``trainer_cls``: a class not in the registry
    (a user's ``build_trainer`` result)."""
    if name not in _WRAPPED or (trainer_cls is not None and _WRAPPED[name]._trainer_cls is not trainer_cls):
        cls = trainer_cls or get_trainer_class(name)

        class _Trainable(_TrainerTrainable):
            _trainer_cls = cls

        _Trainable.__name__ = _Trainable.__qualname__ = name
        _WRAPPED[name] = _Trainable
    return _WRAPPED[name]


def _accept_trainer_classes() -> None:
    """``tune.run(PPOTrainer, config=...)`` as in RLlib: Tune takes only Trainable subclasses, so a relayrl
    Trainer class passed to ``tune.run`` runs as its Trainable, registered under the trainer's name."""
    from ray.tune.experiment import Experiment

    from relayrl.agents.trainer import Trainer

    original = Experiment.register_if_needed.__func__
    if getattr(original, "relayrl", False):
        return

    def register_if_needed(cls: type, run_object: Any) -> Any:
        if isinstance(run_object, type) and issubclass(run_object, Trainer):
            register_trainable(run_object._name, as_trainable(run_object._name, run_object), warn=False)
            return run_object._name
        return original(cls, run_object)

    register_if_needed.relayrl = True
    Experiment.register_if_needed = classmethod(register_if_needed)


class _TrainerTrainable(tune.Trainable):
    _trainer_cls: Any = None

    @classmethod
    def default_resource_request(cls, config: dict):
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        from relayrl.config import translate_legacy_keys

        defaults = cls._trainer_cls._default_config
        config = translate_legacy_keys(config, defaults)  # gpu / gpu_fraction ask for GPUs too
        get = lambda k: config.get(k, defaults.get(k))  # noqa: E731
        driver = {"CPU": get("num_cpus_for_driver"), "GPU": get("num_gpus") or 0}
        worker = {"CPU": get("num_cpus_per_worker"), "GPU": get("num_gpus_per_worker") or 0}
        return PlacementGroupFactory([driver] + [worker] * int(get("num_workers")))

    def setup(self, config: dict) -> None:
        config = dict(config)
        env = config.pop("env", None)
        self.trainer = self._trainer_cls(config=config, env=env, logger_creator=self._trial_dir())

    def _trial_dir(self) -> str:
        """The trial's directory under the experiment's storage path (params.json, result.json, ...), where the
        trainer's own files (monitor videos) belong. Tune's ``self.logdir`` is a working directory under
        /tmp/ray/session_*/artifacts, copied to the trial directory only with SyncConfig(sync_artifacts=True); it
        is kept for storage that is not a local filesystem."""
        storage = getattr(self, "_storage", None)
        try:
            import pyarrow.fs

            if storage is not None and isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
                return storage.trial_fs_path
        except (ImportError, AttributeError):
            pass
        return self.logdir

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


def _register_component(kind: str, name: str, cls: Any) -> None:
    from ray.tune.registry import _global_registry

    _global_registry.register(_TUNE_CATEGORIES[kind], name, cls)


def _lookup_component(kind: str, name: str) -> Any:
    import ray
    from ray.tune.registry import _global_registry

    if not ray.is_initialized() or not _global_registry.contains(_TUNE_CATEGORIES[kind], name):
        return None
    return _global_registry.get(_TUNE_CATEGORIES[kind], name)


def register_all() -> None:
    _accept_trainer_classes()
    for name in available_algorithms():
        if name in ALGORITHMS:
            register_trainable(name, as_trainable(name), warn=False)
    for env_name, creator in registered_envs().items():
        _register_with_tune(env_name, creator)
    # Custom models & co. registered in this process become visible to Tune's trial processes.
    for kind in model_registry.KINDS:
        for name, cls in model_registry.registered(kind).items():
            _register_component(kind, name, cls)


# Wherever this module is imported (the driver, or a Tune trial process unpickling a trainable), names of custom
# models & co. are also registered with, and looked up in, Tune's cluster-wide registry.
model_registry.REGISTER_HOOKS.append(_register_component)
model_registry.LOOKUP_HOOKS.append(_lookup_component)

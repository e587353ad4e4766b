"""The policy a local-inference client runs: served as a JSON manifest plus safetensors weights, rebuilt from
relayrl's algorithm registry (never unpickled).

Server side, ``ServedPolicy`` names what to serve::

    env.served_policy = ServedPolicy("PPO", worker.policy_map["default_policy"], config, obs_filter=filter)

Client side, ``LocalPolicy.from_manifest(manifest)`` builds the algorithm's default policy class from
``get_trainer_class(manifest["algorithm"])`` and the config (the algorithm's defaults merged with the manifest's
JSON config), on the CPU, with the same preprocessor and observation filter (its statistics as of the last pull;
the client never updates them), then ``set_weights(safetensors bytes)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from relayrl.serving.protocol import PROTOCOL_VERSION, space_from_wire, space_to_wire

# Config keys never sent to clients: they describe the training side (and env_config may hold secrets).
PRIVATE_CONFIG_KEYS = ("env", "env_config", "callbacks", "multiagent", "evaluation_config", "logger_config")


@dataclasses.dataclass
class ServedPolicy:
    """What a PolicyServer serves to local-inference clients.

    Args:
        algorithm: the registry name of the algorithm whose default policy class ``policy`` is (e.g. "PPO").
        policy: the policy whose ``get_weights()`` is served (the trainer's, updated in place as it learns).
        config: the policy's config; its JSON-representable keys are sent (not PRIVATE_CONFIG_KEYS).
        obs_filter: the observation filter clients apply (its statistics are sent with every manifest).
        lock: held while reading the weights (e.g. the worker's model lock), or None.
        cache_s: the serialised weights are reused for this long (many clients pulling at once cost one
            ``get_weights``); 0: serialised at every request.
    """

    algorithm: str
    policy: Any
    config: dict
    obs_filter: Any = None
    lock: Any = None
    cache_s: float = 0.05

    def __post_init__(self) -> None:
        self._cache: tuple[float, bytes, str] | None = None
        self._cache_lock = threading.Lock()

    def weights(self) -> tuple[bytes, str]:
        """(safetensors bytes, etag) of the current weights; serialised at most once per ``cache_s``."""
        from safetensors.numpy import save

        with self._cache_lock:
            now = time.monotonic()
            if self._cache is None or now - self._cache[0] >= self.cache_s:
                if self.lock is not None:
                    with self.lock:
                        weights = self.policy.get_weights()
                else:
                    weights = self.policy.get_weights()
                data = save({k: np.ascontiguousarray(v) for k, v in weights.items()})
                self._cache = (now, data, hashlib.sha256(data).hexdigest()[:32])
            return self._cache[1], self._cache[2]

    def manifest(self, observation_space: Any, action_space: Any) -> dict:
        config, dropped = json_config(self.config)
        _, etag = self.weights()
        state = self.obs_filter.to_state() if self.obs_filter is not None else {"type": "NoFilter"}
        return {
            "protocol": PROTOCOL_VERSION,
            "algorithm": self.algorithm,
            "policy_class": type(self.policy).__name__,
            "config": config,
            "config_keys_not_sent": dropped,
            "observation_space": space_to_wire(observation_space),
            "action_space": space_to_wire(action_space),
            "observation_filter": _plain(state),
            "weights": {"path": "/v1/weights", "format": "safetensors", "etag": etag},
        }


def json_config(config: Mapping) -> tuple[dict, list[str]]:
    """The JSON-representable part of a config, and the top-level keys left out."""
    out, dropped = {}, []
    for key, value in config.items():
        if key in PRIVATE_CONFIG_KEYS:
            dropped.append(key)
            continue
        ok, plain = _json_value(value)
        if ok:
            out[key] = plain
        else:
            dropped.append(key)
    return out, sorted(dropped)


def _json_value(x: Any) -> tuple[bool, Any]:
    if x is None or isinstance(x, (bool, str, int)):
        return True, x
    if isinstance(x, float):
        return math.isfinite(x), x
    if isinstance(x, (list, tuple)):
        parts = [_json_value(v) for v in x]
        return all(ok for ok, _ in parts), [v for _, v in parts]
    if isinstance(x, Mapping) and all(isinstance(k, str) for k in x):
        parts = {k: _json_value(v) for k, v in x.items()}
        return all(ok for ok, _ in parts.values()), {k: v for k, (_, v) in parts.items()}
    return False, None


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


class LocalPolicy:
    """A client's copy of the served policy: raw observation -> preprocessor -> filter -> policy -> action.

    Args:
        manifest: the server's ``GET /v1/policy`` answer.
    """

    def __init__(self, manifest: Mapping):
        from relayrl.agents.registry import get_trainer_class
        from relayrl.config import merge_dicts
        from relayrl.models.catalog import ModelCatalog

        trainer_cls = get_trainer_class(manifest["algorithm"])
        policy_cls = trainer_cls._policy
        if policy_cls.__name__ != manifest.get("policy_class", policy_cls.__name__):
            raise ValueError(
                f"the server's policy is a {manifest['policy_class']}, not {manifest['algorithm']}'s default"
                f" {policy_cls.__name__}: local inference rebuilds the algorithm's default policy only"
            )
        config = merge_dicts(trainer_cls._default_config, manifest["config"])
        config["num_gpus"] = 0  # a client acts on the CPU
        self.observation_space = space_from_wire(manifest["observation_space"])
        self.action_space = space_from_wire(manifest["action_space"])
        if isinstance(self.observation_space, dict) or isinstance(self.action_space, dict):
            raise NotImplementedError("local inference serves single-agent external envs only; use remote mode")
        self.preprocessor = ModelCatalog.get_preprocessor_for_space(self.observation_space, config.get("model"))
        self.policy = policy_cls(self.preprocessor.observation_space, self.action_space, config)
        self.etag: str | None = None
        self.obs_filter: Any = None
        self.set_filter(manifest["observation_filter"])
        # The server recomputes what the learner needs (log-probabilities, values): a policy that can skip them does.
        params = inspect.signature(self.policy.compute_actions).parameters
        self._skip = {"deferred": True} if "deferred" in params else {}

    def set_filter(self, state: Mapping) -> None:
        from relayrl.utils.filters import filter_from_state

        self.obs_filter = filter_from_state(dict(state))

    def set_weights(self, data: bytes, etag: str | None) -> None:
        from safetensors.numpy import load

        self.policy.set_weights(load(data))
        self.etag = etag

    def initial_state(self) -> list:
        return self.policy.get_initial_state()

    def compute_action(self, obs: Any, state: list) -> tuple[Any, list]:
        x = self.preprocessor.transform_batch([obs])
        if not self.obs_filter.is_identity:
            x = self.obs_filter(x, update=False)
        actions, state_out, _ = self.policy.compute_actions(
            x, [np.asarray(s)[None] for s in state] or None, **self._skip
        )
        action = actions[0]
        return (action.item() if np.ndim(action) == 0 else action), [s[0] for s in state_out]


def served_policy_for(policy: Any, obs_filter: Any = None, lock: Any = None) -> "ServedPolicy | None":
    """A ServedPolicy for a worker's policy, named after the algorithm whose default policy class it is (None when
    no registered algorithm's is: local-inference clients then cannot rebuild it and get a 404)."""
    from relayrl.agents.registry import algorithm_of_policy

    algorithm = algorithm_of_policy(type(policy))
    if algorithm is None:
        return None
    return ServedPolicy(algorithm, policy, policy.config, obs_filter=obs_filter, lock=lock)

"""RolloutWorker (RLlib 0.7 alias: PolicyEvaluator): an environment, its policies and the sampler between them.

    worker = RolloutWorker(lambda ctx: gym.make("CartPole-v1"), MyPolicy)
    batch = worker.sample()                          # a SampleBatch of experience
    worker.learn_on_batch(batch)                     # or compute_gradients / apply_gradients
    remote = RolloutWorker.as_remote().remote(env_creator, MyPolicy, policy_config={"num_envs_per_worker": 8})
    batch = ray.get(remote.sample.remote())

Options come from ``policy_config`` (a trainer config; missing keys take the common defaults) and may be
overridden by keyword (``sample_batch_size=50``; the RLlib 0.7 (2019) names ``batch_steps``, ``episode_horizon`` and
``num_envs`` are accepted too).
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import threading
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from relayrl.config import COMMON_CONFIG, merge_dicts
from relayrl.env.base_env import PollingEnv
from relayrl.env.multi_agent_env import MultiAgentEnv
from relayrl.env.multi_agent_vector_env import MultiAgentVectorEnv
from relayrl.env.registry import EnvContext, make_env
from relayrl.env.vector_env import VectorEnv, check_vector_api
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.multi_agent_sampler import MultiAgentSampler
from relayrl.evaluation.policy_specs import default_mapping_fn, mapping_caller, resolve_policy_specs
from relayrl.evaluation.sampler import SyncSampler
from relayrl.models.catalog import ModelCatalog
from relayrl.multiagent_config import resolve_mapping_fn
from relayrl.policy.policy import Policy
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.utils.filters import Filter, get_filter

logger = logging.getLogger(__name__)


class PolicyMap(dict):
    """policy id -> Policy (or its Filter); the RLlib 0.6-era id "default" finds "default_policy"."""

    def __missing__(self, key: str) -> Any:
        if key == "default" and DEFAULT_POLICY_ID in self:
            return self[DEFAULT_POLICY_ID]
        raise KeyError(key)


_LEGACY_NAMES = {
    "batch_steps": "sample_batch_size",
    "rollout_fragment_length": "sample_batch_size",  # RLlib 0.8's name
    "episode_horizon": "horizon",
    "num_envs": "num_envs_per_worker",
    "model_config": "model",
}
# RLlib 0.7-era keywords of PolicyEvaluator that have no meaning here (TensorFlow, offline IO): accepted and dropped.
_DROPPED_NAMES = ("tf_session_creator", "preprocessor_pref", "monitor_path", "log_dir", "input_creator")


def _legacy_policy(policy: Any, overrides: dict) -> Any:
    """``policy``, or the policy class RLlib 0.7 (2019) passed as ``policy_graph=`` (taken out of ``overrides``)."""
    graph = overrides.pop("policy_graph", None)
    if (policy is None) == (graph is None):
        raise TypeError("RolloutWorker() takes one policy: pass policy (policy_graph is its RLlib 0.7 name)")
    return graph if policy is None else policy


def _keyword_overrides(overrides: dict, policy_config: dict | None) -> dict:
    """The constructor's ``**overrides`` as config keys: RLlib 0.7 (2019) names translated, dropped ones removed, and a
    keyword that is no config key a TypeError (with the closest name) instead of an option silently ignored."""
    known = set(COMMON_CONFIG) | set(policy_config or {})
    if overrides.pop("soft_horizon", False):  # RLlib 0.8; False is what horizon does here
        raise ValueError("soft_horizon=True is not supported: horizon cuts an episode and resets its env")
    os.environ.update(overrides.pop("extra_python_environs", None) or {})  # RLlib 0.8: set in this process
    out = {}
    for key, value in overrides.items():
        if key in _DROPPED_NAMES:
            continue
        new = _LEGACY_NAMES.get(key, key)
        if new not in known and not key.startswith("_"):
            close = difflib.get_close_matches(key, sorted(known | set(_LEGACY_NAMES)), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"RolloutWorker() got an unexpected keyword argument {key!r}{hint}; it takes the common"
                " config keys, and an algorithm's own keys through policy_config"
            )
        out[new] = value
    return out


def _holding_model_lock(method: Callable) -> Callable:
    """With ``sample_async`` the sampler thread runs the policies' models while this worker learns: a model's
    forward caches state for ``value_function()`` (the conv net's features), so the two threads take turns (issue
    10, item 7). Without ``sample_async`` there is no lock to take."""

    @functools.wraps(method)
    def locked(self: "RolloutWorker", *args: Any, **kwargs: Any) -> Any:
        lock = self._model_lock
        if lock is None:
            return method(self, *args, **kwargs)
        with lock:
            return method(self, *args, **kwargs)

    return locked


class RolloutWorker:
    """An environment (vectorised over ``num_envs_per_worker`` sub-envs), its policies, their preprocessors and
    observation filters, and the sampler that steps them together. The local worker of a trainer holds the
    learner's policies; remote ones (``as_remote()``) sample with weights the trainer sends them.

    Args:
        env_creator: ``env_creator(EnvContext) -> env``: a gymnasium.Env, a relayrl VectorEnv, a Gymnasium vector
            env (its sub-envs become the worker's) or a MultiAgentEnv.
        policy: a Policy class (one policy, id ``default_policy``) or a multi-agent dict
            ``{policy_id: (cls, obs_space, act_space, config_overrides)}``; RLlib 0.7's ``policy_graph=`` names it too.
        policy_mapping_fn: agent id -> policy id (multi-agent).
        policies_to_train: policy ids that learn (default: all).
        policy_config: a trainer config; missing keys take the common defaults (``relayrl.config.COMMON_CONFIG``).
        worker_index: 0 for the local worker, 1.. for remote ones (seeds and env contexts differ per worker).
        **overrides: config keys by keyword (``sample_batch_size=50``, the RLlib 0.7-era ``batch_steps``...); an
            unknown keyword is a TypeError with a did-you-mean.
    """

    _model_lock: threading.RLock | None = None  # set when the sampler thread starts (sample_async)

    @classmethod
    def as_remote(
        cls,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        memory: int | None = None,
        resources: dict | None = None,
    ):
        """The Ray actor class of this worker: ``RolloutWorker.as_remote().remote(env_creator, policy, ...)``."""
        import ray

        return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, memory=memory, resources=resources)(cls)

    def __init__(
        self,
        env_creator: Callable[[EnvContext], Any],
        policy: type[Policy] | dict | None = None,
        policy_mapping_fn: Callable | None = None,
        policies_to_train: list[str] | None = None,
        policy_config: dict | None = None,
        worker_index: int = 0,
        **overrides: Any,
    ):
        policy = _legacy_policy(policy, overrides)
        overrides = _keyword_overrides(overrides, policy_config)
        config = merge_dicts(COMMON_CONFIG, policy_config or {})
        config = merge_dicts(config, overrides)
        self.config = config
        self.worker_index = worker_index
        if worker_index > 0:
            import torch

            # A remote worker owns num_cpus_per_worker CPUs; more torch threads would only contend.
            torch.set_num_threads(max(1, int(config.get("num_cpus_per_worker") or 1)))
        seed = config.get("seed")
        self.seed = None if seed is None else seed + 1000 * worker_index
        if self.seed is not None:
            import torch

            torch.manual_seed(self.seed)
            np.random.seed(self.seed % 2**32)

        self.env_context = EnvContext.from_config(config, worker_index)  # env_config, model (Atari), videos
        self.env_creator = env_creator
        self.env = make_env(env_creator, self.env_context, config.get("env"))  # sub-env 0: records with monitor
        if isinstance(self.env, gym.vector.VectorEnv):  # gym.make_vec, Sync/AsyncVectorEnv: its sub-envs are ours
            from relayrl.env.gym_vector_env import GymVectorEnvAdapter

            self.env = GymVectorEnvAdapter(self.env, config["num_envs_per_worker"])
        self.multi_agent = isinstance(self.env, (MultiAgentEnv, PollingEnv))
        mapping_fn = resolve_mapping_fn(policy_mapping_fn or config["multiagent"].get("policy_mapping_fn"))
        if self.multi_agent:
            specs = policy if isinstance(policy, dict) else None
            mapping_fn = mapping_fn or default_mapping_fn(list(specs or [DEFAULT_POLICY_ID]))
            policy = resolve_policy_specs(specs, self.env, mapping_caller(mapping_fn, self), policy)
        self.policy_mapping_fn = mapping_fn
        self.policy_map: dict[str, Policy] = self._build_policies(policy, config, worker_index)
        self.policies_to_train = list(
            policies_to_train or config["multiagent"].get("policies_to_train") or list(self.policy_map)
        )
        unknown = [pid for pid in self.policies_to_train if pid not in self.policy_map]
        if unknown:
            raise ValueError(
                f"multiagent.policies_to_train names {unknown}, which are not among the policies "
                f"{sorted(self.policy_map)}"
            )
        self.filters: dict[str, Filter] = PolicyMap(
            (pid, get_filter(config["observation_filter"], self.preprocessors[pid].shape, self._mask_columns(pid)))
            for pid in self.policy_map
        )
        if getattr(self.env, "served_policy", False) is None:  # an ExternalEnv: what local-inference clients pull
            self._serve_policy()
        self.global_vars: dict = {}  # the latest global vars (e.g. {"timestep": ...}) from the trainer
        self._sampler: SyncSampler | None = None  # built at the first sample(): a learner-only worker never steps
        self._compress = config["compress_observations"]

    # --- construction ----------------------------------------------------------------------------------------
    def _build_policies(self, policy: Any, config: dict, worker_index: int) -> dict[str, Policy]:
        if isinstance(policy, dict):
            specs = policy
        else:
            specs = {DEFAULT_POLICY_ID: (policy, self.env.observation_space, self.env.action_space, {})}
        policy_map, self.preprocessors = PolicyMap(), {}
        for pid, (cls, obs_space, act_space, overrides) in specs.items():
            if obs_space is None or act_space is None:  # a single-agent env: its spaces
                obs_space = obs_space or self.env.observation_space
                act_space = act_space or self.env.action_space
            prep = ModelCatalog.get_preprocessor_for_space(obs_space, config.get("model"))
            self.preprocessors[pid] = prep
            pconf = merge_dicts(config, overrides or {})
            pconf["worker_index"] = worker_index
            if self.seed is not None:
                pconf["seed"] = self.seed
            policy_map[pid] = cls(prep.observation_space, act_space, pconf)
        return policy_map

    def _serve_policy(self) -> None:
        """Gives a single-policy ExternalEnv the policy its PolicyServer sends to local-inference clients (the
        algorithm's name lets a client rebuild the same policy class)."""
        if len(self.policy_map) != 1:
            return
        from relayrl.serving.local_policy import served_policy_for

        pid, policy = next(iter(self.policy_map.items()))
        self.env.served_policy = served_policy_for(policy, self.filters[pid], self._model_lock)

    def _mask_columns(self, pid: str) -> tuple[int, int] | None:
        """The action mask's columns in the policy's flat observations: the observation filter leaves them as
        they are."""
        from relayrl.models.action_mask import ACTION_MASK, mask_columns

        policy = self.policy_map[pid]
        key = (getattr(policy, "config", None) or self.config).get("model", {}).get("action_mask_key", ACTION_MASK)
        try:
            return mask_columns(policy.observation_space, policy.action_space, key)
        except ValueError:
            return None

    def _vectorize(self, env: Any, num_envs: int) -> VectorEnv:
        if isinstance(env, VectorEnv):
            return check_vector_api(env)
        if not isinstance(env, gym.Env) and not hasattr(env, "step"):
            raise ValueError(f"the env creator returned {env!r}, which is not an environment")

        def make_env(vector_index: int):
            return self.env_creator(self.env_context.copy_with_overrides(vector_index=vector_index))

        return VectorEnv.wrap(make_env, num_envs, existing_envs=[env])

    def set_model_lock(self, lock: Any) -> None:
        """Shares ``lock`` between this worker's sampling (each policy call) and its learn methods: for a learner
        thread that trains the same model while this worker samples (IMPALA without remote workers)."""
        self._model_lock = lock
        if self._sampler is not None:
            self._sampler._lock = lock

    @property
    def sampler(self) -> SyncSampler:
        if self._sampler is None and self.multi_agent:
            self._sampler = self._multi_agent_sampler()
        if self._sampler is None:
            if DEFAULT_POLICY_ID not in self.policy_map:
                raise NotImplementedError(
                    f"sampling with the multi-agent policies {sorted(self.policy_map)} needs a MultiAgentEnv;"
                    f" the env is {type(self.env).__name__}, a single-agent env (use one 'default_policy', or"
                    " relayrl.env.make_multi_agent to make N copies of it)"
                )
            config = self.config
            if config["sample_async"] and self._model_lock is None:
                self._model_lock = threading.RLock()
            self._sampler = SyncSampler(
                self._vectorize(self.env, config["num_envs_per_worker"]),
                self.policy_map[DEFAULT_POLICY_ID],
                self.preprocessors[DEFAULT_POLICY_ID],
                self.filters[DEFAULT_POLICY_ID],
                check_env=config.get("check_env", False),
                **self._sampler_options(),
            )
            if config["sample_async"]:
                from relayrl.evaluation.async_sampler import AsyncSampler

                self._sampler = AsyncSampler(self._sampler)
        return self._sampler

    def _sampler_options(self) -> dict:
        """The config keys both samplers take, as their keyword arguments."""
        config = self.config
        return {
            "fragment_length": config["sample_batch_size"],
            "batch_mode": config["batch_mode"],
            "horizon": config["horizon"],
            "clip_rewards": config["clip_rewards"],
            "clip_actions": config["clip_actions"],
            "callbacks": config.get("callbacks"),
            "worker": self,
            "seed": self.seed,
            "lock": self._model_lock,
            "check_nan": config.get("check_nan", False),
            "env_name": config.get("env"),
        }

    def _multi_agent_sampler(self) -> MultiAgentSampler:
        config = self.config
        if config["sample_async"] and self._model_lock is None:
            self._model_lock = threading.RLock()
        env = self.env
        if not isinstance(env, PollingEnv):
            n = config["num_envs_per_worker"]
            base = self.seed if self.seed is not None else None
            check = config.get("check_env", False)
            env = MultiAgentVectorEnv.from_creator(
                lambda i: self.env_creator(self.env_context.copy_with_overrides(vector_index=i)),
                n,
                existing=[env],
                env_name=config.get("env"),
                worker_index=self.worker_index,
                seeds=[None if base is None else base + i for i in range(n)],
                check_steps=None if check is True else int(check or 0),
                check_nan=config.get("check_nan", False),
                action_mask_key=(config.get("model") or {}).get("action_mask_key", "action_mask"),
            )
        if config["horizon"] is not None and not getattr(env, "can_reset", True):
            logger.warning(
                "horizon=%s does not apply to %s: its simulator starts and ends the episodes (end_episode(...,"
                " truncated=True) cuts one short)", config["horizon"], type(env).__name__,
            )  # fmt: skip
        sampler = MultiAgentSampler(
            env,
            self.policy_map,
            self.preprocessors,
            self.filters,
            self.policy_mapping_fn,
            count_steps_by=config.get("count_steps_by", "env_steps"),
            **self._sampler_options(),
        )
        if config["sample_async"]:
            from relayrl.evaluation.async_sampler import AsyncSampler

            return AsyncSampler(sampler)
        return sampler

    @property
    def async_env(self) -> VectorEnv:
        return self.sampler.env

    @property
    def sample_batch_size(self) -> int:
        """Env steps in one ``sample()``: the config's ``sample_batch_size`` per sub-env times
        ``num_envs_per_worker`` (RLlib 0.7's attribute; ``rollout_fragment_length`` is RLlib 0.8's name)."""
        return self.config["sample_batch_size"] * self.config["num_envs_per_worker"]

    rollout_fragment_length = sample_batch_size

    # --- sampling ------------------------------------------------------------------------------------------
    def sample(self) -> SampleBatch | MultiAgentBatch:
        batch = self.sampler.sample()
        if self._compress:
            batch.compress(bulk=self._compress == "bulk")
        return batch

    def sample_with_count(self) -> tuple[SampleBatch, int]:
        batch = self.sample()
        return batch, batch.count

    def get_metrics(self) -> list[RolloutMetrics]:
        return self._sampler.get_metrics() if self._sampler is not None else []

    def sampler_perf(self) -> dict:
        return self._sampler.perf_stats() if self._sampler is not None else {}

    # --- learning ------------------------------------------------------------------------------------------
    @_holding_model_lock
    def learn_on_batch(self, samples: SampleBatch | MultiAgentBatch) -> dict:
        if isinstance(samples, MultiAgentBatch):
            return {
                pid: self.policy_map[pid].learn_on_batch(batch)
                for pid, batch in samples.policy_batches.items()
                if pid in self.policies_to_train
            }
        return self.policy_map[DEFAULT_POLICY_ID].learn_on_batch(samples)

    @_holding_model_lock
    def compute_gradients(self, samples: SampleBatch | MultiAgentBatch) -> tuple[Any, dict]:
        if isinstance(samples, MultiAgentBatch):
            grads, infos = {}, {}
            for pid, batch in samples.policy_batches.items():
                if pid in self.policies_to_train:
                    grads[pid], infos[pid] = self.policy_map[pid].compute_gradients(batch)
            return grads, infos
        return self.policy_map[DEFAULT_POLICY_ID].compute_gradients(samples)

    @_holding_model_lock
    def apply_gradients(self, grads: Any) -> None:
        if isinstance(grads, dict):
            for pid, g in grads.items():
                self.policy_map[pid].apply_gradients(g)
        else:
            self.policy_map[DEFAULT_POLICY_ID].apply_gradients(grads)

    # --- policies and weights -----------------------------------------------------------------------------
    def get_policy(self, policy_id: str = DEFAULT_POLICY_ID) -> Policy:
        return self.policy_map[policy_id]

    def for_policy(self, func: Callable, policy_id: str = DEFAULT_POLICY_ID) -> Any:
        return func(self.policy_map[policy_id])

    def foreach_policy(self, func: Callable) -> list:
        return [func(policy, pid) for pid, policy in self.policy_map.items()]

    def foreach_trainable_policy(self, func: Callable) -> list:
        return [func(self.policy_map[pid], pid) for pid in self.policies_to_train]

    def get_weights(self, policies: list[str] | None = None) -> dict[str, Any]:
        return {pid: p.get_weights() for pid, p in self.policy_map.items() if policies is None or pid in policies}

    @_holding_model_lock
    def set_weights(self, weights: dict[str, Any], global_vars: dict | None = None) -> None:
        for pid, w in weights.items():
            self.policy_map[pid].set_weights(w)
        if global_vars:
            self.set_global_vars(global_vars)

    def set_global_vars(self, global_vars: dict) -> None:
        self.global_vars.update(global_vars)
        for p in self.policy_map.values():
            p.on_global_var_update(global_vars)

    # --- filters ------------------------------------------------------------------------------------------
    def get_filters(self, flush_after: bool = False) -> dict[str, Filter]:
        out = PolicyMap((pid, f.copy()) for pid, f in self.filters.items())
        if flush_after:
            for f in self.filters.values():
                f.clear_buffer()
        return out

    def sync_filters(self, new_filters: dict[str, Filter]) -> None:
        for pid, f in new_filters.items():
            self.filters[pid].sync(f)

    def get_filter_states(self) -> dict[str, dict]:
        return {pid: f.to_state() for pid, f in self.filters.items()}

    def set_filter_states(self, states: dict[str, dict]) -> None:
        for pid, state in states.items():
            if pid in self.filters:
                self.filters[pid].set_state(state)

    # --- misc ----------------------------------------------------------------------------------------------
    def apply(self, func: Callable, *args: Any) -> Any:
        """Runs ``func(self, *args)`` here (on the actor when remote)."""
        return func(self, *args)

    def foreach_env(self, func: Callable) -> list:
        return [func(env) for env in self.async_env.get_sub_environments()]

    def ping(self) -> str:
        return "pong"

    def node(self) -> str:
        """Where this worker runs: ``"node <ip> (<node id>)"`` under Ray, ``"this process"`` otherwise."""
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                return f"node {ray.util.get_node_ip_address()} ({ctx.get_node_id()[:12]})"
        except ImportError:
            pass
        return "this process"

    def stop(self) -> None:
        if self._sampler is not None:
            getattr(self._sampler, "stop", lambda: None)()
            self._sampler.env.close()
        else:
            self.env.close()

    def __repr__(self) -> str:
        index, policies = getattr(self, "worker_index", "?"), list(getattr(self, "policy_map", {}))
        return f"RolloutWorker(index={index}, policies={policies})"


PolicyEvaluator = RolloutWorker

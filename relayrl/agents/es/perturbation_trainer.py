"""PerturbationTrainer: what ES and ARS share -- a flat-weight policy, a shared noise table, antithetic rollouts
spread over PerturbationWorkers, an update from their returns, and the Trainer API (train/save/restore/
compute_action, Tune and the CLI) without RolloutWorkers or a PolicyOptimizer.

    class ESTrainer(PerturbationTrainer):
        def _rollout_plan(self, num_workers) -> list[(num_pairs, min_steps)]   # one round of requests
        def _enough(self, num_episodes, num_steps) -> bool                      # stop requesting rounds
        def _update(self, theta, noise_indices, noisy_returns) -> (new_theta, info)

The noise table (``noise_size`` float32s) is made once and put once into the Ray object store; every worker
maps that single copy (``num_workers: 0``: one local worker, no Ray).
"""

from __future__ import annotations

import copy
import platform
from typing import Any

import numpy as np

import relayrl
from relayrl.agents import checkpoint as ckpt
from relayrl.agents.es.es_worker import PerturbationWorkerSet
from relayrl.agents.trainer import Trainer, check_counters
from relayrl.agents.trainer_state import env_reference
from relayrl.env.base_env import PollingEnv
from relayrl.env.multi_agent_env import MultiAgentEnv
from relayrl.env.registry import EnvContext
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID
from relayrl.utils.es_utils import create_noise
from relayrl.utils.filters import filter_from_state

DEFAULT_NOISE_SEED = 123  # the noise seed when config["seed"] is None (as in the ES reference code)


def validate_perturbation_config(name: str, config: dict) -> None:
    """The checks ES and ARS share (on the merged config)."""
    get = config.__getitem__
    if (config.get("model") or {}).get("use_lstm"):
        raise ValueError(
            f"{name} config: 'model.use_lstm' must be false: {name}'s policies are feed-forward (LinearPolicy,"
            " MLPPolicy)"
        )
    if (config.get("multiagent") or {}).get("policies"):
        raise ValueError(
            f"{name} config: 'multiagent.policies' must be empty: {name} does not support multi-agent (it perturbs"
            " and evaluates one flat policy on a single-agent env); train multi-agent envs with another algorithm,"
            " e.g. PPO"
        )
    if config["optimizer"]:
        raise ValueError(
            f"{name} config: unknown key 'optimizer.{next(iter(config['optimizer']))}': {name} has no"
            " policy optimizer, so 'optimizer' takes no options"
        )
    for key in ("noise_size", "report_length"):
        if get(key) < 1:
            raise ValueError(f"{name} config: {key!r} must be >= 1, got {get(key)!r}")
    if get("noise_stdev") <= 0:
        raise ValueError(f"{name} config: 'noise_stdev' must be > 0, got {get('noise_stdev')!r}")
    if not 0.0 <= get("eval_prob") < 1.0:
        raise ValueError(f"{name} config: 'eval_prob' must be in [0, 1), got {get('eval_prob')!r}")
    if get("policy_type") not in ("MLPPolicy", "LinearPolicy"):
        raise ValueError(
            f"{name} config: 'policy_type' must be 'MLPPolicy' or 'LinearPolicy', got {get('policy_type')!r}"
        )


class PerturbationTrainer(Trainer):
    def _init(self, config: dict, env_creator: Any) -> None:
        self._check_single_agent_env(config, env_creator)
        seed = config["seed"] if config["seed"] is not None else DEFAULT_NOISE_SEED
        noise = create_noise(config["noise_size"], seed)
        noise_ref = None
        if config["num_workers"] > 0:
            import ray

            from relayrl.evaluation.worker_set import ensure_ray

            ensure_ray(config["num_workers"] * (config.get("num_cpus_per_worker") or 1))
            noise_ref = ray.put(noise)
            del noise
            noise = ray.get(noise_ref)  # a read-only view of the object store's copy, not a second copy
        self.workers = PerturbationWorkerSet(env_creator, config, noise_ref, noise, config["num_workers"])
        local = self.workers.local_worker()
        self.policy = local.policy
        self.noise = local.noise
        self.optimizer = None  # no PolicyOptimizer: the update is self._update (see _make_optimizer)
        self._flat_optimizer = self._make_optimizer(self.policy.num_params)
        self._reward_list: list[float] = []
        self._episodes_total = 0

    def _check_single_agent_env(self, config: dict, env_creator: Any) -> None:
        """ValueError for a multi-agent env, before the noise table and the workers are made."""
        env = env_creator(EnvContext.from_config(config, 0))  # no video wrapper: this env never steps
        try:
            if isinstance(env, (MultiAgentEnv, PollingEnv)):
                raise ValueError(
                    f"{self._name} does not support multi-agent: the env {config.get('env')!r} is a"
                    f" {type(env).__name__} (a multi-agent env); {self._name} perturbs and evaluates one flat policy"
                    " on a single-agent env. Train multi-agent envs with another algorithm, e.g. PPO"
                )
        finally:
            env.close()

    # --- to be provided by ES / ARS -------------------------------------------------------------------------
    def _make_optimizer(self, num_params: int):
        raise NotImplementedError

    def _rollout_plan(self, num_workers: int, episodes: int, steps: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def _enough(self, episodes: int, steps: int) -> bool:
        raise NotImplementedError

    def _update(self, theta: np.ndarray, noise_indices: np.ndarray, noisy_returns: np.ndarray):
        raise NotImplementedError

    # --- one iteration ----------------------------------------------------------------------------------------
    def _train(self) -> dict:
        theta = self.policy.get_flat_weights()
        if self.workers.remote_workers():
            import ray

            theta_arg = ray.put(theta)
        else:
            theta_arg = theta
        # Only the rollouts that arrive count: a worker that dies takes its share of the round with it (its
        # replacement, with recreate_failed_workers, runs that share again; otherwise the next round plans it).
        results: list[dict] = []
        episodes = steps = 0
        while not results or not self._enough(episodes, steps):
            plan = self._rollout_plan(max(1, self.workers.num_healthy_workers), episodes, steps)
            for r in self.workers.call("do_rollouts", [(theta_arg, pairs, min_steps) for pairs, min_steps in plan]):
                results.append(r)
                episodes += r["noisy_lengths"].size
                steps += int(r["noisy_lengths"].sum())
        cat = lambda key: np.concatenate([r[key] for r in results])  # noqa: E731
        noise_indices, noisy_returns = cat("noise_indices"), cat("noisy_returns")
        noisy_lengths, eval_returns, eval_lengths = cat("noisy_lengths"), cat("eval_returns"), cat("eval_lengths")
        new_theta, info = self._update(theta, noise_indices, noisy_returns)
        self.policy.set_flat_weights(new_theta)
        self._sync_filters()
        if eval_returns.size:
            self._reward_list.append(float(eval_returns.mean()))
        self._episodes_total += noisy_lengths.size
        recent = self._reward_list[-self.config["report_length"] :]
        nan = float("nan")
        info.update(
            weights_norm=float(np.square(new_theta).sum()),
            episodes_this_iter=int(noisy_lengths.size),
            episodes_so_far=self._episodes_total,
            noisy_reward_mean=float(noisy_returns.mean()),
            noisy_reward_max=float(noisy_returns.max()),
            num_eval_episodes=int(eval_returns.size),
            num_params=self.policy.num_params,
        )
        return {
            # As in the reference code: the mean return of the unperturbed policy's evaluation episodes,
            # averaged over the last report_length iterations that had any.
            "episode_reward_mean": float(np.mean(recent)) if recent else nan,
            "episode_reward_max": float(eval_returns.max()) if eval_returns.size else nan,
            "episode_reward_min": float(eval_returns.min()) if eval_returns.size else nan,
            "episode_len_mean": float(eval_lengths.mean()) if eval_lengths.size else nan,
            "episodes_this_iter": int(noisy_lengths.size + eval_returns.size),
            "episodes_total": self._episodes_total,
            "policy_reward_mean": {},
            "custom_metrics": {},
            "sampler_perf": {},
            "timesteps_this_iter": int(noisy_lengths.sum() + eval_lengths.sum()),
            "info": info,
        }

    def _sync_filters(self) -> None:
        """Merges what every remote worker's filter saw this iteration into the local (master) filter, then
        sends the merged statistics back (FilterManager.synchronize of the reference code)."""
        local = self.workers.local_worker()
        if not self.workers.remote_workers():
            local.filter.clear_buffer()
            return
        states = self.workers.call("get_filter_state", [(True,)] * self.workers.num_healthy_workers)
        for state in states:
            local.filter.apply_changes(filter_from_state(state), with_buffer=False)
        master = local.filter.to_state()
        self.workers.call("sync_filter", [(master,)] * self.workers.num_healthy_workers)

    def _evaluate(self) -> dict:
        local = self.workers.local_worker()
        returns, lengths = [], []
        for _ in range(self.config["evaluation_num_episodes"]):
            ret, length = local.rollout(update_filter=False)
            returns.append(ret)
            lengths.append(length)
        return {
            "episode_reward_mean": float(np.mean(returns)),
            "episode_reward_max": float(np.max(returns)),
            "episode_reward_min": float(np.min(returns)),
            "episode_len_mean": float(np.mean(lengths)),
            "episodes_this_iter": len(returns),
        }

    # --- acting ---------------------------------------------------------------------------------------------
    def compute_action(
        self,
        observation: Any,
        state: list | None = None,
        prev_action: Any = None,
        prev_reward: Any = None,
        info: Any = None,
        policy_id: str = DEFAULT_POLICY_ID,
        full_fetch: bool = False,
        explore: bool | None = None,
    ) -> Any:
        """The (deterministic) action for one raw observation, filtered without updating the filter."""
        local = self.workers.local_worker()
        x = local.filter(local.preprocessor.transform(observation)[None], update=False)
        action = local.policy.compute_actions(x)[0]
        if isinstance(action, np.integer):
            action = int(action)
        if state is not None or full_fetch:
            return action, [], {}
        return action

    def get_policy(self, policy_id: str = DEFAULT_POLICY_ID):
        return self.policy

    def get_weights(self, policies: list[str] | None = None) -> dict:
        return {DEFAULT_POLICY_ID: {"theta": self.policy.get_flat_weights()}}

    def set_weights(self, weights: dict) -> None:
        self.policy.set_flat_weights(weights[DEFAULT_POLICY_ID]["theta"])

    # --- checkpoints -----------------------------------------------------------------------------------------
    def _state(self) -> dict:
        """What a checkpoint holds besides the config: weights, master filter, optimizer moments, reward list."""
        opt = self._flat_optimizer
        return {
            "policies": {DEFAULT_POLICY_ID: {"weights": {"theta": self.policy.get_flat_weights()}}},
            "filters": {DEFAULT_POLICY_ID: self.workers.local_worker().filter.to_state()},
            "optimizer": {k: copy.deepcopy(getattr(opt, k)) for k in ("t", "m", "v") if hasattr(opt, k)},
            "trainer": {"reward_list": list(self._reward_list)},
        }

    def save_to_path(self, path: str) -> str:
        manifest = {
            "library": "relayrl",
            "library_version": relayrl.__version__,
            "trainer": self._name,
            **env_reference(self.config["env"]),
            "spaces": {DEFAULT_POLICY_ID: self._spaces()},
            "counters": {
                "iteration": self.iteration,
                "timesteps_total": self._timesteps_total,
                "time_total_s": self._time_total,
                "episodes_total": self._episodes_total,
            },
            "host": platform.node(),
        }
        return ckpt.write_checkpoint(path, manifest, {"config": _portable_config(self.config), **self._state()})

    def restore(self, checkpoint_path: str) -> None:
        """All or nothing, as Trainer.restore: everything is checked against this trainer before any of it is
        applied; a CheckpointError names the field and leaves the trainer as it was."""
        manifest, state = ckpt.read_checkpoint(checkpoint_path)
        prefix = f"checkpoint {checkpoint_path}: "
        if manifest["trainer"] != self._name:
            raise ckpt.CheckpointError(
                f"checkpoint {checkpoint_path} was written by trainer {manifest['trainer']!r}, not {self._name!r}"
            )
        if manifest.get("spaces", {}).get(DEFAULT_POLICY_ID) != self._spaces():
            raise ckpt.CheckpointError(
                f"checkpoint {checkpoint_path} has spaces {manifest.get('spaces')}, this trainer {self._spaces()}"
            )
        counters = check_counters(prefix, manifest)
        live = self._state()
        allow_missing = manifest["format_version"] < 2
        for section in ("policies", "optimizer", "trainer"):
            if not isinstance(state.get(section), dict):
                raise ckpt.CheckpointError(f"{prefix}its state has no {section!r} object")
            if section != "trainer":  # the reward list's length varies: checked below
                ckpt.check_structure(state[section], live[section], section, prefix, allow_missing)
        local = self.workers.local_worker()
        filt = (state.get("filters") or {}).get(DEFAULT_POLICY_ID)
        if filt is not None:
            try:
                local.filter.check_state(filt, f"filters.{DEFAULT_POLICY_ID}")
            except ValueError as e:
                raise ckpt.CheckpointError(f"{prefix}{e}") from e
        rewards = state["trainer"].get("reward_list", [])
        if not isinstance(rewards, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in rewards
        ):
            raise ckpt.CheckpointError(f"{prefix}field 'trainer.reward_list' must hold numbers")
        # Everything checked: apply.
        self.policy.set_flat_weights(np.asarray(state["policies"][DEFAULT_POLICY_ID]["weights"]["theta"], np.float32))
        if filt is not None:
            local.filter.set_state(filt)
        opt = self._flat_optimizer
        for k, v in state["optimizer"].items():
            setattr(opt, k, np.asarray(v, dtype=np.float32) if k != "t" else int(v))
        self.iteration = int(counters["iteration"])
        self._timesteps_total = int(counters["timesteps_total"])
        self._time_total = float(counters["time_total_s"])
        self._episodes_total = int(counters["episodes_total"])
        self._reward_list = [float(x) for x in rewards]
        if self.workers.remote_workers():
            self.workers.call("sync_filter", [(local.filter.to_state(),)] * len(self.workers.remote_workers()))

    def _spaces(self) -> dict:
        local = self.workers.local_worker()
        return {
            "observation_space": repr(local.preprocessor.observation_space),
            "action_space": repr(local.env.action_space),
        }

    def stop(self) -> None:
        self.workers.stop()


def _portable_config(config: dict) -> dict:
    out = copy.copy(config)
    if not isinstance(out.get("env"), str):
        out["env"] = None
    return out

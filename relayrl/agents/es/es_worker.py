"""PerturbationWorker: runs antithetic perturbed rollouts for ES and ARS (locally, or as a Ray actor).

    worker = PerturbationWorker(env_creator, config, noise, worker_index=1)
    result = worker.do_rollouts(theta, num_pairs=8)
    # result["noise_indices"][i] -> eps_i = noise[idx : idx + num_params]
    # result["noisy_returns"][i] = (R(theta + sigma eps_i), R(theta - sigma eps_i))

Only offsets into the shared noise table travel back, never the perturbations (Salimans et al. 2017, sec. 2.1).
With probability ``eval_prob`` per pair the worker also runs one unperturbed evaluation episode (the
"episode_reward_mean" the trainers report). Observations go through the preprocessor and the observation filter
(updated by every rollout; the driver merges and redistributes the filters after each iteration).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from relayrl.agents.es.policies import make_policy
from relayrl.env.registry import EnvContext, make_env
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.evaluation.worker_set import WorkerSet, _actor_key
from relayrl.models.catalog import ModelCatalog
from relayrl.utils.es_utils import SharedNoiseTable
from relayrl.utils.filters import filter_from_state, get_filter


class PerturbationWorker:
    def __init__(self, env_creator: Callable, config: dict, noise: np.ndarray, worker_index: int = 0):
        self.config = config
        self.env = make_env(env_creator, EnvContext.from_config(config, worker_index), config.get("env"))
        self.preprocessor = ModelCatalog.get_preprocessor_for_space(self.env.observation_space, config.get("model"))
        self.filter = get_filter(config["observation_filter"], self.preprocessor.shape)
        seed = config.get("seed")
        self.seed = None if seed is None else seed + 1000 * worker_index
        self.policy = make_policy(
            config["policy_type"],
            int(np.prod(self.preprocessor.shape)),
            self.env.action_space,
            config.get("model", {}),
            seed=seed,
        )
        self.noise = SharedNoiseTable(noise)
        self.rng = np.random.default_rng(self.seed)
        self._episodes = 0
        horizon = config.get("horizon")
        self.timestep_limit = horizon if horizon else None

    def do_rollouts(self, theta: np.ndarray, num_pairs: int, min_steps: int = 0) -> dict[str, np.ndarray]:
        """Antithetic pairs until ``num_pairs`` pairs and ``min_steps`` env steps are done (plus evaluations)."""
        theta = np.asarray(theta, dtype=np.float32)
        sigma, n = self.config["noise_stdev"], self.policy.num_params
        offset = float(self.config.get("offset", 0.0))
        indices, returns, lengths, eval_returns, eval_lengths = [], [], [], [], []
        steps = 0
        while len(indices) < num_pairs or steps < min_steps:
            if self.rng.random() < self.config["eval_prob"]:
                self.policy.set_flat_weights(theta)
                ret, length = self.rollout()
                eval_returns.append(ret)
                eval_lengths.append(length)
                continue
            index = self.noise.sample_index(self.rng, n)
            perturbation = sigma * self.noise.get(index, n)
            self.policy.set_flat_weights(theta + perturbation)
            ret_pos, len_pos = self.rollout(offset)
            self.policy.set_flat_weights(theta - perturbation)
            ret_neg, len_neg = self.rollout(offset)
            indices.append(index)
            returns.append((ret_pos, ret_neg))
            lengths.append((len_pos, len_neg))
            steps += len_pos + len_neg
        return {
            "noise_indices": np.asarray(indices, dtype=np.int64),
            "noisy_returns": np.asarray(returns, dtype=np.float64).reshape(-1, 2),
            "noisy_lengths": np.asarray(lengths, dtype=np.int64).reshape(-1, 2),
            "eval_returns": np.asarray(eval_returns, dtype=np.float64),
            "eval_lengths": np.asarray(eval_lengths, dtype=np.int64),
        }

    def rollout(self, offset: float = 0.0, update_filter: bool = True) -> tuple[float, int]:
        """One episode with the current weights; returns (sum of rewards - offset per step, length)."""
        seed = None
        if self.seed is not None:
            seed = int(self.seed * 100_003 + self._episodes) % 2**31
        self._episodes += 1
        obs, _ = self.env.reset(seed=seed)
        policy, prep, filt = self.policy, self.preprocessor, self.filter
        discrete = policy._discrete
        total, length = 0.0, 0
        limit = self.timestep_limit
        while True:
            x = filt(prep.transform(obs)[None], update=update_filter)
            action = policy.compute_actions(x)[0]
            obs, reward, terminated, truncated, _ = self.env.step(int(action) if discrete else action)
            total += float(reward) - offset
            length += 1
            if terminated or truncated or (limit is not None and length >= limit):
                return total, length

    # --- filters (states, not objects, cross the process boundary) -----------------------------------------
    def get_filter_state(self, flush_after: bool = False) -> dict:
        state = self.filter.to_state()
        if flush_after:
            self.filter.clear_buffer()
        return state

    def sync_filter(self, state: dict) -> None:
        self.filter.sync(filter_from_state(state))

    def apply(self, func: Callable, *args: Any) -> Any:
        """Runs ``func(self, *args)`` here (on the actor when remote)."""
        return func(self, *args)

    def ping(self) -> str:
        return "pong"

    node = RolloutWorker.node  # where this worker runs, for the messages about a failed worker

    def stop(self) -> None:
        self.env.close()


class PerturbationWorkerSet(WorkerSet):
    """The local PerturbationWorker (holding the trainer's policy and master filter) and the remote ones.

    Failures are WorkerSet's, with the same keys: a remote worker that dies while ``call`` waits on it is
    replaced (``recreate_failed_workers``: same resources, the master filter; theta travels with every call) and
    the replacement runs the dead worker's share again, or dropped (``ignore_worker_failures``) with its share of
    the round, or named in a WorkerFailureError (neither). The dead worker's rollouts never arrive, so they are
    never counted.
    """

    def __init__(self, env_creator: Callable, config: dict, noise_ref: Any, local_noise: np.ndarray, num_workers: int):
        super().__init__(env_creator, None, config, _setup=False)
        self._noise_ref = noise_ref  # every actor maps this one copy of the noise table in the object store
        self._local_worker = PerturbationWorker(env_creator, config, local_noise, worker_index=0)
        self.add_workers(num_workers)

    def call(self, method: str, args_per_worker: list[tuple]) -> list:
        """``method(*args_per_worker[i])`` on the i-th remote worker (all in parallel; workers past the list's
        end get nothing), or every call on the local worker when there are no remote workers. Returns the
        results that arrived, in worker order."""
        if not self._remote_workers:
            self.check_healthy_workers()
            return [getattr(self._local_worker, method)(*args) for args in args_per_worker]
        return [
            r
            for _, r in self.gather(
                lambda w, i: getattr(w, method).remote(*args_per_worker[i]) if i < len(args_per_worker) else None
            )
        ]

    def sync_weights(self, global_vars: dict | None = None, policies: list[str] | None = None) -> None:
        """Nothing to send: theta travels with every ``do_rollouts`` call."""

    # --- WorkerSet's construction hooks, for PerturbationWorker actors -------------------------------------------
    def _remote_class(self) -> Any:
        import ray

        return ray.remote(
            num_cpus=self._config.get("num_cpus_per_worker", 1),
            resources=self._config.get("custom_resources_per_worker") or None,
        )(PerturbationWorker)

    def _make_remote(self, cls: Any, index: int) -> Any:
        worker = cls.remote(self._env_creator, self._config, self._noise_ref, index)
        self._indices[_actor_key(worker)] = index
        return worker

    def _resource_request(self) -> str:
        parts = {
            "CPU": self._config.get("num_cpus_per_worker", 1),
            **(self._config.get("custom_resources_per_worker") or {}),
        }
        return ", ".join(f"{v:g} {k}" for k, v in parts.items() if v)

    def _load_current_state(self, worker: Any) -> None:
        """A replacement starts from the master filter."""
        import ray

        ray.get(worker.sync_filter.remote(self._local_worker.filter.to_state()))

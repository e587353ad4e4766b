"""The sampling loop: step all sub-envs together, one batched policy call per step, cut into trajectories.

Per step the loop appends whole ``[num_envs, ...]`` arrays to column lists; at the end of a fragment of
``fragment_length`` steps it stacks them into ``[T, num_envs, ...]`` and cuts each env's column at episode
ends. Each piece (one episode, or the part of one inside this fragment) goes through
``policy.postprocess_trajectory`` and the pieces are concatenated into the SampleBatch that ``sample()`` returns.

    sampler = SyncSampler(vector_env, policy, preprocessor, obs_filter, fragment_length=200)
    batch = sampler.sample()          # >= fragment_length * num_envs steps
    finished = sampler.get_metrics()  # RolloutMetrics of the episodes that ended since the last call
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from relayrl.env.vector_env import VectorEnv
from relayrl.evaluation.episode import Episode
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.models.preprocessors import Preprocessor
from relayrl.policy.policy import Policy
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, SampleBatch
from relayrl.utils.filters import Filter

SB = SampleBatch


class SyncSampler:
    def __init__(
        self,
        env: VectorEnv,
        policy: Policy,
        preprocessor: Preprocessor,
        obs_filter: Filter,
        *,
        fragment_length: int = 200,
        batch_mode: str = "truncate_episodes",
        horizon: int | None = None,
        clip_rewards: bool | float | None = None,
        clip_actions: bool = True,
        callbacks: dict | None = None,
        policy_id: str = DEFAULT_POLICY_ID,
        worker: Any = None,
        seed: int | None = None,
    ):
        self.env = env
        self.policy = policy
        self.policy_id = policy_id
        self.preprocessor = preprocessor
        self.obs_filter = obs_filter
        self.fragment_length = fragment_length
        self.complete_episodes = batch_mode == "complete_episodes"
        self.horizon = horizon
        self.clip_rewards = clip_rewards
        self.callbacks = {k: v for k, v in (callbacks or {}).items() if v is not None}
        self.worker = worker
        self.num_envs = env.num_envs
        self._rng = random.Random(seed)
        self._action_fn = _env_action_fn(env.action_space, clip_actions)
        self._metrics: list[RolloutMetrics] = []
        self._carry: list[list[dict]] = [[] for _ in range(self.num_envs)]
        self._unroll_id = 0
        self._perf = {"env_wait": 0.0, "inference": 0.0, "processing": 0.0, "postprocessing": 0.0, "steps": 0}
        self._initial_state = policy.get_initial_state()
        self._seed = seed
        self._obs: np.ndarray | None = None
        self._ended: dict[int, Episode] = {}

    # --- public -------------------------------------------------------------------------------------------
    def sample(self) -> SampleBatch:
        # The sampler's matrix products are small: one BLAS thread avoids waking (and spinning) BLAS worker
        # threads that would compete with torch's learner threads for the cores.
        with single_blas_thread():
            return self._sample()

    def _sample(self) -> SampleBatch:
        if self._obs is None:
            self._start()
        target = self.fragment_length * self.num_envs
        pieces: list[SampleBatch] = []
        count = 0
        while count < target:
            for batch in self._run_fragment():
                pieces.append(batch)
                count += batch.count
        batch = SampleBatch.concat_samples(pieces)
        if "on_sample_end" in self.callbacks:
            self.callbacks["on_sample_end"]({"worker": self.worker, "samples": batch})
        return batch

    def get_metrics(self) -> list[RolloutMetrics]:
        out, self._metrics = self._metrics, []
        return out

    def perf_stats(self) -> dict:
        steps = max(1, self._perf["steps"])
        return {
            "mean_env_wait_ms": 1000 * self._perf["env_wait"] / steps,
            "mean_inference_ms": 1000 * self._perf["inference"] / steps,
            "mean_processing_ms": 1000 * self._perf["processing"] / steps,
            "mean_postprocessing_ms": 1000 * self._perf["postprocessing"] / steps,
        }

    # --- the loop -------------------------------------------------------------------------------------------
    def _start(self) -> None:
        seeds = [None if self._seed is None else self._seed + i for i in range(self.num_envs)]
        raw = self.env.vector_reset(seeds)
        self._obs = self._process_obs(raw)
        self._episodes = [self._new_episode(i) for i in range(self.num_envs)]
        self._eps_ids = np.array([e.episode_id for e in self._episodes], dtype=np.int64)
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._state = [np.stack([s] * self.num_envs) for s in self._initial_state]
        for i, ep in enumerate(self._episodes):
            ep._last_obs = raw[i]
            self._callback("on_episode_start", ep)

    def _run_fragment(self) -> list[SampleBatch]:
        """Steps every sub-env ``fragment_length`` times; returns the postprocessed trajectory pieces."""
        cols: dict[str, list] = {k: [] for k in (SB.OBS, SB.ACTIONS, SB.REWARDS, SB.TERMINATEDS, SB.TRUNCATEDS,
                                                 SB.NEXT_OBS, SB.INFOS, SB.EPS_ID, SB.T)}
        extra_cols: dict[str, list] = {}
        state_cols: list[list] = [[] for _ in self._state]
        policy, env, episodes, horizon = self.policy, self.env, self._episodes, self.horizon
        perf = self._perf
        on_step = self.callbacks.get("on_episode_step")
        for _ in range(self.fragment_length):
            t0 = time.perf_counter()
            obs = self._obs
            actions, state_out, extra = policy.compute_actions(
                obs, self._state or None, episodes=episodes
            )
            actions = np.asarray(actions)
            t1 = time.perf_counter()
            raw_obs, rewards, terms, truncs, infos = env.vector_step(self._action_fn(actions))
            t2 = time.perf_counter()
            rewards = np.asarray(rewards, dtype=np.float64)
            terms = np.asarray(terms, dtype=bool)
            truncs = np.asarray(truncs, dtype=bool)
            self._t += 1
            if horizon is not None:
                truncs |= (self._t >= horizon) & ~terms
            new_obs = self._process_obs(raw_obs)
            cols[SB.OBS].append(obs)
            cols[SB.ACTIONS].append(actions)
            cols[SB.REWARDS].append(self._clip(rewards))
            cols[SB.TERMINATEDS].append(terms)
            cols[SB.TRUNCATEDS].append(truncs)
            cols[SB.NEXT_OBS].append(new_obs)
            cols[SB.INFOS].append(infos)
            cols[SB.EPS_ID].append(self._eps_ids.copy())
            cols[SB.T].append(self._t - 1)
            for k, v in extra.items():
                extra_cols.setdefault(k, []).append(v)
            for col, s in zip(state_cols, self._state):
                col.append(s)
            for ep, r in zip(episodes, rewards.tolist()):
                ep.length += 1
                ep.total_reward += r
            if self.callbacks:
                for i, ep in enumerate(episodes):
                    ep._last_obs, ep._last_info, ep._last_action, ep._last_reward = (
                        raw_obs[i], infos[i], actions[i], rewards[i])
                    if on_step:
                        on_step({"env": env, "episode": ep, "worker": self.worker})
            if state_out:
                self._state = [np.array(s) for s in state_out]
            done = terms | truncs
            if done.any():
                new_obs = new_obs.copy()
                for i in np.flatnonzero(done):
                    new_obs[i] = self._end_episode(i)
            self._obs = new_obs
            perf["inference"] += t1 - t0
            perf["env_wait"] += t2 - t1
            perf["processing"] += time.perf_counter() - t2
            perf["steps"] += 1
        t3 = time.perf_counter()
        pieces = self._cut(cols, extra_cols, state_cols)
        perf["postprocessing"] += time.perf_counter() - t3
        return pieces

    def _end_episode(self, i: int) -> np.ndarray:
        """Records the finished episode of sub-env ``i``, resets it and returns its first processed obs."""
        ep = self._episodes[i]
        self._ended[ep.episode_id] = ep
        self._callback("on_episode_end", ep)
        self._metrics.append(
            RolloutMetrics(ep.length, float(ep.total_reward), {(0, self.policy_id): float(ep.total_reward)},
                           dict(ep.custom_metrics), {})
        )
        raw, _ = self.env.reset_at(i)
        ep = self._episodes[i] = self._new_episode(i)
        ep._last_obs = raw
        self._eps_ids[i] = ep.episode_id
        self._t[i] = 0
        for s, init in zip(self._state, self._initial_state):
            s[i] = init
        self._callback("on_episode_start", ep)
        return self._process_obs([raw])[0]

    # --- cutting a fragment into trajectories -----------------------------------------------------------------
    def _cut(self, cols: dict, extra_cols: dict, state_cols: list) -> list[SampleBatch]:
        stacked = {k: np.stack(v) for k, v in cols.items() if k != SB.INFOS}
        infos = np.empty((self.fragment_length, self.num_envs), dtype=object)
        for t, row in enumerate(cols[SB.INFOS]):
            infos[t, :] = row
        stacked[SB.INFOS] = infos
        stacked.update({k: np.stack(v) for k, v in extra_cols.items()})
        for j, col in enumerate(state_cols):
            stacked[f"state_in_{j}"] = np.stack(col)
        done = stacked[SB.TERMINATEDS] | stacked[SB.TRUNCATEDS]
        pieces = []
        for i in range(self.num_envs):
            ends = (np.flatnonzero(done[:, i]) + 1).tolist()
            starts = [0] + ends
            if not ends or ends[-1] != self.fragment_length:
                ends.append(self.fragment_length)
            for a, b in zip(starts, ends):
                piece = {k: v[a:b, i] for k, v in stacked.items()}
                if self._carry[i]:
                    piece = {k: np.concatenate([c[k] for c in self._carry[i]] + [piece[k]]) for k in piece}
                    self._carry[i] = []
                finished = bool(done[b - 1, i])
                if not finished and self.complete_episodes:
                    self._carry[i].append(piece)
                    continue
                pieces.append(piece)
        batches = self._postprocess(pieces)
        self._ended.clear()
        return batches

    def _postprocess(self, pieces: list[dict]) -> list[SampleBatch]:
        batches, episodes = [], []
        for piece in pieces:
            n = len(piece[SB.REWARDS])
            piece[SB.DONES] = piece[SB.TERMINATEDS] | piece[SB.TRUNCATEDS]
            piece[SB.AGENT_INDEX] = np.zeros(n, dtype=np.int64)
            piece[SB.UNROLL_ID] = np.full(n, self._unroll_id, dtype=np.int64)
            self._unroll_id += 1
            batches.append(SampleBatch(piece))
            episodes.append(self._episode_by_id(int(piece[SB.EPS_ID][0])))
        callback = self.callbacks.get("on_postprocess_traj")
        pre = [b.copy() for b in batches] if callback else None
        batched = getattr(self.policy, "postprocess_trajectories", None)
        if batched is not None:
            posts = batched(batches, episodes)
        else:  # a duck-typed policy with only the per-trajectory hook
            posts = [self.policy.postprocess_trajectory(b, None, ep) for b, ep in zip(batches, episodes)]
        if callback:
            for ep, before, after in zip(episodes, pre, posts):
                callback({"episode": ep, "agent_id": 0, "pre_batch": (self.policy, before), "post_batch": after,
                          "all_pre_batches": {0: (self.policy, before)}})
        return posts

    def _episode_by_id(self, eps_id: int) -> Episode | None:
        for ep in self._episodes:
            if ep.episode_id == eps_id:
                return ep
        return self._ended.get(eps_id)

    # --- helpers ----------------------------------------------------------------------------------------------
    def _process_obs(self, raw: list) -> np.ndarray:
        obs = self.preprocessor.transform_batch(raw)
        return self.obs_filter(obs) if not self.obs_filter.is_identity else obs

    def _clip(self, rewards: np.ndarray) -> np.ndarray:
        if self.clip_rewards is True:
            return np.sign(rewards)
        if self.clip_rewards:
            return np.clip(rewards, -self.clip_rewards, self.clip_rewards)
        return rewards

    def _new_episode(self, i: int) -> Episode:
        return Episode(i, self._rng)

    def _callback(self, name: str, episode: Episode) -> None:
        cb = self.callbacks.get(name)
        if cb is not None:
            cb({"env": self.env, "episode": episode, "worker": self.worker,
                "policy": {self.policy_id: self.policy}})


_BLAS_CONTROLLER = None


def single_blas_thread():
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _env_action_fn(action_space: gym.Space, clip: bool) -> Callable[[np.ndarray], Any]:
    """How a batch of policy actions becomes per-env actions: Python ints for Discrete (fast to check),
    rows clipped to the bounds for Box when ``clip_actions`` (the batch keeps the unclipped action)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return lambda a: a.tolist()
    if isinstance(action_space, gym.spaces.Box) and clip:
        low, high = action_space.low, action_space.high
        return lambda a: np.clip(a, low, high).astype(action_space.dtype, copy=False)
    if isinstance(action_space, gym.spaces.Box):
        return lambda a: a.astype(action_space.dtype, copy=False)
    return lambda a: a

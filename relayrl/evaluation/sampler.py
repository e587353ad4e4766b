"""The sampling loop: step all sub-envs together, one batched policy call per step, cut into trajectories.

Per step the loop appends whole ``[num_envs, ...]`` rows to column lists; at the end of a fragment of
``fragment_length`` steps it stacks them into ``[T, num_envs, ...]`` and lays them out env by env: each env's
rows in time order, a new trajectory (a new ``unroll_id``) after each episode end and at each env's first row.
One call of ``policy.postprocess_fragment`` postprocesses all of them, and that is the batch ``sample()`` returns.

    sampler = SyncSampler(vector_env, policy, preprocessor, obs_filter, fragment_length=200)
    batch = sampler.sample()          # >= fragment_length * num_envs steps
    finished = sampler.get_metrics()  # RolloutMetrics of the episodes that ended since the last call

Episode lengths and returns are kept per env and written to the ``Episode`` objects when an episode ends, at
the end of each fragment, and at every step when there are callbacks.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import operator
import random
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from relayrl.env.env_checks import EnvChecker, describe_env
from relayrl.env.vector_env import CheckedVectorEnv, VectorEnv
from relayrl.evaluation.episode import Episode
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.postprocessing import previous_step_columns
from relayrl.models.preprocessors import Preprocessor
from relayrl.policy.policy import Policy
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, SampleBatch
from relayrl.utils.blas import single_blas_thread
from relayrl.utils.filters import Filter

SB = SampleBatch


class SamplerStats:
    """What both samplers report: the episodes finished since the last call, and the mean time per step of each
    phase in ``self._perf`` (``steps`` counts the steps)."""

    _metrics: list
    _perf: dict

    def get_metrics(self) -> list[RolloutMetrics]:
        out, self._metrics = self._metrics, []
        return out

    def perf_stats(self) -> dict:
        steps = max(1, self._perf["steps"])
        return {f"mean_{k}_ms": 1000 * v / steps for k, v in self._perf.items() if k != "steps"}


class SyncSampler(SamplerStats):
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
        lock: Any = None,
        check_env: bool | int = False,
        check_nan: bool = False,
        env_name: str | None = None,
    ):
        """``lock``: held around each call of the policy (the per-step ``compute_actions`` and the fragment's
        postprocessing). ``sample_async`` passes the worker's model lock, since the learner runs the same model in
        another thread; the synchronous sampler has none and pays nothing."""
        # check_env / check_nan (config keys of the same names): the env's results are checked for each sub-env's
        # first check_env steps (True: every step) by a CheckedVectorEnv, which then steps at full speed; check_nan
        # scans each fragment's rewards and observations for NaN/inf in a few numpy passes (_scan_fragment).
        self._checker = None
        if check_env or check_nan:
            subs = env.get_sub_environments()
            self._checker = EnvChecker(
                env.observation_space,
                describe_env(subs[0] if subs else env, env_name),
                getattr(worker, "worker_index", 0),
                check_nan,
            )
        if check_env:
            env = CheckedVectorEnv(env, self._checker, None if check_env is True else int(check_env))
        self._check_nan = check_nan
        self._steps_done = 0  # steps of each sub-env before the current fragment
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
        self._carry: list[dict | None] = [None] * self.num_envs  # complete_episodes: rows of unfinished episodes
        self._unroll_id = 0
        self._last_step: tuple | None = None  # the previous fragment's last action and reward (prev_* columns)
        self._perf = {"env_wait": 0.0, "inference": 0.0, "processing": 0.0, "postprocessing": 0.0, "steps": 0}
        self._initial_state = policy.get_initial_state()
        # A recurrent model that reads the previous action and reward (model.lstm_use_prev_action_reward) gets them
        # per step, and the batch records them (prev_actions / prev_rewards); zeros at each episode's start.
        self._want_prev = wants_prev_action_reward(policy)
        self._seed = seed
        self._lock = lock
        self._obs: np.ndarray | None = None
        self._by_id: dict[int, Episode] = {}  # running episodes and those that ended in this fragment
        # Columns the policy can fill in for the whole fragment in postprocess_fragment may be left out per step.
        self._act_kwargs = deferred_kwargs(policy)

    # --- public -------------------------------------------------------------------------------------------
    def sample(self) -> SampleBatch:
        if self._obs is None:
            self._start()
        target = self.fragment_length * self.num_envs
        pieces: list[SampleBatch] = []
        count = 0
        while count < target:
            batch = self._run_fragment()
            if batch is not None:
                pieces.append(batch)
                count += batch.count
        batch = SampleBatch.concat_samples(pieces)
        if "on_sample_end" in self.callbacks:
            self.callbacks["on_sample_end"]({"worker": self.worker, "samples": batch})
        return batch

    # --- the loop -------------------------------------------------------------------------------------------
    def _start(self) -> None:
        n = self.num_envs
        seeds = [None if self._seed is None else self._seed + i for i in range(n)]
        raw = self.env.vector_reset(seeds)
        self._obs = self._process_obs(raw)
        self._episodes = [self._new_episode(i) for i in range(n)]
        self._eps_ids = np.array([e.episode_id for e in self._episodes], dtype=np.int64)
        self._t = np.zeros(n, dtype=np.int64)  # steps so far in each env's episode
        self._return_before = np.zeros(n)  # each episode's return before row _return_row of this fragment
        self._return_row = [0] * n
        self._state = [np.stack([s] * n) for s in self._initial_state]
        if self._want_prev:
            space = self.policy.action_space
            shape, dtype = (() if isinstance(space, gym.spaces.Discrete) else space.shape), np.float32
            self._prev = (np.zeros((n, *shape), np.int64 if not shape else dtype), np.zeros(n, np.float32))
        for i, ep in enumerate(self._episodes):
            ep._last_obs = raw[i]
            self._callback("on_episode_start", ep)

    def _run_fragment(self) -> SampleBatch | None:
        """Steps every sub-env ``fragment_length`` times; returns the postprocessed batch (None when
        complete_episodes holds every row back because no episode ended)."""
        obs_rows, act_rows, rew_rows, next_rows, info_rows, eps_rows, t_rows = ([] for _ in range(7))
        ends: list[tuple] = []  # (step, terminateds, truncateds) of the steps where an episode ended
        extra_rows: dict[str, list] = {}
        state_rows: list[list] = [[] for _ in self._state]
        policy, env, action_fn, horizon = self.policy, self.env, self._action_fn, self.horizon
        compute_actions = policy.compute_actions if self._lock is None else _holding(self._lock, policy.compute_actions)
        if self._want_prev:
            compute_actions = _with_prev(self, compute_actions)
        act_kwargs = self._act_kwargs
        exact_episodes = bool(self.callbacks)
        clock = time.perf_counter
        inference = env_wait = processing = 0.0
        obs = self._obs
        # The per-step matrix products are small: one BLAS thread, as waking more costs more than it saves. The
        # value pass over the whole fragment (in _assemble) runs with the process's BLAS threads: all cores in
        # the driver, the worker's CPU share in a Ray actor (Ray sets OMP_NUM_THREADS).
        with single_blas_thread():
            for step in range(self.fragment_length):
                t0 = clock()
                actions, state_out, extra = compute_actions(
                    obs, self._state or None, episodes=self._episodes, **act_kwargs
                )
                actions = np.asarray(actions)
                t1 = clock()
                raw_obs, rewards, terms, truncs, infos = env.vector_step(action_fn(actions))
                t2 = clock()
                if horizon is not None:
                    over = (self._t + 1 >= horizon) & ~np.asarray(terms, dtype=bool)
                    truncs = np.asarray(truncs, dtype=bool) | over
                obs_rows.append(obs)
                act_rows.append(actions)
                rew_rows.append(rewards)
                info_rows.append(infos)
                eps_rows.append(self._eps_ids)
                t_rows.append(self._t)
                self._t = self._t + 1  # a new array: the row just stored must not change
                for k, v in extra.items():
                    extra_rows.setdefault(k, []).append(v)
                for rows, s in zip(state_rows, self._state):
                    rows.append(s)
                if self._want_prev:
                    extra_rows.setdefault(SB.PREV_ACTIONS, []).append(self._prev[0])
                    extra_rows.setdefault(SB.PREV_REWARDS, []).append(self._prev[1])
                    self._prev = (actions, clip_rewards(np.asarray(rewards, dtype=np.float32), self.clip_rewards))
                if state_out:
                    self._state = [np.array(s) for s in state_out]
                if exact_episodes:
                    self._step_callbacks(raw_obs, rewards, infos, actions)
                if True in terms or True in truncs:
                    ends.append((step, terms, truncs))
                    next_obs, obs = self._end_episodes(step, raw_obs, terms, truncs, rew_rows)
                else:
                    next_obs = obs = self._process_obs(raw_obs)
                next_rows.append(next_obs)
                inference += t1 - t0
                env_wait += t2 - t1
                processing += clock() - t2
        self._obs = obs
        t3 = clock()
        batch = self._assemble(
            obs_rows, act_rows, rew_rows, ends, next_rows, info_rows, eps_rows, t_rows, extra_rows, state_rows
        )
        perf = self._perf
        perf["inference"] += inference
        perf["env_wait"] += env_wait
        perf["processing"] += processing
        perf["postprocessing"] += clock() - t3
        perf["steps"] += self.fragment_length
        return batch

    def _step_callbacks(self, raw_obs, rewards, infos, actions) -> None:
        on_step = self.callbacks.get("on_episode_step")
        for i, ep in enumerate(self._episodes):
            ep.length = int(self._t[i])
            ep.total_reward += rewards[i]
            ep._last_obs, ep._last_info, ep._last_action, ep._last_reward = raw_obs[i], infos[i], actions[i], rewards[i]
            if on_step:
                on_step({"env": self.env, "episode": ep, "worker": self.worker})

    def _end_episodes(self, step: int, raw_obs: list, terms, truncs, rew_rows: list) -> tuple[np.ndarray, np.ndarray]:
        """Records the episodes that ended at this step and resets their envs. Returns the processed next
        observations and the observations the policy sees next (the finished envs' reset observations)."""
        done = [i for i in range(self.num_envs) if terms[i] or truncs[i]]
        self._eps_ids = self._eps_ids.copy()  # the stored row keeps the finished episodes' ids
        reset_obs = []
        for i in done:
            ep = self._episodes[i]
            ep.length = int(self._t[i])
            ep.total_reward = float(
                self._return_before[i] + sum(map(operator.itemgetter(i), rew_rows[self._return_row[i] :]))
            )
            self._callback("on_episode_end", ep)
            self._metrics.append(
                RolloutMetrics(
                    ep.length, ep.total_reward, {(0, self.policy_id): ep.total_reward}, dict(ep.custom_metrics), {}
                )
            )
            raw, _ = self.env.reset_at(i)
            ep = self._episodes[i] = self._new_episode(i)
            ep._last_obs = raw
            self._eps_ids[i] = ep.episode_id
            self._t[i] = 0
            self._return_before[i], self._return_row[i] = 0.0, step + 1
            for s, init in zip(self._state, self._initial_state):
                s[i] = init
            if self._want_prev:
                self._prev = (self._prev[0].copy(), self._prev[1].copy())  # the stored rows keep theirs
                self._prev[0][i], self._prev[1][i] = 0, 0.0
            self._callback("on_episode_start", ep)
            reset_obs.append(raw)
        processed = self._process_obs(list(raw_obs) + reset_obs)  # one filter call for both
        next_obs = processed[: self.num_envs]
        obs = next_obs.copy()
        for j, i in enumerate(done, self.num_envs):  # a loop: fancy indexing costs more for a few rows
            obs[i] = processed[j]
        return next_obs, obs

    # --- from rows to a batch ---------------------------------------------------------------------------------
    def _assemble(
        self, obs_rows, act_rows, rew_rows, ends, next_rows, info_rows, eps_rows, t_rows, extra_rows, state_rows
    ) -> SampleBatch | None:
        T, n = self.fragment_length, self.num_envs
        rewards = np.array(rew_rows, dtype=np.float64)
        self._close_fragment_returns(rewards)
        terminateds, truncateds = np.zeros((T, n), dtype=bool), np.zeros((T, n), dtype=bool)
        for step, terms, truncs in ends:
            terminateds[step], truncateds[step] = terms, truncs
        cols = {
            SB.OBS: _stack(obs_rows),
            SB.ACTIONS: _stack(act_rows),
            SB.REWARDS: clip_rewards(rewards, self.clip_rewards),
            SB.TERMINATEDS: terminateds,
            SB.TRUNCATEDS: truncateds,
            SB.NEXT_OBS: _stack(next_rows),
            SB.EPS_ID: _stack(eps_rows),
            SB.T: _stack(t_rows),
            SB.INFOS: np.fromiter(itertools.chain.from_iterable(info_rows), dtype=object, count=T * n).reshape(T, n),
        }
        cols.update((k, _stack(v)) for k, v in extra_rows.items())
        if SB.PREV_ACTIONS not in cols:  # the policy does not take them; RLlib's batches hold them all the same
            prev = previous_step_columns(cols[SB.ACTIONS], cols[SB.REWARDS], cols[SB.T], self._last_step)
            cols[SB.PREV_ACTIONS], cols[SB.PREV_REWARDS], self._last_step = prev
        cols.update((f"state_in_{j}", _stack(rows)) for j, rows in enumerate(state_rows))
        if self._check_nan:
            self._scan_fragment(rewards, cols)
        self._steps_done += T
        if self.complete_episodes:
            flat, lengths = self._hold_back_unfinished(cols)
            if not flat:
                return None
        else:  # env-major: env 0's T rows, then env 1's, ...
            flat = {k: v.swapaxes(0, 1).reshape((T * n,) + v.shape[2:]) for k, v in cols.items()}
            lengths = [T] * n
        dones = flat[SB.TERMINATEDS] | flat[SB.TRUNCATEDS]
        starts = np.zeros(len(dones), dtype=bool)
        starts[1:] = dones[:-1]
        offsets = np.cumsum([0] + lengths[:-1])
        starts[offsets[offsets < len(dones)]] = True  # each env's rows start a trajectory
        flat[SB.DONES] = dones
        flat[SB.AGENT_INDEX] = np.zeros(len(dones), dtype=np.int64)
        flat[SB.UNROLL_ID] = self._unroll_id + np.cumsum(starts) - 1
        self._unroll_id = int(flat[SB.UNROLL_ID][-1]) + 1
        episodes = [self._by_id.get(e) for e in flat[SB.EPS_ID][starts].tolist()]
        with contextlib.nullcontext() if self._lock is None else self._lock:
            batch = self._postprocess(SampleBatch(flat), episodes)
        self._by_id = {ep.episode_id: ep for ep in self._episodes}
        return batch

    def _scan_fragment(self, rewards: np.ndarray, cols: dict) -> None:
        """check_nan: raises EnvCheckError for the first NaN/inf reward (before clipping) or observation of the
        fragment; a sum per column in the common case, no per-step work. The observations an env's step()
        returned are in NEXT_OBS; those in OBS that are not are the reset observations."""
        check, first, t = self._checker.fragment, self._steps_done, cols[SB.T]
        check("reward", rewards, first, t)
        check("observation", cols[SB.NEXT_OBS], first, t)
        check("reset observation", cols[SB.OBS], first, t)

    def _close_fragment_returns(self, rewards: np.ndarray) -> None:
        """Folds this fragment's rewards of the running episodes into their returns."""
        rows = np.arange(len(rewards))[:, None] >= np.asarray(self._return_row)[None, :]
        self._return_before += np.where(rows, rewards, 0.0).sum(axis=0)
        self._return_row = [0] * self.num_envs
        for i, ep in enumerate(self._episodes):
            ep.length, ep.total_reward = int(self._t[i]), float(self._return_before[i])

    def _hold_back_unfinished(self, cols: dict) -> tuple[dict, list[int]]:
        """complete_episodes: each env's rows up to its last episode end go out (after the rows held back
        from earlier fragments); the rest wait for their episode to end."""
        done = cols[SB.TERMINATEDS] | cols[SB.TRUNCATEDS]
        parts: dict[str, list] = {k: [] for k in cols}
        lengths = []
        for i in range(self.num_envs):
            ends = np.flatnonzero(done[:, i])
            stop = int(ends[-1]) + 1 if len(ends) else 0
            carry = self._carry[i]
            rest = {k: v[stop:, i] for k, v in cols.items()} if stop < self.fragment_length else None
            if stop:
                for k, v in cols.items():
                    if carry is not None:
                        parts[k].append(carry[k])
                    parts[k].append(v[:stop, i])
                lengths.append(stop + (len(carry[SB.REWARDS]) if carry is not None else 0))
                carry = None
            else:
                lengths.append(0)
            if carry is not None and rest is not None:
                rest = {k: np.concatenate([carry[k], rest[k]]) for k in rest}
            self._carry[i] = rest if rest is not None else carry
        if not sum(lengths):
            return {}, lengths
        return {k: np.concatenate(p) for k, p in parts.items()}, lengths

    def _postprocess(self, batch: SampleBatch, episodes: list) -> SampleBatch:
        callback = self.callbacks.get("on_postprocess_traj")
        pre = batch.copy() if callback else None
        post_fragment = getattr(self.policy, "postprocess_fragment", None)
        if post_fragment is not None:
            post = post_fragment(batch, episodes)
        else:  # a duck-typed policy with only the per-trajectory hook
            post = SampleBatch.concat_samples(
                [self.policy.postprocess_trajectory(b, None, ep) for b, ep in zip(batch.split_trajectories(), episodes)]
            )
        if callback:
            for ep, before, after in zip(episodes, pre.split_trajectories(), post.split_trajectories()):
                callback(
                    {
                        "episode": ep,
                        "agent_id": 0,
                        "pre_batch": (self.policy, before),
                        "post_batch": after,
                        "all_pre_batches": {0: (self.policy, before)},
                    }
                )
        return post

    # --- helpers ----------------------------------------------------------------------------------------------
    def _process_obs(self, raw: list) -> np.ndarray:
        obs = self.preprocessor.transform_batch(raw)
        return self.obs_filter(obs) if not self.obs_filter.is_identity else obs

    def _new_episode(self, i: int) -> Episode:
        ep = Episode(i, self._rng)
        self._by_id[ep.episode_id] = ep
        return ep

    def _callback(self, name: str, episode: Episode) -> None:
        cb = self.callbacks.get(name)
        if cb is not None:
            cb({"env": self.env, "episode": episode, "worker": self.worker, "policy": {self.policy_id: self.policy}})


def clip_rewards(rewards: np.ndarray, clip: bool | float | None) -> np.ndarray:
    """``clip_rewards``: True gives the rewards' signs, a number clips them to [-clip, clip], else unchanged."""
    if clip is True:
        return np.sign(rewards)
    if clip:
        return np.clip(rewards, -clip, clip)
    return rewards


def wants_prev_action_reward(policy: Any) -> bool:
    """Whether the policy's model reads the previous action and reward (``model.lstm_use_prev_action_reward``)."""
    model = (getattr(policy, "config", None) or {}).get("model") or {}
    return bool(model.get("lstm_use_prev_action_reward"))


def _with_prev(sampler: "SyncSampler", compute_actions: Callable) -> Callable:
    """``compute_actions`` given the sampler's current previous actions and rewards."""

    def call(*args: Any, **kwargs: Any) -> Any:
        prev_actions, prev_rewards = sampler._prev
        return compute_actions(*args, prev_action_batch=prev_actions, prev_reward_batch=prev_rewards, **kwargs)

    return call


def deferred_kwargs(policy: Any) -> dict:
    """``compute_actions``' ``deferred=True`` where the policy takes it: the actions without the per-step
    log-probabilities and value estimates (``postprocess_fragment`` computes them for a whole fragment)."""
    return {"deferred": True} if _accepts_keyword(policy.compute_actions, "deferred") else {}


def _accepts_keyword(fn: Callable, name: str) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _holding(lock: Any, fn: Callable) -> Callable:
    """``fn`` with ``lock`` held during each call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return fn(*args, **kwargs)

    return call


def _stack(rows: list) -> np.ndarray:
    """``np.stack(rows)`` of per-step rows (each ``[num_envs, ...]``), 4x faster for arrays of one shape."""
    first = rows[0]
    if isinstance(first, np.ndarray) and first.ndim:
        try:
            out = np.concatenate(rows)
        except ValueError:
            return np.stack(rows)
        if out.shape[0] == len(rows) * first.shape[0]:
            return out.reshape((len(rows),) + first.shape)
    return np.stack(rows)


def _env_action_fn(action_space: gym.Space, clip: bool) -> Callable[[np.ndarray], Any]:
    """How a batch of policy actions becomes per-env actions: numpy integer scalars for Discrete (what
    ``action_space.sample()`` gives, and faster for Gymnasium to check than Python ints), rows clipped to the
    bounds for Box when ``clip_actions`` (the batch keeps the unclipped action). Tuple / Dict spaces: each flat
    row becomes the env's structure (relayrl.models.spaces); only these spaces pay a per-row cost."""
    if isinstance(action_space, gym.spaces.Discrete):
        return lambda a: list(a) if a.dtype.kind in "iu" else a.tolist()
    if isinstance(action_space, (gym.spaces.Tuple, gym.spaces.Dict)):
        from relayrl.models.spaces import action_unflattener

        to_env = action_unflattener(action_space, clip)
        return lambda a: [to_env(row) for row in a]
    if isinstance(action_space, gym.spaces.Box) and clip:
        low, high = action_space.low, action_space.high
        return lambda a: np.clip(a, low, high).astype(action_space.dtype, copy=False)
    if isinstance(action_space, gym.spaces.Box):
        return lambda a: a.astype(action_space.dtype, copy=False)
    return lambda a: a

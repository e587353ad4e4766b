"""The multi-agent sampler: many episodes and agents, one batched policy call per policy per step.

It drives a PollingEnv (``relayrl.env.base_env``: N MultiAgentEnv sub-envs, or an external env) and keeps one
``AgentTrajectory`` per (episode, agent). Each step::

    poll()                      the slots with news: observations, rewards, ends
    bookkeeping                 rewards onto each agent's open step; a new observation closes it; ends close all
    per policy                  one preprocess + filter call, one compute_actions call for all its acting agents
    send_actions()              per slot, the actions of the agents asked to act

A fragment is ``fragment_length * num_envs`` env steps (``count_steps_by: "env_steps"``: one per slot and poll) or
agent steps (``"agent_steps"``: one per agent action). Then every trajectory hands out its closed rows
(``truncate_episodes``) or only finished episodes do (``complete_episodes``); each policy postprocesses its
trajectories in one ``postprocess_fragment`` call (its value pass over all of them; ``other_agent_batches`` gives
each trajectory the same episode's other agents' rows), and ``sample()`` returns a MultiAgentBatch.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np

from relayrl.env.base_env import ALL, PollingEnv
from relayrl.env.env_checks import EnvCheckError
from relayrl.evaluation.agent_collector import AgentTrajectory
from relayrl.evaluation.episode import MultiAgentEpisode
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.policy_specs import mapping_caller
from relayrl.evaluation.sampler import (
    SamplerStats,
    _accepts_keyword,
    _env_action_fn,
    _holding,
    wants_prev_action_reward,
)
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch
from relayrl.utils.blas import single_blas_thread

SB = SampleBatch


class MultiAgentSampler(SamplerStats):
    """Args: ``env`` a PollingEnv; ``policies`` policy id -> Policy; ``preprocessors`` / ``filters`` per policy id;
    ``policy_mapping_fn`` agent id (, episode) -> policy id; the rest as SyncSampler (``count_steps_by``:
    ``"env_steps"`` or ``"agent_steps"``)."""

    def __init__(
        self,
        env: PollingEnv,
        policies: dict,
        preprocessors: dict,
        filters: dict,
        policy_mapping_fn: Callable,
        *,
        fragment_length: int = 200,
        batch_mode: str = "truncate_episodes",
        count_steps_by: str = "env_steps",
        horizon: int | None = None,
        clip_rewards: bool | float | None = None,
        clip_actions: bool = True,
        callbacks: dict | None = None,
        worker: Any = None,
        seed: int | None = None,
        lock: Any = None,
        check_nan: bool = False,
        env_name: str | None = None,
    ):
        if count_steps_by not in ("env_steps", "agent_steps"):
            raise ValueError(f"count_steps_by must be 'env_steps' or 'agent_steps', got {count_steps_by!r}")
        self.env = env
        self.policies = policies
        self.preprocessors = preprocessors
        self.filters = filters
        self.worker = worker
        self._mapping = mapping_caller(policy_mapping_fn, worker)
        self.fragment_length = fragment_length
        self.complete_episodes = batch_mode == "complete_episodes"
        self.count_agent_steps = count_steps_by == "agent_steps"
        self.horizon = horizon if getattr(env, "can_reset", True) else None
        self.clip_rewards = clip_rewards
        self.callbacks = {k: v for k, v in (callbacks or {}).items() if v is not None}
        self.num_envs = max(1, len(env.get_sub_environments()))
        self.env_name = env_name
        self._check_nan = check_nan
        self._rng = random.Random(seed)
        self._lock = lock
        self._action_fns = {pid: _env_action_fn(p.action_space, clip_actions) for pid, p in policies.items()}
        self._initial = {pid: p.get_initial_state() for pid, p in policies.items()}
        self._prev = {pid: wants_prev_action_reward(p) for pid, p in policies.items()}
        self._zero_action = {pid: _zero_action(p.action_space) for pid, p in policies.items()}
        self._act_kwargs = {
            pid: {"deferred": True} if _accepts_keyword(p.compute_actions, "deferred") else {}
            for pid, p in policies.items()
        }
        self._episodes: dict[Any, MultiAgentEpisode] = {}  # slot -> running episode
        self._trajs: dict[Any, dict[Any, AgentTrajectory]] = {}  # slot -> agent id -> trajectory
        self._finished: list[tuple[MultiAgentEpisode, dict]] = []  # ended episodes whose rows are not out yet
        self._finished_count = 0  # complete_episodes: the steps the finished episodes hold
        self._metrics: list[RolloutMetrics] = []
        self._unroll_id = 0
        self._perf = {"env_wait": 0.0, "inference": 0.0, "processing": 0.0, "postprocessing": 0.0, "steps": 0}

    # --- public -------------------------------------------------------------------------------------------
    def sample(self) -> MultiAgentBatch:
        target = self.fragment_length * self.num_envs
        pieces: list[MultiAgentBatch] = []
        count = 0
        while count < target:
            batch = self._run_fragment(target - count)
            if batch is not None:
                pieces.append(batch)
                count += batch.count
        batch = MultiAgentBatch.concat_samples(pieces)
        if "on_sample_end" in self.callbacks:
            self.callbacks["on_sample_end"]({"worker": self.worker, "samples": batch})
        return batch

    # --- the loop -------------------------------------------------------------------------------------------
    def _run_fragment(self, target: int) -> MultiAgentBatch | None:
        """Steps until ``target`` steps are counted (truncate_episodes) or finished episodes hold them
        (complete_episodes); returns the postprocessed batch of the rows handed out."""
        env_steps = agent_steps = 0
        clock, perf = time.perf_counter, self._perf
        with single_blas_thread():
            while True:
                t0 = clock()
                obs, rewards, terms, truncs, infos, off_policy = self.env.poll()
                t1 = clock()
                acting, n_env = self._bookkeeping(obs, rewards, terms, truncs, infos)
                t2 = clock()
                to_send, n_agent = self._act(acting, off_policy)
                t3 = clock()
                if to_send:
                    self.env.send_actions(to_send)
                perf["env_wait"] += t1 - t0 + clock() - t3
                perf["processing"] += t2 - t1
                perf["inference"] += t3 - t2
                perf["steps"] += n_env
                env_steps += n_env
                agent_steps += n_agent
                if self.complete_episodes:
                    if self._finished_count >= target:
                        break
                elif (agent_steps if self.count_agent_steps else env_steps) >= target:
                    break
        t4 = clock()
        if self.complete_episodes:
            count, self._finished_count = self._finished_count, 0
        else:
            count = agent_steps if self.count_agent_steps else env_steps
        batch = self._hand_out(count)
        perf["postprocessing"] += clock() - t4
        return batch

    def _bookkeeping(self, obs: dict, rewards: dict, terms: dict, truncs: dict, infos: dict) -> tuple[dict, int]:
        """Applies one poll's results; returns the agents that act next (per policy, ``[(slot, agent id,
        trajectory)]``) and the number of env steps the poll completed."""
        seen: dict[str, list] = {}  # policy id -> [(slot, agent, trajectory, raw obs, info, end flags or None)]
        ending: list[tuple] = []
        env_steps = 0
        exact = bool(self.callbacks)
        for slot, agent_obs in obs.items():
            episode = self._episodes.get(slot)
            if episode is None:
                episode = self._start_episode(slot)
            else:
                env_steps += 1
                episode.length += 1
            trajs = self._trajs[slot]
            slot_terms, slot_truncs, slot_infos = terms[slot], truncs[slot], infos.get(slot) or _EMPTY
            slot_rewards = rewards.get(slot)
            if slot_rewards:
                for agent, r in slot_rewards.items():
                    traj = trajs.get(agent)
                    if traj is None:  # a reward before the agent's first observation (an external env)
                        traj = trajs[agent] = self._new_trajectory(agent, episode)
                    traj.add_reward(r)
                    episode.total_reward += r
            over = bool(slot_terms.get(ALL) or slot_truncs.get(ALL))
            if not over and self.horizon is not None and episode.length >= self.horizon:
                over, slot_truncs = True, {**slot_truncs, ALL: True}
            someone_ends = over or True in slot_terms.values() or True in slot_truncs.values()
            for agent, raw in agent_obs.items():
                traj = trajs.get(agent)
                if traj is None:
                    traj = trajs[agent] = self._new_trajectory(agent, episode)
                flags = _end_flags(agent, slot_terms, slot_truncs, over) if someone_ends else None
                rows = seen.get(traj.policy_id)
                if rows is None:
                    rows = seen[traj.policy_id] = []
                rows.append((slot, agent, traj, raw, slot_infos.get(agent), flags))
            if someone_ends:
                for agent in (*slot_terms, *slot_truncs):  # agents that left without a final observation
                    traj = trajs.get(agent)
                    if agent != ALL and traj is not None and agent not in agent_obs and not traj.ended:
                        flags = _end_flags(agent, slot_terms, slot_truncs, over)
                        if flags is not None:
                            traj.end(None, slot_infos.get(agent), *flags)
            if exact:
                self._update_episode(episode, agent_obs, slot_rewards, slot_infos)
            if over:
                ending.append((slot, *_end_flags(ALL, slot_terms, slot_truncs, True)))
            elif "on_episode_step" in self.callbacks:
                self.callbacks["on_episode_step"]({"env": self.env, "episode": episode, "worker": self.worker})
        acting = self._process(seen)
        if ending:
            restarted: dict[str, list] = {}
            for slot, terminated, truncated in ending:
                self._end_episode(slot, terminated, truncated, restarted)
            for pid, rows in self._process(restarted).items():
                acting.setdefault(pid, []).extend(rows)
        return acting, env_steps

    def _process(self, seen: dict) -> dict:
        """Preprocesses and filters each policy's new observations in one call; each closes its agent's open
        step; the agents that did not end open their next step and act."""
        acting: dict[str, list] = {}
        for pid, rows in seen.items():
            processed = self.preprocessors[pid].transform_batch([r[3] for r in rows])
            f = self.filters[pid]
            if not f.is_identity:
                processed = f(processed)
            keep = []
            record_prev = self._prev[pid]
            for (slot, agent, traj, _, info, flags), o in zip(rows, processed):
                if flags is None:
                    traj.step(o, info, traj.episode.length, record_prev)
                    keep.append((slot, agent, traj))
                else:
                    traj.end(o, info, *flags)
            if keep:
                acting[pid] = keep
        return acting

    def _act(self, acting: dict, off_policy: dict) -> tuple[dict, int]:
        """One compute_actions call per policy; returns each slot's actions (for its agents without an off-policy
        action) and the number of agents that acted."""
        to_send: dict[Any, dict] = {}
        n = 0
        for pid, rows in acting.items():
            policy = self.policies[pid]
            trajs = [r[2] for r in rows]
            obs = np.array([traj.last_obs for traj in trajs])
            state = [np.stack(s) for s in zip(*(traj.state for traj in trajs))] if self._initial[pid] else None
            kwargs = self._act_kwargs[pid]
            if self._prev[pid]:
                kwargs = dict(kwargs)
                kwargs["prev_action_batch"] = np.stack([traj.prev_actions[-1] for traj in trajs])
                prev_rewards = np.asarray([traj.prev_rewards[-1] for traj in trajs], dtype=np.float32)
                kwargs["prev_reward_batch"] = self._clip(prev_rewards)  # as the batch's rewards column
            compute = policy.compute_actions if self._lock is None else _holding(self._lock, policy.compute_actions)
            actions, state_out, extra = compute(obs, state, episodes=[traj.episode for traj in trajs], **kwargs)
            actions = np.asarray(actions)
            env_actions = self._action_fns[pid](actions)
            if off_policy:
                actions, env_actions = self._logged_actions(rows, actions, env_actions, off_policy)
                if SB.ACTION_LOGP in extra and any(a is None for a in env_actions):
                    extra = {**extra, SB.ACTION_LOGP: _logp(policy, extra, actions)}
            if self.callbacks:
                for (_, agent, traj), action in zip(rows, actions):
                    traj.episode._slot(agent)[1] = action
            for i, (slot, agent, traj) in enumerate(rows):
                traj.set_action(actions[i], extra, i, state_out)
                if env_actions[i] is not None:
                    sent = to_send.get(slot)
                    if sent is None:
                        sent = to_send[slot] = {}
                    sent[agent] = env_actions[i]
            n += len(rows)
        return to_send, n

    def _logged_actions(self, rows: list, actions: np.ndarray, env_actions: list, off_policy: dict) -> tuple:
        """The env's own actions (``ExternalEnv.log_action``) replace the policy's in the trajectory; nothing is
        sent for them."""
        actions, env_actions = actions.copy(), list(env_actions)
        for i, (slot, agent, _) in enumerate(rows):
            logged = off_policy.get(slot, _EMPTY).get(agent)
            if logged is not None:
                actions[i] = np.asarray(logged, dtype=actions.dtype)
                env_actions[i] = None
        return actions, env_actions

    def _update_episode(self, episode: MultiAgentEpisode, agent_obs: dict, rewards: dict | None, infos: dict) -> None:
        """With callbacks: the episode's per-agent last observation, info, reward and returns, every step."""
        for agent, raw in agent_obs.items():
            last = episode._slot(agent)
            last[0], last[2] = raw, infos.get(agent)
        for agent, r in (rewards or _EMPTY).items():
            episode._slot(agent)[3] = r
            episode.agent_rewards[(agent, episode.policy_for(agent))] += r

    # --- episodes -------------------------------------------------------------------------------------------------
    def _start_episode(self, slot: Any) -> MultiAgentEpisode:
        episode = self._episodes[slot] = MultiAgentEpisode(slot, self._rng, self._mapping)
        self._trajs[slot] = {}
        if "on_episode_start" in self.callbacks:
            self.callbacks["on_episode_start"](
                {"env": self.env, "episode": episode, "worker": self.worker, "policy": self.policies}
            )
        return episode

    def _new_trajectory(self, agent: Any, episode: MultiAgentEpisode) -> AgentTrajectory:
        pid = episode.policy_for(agent)
        if pid not in self.policies:
            raise ValueError(
                f"policy_mapping_fn mapped agent {agent!r} to {pid!r}, which is not one of the policies "
                f"{sorted(self.policies)} (multiagent.policies)"
            )
        traj = AgentTrajectory(agent, pid, episode.agent_index(agent), episode, self._initial[pid])
        traj.prev_action = self._zero_action[pid]
        return traj

    def _end_episode(self, slot: Any, terminated: bool, truncated: bool, restarted: dict) -> None:
        """Closes the open steps of the slot's episode, records its metrics, and starts the slot's next episode
        when the env resets it (its first observations go into ``restarted``, per policy)."""
        episode, trajs = self._episodes.pop(slot), self._trajs.pop(slot)
        for traj in trajs.values():
            if not traj.ended:
                traj.end(None, None, terminated, truncated)
        episode.agent_rewards.clear()
        for agent, traj in trajs.items():
            episode.agent_rewards[(agent, traj.policy_id)] = traj.reward_total
        if "on_episode_end" in self.callbacks:
            self.callbacks["on_episode_end"]({"env": self.env, "episode": episode, "worker": self.worker})
        self._metrics.append(
            RolloutMetrics(
                episode.length,
                float(episode.total_reward),
                dict(episode.agent_rewards),
                dict(episode.custom_metrics),
                {},
            )
        )
        self._finished.append((episode, trajs))
        if self.complete_episodes and self.env.training_enabled(slot):
            self._finished_count += (
                sum(len(t.actions) for t in trajs.values()) if self.count_agent_steps else episode.length
            )
        reset = self.env.try_reset(slot)
        if reset is None:
            return
        obs, infos = reset
        episode = self._start_episode(slot)
        new = self._trajs[slot]
        for agent, raw in obs.items():
            traj = new[agent] = self._new_trajectory(agent, episode)
            restarted.setdefault(traj.policy_id, []).append(
                (slot, agent, traj, raw, (infos or _EMPTY).get(agent), None)
            )
        if self.callbacks:
            self._update_episode(episode, obs, None, infos or _EMPTY)

    # --- from trajectories to a batch ----------------------------------------------------------------------------
    def _hand_out(self, count: int) -> MultiAgentBatch | None:
        """Cuts the trajectories (finished episodes; with truncate_episodes also the running ones) and
        postprocesses each policy's in one call. ``count``: the steps these rows count for. Returns None when
        nothing was handed out."""
        groups = list(self._finished)
        self._finished = []
        if not self.complete_episodes:
            groups += [(self._episodes[slot], trajs) for slot, trajs in self._trajs.items()]
        per_policy: dict[str, list] = {}
        for episode, trajs in groups:
            cut = {agent: (traj, traj.cut(episode.episode_id)) for agent, traj in trajs.items()}
            cut = {agent: tb for agent, tb in cut.items() if tb[1] is not None}
            if not self.env.training_enabled(episode.env_id):
                continue
            for agent, (traj, batch) in cut.items():
                others = {a: (self.policies[t.policy_id], b) for a, (t, b) in cut.items() if a != agent}
                per_policy.setdefault(traj.policy_id, []).append((agent, batch, episode, others))
        if not per_policy and self.complete_episodes:
            return None
        return MultiAgentBatch({pid: self._postprocess(pid, items) for pid, items in per_policy.items()}, count)

    def _postprocess(self, pid: str, items: list) -> SampleBatch:
        policy = self.policies[pid]
        for _, batch, _, _ in items:
            batch[SB.UNROLL_ID] = np.full(batch.count, self._unroll_id, dtype=np.int64)
            self._unroll_id += 1
        batch = SampleBatch.concat_samples([b for _, b, _, _ in items])
        batch[SB.REWARDS] = self._clip(batch[SB.REWARDS])
        if SB.PREV_REWARDS in batch:
            batch[SB.PREV_REWARDS] = self._clip(batch[SB.PREV_REWARDS])
        if self._check_nan:
            self._scan(pid, batch)
        episodes = [ep for _, _, ep, _ in items]
        others = [o for _, _, _, o in items]
        callback = self.callbacks.get("on_postprocess_traj")
        pre = batch.copy() if callback else None
        with _maybe(self._lock):
            if _accepts_keyword(getattr(policy, "postprocess_fragment", _none), "other_agent_batches"):
                post = policy.postprocess_fragment(batch, episodes, other_agent_batches=others)
            else:
                post = SampleBatch.concat_samples([policy.postprocess_trajectory(b, o, ep) for (_, b, ep, o) in items])
        if callback:
            for (agent, _, ep, o), before, after in zip(items, pre.split_trajectories(), post.split_trajectories()):
                callback(
                    {
                        "episode": ep,
                        "agent_id": agent,
                        "pre_batch": (policy, before),
                        "post_batch": after,
                        "all_pre_batches": {**o, agent: (policy, before)},
                    }
                )
        return post

    def _scan(self, pid: str, batch: SampleBatch) -> None:
        for col in (SB.REWARDS, SB.OBS, SB.NEXT_OBS):
            values = batch[col]
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                row = int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0])
                raise EnvCheckError(
                    f"env {self.env_name}, worker {getattr(self.worker, 'worker_index', 0)}: a non-finite value in "
                    f"{col!r} of agent {batch[SB.AGENT_INDEX][row]} (policy {pid!r}) at step {batch[SB.T][row]} "
                    f"of its episode: {values[row]}"
                )

    def _clip(self, rewards: np.ndarray) -> np.ndarray:
        if self.clip_rewards is True:
            return np.sign(rewards)
        if self.clip_rewards:
            return np.clip(rewards, -self.clip_rewards, self.clip_rewards)
        return rewards


_EMPTY: dict = {}


def _none(*args: Any, **kwargs: Any) -> None:
    return None


class _maybe:
    """``with lock`` when there is one."""

    def __init__(self, lock: Any):
        self.lock = lock

    def __enter__(self) -> None:
        if self.lock is not None:
            self.lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.lock is not None:
            self.lock.__exit__(*exc)


def _end_flags(agent: Any, terms: dict, truncs: dict, over: bool) -> tuple[bool, bool] | None:
    """``(terminated, truncated)`` of an agent (or ``"__all__"``) that ends now, None when it goes on: its own
    flags first, then the episode's (``over``: the episode ends, by truncation unless ``"__all__"`` terminated)."""
    if terms.get(agent):
        return True, False
    if truncs.get(agent):
        return False, True
    if not over:
        return None
    return (True, False) if terms.get(ALL) else (False, True)


def _logp(policy: Any, extra: dict, actions: np.ndarray) -> np.ndarray:
    """The log-probabilities of ``actions`` (some logged by the env) under the policy's action distribution."""
    dist_class, inputs = getattr(policy, "dist_class", None), extra.get(SB.ACTION_DIST_INPUTS)
    if dist_class is None or inputs is None:
        return extra[SB.ACTION_LOGP]
    import torch

    with torch.no_grad():
        dist = dist_class(torch.as_tensor(inputs), getattr(policy, "model", None))
        return dist.logp(torch.as_tensor(actions)).cpu().numpy()


def _zero_action(space: Any) -> np.ndarray:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return np.zeros((), dtype=np.int64)
    shape = getattr(space, "shape", None) or ()
    return np.zeros(shape, dtype=np.float32)

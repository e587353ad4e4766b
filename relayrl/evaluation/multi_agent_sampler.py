"""The multi-agent sampler: many episodes and agents, one batched policy call per policy per step.

It drives a PollingEnv (``relayrl.env.base_env``: N MultiAgentEnv sub-envs, or an external env) and keeps one
``AgentTrajectory`` per (episode, agent), whose rows are in a ``StepLog`` per policy. Each step::

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

import contextlib
import random
import time
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from relayrl.env.base_env import ALL, PollingEnv
from relayrl.env.env_checks import EnvCheckError
from relayrl.evaluation.agent_collector import (
    AgentTrajectory,
    StepLog,
    _logp,
    _rows,
    _zero_action,
    build_batch,
    carry_over,
    end_flags,
    logged_actions,
)
from relayrl.evaluation.episode import MultiAgentEpisode
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.policy_specs import mapping_caller
from relayrl.evaluation.sampler import (
    SamplerStats,
    _accepts_keyword,
    _env_action_fn,
    _holding,
    clip_rewards,
    deferred_kwargs,
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
        self._discrete = {pid: isinstance(p.action_space, gym.spaces.Discrete) for pid, p in policies.items()}
        self._act_kwargs = {pid: deferred_kwargs(p) for pid, p in policies.items()}
        self._takes_others = {  # policy id -> its postprocess_fragment takes other_agent_batches
            pid: hasattr(p, "postprocess_fragment") and _accepts_keyword(p.postprocess_fragment, "other_agent_batches")
            for pid, p in policies.items()
        }
        self._episodes: dict[Any, MultiAgentEpisode] = {}  # slot -> running episode
        self._trajs: dict[Any, dict[Any, AgentTrajectory]] = {}  # slot -> agent id -> trajectory
        self._logs = {pid: StepLog() for pid in policies}  # what each policy's calls produced, as arrays
        self._finished: list[tuple[MultiAgentEpisode, dict]] = []  # ended episodes whose rows are not out yet
        self._finished_count = 0  # complete_episodes: the steps the finished episodes hold
        self._metrics: list[RolloutMetrics] = []
        self._unroll_id = 0
        self._idle = False  # the last sample() ended early: an external env had no news for its idle_s
        self._perf = {"env_wait": 0.0, "inference": 0.0, "processing": 0.0, "postprocessing": 0.0, "steps": 0}

    # --- public -------------------------------------------------------------------------------------------
    def sample(self) -> MultiAgentBatch:
        target = self.fragment_length * self.num_envs
        pieces: list[MultiAgentBatch] = []
        count = 0
        self._idle = False
        while count < target and not self._idle:  # idle: an external env had no news for its idle_s
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
        env_wait = processing = inference = 0.0
        poll, send, bookkeeping, act = self.env.poll, self.env.send_actions, self._bookkeeping, self._act
        complete, by_agents = self.complete_episodes, self.count_agent_steps
        clock, perf = time.perf_counter, self._perf
        with single_blas_thread():
            t0 = clock()
            while True:
                obs, rewards, terms, truncs, infos, off_policy = poll()
                if not obs:  # no news for a while (an external env): hand out what is here
                    self._idle = True
                    env_wait += clock() - t0  # the wait is the env's, not the hand-out's
                    t0 = clock()
                    break
                t1 = clock()
                acting, n_env = bookkeeping(obs, rewards, terms, truncs, infos)
                t2 = clock()
                to_send, n_agent = act(acting, off_policy)
                t3 = clock()
                if to_send:
                    send(to_send)
                t4 = clock()
                env_wait += t1 - t0 + t4 - t3
                processing += t2 - t1
                inference += t3 - t2
                t0 = t4
                env_steps += n_env
                agent_steps += n_agent
                if complete:
                    if self._finished_count >= target:
                        break
                elif (agent_steps if by_agents else env_steps) >= target:
                    break
        perf["env_wait"] += env_wait
        perf["processing"] += processing
        perf["inference"] += inference
        perf["steps"] += env_steps
        if complete:
            count, self._finished_count = self._finished_count, 0
        else:
            count = agent_steps if by_agents else env_steps
        batch = self._hand_out(count)
        perf["postprocessing"] += clock() - t0
        return batch

    def _bookkeeping(self, obs: dict, rewards: dict, terms: dict, truncs: dict, infos: dict) -> tuple[dict, int]:
        """Applies one poll's results; returns the agents that act next (per policy, ``[rows, observations]``:
        ``(slot, agent id, trajectory, raw observation, info, None)`` rows and their processed observations as one
        array) and the number of env steps the poll completed."""
        seen: dict[str, list] = {}  # policy id -> [(slot, agent, trajectory, raw obs, info, end flags or None)]
        ending: list[tuple] = []
        env_steps = 0
        exact, step_callback = bool(self.callbacks), self.callbacks.get("on_episode_step")
        episodes, all_trajs, horizon = self._episodes, self._trajs, self.horizon
        ends = False  # someone ends in this poll
        for slot, agent_obs in obs.items():
            episode = episodes.get(slot)
            if episode is None:
                episode = self._start_episode(slot)
            else:
                env_steps += 1
                episode.length += 1
            trajs = all_trajs[slot]
            slot_terms, slot_truncs, slot_infos = terms[slot], truncs[slot], infos.get(slot) or _EMPTY
            slot_rewards = rewards.get(slot)
            if slot_rewards:
                for agent, r in slot_rewards.items():
                    traj = trajs.get(agent)
                    if traj is None:  # a reward before the agent's first observation (an external env)
                        traj = trajs[agent] = self._new_trajectory(agent, episode)
                    traj.reward_total += r  # onto the open step; before the first action only the total
                    if traj.open:
                        traj.rewards[-1] += r
                        traj.prev_reward += r
                    episode.total_reward += r
            over = bool(slot_terms.get(ALL) or slot_truncs.get(ALL))
            if not over and horizon is not None and episode.length >= horizon:
                over, slot_truncs = True, {**slot_truncs, ALL: True}
            someone_ends = over or True in slot_terms.values() or True in slot_truncs.values()
            flags = None
            for agent, raw in agent_obs.items():
                traj = trajs.get(agent)
                if traj is None:
                    traj = trajs[agent] = self._new_trajectory(agent, episode)
                if someone_ends:
                    flags = end_flags(agent, slot_terms, slot_truncs, over)
                rows = seen.get(traj.policy_id)
                if rows is None:
                    rows = seen[traj.policy_id] = []
                rows.append((slot, agent, traj, raw, slot_infos.get(agent), flags))
            if someone_ends:
                ends = True
                for agent in (*slot_terms, *slot_truncs):  # agents that left without a final observation
                    traj = trajs.get(agent)
                    if agent != ALL and traj is not None and agent not in agent_obs and not traj.ended:
                        flags = end_flags(agent, slot_terms, slot_truncs, over)
                        if flags is not None:
                            traj.end(None, slot_infos.get(agent), *flags)
            if exact:
                self._update_episode(episode, agent_obs, slot_rewards, slot_infos)
            if over:
                ending.append((slot, *end_flags(ALL, slot_terms, slot_truncs, True)))
            elif step_callback is not None:
                step_callback({"env": self.env, "episode": episode, "worker": self.worker})
        acting = self._process(seen, ends)
        if ending:
            restarted: dict[str, list] = {}
            for slot, terminated, truncated in ending:
                self._end_episode(slot, terminated, truncated, restarted)
            for pid, (rows, processed) in self._process(restarted, False).items():
                if pid in acting:
                    acting[pid][0] += rows
                    acting[pid][1] = np.concatenate([acting[pid][1], processed])
                else:
                    acting[pid] = [rows, processed]
        return acting, env_steps

    def _process(self, seen: dict, ends: bool) -> dict:
        """Preprocesses and filters each policy's new observations in one call; a final one ends its agent (only
        when ``ends``: some row has end flags); the agents that did not end act next (``{policy id: [rows,
        observations]}``, as ``_bookkeeping``)."""
        acting: dict[str, list] = {}
        for pid, rows in seen.items():
            processed = self.preprocessors[pid].transform_batch([r[3] for r in rows])
            f = self.filters[pid]
            if not f.is_identity:
                processed = f(processed)
            if not ends:
                acting[pid] = [rows, processed]
                continue
            keep, kept = [], []
            for row, o in zip(rows, processed):
                if row[5] is None:
                    keep.append(row)
                    kept.append(o)
                else:
                    row[2].end(o, row[4], *row[5])
            if len(keep) == len(rows):
                acting[pid] = [rows, processed]
            elif keep:
                acting[pid] = [keep, np.array(kept)]
        return acting

    def _act(self, acting: dict, off_policy: dict) -> tuple[dict, int]:
        """One compute_actions call per policy; each acting agent's step opens. Returns each slot's actions (for
        its agents without an off-policy action) and the number of agents that acted."""
        to_send: dict[Any, dict] = {}
        n = 0
        for pid, (rows, obs) in acting.items():
            columns, env_actions, state_out = self._compute(pid, rows, obs, off_policy)
            row = self._logs[pid].add(columns, len(rows))
            for (slot, agent, traj, _, info, _), env_action in zip(rows, env_actions):
                traj.act(row, info)
                row += 1
                if env_action is not None:
                    sent = to_send.get(slot)
                    if sent is None:
                        sent = to_send[slot] = {}
                    sent[agent] = env_action
            if state_out or self._prev[pid] or self.callbacks:
                carry_over(rows, columns[SB.ACTIONS], state_out, self._prev[pid], bool(self.callbacks))
            n += len(rows)
        return to_send, n

    def _compute(self, pid: str, rows: list, obs: np.ndarray, off_policy: dict) -> tuple[dict, Any, list]:
        """The policy's call for ``rows``: returns its StepLog columns (the actions as the trajectories keep
        them), the actions for the env (None where the env logged its own) and the RNN states out."""
        policy, trajs = self.policies[pid], [r[2] for r in rows]
        state = [np.stack(s) for s in zip(*(t.state for t in trajs))] if self._initial[pid] else None
        kwargs = self._act_kwargs[pid]
        if self._prev[pid]:
            prev_actions = np.stack([t.prev_action for t in trajs])
            prev_rewards = np.asarray([t.prev_reward for t in trajs], dtype=np.float32)  # logged unclipped
            clipped = clip_rewards(prev_rewards, self.clip_rewards)  # as _postprocess clips the batch's columns
            kwargs = {**kwargs, "prev_action_batch": prev_actions, "prev_reward_batch": clipped}
        compute = policy.compute_actions if self._lock is None else _holding(self._lock, policy.compute_actions)
        actions, state_out, extra = compute(obs, state, episodes=[t.episode for t in trajs], **kwargs)
        actions = np.asarray(actions)
        if self._discrete[pid] and actions.dtype.kind in "iu":
            env_actions = actions  # its numpy integer scalars, as _env_action_fn gives them
        else:
            env_actions = self._action_fns[pid](actions)
        if off_policy:
            actions, env_actions = logged_actions(rows, actions, env_actions, off_policy)
            if SB.ACTION_LOGP in extra and any(a is None for a in env_actions):
                extra = {**extra, SB.ACTION_LOGP: _logp(policy, extra, actions)}
        columns = {SB.OBS: obs, SB.ACTIONS: actions, **extra}
        if state:
            columns.update((f"state_in_{j}", s) for j, s in enumerate(state))
        if self._prev[pid]:
            columns[SB.PREV_ACTIONS], columns[SB.PREV_REWARDS] = prev_actions, prev_rewards
        return columns, env_actions, state_out

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
        rewards, custom = dict(episode.agent_rewards), dict(episode.custom_metrics)
        self._metrics.append(RolloutMetrics(episode.length, float(episode.total_reward), rewards, custom, {}))
        self._finished.append((episode, trajs))
        if self.complete_episodes and self.env.training_enabled(slot):
            self._finished_count += (
                sum(len(t.rows) for t in trajs.values()) if self.count_agent_steps else episode.length
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
        groups = self._finished
        self._finished = []
        if not self.complete_episodes:
            groups += [(self._episodes[slot], trajs) for slot, trajs in self._trajs.items()]
        per_policy: dict[str, list] = {}  # policy id -> [(agent, trajectory, episode, the episode's other cuts)]
        for episode, trajs in groups:
            cut = [(agent, traj) for agent, traj in trajs.items() if traj.closed]
            if not self.env.training_enabled(episode.env_id):
                for _, traj in cut:
                    traj.take()
                continue
            for agent, traj in cut:
                per_policy.setdefault(traj.policy_id, []).append((agent, traj, episode, cut))
        if not per_policy and self.complete_episodes:
            self._compact()
            return None
        raw, pieces = {}, {}  # policy id -> its rows; trajectory -> (policy id, first row, end row)
        for pid, items in per_policy.items():
            lengths = [traj.closed for _, traj, _, _ in items]
            batch = raw[pid] = build_batch([(traj, ep.episode_id) for _, traj, ep, _ in items], self._logs[pid])
            ids = np.arange(self._unroll_id, self._unroll_id + len(items), dtype=np.int64)
            batch[SB.UNROLL_ID] = np.repeat(ids, lengths)
            self._unroll_id += len(items)
            ends = np.cumsum(lengths).tolist()
            pieces.update((traj, (pid, end - n, end)) for (_, traj, _, _), n, end in zip(items, lengths, ends))
        self._compact()
        sliced: dict = {}

        def rows_of(traj: AgentTrajectory) -> SampleBatch:
            rows = sliced.get(traj)
            if rows is None:
                pid, start, end = pieces[traj]
                rows = sliced[traj] = _rows(raw[pid], start, end)
            return rows

        out = {}
        for pid, items in per_policy.items():  # each trajectory's others: its episode's other agents' rows
            others = [
                {a: (self.policies[t.policy_id], rows_of(t)) for a, t in cut if a != agent} for agent, *_, cut in items
            ]
            out[pid] = self._postprocess(pid, raw[pid], items, others, rows_of)
        return MultiAgentBatch(out, count)

    def _compact(self) -> None:
        """Each policy's StepLog keeps only the rows of the running episodes' trajectories."""
        held: dict[str, list] = {pid: [] for pid in self._logs}
        for trajs in self._trajs.values():
            for traj in trajs.values():
                held[traj.policy_id].append(traj)
        for pid, log in self._logs.items():
            log.compact(held[pid])

    def _postprocess(self, pid: str, raw: SampleBatch, items: list, others: list, rows_of: Callable) -> SampleBatch:
        """``raw``: the policy's rows (``items``' trajectories, in order); ``others``: per trajectory, the other
        agents' rows of its episode (``raw``'s columns stay as they are for them: a copy is postprocessed)."""
        policy = self.policies[pid]
        batch = raw.copy() if any(others) else SampleBatch(raw.data)  # raw's columns stay unclipped for others
        batch[SB.REWARDS] = clip_rewards(batch[SB.REWARDS], self.clip_rewards)
        if SB.PREV_REWARDS in batch:
            batch[SB.PREV_REWARDS] = clip_rewards(batch[SB.PREV_REWARDS], self.clip_rewards)
        if self._check_nan:
            self._scan(pid, batch)
        episodes = [ep for _, _, ep, _ in items]
        callback = self.callbacks.get("on_postprocess_traj")
        pre = batch.copy() if callback else None
        with contextlib.nullcontext() if self._lock is None else self._lock:
            if self._takes_others[pid]:
                post = policy.postprocess_fragment(batch, episodes, other_agent_batches=others)
            else:
                post = SampleBatch.concat_samples(
                    [policy.postprocess_trajectory(rows_of(t), o, ep) for (_, t, ep, _), o in zip(items, others)]
                )
        if callback:
            for (agent, _, ep, _), o, before, after in zip(
                items, others, pre.split_trajectories(), post.split_trajectories()
            ):
                pre_batches = {**o, agent: (policy, before)}
                info = {"episode": ep, "agent_id": agent, "pre_batch": (policy, before), "post_batch": after}
                callback({**info, "all_pre_batches": pre_batches})
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


_EMPTY: dict = {}

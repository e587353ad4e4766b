"""AgentTrajectory: the rows of one (episode, agent) pair, built step by step by the multi-agent sampler.

What a policy call produces for all its rows at once (observations, actions, per-step outputs, RNN states in,
previous actions and rewards) goes into the policy's ``StepLog`` as arrays, once per call; a trajectory keeps the
numbers of its rows there (``act``) and what arrives per agent: ``t``, the reward, the info that closes a step.
A step opens when the agent acts on an observation; rewards arrive until the agent's next observation closes it
(the next ``act`` call) or its end does (``end``: its own terminated / truncated flag, or the episode's). A step's
next observation is the next step's observation, so only the final one is stored. ``build_batch`` hands out the
closed rows of many trajectories of one policy as one SampleBatch (an open step stays for the next fragment);
``state`` is the RNN state the agent's next action starts from.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from relayrl.env.base_env import ALL
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch


class StepLog:
    """One policy's per-call columns (``add``: a dict of arrays of the call's rows); a row's number is its place
    in the calls so far. ``compact`` keeps only the rows trajectories still hold."""

    __slots__ = ("chunks", "size")

    def __init__(self):
        self.chunks: list[dict] = []
        self.size = 0

    def add(self, columns: dict, n: int) -> int:
        """Logs one call's ``n`` rows; returns the number of its first."""
        self.chunks.append(columns)
        self.size += n
        return self.size - n

    def columns(self) -> dict:
        """Every column over all rows logged."""
        if len(self.chunks) > 1:
            self.chunks = [{k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}]
        return self.chunks[0] if self.chunks else {}

    def compact(self, trajectories: list) -> None:
        """Keeps the rows of ``trajectories`` (those still holding rows), renumbered in their order."""
        held = [traj.rows for traj in trajectories if traj.rows]
        if not held:
            self.chunks, self.size = [], 0
            return
        keep = np.concatenate(held)
        self.chunks = [{k: v[keep] for k, v in self.columns().items()}]
        start = 0
        for rows in held:
            rows[:] = range(start, start + len(rows))
            start += len(rows)
        self.size = start


class AgentTrajectory:
    """The rows of one agent in one episode (``agent_id``, ``policy_id``, ``agent_index``: its order of first
    appearance in the episode, ``episode``); ``initial_state``: the policy's initial RNN state."""

    __slots__ = (
        "agent_id",
        "policy_id",
        "agent_index",
        "episode",
        "state",
        "prev_action",
        "prev_reward",
        "reward_total",
        "open",
        "closed",
        "final",
        "rows",
        "rewards",
        "t",
        "infos",
    )

    def __init__(self, agent_id: Any, policy_id: str, agent_index: int, episode: Any, initial_state: list):
        self.agent_id = agent_id
        self.policy_id = policy_id
        self.agent_index = agent_index
        self.episode = episode
        self.state = initial_state  # the RNN state the agent's next action starts from
        self.prev_action: Any = None
        self.prev_reward = 0.0
        self.reward_total = 0.0
        self.open = False  # an action was taken whose result (next observation or end) has not come yet
        self.closed = 0  # rows whose result is known
        # (final observation or None: the last row's, terminated, truncated) once the agent has ended
        self.final: tuple | None = None
        self.rows: list[int] = []  # the rows' numbers in the policy's StepLog
        self.rewards, self.t, self.infos = [], [], []

    @property
    def ended(self) -> bool:
        return self.final is not None

    def act(self, row: int, info: Any) -> None:
        """The agent acted on a new observation (row ``row`` of its policy's StepLog): closes the open step (not
        done) with ``info`` and opens the next."""
        if self.open:
            self.closed += 1
            self.infos.append(info)
        else:
            self.open = True
        self.rows.append(row)
        self.t.append(self.episode.length)
        self.rewards.append(0.0)

    def end(self, obs: Any, info: Any, terminated: bool, truncated: bool) -> None:
        """The agent's end (``obs`` None: no final observation; a truncated step bootstraps from the last one)."""
        if self.open:
            self.closed += 1
            self.infos.append(info)
            self.open = False
        self.final = (obs, terminated, truncated)

    def take(self) -> None:
        """Drops the closed rows (handed out, or not for training)."""
        n = self.closed
        self.rows, self.rewards, self.t = self.rows[n:], self.rewards[n:], self.t[n:]
        self.infos, self.closed = [], 0


def build_batch(cuts: list[tuple[AgentTrajectory, int]], log: StepLog) -> SampleBatch:
    """One SampleBatch of the closed rows of ``cuts`` (``(trajectory, episode id)``, each with closed rows, all of
    one policy, whose StepLog is ``log``), trajectory after trajectory; the rows leave the trajectories."""
    rows, next_rows, finals, rewards, t, infos, lengths, ends = [], [], [], [], [], [], [], []
    for traj, _ in cuts:
        n = traj.closed
        held = traj.rows
        rows += held[:n]
        next_rows += held[1 : n + 1]
        if n == len(held):  # ended here: the last row's next observation is the final one (else its own)
            if traj.final[0] is None:
                next_rows.append(held[n - 1])
            else:
                next_rows.append(~len(finals))
                finals.append(traj.final[0])
            ends.append(traj.final)
        else:
            ends.append(None)
        rewards += traj.rewards[:n]
        t += traj.t[:n]
        infos += traj.infos
        lengths.append(n)
        traj.take()
    columns = log.columns()
    obs = columns[SB.OBS]
    next_at = np.asarray(next_rows, dtype=np.int64)
    if finals:  # the final observations after the logged ones (~j: the j-th final)
        obs = np.concatenate([obs, np.array(finals)])
        next_at[next_at < 0] = log.size + ~next_at[next_at < 0]
    total = len(rows)
    at = np.asarray(rows, dtype=np.int64)
    terminateds, truncateds = np.zeros(total, dtype=bool), np.zeros(total, dtype=bool)
    last = np.cumsum(lengths) - 1
    for row, final in zip(last.tolist(), ends):
        if final is not None:
            terminateds[row], truncateds[row] = final[1], final[2]
    info_col = np.empty(total, dtype=object)
    info_col[:] = [{} if i is None else i for i in infos]
    cols = {
        SB.OBS: obs[at],
        SB.ACTIONS: columns[SB.ACTIONS][at],
        SB.REWARDS: np.asarray(rewards, dtype=np.float64),
        SB.TERMINATEDS: terminateds,
        SB.TRUNCATEDS: truncateds,
        SB.DONES: terminateds | truncateds,
        SB.NEXT_OBS: obs[next_at],
        SB.INFOS: info_col,
        SB.EPS_ID: np.repeat(np.array([eps for _, eps in cuts], dtype=np.int64), lengths),
        SB.T: np.asarray(t, dtype=np.int64),
        SB.AGENT_INDEX: np.repeat(np.array([c.agent_index for c, _ in cuts], dtype=np.int64), lengths),
    }
    cols.update((k, v[at]) for k, v in columns.items() if k not in (SB.OBS, SB.ACTIONS))
    return SampleBatch(cols)


def carry_over(rows: list, actions: np.ndarray, state_out: list, prev: bool, callbacks: bool) -> None:
    """What each agent's next step starts from: its RNN state out, its action as the previous one (``prev``);
    with ``callbacks`` its episode's last action."""
    for i, row in enumerate(rows):
        traj = row[2]
        if state_out:
            traj.state = [s[i] for s in state_out]
        if prev:
            traj.prev_action, traj.prev_reward = actions[i], 0.0
        if callbacks:
            traj.episode._slot(row[1])[1] = actions[i]


def end_flags(agent: Any, terms: dict, truncs: dict, over: bool) -> tuple[bool, bool] | None:
    """``(terminated, truncated)`` of an agent (or ``"__all__"``) that ends now, None when it goes on: its own
    flags first, then the episode's (``over``: the episode ends, by truncation unless ``"__all__"`` terminated)."""
    if terms.get(agent):
        return True, False
    if truncs.get(agent):
        return False, True
    if not over:
        return None
    return (True, False) if terms.get(ALL) else (False, True)


def logged_actions(rows: list, actions: np.ndarray, env_actions: list, off_policy: dict) -> tuple:
    """The env's own actions (``ExternalEnv.log_action``) replace the policy's in the trajectory; nothing is
    sent for them."""
    actions, env_actions = actions.copy(), list(env_actions)
    for i, (slot, agent, *_) in enumerate(rows):
        logged = off_policy.get(slot, {}).get(agent)
        if logged is not None:
            actions[i] = np.asarray(logged, dtype=actions.dtype)
            env_actions[i] = None
    return actions, env_actions


def _rows(batch: SampleBatch, start: int, end: int) -> SampleBatch:
    """``batch.slice(start, end)`` without its per-column checks (views of a consistent batch)."""
    rows = SampleBatch.__new__(SampleBatch)
    rows.data = {k: v[start:end] for k, v in batch.data.items()}
    rows.count = end - start
    return rows


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
    """A policy's previous action at an episode's start."""
    if isinstance(space, gym.spaces.Discrete):
        return np.zeros((), dtype=np.int64)
    shape = getattr(space, "shape", None) or ()
    return np.zeros(shape, dtype=np.float32)

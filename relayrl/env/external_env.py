"""ExternalEnv: episodes driven by a simulator from its own thread; the sampler answers with actions.

The simulator (a game server, another process behind ``relayrl.serving.PolicyServer``, anything) decides when
episodes start and end and asks for actions; the trainer's sampler reaches it as a ``PollingEnv``
(``relayrl/env/base_env.py``) whose ``env_id`` is the episode id. Subclass, implement ``run()``::

    class MySim(ExternalEnv):
        def run(self):                                       # runs in its own daemon thread, forever
            while True:
                eid = self.start_episode()
                obs = sim.reset()
                while True:
                    action = self.get_action(eid, obs)       # blocks until the sampler sent the action
                    obs, reward, done = sim.step(action)
                    self.log_returns(eid, reward)
                    if done:
                        self.end_episode(eid, obs)
                        break

and the sampler drives it (it calls ``start()``, or the first ``poll()`` does)::

    obs, rewards, terminateds, truncateds, infos, off_policy_actions = env.poll()    # waits for news (idle_s)
    env.send_actions({eid: {agent_id: action} for eid in obs for agent_id in obs[eid]
                      if agent_id not in off_policy_actions.get(eid, {})})

A single-agent ``ExternalEnv`` reports every episode under the one agent id ``_DUMMY_AGENT_ID`` ("agent0");
``ExternalMultiAgentEnv`` takes and returns dicts keyed by agent id instead (the agents in an observation dict
act next, as in ``MultiAgentEnv``). ``log_action`` reports an action the simulator chose itself (off-policy:
``off_policy_actions``); ``log_returns`` adds reward to the step the next observation closes; ``end_episode``
closes the episode (``terminateds["__all__"]``; with ``truncated=True`` ``truncateds["__all__"]`` instead).
``poll()`` returns empty dicts when no episode sent anything for ``idle_s``: the sampler then hands back the
fragment it has, so that a trainer sampling several workers in lock step is not held by one whose simulator is idle.
Calls for one episode must not overlap (one get_action at a time); different episodes may be driven by any
number of threads at once. An episode that has had no observation when it ends is dropped (nothing to learn).
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Hashable, Mapping
from typing import Any

from relayrl.env.base_env import PollingEnv
from relayrl.env.external_episodes import (  # noqa: F401 - the errors are public here
    ActionFuture,
    EpisodeStateError,
    ExternalEnvError,
    TooManyEpisodesError,
    UnknownEpisodeError,
    _EpisodeBook,
)

_DUMMY_AGENT_ID = "agent0"  # the agent id of every single-agent ExternalEnv episode in poll() and send_actions()


class ExternalEnv(PollingEnv):
    """A single-agent env whose episodes a simulator drives from ``run()`` (see the module docstring).

    Args:
        action_space: the action space of the episodes (what ``get_action`` returns).
        observation_space: the observation space of the episodes (what the simulator passes in).
        max_concurrent: the most episodes running at once; ``start_episode`` beyond it raises
            TooManyEpisodesError.
        poll_timeout_s: ``poll()`` raises ExternalEnvError when no episode sent anything for this long.
        idle_s: ``poll()`` returns no news (empty dicts) after waiting this long (None: waits up to
            ``poll_timeout_s``), and the sampler hands back the fragment it has, even an empty one.
        max_pending_steps: ``log_action`` waits while this many reported steps wait for the sampler (None: never
            waits; the queue then grows as long as the simulator outruns the trainer).
    """

    multiagent = False
    # The simulator owns its episodes: the sampler must not cut one at ``horizon`` (it would end an episode the
    # simulator still logs to, and sampling would stall on it). MultiAgentSampler reads this.
    can_reset = False

    def __init__(
        self,
        action_space: Any,
        observation_space: Any,
        max_concurrent: int = 100,
        *,
        poll_timeout_s: float = 3600.0,
        idle_s: float | None = 1.0,
        max_pending_steps: int | None = 1000,
    ):
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be an int >= 1, got {max_concurrent!r}")
        if not poll_timeout_s > 0:
            raise ValueError(f"poll_timeout_s must be > 0, got {poll_timeout_s!r}")
        if idle_s is not None and not idle_s > 0:
            raise ValueError(f"idle_s must be > 0 or None, got {idle_s!r}")
        if max_pending_steps is not None and (not isinstance(max_pending_steps, int) or max_pending_steps < 1):
            raise ValueError(f"max_pending_steps must be an int >= 1 or None, got {max_pending_steps!r}")
        self.action_space = action_space
        self.observation_space = observation_space
        self.max_concurrent = max_concurrent
        self.poll_timeout_s = float(poll_timeout_s)
        self.idle_s = idle_s
        self.max_pending_steps = max_pending_steps
        self.served_policy: Any = None  # a serving.ServedPolicy for local-inference clients (the worker sets it)
        self._book = _EpisodeBook(type(self).__name__, max_concurrent, self._unwrap)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._error: tuple[BaseException, str] | None = None
        self._returned = False

    def run(self) -> None:
        """The simulator's loop: start episodes, ask for actions, log rewards, end episodes. Runs in a daemon
        thread started by ``start()``; it must not return (e.g. it calls ``PolicyServer.serve_forever()``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def start(self) -> None:
        """Starts ``run()`` in its daemon thread; once (later calls do nothing)."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}.run", daemon=True)
                self._thread.start()

    # --- the simulator's calls --------------------------------------------------------------------------------
    def start_episode(self, episode_id: str | None = None, training_enabled: bool = True) -> str:
        """Starts an episode and returns its id (a new uuid4 hex when None). ``training_enabled=False``: acted
        on but not learned from."""
        return self._book.start(episode_id, training_enabled)

    def get_action(self, episode_id: str, observation: Any) -> Any:
        """Records an observation and blocks until the sampler sent the action for it."""
        return self.request_action(episode_id, observation).result()

    def request_action(self, episode_id: str, observation: Any) -> ActionFuture:
        """``get_action`` without blocking: the future of the action (for servers that wait asynchronously)."""
        return self._book.observe(episode_id, self._wrap(observation, "observation"))

    def log_action(self, episode_id: str, observation: Any, action: Any) -> None:
        """Records an observation and the action the simulator took itself (off-policy). Waits while
        ``max_pending_steps`` steps wait for the sampler (a simulator faster than the trainer is held back, not
        queued without bound); never on an event loop's thread (a PolicyServer holds its clients back itself)."""
        if self.max_pending_steps is not None and not _on_event_loop():
            self._book.wait_for_room(self.max_pending_steps)
        self._book.observe(episode_id, self._wrap(observation, "observation"), self._wrap(action, "action"))

    def log_returns(self, episode_id: str, reward: Any, info: Any = None) -> None:
        """Adds ``reward`` to the current step (the one the next observation closes); ``info`` is that step's."""
        rewards = self._wrap(reward, "reward")
        self._book.reward(episode_id, rewards, None if info is None else self._wrap(info, "info"))

    def end_episode(self, episode_id: str, observation: Any, *, truncated: bool = False) -> None:
        """Ends the episode with its last observation: terminated, or with ``truncated=True`` cut short (a time
        limit: the learner bootstraps from the last observation's value)."""
        self._book.observe(episode_id, self._wrap(observation, "observation"), final=True, truncated=truncated)

    def end_idle_episodes(self, max_idle_s: float) -> list[str]:
        """Ends, as truncated at their last observation, the episodes with no call for ``max_idle_s`` seconds that
        are not waiting for an action (their simulator went away); returns their ids."""
        return self._book.end_idle(max_idle_s)

    def running_episodes(self) -> list[str]:
        with self._book.cond:
            return list(self._book.episodes)

    @property
    def closed(self) -> bool:
        return self._book.closed

    def has_news(self) -> bool:
        """Whether ``poll()`` would return at once (an episode sent something the sampler has not polled)."""
        return bool(self._book.ready)

    def pending_steps(self) -> int:
        """Observations reported and not yet polled by the sampler (a PolicyServer holds clients to a limit)."""
        return self._book.pending

    # --- PollingEnv ---------------------------------------------------------------------------------------------
    def poll(self) -> tuple[dict, dict, dict, dict, dict, dict]:
        self.start()
        return self._book.poll(self.poll_timeout_s, self.idle_s, self._check_thread)

    def send_actions(self, actions: dict) -> None:
        self._book.send(actions)

    def try_reset(self, env_id: Hashable) -> None:
        return None  # the simulator starts episodes; a new one arrives under a new env_id

    def training_enabled(self, env_id: Hashable) -> bool:
        return self._book.training_enabled(env_id)

    def observation_space_of(self, agent_id: Hashable) -> Any:
        return self.observation_space

    def action_space_of(self, agent_id: Hashable) -> Any:
        return self.action_space

    def close(self) -> None:
        """Fails every waiting get_action and every later call; run()'s thread (a daemon) is left to exit."""
        self._book.close()

    # --- parts ------------------------------------------------------------------------------------------------
    def _wrap(self, value: Any, what: str) -> dict:
        if what == "observation" and type(value) is tuple and _obs_info_pair(value, self.observation_space):
            raise ValueError(
                f"{type(self).__name__}: the observation is an (obs, info) pair, as Gymnasium's reset() returns it;"
                " pass obs (obs, info = env.reset())"
            )
        return {_DUMMY_AGENT_ID: value}

    def _unwrap(self, actions: dict) -> Any:
        return actions[_DUMMY_AGENT_ID]

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - handed to the sampler's poll(), which re-raises it
            self._error = (e, traceback.format_exc())
        finally:
            self._returned = True
            with self._book.cond:
                self._book.cond.notify_all()

    def _check_thread(self) -> None:
        name = type(self).__name__
        if self._error is not None:
            error, tb = self._error
            raise ExternalEnvError(f"{name}.run() raised {type(error).__name__}: {error}\n{tb}") from error
        if self._returned and not self._book.episodes:
            raise ExternalEnvError(
                f"{name}.run() returned and no episode is running; run() must keep serving episodes"
                " (e.g. call PolicyServer.serve_forever())"
            )


class ExternalMultiAgentEnv(ExternalEnv):
    """``ExternalEnv`` with several agents per episode: observations, actions, rewards and infos are dicts keyed
    by agent id, and the agents in an observation dict act next (``get_action`` returns one action for each).

    Args:
        action_space: the action space shared by every agent, or a dict of them keyed by agent id.
        observation_space: the observation space shared by every agent, or a dict of them keyed by agent id.
        max_concurrent: the most episodes running at once; ``start_episode`` beyond it raises
            TooManyEpisodesError.
        poll_timeout_s, idle_s: as ExternalEnv's.
    """

    multiagent = True

    def observation_space_of(self, agent_id: Hashable) -> Any:
        return _space_of(self.observation_space, agent_id, "observation")

    def action_space_of(self, agent_id: Hashable) -> Any:
        return _space_of(self.action_space, agent_id, "action")

    # MultiAgentEnv's names, which the worker uses to give each policy its spaces
    get_observation_space = observation_space_of
    get_action_space = action_space_of

    def get_agent_ids(self) -> list[Hashable]:
        """The agent ids of per-agent space dicts; [] when every agent shares the spaces."""
        ids = [*(self.observation_space if isinstance(self.observation_space, Mapping) else [])]
        ids += [a for a in (self.action_space if isinstance(self.action_space, Mapping) else []) if a not in ids]
        return ids

    def _wrap(self, value: Any, what: str) -> dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{type(self).__name__}: the {what} must be a dict keyed by agent id, got {value!r}")
        return dict(value)

    def _unwrap(self, actions: dict) -> Any:
        return dict(actions)  # the simulator's own copy


def _space_of(spaces: Any, agent_id: Hashable, kind: str) -> Any:
    if isinstance(spaces, Mapping):
        if agent_id not in spaces:
            raise KeyError(f"no {kind} space for agent {agent_id!r}; the {kind} spaces are for {sorted(spaces)}")
        return spaces[agent_id]
    return spaces


def _obs_info_pair(value: tuple, space: Any) -> bool:
    """Whether an observation tuple is Gymnasium's ``(obs, info)`` (not an observation of a Tuple space)."""
    return len(value) == 2 and isinstance(value[1], dict) and type(space).__name__ != "Tuple"


def _on_event_loop() -> bool:
    """Whether the caller runs on an asyncio event loop's thread (where nothing may block)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

"""ExternalEnv / ExternalMultiAgentEnv driven as the sampler drives a PollingEnv: a fake sampler loop polls, asks a
real PPO policy for the actions of the waiting episodes in one batch, and sends them back."""

import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
from relayrl.env.base_env import ALL, PollingEnv
from relayrl.env.external_env import (
    _DUMMY_AGENT_ID,
    EpisodeStateError,
    ExternalEnv,
    ExternalEnvError,
    ExternalMultiAgentEnv,
    TooManyEpisodesError,
    UnknownEpisodeError,
)

pytestmark = pytest.mark.timeout(120)

A = _DUMMY_AGENT_ID
CARTPOLE = gym.make("CartPole-v1")
OBS_SPACE, ACT_SPACE = CARTPOLE.observation_space, CARTPOLE.action_space


@pytest.fixture(scope="module")
def policy():
    return PPOTorchPolicy(OBS_SPACE, ACT_SPACE, {**DEFAULT_CONFIG, "seed": 0})


class Sampler:
    """The sampler's side: poll, check the PollingEnv rules, act for the waiting agents in one batch."""

    def __init__(self, env, policy):
        self.env, self.policy = env, policy
        self.polls = []  # every poll's six dicts
        self.trajectories = {}  # env_id -> list of (obs, reward, off-policy action or None)
        self.ended = {}  # env_id -> (terminated, truncated)
        self.returns = {}  # env_id -> {agent: sum of its rewards}

    def step(self):
        obs, rewards, terms, truncs, infos, off = self.env.poll()
        while not obs:  # no news for the env's idle_s (a slow simulator thread): poll again
            assert not any((rewards, terms, truncs, infos, off)), "news without observations"
            obs, rewards, terms, truncs, infos, off = self.env.poll()
        self.polls.append((obs, rewards, terms, truncs, infos, off))
        waiting = []
        for eid in obs:
            assert ALL in terms[eid] and ALL in truncs[eid]
            assert eid not in self.ended, f"{eid} reported after its end"
            traj = self.trajectories.setdefault(eid, [])
            if not traj:
                assert all(r == 0 for r in rewards[eid].values()), "a first observation carries reward"
            for agent, r in rewards[eid].items():
                self.returns.setdefault(eid, {}).setdefault(agent, 0.0)
                self.returns[eid][agent] += r
            for agent, o in obs[eid].items():
                traj.append((agent, np.asarray(o), rewards[eid].get(agent, 0.0), off.get(eid, {}).get(agent)))
                if not (terms[eid][ALL] or truncs[eid][ALL]) and agent not in off.get(eid, {}):
                    waiting.append((eid, agent, o))
            if terms[eid][ALL] or truncs[eid][ALL]:
                self.ended[eid] = (terms[eid][ALL], truncs[eid][ALL])
                assert self.env.try_reset(eid) is None
        if waiting:
            actions, _, _ = self.policy.compute_actions(np.stack([np.asarray(o, np.float32) for _, _, o in waiting]))
            out = {}
            for (eid, agent, _), a in zip(waiting, actions):
                out.setdefault(eid, {})[agent] = int(a)
            self.env.send_actions(out)

    def run_until(self, n_ended, max_polls=100_000):
        for _ in range(max_polls):
            if len(self.ended) >= n_ended:
                return
            self.step()
        raise AssertionError(f"only {len(self.ended)} of {n_ended} episodes ended")


class CartPoleSim(ExternalEnv):
    """Plays ``episodes`` CartPole episodes from each of ``threads`` threads; records what it did."""

    def __init__(self, threads=1, episodes=1, max_steps=30, log_every=0, **kwargs):
        super().__init__(ACT_SPACE, OBS_SPACE, **kwargs)
        self.threads, self.episodes, self.max_steps, self.log_every = threads, episodes, max_steps, log_every
        self.played = {}  # episode id -> (observations, actions, rewards, [terminated])
        self.done = threading.Event()

    def play(self, seed):
        env = gym.make("CartPole-v1")
        for k in range(self.episodes):
            eid = self.start_episode(training_enabled=k % 2 == 0)
            obs, _ = env.reset(seed=seed * 1000 + k)
            record = self.played[eid] = ([obs], [], [], [])
            for t in range(self.max_steps):
                if self.log_every and t % self.log_every == 1:
                    action = int(env.action_space.sample())
                    self.log_action(eid, obs, action)
                else:
                    action = self.get_action(eid, obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                self.log_returns(eid, reward, {"t": t})
                record[0].append(obs), record[1].append(action), record[2].append(reward)
                if terminated:
                    break
            record[3].append(terminated)
            self.end_episode(eid, obs, truncated=not terminated)

    def run(self):
        workers = [threading.Thread(target=self.play, args=(i,)) for i in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        self.done.set()
        while True:  # run() must not return
            time.sleep(1)


def check_trajectories(sim, sampler):
    assert set(sampler.trajectories) == set(sim.played)
    for eid, (observations, _, rewards, (terminated,)) in sim.played.items():
        traj = sampler.trajectories[eid]
        assert [a for a, *_ in traj] == [A] * len(observations)
        np.testing.assert_allclose(np.stack([o for _, o, _, _ in traj]), np.stack(observations))
        assert [r for *_, r, _ in traj[1:]] == rewards  # each reward closes the step before it
        assert sampler.ended[eid] == (terminated, not terminated)


def test_is_a_polling_env_and_one_episode_through_a_ppo_policy(policy):
    sim = CartPoleSim(max_steps=20, poll_timeout_s=30)
    assert isinstance(sim, PollingEnv) and sim.observation_space_of(A) is OBS_SPACE
    sampler = Sampler(sim, policy)
    sampler.run_until(1)
    check_trajectories(sim, sampler)
    (eid,) = sim.played
    assert sim.training_enabled(eid) is True
    obs, rewards, terms, truncs, infos, off = sampler.polls[1]
    assert infos[eid][A] == {"t": 0} and terms[eid] == {ALL: False} and off == {}


def test_concurrent_episodes_from_many_threads_with_logged_actions(policy):
    sim = CartPoleSim(threads=8, episodes=4, max_steps=25, log_every=3, max_concurrent=8, poll_timeout_s=30)
    sampler = Sampler(sim, policy)
    sampler.run_until(32)
    assert sim.done.wait(10)
    check_trajectories(sim, sampler)
    assert max(len(p[0]) for p in sampler.polls) > 1, "episodes of different threads never shared a poll"
    for eid, traj in sampler.trajectories.items():
        logged = [a for *_, a in traj if a is not None]
        assert logged == [a for t, a in enumerate(sim.played[eid][1]) if t % 3 == 1]
        assert sim.training_enabled(eid) in (True, False)
    assert sorted(sim.training_enabled(e) for e in sim.played).count(False) == 16
    assert sim.running_episodes() == []


def test_several_logged_actions_arrive_one_poll_each_in_order():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, poll_timeout_s=10)
    env.start = lambda: None  # driven by hand: no run() thread
    eid = env.start_episode("e1")
    for i in range(3):
        env.log_action(eid, np.full(4, i, np.float32), i % 2)
        env.log_returns(eid, 1.0)
    env.end_episode(eid, np.full(4, 9, np.float32))
    seen = []
    for _ in range(4):
        obs, rewards, terms, _, _, off = env.poll()
        assert list(obs) == [eid]
        seen.append((obs[eid][A][0], rewards[eid][A], off.get(eid, {}).get(A), terms[eid][ALL]))
    assert seen == [(0, 0.0, 0, False), (1, 1.0, 1, False), (2, 1.0, 0, False), (9, 1.0, None, True)]
    with pytest.raises(EpisodeStateError, match="not waiting for actions"):
        env.send_actions({eid: {A: 0}})


def test_errors_name_the_episode_and_the_problem():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, max_concurrent=2, poll_timeout_s=10)
    env.start = lambda: None
    obs = np.zeros(4, np.float32)
    e1 = env.start_episode("one")
    env.start_episode()
    with pytest.raises(TooManyEpisodesError, match="max_concurrent=2"):
        env.start_episode()
    with pytest.raises(EpisodeStateError, match="already running"):
        env.start_episode("one")
    with pytest.raises(UnknownEpisodeError, match="'nope' was never started"):
        env.get_action("nope", obs)
    with pytest.raises(EpisodeStateError, match="no observation"):
        env.log_returns(e1, 1.0)
    env.log_action(e1, obs, 0)
    with pytest.raises(ValueError, match="reward of 'agent0' is nan"):
        env.log_returns(e1, float("nan"))
    future = env.request_action(e1, obs)
    with pytest.raises(EpisodeStateError, match="still waiting"):
        env.log_action(e1, obs, 1)
    env.poll()  # the logged action
    polled = env.poll()[0]
    assert list(polled) == [e1]
    with pytest.raises(EpisodeStateError, match="exactly one action per agent"):
        env.send_actions({e1: {"other": 1}})
    env.send_actions({e1: {A: 1}})
    assert future.result(1) == 1
    env.end_episode(e1, obs)
    with pytest.raises(UnknownEpisodeError, match="has ended"):
        env.log_returns(e1, 1.0)
    with pytest.raises(EpisodeStateError, match="used by an ended episode"):
        env.start_episode("one")
    assert env.training_enabled(e1) is True
    env.start_episode("three", training_enabled=False)  # the ended one freed its slot
    assert env.training_enabled("three") is False
    with pytest.raises(UnknownEpisodeError):
        env.training_enabled("never")


def test_an_episode_ended_before_any_observation_is_dropped():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, poll_timeout_s=0.3)
    env.start = lambda: None
    env.end_episode(env.start_episode(), np.zeros(4, np.float32))
    with pytest.raises(ExternalEnvError, match="no episode sent anything for 0 s"):
        env.poll()


def test_run_raising_is_reraised_by_poll_with_its_traceback():
    class Broken(ExternalEnv):
        def run(self):
            eid = self.start_episode()
            self.log_action(eid, np.zeros(4, np.float32), 0)
            raise ZeroDivisionError("the simulator broke")

    env = Broken(ACT_SPACE, OBS_SPACE, poll_timeout_s=30)
    assert list(env.poll()[0])  # the news that came before the failure still arrives
    with pytest.raises(ExternalEnvError, match="Broken.run\\(\\) raised ZeroDivisionError: the simulator broke") as e:
        env.poll()
    assert "Traceback" in str(e.value) and 'raise ZeroDivisionError("the simulator broke")' in str(e.value)
    assert isinstance(e.value.__cause__, ZeroDivisionError)


def test_run_returning_and_poll_timeout_are_errors():
    class Quits(ExternalEnv):
        def run(self):
            return

    with pytest.raises(ExternalEnvError, match="run\\(\\) returned"):
        Quits(ACT_SPACE, OBS_SPACE, poll_timeout_s=30).poll()

    class Silent(ExternalEnv):
        def run(self):
            self.start_episode("quiet")
            threading.Event().wait()

    with pytest.raises(ExternalEnvError, match="no episode sent anything for 0 s .*1 episodes running"):
        Silent(ACT_SPACE, OBS_SPACE, poll_timeout_s=0.5).poll()


def test_pending_steps_counts_what_the_sampler_has_not_polled_over_all_episodes_ended_ones_too():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, poll_timeout_s=10)
    env.start = lambda: None
    a, b = env.start_episode(), env.start_episode()
    obs = np.zeros(4, np.float32)
    for _ in range(3):
        env.log_action(a, obs, 1)
    env.log_action(b, obs, 0)
    env.end_episode(b, obs)
    assert env.pending_steps() == 5
    polled = env.poll()[0]  # one item per episode
    assert sorted(polled) == sorted([a, b]) and env.pending_steps() == 3
    while env.pending_steps():
        env.poll()
    env.request_action(a, obs)
    assert env.pending_steps() == 1


def test_close_fails_a_waiting_get_action_and_idle_episodes_end_truncated():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, poll_timeout_s=10)
    env.start = lambda: None
    idle, busy = env.start_episode("idle"), env.start_episode("busy")
    env.log_action(idle, np.ones(4, np.float32), 1)
    env.log_returns(idle, 2.0)
    future = env.request_action(busy, np.zeros(4, np.float32))
    time.sleep(0.05)
    assert env.end_idle_episodes(0.01) == [idle]  # the busy one waits for its action: not idle
    seen = {}
    while sum(map(len, seen.values())) < 3:
        obs, rewards, terms, truncs, _, off = env.poll()
        for eid in obs:
            seen.setdefault(eid, []).append((rewards[eid][A], terms[eid][ALL], truncs[eid][ALL]))
    assert seen[idle] == [(0.0, False, False), (2.0, False, True)]
    env.close()
    with pytest.raises(ExternalEnvError, match="was closed"):
        future.result(1)
    with pytest.raises(ExternalEnvError, match="is closed"):
        env.start_episode()


class TwoPlayerSim(ExternalMultiAgentEnv):
    """Turn-based: "a" and "b" move in turn; "b" is rewarded for "a"'s move; both see the final observation."""

    def run(self):
        for _ in range(3):
            eid = self.start_episode()
            obs = {"a": np.zeros(4, np.float32)}
            for t in range(6):
                actions = self.get_action(eid, obs)
                assert set(actions) == set(obs)
                mover = next(iter(obs))
                self.log_returns(eid, {mover: 1.0, **({"b": 0.5} if mover == "a" and t else {})})
                obs = {"b" if mover == "a" else "a": np.full(4, t + 1, np.float32)}
            self.end_episode(eid, {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)})
        threading.Event().wait()


def test_multi_agent_turns_rewards_for_agents_that_did_not_act(policy):
    sim = TwoPlayerSim({"a": ACT_SPACE, "b": ACT_SPACE}, OBS_SPACE, poll_timeout_s=30)
    assert sim.action_space_of("b") is ACT_SPACE and sim.observation_space_of("a") is OBS_SPACE
    assert sim.get_agent_ids() == ["a", "b"] and sim.get_action_space("a") is ACT_SPACE
    with pytest.raises(KeyError, match="no action space for agent 'c'"):
        sim.action_space_of("c")
    sampler = Sampler(sim, policy)
    sampler.run_until(3)
    for eid, traj in sampler.trajectories.items():
        assert [a for a, *_ in traj] == ["a", "b", "a", "b", "a", "b", "a", "b"]
        assert sampler.returns[eid] == {"a": 3.0, "b": 4.0}  # b also gets 0.5 for a's 2nd and 3rd moves
    last = next(p for p in sampler.polls if any(t[ALL] for t in p[2].values()))
    eid = next(iter(last[0]))
    assert last[2][eid] == {"a": True, "b": True, ALL: True} and last[1][eid] == {"a": 0.0, "b": 1.0}


def test_multi_agent_calls_need_dicts_and_one_logged_action_per_observed_agent():
    env = ExternalMultiAgentEnv(ACT_SPACE, OBS_SPACE)
    env.start = lambda: None
    eid = env.start_episode()
    with pytest.raises(ValueError, match="must be a dict keyed by agent id"):
        env.get_action(eid, np.zeros(4))
    with pytest.raises(ValueError, match="one action per agent observed"):
        env.log_action(eid, {"a": np.zeros(4), "b": np.zeros(4)}, {"a": 0})
    with pytest.raises(EpisodeStateError, match="reward for agent 'a'"):
        env.log_returns(eid, {"a": 1.0})


def test_poll_returns_no_news_after_idle_s_and_times_out_counting_from_the_last_news():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE, poll_timeout_s=0.8, idle_s=0.1)
    env.start = lambda: None
    start = time.monotonic()
    assert env.poll() == ({}, {}, {}, {}, {}, {})
    assert 0.1 <= time.monotonic() - start < 0.6
    eid = env.start_episode()
    env.log_action(eid, np.zeros(4, np.float32), 0)
    news = time.monotonic()
    assert list(env.poll()[0]) == [eid]
    idle_polls = 0
    with pytest.raises(ExternalEnvError, match="no episode sent anything for 1 s"):
        while True:  # each poll gives up after idle_s; the error comes poll_timeout_s after the last news
            assert env.poll()[0] == {}
            idle_polls += 1
    assert idle_polls >= 3 and time.monotonic() - news >= 0.8
    with pytest.raises(ValueError, match="idle_s must be > 0 or None"):
        ExternalEnv(ACT_SPACE, OBS_SPACE, idle_s=0)


def test_a_worker_hands_back_what_it_has_when_its_simulator_goes_quiet():
    """A lock-step trainer waits for every worker's sample(): one whose simulator stopped sending must return."""
    from relayrl.evaluation import RolloutWorker

    class OneEpisode(ExternalEnv):
        def __init__(self, ctx=None):
            super().__init__(ACT_SPACE, OBS_SPACE, idle_s=0.2)

        def run(self):
            env = gym.make("CartPole-v1")
            eid, (obs, _) = self.start_episode(), env.reset(seed=0)
            for _ in range(5):
                obs, reward, _, _, _ = env.step(self.get_action(eid, obs))
                self.log_returns(eid, reward)
            self.end_episode(eid, obs, truncated=True)
            threading.Event().wait()  # quiet from now on

    config = {**DEFAULT_CONFIG, "sample_batch_size": 100, "seed": 0}
    worker = RolloutWorker(lambda ctx: OneEpisode(), PPOTorchPolicy, policy_config=config)
    try:
        start = time.monotonic()
        first = worker.sample()
        second = worker.sample()
        assert time.monotonic() - start < 10
        assert first.count == 5 and first.policy_batches["default_policy"].count == 5
        assert second.count == 0 and not second.policy_batches
        assert [m.episode_length for m in worker.get_metrics()] == [5]
    finally:
        worker.stop()


def test_the_config_horizon_does_not_cut_an_external_env_s_episodes(caplog):
    """The simulator owns its episodes: cutting one at ``horizon`` would end an episode it still logs to."""
    from relayrl.evaluation import RolloutWorker

    config = {**DEFAULT_CONFIG, "sample_batch_size": 60, "horizon": 5, "seed": 0}
    sim = CartPoleSim(threads=2, episodes=3, max_steps=20, poll_timeout_s=20)
    with caplog.at_level("WARNING"):
        worker = RolloutWorker(lambda ctx: sim, PPOTorchPolicy, policy_config=config)
    try:
        start = time.monotonic()
        batch = worker.sample()
        assert time.monotonic() - start < 20 and batch.count >= 60
        while not sim.done.is_set() and time.monotonic() - start < 30:  # the simulator plays all its episodes
            worker.sample()
        assert sim.done.is_set()
        lengths = [m.episode_length for m in worker.get_metrics()]
        assert lengths and max(lengths) > 5  # episodes ran past the horizon: the simulator ended them
    finally:
        worker.stop()
    assert "horizon=5 does not apply to CartPoleSim" in caplog.text


def test_log_action_waits_while_max_pending_steps_wait_for_the_sampler_and_nothing_is_lost():
    class FastSim(ExternalEnv):
        """Logs 3000 random steps as fast as it can (an off-policy simulator that does not wait for actions)."""

        def __init__(self, **kwargs):
            super().__init__(ACT_SPACE, OBS_SPACE, **kwargs)
            self.logged, self.done = 0, threading.Event()

        def run(self):
            env = gym.make("CartPole-v1")
            eid, (obs, _) = self.start_episode(), env.reset(seed=0)
            for _ in range(3000):
                action = int(env.action_space.sample())
                self.log_action(eid, obs, action)
                self.logged += 1
                obs, reward, terminated, truncated, _ = env.step(action)
                self.log_returns(eid, reward)
                if terminated or truncated:
                    self.end_episode(eid, obs, truncated=not terminated)
                    eid, (obs, _) = self.start_episode(), env.reset()
            self.done.set()
            threading.Event().wait()

    sim = FastSim(max_pending_steps=100, idle_s=0.5)
    sim.start()
    deadline = time.monotonic() + 5
    while sim.pending_steps() < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    held = sim.logged
    assert 90 <= held <= 100 and sim.pending_steps() == 100  # logged steps and ended episodes: the sampler has not
    time.sleep(0.2)  # polled, and the simulator is held back
    assert sim.logged == held
    polled = 0
    while not (sim.done.is_set() and sim.pending_steps() == 0) and time.monotonic() < deadline + 20:
        obs, _, terms, _, _, off = sim.poll()
        polled += sum(1 for e in obs if e in off)  # each logged step, once
        assert sim.pending_steps() <= 100
    assert sim.done.is_set() and polled == 3000
    sim.close()


def test_asked_get_actions_are_answered_by_their_caller_not_polled():
    """The book's ask / answer pair (an env that acts on the server's thread): the checks of get_action, the
    rewards since the last observation handed over once, nothing queued for poll(), close() fails what waits."""
    env = ExternalEnv(ACT_SPACE, OBS_SPACE)
    book, obs = env._book, {A: np.zeros(4, np.float32)}
    eid = env.start_episode()
    with pytest.raises(UnknownEpisodeError, match="never started"):
        book.ask("nope", obs)
    rewards, future = book.ask(eid, obs)
    assert rewards == {} and not env.has_news() and env.pending_steps() == 0
    with pytest.raises(EpisodeStateError, match="still waiting"):
        book.ask(eid, obs)
    with pytest.raises(EpisodeStateError, match="still waiting"):
        env.log_action(eid, obs[A], 1)
    assert env.end_idle_episodes(0.0) == []  # a waiting episode is not idle
    book.answer([(eid, future, 1)])
    assert future.result(0) == 1
    env.log_returns(eid, 0.5)
    env.log_returns(eid, 0.25)
    rewards, future = book.ask(eid, obs)
    assert rewards == {A: 0.75}
    env.close()
    with pytest.raises(ExternalEnvError, match="closed"):
        future.result(0)
    book.answer([(eid, future, 0)])  # a late answer changes nothing
    with pytest.raises(ExternalEnvError, match="closed"):
        future.result(0)


def test_an_obs_info_pair_from_gymnasiums_reset_is_named():
    env = ExternalEnv(ACT_SPACE, OBS_SPACE)
    eid = env.start_episode()
    pair = CARTPOLE.reset(seed=0)
    for call in (lambda: env.request_action(eid, pair), lambda: env.log_action(eid, pair, 0),
                 lambda: env.end_episode(eid, pair)):  # fmt: skip
        with pytest.raises(ValueError, match=r"an \(obs, info\) pair, as Gymnasium's reset\(\) returns it"):
            call()
    env.request_action(eid, pair[0])  # the observation itself is fine

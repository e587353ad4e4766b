"""Multi-agent environments (issue 12, items 1, 5 and 6: the env side).

Hand-made MultiAgentEnvs (turn-based and simultaneous, agents joining late and leaving early) pass the
MultiAgentEpisodeChecker, and each way of breaking the rules of relayrl.env.MultiAgentEnv raises an
EnvCheckError naming the env, the step and the agent; action-mask helpers; PettingZoo's tic-tac-toe (AEC) and
a Parallel env through the wrappers, against PettingZoo's own reward sums; importing relayrl needs no pettingzoo.
"""

import copy
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.env import (
    EnvCheckError,
    MultiAgentEnv,
    MultiAgentEpisodeChecker,
    ParallelPettingZooEnv,
    PettingZooEnv,
    make_multi_agent,
)
from relayrl.models.action_mask import (
    action_mask_columns,
    mask_logits,
    split_action_mask,
    split_mask_batch,
)
from relayrl.models.preprocessors import get_preprocessor

Box = gym.spaces.Box
MASKED = gym.spaces.Dict({"action_mask": Box(0, 1, (3,), np.int8), "observation": Box(0, 1, (2,), np.float32)})


def o(n, v=0.5):
    return np.full(n, v, np.float32)


def m(mask=(1, 1, 1), v=0.5):
    return {"action_mask": np.array(mask, np.int8), "observation": o(2, v)}


def step(obs, rewards, term=None, trunc=None, infos=None, over=False, truncated=False):
    term = dict(term or {}, __all__=over and not truncated)
    trunc = dict(trunc or {}, __all__=over and truncated)
    return obs, rewards, term, trunc, infos if infos is not None else {}


class ScriptedEnv(MultiAgentEnv):
    """Plays a fixed script of ``reset`` and ``step`` results, whatever the actions."""

    def __init__(self, reset_result, steps, obs_spaces, shared_obs=None, possible_agents=None):
        self.reset_result, self.steps = reset_result, steps
        self.observation_spaces, self.observation_space = obs_spaces, shared_obs
        self.action_space = gym.spaces.Discrete(3)
        self.possible_agents = possible_agents if possible_agents is not None else list(obs_spaces or [])
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return copy.deepcopy(self.reset_result)

    def step(self, action_dict):
        self.t += 1
        return copy.deepcopy(self.steps[self.t - 1])


def turn_based():
    """'a', 'b', 'c' in turns; 'c' joins at step 2; 'a' gets a reward while 'b' acts; 'a' leaves at step 4
    (terminated, with its final observation); the episode ends at step 6. 'c' sees an action mask."""
    spaces = {"a": Box(0, 1, (2,), np.float32), "b": Box(0, 1, (3,), np.float32), "c": MASKED}
    steps = [
        step({"b": o(3)}, {"a": 1.0}),
        step({"c": m((0, 1, 0))}, {"b": 1.0, "a": 0.5}, term={"a": False, "b": False, "c": False}),
        step({"a": o(2)}, {"c": 1.0}),
        step({"a": o(2, 1.0), "b": o(3)}, {"a": 2.0}, term={"a": True}),
        step({"c": m((1, 0, 1))}, {"b": 1.0}),
        step({"b": o(3, 1.0), "c": m()}, {"b": -1.0, "c": 1.0}, over=True),
    ]
    return ScriptedEnv(({"a": o(2)}, {"a": {}}), steps, spaces)


def simultaneous():
    """Int ids 0, 1, 2 acting together (shared space); 2 joins at step 2; 0 leaves at step 3 by truncation
    without a final observation; 1 leaves at step 4 with one; the episode is truncated at step 5."""
    steps = [
        step({0: o(2), 1: o(2)}, {0: 1.0, 1: 1.0}),
        step({0: o(2), 1: o(2), 2: o(2)}, {0: 1.0, 1: 1.0}),
        step({1: o(2), 2: o(2)}, {0: 1.0, 1: 1.0, 2: 1.0}, trunc={0: True}),
        step({1: o(2), 2: o(2)}, {1: 1.0, 2: 1.0}, term={1: True, 2: False}),
        step({2: o(2)}, {2: 1.0}, over=True, truncated=True),
    ]
    return ScriptedEnv(({0: o(2), 1: o(2)}, {}), steps, None, Box(0, 1, (2,), np.float32), [0, 1, 2])


def legal(obs):
    if isinstance(obs, dict):
        return int(np.flatnonzero(obs["action_mask"])[0])
    return 0


def play(env, checker, bad_actions=None):
    """One episode through the checker; ``bad_actions[t](actions)`` replaces the actions of step t."""
    obs, _ = checker.reset(env.reset(seed=0))
    acting = [list(checker.acting)]
    for t in range(1, 50):
        actions = {a: legal(obs[a]) for a in checker.acting}
        if bad_actions and t in bad_actions:
            actions = bad_actions[t](actions)
        checker.actions(actions)
        obs, *_ = checker.step(env.step(actions))
        acting.append(list(checker.acting))
        if checker.episode_over:
            return acting
    raise AssertionError("the episode did not end")


def test_good_turn_based_and_simultaneous_episodes_pass():
    env = turn_based()
    checker = MultiAgentEpisodeChecker(env, "turns")
    for _ in range(2):  # the checker starts afresh at each reset
        acting = play(env, checker)
        assert acting == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"], []]
        assert checker.left == {"a": 4} and checker.seen == {"a", "b", "c"}
    env = simultaneous()
    checker = MultiAgentEpisodeChecker(env, "together")
    assert play(env, checker) == [[0, 1], [0, 1], [0, 1, 2], [1, 2], [2], []]
    assert checker.left == {0: 3, 1: 4} and checker.steps == 5


def test_spaces_and_agent_ids():
    env = turn_based()
    assert env.get_observation_space("c") is MASKED and env.get_action_space("a") == gym.spaces.Discrete(3)
    assert env.get_agent_ids() == ["a", "b", "c"]
    shared = simultaneous()
    assert shared.get_observation_space(7) == Box(0, 1, (2,), np.float32)
    with pytest.raises(KeyError, match="no observation space for agent 'x'"):
        env.get_observation_space("x")


def _replace(i, result):
    def edit(reset, steps):
        steps[i] = result

    return edit


def _edit(i, fn):
    def edit(reset, steps):
        fn(steps[i])

    return edit


# (name, script edit, bad actions, expected step label, agent or None, message part)
BAD = [
    ("action not asked", None, {2: lambda a: {**a, "a": 0}}, "step 2 ", "a", "not asked to act"),
    ("action for a left agent", None, {5: lambda a: {**a, "a": 0}}, "step 5 ", "a", "left at step 4"),
    ("missing action", None, {1: lambda a: {}}, "step 1 ", "a", "no action given"),
    ("masked action", None, {3: lambda a: {"c": 0}}, "step 3 ", "c", r"action 0 is illegal.*\[0, 1, 0\]"),
    (
        "obs outside its space",
        _edit(1, lambda r: r[0].update(c=m(v=3.0) | {"observation": o(3)})),
        None,
        "step 2 ",
        "c",
        r"has shape \(3,\).*its observation space is Dict",
    ),
    (
        "missing __all__ in terminateds",
        _edit(2, lambda r: r[2].pop("__all__")),
        None,
        "step 3 ",
        None,
        "terminateds without '__all__'",
    ),
    (
        "missing __all__ in truncateds",
        _edit(0, lambda r: r[3].pop("__all__")),
        None,
        "step 1 ",
        None,
        "truncateds without '__all__'",
    ),
    (
        "observation after leaving",
        _edit(4, lambda r: r[0].update(a=o(2))),
        None,
        "step 5 ",
        "a",
        "in step\\(\\)'s obs after it left at step 4",
    ),
    (
        "reward after leaving",
        _edit(5, lambda r: r[1].update(a=1.0)),
        None,
        "step 6 ",
        "a",
        "rewards after it left at step 4",
    ),
    ("done flag after leaving", _edit(4, lambda r: r[2].update(a=True)), None, "step 5 ", "a", "terminateds after"),
    ("non-dict obs", _replace(0, step([o(3)], {})), None, "step 1 ", None, "returned a list as obs, not a dict"),
    (
        "non-dict rewards",
        _replace(0, ({"b": o(3)}, 1.0, {"__all__": False}, {"__all__": False}, {})),
        None,
        "step 1 ",
        None,
        "a float as rewards",
    ),
    (
        "old 4-tuple step",
        _replace(0, ({"b": o(3)}, {}, {"__all__": False}, {})),
        None,
        "step 1 ",
        None,
        "returned 4 values",
    ),
    (
        "all-zero mask",
        _edit(1, lambda r: r[0].update(c=m((0, 0, 0)))),
        None,
        "step 2 ",
        "c",
        "'action_mask' is all zeros",
    ),
    ("unknown agent", _edit(0, lambda r: r[0].update(z=o(2))), None, "step 1 ", "z", "not one of the env's"),
    ("nobody acts", _replace(2, step({}, {"c": 1.0})), None, "step 3 ", None, "asked no agent to act"),
    ("reward before the first obs", _edit(0, lambda r: r[1].update(c=2.0)), None, "step 1 ", "c", "no observation"),
    ("reward with the first obs", _edit(1, lambda r: r[1].update(c=1.0)), None, "step 2 ", "c", "before this one"),
    ("NaN reward", _edit(0, lambda r: r[1].update(a=float("nan"))), None, "step 1 ", "a", "reward is nan"),
    ("flag not a bool", _edit(0, lambda r: r[2].update(b="no")), None, "step 1 ", None, "not a bool"),
    ("non-dict reset obs", "reset", None, "first reset", None, "as obs, not a dict"),
]


@pytest.mark.parametrize("name,edit,bad_actions,when,agent,part", BAD, ids=[b[0] for b in BAD])
def test_each_bad_case_raises_naming_env_step_and_agent(name, edit, bad_actions, when, agent, part):
    env = turn_based()
    if edit == "reset":
        env.reset_result = (o(2), {})
    elif edit is not None:
        edit(env.reset_result, env.steps)
    with pytest.raises(EnvCheckError) as info:
        play(env, MultiAgentEpisodeChecker(env, "turns", worker_index=2, index=1), bad_actions)
    msg = str(info.value)
    assert msg.startswith("env 'turns' (ScriptedEnv), worker 2, sub-env 1, ") and when in msg, msg
    if agent is not None:
        assert f"agent {agent!r}: " in msg, msg
    assert re.search(part, msg), msg
    assert "\n" not in msg


def test_actions_after_the_end_and_spaces_off():
    env = simultaneous()
    checker = MultiAgentEpisodeChecker(env, "together")
    play(env, checker)
    with pytest.raises(EnvCheckError, match="after the episode ended"):
        checker.actions({2: 0})
    env = turn_based()
    env.steps[1][0]["c"] = m((0, 1, 0)) | {"observation": o(5)}
    play(env, MultiAgentEpisodeChecker(env, "turns", check_spaces=False))  # structural checks only: passes


# --- N independent copies ------------------------------------------------------------------------------------------
def test_make_multi_agent_copies_leave_one_by_one():
    creator = make_multi_agent("CartPole-v1", 2)
    env = creator({"num_agents": 3})
    assert env.possible_agents == [0, 1, 2] and env.observation_space.shape == (4,)
    checker = MultiAgentEpisodeChecker(env, "multi_cartpole")
    rng = np.random.default_rng(0)
    for episode in range(3):
        obs, _ = checker.reset(env.reset(seed=episode))
        returns, lengths = dict.fromkeys(obs, 0.0), dict.fromkeys(obs, 0)
        while not checker.episode_over:
            actions = {a: int(rng.integers(2)) for a in checker.acting}
            checker.actions(actions)
            _, rewards, *_ = checker.step(env.step(actions))
            for a, r in rewards.items():
                returns[a] += r
                lengths[a] += 1
        assert returns == {a: float(n) for a, n in lengths.items()}  # CartPole: +1 a step
        assert sorted(checker.left) == [0, 1, 2]


# --- action masks --------------------------------------------------------------------------------------------------
def test_split_action_mask_spaces():
    inner, n = split_action_mask(MASKED)
    assert inner == MASKED["observation"] and n == 3
    several = gym.spaces.Dict({"pos": Box(-1, 1, (2,)), "vel": Box(-1, 1, (1,)), "legal": gym.spaces.MultiBinary(4)})
    inner, n = split_action_mask(several, key="legal")
    assert isinstance(inner, gym.spaces.Dict) and sorted(inner.spaces) == ["pos", "vel"] and n == 4
    assert split_action_mask(gym.spaces.Dict({"action_mask": Box(0, 1, (5,))})) == (None, 5)
    plain = Box(0, 1, (2,))
    assert split_action_mask(plain) == (plain, 0) and split_action_mask(several) == (several, 0)
    flat = get_preprocessor(MASKED)(MASKED).observation_space  # a flat Box with original_space
    assert split_action_mask(flat) == (MASKED["observation"], 3)
    with pytest.raises(ValueError, match="'action_mask' is Box.*1-D Box or MultiBinary"):
        split_action_mask(gym.spaces.Dict({"action_mask": Box(0, 1, (2, 2))}))


def test_split_mask_batch_all_forms_agree():
    space = gym.spaces.Dict({"a": Box(-5, 5, (2,)), "action_mask": Box(0, 1, (4,)), "z": Box(-5, 5, (3,))})
    rng = np.random.default_rng(0)
    raw = [
        {
            "a": rng.normal(size=2).astype(np.float32),
            "action_mask": rng.integers(0, 2, 4).astype(np.float32),
            "z": rng.normal(size=3).astype(np.float32),
        }
        for _ in range(5)
    ]
    want_mask = np.stack([r["action_mask"] > 0 for r in raw])
    inner, mask = split_mask_batch(raw)
    assert sorted(inner) == ["a", "z"] and inner["z"].shape == (5, 3) and mask.dtype == bool
    np.testing.assert_array_equal(mask, want_mask)
    inner2, mask2 = split_mask_batch({k: np.stack([r[k] for r in raw]) for k in space.spaces})
    np.testing.assert_array_equal(inner2["a"], inner["a"])
    np.testing.assert_array_equal(mask2, want_mask)
    prep = get_preprocessor(space)(space)
    flat = prep.transform_batch(raw)
    assert action_mask_columns(prep.observation_space) == (2, 6)
    flat_inner, flat_mask = split_mask_batch(flat, obs_space=prep.observation_space)
    np.testing.assert_array_equal(flat_mask, want_mask)
    inner_space = split_action_mask(space)[0]
    want_inner = get_preprocessor(inner_space)(inner_space).transform_batch(
        [{k: r[k] for k in ("a", "z")} for r in raw]
    )
    np.testing.assert_array_equal(flat_inner, want_inner)  # the flat form of the inner space
    t_inner, t_mask = split_mask_batch(torch.as_tensor(flat), obs_space=prep.observation_space)
    assert torch.equal(t_mask, torch.as_tensor(want_mask)) and torch.equal(t_inner, torch.as_tensor(want_inner))
    one, mask = split_mask_batch([m((1, 0, 1)), m((0, 0, 1))])
    assert one.shape == (2, 2) and mask.tolist() == [[True, False, True], [False, False, True]]
    with pytest.raises(ValueError, match="needs obs_space"):
        split_mask_batch(flat)
    with pytest.raises(KeyError, match="no 'action_mask' entry"):
        split_mask_batch({"a": flat})


def test_masked_logits_never_pick_an_illegal_action():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 5
    mask = torch.rand(64, 5) > 0.5
    mask[:, 2] = True  # at least one legal action a row
    masked = mask_logits(logits, mask)
    probs = torch.softmax(masked, -1)
    assert torch.all(probs[~mask] == 0) and torch.allclose(probs.sum(-1), torch.ones(64))
    assert mask.gather(1, masked.argmax(-1, keepdim=True)).all()
    draws = torch.distributions.Categorical(logits=masked).sample((1000,))  # [1000, 64]
    assert mask.gather(1, draws.T).all()
    dist = torch.distributions.Categorical(logits=masked)
    assert torch.isfinite(dist.entropy()).all()
    assert torch.equal(mask_logits(logits, np.ones((64, 5), np.int8)), logits)


# --- PettingZoo -----------------------------------------------------------------------------------------------------
pettingzoo = pytest.importorskip("pettingzoo")
from pettingzoo import AECEnv, ParallelEnv  # noqa: E402


def tictactoe():
    if hasattr(pettingzoo, "make"):  # 1.27+: the registry (importing pettingzoo.classic.tictactoe_v3 is deprecated)
        return pettingzoo.make("aec", "classic/tictactoe-v3")
    from pettingzoo.classic import tictactoe_v3

    return tictactoe_v3.env()


def test_tictactoe_100_games_legal_moves_and_pettingzoo_reward_sums():
    env = PettingZooEnv(tictactoe())
    assert (
        env.possible_agents == ["player_1", "player_2"]
        and env.observation_spaces["player_1"] == env.observation_space
        and isinstance(env.observation_space, gym.spaces.Dict)
    )
    assert split_action_mask(env.observation_space) == (env.observation_space["observation"], 9)
    checker = MultiAgentEpisodeChecker(env, "tictactoe")  # rejects a masked (illegal) action
    raw = tictactoe()
    rng = np.random.default_rng(0)
    outcomes = {}
    for game in range(100):
        obs, _ = checker.reset(env.reset(seed=game))
        totals, moves = {}, []
        while not checker.episode_over:
            (agent,) = checker.acting  # turn-based: one agent at a time
            action = int(rng.choice(np.flatnonzero(obs[agent]["action_mask"])))
            moves.append(action)
            checker.actions({agent: action})
            obs, rewards, terminateds, truncateds, _ = checker.step(env.step({agent: action}))
            for a, r in rewards.items():
                totals[a] = totals.get(a, 0.0) + r
        assert terminateds["__all__"] and not truncateds["__all__"]
        assert terminateds["player_1"] and terminateds["player_2"] and set(obs) == {"player_1", "player_2"}
        assert 5 <= len(moves) <= 9 and len(set(moves)) == len(moves)  # legal: no square played twice
        # PettingZoo's own AEC loop with the same moves: what last() reports, agent by agent.
        raw.reset(seed=game)
        want, it = {}, iter(moves)
        for agent in raw.agent_iter():
            _, reward, termination, truncation, _ = raw.last()
            want[agent] = want.get(agent, 0.0) + reward
            raw.step(None if termination or truncation else next(it))
        assert totals == want, (game, totals, want)
        outcomes[(want["player_1"], want["player_2"])] = outcomes.get((want["player_1"], want["player_2"]), 0) + 1
    assert set(outcomes) <= {(1, -1), (-1, 1), (0, 0)} and len(outcomes) == 3, outcomes  # no illegal-move loss
    with pytest.raises(ValueError, match="agent 'player_1' acts now"):
        env.reset(seed=0)
        env.step({"player_2": 0})
    obs, _ = checker.reset(env.reset(seed=0))
    checker.step(env.step({"player_1": 4}))
    with pytest.raises(EnvCheckError, match="agent 'player_2': action 4 is illegal"):
        checker.actions({"player_2": 4})


class Relay(AECEnv):
    """A 3-player AEC env following PettingZoo's contract: the mover gets 1 + action, the previous mover -0.5
    (a reward while not acting); p0 terminates at its 2nd move (leaves early); all are truncated after 9 moves."""

    metadata = {"name": "relay_v0", "is_parallelizable": False}

    def __init__(self):
        super().__init__()
        self.possible_agents = ["p0", "p1", "p2"]

    def observation_space(self, agent):
        return Box(0, 10, (1,), np.float32)

    def action_space(self, agent):
        return gym.spaces.Discrete(2)

    def observe(self, agent):
        return np.array([self.moves[agent]], np.float32)

    def reset(self, seed=None, options=None):
        self.agents = self.possible_agents[:]
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self.infos = {a: {} for a in self.agents}
        self.moves, self.t, self.last_mover = dict.fromkeys(self.agents, 0), 0, None
        self.agent_selection = "p0"

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            return self._was_dead_step(action)
        self._cumulative_rewards[agent] = 0
        self._clear_rewards()
        self.moves[agent] += 1
        self.t += 1
        self.rewards[agent] = 1.0 + action
        prev = self.last_mover
        if prev in self.agents and prev != agent and not self.terminations[prev]:
            self.rewards[prev] -= 0.5
        self.last_mover = agent
        if agent == "p0" and self.moves[agent] == 2:
            self.terminations[agent] = True
        if self.t >= 9:
            self.truncations = dict.fromkeys(self.agents, True)
        self._accumulate_rewards()
        i = self.agents.index(agent)
        self.agent_selection = self.agents[(i + 1) % len(self.agents)]
        self._deads_step_first()


def test_aec_dead_agents_and_rewards_to_agents_not_acting():
    env = PettingZooEnv(Relay())
    checker = MultiAgentEpisodeChecker(env, "relay")
    raw = Relay()
    rng = np.random.default_rng(1)
    for episode in range(5):
        checker.reset(env.reset(seed=episode))
        totals, moves, order, last = {}, [], [], None
        while not checker.episode_over:
            (agent,) = checker.acting
            order.append(agent)
            moves.append(int(rng.integers(2)))
            checker.actions({agent: moves[-1]})
            obs, rewards, terminateds, truncateds, _ = checker.step(env.step({agent: moves[-1]}))
            for a, r in rewards.items():
                totals[a] = totals.get(a, 0.0) + r
            last = (obs, terminateds, truncateds)
            if len(order) == 2:  # p1 moved: p0 (not acting) gets -0.5 now, on its last step; p2 acts next
                assert rewards == {"p1": 1.0 + moves[1], "p0": -0.5, "p2": 0.0}
            if "p0" in terminateds and terminateds["p0"]:
                assert obs["p0"][0] == 2.0 and not terminateds["__all__"]  # its final observation, then gone
        assert order == ["p0", "p1", "p2", "p0", "p1", "p2", "p1", "p2", "p1"]
        assert checker.left["p0"] == 4 and last[2]["__all__"] and not last[1]["__all__"]
        assert set(last[0]) == {"p1", "p2"} and last[2]["p1"] and last[2]["p2"]
        raw.reset(seed=episode)
        want, it = {}, iter(moves)
        for agent in raw.agent_iter():
            _, reward, termination, truncation, _ = raw.last()
            want[agent] = want.get(agent, 0.0) + reward
            raw.step(None if termination or truncation else next(it))
        assert totals == pytest.approx(want) and sum(want.values()) != 0


class Leaving(ParallelEnv):
    """'a' terminates at step 2, 'b' at step 4, 'c' is truncated at step 6; rewards 1 + action."""

    metadata = {"name": "leaving_v0"}

    def __init__(self):
        self.possible_agents = ["a", "b", "c"]

    def observation_space(self, agent):
        return Box(0, 10, (1,), np.float32)

    def action_space(self, agent):
        return gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        self.agents, self.t = self.possible_agents[:], 0
        return {a: np.zeros(1, np.float32) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.t += 1
        obs = {a: np.full(1, self.t, np.float32) for a in self.agents}
        rewards = {a: 1.0 + actions[a] for a in self.agents}
        term = {a: (a, self.t) in (("a", 2), ("b", 4)) for a in self.agents}
        trunc = {a: self.t >= 6 for a in self.agents}
        self.agents = [a for a in self.agents if not (term[a] or trunc[a])]
        return obs, rewards, term, trunc, {a: {} for a in obs}


def _parallel_episodes(env, raw, episodes, rng):
    checker = MultiAgentEpisodeChecker(env, "parallel")
    for episode in range(episodes):
        obs, _ = checker.reset(env.reset(seed=episode))
        raw.reset(seed=episode)
        totals, want, steps = {}, {}, 0
        while not checker.episode_over:
            actions = {a: int(rng.integers(env.action_spaces[a].n)) for a in checker.acting}
            checker.actions(actions)
            obs, rewards, terminateds, truncateds, _ = checker.step(env.step(actions))
            for a, r in rewards.items():
                totals[a] = totals.get(a, 0.0) + r
            for a, r in raw.step(actions)[1].items():
                want[a] = want.get(a, 0.0) + float(r)
            steps += 1
        assert totals == pytest.approx(want) and not raw.agents
        yield steps, checker, terminateds, truncateds


def test_parallel_env_agents_leave_early():
    env = ParallelPettingZooEnv(Leaving())
    assert env.observation_space == Box(0, 10, (1,), np.float32) and env.possible_agents == ["a", "b", "c"]
    for steps, checker, terminateds, truncateds in _parallel_episodes(env, Leaving(), 3, np.random.default_rng(0)):
        assert steps == 6 and checker.left == {"a": 2, "b": 4, "c": 6}
        assert truncateds["__all__"] and not terminateds["__all__"]


def test_parallel_pettingzoo_mpe_random_episodes():
    simple_tag_v3 = pytest.importorskip("mpe2.simple_tag_v3")

    make = lambda: simple_tag_v3.parallel_env(max_cycles=25, continuous_actions=False)  # noqa: E731
    env = ParallelPettingZooEnv(make())
    assert env.observation_space is None  # adversaries and the good agent see different things
    assert env.observation_spaces["adversary_0"].shape == (16,) and env.observation_spaces["agent_0"].shape == (14,)
    for steps, checker, _, truncateds in _parallel_episodes(env, make(), 3, np.random.default_rng(0)):
        assert steps == 25 and truncateds["__all__"] and sorted(checker.left) == sorted(env.possible_agents)


def test_wrappers_check_the_env_kind():
    with pytest.raises(TypeError, match="ParallelEnv: wrap it with ParallelPettingZooEnv"):
        PettingZooEnv(Leaving())
    with pytest.raises(TypeError, match="AECEnv: wrap it with PettingZooEnv"):
        ParallelPettingZooEnv(Relay())


def test_import_relayrl_without_pettingzoo():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pettingzoo': raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import relayrl\n"
        "from relayrl.env import PettingZooEnv, ParallelPettingZooEnv, MultiAgentEnv\n"
        "print('pettingzoo' in sys.modules)\n"
        "try:\n"
        "    PettingZooEnv(None)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False" and "pip install 'relayrl[pettingzoo]'" in out, out

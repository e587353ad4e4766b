"""The multi-agent sampler (issue 12, item 3): one trajectory per (episode, agent), exact row counts for agents that
join late, leave early and play in turns; rewards for agents that did not act; GAE per agent; one compute_actions
call per policy per step; complete_episodes; agent-step counting; horizon; vectorised sub-envs; bad envs."""

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.ppo.ppo import DEFAULT_CONFIG as PPO_CONFIG
from relayrl.agents.ppo.ppo_torch_policy import PPOTorchPolicy
from relayrl.env import EnvCheckError, MultiAgentEnv, make_multi_agent
from relayrl.evaluation.postprocessing import discount_cumsum
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.policy.policy import Policy
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch

SB = SampleBatch
BOX = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)


class CountingPolicy(Policy):
    """Action 0 always; counts compute_actions calls and the rows of each call; postprocess records the
    other agents' batches it was given."""

    calls: list = []
    others: list = []

    def compute_actions(self, obs_batch, state_batches=None, *args, **kwargs):
        CountingPolicy.calls.append((self.config.get("_pid"), len(obs_batch)))
        return np.zeros(len(obs_batch), dtype=np.int64), [], {}

    def postprocess_trajectory(self, batch, other_agent_batches=None, episode=None):
        CountingPolicy.others.append((batch[SB.AGENT_INDEX][0], sorted(other_agent_batches or {}, key=str)))
        return batch

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def obs(step, agent):
    return np.array([step, hash(agent) % 7], np.float32)


class ScriptEnv(MultiAgentEnv):
    """Plays a script: ``reset_agents`` observe first; ``script[k]`` = (observing agents, rewards, own terminated
    agents, episode over) for step k + 1. Observation [step, agent code]."""

    def __init__(self, reset_agents, script, possible_agents):
        self.reset_agents, self.script = reset_agents, script
        self.observation_space, self.action_space = BOX, gym.spaces.Discrete(2)
        self.possible_agents = possible_agents
        self.actions_seen = []

    def reset(self, *, seed=None, options=None):
        self.k = 0
        return {a: obs(0, a) for a in self.reset_agents}, {}

    def step(self, action_dict):
        self.actions_seen.append(sorted(action_dict, key=str))
        agents, rewards, done_agents, over = self.script[self.k]
        self.k += 1
        o = {a: obs(self.k, a) for a in agents}
        terms = {a: True for a in done_agents}
        terms["__all__"] = over
        return o, dict(rewards), terms, {"__all__": False}, {}


# Agents: "a" from the start, leaves at step 3 with a final observation; "b" joins at step 1; "c" joins at step 3;
# the episode ends at step 5 (b and c get final observations).
JOIN_LEAVE = (
    ["a"],
    [
        (["a", "b"], {"a": 1.0}, [], False),  # step 1: b's first observation
        (["a", "b"], {"a": 1.0, "b": 2.0}, [], False),
        (["a", "b", "c"], {"a": 5.0, "b": 2.0}, ["a"], False),  # step 3: a's final observation; c joins
        (["b", "c"], {"b": 2.0, "c": 3.0}, [], False),
        (["b", "c"], {"b": 2.0, "c": 3.0}, [], True),  # step 5: the episode ends
    ],
    ["a", "b", "c"],
)

# Turn-based: x and y alternate; the mover's opponent gets the reward when the mover wins (step 4: y wins, x gets -1).
TURNS = (
    ["x"],
    [
        (["y"], {}, [], False),
        (["x"], {}, [], False),
        (["y"], {}, [], False),
        (["x", "y"], {"y": 1.0, "x": -1.0}, [], True),
    ],
    ["x", "y"],
)


def worker(script, mapping=None, policies=None, **config):
    CountingPolicy.calls, CountingPolicy.others = [], []
    policies = policies or {"pa": (CountingPolicy, None, None, {"_pid": "pa"})}
    mapping = mapping or (lambda agent_id: "pa")
    conf = {"sample_batch_size": 5, "multiagent": {"policies": policies, "policy_mapping_fn": mapping}, **config}
    return RolloutWorker(lambda ctx: ScriptEnv(*script), policies, policy_mapping_fn=mapping, policy_config=conf)


def rows_by_agent(batch, pid="pa"):
    b = batch.policy_batches[pid]
    return {int(i): int(n) for i, n in zip(*np.unique(b[SB.AGENT_INDEX], return_counts=True))}


def test_rows_per_agent_when_agents_join_late_and_leave_early():
    w = worker(JOIN_LEAVE, batch_mode="complete_episodes")
    batch = w.sample()
    assert isinstance(batch, MultiAgentBatch) and batch.count == 5
    b = batch.policy_batches["pa"]
    # agent index = order of first appearance: a 0, b 1, c 2; a acts at steps 0-2, b at 1-4, c at 3-4.
    assert rows_by_agent(batch) == {0: 3, 1: 4, 2: 2}
    a = b.slice(0, 3)
    assert a[SB.T].tolist() == [0, 1, 2]
    assert a[SB.REWARDS].tolist() == [1.0, 1.0, 5.0]
    assert a[SB.TERMINATEDS].tolist() == [False, False, True]
    assert a[SB.NEXT_OBS][:, 0].tolist() == [1, 2, 3]  # the final observation closes a's last step
    c = b[SB.AGENT_INDEX] == 2
    assert b[SB.T][c].tolist() == [3, 4] and b[SB.REWARDS][c].tolist() == [3.0, 3.0]
    assert b[SB.TERMINATEDS][c].tolist() == [False, True]
    assert len(set(b[SB.EPS_ID].tolist())) == 1 and len(set(b[SB.UNROLL_ID].tolist())) == 3
    (m,) = w.get_metrics()
    assert m.episode_length == 5 and m.episode_reward == 7 + 8 + 6
    assert m.agent_rewards == {("a", "pa"): 7.0, ("b", "pa"): 8.0, ("c", "pa"): 6.0}
    env = w.sampler.env.envs[0]
    assert env.actions_seen[:5] == [["a"], ["a", "b"], ["a", "b"], ["b", "c"], ["b", "c"]]


def test_turn_based_rows_and_a_reward_for_an_agent_that_did_not_act():
    w = worker(
        TURNS,
        mapping=lambda agent_id: {"x": "px", "y": "py"}[agent_id],
        policies={
            "px": (CountingPolicy, None, None, {"_pid": "px"}),
            "py": (CountingPolicy, None, None, {"_pid": "py"}),
        },
        batch_mode="complete_episodes",
        sample_batch_size=4,
    )
    batch = w.sample()
    x, y = batch.policy_batches["px"], batch.policy_batches["py"]
    assert x.count == 2 and y.count == 2  # x acts at steps 0 and 2, y at 1 and 3
    assert x[SB.T].tolist() == [0, 2] and y[SB.T].tolist() == [1, 3]
    # x's last action was at step 2; y won at step 4: x's -1 lands on x's last step, which the end closes.
    assert x[SB.REWARDS].tolist() == [0.0, -1.0] and y[SB.REWARDS].tolist() == [0.0, 1.0]
    assert x[SB.TERMINATEDS].tolist() == [False, True] and y[SB.TERMINATEDS].tolist() == [False, True]
    assert x[SB.NEXT_OBS][:, 0].tolist() == [2, 4]  # x's next observation came two env steps later
    # one compute_actions call per policy per step, for the policy's acting agents only (the fifth: x's first
    # move in the next episode, which the reset started)
    assert CountingPolicy.calls == [("px", 1), ("py", 1), ("px", 1), ("py", 1), ("px", 1)] and batch.count == 4


def test_other_agent_batches_hold_the_episodes_other_agents():
    worker(JOIN_LEAVE, batch_mode="complete_episodes").sample()
    others = dict(CountingPolicy.others)
    assert others == {0: ["b", "c"], 1: ["a", "c"], 2: ["a", "b"]}


def test_one_batched_call_per_policy_per_step_across_sub_envs_and_agents():
    w = worker(JOIN_LEAVE, num_envs_per_worker=3, batch_mode="complete_episodes")
    batch = w.sample()
    # step 0: a in 3 envs; step 1: a, b in 3 envs; ... one call per step, all 3 envs in it
    assert [n for _, n in CountingPolicy.calls[:5]] == [3, 6, 6, 6, 6]
    assert rows_by_agent(batch) == {0: 9, 1: 12, 2: 6}
    assert len(w.get_metrics()) == 3 and batch.count == 15


def test_truncate_episodes_cuts_fragments_and_counts_env_or_agent_steps():
    w = worker(JOIN_LEAVE, sample_batch_size=3)
    batch = w.sample()
    assert batch.count == 3  # env steps
    # after 3 env steps: a's steps 0-2 (step 3 gave its final observation), b's steps 1-2; c's first step is open
    assert rows_by_agent(batch) == {0: 3, 1: 2}
    assert batch.policy_batches["pa"][SB.TERMINATEDS].tolist() == [False, False, True, False, False]
    batch2 = w.sample()  # steps 4-5, then the next episode's first step
    b = batch2.policy_batches["pa"]
    assert batch2.count == 3 and b[SB.TERMINATEDS].sum() == 2  # b and c ended with the episode
    assert sorted(b[SB.T][b[SB.EPS_ID] == b[SB.EPS_ID][0]].tolist()) == [3, 3, 4, 4]
    w = worker(JOIN_LEAVE, sample_batch_size=4, count_steps_by="agent_steps")
    batch = w.sample()
    assert batch.count >= 4 and batch.count == len(sum(([1] * n for _, n in CountingPolicy.calls), []))


# Two agents for 12 steps; "a" leaves at step 7 without a final observation (its last step bootstraps from its own).
LONG = (
    ["a", "b"],
    [(["a", "b"], {"a": 1.0, "b": 2.0}, [], False) for _ in range(6)]
    + [(["b"], {"a": 1.0, "b": 2.0}, ["a"], False)]
    + [(["b"], {"b": 2.0}, [], False) for _ in range(4)]
    + [(["b"], {"b": 2.0}, [], True)],
    ["a", "b"],
)


@pytest.mark.parametrize("batch_mode", ["truncate_episodes", "complete_episodes"])
def test_rows_held_across_fragments_come_out_whole_and_in_order(batch_mode):
    """Fragments of 3 env steps: open steps (truncate_episodes) or whole running episodes (complete_episodes) stay
    across many hand-outs; each agent's rows still come out once each, in order, with the right next observation."""
    w = worker(LONG, sample_batch_size=3, batch_mode=batch_mode)
    rows = {0: [], 1: []}
    while not (rows[1] and rows[1][-1][3]):
        b = w.sample().policy_batches["pa"]
        first = b[SB.EPS_ID] == b[SB.EPS_ID][0]
        for i, t, o, nxt, d, r in zip(
            *(b[k][first] for k in (SB.AGENT_INDEX, SB.T, SB.OBS, SB.NEXT_OBS, SB.DONES, SB.REWARDS))
        ):
            rows[int(i)].append((int(t), int(o[0]), int(nxt[0]), bool(d), float(r)))
    assert rows[0] == [(t, t, t + 1, False, 1.0) for t in range(6)] + [(6, 6, 6, True, 1.0)]
    assert rows[1] == [(t, t, t + 1, t == 11, 2.0) for t in range(12)]


def test_horizon_truncates_the_episode_for_every_agent():
    w = worker(JOIN_LEAVE, horizon=2, batch_mode="complete_episodes", sample_batch_size=2)
    b = w.sample().policy_batches["pa"]
    assert rows_by_agent(w.sample()) == {0: 2, 1: 1}
    assert b[SB.TRUNCATEDS].sum() == 2 and not b[SB.TERMINATEDS].any()
    assert w.get_metrics()[0].episode_length == 2


def test_gae_per_agent_against_a_hand_computation():
    config = {**PPO_CONFIG, "gamma": 0.9, "lambda": 0.8, "seed": 1, "batch_mode": "complete_episodes"}
    policies = {"pa": (PPOTorchPolicy, None, None, {})}
    conf = {**config, "sample_batch_size": 5, "multiagent": {"policies": policies, "policy_mapping_fn": None}}
    w = RolloutWorker(lambda ctx: ScriptEnv(*JOIN_LEAVE), policies, policy_config=conf)
    b = w.sample().policy_batches["pa"]
    policy = w.get_policy("pa")
    for traj in b.split_trajectories():
        v = policy.value(traj[SB.OBS]).astype(np.float64)
        last = 0.0 if traj[SB.TERMINATEDS][-1] else float(policy.value(traj[SB.NEXT_OBS][-1:])[0])
        vs = np.append(v, last)
        deltas = traj[SB.REWARDS] + 0.9 * vs[1:] - vs[:-1]
        expected = discount_cumsum(deltas, 0.9 * 0.8)
        np.testing.assert_allclose(traj["advantages"], expected, rtol=1e-4, atol=1e-4)


def test_mapping_fn_forms_and_policy_spaces_from_the_env():
    def new_style(agent_id, episode, **kwargs):
        assert "worker" in kwargs
        return "p0" if agent_id == 0 else "p1"

    for mapping in (lambda agent_id: f"p{agent_id}", new_style):
        policies = {"p0": (CountingPolicy, None, None, {}), "p1": (CountingPolicy, None, None, {})}
        w = RolloutWorker(
            make_multi_agent("CartPole-v1", 2),
            policies,
            policy_mapping_fn=mapping,
            policy_config={"sample_batch_size": 10},
        )
        assert w.get_policy("p0").observation_space.shape == (4,)
        batch = w.sample()
        assert set(batch.policy_batches) == {"p0", "p1"} and batch.count == 10


class TwoSpaces(MultiAgentEnv):
    possible_agents = ["u", "v"]
    observation_spaces = {"u": BOX, "v": gym.spaces.Box(0, 1, (3,), np.float32)}
    action_space = gym.spaces.Discrete(2)


def test_policy_spaces_that_differ_between_its_agents_are_a_clear_error():
    policies = {"shared": (CountingPolicy, None, None, {})}
    with pytest.raises(ValueError, match=r"policy 'shared' has no observation space .* different ones .*'u'"):
        RolloutWorker(lambda ctx: TwoSpaces(), policies, policy_mapping_fn=lambda a: "shared")
    with pytest.raises(ValueError, match="policy_mapping_fn is required with several policies"):
        RolloutWorker(
            lambda ctx: TwoSpaces(), {"p": (CountingPolicy, BOX, None, {}), "q": (CountingPolicy, BOX, None, {})}
        )


def test_a_mapping_to_an_unknown_policy_and_unknown_policies_to_train_are_clear_errors():
    w = worker(
        JOIN_LEAVE,
        mapping=lambda a: "pa" if a == "a" else "nope",
        policies={"pa": (CountingPolicy, BOX, gym.spaces.Discrete(2), {})},
    )
    with pytest.raises(ValueError, match="mapped agent 'b' to 'nope', which is not one of the policies"):
        w.sample()
    with pytest.raises(ValueError, match=r"policies_to_train names \['zz'\]"):
        RolloutWorker(
            lambda ctx: ScriptEnv(*JOIN_LEAVE),
            {"pa": (CountingPolicy, None, None, {})},
            policy_mapping_fn=lambda a: "pa",
            policies_to_train=["zz"],
        )


class BadActionsEnv(ScriptEnv):
    def step(self, action_dict):
        out = super().step(action_dict)
        out[0]["zz"] = obs(0, "zz")  # an agent that is not one of possible_agents
        return out


def test_a_bad_env_is_an_error_naming_the_agent_and_the_step():
    w = RolloutWorker(
        lambda ctx: BadActionsEnv(*JOIN_LEAVE),
        {"pa": (CountingPolicy, None, None, {})},
        policy_config={"sample_batch_size": 5},
    )
    with pytest.raises(EnvCheckError, match=r"step 1 .*agent 'zz'.*possible_agents"):
        w.sample()


def test_rnn_state_starts_at_the_initial_state_for_every_agent_and_episode():
    from relayrl.examples.stateless_cartpole import StatelessCartPole

    config = {
        **PPO_CONFIG,
        "seed": 0,
        "num_envs_per_worker": 2,
        "sample_batch_size": 100,
        "model": {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [16]},
    }
    w = RolloutWorker(make_multi_agent(lambda ctx: StatelessCartPole(), 2), PPOTorchPolicy, policy_config=config)
    b = w.sample().policy_batches["default_policy"]
    starts = b[SB.T] == 0
    assert starts.sum() >= 4  # 2 sub-envs x 2 agents, and the episodes that began since
    for j in (0, 1):  # LSTM h and c
        state = b[f"state_in_{j}"]
        assert not state[starts].any()  # zero at every (episode, agent) start
        assert state[~starts].any()  # carried from step to step otherwise
    # within one (episode, agent) trajectory, each step's state is the one the previous step produced
    policy = w.get_policy()
    traj = next(t for t in b.split_trajectories() if t[SB.T][0] == 0 and t.count > 3)
    _, out, _ = policy.compute_actions(traj[SB.OBS][:1], [traj["state_in_0"][:1], traj["state_in_1"][:1]])
    np.testing.assert_allclose(out[0][0], traj["state_in_0"][1], atol=1e-5)


def test_a_none_reward_is_no_reward_as_rllib_era_envs_report_it():
    """RLlib-era turn-based envs report None for the agents with nothing this step; it counts as no reward."""
    none_turns = (
        TURNS[0],
        [
            (["y"], {"x": None}, [], False),
            (["x"], {"x": None, "y": None}, [], False),
            (["y"], {"x": 0.5, "y": None}, [], False),
            (["x", "y"], {"y": 1.0, "x": -1.0}, [], True),
        ],
        TURNS[2],
    )
    batch = worker(none_turns, batch_mode="complete_episodes").sample()
    b = batch.policy_batches["pa"]
    x, y = b[SB.AGENT_INDEX] == 0, b[SB.AGENT_INDEX] == 1
    # x's first step gets steps 1-2 (None, None), its second 3-4 (0.5, -1); y's: 2-3 (None, None), then 4 (1.0)
    assert b[SB.REWARDS][x].tolist() == [0.0, -0.5] * 2 and b[SB.REWARDS][y].tolist() == [0.0, 1.0] * 2

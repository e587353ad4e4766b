"""The replay family with MultiAgentBatch (issue 12, item 4): one replay buffer per policy, priorities per policy,
``policies_to_train``, per-policy config overrides (lr, target updates, replayed batch size, exploration), every
Rainbow part per policy, DDPG/TD3, and Ape-X's shards and learner thread per policy.

The env tags each observation with its agent's index, so a row in a buffer tells which agent it came from."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ddpg import TD3Trainer
from relayrl.agents.dqn import DQNTrainer
from relayrl.env import MultiAgentEnv, make_multi_agent, register_env
from relayrl.optimizers.async_replay import LearnerThread, ReplayActor
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch

SB = SampleBatch
AGENTS = ("a", "b", "c")


class TaggedEnv(MultiAgentEnv):
    """Agents a and b act from the start, c joins at step 2, a leaves at step 4, the episode is truncated after 8
    steps. Observation: [agent index, step]; reward 1 per action (2 for c's action 1)."""

    observation_space = gym.spaces.Box(-100.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    possible_agents = list(AGENTS)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return {a: self._obs(a) for a in ("a", "b")}, {}

    def _obs(self, agent):
        return np.array([AGENTS.index(agent), self.t], np.float32)

    def step(self, actions):
        self.t += 1
        rewards = {a: 2.0 if a == "c" and act == 1 else 1.0 for a, act in actions.items()}
        over = self.t >= 8
        acting = [a for a in AGENTS if (a != "c" or self.t >= 2) and (a != "a" or self.t <= 4)]
        obs = {a: self._obs(a) for a in acting}
        terminateds = {"__all__": False}
        if self.t == 4:
            terminateds["a"] = True  # a's final observation; it never appears again
        truncateds = {"__all__": over}
        return obs, rewards, terminateds, truncateds, {}


register_env("tagged_multi_agent", lambda ctx: TaggedEnv())
register_env("multi_cartpole_2", make_multi_agent("CartPole-v1", 2))
register_env("multi_pendulum_2", make_multi_agent("Pendulum-v1", 2))


def abc_mapping(agent_id, episode=None, **kwargs):
    return "p1" if agent_id == "c" else "p0"


def dqn_config(p0=None, p1=None, **overrides) -> dict:
    return {
        "seed": 0,
        "hiddens": [16],
        "model": {"fcnet_hiddens": [16]},
        "learning_starts": 40,
        "buffer_size": 2000,
        "train_batch_size": 16,
        "sample_batch_size": 4,
        "n_step": 3,
        "timesteps_per_iteration": 200,
        "min_iter_time_s": 0,
        "compress_observations": False,
        "multiagent": {
            "policies": {"p0": (None, None, None, p0 or {}), "p1": (None, None, None, p1 or {})},
            "policy_mapping_fn": abc_mapping,
        },
        **overrides,
    }


def recording_sampler(trainer) -> list:
    """Makes the local worker record every batch it samples."""
    worker = trainer.workers.local_worker()
    batches, sample = [], worker.sample
    worker.sample = lambda: batches.append(sample()) or batches[-1]
    return batches


def snapshot(policy) -> list[torch.Tensor]:
    nets = [policy.model] + ([policy.target_model] if hasattr(policy, "target_model") else [])
    return [t.detach().clone() for net in nets for t in net.state_dict().values()]


def all_equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --- SyncReplayOptimizer -----------------------------------------------------------------------------------------
def test_each_policy_buffer_holds_exactly_its_agents_rows_and_agent_steps_are_counted():
    trainer = DQNTrainer(env="tagged_multi_agent", config=dqn_config(prioritized_replay=False))
    batches = recording_sampler(trainer)
    try:
        result = trainer.train()
        opt = trainer.optimizer
        assert all(isinstance(b, MultiAgentBatch) for b in batches)
        rows = {
            pid: sum(b.policy_batches[pid].count for b in batches if pid in b.policy_batches) for pid in ("p0", "p1")
        }
        for pid, tags in (("p0", {0.0, 1.0}), ("p1", {2.0})):
            buffer = opt.replay_buffers[pid]
            assert buffer.stats()["num_added"] == len(buffer) == rows[pid]
            replayed = buffer.sample(len(buffer))
            # Every stored row (and its n-step next observation) is one of this policy's agents'.
            assert set(replayed[SB.OBS][:, 0]) == tags
            np.testing.assert_array_equal(replayed[SB.NEXT_OBS][:, 0], replayed[SB.OBS][:, 0])
        # Per episode of 8 env steps: a acts 4 times, b 8, c 6.
        assert rows["p1"] * 12 == rows["p0"] * 6
        assert opt.num_steps_sampled == sum(b.count for b in batches)
        assert opt.num_agent_steps_sampled == sum(b.total() for b in batches) == rows["p0"] + rows["p1"]
        assert result["info"]["num_agent_steps_sampled"] == opt.num_agent_steps_sampled
        assert set(result["info"]["learner"]) == {"p0", "p1"}
        assert result["info"]["replay_shard_0"]["p1"]["num_added"] == rows["p1"]
    finally:
        trainer.stop()


def test_priorities_are_updated_per_policy_from_its_own_td_errors():
    trainer = DQNTrainer(env="tagged_multi_agent", config=dqn_config(p1={"train_batch_size": 8}))
    p1 = trainer.get_policy("p1")
    learn = p1.learn_on_batch

    def learn_with_td_seven(batch):  # p1 reports |TD| = 7 for every row
        info = learn(batch)
        return {**info, "td_error": np.full(batch.count, 7.0, np.float32)}

    p1.learn_on_batch = learn_with_td_seven
    try:
        trainer.train()
        opt = trainer.optimizer
        s0, s1 = opt.replay_buffers["p0"].stats(), opt.replay_buffers["p1"].stats()
        updates = (opt.num_steps_sampled - 40) // 4 + 1  # one replayed batch per policy per step() once started
        assert (s0["num_priority_updates"], s1["num_priority_updates"]) == (16 * updates, 8 * updates)
        assert opt.num_steps_trained == 24 * updates
        assert s1["max_priority"] == pytest.approx(7.0 + 1e-6)  # p1's priorities from p1's td_error only
        assert s0["max_priority"] < 7.0 and s0["max_priority"] != 1.0  # p0's from its own |TD|
    finally:
        trainer.stop()


def test_policies_to_train_leaves_the_other_policy_bit_identical():
    config = dqn_config(target_network_update_freq=100)
    config["multiagent"]["policies_to_train"] = ["p0"]
    trainer = DQNTrainer(env="tagged_multi_agent", config=config)
    p0, p1 = trainer.get_policy("p0"), trainer.get_policy("p1")
    before0, before1 = snapshot(p0), snapshot(p1)
    try:
        for _ in range(2):
            result = trainer.train()
        assert trainer.optimizer.num_target_updates > 0
        assert all_equal(before1, snapshot(p1))  # online and target nets
        assert p1._optimizers[0]._steps == [0] * len(p1._optimizers[0].params)  # Adam never stepped
        assert not all_equal(before0, snapshot(p0))
        assert set(result["info"]["learner"]) == {"p0"}
        assert set(trainer.optimizer.replay_buffers) == {"p0"}  # an untrained policy's rows are not stored
        assert result["policy_reward_mean"].keys() == {"p0", "p1"}  # it still acts
    finally:
        trainer.stop()


def test_per_policy_overrides_lr_target_updates_and_exploration():
    config = dqn_config(
        p1={"lr": 1e-2, "target_network_update_freq": 60, "exploration_fraction": 0.5, "dueling": False},
        lr=1e-3,
        target_network_update_freq=300,
        exploration_fraction=0.01,
        schedule_max_timesteps=10000,
        timesteps_per_iteration=600,
    )
    trainer = DQNTrainer(env="tagged_multi_agent", config=config)
    opt = trainer.optimizer
    calls = {"p0": [], "p1": []}
    for pid, calls_of in calls.items():
        policy = trainer.get_policy(pid)
        original = policy.update_target
        policy.update_target = lambda o=original, c=calls_of: (c.append(opt.num_steps_sampled), o())[1]
    try:
        result = trainer.train()
        steps = opt.num_steps_sampled
        assert len(calls["p0"]) == steps // 300 and len(calls["p1"]) == steps // 60
        assert np.all(np.diff(calls["p1"]) >= 60) and np.all(np.diff(calls["p0"]) >= 300)
        p0, p1 = trainer.get_policy("p0"), trainer.get_policy("p1")
        assert p1._optimizers[0].param_groups[0]["lr"] == 1e-2 and p0._optimizers[0].param_groups[0]["lr"] == 1e-3
        assert result["info"]["learner"]["p1"]["cur_lr"] == 1e-2
        assert p1.model.dueling is False and p1.model.value is None and p0.model.value is not None
        # The trainer's timestep reaches every policy; each anneals epsilon on its own schedule.
        assert p0.global_timestep == p1.global_timestep == steps
        assert p0.cur_epsilon() == pytest.approx(0.02)  # annealed over 0.01 * 10000 = 100 steps
        assert p1.cur_epsilon() == pytest.approx(1.0 - 0.98 * steps / 5000)  # over 0.5 * 10000
    finally:
        trainer.stop()


def test_every_rainbow_part_per_policy():
    rainbow = {"num_atoms": 11, "v_min": 0.0, "v_max": 20.0, "noisy": True, "dueling": True, "double_q": True}
    plain = {"num_atoms": 1, "noisy": False, "dueling": False, "double_q": False, "n_step": 1}
    config = dqn_config(p0=rainbow, p1=plain, prioritized_replay=True)
    trainer = DQNTrainer(env="tagged_multi_agent", config=config)
    try:
        result = trainer.train()
        p0, p1 = trainer.get_policy("p0"), trainer.get_policy("p1")
        assert (p0.model.num_atoms, p0.model.noisy, p1.model.num_atoms, p1.model.noisy) == (11, True, 1, False)
        for pid in ("p0", "p1"):
            assert np.isfinite(result["info"]["learner"][pid]["loss"])
        # n-step per (episode, agent): p1 (1-step) stores next obs one step ahead, p0 (3-step) up to three.
        r1 = trainer.optimizer.replay_buffers["p1"].sample(64, beta=0.4)
        assert np.all(r1[SB.NEXT_OBS][:, 1] - r1[SB.OBS][:, 1] == 1)
        r0 = trainer.optimizer.replay_buffers["p0"].sample(256, beta=0.4)
        assert set(np.unique(r0[SB.NEXT_OBS][:, 1] - r0[SB.OBS][:, 1])) <= {1.0, 2.0, 3.0}
    finally:
        trainer.stop()


def test_count_steps_by_agent_steps_drives_the_counters():
    trainer = DQNTrainer(env="tagged_multi_agent", config=dqn_config(count_steps_by="agent_steps"))
    batches = recording_sampler(trainer)
    try:
        trainer.train()
        opt = trainer.optimizer
        assert opt.num_steps_sampled == sum(b.count for b in batches) >= 200  # agent steps drive the iteration
        assert opt.num_agent_steps_sampled == sum(b.total() for b in batches)
        # A fragment's agent-step count and its rows differ by the transitions still open at its end (their rows
        # come with the next fragment), never by more than one step of every agent.
        assert abs(opt.num_steps_sampled - opt.num_agent_steps_sampled) <= len(AGENTS)
    finally:
        trainer.stop()


# --- DDPG / TD3 --------------------------------------------------------------------------------------------------
def test_td3_multi_agent_trains_only_its_trainable_policy_with_per_policy_noise():
    config = {
        "seed": 0,
        "actor_hiddens": [16],
        "critic_hiddens": [16],
        "learning_starts": 100,
        "pure_exploration_steps": 100,
        "train_batch_size": 32,
        "timesteps_per_iteration": 300,
        "min_iter_time_s": 0,
        "multiagent": {
            "policies": {
                "p0": (None, None, None, {}),
                "p1": (None, None, None, {"exploration_gaussian_sigma": 0.0}),
                "frozen": (None, None, None, {}),
            },
            "policy_mapping_fn": lambda agent_id, episode=None, **kw: ["p0", "frozen"][agent_id],
            "policies_to_train": ["p0", "p1"],
        },
    }
    trainer = TD3Trainer(env="multi_pendulum_2", config=config)
    frozen_before, p0_before = snapshot(trainer.get_policy("frozen")), snapshot(trainer.get_policy("p0"))
    try:
        result = trainer.train()
        assert set(result["info"]["learner"]) == {"p0"}  # p1 has no agent: nothing to replay
        assert all_equal(frozen_before, snapshot(trainer.get_policy("frozen")))
        assert not all_equal(p0_before, snapshot(trainer.get_policy("p0")))
        assert trainer.optimizer.num_agent_steps_sampled == 2 * trainer.optimizer.num_steps_sampled
        # Per-policy noise: with sigma 0, p1 acts deterministically after the pure-exploration steps.
        p1 = trainer.get_policy("p1")
        obs = np.zeros((3, 3), np.float32)
        np.testing.assert_array_equal(p1.compute_actions(obs)[0], p1.compute_actions(obs, explore=False)[0])
        p0 = trainer.get_policy("p0")
        assert not np.array_equal(p0.compute_actions(obs)[0], p0.compute_actions(obs, explore=False)[0])
    finally:
        trainer.stop()


# --- Ape-X parts (without Ray) -----------------------------------------------------------------------------------
def tagged_batch(tag: float, n: int, seed: int) -> SampleBatch:
    rng = np.random.default_rng(seed)
    obs = np.column_stack([np.full(n, tag), rng.normal(size=n)]).astype(np.float32)
    return SampleBatch(
        {
            SB.OBS: obs,
            SB.NEXT_OBS: obs.copy(),
            SB.ACTIONS: rng.integers(0, 2, n),
            SB.REWARDS: np.ones(n, np.float32),
            SB.TERMINATEDS: np.zeros(n, bool),
            "n_step_discount": np.full(n, 0.99, np.float32),
        }
    )


def test_replay_shard_and_learner_thread_per_policy():
    from relayrl.agents.dqn.dqn import DEFAULT_CONFIG
    from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy

    shard = ReplayActor(
        num_shards=2,
        learning_starts=40,
        buffer_size=1000,
        train_batch_size=16,
        prioritized_replay=True,
        alpha=0.6,
        eps=1e-6,
        compress=False,
        seed=0,
        policy_overrides={"p0": {}, "p1": {"train_batch_size": 4, "learning_starts": 100}},
    )
    batch = MultiAgentBatch(
        {"p0": tagged_batch(0, 30, 0), "p1": tagged_batch(1, 30, 1), "x": tagged_batch(2, 30, 2)}, 30
    )
    assert shard.add_batch(batch) == 30
    assert set(shard.buffers) == {"p0", "p1"}  # "x" is not trained here: not stored
    assert shard.replay(0.4).policy_batches.keys() == {"p0"}  # p1 waits for 100 / 2 rows
    shard.add_batch(batch)
    replayed = shard.replay({"p0": 0.4, "p1": 1.0})
    assert {p: b.count for p, b in replayed.policy_batches.items()} == {"p0": 16, "p1": 4} and replayed.count == 20
    assert set(replayed.policy_batches["p1"][SB.OBS][:, 0]) == {1.0}
    space = TaggedEnv.observation_space
    policies = {
        pid: DQNTorchPolicy(space, gym.spaces.Discrete(2), {**DEFAULT_CONFIG, "hiddens": [8], "seed": i})
        for i, pid in enumerate(("p0", "p1"))
    }
    learner = LearnerThread(policies, target_network_update_freq={"p0": 1000, "p1": 8})
    learner.inqueue.put((shard, replayed))
    learner.step()
    s, idx, td, count = learner.outqueue.get_nowait()
    assert s is shard and count == 20 and learner.num_steps_trained == 20
    assert {p: (len(idx[p]), len(td[p])) for p in idx} == {"p0": (16, 16), "p1": (4, 4)}
    assert learner.num_target_updates == 0 and learner.rows_since_target_update == {"p0": 16, "p1": 4}
    learner.inqueue.put((shard, shard.replay(0.4)))
    learner.step()
    assert learner.num_target_updates == 1 and learner.rows_since_target_update == {"p0": 32, "p1": 0}
    assert set(learner.stats) == {"p0", "p1"}
    shard.update_priorities(idx, {"p0": td["p0"], "p1": np.full(4, 5.0)})
    stats = shard.stats()
    assert stats["p0"]["num_priority_updates"] == 16 and stats["p1"]["num_priority_updates"] == 4
    assert stats["p1"]["max_priority"] == pytest.approx(5.0 + 1e-6)


# --- Ape-X with Ray ----------------------------------------------------------------------------------------------
def test_apex_multi_agent_trains_each_trainable_policy(ray_session):
    from relayrl.agents.dqn import ApexTrainer

    config = dqn_config(
        num_workers=2,
        num_gpus=0,
        learning_starts=200,
        sample_batch_size=20,
        timesteps_per_iteration=400,
        optimizer={"num_replay_buffer_shards": 2, "max_weight_sync_delay": 100, "debug": True},
        p1={"train_batch_size": 8},
    )
    config["multiagent"]["policy_mapping_fn"] = lambda agent_id, episode=None, **kw: f"p{agent_id}"
    config["multiagent"]["policies_to_train"] = ["p0"]
    trainer = ApexTrainer(env="multi_cartpole_2", config=config)
    p1_before = snapshot(trainer.get_policy("p1"))
    try:
        result = trainer.train()
        while trainer.optimizer.num_steps_trained == 0:
            result = trainer.train()
        info = result["info"]
        assert set(info["learner"]) == {"p0"} and set(info["replay_shard_0"]) - {"p0"} == {
            "add_time_ms",
            "replay_time_ms",
            "update_priorities_time_ms",
        }
        assert info["num_agent_steps_sampled"] > info["num_steps_sampled"] > 0
        assert all_equal(p1_before, snapshot(trainer.get_policy("p1")))
        eps = trainer.workers.foreach_worker(lambda w: [w.get_policy(p).cur_epsilon() for p in ("p0", "p1")])
        np.testing.assert_allclose(eps, [[0.0, 0.0], [0.4, 0.4], [0.4**8, 0.4**8]])  # per worker, every policy
    finally:
        trainer.stop()

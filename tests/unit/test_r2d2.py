"""R2D2-style DQN (model.use_lstm): sequence replay, burn-in, in-sequence n-step targets, mixed priorities."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from relayrl.agents.dqn.dqn import DEFAULT_CONFIG, DQNTrainer
from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy, huber
from relayrl.agents.dqn.r2d2 import RecurrentQModel, sequence_priorities
from relayrl.examples.stateless_cartpole import StatelessCartPole
from relayrl.optimizers.sequence_replay import SequenceSpec, sequence_columns
from relayrl.optimizers.sync_replay import add_to_buffer, make_buffer
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch
SMALL = {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [8]}


def hand_batch(rng: np.random.Generator) -> SampleBatch:
    """Episode 0: 7 steps, terminated; episode 1: 3 steps, cut by the fragment's end. obs = (episode, t)."""
    eps = np.array([0] * 7 + [1] * 3)
    t = np.array(list(range(7)) + list(range(3)))
    n = len(t)
    terminated = np.zeros(n, dtype=bool)
    terminated[6] = True
    obs = np.stack([eps, t], axis=1).astype(np.float32)
    return SampleBatch(
        {
            SB.OBS: obs,
            SB.NEXT_OBS: obs + np.array([0.0, 1.0], dtype=np.float32),
            SB.ACTIONS: rng.integers(0, 2, n),
            SB.REWARDS: rng.random(n).astype(np.float32),
            SB.DONES: terminated.copy(),
            SB.TERMINATEDS: terminated,
            SB.EPS_ID: eps,
            SB.T: t,
            "state_in_0": rng.normal(size=(n, 3)).astype(np.float32),
            "state_in_1": rng.normal(size=(n, 3)).astype(np.float32),
        }
    )


def test_sequences_never_cross_episodes_and_keep_the_start_state():
    batch = hand_batch(np.random.default_rng(0))
    cols = sequence_columns(batch, SequenceSpec(length=4, overlap=1, num_states=2))
    # Episode 0 (7 steps, stride 3): starts 0, 3 (the second reaches its end); episode 1: start 7.
    np.testing.assert_array_equal(cols[SB.SEQ_LENS], [4, 4, 3])
    starts = [0, 3, 7]
    for i, (start, n) in enumerate(zip(starts, cols[SB.SEQ_LENS])):
        obs = cols[SB.OBS][i]
        assert obs.shape == (5, 2)
        np.testing.assert_array_equal(obs[:n], batch[SB.OBS][start : start + n])  # one episode, in order
        np.testing.assert_array_equal(obs[n], batch[SB.NEXT_OBS][start + n - 1])  # the bootstrap observation
        assert not obs[n + 1 :].any()  # zero padding
        for j in range(2):
            np.testing.assert_array_equal(cols[f"state_in_{j}"][i], batch[f"state_in_{j}"][start])
        np.testing.assert_array_equal(cols[SB.ACTIONS][i][:n], batch[SB.ACTIONS][start : start + n])
    assert cols[SB.TERMINATEDS][1][3] == 1.0 and cols[SB.TERMINATEDS].sum() == 1.0
    # One slot per sequence in an ordinary prioritized buffer.
    buffer = make_buffer(100, True, 0.6, 1e-6, True, seed=0, sequences=True)
    add_to_buffer(buffer, batch, SequenceSpec(4, 1, 2))
    assert len(buffer) == 3
    rows = buffer.sample(2, beta=0.4)
    assert rows[SB.OBS].shape == (2, 5, 2) and rows["state_in_0"].shape == (2, 3)


def test_trajectory_no_longer_than_burn_in_is_not_stored():
    batch = hand_batch(np.random.default_rng(0))
    cols = sequence_columns(batch, SequenceSpec(length=5, overlap=3, num_states=2))
    # Episode 0: starts 0, 2 (lens 5, 5); episode 1 (3 steps <= burn-in 3): dropped.
    np.testing.assert_array_equal(cols[SB.SEQ_LENS], [5, 5])


def make_policy(**overrides) -> DQNTorchPolicy:
    env = StatelessCartPole()
    config = {**DEFAULT_CONFIG, "model": dict(SMALL), "hiddens": [8], "seed": 0, **overrides}
    torch.manual_seed(0)
    policy = DQNTorchPolicy(env.observation_space, env.action_space, config)
    # A target net that differs from the online one, so that double Q matters.
    with torch.no_grad():
        for p in policy.target_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return policy


def replayed_batch(policy, num: int = 3, length: int = 6, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    lens = np.array([length, 4, 5][:num])
    obs = np.zeros((num, length + 1, 2), dtype=np.float32)
    for i, n in enumerate(lens):
        obs[i, : n + 1] = rng.normal(size=(n + 1, 2))
    mask = np.arange(length)[None] < lens[:, None]
    terminated = np.zeros((num, length), dtype=np.float32)
    terminated[1, lens[1] - 1] = 1.0  # sequence 1 ends its episode
    cols = {
        SB.OBS: obs,
        SB.ACTIONS: np.where(mask, rng.integers(0, 2, (num, length)), 0),
        SB.REWARDS: np.where(mask, rng.random((num, length)), 0.0).astype(np.float32),
        SB.TERMINATEDS: terminated,
        SB.SEQ_LENS: lens.astype(np.int32),
        "state_in_0": rng.normal(size=(num, 8)).astype(np.float32),
        "state_in_1": rng.normal(size=(num, 8)).astype(np.float32),
        "weights": np.array([1.0, 0.5, 0.8][:num], dtype=np.float32),
    }
    return policy.load_batch(SampleBatch(cols))


def test_burn_in_leaves_no_gradient_through_burn_in_steps():
    burn_in = 2
    policy = make_policy(burn_in=burn_in, n_step=2)
    batch = replayed_batch(policy)
    obs = batch[SB.OBS].clone().requires_grad_(True)
    state = [batch[k].clone().requires_grad_(True) for k in ("state_in_0", "state_in_1")]
    loss, _, _ = policy.compute_loss(
        policy.model, {**batch, SB.OBS: obs, "state_in_0": state[0], "state_in_1": state[1]}
    )
    loss.backward()
    grad = obs.grad.reshape(3, 7, 2)
    assert torch.count_nonzero(grad[:, :burn_in]) == 0  # nothing flows back through the burn-in steps
    assert all(s.grad is None or torch.count_nonzero(s.grad) == 0 for s in state)  # nor into the stored state
    assert torch.count_nonzero(grad[0, burn_in:6]) > 0  # the learned steps do get gradient
    # The burn-in still matters for the values: another burn-in observation changes the loss.
    other = {**batch, SB.OBS: batch[SB.OBS].clone()}
    other[SB.OBS].view(3, 7, 2)[:, 0] += 1.0
    with torch.no_grad():
        assert policy.compute_loss(policy.model, other)[0] != policy.compute_loss(policy.model, batch)[0]


def test_padded_steps_change_nothing():
    policy = make_policy(burn_in=1, n_step=3)
    batch = replayed_batch(policy)
    noisy = {k: v.clone() for k, v in batch.items()}
    # Sequence 1 has 4 real steps (obs[4] is its bootstrap observation): change everything after them.
    noisy[SB.OBS].view(3, 7, 2)[1, 5:] = 7.0
    noisy[SB.REWARDS].view(3, 6)[1, 4:] = 5.0
    noisy[SB.ACTIONS].view(3, 6)[1, 4:] = 1
    with torch.no_grad():
        a, _, fa = policy.compute_loss(policy.model, batch)
        b, _, fb = policy.compute_loss(policy.model, noisy)
    assert torch.equal(a, b) and torch.equal(fa["td_error"], fb["td_error"])


def test_in_sequence_n_step_double_q_targets_and_mixed_priorities_by_hand():
    burn_in, n_step, gamma = 1, 3, 0.9
    policy = make_policy(burn_in=burn_in, n_step=n_step, gamma=gamma, double_q=True, dueling=True)
    batch = replayed_batch(policy)
    with torch.no_grad():
        loss, _, fetches = policy.compute_loss(policy.model, batch)
        state = [batch["state_in_0"], batch["state_in_1"]]
        obs = batch[SB.OBS].view(3, 7, 2)
        q_on, _ = policy.model.unroll(obs, state)  # burn-in changes gradients, not values
        q_tg, _ = policy.target_model.unroll(obs, state)
    lens = batch[SB.SEQ_LENS].tolist()
    r = batch[SB.REWARDS].view(3, 6).numpy()
    a = batch[SB.ACTIONS].view(3, 6).numpy()
    term = batch[SB.TERMINATEDS].view(3, 6).numpy()
    w = batch["weights"].numpy()
    expect_prio, expect_loss = [], []
    for s, n in enumerate(lens):
        tds = []
        for t in range(burn_in, n):
            m = min(n_step, n - t)
            ret = sum(gamma**k * r[s, t + k] for k in range(m))
            live = 0.0 if (t + m == n and term[s, n - 1]) else 1.0
            a_star = int(q_on[s, t + m].argmax())
            target = ret + gamma**m * live * float(q_tg[s, t + m, a_star])
            tds.append(float(q_on[s, t, a[s, t]]) - target)
        tds = np.array(tds)
        expect_prio.append(0.9 * np.abs(tds).max() + 0.1 * np.abs(tds).mean())
        expect_loss.append(w[s] * float(huber(torch.tensor(tds)).mean()))
    np.testing.assert_allclose(fetches["td_error"].numpy(), expect_prio, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), np.mean(expect_loss), rtol=1e-5, atol=1e-7)


def test_priority_mixes_max_and_mean_abs_td():
    abs_td = torch.tensor([[1.0, 3.0, 2.0, 99.0], [0.5, 0.5, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [False] * 4])
    prio = sequence_priorities(abs_td, mask)
    np.testing.assert_allclose(prio.numpy(), [0.9 * 3 + 0.1 * 2, 0.5, 0.0], rtol=1e-6)


def test_recurrent_acting_threads_state():
    policy = make_policy()
    assert isinstance(policy.model, RecurrentQModel) and policy.is_recurrent()
    init = [np.stack([s] * 2) for s in policy.get_initial_state()]
    obs = np.array([[0.1, 0.0], [0.0, 0.1]], dtype=np.float32)
    actions, state_out, _ = policy.compute_actions(obs, init, explore=False)
    assert actions.shape == (2,) and [s.shape for s in state_out] == [(2, 8), (2, 8)]
    assert not np.allclose(state_out[0], 0.0)


def test_one_training_iteration_on_stateless_cartpole():
    trainer = DQNTrainer(
        env=StatelessCartPole,
        config={
            "model": dict(SMALL),
            "hiddens": [8],
            "sample_batch_size": 20,
            "replay_sequence_length": 10,
            "burn_in": 3,
            "n_step": 3,
            "learning_starts": 60,
            "timesteps_per_iteration": 100,
            "train_batch_size": 4,
            "buffer_size": 500,
            "min_iter_time_s": 0,
            "seed": 0,
        },
    )
    try:
        result = trainer.train()
        stats = result["info"]["learner"]["default_policy"]
        assert np.isfinite(stats["loss"]) and result["timesteps_total"] >= 100
        buffer = trainer.optimizer.replay_buffers["default_policy"]
        assert buffer.stats()["num_priority_updates"] > 0
        rows = buffer.sample(4, beta=0.4)
        assert rows[SB.OBS].shape == (4, 11, 2) and (rows[SB.SEQ_LENS] > 3).all()
    finally:
        trainer.stop()


def test_burn_in_must_be_below_the_sequence_length():
    with pytest.raises(ValueError, match="burn_in"):
        DQNTrainer(env=StatelessCartPole, config={"model": dict(SMALL), "burn_in": 20, "replay_sequence_length": 20})


@pytest.mark.slow  # starts Ray, a remote actor and two replay shards
def test_apex_with_use_lstm_replays_sequences():
    from relayrl.agents.dqn import ApexTrainer

    trainer = ApexTrainer(
        env=StatelessCartPole,
        config={
            "seed": 0,
            "num_workers": 1,
            "num_gpus": 0,
            "model": dict(SMALL),
            "hiddens": [8],
            "replay_sequence_length": 10,
            "burn_in": 2,
            "n_step": 3,
            "buffer_size": 1000,
            "learning_starts": 20,
            "train_batch_size": 4,
            "sample_batch_size": 20,
            "timesteps_per_iteration": 200,
            "min_iter_time_s": 0,
            "optimizer": {"num_replay_buffer_shards": 2, "max_weight_sync_delay": 100},
        },
    )
    try:
        # The learner thread trains asynchronously: wait for its first reported update (time-bounded, so that a
        # busy machine does not fail the test while a learner that never trains still does).
        deadline = time.monotonic() + 180
        result = trainer.train()
        # The optimizer counts trained rows when it drains the learner's queue, one train() after the stats appear.
        trained = lambda: "default_policy" in result["info"]["learner"] and trainer.optimizer.num_steps_trained > 0  # noqa: E731
        while not trained() and time.monotonic() < deadline:
            result = trainer.train()
        assert trainer.optimizer.num_steps_trained > 0 and result["timesteps_total"] >= 200
        assert np.isfinite(result["info"]["learner"]["default_policy"]["loss"])
    finally:
        trainer.stop()

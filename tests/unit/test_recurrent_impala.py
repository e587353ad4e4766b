"""IMPALA with a recurrent model (issue 13): V-trace over padded sequences against the unpadded computation piece by
piece, padded steps that change no gradient, a replayed copy that stays its own trajectory, and a training
iteration in one process."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.impala import DEFAULT_CONFIG as IMPALA_CONFIG
from relayrl.agents.impala import ImpalaTrainer, VTraceTorchPolicy
from relayrl.examples.stateless_cartpole import StatelessCartPole
from relayrl.policy.rnn_sequencing import SEQ_MASK
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch
OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT_SPACE = gym.spaces.Discrete(3)
T, CELL, GAMMA = 6, 4, 0.9


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _policy(rnn_type: str = "lstm", prev: bool = True, **overrides) -> VTraceTorchPolicy:
    torch.manual_seed(0)
    model = {
        "use_lstm": True,
        "rnn_type": rnn_type,
        "lstm_cell_size": CELL,
        "fcnet_hiddens": [5],
        "lstm_use_prev_action_reward": prev,
    }
    config = {**IMPALA_CONFIG, "model": model, "num_gpus": 0, "sample_batch_size": T, "gamma": GAMMA, **overrides}
    return VTraceTorchPolicy(OBS_SPACE, ACT_SPACE, config)


def _batch(num_states: int, seed: int = 0) -> SampleBatch:
    """Two sub-envs' unrolls of T steps as the sampler lays them out: env 0 terminates at its step 2 and starts a new
    episode, env 1 is cut by a time limit at its step 3 and starts a new one; four pieces of 3, 3, 4 and 2 steps.
    States, behaviour log-probs, previous actions and rewards are random: the loss must read what the batch holds."""
    rng = np.random.default_rng(seed)
    n = 2 * T
    term, trunc = np.zeros(n, bool), np.zeros(n, bool)
    term[2], trunc[T + 3] = True, True
    unroll = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    t = np.array([5, 6, 7, 0, 1, 2, 40, 41, 42, 43, 0, 1])
    cols = {
        SB.OBS: rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        SB.NEXT_OBS: rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        SB.ACTIONS: rng.integers(0, 3, n),
        SB.REWARDS: rng.uniform(0, 1, n),
        SB.TERMINATEDS: term,
        SB.TRUNCATEDS: trunc,
        SB.DONES: term | trunc,
        SB.ACTION_LOGP: np.log(rng.uniform(0.2, 0.5, n)).astype(np.float32),
        SB.UNROLL_ID: unroll,
        SB.EPS_ID: 100 + unroll,
        SB.AGENT_INDEX: np.zeros(n, np.int64),
        SB.T: t,
        SB.PREV_ACTIONS: rng.integers(0, 3, n),
        SB.PREV_REWARDS: rng.uniform(0, 1, n).astype(np.float32),
    }
    for j in range(num_states):
        cols[f"state_in_{j}"] = rng.normal(0, 0.5, (n, CELL)).astype(np.float32)
    return SampleBatch(cols)


PIECES = [(0, 3), (3, 6), (6, 10), (10, 12)]


def _reference_loss(policy: VTraceTorchPolicy, batch: SampleBatch, max_seq_len: int) -> tuple[torch.Tensor, dict]:
    """The loss computed piece by piece without padding: the model runs over each sequence of a piece (pieces cut
    into ``max_seq_len`` steps) from its recorded start state, exactly as long as it is; a piece that did not
    terminate is valued after its last step by running its last sequence once more with the next observation
    appended; V-trace is the paper's recursion in numpy (eq. 1 with rho_bar = c_bar = 1, section 4.2)."""
    model, config = policy.model, policy.config
    num_states = len(policy.get_initial_state())
    pi_loss = vf_loss = entropy = 0.0
    for a, b in PIECES:
        logits, values, boot = [], [], 0.0
        for s in range(a, b, max_seq_len):
            e = min(b, s + max_seq_len)
            state = [torch.as_tensor(batch[f"state_in_{j}"][s : s + 1]) for j in range(num_states)]
            obs, prev_a, prev_r = batch[SB.OBS][s:e], batch[SB.PREV_ACTIONS][s:e], batch[SB.PREV_REWARDS][s:e]
            out, _ = model(_inputs(obs, prev_a, prev_r), state, torch.tensor([e - s]))
            logits.append(out)
            values.append(model.value_function())
            if e == b and not batch[SB.TERMINATEDS][b - 1]:
                with torch.no_grad():
                    more = _inputs(
                        np.concatenate([obs, batch[SB.NEXT_OBS][b - 1 : b]]),
                        np.append(prev_a, batch[SB.ACTIONS][b - 1]),
                        np.append(prev_r, batch[SB.REWARDS][b - 1]),
                    )
                    model(more, state, torch.tensor([e - s + 1]))
                    boot = float(model.value_function()[-1])
        dist = policy.dist_class(torch.cat(logits), model)
        values = torch.cat(values)
        logp = dist.logp(torch.as_tensor(batch[SB.ACTIONS][a:b]))
        vs, adv = _numpy_vtrace(
            logp.detach().double().numpy() - batch[SB.ACTION_LOGP][a:b], batch[SB.REWARDS][a:b], values, boot
        )
        pi_loss = pi_loss - (logp * torch.as_tensor(adv, dtype=torch.float32)).sum()
        vf_loss = vf_loss + 0.5 * (values - torch.as_tensor(vs, dtype=torch.float32)).pow(2).sum()
        entropy = entropy + dist.entropy().sum()
    total = pi_loss + config["vf_loss_coeff"] * vf_loss + config["entropy_coeff"] * entropy
    return total, {"policy_loss": pi_loss, "vf_loss": vf_loss, "entropy": entropy / batch.count}


def _inputs(obs, prev_a, prev_r) -> dict:
    return {
        "obs": torch.as_tensor(obs, dtype=torch.float32),
        SB.PREV_ACTIONS: torch.as_tensor(prev_a),
        SB.PREV_REWARDS: torch.as_tensor(prev_r, dtype=torch.float32),
    }


def _numpy_vtrace(log_rho: np.ndarray, rewards: np.ndarray, values: torch.Tensor, boot: float):
    """``(vs, pg_advantages)`` of one piece: discount GAMMA inside it, the bootstrap value after its last step."""
    v = values.detach().double().numpy()
    rho = np.exp(log_rho)
    clipped, c = np.minimum(1.0, rho), np.minimum(1.0, rho)
    n = len(v)
    v_next = np.append(v[1:], boot)
    vs = np.zeros(n)
    acc = 0.0
    for s in reversed(range(n)):
        acc = clipped[s] * (rewards[s] + GAMMA * v_next[s] - v[s]) + (GAMMA * c[s] * acc if s < n - 1 else 0.0)
        vs[s] = v[s] + acc
    vs_next = np.append(vs[1:], boot)
    return vs, clipped * (rewards + GAMMA * vs_next - v)


def _grads(policy, loss: torch.Tensor) -> list[np.ndarray]:
    policy.zero_grad()
    loss.backward()
    return [np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy().copy() for p in policy.model.parameters()]


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("max_seq_len", [T, 2])
def test_vtrace_over_padded_sequences_equals_the_unpadded_computation_per_piece(rnn_type, max_seq_len):
    policy = _policy(rnn_type)
    assert policy.max_seq_len == T  # IMPALA's sequences are its unrolls
    policy.max_seq_len = max_seq_len  # 2: pieces of several sequences, each from its recorded state
    batch = _batch(len(policy.get_initial_state()))
    tensors = policy.load_batch(batch)
    num_seq = {T: 4, 2: 7}[max_seq_len]
    assert tensors[SB.SEQ_LENS].shape == (num_seq,) and int((~tensors[SEQ_MASK]).sum()) == num_seq * max_seq_len - 12
    total, stats, _ = policy.compute_loss(policy.model, tensors)
    ref_total, ref_stats = _reference_loss(policy, batch, max_seq_len)
    for key, value in ref_stats.items():
        assert float(stats[key]) == pytest.approx(float(value.detach()), rel=1e-4, abs=1e-5), key
    assert float(total.detach()) == pytest.approx(float(ref_total.detach()), rel=1e-4, abs=1e-5)
    # The gradient of the padded computation is the unpadded one's.
    for a, b in zip(_grads(policy, total), _grads(policy, ref_total)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_padded_step_changes_no_gradient_or_statistic():
    policy = _policy()
    tensors = policy.load_batch(_batch(2))
    total, stats, _ = policy.compute_loss(policy.model, tensors)
    clean = _grads(policy, total)
    pad = ~tensors[SEQ_MASK]
    assert int(pad.sum()) == 4 * T - 12
    noisy = {k: v.clone() for k, v in tensors.items()}
    for key, value in ((SB.OBS, 1e3), (SB.NEXT_OBS, -1e3), (SB.REWARDS, 1e3), (SB.ACTION_LOGP, -50.0)):
        noisy[key][pad] = value
    noisy[SB.ACTIONS][pad] = 2
    noisy[SB.PREV_ACTIONS][pad] = 1
    noisy[SB.TERMINATEDS][pad] = True
    noisy_total, noisy_stats, _ = policy.compute_loss(policy.model, noisy)
    assert float(noisy_total.detach()) == float(total.detach())
    assert {k: float(v) for k, v in noisy_stats.items()} == {k: float(v) for k, v in stats.items()}
    for a, b in zip(clean, _grads(policy, noisy_total)):
        np.testing.assert_array_equal(a, b)


def test_a_replayed_copy_after_its_batch_stays_its_own_trajectory():
    # IMPALA's replay may append a batch right after itself: same unroll and episode ids, t starting over.
    policy = _policy()
    batch = _batch(2).slice(3, 6)  # one piece, cut by the fragment's end (no done)
    once, stats, _ = policy.compute_loss(policy.model, policy.load_batch(batch))
    tensors = policy.load_batch(SampleBatch.concat_samples([batch, batch]))
    assert tensors[SB.SEQ_LENS].tolist() == [3, 3]  # not one sequence of 6 steps
    twice, stats2, _ = policy.compute_loss(policy.model, tensors)
    assert float(twice.detach()) == pytest.approx(2 * float(once.detach()), rel=1e-5)
    assert float(stats2["entropy"]) == pytest.approx(float(stats["entropy"]), rel=1e-5)


def test_impala_validates_max_seq_len():
    config = {"num_workers": 0, "num_gpus": 0, "model": {"use_lstm": True, "max_seq_len": 10}}
    with pytest.raises(ValueError, match="model.max_seq_len"):
        ImpalaTrainer(env=StatelessCartPole, config=config)


@pytest.mark.parametrize("vtrace", [True, False])
def test_impala_lstm_trains_in_one_process(vtrace):
    config = {
        "vtrace": vtrace,
        "num_workers": 0,
        "num_gpus": 0,
        "min_iter_time_s": 0,
        "timesteps_per_iteration": 200,
        "train_batch_size": 100,
        "sample_batch_size": 25,
        "num_envs_per_worker": 2,
        "replay_proportion": 0.5,
        "replay_buffer_num_slots": 4,
        "seed": 0,
        "model": {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [8], "lstm_use_prev_action_reward": True},
    }
    trainer = ImpalaTrainer(env=StatelessCartPole, config=config)
    try:
        policy = trainer.get_policy()
        assert policy.is_recurrent() and policy.max_seq_len == 25 and policy._fast_path
        before = {k: v.copy() for k, v in policy.get_weights().items()}
        result = trainer.train()
        import time

        deadline = time.time() + 30
        while not trainer.optimizer.learner.learner_stats and time.time() < deadline:
            time.sleep(0.05)
        stats = trainer.optimizer.learner.learner_stats["default_policy"]
        assert result["timesteps_total"] >= 200
        assert stats and all(np.isfinite(v) for v in stats.values())
        assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())
    finally:
        trainer.stop()

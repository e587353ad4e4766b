"""DQN: the C51 projection, noisy layers, PER weights in the loss, double-Q/n-step targets, action masking,
epsilon schedules, the SyncReplayOptimizer's bookkeeping, and the config against seed 004."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.dqn import APEX_DEFAULT_CONFIG, DEFAULT_CONFIG, DQNTrainer
from relayrl.agents.dqn.dqn_model import DQNModel, NoisyLinear
from relayrl.agents.dqn.dqn_torch_policy import DQNTorchPolicy, add_nstep_columns, dqn_loss, huber, project_distribution
from relayrl.env.registry import register_env
from relayrl.models.action_mask import action_mask_columns
from relayrl.models.preprocessors import get_preprocessor
from relayrl.policy.sample_batch import SampleBatch
from relayrl.utils.exploration import epsilon_schedule, per_worker_epsilon

SB = SampleBatch
OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


def make_policy(**overrides) -> DQNTorchPolicy:
    config = {
        **DEFAULT_CONFIG,
        "model": {**DEFAULT_CONFIG["model"], "fcnet_hiddens": [16], "fcnet_activation": "relu"},
        "hiddens": [16],
        "seed": 0,
        **overrides,
    }
    torch.manual_seed(0)
    return DQNTorchPolicy(OBS_SPACE, gym.spaces.Discrete(3), config)


def random_batch(n: int = 8, seed: int = 0, weights: np.ndarray | None = None) -> SampleBatch:
    rng = np.random.default_rng(seed)
    batch = {
        SB.OBS: rng.normal(size=(n, 4)).astype(np.float32),
        SB.NEXT_OBS: rng.normal(size=(n, 4)).astype(np.float32),
        SB.ACTIONS: rng.integers(0, 3, n),
        SB.REWARDS: rng.normal(size=n).astype(np.float32),
        SB.TERMINATEDS: (rng.random(n) < 0.3).astype(np.float32),
        "n_step_discount": np.full(n, 0.99, np.float32),
    }
    if weights is not None:
        batch["weights"] = weights.astype(np.float32)
    return SampleBatch(batch)


# --- C51 ----------------------------------------------------------------------------------------------------
def numpy_projection(p, r, disc, v_min, v_max):
    """Bellemare et al. 2017, Algorithm 1, one transition and one atom at a time."""
    batch, atoms = p.shape
    z = np.linspace(v_min, v_max, atoms)
    dz = (v_max - v_min) / (atoms - 1)
    m = np.zeros_like(p)
    for i in range(batch):
        for j in range(atoms):
            tz = min(v_max, max(v_min, r[i] + disc[i] * z[j]))
            b = (tz - v_min) / dz
            lo, up = int(np.floor(b)), int(np.ceil(b))
            if lo == up:
                m[i, lo] += p[i, j]
            else:
                m[i, lo] += p[i, j] * (up - b)
                m[i, up] += p[i, j] * (b - lo)
    return m


@pytest.mark.parametrize("atoms,v_min,v_max", [(51, -10.0, 10.0), (11, 0.0, 5.0), (5, -1.0, 1.0)])
def test_c51_projection_matches_numpy_reference(atoms, v_min, v_max):
    rng = np.random.default_rng(1)
    p = rng.random((64, atoms))
    p /= p.sum(1, keepdims=True)
    r = rng.normal(scale=3.0, size=64)
    r[:4] = [0.0, 100.0, -100.0, 0.5 * (v_max - v_min) / (atoms - 1)]  # on-atom, clipped high/low, half-way
    disc = rng.choice([0.0, 0.9, 0.99, 0.99**3], size=64)
    expected = numpy_projection(p, r, disc, v_min, v_max)
    got = project_distribution(
        torch.tensor(p),
        torch.tensor(r),
        torch.tensor(disc),
        torch.linspace(v_min, v_max, atoms, dtype=torch.float64),
        v_min,
        v_max,
    )
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-10)  # no mass is lost


def test_distributional_loss_is_cross_entropy_to_projected_target():
    policy = make_policy(num_atoms=11, v_min=-5.0, v_max=5.0, dueling=False, double_q=False)
    policy.target_model.load_state_dict(policy.model.state_dict())
    tensors = policy.load_batch(random_batch())
    loss, _, fetches = dqn_loss(policy, policy.model, policy.dist_class, tensors)
    with torch.no_grad():
        q, logits, _ = policy.model.q_values(tensors[SB.OBS])
        _, logits_tp1, _ = policy.model.q_values(tensors[SB.NEXT_OBS])
        q_tp1 = (logits_tp1.softmax(-1) * policy.model.support).sum(-1)
        rows = torch.arange(8)
        a_tp1 = q_tp1.argmax(1)
        live = tensors["n_step_discount"] * (1 - tensors[SB.TERMINATEDS])
        m = numpy_projection(
            logits_tp1[rows, a_tp1].softmax(-1).numpy().astype(np.float64),
            tensors[SB.REWARDS].numpy(),
            live.numpy(),
            -5.0,
            5.0,
        )
        logp = logits[rows, tensors[SB.ACTIONS]].log_softmax(-1).numpy()
    expected = -(m * logp).sum(1)
    np.testing.assert_allclose(fetches["td_error"].numpy(), expected, rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-4)


# --- noisy nets ---------------------------------------------------------------------------------------------
def test_noisy_linear_factorised_noise():
    torch.manual_seed(0)
    layer = NoisyLinear(10, 4, sigma0=0.5)
    assert torch.allclose(layer.weight_sigma, torch.full((4, 10), 0.5 / np.sqrt(10)))
    x = torch.randn(6, 10)
    # The factorised forward equals the explicit perturbed weight (W + sigma * f(eps_out) f(eps_in)^T) x + b.
    w = layer.weight + layer.noise_weight()
    b = layer.bias + layer.bias_sigma * layer.eps_out
    assert torch.allclose(layer(x), x @ w.T + b, atol=1e-6)
    # eps = f(N(0, 1)) with f(x) = sgn(x) sqrt|x|: the noise matrix has rank one.
    assert torch.linalg.matrix_rank(layer.noise_weight()).item() == 1
    before = layer(x)
    layer.reset_noise()
    assert not torch.allclose(before, layer(x))  # new noise, new output
    layer.use_noise = False
    assert torch.allclose(layer(x), x @ layer.weight.T + layer.bias)  # the mean network


def test_noisy_policy_explores_only_when_asked():
    policy = make_policy(noisy=True, exploration_final_eps=0.0, exploration_fraction=1e-6)
    policy.global_timestep = 10**6  # epsilon 0: only the noise explores
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    greedy = [policy.compute_actions(obs, explore=False)[0] for _ in range(3)]
    assert all((g == greedy[0]).all() for g in greedy)
    noisy = [policy.compute_actions(obs, explore=True)[0] for _ in range(5)]
    assert any((a != greedy[0]).any() for a in noisy)
    # The noise-free numpy path agrees with torch's mean network.
    with torch.no_grad():
        policy.model.set_noise(False)
        q, _, _ = policy.model.q_values(torch.from_numpy(obs))
        policy.model.set_noise(True)
    assert (q.argmax(1).numpy() == greedy[0]).all()


# --- the loss -----------------------------------------------------------------------------------------------
def test_double_q_nstep_target_and_huber():
    policy = make_policy(dueling=True, double_q=True)
    with torch.no_grad():
        for p in policy.target_model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # target differs from online
    tensors = policy.load_batch(random_batch())
    loss, _, fetches = dqn_loss(policy, policy.model, policy.dist_class, tensors)
    with torch.no_grad():
        q = policy.model(dict(obs=tensors[SB.OBS]), [], None)[0]
        a_star = policy.model(dict(obs=tensors[SB.NEXT_OBS]), [], None)[0].argmax(1)  # online picks
        q_target = policy.target_model(dict(obs=tensors[SB.NEXT_OBS]), [], None)[0]  # target values
        rows = torch.arange(8)
        y = tensors[SB.REWARDS] + tensors["n_step_discount"] * (1 - tensors[SB.TERMINATEDS]) * q_target[rows, a_star]
        td = q[rows, tensors[SB.ACTIONS]] - y
    np.testing.assert_allclose(fetches["td_error"].numpy(), td.numpy(), rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(huber(td).mean().item(), rel=1e-5)


def test_prioritized_replay_weights_scale_the_loss():
    policy = make_policy()
    weights = np.array([0.0, 0.0, 1.0, 0.5, 2.0, 0.0, 1.0, 0.1])
    tensors = policy.load_batch(random_batch(weights=weights))
    loss, _, fetches = dqn_loss(policy, policy.model, policy.dist_class, tensors)
    per_row = huber(fetches["td_error"])
    assert loss.item() == pytest.approx((torch.tensor(weights, dtype=torch.float32) * per_row).mean().item(), rel=1e-5)

    # Rows of weight 0 contribute no gradient: changing their targets leaves the gradient unchanged.
    def grads(batch):
        policy.model.zero_grad()
        dqn_loss(policy, policy.model, policy.dist_class, policy.load_batch(batch))[0].backward()
        return [p.grad.clone() for p in policy.model.parameters() if p.grad is not None]

    a = random_batch(weights=weights)
    b = random_batch(weights=weights)
    b[SB.REWARDS][weights == 0] += 100.0
    for ga, gb in zip(grads(a), grads(b)):
        assert torch.allclose(ga, gb, atol=1e-6)


def test_learn_on_batch_returns_td_errors_and_changes_weights():
    policy = make_policy()
    before = policy.get_weights()
    out = policy.learn_on_batch(random_batch())
    assert out["td_error"].shape == (8,)
    assert "mean_q" in out["learner_stats"] and "cur_epsilon" in out["learner_stats"]
    assert any(not np.allclose(before[k], v) for k, v in policy.get_weights().items())


# --- n-step postprocessing ----------------------------------------------------------------------------------
def test_nstep_truncation_bootstraps_and_termination_does_not():
    def traj(terminated_last: bool) -> SampleBatch:
        n = 4
        return SampleBatch(
            {
                SB.OBS: np.arange(n, dtype=np.float32)[:, None],
                SB.NEXT_OBS: np.arange(1, n + 1, dtype=np.float32)[:, None],
                SB.REWARDS: np.ones(n, np.float32),
                SB.TERMINATEDS: np.array([0, 0, 0, terminated_last], bool),
                SB.TRUNCATEDS: np.array([0, 0, 0, not terminated_last], bool),
            }
        )

    for terminated in (True, False):
        b = traj(terminated)
        add_nstep_columns(b, 3, 0.9)
        np.testing.assert_allclose(b[SB.REWARDS], [1 + 0.9 + 0.81, 1 + 0.9 + 0.81, 1.9, 1.0], rtol=1e-6)
        np.testing.assert_allclose(b["n_step_discount"], [0.9**3, 0.9**3, 0.81, 0.9], rtol=1e-6)
        np.testing.assert_array_equal(b[SB.NEXT_OBS][:, 0], [3, 4, 4, 4])
        # Only a termination stops the bootstrap; the truncated trajectory keeps bootstrapping from s_4.
        np.testing.assert_array_equal(b[SB.TERMINATEDS], [False, terminated, terminated, terminated])


# --- exploration --------------------------------------------------------------------------------------------
def test_epsilon_schedules():
    config = {
        **DEFAULT_CONFIG,
        "schedule_max_timesteps": 1000,
        "exploration_fraction": 0.5,
        "exploration_final_eps": 0.1,
    }
    sched = epsilon_schedule(config, 0)
    assert sched.value(0) == 1.0 and sched.value(250) == pytest.approx(0.55)
    assert sched.value(10**6) == pytest.approx(0.1)
    apex = {**config, "per_worker_exploration": True, "num_workers": 8}
    eps = [epsilon_schedule(apex, k).value(123) for k in range(1, 9)]
    np.testing.assert_allclose(eps, [0.4 ** (1 + 7 * i / 7) for i in range(8)])
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert epsilon_schedule(apex, 0).value(0) == 0.0  # the learner's own worker does not explore
    assert per_worker_epsilon(0, 1) == 0.4


def test_explore_false_is_greedy_and_epsilon_one_is_uniform():
    policy = make_policy()
    obs = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    q = policy.model.numpy_q(obs)[0]
    greedy, _, _ = policy.compute_actions(obs, explore=False)
    np.testing.assert_array_equal(greedy, q.argmax(1))
    policy.global_timestep = 0  # epsilon = 1
    actions, _, _ = policy.compute_actions(obs, explore=True)
    counts = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(counts, 1 / 3, atol=0.04)


# --- action masking -----------------------------------------------------------------------------------------
class MaskedEnv(gym.Env):
    """Five actions, a random subset of them allowed each step; choosing a masked action ends the episode
    with reward -10 (so a policy that ever picks one is caught)."""

    def __init__(self, config=None):
        self.observation_space = gym.spaces.Dict(
            {
                "obs": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
                "action_mask": gym.spaces.Box(0.0, 1.0, (5,), np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(5)
        self.rng = np.random.default_rng(0)
        self.violations = 0

    def _obs(self):
        mask = (self.rng.random(5) < 0.4).astype(np.float32)
        mask[self.rng.integers(5)] = 1.0
        self.mask = mask
        return {"obs": self.rng.uniform(-1, 1, 3).astype(np.float32), "action_mask": mask}

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.mask[action] == 0:
            self.violations += 1
            return self._obs(), -10.0, True, False, {}
        return self._obs(), float(action == 4), False, self.t >= 20, {}


def test_action_mask_slice_of_sorted_dict_keys():
    space = MaskedEnv().observation_space
    assert action_mask_columns(space) == (0, 5)  # "action_mask" sorts before "obs"
    space2 = gym.spaces.Dict(
        {"a": gym.spaces.Discrete(3), "action_mask": gym.spaces.Box(0, 1, (2,)), "z": gym.spaces.Box(0, 1, (4,))}
    )
    assert action_mask_columns(space2) == (3, 5)
    assert action_mask_columns(OBS_SPACE) is None


def masked_flat_space(space: gym.Space = None) -> gym.Space:
    """The flat observation space a RolloutWorker gives the policy of MaskedEnv (carrying the Dict)."""
    space = space or MaskedEnv().observation_space
    return get_preprocessor(space)(space).observation_space


def test_each_policy_finds_its_own_mask_without_a_trainer():
    # What a multi-agent setup does: policies built from their own spaces, no trainer-level detection.
    config = {**DEFAULT_CONFIG, "model": {**DEFAULT_CONFIG["model"], "fcnet_hiddens": [8]}, "hiddens": [8]}
    policy = DQNTorchPolicy(masked_flat_space(), gym.spaces.Discrete(5), config)
    assert policy.model.mask_slice == (0, 5) and policy.model.torso[0].in_features == 3
    renamed = gym.spaces.Dict({"legal": gym.spaces.Box(0.0, 1.0, (5,)), "obs": gym.spaces.Box(-1.0, 1.0, (3,))})
    plain = DQNTorchPolicy(masked_flat_space(renamed), gym.spaces.Discrete(5), config)
    assert plain.model.mask_slice is None  # "legal" is an ordinary entry unless model.action_mask_key names it
    keyed = {**config, "model": {**config["model"], "action_mask_key": "legal"}}
    policy = DQNTorchPolicy(masked_flat_space(renamed), gym.spaces.Discrete(5), keyed)
    assert policy.model.mask_slice == (0, 5)
    obs = np.zeros((2, 8), np.float32)
    obs[0, 2] = obs[1, 4] = 1.0
    for explore in (True, False):
        np.testing.assert_array_equal(policy.compute_actions(obs, explore=explore)[0], [2, 4])
    with pytest.raises(ValueError, match="action mask is all zeros: no legal action"):
        policy.compute_actions(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="masks 5 actions but the action space is Discrete.4."):
        DQNTorchPolicy(masked_flat_space(), gym.spaces.Discrete(4), config)


def test_masked_actions_are_never_chosen_nor_bootstrapped_from():
    register_env("masked_test_env", lambda ctx: MaskedEnv(ctx))
    trainer = DQNTrainer(
        env="masked_test_env",
        config={
            "seed": 0,
            "compress_observations": False,
            "learning_starts": 50,
            "timesteps_per_iteration": 300,
            "min_iter_time_s": 0,
            "hiddens": [16],
            "model": {"fcnet_hiddens": [16]},
            "n_step": 2,
        },
    )
    policy = trainer.get_policy()
    assert policy.model.mask_slice == (0, 5)
    assert policy.model.torso[0].in_features == 3  # the network never sees the mask columns
    for _ in range(2):  # epsilon is ~1 here: exploration must respect the mask too
        trainer.train()
    env = trainer.workers.local_worker().async_env.get_sub_environments()[0]
    assert env.violations == 0
    assert trainer.optimizer.num_steps_trained > 0
    probe = MaskedEnv()
    probe.reset(seed=3)
    for _ in range(200):
        obs = probe._obs()
        for explore in (True, False):
            assert obs["action_mask"][trainer.compute_action(obs, explore=explore)] == 1.0
    trainer.stop()


@pytest.mark.parametrize("double_q", [True, False])
def test_target_argmax_ignores_masked_actions(double_q):
    config = {
        **DEFAULT_CONFIG,
        "model": {**DEFAULT_CONFIG["model"], "fcnet_hiddens": [8]},
        "hiddens": [8],
        "dueling": False,
        "double_q": double_q,
        "seed": 0,
    }
    policy = DQNTorchPolicy(masked_flat_space(), gym.spaces.Discrete(5), config)  # mask columns 0-4, obs 5-7
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    obs[:, :5] = 1.0
    new_obs = obs.copy()
    new_obs[:, 4] = 0.0  # action 4 is masked in every next state
    batch = SampleBatch(
        {
            SB.OBS: obs,
            SB.NEXT_OBS: new_obs,
            SB.ACTIONS: rng.integers(0, 4, 16),
            SB.REWARDS: np.zeros(16, np.float32),
            SB.TERMINATEDS: np.zeros(16, np.float32),
        }
    )
    with torch.no_grad():
        for model in (policy.model, policy.target_model):
            model.advantage[-1].bias[:] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1e3])
    td = policy.compute_td_error(batch)
    assert np.abs(td).max() < 100.0  # a masked action's Q of ~1000 never enters the target
    new_obs[:, 4] = 1.0  # unmasked: now it does
    td = policy.compute_td_error(SampleBatch({**batch.data, SB.NEXT_OBS: new_obs}))
    assert np.abs(td).min() > 900.0


# --- optimizer ---------------------------------------------------------------------------------------------
def test_sync_replay_optimizer_priorities_beta_and_target_updates():
    trainer = DQNTrainer(
        env="CartPole-v1",
        config={
            "seed": 0,
            "compress_observations": True,
            "learning_starts": 200,
            "timesteps_per_iteration": 600,
            "min_iter_time_s": 0,
            "hiddens": [16],
            "model": {"fcnet_hiddens": [16]},
            "target_network_update_freq": 100,
            "prioritized_replay_beta": 0.4,
            "final_prioritized_replay_beta": 1.0,
            "beta_annealing_fraction": 0.01,
            "schedule_max_timesteps": 100000,
            "buffer_size": 1000,
        },
    )
    opt = trainer.optimizer
    policy = trainer.get_policy()
    calls = []
    original = policy.update_target
    policy.update_target = lambda: (calls.append(opt.num_steps_sampled), original())[1]
    result = trainer.train()
    assert result["timesteps_total"] >= 600
    assert opt.num_steps_trained == 32 * ((opt.num_steps_sampled - 200) // 4 + 1)  # one update per step() once started
    assert len(calls) == opt.num_steps_sampled // 100 and np.all(np.diff(calls) >= 100)
    buffer = opt.replay_buffers["default_policy"]
    stats = buffer.stats()
    assert stats["num_priority_updates"] == opt.num_steps_trained
    assert stats["max_priority"] != 1.0  # priorities come from |TD|, not the initial 1
    assert stats["compressed_columns"] == ["new_obs", "obs"]  # observations stored LZ4-compressed
    # Beta: 0.4 -> 1.0 over 0.01 * 100000 = 1000 sampled steps (the last replay came after the last sample).
    assert opt.cur_beta == pytest.approx(0.4 + 0.6 * opt.num_steps_sampled / 1000)
    assert result["info"]["prioritized_replay_beta"] == opt.cur_beta
    trainer.stop()


def test_config_reproduces_seed_004():
    seed_dqn = {
        "num_atoms": 1,
        "v_min": -10.0,
        "v_max": 10.0,
        "noisy": False,
        "sigma0": 0.5,
        "dueling": True,
        "double_q": True,
        "hiddens": [256],
        "n_step": 1,
        "schedule_max_timesteps": 100000,
        "timesteps_per_iteration": 1000,
        "exploration_fraction": 0.1,
        "exploration_final_eps": 0.02,
        "target_network_update_freq": 500,
        "buffer_size": 50000,
        "prioritized_replay": True,
        "prioritized_replay_alpha": 0.6,
        "prioritized_replay_beta": 0.4,
        "beta_annealing_fraction": 0.2,
        "final_prioritized_replay_beta": 0.4,
        "prioritized_replay_eps": 1e-6,
        "compress_observations": True,
        "lr": 5e-4,
        "adam_epsilon": 1e-8,
        "grad_norm_clipping": 40,
        "learning_starts": 1000,
        "sample_batch_size": 4,
        "train_batch_size": 32,
        "num_workers": 0,
        "optimizer_class": "SyncReplayOptimizer",
        "per_worker_exploration": False,
        "worker_side_prioritization": False,
        "min_iter_time_s": 1,
    }
    for key, value in seed_dqn.items():
        assert DEFAULT_CONFIG[key] == value, key
    seed_apex = {
        "optimizer_class": "AsyncReplayOptimizer",
        "n_step": 3,
        "num_gpus": 1,
        "num_workers": 32,
        "buffer_size": 2000000,
        "learning_starts": 50000,
        "train_batch_size": 512,
        "sample_batch_size": 50,
        "target_network_update_freq": 500000,
        "timesteps_per_iteration": 25000,
        "per_worker_exploration": True,
        "worker_side_prioritization": True,
        "min_iter_time_s": 30,
        "optimizer": {"max_weight_sync_delay": 400, "num_replay_buffer_shards": 4, "debug": False},
    }
    for key, value in seed_apex.items():
        assert APEX_DEFAULT_CONFIG[key] == value, key
    with pytest.raises(ValueError, match="num_atom"):
        DQNTrainer(env="CartPole-v1", config={"num_atom": 51})
    with pytest.raises(ValueError, match="v_min"):
        DQNTrainer(env="CartPole-v1", config={"num_atoms": 51, "v_min": 1.0, "v_max": 0.0})


def test_dqn_model_dueling_and_distributional_shapes():
    for atoms in (1, 7):
        model = DQNModel(
            OBS_SPACE, gym.spaces.Discrete(3), 3, {"fcnet_hiddens": [8]}, q_hiddens=[8], num_atoms=atoms, dueling=True
        )
        q, logits, mask = model.q_values(torch.zeros(5, 4))
        assert q.shape == (5, 3) and mask is None
        assert (logits is None) == (atoms == 1)
        np.testing.assert_allclose(
            model.numpy_q(np.ones((5, 4), np.float32))[0],
            model.q_values(torch.ones(5, 4))[0].detach().numpy(),
            rtol=1e-5,
            atol=1e-6,
        )


# --- Ape-X parts (without Ray) ------------------------------------------------------------------------------
def test_worker_side_priorities_replay_shard_and_learner_thread():
    from relayrl.optimizers.async_replay import LearnerThread, ReplayActor

    policy = make_policy(worker_side_prioritization=True, n_step=3, worker_index=1)
    n = 40
    rng = np.random.default_rng(0)
    traj = SampleBatch(
        {
            SB.OBS: rng.normal(size=(n, 4)).astype(np.float32),
            SB.NEXT_OBS: rng.normal(size=(n, 4)).astype(np.float32),
            SB.ACTIONS: rng.integers(0, 3, n),
            SB.REWARDS: np.ones(n, np.float32),
            SB.TERMINATEDS: np.eye(1, n, n - 1, dtype=bool)[0],
            SB.TRUNCATEDS: np.zeros(n, bool),
        }
    )
    batch = policy.postprocess_trajectory(traj)
    np.testing.assert_allclose(batch["priorities"], np.abs(policy.compute_td_error(batch)), rtol=1e-5)
    shard = ReplayActor(
        num_shards=2,
        learning_starts=100,
        buffer_size=1000,
        train_batch_size=16,
        prioritized_replay=True,
        alpha=0.6,
        eps=1e-6,
        compress=True,
        seed=0,
    )
    assert shard.add_batch(batch.copy()) == n
    assert shard.replay(0.4) is None  # 40 rows < learning_starts / num_shards = 50
    shard.add_batch(batch.copy())
    # The shard stored the worker's priorities, not the default maximum.
    stats = shard.stats()["default_policy"]  # by policy id
    expected_mass = 2 * ((np.abs(batch["priorities"]).astype(np.float64) + 1e-6) ** 0.6).sum()
    assert stats["sum_priority_alpha"] == pytest.approx(expected_mass, rel=1e-5)
    replayed = shard.replay(0.4)
    assert replayed.count == 16 and "weights" in replayed and "priorities" not in replayed
    learner = LearnerThread(make_policy(), target_network_update_freq=32)
    learner.inqueue.put((shard, replayed))
    learner.step()
    learner.inqueue.put((shard, shard.replay(0.4)))
    learner.step()
    (s1, idx, td, count), _ = learner.outqueue.get_nowait(), learner.outqueue.get_nowait()
    assert s1 is shard and count == 16 and td.shape == (16,) and idx.shape == (16,)
    assert learner.num_steps_trained == 32 and learner.num_target_updates == 1
    shard.update_priorities(idx, td)
    assert shard.stats()["default_policy"]["num_priority_updates"] == 16


def test_vision_q_network_on_atari_shaped_observations():
    space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
    config = {**DEFAULT_CONFIG, "hiddens": [32], "num_atoms": 5, "noisy": True, "seed": 0}
    policy = DQNTorchPolicy(space, gym.spaces.Discrete(4), config)
    assert policy.model.vision.num_features == 256  # [[16, 8, 4], [32, 4, 2], [256, 11, 1]] ends at 1x1x256
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (8, 84, 84, 4), dtype=np.uint8)
    actions, _, _ = policy.compute_actions(obs, explore=False)
    assert actions.shape == (8,)
    batch = SampleBatch(
        {
            SB.OBS: obs,
            SB.NEXT_OBS: obs[::-1].copy(),
            SB.ACTIONS: actions,
            SB.REWARDS: np.ones(8, np.float32),
            SB.TERMINATEDS: np.zeros(8, np.float32),
        }
    )
    assert policy.learn_on_batch(batch)["td_error"].shape == (8,)


def test_checkpoint_restores_target_network_and_greedy_actions(tmp_path):
    config = {
        "seed": 0,
        "compress_observations": False,
        "learning_starts": 100,
        "timesteps_per_iteration": 300,
        "min_iter_time_s": 0,
        "hiddens": [16],
        "model": {"fcnet_hiddens": [16]},
    }
    trainer = DQNTrainer(env="CartPole-v1", config=config)
    trainer.train()
    trainer.get_policy().update_target()
    trainer.train()  # online and target nets now differ
    path = trainer.save(str(tmp_path))
    restored = DQNTrainer.from_checkpoint(path)
    for k, v in trainer.get_policy().target_model.state_dict().items():
        assert torch.equal(v, restored.get_policy().target_model.state_dict()[k])
    obs = np.array([0.01, -0.02, 0.03, 0.04], np.float32)
    assert trainer.compute_action(obs, explore=False) == restored.compute_action(obs, explore=False)
    assert restored.optimizer.num_steps_sampled == trainer.optimizer.num_steps_sampled
    trainer.stop()
    restored.stop()


@pytest.mark.slow  # starts Ray and two actors
def test_apex_trainer_per_worker_epsilons_and_throughput_stats():
    from relayrl.agents.dqn import ApexTrainer

    trainer = ApexTrainer(
        env="CartPole-v1",
        config={
            "seed": 0,
            "num_workers": 2,
            "num_gpus": 0,
            "compress_observations": False,
            "hiddens": [16],
            "model": {"fcnet_hiddens": [16]},
            "buffer_size": 10000,
            "learning_starts": 200,
            "train_batch_size": 32,
            "sample_batch_size": 20,
            "timesteps_per_iteration": 600,
            "min_iter_time_s": 0,
            "optimizer": {"num_replay_buffer_shards": 2, "max_weight_sync_delay": 100},
        },
    )
    try:
        eps = trainer.workers.foreach_worker(lambda w: w.get_policy().cur_epsilon())
        np.testing.assert_allclose(eps, [0.0, 0.4, 0.4**8])  # learner's worker, then actors i = 0, 1 of N = 2
        result = trainer.train()
        while trainer.optimizer.num_steps_trained == 0:
            result = trainer.train()
        info = result["info"]
        assert result["timesteps_total"] >= 600
        assert info["sample_throughput"] > 0 and info["train_throughput"] > 0 and info["num_weight_syncs"] > 0
        assert trainer.compute_action(np.zeros(4, np.float32), explore=False) in (0, 1)
    finally:
        trainer.stop()

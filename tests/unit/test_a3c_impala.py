"""A2C / A3C / IMPALA: configs, the actor-critic and V-trace losses, and the two asynchronous optimizers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.a3c import A2C_DEFAULT_CONFIG, A2CTrainer, A3CTorchPolicy
from relayrl.agents.a3c import DEFAULT_CONFIG as A3C_CONFIG
from relayrl.agents.impala import DEFAULT_CONFIG as IMPALA_CONFIG
from relayrl.agents.impala import ImpalaTrainer, VTraceTorchPolicy
from relayrl.agents.impala.vtrace_torch_policy import to_time_major
from relayrl.evaluation.postprocessing import Postprocessing
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.optimizers import AsyncGradientsOptimizer, AsyncSamplesOptimizer
from relayrl.policy.sample_batch import SampleBatch
from relayrl.utils.torch_optim import RMSprop

OBS_SPACE = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT_SPACE = gym.spaces.Discrete(2)
SMALL_MODEL = {"fcnet_hiddens": [16, 16]}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- configs (seed 004) ------------------------------------------------------------------------------------
def test_a3c_config_reproduces_seed():
    seed = {
        "sample_batch_size": 10,
        "use_pytorch": False,
        "lambda": 1.0,
        "grad_clip": 40.0,
        "lr": 0.0001,
        "lr_schedule": None,
        "vf_loss_coeff": 0.5,
        "entropy_coeff": -0.01,
        "min_iter_time_s": 5,
        "sample_async": True,
    }
    assert {k: A3C_CONFIG[k] for k in seed} == seed
    assert A2C_DEFAULT_CONFIG["sample_batch_size"] == 20 and A2C_DEFAULT_CONFIG["sample_async"] is False
    assert A2C_DEFAULT_CONFIG["optimizer"] == {}


def test_impala_config_reproduces_seed():
    seed = {
        "vtrace": True,
        "vtrace_clip_rho_threshold": 1.0,
        "vtrace_clip_pg_rho_threshold": 1.0,
        "sample_batch_size": 50,
        "train_batch_size": 500,
        "min_iter_time_s": 10,
        "num_workers": 2,
        "num_gpus": 1,
        "num_parallel_data_loaders": 1,
        "max_sample_requests_in_flight_per_worker": 2,
        "broadcast_interval": 1,
        "replay_proportion": 0.0,
        "replay_buffer_num_slots": 100,
        "grad_clip": 40.0,
        "opt_type": "adam",
        "lr": 0.0005,
        "lr_schedule": None,
        "decay": 0.99,
        "momentum": 0.0,
        "epsilon": 0.1,
        "vf_loss_coeff": 0.5,
        "entropy_coeff": -0.01,
    }
    assert {k: IMPALA_CONFIG[k] for k in seed} == seed


@pytest.mark.parametrize(
    "bad",
    [
        {"opt_type": "sgd"},
        {"batch_mode": "complete_episodes"},
        {"vtrace_clip_rho_threshold": 0.0},
        {"broadcast_interval": 0},
    ],
)
def test_impala_rejects_impossible_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ImpalaTrainer(env="CartPole-v1", config={"num_workers": 0, "num_gpus": 0, **bad})


def test_a3c_without_remote_workers_runs_the_same_loop_in_one_process():
    from relayrl.agents.a3c import A3CTrainer

    trainer = A3CTrainer(
        env="CartPole-v1",
        config={
            "num_workers": 0,
            "min_iter_time_s": 0,
            "model": SMALL_MODEL,
            "optimizer": {"grads_per_step": 5},
            "seed": 0,
        },
    )
    try:
        result = trainer.train()
        assert trainer.optimizer.num_gradients_applied == 5
        assert result["timesteps_this_iter"] == 5 * A3C_CONFIG["sample_batch_size"]
        assert "policy_entropy" in result["info"]["learner"]["default_policy"]
    finally:
        trainer.stop()


# --- the actor-critic loss ---------------------------------------------------------------------------------
def _entropy_after_steps(entropy_coeff: float) -> tuple[float, float]:
    policy = A3CTorchPolicy(
        OBS_SPACE,
        ACT_SPACE,
        {**A3C_CONFIG, "model": SMALL_MODEL, "lr": 0.01, "entropy_coeff": entropy_coeff, "seed": 0},
    )
    with torch.no_grad():
        policy.model.logits.bias.copy_(torch.tensor([1.0, -1.0]))  # a peaked start: entropy can go either way
    obs = np.random.default_rng(0).uniform(-1, 1, (64, 4)).astype(np.float32)
    batch = SampleBatch(
        {
            SampleBatch.OBS: obs,
            SampleBatch.ACTIONS: np.zeros(64, np.int64),
            Postprocessing.ADVANTAGES: np.zeros(64, np.float32),
            Postprocessing.VALUE_TARGETS: np.zeros(64, np.float32),
        }
    )
    first = policy.learn_on_batch(batch)["learner_stats"]["policy_entropy"]
    for _ in range(20):
        last = policy.learn_on_batch(batch)["learner_stats"]["policy_entropy"]
    return first, last


def test_negative_entropy_coeff_is_a_bonus():
    # Seed convention: the loss ADDS entropy_coeff * entropy, so -0.01 raises the entropy, +0.01 lowers it.
    first, last = _entropy_after_steps(-1.0)
    assert last > first
    first_pos, last_pos = _entropy_after_steps(+1.0)
    assert last_pos < first_pos


# --- the V-trace loss ------------------------------------------------------------------------------------------
def test_time_major_layout():
    x = torch.arange(6)
    assert to_time_major(x, 2).tolist() == [[0, 3], [1, 4], [2, 5]]


def _impala_batch(T: int = 5) -> SampleBatch:
    """Two rows of T steps: row 0 terminates at t=2 (a new episode follows), row 1 is cut by a time limit at t=3."""
    rng = np.random.default_rng(1)
    n = 2 * T
    term = np.zeros(n, bool)
    trunc = np.zeros(n, bool)
    term[2] = True
    trunc[T + 3] = True
    return SampleBatch(
        {
            SampleBatch.OBS: rng.uniform(-1, 1, (n, 4)).astype(np.float32),
            SampleBatch.NEXT_OBS: rng.uniform(-1, 1, (n, 4)).astype(np.float32),
            SampleBatch.ACTIONS: rng.integers(0, 2, n),
            SampleBatch.REWARDS: rng.uniform(0, 1, n),
            SampleBatch.TERMINATEDS: term,
            SampleBatch.TRUNCATEDS: trunc,
            SampleBatch.ACTION_LOGP: np.full(n, np.log(0.5), np.float32),
        }
    )


def _vtrace_policy(**overrides) -> VTraceTorchPolicy:
    config = {
        **IMPALA_CONFIG,
        "model": SMALL_MODEL,
        "num_gpus": 0,
        "sample_batch_size": 5,
        "seed": 0,
        "gamma": 0.9,
        **overrides,
    }
    return VTraceTorchPolicy(OBS_SPACE, ACT_SPACE, config)


def test_vtrace_loss_matches_numpy_recursion():
    """No clipping, an episode end and a time-limit cut inside the rows: the loss's value and policy terms equal
    the paper's recursion (eq. 1 and section 4.2) computed here in numpy, per row, with the right bootstraps."""
    T, gamma = 5, 0.9
    policy = _vtrace_policy(vtrace_clip_rho_threshold=None, vtrace_clip_pg_rho_threshold=None, entropy_coeff=0.0)
    batch = _impala_batch(T)
    tensors = policy.load_batch(batch)
    total, loss_stats, _ = policy.compute_loss(policy.model, tensors)
    stats = policy.stats(tensors, loss_stats)

    with torch.no_grad():
        logits, _ = policy.model({"obs": tensors[SampleBatch.OBS]}, [], None)
        values = policy.model.value_function().numpy().astype(np.float64)
        logp = policy.dist_class(logits).logp(tensors[SampleBatch.ACTIONS]).numpy().astype(np.float64)
        policy.model({"obs": tensors[SampleBatch.NEXT_OBS]}, [], None)
        next_values = policy.model.value_function().numpy().astype(np.float64)
    rho = np.exp(logp - batch[SampleBatch.ACTION_LOGP])
    c = np.minimum(1.0, rho)
    vf_loss = pi_loss = 0.0
    for row in range(2):
        sl = slice(row * T, (row + 1) * T)
        r, v, nv = batch[SampleBatch.REWARDS][sl], values[sl], next_values[sl]
        term, trunc = batch[SampleBatch.TERMINATEDS][sl], batch[SampleBatch.TRUNCATEDS][sl]
        vs = np.zeros(T)
        for t in reversed(range(T)):
            # The value of the state after step t, and whether the trace may continue into step t + 1.
            cut = term[t] or trunc[t] or t == T - 1
            v_next = 0.0 if term[t] else (nv[t] if cut else v[t + 1])
            delta = rho[sl][t] * (r[t] + gamma * v_next - v[t])
            carry = 0.0 if cut else gamma * c[sl][t] * (vs[t + 1] - v[t + 1])
            vs[t] = v[t] + delta + carry
        vs_next = np.array([0.0 if term[t] else (nv[t] if (trunc[t] or t == T - 1) else vs[t + 1]) for t in range(T)])
        adv = rho[sl] * (r + gamma * vs_next - v)
        vf_loss += 0.5 * np.sum((v - vs) ** 2)
        pi_loss += -np.sum(logp[sl] * adv)
    assert stats["vf_loss"] == pytest.approx(vf_loss, rel=1e-4, abs=1e-5)
    assert stats["policy_loss"] == pytest.approx(pi_loss, rel=1e-4, abs=1e-5)
    assert float(total.detach()) == pytest.approx(pi_loss + 0.5 * vf_loss, rel=1e-4, abs=1e-5)


def test_vtrace_loss_rejects_a_batch_that_is_not_rows_of_t():
    policy = _vtrace_policy()
    batch = _impala_batch(5).slice(0, 7)
    with pytest.raises(ValueError, match="sample_batch_size"):
        policy.learn_on_batch(batch)


@pytest.mark.parametrize("opt_type", ["adam", "rmsprop"])
def test_vtrace_policy_learns_and_keeps_optimizer_state(opt_type):
    policy = _vtrace_policy(opt_type=opt_type)
    assert isinstance(policy._optimizers[0], RMSprop) == (opt_type == "rmsprop")
    before = {k: v.copy() for k, v in policy.get_weights().items()}
    stats = policy.learn_on_batch(_impala_batch(5))["learner_stats"]
    assert np.isfinite(stats["total_loss"]) and "grad_gnorm" in stats
    assert any(not np.allclose(before[k], v) for k, v in policy.get_weights().items())
    clone = _vtrace_policy(opt_type=opt_type)
    clone.set_state(policy.get_state())
    a = policy.learn_on_batch(_impala_batch(5))["learner_stats"]["total_loss"]
    b = clone.learn_on_batch(_impala_batch(5))["learner_stats"]["total_loss"]
    assert a == pytest.approx(b, rel=1e-5)
    for k, v in policy.get_weights().items():
        np.testing.assert_allclose(v, clone.get_weights()[k], rtol=1e-5, atol=1e-7)


def test_rmsprop_matches_tf_update():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSprop([p], lr=0.1, decay=0.9, momentum=0.5, epsilon=0.1)
    ms, mom, x = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for g in ([0.5, 1.0], [-1.0, 2.0]):
        p.grad = torch.tensor(g)
        opt.step()
        g = np.array(g)
        ms = 0.9 * ms + 0.1 * g * g
        mom = 0.5 * mom + 0.1 * g / np.sqrt(ms + 0.1)
        x = x - mom
    np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-6)


# --- AsyncSamplesOptimizer in one process -------------------------------------------------------------------------
def test_async_samples_optimizer_local_mode_learns_in_the_background():
    config = {
        **IMPALA_CONFIG,
        "num_workers": 0,
        "num_gpus": 0,
        "sample_batch_size": 10,
        "train_batch_size": 40,
        "num_envs_per_worker": 2,
        "model": SMALL_MODEL,
        "seed": 0,
        "replay_proportion": 1.0,
        "replay_buffer_num_slots": 4,
    }
    workers = WorkerSet(lambda ctx: gym.make("CartPole-v1"), VTraceTorchPolicy, config, num_workers=0)
    opt = AsyncSamplesOptimizer(
        workers,
        train_batch_size=40,
        sample_batch_size=10,
        num_envs_per_worker=2,
        replay_proportion=1.0,
        replay_buffer_num_slots=4,
        seed=0,
    )
    try:
        for _ in range(30):
            opt.step()
        import time

        deadline = time.time() + 20
        while opt.learner.num_steps_trained == 0 and time.time() < deadline:
            time.sleep(0.05)
        opt.step()
        stats = opt.stats()
    finally:
        opt.stop()
    assert opt.num_steps_sampled == 31 * 20
    assert stats["num_learner_steps"] >= 1 and stats["num_steps_trained"] > 0
    assert stats["num_steps_replayed"] > 0  # replay_proportion 1: about one old batch per new one
    assert stats["weight_lag_mean"] >= 0 and stats["learner_throughput"] > 0
    assert "total_loss" in stats["learner"]["default_policy"]


# --- AsyncGradientsOptimizer: every gradient it waited for is applied exactly once -----------------------------
def test_async_gradients_applies_every_gradient_exactly_once(ray_session):
    ray = ray_session

    # Defined here so that Ray ships the classes by value (the tests directory is not an importable package).
    class _GradientWorker:
        """A stand-in for a remote RolloutWorker whose gradient is the id of the batch it was computed on."""

        def __init__(self, worker_id: int):
            self.worker_id = worker_id
            self.num_sampled = 0
            self.weights_seen: list = []

        def sample(self) -> dict:
            self.num_sampled += 1
            return {"id": self.worker_id * 1000 + self.num_sampled}

        def compute_gradients(self, batch: dict):
            return [np.array([batch["id"]])], {"batch_count": 10, "learner_stats": {"id": batch["id"]}}

        def set_weights(self, weights: dict, global_vars=None) -> None:
            self.weights_seen.append(int(weights["default_policy"]["version"]))

        def report(self) -> tuple[int, list]:
            return self.num_sampled, self.weights_seen

    class _LocalLearner:
        def __init__(self):
            self.applied: list[int] = []

        def get_weights(self) -> dict:
            return {"default_policy": {"version": np.array(len(self.applied))}}

        def apply_gradients(self, grads) -> None:
            self.applied.append(int(grads[0][0]))

    remote_cls = ray.remote(num_cpus=0)(_GradientWorker)
    remotes = [remote_cls.remote(i + 1) for i in range(3)]
    local = _LocalLearner()
    opt = AsyncGradientsOptimizer(WorkerSet.from_workers(local, remotes), grads_per_step=11)
    opt.step()
    opt.step()
    reports = ray.get([w.report.remote() for w in remotes])
    produced = {(i + 1) * 1000 + k for i, (n, _) in enumerate(reports) for k in range(1, n + 1)}
    assert len(local.applied) == 22 == opt.num_gradients_applied
    assert len(set(local.applied)) == 22  # no gradient applied twice
    assert set(local.applied) == produced  # and none computed but dropped
    assert opt.num_steps_sampled == opt.num_steps_trained == 220
    # Every task was preceded by weights no older than the learner's state when it was dispatched.
    for n, seen in reports:
        assert len(seen) == n and seen == sorted(seen)
    for w in remotes:
        ray.kill(w)


def test_a2c_checkpoint_round_trip(tmp_path):
    config = {"num_workers": 0, "min_iter_time_s": 0, "train_batch_size": 100, "seed": 3, "model": SMALL_MODEL}
    trainer = A2CTrainer(env="CartPole-v1", config=config)
    result = trainer.train()
    assert result["timesteps_this_iter"] >= 100 and "policy_entropy" in result["info"]["learner"]["default_policy"]
    path = trainer.save(str(tmp_path))
    restored = A2CTrainer.from_checkpoint(path)
    obs = np.array([0.01, -0.02, 0.03, 0.04], np.float32)
    assert restored.compute_action(obs, explore=False) == trainer.compute_action(obs, explore=False)
    for k, v in trainer.get_weights()["default_policy"].items():
        np.testing.assert_array_equal(v, restored.get_weights()["default_policy"][k])
    trainer.stop()
    restored.stop()


def test_sample_async_samples_in_a_background_thread():
    from relayrl.evaluation.async_sampler import AsyncSampler
    from relayrl.evaluation.rollout_worker import RolloutWorker

    config = {**A3C_CONFIG, "sample_batch_size": 10, "model": SMALL_MODEL, "seed": 0}
    worker = RolloutWorker(lambda ctx: gym.make("CartPole-v1"), A3CTorchPolicy, policy_config=config)
    try:
        assert isinstance(worker.sampler, AsyncSampler)
        batches = [worker.sample() for _ in range(3)]
        assert all(b.count == 10 for b in batches)
        assert Postprocessing.ADVANTAGES in batches[0]
        # Consecutive fragments of one sub-env: the sampler thread keeps stepping the same episodes.
        t = np.concatenate([b[SampleBatch.T] for b in batches])
        assert np.all((np.diff(t) == 1) | (t[1:] == 0))
        thread = worker.sampler._thread
        assert thread is not None and thread.is_alive()
    finally:
        worker.stop()
    assert not thread.is_alive()


def test_impala_with_a_remote_worker_trains_and_restores(tmp_path):
    config = {
        "num_workers": 1,
        "num_gpus": 0,
        "min_iter_time_s": 0,
        "timesteps_per_iteration": 1000,
        "train_batch_size": 100,
        "sample_batch_size": 20,
        "model": SMALL_MODEL,
        "seed": 0,
    }
    trainer = ImpalaTrainer(env="CartPole-v1", config=config)
    try:
        result = trainer.train()
        info = result["info"]
        assert result["timesteps_this_iter"] >= 1000
        for key in ("learner_throughput", "learner_queue_size", "weight_lag_mean", "num_weight_syncs"):
            assert key in info
        # The learner's new weights reach the worker (sends after the initial one are counted).
        assert info["num_weight_syncs"] >= 1 and info["num_learner_steps"] >= 2
        path = trainer.save(str(tmp_path))
        restored = ImpalaTrainer.from_checkpoint(path, {"num_workers": 0})
        # The learner keeps learning on queued batches after train() returns: compare with what was stored.
        from relayrl.agents.checkpoint import read_checkpoint

        stored = read_checkpoint(path)[1]["policies"]["default_policy"]["weights"]
        restored_weights = restored.get_weights()["default_policy"]
        assert restored.iteration == 1 and set(stored) == set(restored_weights)
        for k, v in restored_weights.items():
            np.testing.assert_array_equal(v, np.asarray(stored[k]))
        restored.stop()
    finally:
        trainer.stop()


def test_impala_without_vtrace_uses_the_a3c_loss_on_gae_advantages():
    from relayrl.agents.impala import ImpalaA3CTorchPolicy

    config = {
        "vtrace": False,
        "num_workers": 0,
        "num_gpus": 0,
        "min_iter_time_s": 0,
        "opt_type": "rmsprop",
        "timesteps_per_iteration": 400,
        "train_batch_size": 100,
        "sample_batch_size": 20,
        "model": SMALL_MODEL,
        "seed": 0,
    }
    trainer = ImpalaTrainer(env="CartPole-v1", config=config)
    try:
        assert isinstance(trainer.get_policy(), ImpalaA3CTorchPolicy)
        assert isinstance(trainer.get_policy()._optimizers[0], RMSprop)
        result = trainer.train()
        import time

        deadline = time.time() + 20
        while not trainer.optimizer.learner.learner_stats and time.time() < deadline:
            time.sleep(0.05)
        stats = trainer.optimizer.learner.learner_stats["default_policy"]
        assert result["timesteps_this_iter"] >= 400 and "policy_entropy" in stats and "vf_loss" in stats
    finally:
        trainer.stop()


def test_a_failing_learner_thread_is_reported_by_step():
    config = {**IMPALA_CONFIG, "num_workers": 0, "num_gpus": 0, "sample_batch_size": 10, "model": SMALL_MODEL}
    workers = WorkerSet(lambda ctx: gym.make("CartPole-v1"), VTraceTorchPolicy, config, num_workers=0)
    policy = workers.local_worker().get_policy()

    def broken(tensors):
        raise FloatingPointError("loss is nan")

    policy.learn_on_tensors = broken
    opt = AsyncSamplesOptimizer(workers, train_batch_size=10, sample_batch_size=10)
    try:
        with pytest.raises(RuntimeError, match="learner thread failed") as info:
            for _ in range(200):
                opt.step()
        assert isinstance(info.value.__cause__, FloatingPointError)
    finally:
        opt.stop()

"""Issue 11 item 7, explicit data flow: a loss returns its stats (and per-row fetches such as the TD error), the
template records value estimates because ``needs_value`` says so, bootstrap values reach postprocessing as an
argument, one minibatch-SGD routine with a stated remainder rule, one replay-options type, one Ape-X config helper
and one trainer iteration loop."""

from __future__ import annotations

import logging

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ppo import DEFAULT_CONFIG as PPO_CONFIG
from relayrl.evaluation import RolloutWorker
from relayrl.evaluation.postprocessing import Postprocessing, bootstrap_values, compute_advantages, multi_trajectory
from relayrl.optimizers.minibatch_sgd import MinibatchSGD
from relayrl.policy import NonFiniteLossError, SampleBatch, build_torch_policy, vf_preds_fetches

SB = SampleBatch
OBS_SPACE, ACT_SPACE = gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2)
CONFIG = {"model": {"fcnet_hiddens": [8]}, "lr": 1e-2, "seed": 0, "gamma": 0.9}


def _batch(n: int = 12, seed: int = 0) -> SampleBatch:
    rng = np.random.default_rng(seed)
    return SampleBatch(
        {
            SB.OBS: rng.uniform(-1, 1, (n, 4)).astype(np.float32),
            SB.ACTIONS: rng.integers(0, 2, n),
            Postprocessing.ADVANTAGES: rng.normal(size=n).astype(np.float32),
        }
    )


def _logp(model, dist_class, batch):
    logits, _ = model({"obs": batch[SB.OBS], "is_training": True}, [], None)
    return dist_class(logits, model).logp(batch[SB.ACTIONS])


# --- what a loss function returns -------------------------------------------------------------------------------
def test_a_loss_returning_only_a_tensor_still_gets_its_stats_from_stats_fn():
    def loss_fn(policy, model, dist_class, batch):
        policy.my_loss = -(_logp(model, dist_class, batch) * batch[Postprocessing.ADVANTAGES]).mean()
        return policy.my_loss

    Policy = build_torch_policy("TensorLoss", loss_fn, stats_fn=lambda p, b: {"my_loss": p.my_loss})
    out = Policy(OBS_SPACE, ACT_SPACE, dict(CONFIG)).learn_on_batch(_batch())
    stats = out["learner_stats"]
    assert set(stats) == {"cur_lr", "my_loss"} and isinstance(stats["my_loss"], float)
    assert set(out) == {"learner_stats"}


def test_loss_stats_and_fetches_come_back_from_learning():
    seen = {}

    def loss_fn(policy, model, dist_class, batch):
        logp = _logp(model, dist_class, batch)
        loss = -(logp * batch[Postprocessing.ADVANTAGES]).mean()
        return loss, {"policy_loss": loss.detach()}, {"per_row": logp.detach()}

    def stats_fn(policy, batch, loss_stats):  # the three-argument form receives the loss's stats
        seen.update(loss_stats)
        return {"doubled": 2 * loss_stats["policy_loss"]}

    Policy = build_torch_policy("StatsLoss", loss_fn, stats_fn=stats_fn)
    policy = Policy(OBS_SPACE, ACT_SPACE, dict(CONFIG))
    batch = _batch()
    out = policy.learn_on_batch(batch)
    assert out["learner_stats"]["doubled"] == pytest.approx(2 * out["learner_stats"]["policy_loss"])
    assert "policy_loss" in seen
    assert isinstance(out["per_row"], np.ndarray) and out["per_row"].shape == (batch.count,)
    grads, info = policy.compute_gradients(batch)
    assert info["per_row"].shape == (batch.count,) and info["batch_count"] == batch.count
    assert "policy_loss" in info["learner_stats"] and len(grads) == len(list(policy.model.parameters()))
    loss, stats, fetches = policy.compute_loss(policy.model, policy.load_batch(batch))
    assert isinstance(loss, torch.Tensor) and set(stats) == {"policy_loss"} and set(fetches) == {"per_row"}


def test_non_finite_loss_message_names_the_loss_terms_it_returned():
    def loss_fn(policy, model, dist_class, batch):
        loss = (_logp(model, dist_class, batch) * float("nan")).mean()
        return loss, {"policy_loss": loss.detach(), "fine": torch.tensor(1.0)}

    policy = build_torch_policy("NaNLoss", loss_fn)(OBS_SPACE, ACT_SPACE, dict(CONFIG))
    before = policy.get_weights()
    with pytest.raises(NonFiniteLossError, match=r"policy_loss=nan") as info:
        policy.learn_on_batch(_batch())
    assert "fine=" not in str(info.value)
    for k, v in policy.get_weights().items():
        np.testing.assert_array_equal(v, before[k])


# --- needs_value and bootstrap values -----------------------------------------------------------------------------
def _pg_loss(policy, model, dist_class, batch):
    return -(_logp(model, dist_class, batch) * batch[Postprocessing.ADVANTAGES]).mean()


@pytest.mark.parametrize("spelling", [{"needs_value": True}, {"extra_action_out_fn": vf_preds_fetches}])
def test_needs_value_records_value_estimates_on_both_acting_paths(spelling):
    policy = build_torch_policy("ValuePolicy", _pg_loss, **spelling)(OBS_SPACE, ACT_SPACE, dict(CONFIG))
    assert policy._needs_value and policy._fast_path  # the seed-era spelling keeps the numpy path
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 4)).astype(np.float32)
    _, _, fast = policy.compute_actions(obs)
    policy._fast_path = False
    _, _, slow = policy.compute_actions(obs)
    np.testing.assert_allclose(fast[SB.VF_PREDS], policy.value(obs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(slow[SB.VF_PREDS], fast[SB.VF_PREDS], rtol=1e-5, atol=1e-6)
    plain = build_torch_policy("NoValue", _pg_loss)(OBS_SPACE, ACT_SPACE, dict(CONFIG))
    assert SB.VF_PREDS not in plain.compute_actions(obs)[2]


@pytest.mark.parametrize("multi", [True, False])
def test_bootstrap_values_reach_postprocessing_as_an_argument(multi):
    received = []

    def postprocess(policy, batch, other_agent_batches=None, episode=None, last_r=None):
        received.append(last_r)
        assert last_r is not None, "the fragment's value pass computed them"
        np.testing.assert_allclose(last_r, bootstrap_values(policy, batch), rtol=1e-5, atol=1e-6)
        return compute_advantages(batch, last_r, policy.config["gamma"], 0.95, True)

    fn = multi_trajectory(postprocess) if multi else postprocess
    Policy = build_torch_policy("Boot", _pg_loss, postprocess_fn=fn, needs_value=True)
    worker = RolloutWorker(
        lambda ctx: gym.make("CartPole-v1"),
        Policy,
        policy_config={**CONFIG, "num_envs_per_worker": 2, "sample_batch_size": 40},
    )
    batch = worker.sample()
    assert Postprocessing.ADVANTAGES in batch and received
    trajectories = int(batch.trajectory_ends().sum())
    assert sum(len(r) for r in received) == trajectories and (len(received) == 1) == multi


def test_a_postprocess_fn_without_last_r_computes_the_same_advantages():
    from relayrl.agents.ppo.ppo_torch_policy import postprocess_ppo_gae

    def legacy(policy, batch, other_agent_batches=None, episode=None):
        return postprocess_ppo_gae(policy, batch)

    worker = RolloutWorker(
        lambda ctx: gym.make("CartPole-v1"),
        build_torch_policy(
            "Legacy",
            _pg_loss,
            postprocess_fn=multi_trajectory(legacy),
            get_default_config=lambda: PPO_CONFIG,
            needs_value=True,
        ),
        policy_config={**CONFIG, "num_envs_per_worker": 2, "sample_batch_size": 40},
    )
    policy = worker.policy_map["default_policy"]
    batch = worker.sample()
    raw = SampleBatch(
        {k: v for k, v in batch.items() if k not in (Postprocessing.ADVANTAGES, Postprocessing.VALUE_TARGETS)}
    )
    explicit = postprocess_ppo_gae(policy, raw.copy(), last_r=bootstrap_values(policy, raw))
    np.testing.assert_allclose(batch[Postprocessing.ADVANTAGES], explicit[Postprocessing.ADVANTAGES], rtol=1e-5)


# --- one minibatch-SGD routine ----------------------------------------------------------------------------------
def _epochs(sgd: MinibatchSGD, n: int, epochs: int = 3) -> list[list[list[int]]]:
    return [[rows.tolist() for rows in sgd.epoch(n)] for _ in range(epochs)]


def test_minibatch_sgd_drops_the_remainder_and_is_seeded_from_the_config_seed():
    a, b, c = MinibatchSGD(4, 3, seed=7), MinibatchSGD(4, 3, seed=7), MinibatchSGD(4, 3, seed=8)
    ea, eb, ec = _epochs(a, 10), _epochs(b, 10), _epochs(c, 10)
    assert ea == eb and ea != ec
    for epoch in ea:
        assert [len(rows) for rows in epoch] == [4, 4]  # 10 = 2 * 4 + 2: the last 2 rows of the shuffle dropped
        assert len(set(sum(epoch, []))) == 8
    assert len({tuple(sorted(sum(epoch, []))) for epoch in ea}) > 1  # different rows left out each epoch
    assert MinibatchSGD(4, 1, seed=None).epoch(10)[0].tolist() == MinibatchSGD(4, 1, seed=0).epoch(10)[0].tolist()
    assert MinibatchSGD(0, 1).epoch(10) == [None] and MinibatchSGD(10, 1).epoch(10) == [None]  # the whole batch


def test_minibatch_sgd_warns_once_when_the_batch_is_not_a_multiple(caplog):
    with caplog.at_level(logging.WARNING, logger="relayrl.optimizers.minibatch_sgd"):
        sgd = MinibatchSGD(128, 2, seed=0, train_batch_size=500)
        sgd.run(500, lambda rows: {"learner_stats": {"x": 1.0}})
        sgd.run(500, lambda rows: {"learner_stats": {"x": 1.0}})
        MinibatchSGD(128, 2, seed=0, train_batch_size=512)
    warnings = [r for r in caplog.records if "not a multiple" in r.getMessage()]
    assert len(warnings) == 1 and "116 rows" in warnings[0].getMessage()


def test_minibatch_sgd_reports_the_mean_of_the_last_epoch():
    calls = []

    def learn(rows):
        calls.append(rows)
        return {"learner_stats": {"loss": float(len(calls)), "name": "x"}}

    stats = MinibatchSGD(2, 3, seed=0).run(6, learn)
    assert len(calls) == 9 and stats == {"loss": 8.0, "name": "x"}  # mean of the last epoch's 7, 8, 9


@pytest.mark.parametrize("simple", [True, False])
def test_sync_samples_and_multi_gpu_learn_the_same_numbers(simple):
    """PPO's simple_optimizer (SyncSamples, minibatches of SampleBatches) and LocalMultiGPU (minibatches of loaded
    tensors) run the same SGD routine: the same seed gives the same weights."""
    from relayrl.agents.ppo import PPOTrainer

    def weights(simple_optimizer: bool) -> dict:
        trainer = PPOTrainer(
            env="CartPole-v1",
            config={
                "train_batch_size": 200,
                "sample_batch_size": 100,
                "sgd_minibatch_size": 64,
                "num_sgd_iter": 2,
                "model": {"fcnet_hiddens": [8]},
                "seed": 3,
                "simple_optimizer": simple_optimizer,
            },
        )
        try:
            trainer.train()
            return trainer.get_policy().get_weights()
        finally:
            trainer.stop()

    a, b = weights(simple), weights(not simple)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


# --- one replay-options type, one Ape-X config ------------------------------------------------------------------
def test_replay_options_from_a_config_and_as_keywords():
    from relayrl.agents.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
    from relayrl.agents.dqn import DEFAULT_CONFIG as DQN_CONFIG
    from relayrl.agents.trainer_template import optimizer_options
    from relayrl.optimizers import AsyncReplayOptimizer, SyncReplayOptimizer
    from relayrl.optimizers.replay_options import ReplayOptions, build_options, replay_options

    dqn = replay_options({**DQN_CONFIG, "seed": 5})
    assert dqn.seed == 5 and dqn.beta_annealing_fraction == DQN_CONFIG["beta_annealing_fraction"]
    ddpg = replay_options(DDPG_CONFIG)  # no beta annealing keys: beta stays put
    assert ddpg.final_prioritized_replay_beta == ddpg.prioritized_replay_beta == DDPG_CONFIG["prioritized_replay_beta"]
    assert ddpg.beta_schedule().value(10**9) == pytest.approx(DDPG_CONFIG["prioritized_replay_beta"])
    for cls in (SyncReplayOptimizer, AsyncReplayOptimizer):
        assert set(ReplayOptions.names()) <= set(optimizer_options(cls))
    assert "num_replay_buffer_shards" in optimizer_options(AsyncReplayOptimizer)
    assert build_options({}, AsyncReplayOptimizer.option_defaults).train_batch_size == 512
    with pytest.raises(TypeError, match="'learning_start'"):
        build_options({"learning_start": 10})


def test_replay_optimizer_keeps_its_keyword_constructor():
    from relayrl.optimizers import SyncReplayOptimizer

    worker = RolloutWorker(
        lambda ctx: gym.make("CartPole-v1"), build_torch_policy("P", _pg_loss), policy_config=dict(CONFIG)
    )
    from relayrl.evaluation.worker_set import WorkerSet

    opt = SyncReplayOptimizer(WorkerSet.from_workers(worker, []), learning_starts=7, buffer_size=50, train_batch_size=8)
    assert (opt.learning_starts, opt.train_batch_size, opt.options.buffer_size) == (7, 8, 50)
    assert opt.options.prioritized_replay  # the ReplayOptions default


def test_apex_configs_share_one_helper():
    from relayrl.agents.apex_config import APEX_SETTINGS, apex_config
    from relayrl.agents.ddpg import APEX_DDPG_DEFAULT_CONFIG
    from relayrl.agents.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
    from relayrl.agents.dqn import APEX_DEFAULT_CONFIG
    from relayrl.agents.dqn import DEFAULT_CONFIG as DQN_CONFIG

    for base, apex in ((DQN_CONFIG, APEX_DEFAULT_CONFIG), (DDPG_CONFIG, APEX_DDPG_DEFAULT_CONFIG)):
        assert list(apex) == list(base)  # no key that the base algorithm does not declare
        for key, value in APEX_SETTINGS.items():
            assert apex[key] == ({**base[key], **value} if isinstance(value, dict) else value), key
    assert apex_config(DQN_CONFIG, {"num_workers": 2, "optimizer": {"debug": True}})["optimizer"] == {
        **APEX_DEFAULT_CONFIG["optimizer"],
        "debug": True,
    }


def test_the_async_trainers_run_build_trainers_iteration():
    from relayrl.agents.ddpg import ApexDDPGTrainer
    from relayrl.agents.dqn import ApexTrainer
    from relayrl.agents.impala import ImpalaTrainer
    from relayrl.agents.pg import PGTrainer

    loops = {cls._train.__code__ for cls in (ImpalaTrainer, ApexTrainer, ApexDDPGTrainer, PGTrainer)}
    assert len(loops) == 1

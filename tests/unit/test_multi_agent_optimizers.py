"""The on-policy optimizers and trainers with a MultiAgentBatch (issue 12, item 4 and item 7): each optimizer on
a real worker of 2-agent CartPole; policies_to_train leaves the other policy bit-identical (and, past the first
broadcast, off the wire); per-policy config overrides (lr, kl_target) take effect; agent-step counters; per-policy
results (learner stats, policy rewards, CSV and TensorBoard columns); V-trace on a multi-agent batch's trajectory
pieces; ES and ARS refuse multi-agent at build time."""

import copy
import csv
import logging
import os

import numpy as np
import pytest
import torch

from relayrl.agents.a3c import A2CTrainer, A3CTrainer
from relayrl.agents.ars import ARSTrainer
from relayrl.agents.es import ESTrainer
from relayrl.agents.impala import ImpalaTrainer
from relayrl.agents.impala.vtrace_torch_policy import VTraceTorchPolicy
from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.env import make_multi_agent, register_env
from relayrl.evaluation.metrics import RolloutMetrics, summarize_episodes
from relayrl.optimizers import AsyncGradientsOptimizer, LocalMultiGPUOptimizer, SyncSamplesOptimizer
from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch
from relayrl.utils.result_logger import ResultLogger

ENV = "ma_optimizers_cartpole"
register_env(ENV, make_multi_agent("CartPole-v1", 2))
SMALL = {"fcnet_hiddens": [16]}
SB = SampleBatch


def multiagent(trained=None, p1=None) -> dict:
    return {
        "policies": {"p0": (None, None, None, {}), "p1": (None, None, None, p1 or {})},
        "policy_mapping_fn": lambda agent_id, episode, **kw: f"p{agent_id}",
        "policies_to_train": trained,
    }


def weights(trainer, pid: str) -> dict:
    return {k: v.copy() for k, v in trainer.get_policy(pid).get_weights().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def equal_trees(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_trees(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def spy_samples(worker) -> list:
    """Records every batch the worker samples (its sample method, wrapped on the instance)."""
    batches, sample = [], worker.sample

    def recording():
        batch = sample()
        batches.append(batch)
        return batch

    worker.sample = recording
    return batches


# --- every on-policy trainer: only policies_to_train learn; results per policy -----------------------------------
TRAINERS = {
    "PG": (PGTrainer, {"train_batch_size": 100}),
    "PPO": (PPOTrainer, {"train_batch_size": 128, "sgd_minibatch_size": 32, "num_sgd_iter": 2}),
    "PPO_simple": (
        PPOTrainer,
        {"train_batch_size": 128, "sgd_minibatch_size": 32, "num_sgd_iter": 2, "simple_optimizer": True},
    ),
    "A2C": (A2CTrainer, {"train_batch_size": 100, "min_iter_time_s": 0}),
    "A3C": (A3CTrainer, {"min_iter_time_s": 0, "optimizer": {"grads_per_step": 5}}),
    "IMPALA": (ImpalaTrainer, {"train_batch_size": 100, "min_iter_time_s": 0, "num_gpus": 0}),
}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_policies_to_train_leaves_the_other_policy_bit_identical(name):
    cls, config = TRAINERS[name]
    lr = {"lr": 3e-3}
    trainer = cls(
        env=ENV,
        config={**config, "num_workers": 0, "seed": 0, "model": SMALL, "multiagent": multiagent(["p0"], lr)},
    )
    try:
        p0, p1 = weights(trainer, "p0"), weights(trainer, "p1")
        p1_optimizer = copy.deepcopy(trainer.get_policy("p1")._optimizers[0].state_dict())
        for _ in range(50):  # IMPALA learns in the background: until its learner has stepped
            result = trainer.train()
            if result["info"]["learner"]:
                break
        assert set(result["info"]["learner"]) == {"p0"}  # stats per policy, only for the trained one
        assert not same(weights(trainer, "p0"), p0)
        assert same(weights(trainer, "p1"), p1)  # bit-identical
        assert equal_trees(trainer.get_policy("p1")._optimizers[0].state_dict(), p1_optimizer)  # never stepped
        # Results: env steps and agent steps; every policy's returns.
        assert result["timesteps_total"] > 0
        assert result["timesteps_total"] < result["agent_steps_total"] <= 2 * result["timesteps_total"]
        assert result["agent_steps_total"] == trainer.optimizer.num_agent_steps_sampled
        for key in ("policy_reward_mean", "policy_reward_min", "policy_reward_max"):
            assert set(result[key]) == {"p0", "p1"}
        assert (
            result["policy_reward_min"]["p1"] <= result["policy_reward_mean"]["p1"] <= result["policy_reward_max"]["p1"]
        )
    finally:
        trainer.stop()


def test_per_policy_overrides_apply_to_that_policy_only():
    """p1's lr and kl_target override the trainer's: its optimizer and learner stats show its lr, and each policy's
    KL coefficient follows its own kl_target (after_optimizer_step's update_kl, per policy)."""
    config = {
        "num_workers": 0,
        "seed": 0,
        "model": SMALL,
        "lr": 1e-4,
        "kl_coeff": 0.2,
        "kl_target": 1e-9,  # p0: any KL is above target -> its coefficient grows
        "train_batch_size": 128,
        "sgd_minibatch_size": 64,
        "num_sgd_iter": 2,
        "multiagent": multiagent(None, {"lr": 3e-3, "kl_target": 1e6}),  # p1: below target -> shrinks
    }
    trainer = PPOTrainer(env=ENV, config=config)
    try:
        p0, p1 = trainer.get_policy("p0"), trainer.get_policy("p1")
        assert p0._optimizers[0].param_groups[0]["lr"] == 1e-4
        assert p1._optimizers[0].param_groups[0]["lr"] == 3e-3
        result = trainer.train()
        learner = result["info"]["learner"]
        assert learner["p0"]["cur_lr"] == 1e-4 and learner["p1"]["cur_lr"] == 3e-3
        assert p0.kl_coeff == pytest.approx(0.2 * 1.5) and p1.kl_coeff == pytest.approx(0.2 * 0.5)
    finally:
        trainer.stop()


# --- SyncSamples / LocalMultiGPU: minibatches per policy, counters ----------------------------------------------
@pytest.mark.parametrize("optimizer_cls", [SyncSamplesOptimizer, LocalMultiGPUOptimizer])
def test_minibatch_sgd_runs_per_policy_and_warns_per_policy(optimizer_cls, caplog):
    trainer = PGTrainer(env=ENV, config={"num_workers": 0, "seed": 0, "model": SMALL, "multiagent": multiagent()})
    try:
        size = {"sgd_minibatch_size": 32} if optimizer_cls is SyncSamplesOptimizer else {"sgd_batch_size": 32}
        with caplog.at_level(logging.WARNING, logger="relayrl.optimizers.minibatch_sgd"):
            optimizer = optimizer_cls(trainer.workers, train_batch_size=100, num_sgd_iter=2, seed=0, **size)
            batches = spy_samples(trainer.workers.local_worker())
            learned: dict = {}
            for pid in ("p0", "p1"):
                policy = trainer.get_policy(pid)
                calls = learned.setdefault(pid, [])
                if optimizer_cls is SyncSamplesOptimizer:
                    policy.learn_on_batch = lambda b, f=policy.learn_on_batch, c=calls: c.append(b.count) or f(b)
                else:
                    policy.learn_on_tensors = lambda t, f=policy.learn_on_tensors, c=calls: (
                        c.append(len(t[SB.OBS])) or f(t)
                    )
            stats = optimizer.step()
        samples = MultiAgentBatch.concat_samples(batches)
        assert set(stats) == {"p0", "p1"}
        assert optimizer.num_steps_sampled == samples.count >= 100
        assert optimizer.num_agent_steps_sampled == samples.total() > optimizer.num_steps_sampled
        for pid in ("p0", "p1"):
            rows = samples.policy_batches[pid].count
            # Each policy: 2 epochs of rows // 32 minibatches of 32 of its own rows (the rest dropped).
            assert learned[pid] == [32] * (2 * (rows // 32))
        messages = [r.getMessage() for r in caplog.records if "not a multiple" in r.getMessage()]
        assert not any(m.startswith("train_batch_size=") for m in messages)  # env steps: not the rows of a policy
        for pid in ("p0", "p1"):
            mine = [m for m in messages if m.startswith(f"policy {pid!r}")]
            assert len(mine) <= 1  # once per policy
            if samples.policy_batches[pid].count % 32:
                assert len(mine) == 1 and f"={samples.policy_batches[pid].count} " in mine[0]
    finally:
        trainer.stop()


# --- AsyncGradients: gradient dicts, batches without a trained policy, counters ----------------------------------
def test_async_gradients_applies_per_policy_gradients_and_counts_every_batch():
    trainer = A3CTrainer(
        env=ENV,
        config={"num_workers": 0, "seed": 0, "model": SMALL, "multiagent": multiagent(["p0"]), "sample_async": False},
    )
    try:
        worker = trainer.workers.local_worker()
        optimizer = AsyncGradientsOptimizer(trainer.workers, grads_per_step=6)
        sample, batches = worker.sample, []

        def some_without_p0():  # every other batch holds only p1's rows (as when agent 0 is done): no gradient
            batch = sample()
            if len(batches) % 2:
                batch = MultiAgentBatch({"p1": batch.policy_batches["p1"]}, batch.count)
            batches.append(batch)
            return batch

        worker.sample = some_without_p0
        p1 = weights(trainer, "p1")
        stats = optimizer.step()
        assert set(stats) == {"p0"} and len(batches) == 6
        assert optimizer.num_gradients_applied == sum("p0" in b.policy_batches for b in batches) <= 3
        assert optimizer.num_steps_sampled == optimizer.num_steps_trained == sum(b.count for b in batches)
        assert optimizer.num_agent_steps_sampled == sum(b.total() for b in batches)
        assert same(weights(trainer, "p1"), p1)
    finally:
        trainer.stop()


# --- AsyncSamples (IMPALA): per-policy learner steps on train batches of train_batch_size steps ------------------
def test_impala_learner_steps_each_trained_policy_on_its_part_of_the_train_batch():
    config = {"num_workers": 0, "seed": 0, "model": SMALL, "train_batch_size": 60, "sample_batch_size": 20}
    trainer = ImpalaTrainer(env=ENV, config={**config, "num_gpus": 0, "multiagent": multiagent()})
    try:
        rows: dict = {"p0": [], "p1": []}
        for pid, seen in rows.items():
            policy = trainer.get_policy(pid)
            policy.learn_on_tensors = lambda t, f=policy.learn_on_tensors, s=seen: s.append(len(t[SB.OBS])) or f(t)
        optimizer = trainer.optimizer
        while optimizer.learner.weights_version < 3:
            optimizer.step()
        # One learner step = one optimizer step of each policy in the train batch, on its own rows (agent steps).
        assert 3 <= len(rows["p0"]) and 3 <= len(rows["p1"])
        assert all(0 < n <= 60 for n in rows["p0"] + rows["p1"])
        assert set(optimizer.learner.learner_stats) == {"p0", "p1"}
        assert optimizer.num_agent_steps_sampled > optimizer.num_steps_sampled >= 3 * 60
    finally:
        trainer.stop()


# --- V-trace on trajectory pieces ------------------------------------------------------------------------------
def _vtrace_policy(**overrides) -> VTraceTorchPolicy:
    import gymnasium as gym

    from relayrl.agents.impala.impala import DEFAULT_CONFIG

    config = {**DEFAULT_CONFIG, "model": SMALL, "num_gpus": 0, "sample_batch_size": 5, "seed": 0, "gamma": 0.9}
    config.update(vtrace_clip_rho_threshold=None, vtrace_clip_pg_rho_threshold=None, entropy_coeff=0.0, **overrides)
    return VTraceTorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2), config)


def _pieces_batch(lengths, terminated_last, unroll, eps, agent, t0) -> SampleBatch:
    rng = np.random.default_rng(3)
    n = sum(lengths)
    term = np.zeros(n, bool)
    ends = np.cumsum(lengths) - 1
    term[ends[np.asarray(terminated_last)]] = True
    rep = lambda values: np.repeat(np.asarray(values), lengths)  # noqa: E731
    return SampleBatch(
        {
            SB.OBS: rng.uniform(-1, 1, (n, 4)).astype(np.float32),
            SB.NEXT_OBS: rng.uniform(-1, 1, (n, 4)).astype(np.float32),
            SB.ACTIONS: rng.integers(0, 2, n),
            SB.REWARDS: rng.uniform(0, 1, n).astype(np.float32),
            SB.TERMINATEDS: term,
            SB.TRUNCATEDS: np.zeros(n, bool),
            SB.ACTION_LOGP: rng.uniform(-1.2, -0.3, n).astype(np.float32),
            SB.UNROLL_ID: rep(unroll),
            SB.EPS_ID: rep(eps),
            SB.AGENT_INDEX: rep(agent),
            SB.T: np.concatenate([np.arange(s, s + n_) for s, n_ in zip(t0, lengths)]),
        }
    )


def test_vtrace_loss_on_multi_agent_pieces_matches_a_per_piece_reference():
    """Pieces of 3, 5, 1 and 4 steps (an agent's steps within fragments: different lengths, one terminated, the
    others bootstrapped from V(next_obs)); the 2nd and 3rd share an unroll id but not the agent, the 4th continues
    the 1st's t but in another unroll. The loss equals V-trace computed piece by piece in numpy."""
    gamma = 0.9
    policy = _vtrace_policy()
    lengths = [3, 5, 1, 4]
    batch = _pieces_batch(lengths, [False, True, False, False], [7, 8, 8, 9], [1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 5, 3])
    tensors = policy.load_batch(batch)
    total, loss_stats, _ = policy.compute_loss(policy.model, tensors)
    with torch.no_grad():
        logits, _ = policy.model({"obs": tensors[SB.OBS]}, [], None)
        v_all = policy.model.value_function().numpy().astype(np.float64)
        logp_all = policy.dist_class(logits).logp(tensors[SB.ACTIONS]).numpy().astype(np.float64)
        policy.model({"obs": tensors[SB.NEXT_OBS]}, [], None)
        nv_all = policy.model.value_function().numpy().astype(np.float64)
    pi_loss = vf_loss = 0.0
    start = 0
    for length in lengths:
        sl = slice(start, start + length)
        start += length
        r, v, logp = batch[SB.REWARDS][sl].astype(np.float64), v_all[sl], logp_all[sl]
        rho = np.exp(logp - batch[SB.ACTION_LOGP][sl])
        c = np.minimum(1.0, rho)
        boot = 0.0 if batch[SB.TERMINATEDS][sl][-1] else nv_all[sl][-1]
        vs = np.zeros(length)
        for t in reversed(range(length)):
            last = t == length - 1
            v_next = boot if last else v[t + 1]
            carry = 0.0 if last else gamma * c[t] * (vs[t + 1] - v[t + 1])
            vs[t] = v[t] + rho[t] * (r[t] + gamma * v_next - v[t]) + carry
        vs_next = np.append(vs[1:], boot)
        pi_loss += -np.sum(logp * rho * (r + gamma * vs_next - v))
        vf_loss += 0.5 * np.sum((v - vs) ** 2)
    assert float(loss_stats["policy_loss"]) == pytest.approx(pi_loss, rel=1e-4, abs=1e-5)
    assert float(loss_stats["vf_loss"]) == pytest.approx(vf_loss, rel=1e-4, abs=1e-5)
    assert float(total.detach()) == pytest.approx(pi_loss + 0.5 * vf_loss, rel=1e-4, abs=1e-5)


def test_vtrace_loss_reads_single_agent_rows_the_same_with_or_without_their_unroll_ids():
    policy = _vtrace_policy()
    batch = _pieces_batch([5, 5], [False, False], [0, 1], [4, 4], [0, 0], [0, 5])
    batch[SB.TERMINATEDS][2] = True  # an episode end inside the first row: the next rows are another episode's
    batch[SB.EPS_ID][3:5] = 6
    batch[SB.T][3:5] = [0, 1]
    with_ids = policy.compute_loss(policy.model, policy.load_batch(batch))[1]
    bare = SampleBatch({k: v for k, v in batch.items() if k not in (SB.UNROLL_ID, SB.EPS_ID, SB.AGENT_INDEX, SB.T)})
    without = policy.compute_loss(policy.model, policy.load_batch(bare))[1]
    for key in ("policy_loss", "vf_loss"):
        assert float(with_ids[key]) == pytest.approx(float(without[key]), rel=1e-6)


# --- results: per-policy rewards, CSV / TensorBoard columns -----------------------------------------------------
def test_summarize_episodes_reports_each_policys_mean_min_and_max():
    def episode(rewards: dict) -> RolloutMetrics:
        return RolloutMetrics(10, sum(rewards.values()), rewards, {}, {})

    episodes = [episode({(0, "p0"): 5.0, (1, "p1"): 1.0, (2, "p1"): 3.0}), episode({(0, "p0"): 9.0, (1, "p1"): 2.0})]
    summary = summarize_episodes(episodes)
    assert summary["episode_reward_mean"] == pytest.approx((9.0 + 11.0) / 2)  # sum over agents, per episode
    assert summary["policy_reward_mean"] == {"p0": 7.0, "p1": 2.0}
    assert summary["policy_reward_min"] == {"p0": 5.0, "p1": 1.0}
    assert summary["policy_reward_max"] == {"p0": 9.0, "p1": 3.0}


def test_result_logger_writes_per_policy_columns_and_tags_even_when_they_appear_late(tmp_path):
    logdir = str(tmp_path)
    logger = ResultLogger(logdir, {"lr": 1.0})
    first = {"training_iteration": 1, "timesteps_total": 10, "policy_reward_mean": {"p0": 1.0}, "info": {"learner": {}}}
    second = {
        "training_iteration": 2,
        "timesteps_total": 20,
        "policy_reward_mean": {"p0": 2.0, "p1": 3.0},
        "info": {"learner": {"p0": {"policy_loss": 0.5}, "p1": {"policy_loss": 0.25}}},
    }
    logger.log(first)
    logger.log(second)
    logger.close()
    with open(os.path.join(logdir, "progress.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["training_iteration"] for r in rows] == ["1", "2"]
    assert rows[0]["policy_reward_mean/p1"] == "" and rows[1]["policy_reward_mean/p1"] == "3.0"
    assert rows[1]["info/learner/p1/policy_loss"] == "0.25" and rows[0]["policy_reward_mean/p0"] == "1.0"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("info/learner/p0/policy_loss", "info/learner/p1/policy_loss", "policy_reward_mean/p1"):
        assert f"ray/tune/{tag}" in tags
    assert [e.value for e in acc.Scalars("ray/tune/info/learner/p1/policy_loss")] == [0.25]


def test_single_agent_results_keep_their_layout_and_count_agent_steps_as_env_steps():
    trainer = PGTrainer(env="CartPole-v1", config={"num_workers": 0, "seed": 0, "model": SMALL, "train_batch_size": 50})
    try:
        result = trainer.train()
        result = trainer.train()
        assert list(result["info"]["learner"]) == ["default_policy"]
        assert "policy_loss" in result["info"]["learner"]["default_policy"]
        assert result["agent_steps_total"] == result["timesteps_total"] == trainer.optimizer.num_steps_sampled
        assert result["agent_steps_this_iter"] == result["timesteps_this_iter"]
    finally:
        trainer.stop()


def test_evaluation_workers_have_every_policy():
    config = {"num_workers": 0, "seed": 0, "model": SMALL, "train_batch_size": 50, "multiagent": multiagent()}
    trainer = PGTrainer(env=ENV, config={**config, "evaluation_interval": 1, "evaluation_num_episodes": 2})
    try:
        evaluation = trainer.train()["evaluation"]
        assert evaluation["episodes_this_iter"] == 2 and set(evaluation["policy_reward_mean"]) == {"p0", "p1"}
        assert set(trainer._evaluation_workers.local_worker().policy_map) == {"p0", "p1"}
    finally:
        trainer.stop()


# --- ES and ARS refuse multi-agent ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ESTrainer, ARSTrainer])
def test_es_and_ars_refuse_multi_agent_at_build_time(cls):
    name = cls._name
    with pytest.raises(ValueError, match=rf"{name} config: 'multiagent.policies' must be empty: {name} does not"):
        cls(env="CartPole-v1", config={"num_workers": 0, "noise_size": 1000, "multiagent": multiagent()})
    with pytest.raises(ValueError, match=rf"{name} does not support multi-agent: the env '{ENV}' is a"):
        cls(env=ENV, config={"num_workers": 0, "noise_size": 1000})


# --- weight broadcasts: every policy once, then only the trained ones ---------------------------------------------
BROADCASTING = {
    "PPO": (PPOTrainer, {"train_batch_size": 64, "sgd_minibatch_size": 32, "num_sgd_iter": 1, "sample_batch_size": 32}),
    "A3C": (A3CTrainer, {"min_iter_time_s": 0, "optimizer": {"grads_per_step": 4}}),
    "IMPALA": (ImpalaTrainer, {"train_batch_size": 40, "min_iter_time_s": 0, "num_gpus": 0}),
}


@pytest.mark.parametrize("name", list(BROADCASTING))
def test_after_the_first_broadcast_only_the_trained_policies_weights_travel(ray_session, name):
    ray = ray_session
    cls, config = BROADCASTING[name]
    config = {**config, "num_workers": 1, "seed": 0, "model": SMALL, "multiagent": multiagent(["p0"])}
    trainer = cls(env=ENV, config=config)
    try:
        local, remote = trainer.workers.local_worker(), trainer.workers.remote_workers()[0]
        sent, get_weights = [], local.get_weights
        local.get_weights = lambda policies=None: sent.append(sorted(get_weights(policies))) or get_weights(policies)
        p1_there = ray.get(remote.get_weights.remote())["p1"]
        if name == "IMPALA":  # its first broadcast, of every policy, happened when the optimizer was built
            sent.append(["p0", "p1"])
            assert same(p1_there, weights(trainer, "p1"))
        else:
            assert not same(p1_there, weights(trainer, "p1"))  # the remote worker's policies are seeded differently
        for _ in range(100):
            trainer.train()
            if len(sent) >= 3:
                break
        assert sent[0] == ["p0", "p1"] and len(sent) >= 3
        assert all(keys == ["p0"] for keys in sent[1:])
        assert same(ray.get(remote.get_weights.remote())["p1"], weights(trainer, "p1"))  # synced once, bit-identical
    finally:
        trainer.stop()

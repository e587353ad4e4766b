"""Recurrent policies (issue 13) through the ways a user runs a trainer: remote Ray workers with vectorised envs, the
``relayrl train`` command with a YAML experiment, and Ray Tune. Small and bounded: one or two iterations each."""

import json
import math
import re
import time

import numpy as np
import pytest
from test_cli import relayrl

from relayrl.examples.stateless_cartpole import StatelessCartPole, register

LSTM = {"use_lstm": True, "lstm_cell_size": 16, "fcnet_hiddens": [16], "max_seq_len": 10}
SMALL_PPO = {
    "seed": 0,
    "train_batch_size": 256,
    "sample_batch_size": 16,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "vf_loss_coeff": 0.01,
    "model": LSTM,
}


def _finite_learner_stats(result: dict, policy_id: str = "default_policy") -> dict:
    stats = result["info"]["learner"][policy_id]
    assert stats and all(math.isfinite(float(v)) for v in stats.values() if np.isscalar(v)), stats
    return stats


def _play_one_episode(trainer, env, max_steps: int = 500) -> int:
    """Drives the recurrent policy through an episode as the docs show: the state out of one step goes in the next."""
    policy = trainer.get_policy()
    state = policy.get_initial_state()
    assert [s.shape for s in state] == [(16,), (16,)]  # an LSTM's (h, c)
    obs, _ = env.reset(seed=0)
    changed, steps = False, 0
    while steps < max_steps:
        action, state_out, _ = trainer.compute_action(obs, state=state, explore=False)
        assert env.action_space.contains(action)
        assert [s.shape for s in state_out] == [(16,), (16,)]
        changed = changed or any(not np.allclose(a, b) for a, b in zip(state, state_out))
        state = state_out
        obs, _, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            break
    assert changed  # the state carries something from step to step
    return steps


def test_lstm_ppo_on_two_ray_workers_with_eight_envs_each_and_a_restored_checkpoint(ray_session, tmp_path):
    from relayrl.agents.ppo import PPOTrainer

    start = time.time()
    config = {**SMALL_PPO, "num_workers": 2, "num_envs_per_worker": 8}
    trainer = PPOTrainer(env=StatelessCartPole, config=config)
    try:
        assert len(trainer.workers.remote_workers()) == 2
        results = [trainer.train() for _ in range(2)]
        # 2 workers x 8 envs x 16 steps = 256 rows per round of sampling
        assert results[0]["timesteps_total"] >= 256
        assert results[1]["timesteps_total"] >= results[0]["timesteps_total"] + 256
        assert results[1]["episodes_total"] > 0
        stats = _finite_learner_stats(results[1])
        assert {"policy_loss", "vf_loss"} <= set(stats)
        checkpoint = trainer.save(str(tmp_path))
        weights = trainer.get_weights()["default_policy"]
        trainer.workers.sync_weights()  # the workers get the last update at the next sampling round
        for remote in ray_session.get([w.get_weights.remote() for w in trainer.workers.remote_workers()]):
            assert all(np.array_equal(remote["default_policy"][k], weights[k]) for k in weights)
    finally:
        trainer.stop()

    restored = PPOTrainer(env=StatelessCartPole, config={**SMALL_PPO, "num_workers": 0})
    try:
        restored.restore(checkpoint)
        assert restored.iteration == 2
        again = restored.get_weights()["default_policy"]
        assert all(np.array_equal(again[k], weights[k]) for k in weights)
        assert _play_one_episode(restored, StatelessCartPole()) >= 1
        # Without state a recurrent policy refuses to act (it would forget everything at each step).
        with pytest.raises(ValueError, match="state"):
            restored.compute_action(np.zeros(2, np.float32))
    finally:
        restored.stop()
    assert time.time() - start < 90


def test_lstm_ppo_through_the_cli_yaml_and_its_rollout(tmp_path):
    """``relayrl train -f`` with ``model: {use_lstm: true}`` in the YAML, then ``relayrl rollout`` of its checkpoint
    (which carries the state from step to step)."""
    yaml_file = tmp_path / "lstm.yaml"
    config = {**SMALL_PPO, "num_workers": 0, "num_envs_per_worker": 4, "train_batch_size": 128}
    yaml_file.write_text(
        "lstm-ppo:\n  run: PPO\n  env: CartPole-v1\n  stop: {training_iteration: 2}\n  checkpoint_at_end: true\n"
        f"  config: {json.dumps(config)}\n"
    )
    proc = relayrl("train", "-f", str(yaml_file), "--local-dir", str(tmp_path / "results"), timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"iter +\d+ +ts +\d+ +reward", proc.stdout)) == 2, proc.stdout
    (trial,) = [d for d in (tmp_path / "results" / "lstm-ppo").iterdir() if d.is_dir()]
    params = json.loads((trial / "params.json").read_text())
    assert params["model"]["use_lstm"] is True and params["model"]["lstm_cell_size"] == 16
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in rows] == [1, 2]
    assert rows[-1]["timesteps_total"] >= 256
    assert all(math.isfinite(v) for v in rows[-1]["info"]["learner"]["default_policy"].values() if np.isscalar(v))
    checkpoint = re.search(r"checkpoint: (\S+)", proc.stdout).group(1)
    proc = relayrl("rollout", checkpoint, "--episodes", "2", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"episode +\d+ +return +[\d.]+", proc.stdout)) == 2, proc.stdout


def test_lstm_ppo_through_tune(ray_session, tmp_path):
    import ray.tune as tune

    name = register()  # "StatelessCartPole-v1", also for Tune's trial actors
    trials = tune.run_experiments(
        {
            "lstm_tune": {
                "run": "PPO",
                "env": name,
                "stop": {"training_iteration": 2},
                "storage_path": str(tmp_path),
                "config": {**SMALL_PPO, "num_workers": 0, "num_envs_per_worker": 4, "train_batch_size": 128},
            }
        },
        verbose=0,
    )
    (trial,) = trials
    assert trial.status == "TERMINATED"
    assert trial.config["model"]["use_lstm"] is True
    result = trial.last_result
    assert result["training_iteration"] == 2 and result["timesteps_total"] >= 256
    _finite_learner_stats(result)

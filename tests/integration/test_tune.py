"""Seed 002's Tune example: relayrl's trainers are registered with Tune and a grid search runs every trial."""

import json
import os

import relayrl  # noqa: F401  (registers the trainers when ray.tune is imported)


def trial_files(trial_dir: str) -> set:
    return set(os.listdir(trial_dir))


def test_seed_002_grid_search_runs_both_trials(ray_session, tmp_path):
    import ray.tune as tune

    # Seed 002's experiment; "sgd_stepsize" is the seed-era name of "lr", the stop and batch sizes are small.
    trials = tune.run_experiments(
        {
            "my_experiment": {
                "run": "PPO",
                "env": "CartPole-v1",
                "stop": {"training_iteration": 2},
                "storage_path": str(tmp_path),
                "config": {
                    "num_gpus": 0,
                    "num_workers": 1,
                    "train_batch_size": 256,
                    "sample_batch_size": 128,
                    "sgd_minibatch_size": 64,
                    "num_sgd_iter": 2,
                    "lr": tune.grid_search([0.01, 0.001]),
                },
            },
        },
        verbose=0,
    )
    assert len(trials) == 2
    assert sorted(t.config["lr"] for t in trials) == [0.001, 0.01]
    for trial in trials:
        assert trial.status == "TERMINATED"
        assert trial.last_result["training_iteration"] == 2
        assert trial.last_result["timesteps_total"] >= 512
        files = trial_files(trial.path)
        assert {"params.json", "result.json", "progress.csv"} <= files
        assert any(f.startswith("events.out.tfevents") for f in files)
        with open(os.path.join(trial.path, "result.json")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert [r["training_iteration"] for r in rows] == [1, 2]
        assert "episode_reward_mean" in rows[-1] and "info" in rows[-1]


def test_tune_run_takes_a_trainer_class_and_a_users_own_trainer(ray_session, tmp_path):
    import ray.tune as tune

    from relayrl.agents.pg import DEFAULT_CONFIG, PGTorchPolicy
    from relayrl.agents.ppo import PPOTrainer
    from relayrl.agents.trainer_template import build_trainer

    small = {"env": "CartPole-v1", "num_workers": 0, "train_batch_size": 128, "sample_batch_size": 64}
    analysis = tune.run(
        PPOTrainer,  # as RLlib-era code passes it; a string name works as before
        config={**small, "sgd_minibatch_size": 64, "num_sgd_iter": 1},
        stop={"training_iteration": 1},
        storage_path=str(tmp_path),
        verbose=0,
    )
    (trial,) = analysis.trials
    assert trial.status == "TERMINATED" and trial.last_result["timesteps_total"] >= 128

    MyPG = build_trainer(name="MyPG", default_config=DEFAULT_CONFIG, default_policy=PGTorchPolicy)
    analysis = tune.run(MyPG, config=small, stop={"training_iteration": 1}, storage_path=str(tmp_path), verbose=0)
    (trial,) = analysis.trials
    assert trial.status == "TERMINATED" and trial.trainable_name == "MyPG"
    assert trial.last_result["timesteps_total"] >= 128

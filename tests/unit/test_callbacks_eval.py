"""Callbacks fire at their points of sampling and training; custom metrics and evaluation reach the result."""

from collections import Counter

import numpy as np

from relayrl.agents.pg import PGTrainer

CALLS: Counter = Counter()


def on_episode_start(info):
    CALLS["episode_start"] += 1
    info["episode"].user_data["steps"] = 0
    assert info["env"] is not None and "default_policy" in info["policy"]


def on_episode_step(info):
    CALLS["episode_step"] += 1
    info["episode"].user_data["steps"] += 1


def on_episode_end(info):
    CALLS["episode_end"] += 1
    episode = info["episode"]
    episode.custom_metrics["steps_counted"] = episode.user_data["steps"]
    episode.custom_metrics["counted_minus_length"] = episode.user_data["steps"] - episode.length


def on_sample_end(info):
    CALLS["sample_end"] += 1
    CALLS["sampled_steps"] += info["samples"].count


def on_postprocess_traj(info):
    CALLS["postprocess_traj"] += 1
    assert "advantages" in info["post_batch"]


def on_train_result(info):
    CALLS["train_result"] += 1
    info["result"]["callback_saw_iteration"] = info["trainer"].iteration


CALLBACKS = {
    f.__name__: f
    for f in (on_episode_start, on_episode_step, on_episode_end, on_sample_end, on_postprocess_traj, on_train_result)
}


def test_callbacks_custom_metrics_and_evaluation():
    CALLS.clear()
    config = {
        "seed": 0,
        "callbacks": CALLBACKS,
        "evaluation_interval": 2,
        "evaluation_num_episodes": 3,
        "evaluation_config": {"explore": False},
        "train_batch_size": 400,
        "sample_batch_size": 200,
    }
    trainer = PGTrainer(env="CartPole-v1", config=config)
    results = [trainer.train() for _ in range(4)]
    trainer.stop()

    assert CALLS["train_result"] == 4
    assert [r["callback_saw_iteration"] for r in results] == [1, 2, 3, 4]
    assert CALLS["sample_end"] >= 8 and CALLS["sampled_steps"] >= 1600
    assert CALLS["postprocess_traj"] >= CALLS["sample_end"]
    # Evaluation episodes run through the same sampler (and callbacks), so count at least the training ones.
    episodes_total = results[-1]["episodes_total"]
    assert CALLS["episode_end"] >= episodes_total > 10
    assert CALLS["episode_start"] >= CALLS["episode_end"]
    assert CALLS["episode_step"] >= 1600

    custom = results[-1]["custom_metrics"]
    assert {"steps_counted_mean", "steps_counted_min", "steps_counted_max"} <= set(custom)
    assert custom["counted_minus_length_min"] == custom["counted_minus_length_max"] == 0
    assert np.isclose(custom["steps_counted_mean"], results[-1]["episode_len_mean"])

    # Evaluation every 2nd iteration, with its own episodes, under result["evaluation"].
    assert ["evaluation" in r for r in results] == [False, True, False, True]
    for r in (results[1], results[3]):
        evaluation = r["evaluation"]
        assert evaluation["episodes_this_iter"] == 3
        assert np.isfinite(evaluation["episode_reward_mean"]) and evaluation["episode_len_mean"] >= 8

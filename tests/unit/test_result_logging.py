"""A trainer given a log directory writes the files a Tune trial has: params.json, result.json,
progress.csv and TensorBoard events whose tags can be read back."""

import csv
import glob
import json
import os

from relayrl.agents.pg import PGTrainer


def test_python_api_logdir_writes_result_files_and_tensorboard(tmp_path):
    logdir = str(tmp_path / "run")
    trainer = PGTrainer(
        env="CartPole-v1", config={"train_batch_size": 100, "model": {"fcnet_hiddens": [8]}, "seed": 0}, logdir=logdir
    )
    try:
        results = [trainer.train() for _ in range(3)]
        checkpoint = trainer.save()
    finally:
        trainer.stop()
    assert checkpoint.startswith(os.path.abspath(logdir))
    params = json.load(open(os.path.join(logdir, "params.json")))
    assert params["train_batch_size"] == 100 and params["model"]["fcnet_hiddens"] == [8]

    lines = [json.loads(line) for line in open(os.path.join(logdir, "result.json"))]
    assert [r["training_iteration"] for r in lines] == [1, 2, 3]
    assert lines[-1]["timesteps_total"] == results[-1]["timesteps_total"]
    assert "default_policy" in lines[-1]["info"]["learner"]

    rows = list(csv.DictReader(open(os.path.join(logdir, "progress.csv"))))
    assert len(rows) == 3
    assert float(rows[-1]["episode_reward_mean"]) == results[-1]["episode_reward_mean"]
    assert "info/learner/default_policy/policy_loss" in rows[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(logdir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "ray/tune/episode_reward_mean" in tags
    assert "ray/tune/info/learner/default_policy/policy_loss" in tags
    steps = [e.step for e in acc.Scalars("ray/tune/timesteps_total")]
    assert steps == [r["timesteps_total"] for r in results]

import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTrainer
from relayrl.config import COMMON_CONFIG, with_common_config


@pytest.mark.parametrize(
    "config, pattern",
    [
        ({"lrr": 0.1}, r"unknown key 'lrr' \(did you mean 'lr'\?\)"),
        ({"num_sgd_itr": 3}, r"did you mean 'num_sgd_iter'"),
        ({"model": {"fcnet_hidden": [8]}}, r"unknown key 'model.fcnet_hidden' \(did you mean 'model.fcnet_hiddens'|"
                                           r"did you mean 'fcnet_hiddens'"),
        ({"lr": "fast"}, r"'lr' must be int or float, got 'fast'"),
        ({"num_workers": 1.5}, r"'num_workers' must be int"),
        ({"num_workers": True}, r"'num_workers' must be int"),
        ({"num_workers": -1}, r"'num_workers' must be >= 0, got -1"),
        ({"gamma": 1.5}, r"'gamma' must be in \[0, 1\], got 1.5"),
        ({"batch_mode": "whole"}, r"'batch_mode' must be 'truncate_episodes' or 'complete_episodes'"),
        ({"observation_filter": "Mean"}, r"'observation_filter' must be"),
        ({"sgd_minibatch_size": 500, "train_batch_size": 100}, r"'sgd_minibatch_size' \(500\) must be <="),
        ({"clip_param": 0}, r"'clip_param' must be > 0"),
        ({"use_gae": False}, r"needs 'use_gae': True"),
        ({"callbacks": {"on_episode_end": 3}}, r"callbacks.on_episode_end must be callable"),
        ({"callbacks": {"on_episode_ned": None}}, r"did you mean 'on_episode_end'"),
        ({"evaluation_config": {"explroe": False}}, r"did you mean"),
        ({"lr": {"grid_search": [0.1, 0.01]}}, r"grid_search"),
    ],
)
def test_bad_config_is_rejected_with_its_name(config, pattern):
    with pytest.raises(ValueError, match=pattern):
        PPOTrainer(env="CartPole-v1", config=config)


def test_unknown_env_named():
    with pytest.raises(ValueError, match=r"unknown environment 'CartPol-v1'.*did you mean 'CartPole-v1'"):
        PGTrainer(env="CartPol-v1")


def test_defaults_are_the_seeds():
    assert DEFAULT_CONFIG["num_sgd_iter"] == 30 and DEFAULT_CONFIG["lr"] == 5e-5
    assert DEFAULT_CONFIG["observation_filter"] == "MeanStdFilter"
    assert with_common_config({"x": 1})["gamma"] == COMMON_CONFIG["gamma"] == 0.99
    # The caller's dicts are never mutated by the merge.
    extra = {"model": {"fcnet_hiddens": [3]}}
    merged = with_common_config(extra)
    merged["model"]["fcnet_hiddens"].append(4)
    assert extra["model"]["fcnet_hiddens"] == [3]
    assert COMMON_CONFIG["model"]["fcnet_hiddens"] == [256, 256]


def test_valid_config_accepted():
    trainer = PGTrainer(env="CartPole-v1", config={"lr": 1, "model": {"fcnet_hiddens": [16]}, "horizon": 50,
                                                   "clip_rewards": 1.0, "seed": 3})
    assert trainer.config["lr"] == 1 and trainer.config["model"]["fcnet_activation"] == "tanh"


def test_seed_era_key_names_are_accepted():
    trainer = PPOTrainer(env="CartPole-v1", config={"sgd_stepsize": 0.01, "sgd_batchsize": 64})
    assert trainer.config["lr"] == 0.01 and trainer.config["sgd_minibatch_size"] == 64
    assert "sgd_stepsize" not in trainer.config
    with pytest.raises(ValueError, match="both 'sgd_stepsize' and its new name 'lr'"):
        PPOTrainer(env="CartPole-v1", config={"sgd_stepsize": 0.01, "lr": 0.1})

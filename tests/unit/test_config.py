import pytest

from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTrainer
from relayrl.config import COMMON_CONFIG, with_common_config


@pytest.mark.parametrize(
    "config, pattern",
    [
        ({"lrr": 0.1}, r"unknown key 'lrr' \(did you mean 'lr'\?\)"),
        ({"num_sgd_itr": 3}, r"did you mean 'num_sgd_iter'"),
        (
            {"model": {"fcnet_hidden": [8]}},
            r"unknown key 'model.fcnet_hidden' \(did you mean 'model.fcnet_hiddens'|"
            r"did you mean 'fcnet_hiddens'",
        ),
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
        # Issue 10, item 6: these failed late inside torch, or were accepted.
        ({"horizon": 0}, r"'horizon' must be None or >= 1, got 0"),
        ({"model": {"fcnet_hiddens": ["a"]}}, r"'model.fcnet_hiddens' must be a list of positive ints .*got \['a'\]"),
        ({"model": {"fcnet_hiddens": [-5]}}, r"'model.fcnet_hiddens' must be a list of positive ints .*got \[-5\]"),
        ({"model": {"fcnet_hiddens": 64}}, r"'model.fcnet_hiddens' must be"),
        ({"model": {"fcnet_activation": "sigmoid"}}, r"'model.fcnet_activation' must be one of elu, linear, relu"),
        ({"model": {"conv_activation": "swish"}}, r"'model.conv_activation' must be one of"),
        ({"model": {"conv_filters": [[16, 8]]}}, r"'model.conv_filters' must be a non-empty list of \[out_channels"),
        ({"model": {"conv_filters": [[16, 8, 0]]}}, r"'model.conv_filters' must be"),
        ({"model": {"max_seq_len": 0}}, r"'model.max_seq_len' must be a positive int, got 0"),
        ({"model": {"dim": -84}}, r"'model.dim' must be a positive int"),
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
    trainer = PGTrainer(
        env="CartPole-v1",
        config={"lr": 1, "model": {"fcnet_hiddens": [16]}, "horizon": 50, "clip_rewards": 1.0, "seed": 3},
    )
    assert trainer.config["lr"] == 1 and trainer.config["model"]["fcnet_activation"] == "tanh"


def test_seed_era_key_names_are_accepted():
    trainer = PPOTrainer(env="CartPole-v1", config={"sgd_stepsize": 0.01, "sgd_batchsize": 64})
    assert trainer.config["lr"] == 0.01 and trainer.config["sgd_minibatch_size"] == 64
    assert "sgd_stepsize" not in trainer.config
    with pytest.raises(ValueError, match="both 'sgd_stepsize' and its new name 'lr'"):
        PPOTrainer(env="CartPole-v1", config={"sgd_stepsize": 0.01, "lr": 0.1})


def test_model_options_are_checked_without_a_trainer_too():
    import gymnasium as gym

    from relayrl.models.catalog import ModelCatalog

    space = gym.spaces.Box(-1, 1, (4,))
    with pytest.raises(ValueError, match=r"'model.fcnet_hiddens' must be a list of positive ints"):
        ModelCatalog.get_model(space, gym.spaces.Discrete(2), 2, {"fcnet_hiddens": [0]})
    assert ModelCatalog.get_model(space, gym.spaces.Discrete(2), 2, {"fcnet_hiddens": []}) is not None  # linear


def test_rollout_worker_rejects_unknown_keywords():
    import gymnasium as gym

    from relayrl import RolloutWorker
    from relayrl.agents.pg.pg import PGTorchPolicy
    from relayrl.agents.ppo.ppo_torch_policy import PPOTorchPolicy

    def cartpole(ctx):
        return gym.make("CartPole-v1")

    with pytest.raises(
        TypeError,
        match=r"unexpected keyword argument 'sample_batch_sise' \(did you mean"
        r" 'sample_batch_size'\?\)",
    ):
        RolloutWorker(cartpole, PGTorchPolicy, sample_batch_sise=10)
    with pytest.raises(TypeError, match=r"'lambda'.*through policy_config"):
        RolloutWorker(cartpole, PGTorchPolicy, **{"lambda": 0.9})
    # Seed-era names still map, the TensorFlow-only ones are dropped, an algorithm's keys come with its config.
    worker = RolloutWorker(
        cartpole,
        PGTorchPolicy,
        batch_steps=10,
        episode_horizon=5,
        num_envs=2,
        model_config={"fcnet_hiddens": [8]},
        tf_session_creator=None,
        preprocessor_pref="deepmind",
    )
    assert (worker.config["sample_batch_size"], worker.config["horizon"], worker.config["num_envs_per_worker"]) == (
        10,
        5,
        2,
    )
    assert worker.config["model"]["fcnet_hiddens"] == [8]
    worker = RolloutWorker(cartpole, PPOTorchPolicy, policy_config=dict(DEFAULT_CONFIG), **{"lambda": 0.5})
    assert worker.config["lambda"] == 0.5


def _flat_result_keys(trainer) -> set:
    from ray.tune.utils import flatten_dict

    return set(flatten_dict(trainer.train()))


def test_every_key_a_result_reports_is_a_valid_stop_criterion():
    """The stop check knows every key a result has (with evaluation on), so it never rejects a real one."""
    from ray.tune.result import AUTO_RESULT_KEYS

    from relayrl.experiments import validate_stop

    config = {
        "train_batch_size": 64,
        "sample_batch_size": 32,
        "evaluation_interval": 1,
        "evaluation_num_episodes": 1,
        "model": {"fcnet_hiddens": [8]},
    }
    keys = _flat_result_keys(PGTrainer(env="CartPole-v1", config=config))
    keys |= set(AUTO_RESULT_KEYS) - {"config", "checkpoint_dir_name", "node_ip", "hostname", "pid", "date"}
    keys -= {"hostname", "pid", "date"}  # strings and a pid: reported, but nothing to stop on
    assert "evaluation/episode_reward_mean" in keys and "info/num_steps_sampled" in keys
    validate_stop("x", {k: 1 for k in keys}, PGTrainer._default_config, config)
    validate_stop(
        "x",
        {
            "custom_metrics/pole_angle_mean": 1,
            "policy_reward_mean/default_policy": 1,
            "info/learner/default_policy/policy_loss": 0,
        },
        PGTrainer._default_config,
        {},
    )


def test_unknown_stop_criteria_are_rejected_before_ray_starts():
    import ray

    from relayrl.experiments import UserError, run_experiments, validate_stop

    ray_was_up = ray.is_initialized()  # an earlier test's session may have started it; this one must not
    defaults = PGTrainer._default_config
    with pytest.raises(
        UserError,
        match=r"unknown stop criterion 'episode_reward_meen' \(did you mean"
        r" 'episode_reward_mean'\?\)",
    ):
        validate_stop("x", {"episode_reward_meen": 100}, defaults, {})
    with pytest.raises(UserError, match=r"did you mean 'evaluation/episode_reward_mean'"):
        validate_stop("x", {"evaluation/episode_reward_meen": 100}, defaults, {"evaluation_interval": 1})
    with pytest.raises(UserError, match=r"'info' is a group of results"):
        validate_stop("x", {"info": 1}, defaults, {})
    # A callback may add its own keys to the result: then any key may be stopped on.
    validate_stop("x", {"my_score": 1}, defaults, {"callbacks": {"on_train_result": lambda info: None}})
    # Python users of relayrl.experiments.run_experiments get the same check, before Tune or Ray start.
    with pytest.raises(UserError, match="episode_reward_meen"):
        run_experiments({"typo": {"run": "PG", "env": "CartPole-v1", "stop": {"episode_reward_meen": 100}}})
    assert ray.is_initialized() == ray_was_up

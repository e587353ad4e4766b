"""Issue 11 item 1, "no silent keys": each config key does what its comment says, or is rejected by name.

monitor (videos for every algorithm and `relayrl rollout --video`), the Atari model keys, optimizer sub-keys,
the seed-era names gpu / gpu_fraction / ConcurrentMeanStdFilter / use_pytorch, and one translate + validate +
merge of the config per trainer. The dead-key scan itself is tests/unit/test_dead_keys.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import relayrl.config as config_module
from relayrl.agents.registry import ALGORITHMS, get_trainer_class
from relayrl.config import prepare_config
from relayrl.env.registry import EnvContext, get_env_creator, register_env
from relayrl.models.catalog import MODEL_DEFAULTS
from relayrl.utils.filters import MeanStdFilter, get_filter

TINY_PG = {"train_batch_size": 100, "sample_batch_size": 100, "model": {"fcnet_hiddens": [8]}, "seed": 0}


def _prepare(name: str, config: dict) -> dict:
    cls = get_trainer_class(name)
    return prepare_config(config, cls._default_config, name, cls._validate_config)


def _frames(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.ndim == 3 and frame.shape[2] == 3
        frames += 1
    cap.release()
    return frames


def _assert_playable(paths: list[Path]) -> None:
    assert paths
    for path in paths:
        assert path.stat().st_size > 1024, path
        assert _frames(path) > 0, path


# --- optimizer sub-keys ------------------------------------------------------------------------------------
# A misspelt option per algorithm and the option it should suggest (None: the optimizer takes no options here).
TYPOS = {
    "PG": ("num_sgd_iters", "num_sgd_iter"),
    "A2C": ("num_sgd_iters", "num_sgd_iter"),
    "PPO": ("sgd_batch_sizes", None),
    "A3C": ("grad_per_step", "grads_per_step"),
    "IMPALA": ("learner_queue_sizes", "learner_queue_size"),
    "DQN": ("debug", None),
    "DDPG": ("debug", None),
    "TD3": ("debug", None),
    "APEX": ("max_weight_sync_delays", "max_weight_sync_delay"),
    "APEX_DDPG": ("max_weight_sync_delays", "max_weight_sync_delay"),
    "ES": ("stepsize", None),
    "ARS": ("sgd_stepsize", None),
}


def test_every_algorithm_has_an_optimizer_typo_case():
    assert set(TYPOS) == set(ALGORITHMS)


@pytest.mark.parametrize("name", list(TYPOS))
def test_unknown_optimizer_key_is_a_value_error_naming_algorithm_key_and_suggestion(name):
    typo, suggestion = TYPOS[name]
    with pytest.raises(ValueError) as info:
        _prepare(name, {"optimizer": {typo: 1}})
    message = str(info.value)
    assert message.startswith(f"{name} config:") and f"'optimizer.{typo}'" in message
    if suggestion:
        assert f"did you mean 'optimizer.{suggestion}'?" in message
    else:
        assert "did you mean" not in message


def test_an_option_the_trainer_sets_itself_is_rejected_with_the_top_level_key():
    with pytest.raises(ValueError, match=r"PG config: 'optimizer.train_batch_size' .* top-level 'train_batch_size'"):
        _prepare("PG", {"optimizer": {"train_batch_size": 10}})


def test_pg_rejects_an_unknown_optimizer_key_when_built_not_with_a_type_error():
    from relayrl.agents.pg import PGTrainer

    with pytest.raises(ValueError, match="PG config: unknown key 'optimizer.bogus'"):
        PGTrainer(env="CartPole-v1", config={"optimizer": {"bogus": 1}})


def test_accepted_optimizer_options_reach_the_optimizer():
    from relayrl.agents.pg import PGTrainer

    trainer = PGTrainer(env="CartPole-v1", config={**TINY_PG, "optimizer": {"num_sgd_iter": 3}})
    try:
        assert trainer.optimizer.num_sgd_iter == 3
    finally:
        trainer.stop()


# --- legacy names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "legacy, num_gpus",
    [
        ({"gpu_fraction": 0.2}, 0.2),
        ({"gpu": True}, 1),
        ({"gpu": False}, 0),
        ({"gpu": True, "gpu_fraction": 0.5}, 0.5),
        ({"gpu": False, "gpu_fraction": 0.5}, 0),
    ],
)
def test_gpu_and_gpu_fraction_map_to_num_gpus(legacy, num_gpus):
    config = _prepare("DQN", legacy)
    assert config["num_gpus"] == num_gpus and "gpu" not in config and "gpu_fraction" not in config


def test_gpu_fraction_with_num_gpus_is_a_conflict():
    with pytest.raises(ValueError, match="'gpu_fraction' and its new name 'num_gpus'"):
        _prepare("PG", {"gpu_fraction": 0.2, "num_gpus": 1})


def test_gpu_fraction_is_requested_from_ray_too():
    from relayrl.experiments import resources_needed

    assert resources_needed({"e": {"run": "PG", "env": "CartPole-v1", "config": {"gpu_fraction": 0.2}}}) == (1, 0.2)


def test_trainer_reads_gpu_fraction_as_num_gpus():
    from relayrl.agents.pg import PGTrainer

    trainer = PGTrainer(env="CartPole-v1", config={**TINY_PG, "gpu_fraction": 0.2})
    try:
        assert trainer.config["num_gpus"] == 0.2  # the CPU is used when no CUDA device is present
    finally:
        trainer.stop()


def test_concurrent_mean_std_filter_is_mean_std_filter():
    assert isinstance(get_filter("ConcurrentMeanStdFilter", (3,)), MeanStdFilter)
    assert _prepare("PPO", {"observation_filter": "ConcurrentMeanStdFilter"})["observation_filter"]
    with pytest.raises(ValueError, match="'observation_filter' must be"):
        _prepare("PPO", {"observation_filter": "ConcurrentFilter"})


def test_use_pytorch_false_is_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="relayrl.config"):
        _prepare("A3C", {"use_pytorch": True})
        _prepare("A3C", {})  # A3C's seed default is False: no warning unless the user asks for it
        assert not caplog.records
        _prepare("A3C", {"use_pytorch": False})
    assert "'use_pytorch': False is ignored" in caplog.text


# --- one translation, validation and merge -----------------------------------------------------------------
def test_the_trainer_translates_validates_and_merges_once(monkeypatch):
    from relayrl.agents.pg.pg import DEFAULT_CONFIG, PGTorchPolicy
    from relayrl.agents.trainer_template import build_trainer

    calls = []
    translate = config_module.translate_legacy_keys
    monkeypatch.setattr(config_module, "translate_legacy_keys", lambda *a: calls.append(1) or translate(*a))
    seen = []
    trainer_cls = build_trainer(
        name="Probe", default_policy=PGTorchPolicy, default_config=DEFAULT_CONFIG, validate_config=seen.append
    )
    trainer = trainer_cls(env="CartPole-v1", config={**TINY_PG, "sgd_stepsize": 0.01})
    try:
        assert len(calls) == 1 and len(seen) == 1
        # The algorithm's check gets the merged, translated config: every key, read as config[key].
        assert set(DEFAULT_CONFIG) <= set(seen[0]) and seen[0]["lr"] == 0.01
        assert trainer.config["lr"] == 0.01
    finally:
        trainer.stop()


def test_no_algorithm_re_derives_defaults():
    agents = Path(config_module.__file__).parent / "agents"
    for path in agents.rglob("*.py"):
        text = path.read_text()
        assert "DEFAULT_CONFIG[k]" not in text and "defaults[k]" not in text, path


# --- Atari model keys --------------------------------------------------------------------------------------
def test_declared_atari_defaults_describe_the_default_pipeline():
    # wrap_deepmind has always made grayscale uint8 frames: the declared defaults say so (issue 11).
    assert (MODEL_DEFAULTS["grayscale"], MODEL_DEFAULTS["zero_mean"]) == (True, False)
    assert (MODEL_DEFAULTS["dim"], MODEL_DEFAULTS["framestack"]) == (84, True)


@pytest.mark.parametrize(
    "model, shape, dtype",
    [
        ({}, (84, 84, 4), np.uint8),
        ({"dim": 42}, (42, 42, 4), np.uint8),
        ({"dim": 42, "framestack": False}, (42, 42, 1), np.uint8),
        ({"grayscale": False, "framestack": False}, (84, 84, 3), np.uint8),
        ({"grayscale": False, "framestack": 2}, (84, 84, 6), np.uint8),
        ({"zero_mean": True}, (84, 84, 4), np.float32),
    ],
)
def test_atari_model_keys_shape_the_observations(model, shape, dtype):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    env = get_env_creator("PongNoFrameskip-v4")(EnvContext({}, model=model))
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(20):
            obs, *_ = env.step(env.action_space.sample())
        assert obs.shape == shape and obs.dtype == dtype
        assert env.observation_space.shape == shape and env.observation_space.contains(obs)
        if model.get("zero_mean"):
            assert -1.0 <= obs.min() < 0.0 < obs.max() < 1.0
        else:
            assert obs.max() > 1
    finally:
        env.close()


def test_rgb_frames_stack_frame_by_frame():
    pytest.importorskip("ale_py")
    env = get_env_creator("PongNoFrameskip-v4")(EnvContext({}, model={"grayscale": False, "framestack": 2}))
    obs, _ = env.reset(seed=0)
    nxt, *_ = env.step(0)
    assert np.array_equal(nxt[..., :3], obs[..., 3:])  # the newest RGB frame is the last three channels
    env.close()


def test_the_trainers_model_config_reaches_the_atari_env():
    pytest.importorskip("ale_py")
    from relayrl.agents.pg import PGTrainer

    trainer = PGTrainer(env="PongNoFrameskip-v4", config={"model": {"dim": 42, "zero_mean": True}})
    try:
        space = trainer.get_policy().observation_space
        assert space.shape == (42, 42, 4) and space.dtype == np.float32
    finally:
        trainer.stop()


# --- monitor -----------------------------------------------------------------------------------------------
def _renderable_cartpole(ctx):
    return gym.make("CartPole-v1", render_mode=ctx.render_mode)


def _not_renderable_cartpole(ctx):
    return gym.make("CartPole-v1")


register_env("relayrl_test_renderable_cartpole", _renderable_cartpole)
register_env("relayrl_test_blind_cartpole", _not_renderable_cartpole)


def test_monitor_without_moviepy_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moviepy" else real(name, *a))
    with pytest.raises(ValueError, match=re.escape("monitor: True needs moviepy: pip install -e '.[video]'")):
        _prepare("PG", {"monitor": True})


def test_monitor_records_sub_env_0_into_the_logdir_and_evaluation_under_evaluation(tmp_path):
    pytest.importorskip("moviepy")
    from relayrl.agents.pg import PGTrainer

    trainer = PGTrainer(
        env="relayrl_test_renderable_cartpole",
        logger_creator=str(tmp_path),
        config={
            **TINY_PG,
            "monitor": True,
            "num_envs_per_worker": 2,
            "evaluation_interval": 1,
            "evaluation_num_episodes": 1,
        },
    )
    try:
        trainer.train()
        subs = trainer.workers.local_worker().async_env.get_sub_environments()
        assert isinstance(subs[0], gym.wrappers.RecordVideo) and subs[0].render_mode == "rgb_array"
        assert not isinstance(subs[1], gym.wrappers.RecordVideo) and subs[1].render_mode is None
    finally:
        trainer.stop()
    videos = sorted(tmp_path.glob("*.mp4"))
    assert {p.name for p in videos} >= {"worker0-episode-0.mp4", "worker0-episode-1.mp4"}
    assert all(p.name.startswith("worker0-") for p in videos)
    _assert_playable(videos)
    _assert_playable(sorted((tmp_path / "evaluation").glob("worker0-episode-*.mp4")))


def test_monitor_with_an_env_that_cannot_render_names_render_mode(tmp_path):
    pytest.importorskip("moviepy")
    from relayrl.agents.pg import PGTrainer

    with pytest.raises(ValueError, match=r"render_mode=None.*ctx\.render_mode"):
        PGTrainer(env="relayrl_test_blind_cartpole", logger_creator=str(tmp_path), config={**TINY_PG, "monitor": True})


def test_monitor_records_es_rollouts(tmp_path):
    pytest.importorskip("moviepy")
    from relayrl.agents.es import ESTrainer

    trainer = ESTrainer(
        env="CartPole-v1",
        logger_creator=str(tmp_path),
        config={
            "num_workers": 0,
            "noise_size": 100_000,
            "episodes_per_batch": 2,
            "train_batch_size": 10,
            "monitor": True,
            "model": {"fcnet_hiddens": [8]},
            "seed": 0,
        },
    )
    try:
        trainer.train()
    finally:
        trainer.stop()
    _assert_playable(sorted(tmp_path.glob("worker0-episode-*.mp4")))


def _relayrl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    return subprocess.run(
        [sys.executable, "-m", "relayrl", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_cli_monitor_writes_playable_videos_of_remote_workers_in_the_trial_dir(tmp_path):
    pytest.importorskip("moviepy")
    config = {**TINY_PG, "monitor": True, "num_workers": 1}
    proc = _relayrl(
        "train",
        "--run",
        "PG",
        "--env",
        "CartPole-v1",
        "--config",
        json.dumps(config),
        "--stop",
        '{"training_iteration": 2}',
        "--local-dir",
        str(tmp_path),
        "--experiment-name",
        "monitor",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (trial_dir,) = [p for p in (tmp_path / "monitor").iterdir() if p.name.startswith("PG")]
    assert (trial_dir / "params.json").exists()
    videos = sorted(trial_dir.glob("worker1-episode-*.mp4"))  # the remote worker samples; the local one learns
    assert "worker1-episode-0.mp4" in {p.name for p in videos}
    _assert_playable(videos)


def test_rollout_video_records_every_episode(tmp_path):
    pytest.importorskip("moviepy")
    from relayrl.agents.pg import PGTrainer

    trainer = PGTrainer(env="CartPole-v1", config=TINY_PG)
    checkpoint = trainer.save(str(tmp_path / "ckpt"))
    trainer.stop()
    out = tmp_path / "videos"
    proc = _relayrl(
        "rollout",
        checkpoint,
        "--run",
        "PG",
        "--env",
        "CartPole-v1",
        "--episodes",
        "2",
        "--video",
        str(out),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    videos = sorted(out.glob("*.mp4"))
    assert [p.name for p in videos] == ["rollout-episode-0.mp4", "rollout-episode-1.mp4"]
    _assert_playable(videos)

"""Bad environments and NaN: check_env / check_nan (issue 10, item 5).

Each broken env case must fail with relayrl.env.EnvCheckError whose message names the env, the worker, the
sub-env, the step and the problem, in one process and through remote workers; a NaN loss must leave the weights
bit-identical; ``check_env: False`` turns the structural checks off.
"""

import json
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from relayrl.agents.pg import PGTorchPolicy, PGTrainer
from relayrl.env import EnvCheckError, register_env
from relayrl.env.vector_env import CheckedVectorEnv
from relayrl.evaluation import RolloutWorker
from relayrl.evaluation.postprocessing import Postprocessing
from relayrl.policy import NonFiniteLossError, SampleBatch

AT = 5  # the step of sub-env 1 at which a BadEnv misbehaves


class BadEnv(gym.Env):
    """A 4-float env whose sub-env 1 (``vector_index`` 1) breaks at its step ``at`` in the way ``mode`` says."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, ctx):
        self.mode, self.at = ctx["mode"], ctx.get("at", AT)
        self.bad = ctx.vector_index == 1
        self.steps = 0  # since creation, across episodes

    def _obs(self):
        obs = np.full(4, 0.5, np.float32)
        if self.bad and self.steps == self.at:
            if self.mode == "nan_obs":
                obs[2] = np.nan
            elif self.mode == "wrong_shape":
                obs = np.zeros(3, np.float32)
            elif self.mode == "string_obs":
                obs = "hello"
        return obs

    def reset(self, *, seed=None, options=None):
        self.t = 0
        if self.mode == "reset_only_obs" and self.bad:
            return self._obs()
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        reward, info = 1.0, {}
        if self.bad and self.steps == self.at:
            if self.mode in ("inf_reward", "nan_reward"):
                reward = float(self.mode[:3])
            elif self.mode == "old_4_tuple":
                return self._obs(), reward, False, info
            elif self.mode == "info_none":
                info = None
        return self._obs(), reward, self.t >= 50, False, info


# mode -> what the message must say about the problem (besides env, worker, sub-env and step)
CASES = {
    "nan_obs": ["step() returned an observation that contains nan", "observation_space is Box"],
    "inf_reward": ["the reward is inf; rewards must be finite"],
    "nan_reward": ["the reward is nan; rewards must be finite"],
    "wrong_shape": ["step() returned an observation that has shape (3,), not the space's (4,)"],
    "string_obs": ["step() returned an observation that is a str 'hello', not numbers"],
    "old_4_tuple": [
        "step() returned 4 values (the old gym API's (obs, reward, done, info))",
        "Gymnasium's API returns 5: (obs, reward, terminated, truncated, info)",
        "https://gymnasium.farama.org/api/env/#gymnasium.Env.step",
    ],
    "reset_only_obs": [
        "reset() returned only an ndarray of shape (4,)",
        "Gymnasium's API returns (obs, info)",
        "https://gymnasium.farama.org/api/env/#gymnasium.Env.reset",
    ],
}
for _mode in list(CASES) + ["info_none"]:
    register_env(f"BadEnv-{_mode}", BadEnv)

SMALL = {"num_envs_per_worker": 2, "sample_batch_size": 10, "train_batch_size": 40}


def trainer(mode: str, **config) -> PGTrainer:
    return PGTrainer(env=f"BadEnv-{mode}", config={**SMALL, "env_config": {"mode": mode}, **config})


def where(mode: str, workers: str = "0") -> str:
    """The regex of the message's start: env, worker, sub-env and step."""
    step = "first reset" if mode == "reset_only_obs" else rf"step {AT} \(step {AT} of its episode\)"
    return rf"^env 'BadEnv-{mode}' \(BadEnv\), worker [{workers}], sub-env 1, {step}: "


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", list(CASES))
def test_bad_env_raises_env_check_error_naming_env_sub_env_step_and_problem(mode, num_workers, request):
    if num_workers:
        request.getfixturevalue("ray_session")
    t = trainer(mode, num_workers=num_workers)
    try:
        with pytest.raises(EnvCheckError) as info:
            t.train()
    finally:
        t.stop()
    # Through Ray the error is a RayTaskError(EnvCheckError): still an EnvCheckError, the message its last line.
    message = str(info.value).strip().splitlines()[-1].removeprefix("relayrl.env.EnvCheckError: ")
    assert re.search(where(mode, "12" if num_workers else "0"), message), message
    for part in CASES[mode]:
        assert part in message, message


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("nan_obs", "step() returned an observation that contains nan (as the policy sees it"),
        ("nan_reward", "the reward is nan"),
    ],
)
def test_nan_after_the_check_window_is_found_in_the_fragment(mode, expected):
    """check_env 2: the per-step checks are over by step 5; the fragment scan (check_nan) still names the step."""
    t = trainer(mode, check_env=2)
    try:
        with pytest.raises(EnvCheckError, match=where(mode)) as info:
            t.train()
    finally:
        t.stop()
    assert expected in str(info.value)
    assert isinstance(t.workers.local_worker().sampler.env, CheckedVectorEnv)


def test_check_window_hands_the_hot_loop_the_plain_step():
    worker = RolloutWorker(
        BadEnv, PGTorchPolicy, policy_config={**SMALL, "env_config": {"mode": "none"}, "check_env": 15}
    )
    env = worker.sampler.env
    assert isinstance(env, CheckedVectorEnv) and "vector_step" not in vars(env)
    worker.sample()  # 10 steps per sub-env: still checking
    assert "vector_step" not in vars(env)
    worker.sample()  # 20: the window (15) has passed
    assert env.vector_step == env.env.vector_step  # the wrapped env's bound method, no checking frame
    always = RolloutWorker(
        BadEnv, PGTorchPolicy, policy_config={**SMALL, "env_config": {"mode": "none"}, "check_env": True}
    )
    for _ in range(3):
        always.sample()
    assert "vector_step" not in vars(always.sampler.env)


def test_check_env_false_skips_the_checks():
    # A None info passes unnoticed without the checks ...
    t = trainer("info_none", check_env=False)
    try:
        assert t.train()["timesteps_total"] >= 40
        assert not isinstance(t.workers.local_worker().sampler.env, CheckedVectorEnv)
    finally:
        t.stop()
    t = trainer("info_none")
    try:
        with pytest.raises(EnvCheckError, match="step\\(\\) returned a NoneType as info, not a dict"):
            t.train()
    finally:
        t.stop()
    # ... and an old 4-tuple fails where numpy/the sampler trips over it, not with an EnvCheckError.
    t = trainer("old_4_tuple", check_env=False)
    try:
        with pytest.raises(ValueError) as info:
            t.train()
        assert not isinstance(info.value, EnvCheckError)
    finally:
        t.stop()


def test_sample_async_hands_on_the_env_check_error():
    """A3C samples in a background thread; its error reaches train() as the same EnvCheckError."""
    from relayrl.agents.a3c import A3CTrainer

    t = A3CTrainer(
        env="BadEnv-old_4_tuple",
        config={**SMALL, "env_config": {"mode": "old_4_tuple"}, "sample_async": True, "num_workers": 0},
    )
    try:
        with pytest.raises(EnvCheckError, match=where("old_4_tuple")):
            t.train()
    finally:
        t.stop()


def test_check_nan_false_skips_the_fragment_scan():
    t = trainer("nan_reward", check_env=False, check_nan=False)
    try:
        t.train()  # learns from the NaN (the user asked for it)
    finally:
        t.stop()


@pytest.mark.parametrize(
    "config, key",
    [
        ({"check_env": -1}, "check_env"),
        ({"check_env": "yes"}, "check_env"),
        ({"check_nan": 1}, "check_nan"),
    ],
)
def test_bad_check_keys_are_rejected(config, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        PGTrainer(env="CartPole-v1", config=config)


def test_check_keys_accept_their_values():
    for value in (True, False, 0, 500):
        PGTrainer(env="CartPole-v1", config={"check_env": value, "check_nan": False}).stop()


@pytest.mark.parametrize(
    "space, result, expected",
    [
        (
            gym.spaces.Box(0, 255, (2, 2), np.uint8),
            (np.zeros((2, 2)), 0.0, False, False, {}),
            "has dtype float64, which does not cast to the space's uint8",
        ),
        (gym.spaces.Discrete(3), (7, 0.0, False, False, {}), "is 7, outside Discrete(3, start=0)"),
        (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), ({"b": 0}, 0.0, False, False, {}), "lacks the key(s) ['a']"),
        (gym.spaces.Discrete(2), (0, None, False, False, {}), "step() returned a NoneType as the reward, not a number"),
        (gym.spaces.Discrete(2), (0, 0.0, None, False, {}), "step() returned a NoneType as terminated, not a bool"),
        (
            gym.spaces.Discrete(2),
            np.zeros(2),
            "step() returned an ndarray of shape (2,) and dtype float64, not a tuple",
        ),
    ],
)
def test_checker_messages(space, result, expected):
    from relayrl.env.env_checks import EnvChecker

    with pytest.raises(EnvCheckError) as info:
        EnvChecker(space, "'X-v0' (X)", worker_index=3).step_result(2, 7, 4, result)
    assert str(info.value).startswith("env 'X-v0' (X), worker 3, sub-env 2, step 7 (step 4 of its episode): ")
    assert expected in str(info.value)


class OldGymEnv(gym.Env):
    """An env of the old gym API as RLlib 0.7-era code wrote it: reset() -> obs, seed(n), 4-tuple steps; its
    episodes end after ``length`` steps, by a time limit (info["TimeLimit.truncated"]) when ``cut``."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, ctx):
        self.length, self.cut, self.seeds = ctx.get("length", 5), ctx.get("cut", False), []

    def seed(self, n=None):
        self.seeds.append(n)

    def reset(self):
        self.t = 0
        return np.zeros(2, np.float32)

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        return np.full(2, self.t, np.float32), 1.0, done, {"TimeLimit.truncated": True} if done and self.cut else {}


@pytest.mark.parametrize("cut", [False, True])
def test_an_old_gym_api_env_is_adapted_with_a_warning(cut, caplog):
    config = {**SMALL, "env_config": {"length": 5, "cut": cut}, "seed": 3, "sample_batch_size": 12}
    env_class = type(f"OldGymEnv{cut}", (OldGymEnv,), {})  # warned once per class
    with caplog.at_level("WARNING"):
        worker = RolloutWorker(env_class, PGTorchPolicy, policy_config=config, num_envs_per_worker=2)
        batch = worker.sample()
    assert batch.count == 24
    assert f"OldGymEnv{cut} has the old gym API" in caplog.text and "TimeLimit.truncated" in caplog.text
    ends = batch[SampleBatch.T] == 4  # every episode's 5th and last step
    assert ends.sum() == 4 and batch[SampleBatch.DONES][ends].all()
    assert batch[SampleBatch.TRUNCATEDS][ends].all() == cut and batch[SampleBatch.TERMINATEDS][ends].all() != cut
    assert not batch[SampleBatch.DONES][~ends].any()
    subs = worker.foreach_env(lambda env: env)
    assert [sub.seeds for sub in subs] == [[3], [4]]  # the first reset seeds each sub-env through env.seed(n)
    assert all(isinstance(sub.unwrapped, OldGymEnv) and sub.length == 5 for sub in subs)  # the env's own attributes


def test_an_env_with_gymnasiums_reset_and_a_4_tuple_step_is_still_an_error():
    """Only an env whose reset() has the old signature is adapted; a half-ported one is named (the cases above)."""

    class HalfPorted(OldGymEnv):
        def reset(self, *, seed=None, options=None):
            return super().reset(), {}

    worker = RolloutWorker(HalfPorted, PGTorchPolicy, policy_config={**SMALL, "seed": 1})
    with pytest.raises(EnvCheckError, match=r"step\(\) returned 4 values \(the old gym API"):
        worker.sample()


# --- the learner ----------------------------------------------------------------------------------------------
def pg_policy(**config):
    space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    return PGTorchPolicy(space, gym.spaces.Discrete(2), {"lr": 0.01, "seed": 0, **config})


def pg_batch(n: int = 32) -> SampleBatch:
    rng = np.random.default_rng(0)
    return SampleBatch(
        {
            SampleBatch.OBS: rng.normal(size=(n, 4)).astype(np.float32),
            SampleBatch.ACTIONS: rng.integers(0, 2, n),
            SampleBatch.REWARDS: np.ones(n),
            Postprocessing.ADVANTAGES: rng.normal(size=n).astype(np.float32),
        }
    )


@pytest.mark.parametrize("column, count", [(Postprocessing.ADVANTAGES, "3 NaN"), (SampleBatch.OBS, "12 inf")])
def test_nan_loss_raises_and_leaves_the_weights_bit_identical(column, count):
    policy = pg_policy()
    policy.learn_on_batch(pg_batch())  # the optimizer has state: it must not move either
    before = policy.get_state()
    batch = pg_batch()
    batch[column][:3] = np.nan if column == Postprocessing.ADVANTAGES else np.inf
    with pytest.raises(NonFiniteLossError) as info:
        policy.learn_on_batch(batch)
    message = str(info.value)
    assert message.startswith("policy PGTorchPolicy (worker 0): non-finite loss terms: loss=nan, policy_loss=nan;")
    assert "non-finite gradients of" in message and f"batch of 32 rows: NaN/inf in {column} ({count})" in message
    assert "rewards min 1 max 1" in message and "advantages min" in message
    assert "The optimizer step was not applied: the weights are unchanged" in message
    after = policy.get_state()
    for k, w in before["weights"].items():
        assert w.tobytes() == after["weights"][k].tobytes(), k
    assert json.dumps(before["optimizers"], default=repr) == json.dumps(after["optimizers"], default=repr)
    with pytest.raises(NonFiniteLossError):
        policy.compute_gradients(batch)
    policy.learn_on_batch(pg_batch())  # a finite batch learns again


def test_nan_loss_check_can_be_switched_off():
    policy = pg_policy(check_nan=False)
    batch = pg_batch()
    batch[Postprocessing.ADVANTAGES][:3] = np.nan
    policy.learn_on_batch(batch)
    assert any(np.isnan(w).any() for w in policy.get_weights().values())


# --- through the command line ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_train_with_a_bad_env_prints_the_message_on_its_error_line(tmp_path):
    """`relayrl train --env NAME` finds names given to register_env in the same process (the CLI cannot import a
    user's module itself), so the subprocess registers BadEnv by importing this module, then runs the CLI."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import sys, test_env_checks; from relayrl.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
        "RAY_DEDUP_LOGS": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
    config = {**SMALL, "num_workers": 2, "env_config": {"mode": "old_4_tuple"}}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "train",
            "--run",
            "PG",
            "--env",
            "BadEnv-old_4_tuple",
            "--config",
            json.dumps(config),
            "--stop",
            '{"training_iteration": 2}',
            "--local-dir",
            str(tmp_path),
            "--ray-num-cpus",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("relayrl: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"EnvCheckError: env 'BadEnv-old_4_tuple' \(BadEnv\), worker [12], sub-env 1, step 5 ", errors[0])
    assert "step() returned 4 values" in errors[0] and "gymnasium.Env.step" in errors[0], errors[0]

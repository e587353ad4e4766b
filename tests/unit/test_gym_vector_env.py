"""Gymnasium vector envs as a worker's sub-envs (issue 11, item 4).

An env creator returning ``gym.make_vec(...)``, ``SyncVectorEnv`` or ``AsyncVectorEnv`` supplies the worker's
sub-envs (relayrl/env/gym_vector_env.py). With the same seeds and policy, the vector env path must give exactly
the batches and episode metrics of relayrl's own vectorisation of the same env (episode ends by termination, by the
env's TimeLimit and by the config's horizon; final observations in new_obs; infos); an AsyncVectorEnv steps its
envs in subprocesses, also in a remote worker, and trainer.stop() ends them.
"""

import os
import time

import gymnasium as gym
import numpy as np
import psutil
import pytest

from relayrl.agents.pg import PGTorchPolicy, PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.env import register_env
from relayrl.env.gym_vector_env import GymVectorEnvAdapter
from relayrl.env.vector_env import CheckedVectorEnv, VectorEnv
from relayrl.evaluation import RolloutWorker
from relayrl.policy import SampleBatch

SAME, NEXT, DISABLED = (
    gym.vector.AutoresetMode.SAME_STEP,
    gym.vector.AutoresetMode.NEXT_STEP,
    gym.vector.AutoresetMode.DISABLED,
)
N = 3  # sub-envs


def cartpole(ctx=None):
    """CartPole cut at 20 steps by its TimeLimit: a random policy's episodes end both ways."""
    return gym.make("CartPole-v1", max_episode_steps=20)


class InfoEnv(gym.Env):
    """Dict observations; infos with the episode step (and "end" when terminated) and the stepping process."""

    observation_space = gym.spaces.Dict(
        {"pos": gym.spaces.Box(-10.0, 10.0, (2,), np.float32), "parity": gym.spaces.Discrete(2)}
    )
    action_space = gym.spaces.Discrete(2)

    def __init__(self, ctx=None):
        self.t, self.pos = 0, np.zeros(2, np.float32)

    def _obs(self):
        return {"pos": self.pos.copy(), "parity": self.t % 2}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.pos = 0, self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self._obs(), {"start": float(self.pos[0])}

    def step(self, action):
        self.t += 1
        self.pos = self.pos + np.array([0.5 if action else -0.5, 0.1], np.float32)
        terminated = bool(abs(self.pos[0]) > 2.0)
        info = {"t": self.t, "pid": os.getpid()}
        if terminated:
            info["end"] = 1
        return self._obs(), float(self.pos[1]), terminated, False, info


def info_env(ctx=None):
    return gym.wrappers.TimeLimit(InfoEnv(), max_episode_steps=6)


def sync_vec(make=cartpole, mode=SAME, n=N):
    return lambda ctx: gym.vector.SyncVectorEnv([make] * n, autoreset_mode=mode)


def async_vec(make=cartpole, mode=SAME, n=N, **kw):
    return lambda ctx: gym.vector.AsyncVectorEnv([make] * n, autoreset_mode=mode, **kw)


VECTOR_ENVS = {
    "sync-same-step": sync_vec(mode=SAME),
    "sync-next-step": sync_vec(mode=NEXT),
    "sync-disabled": sync_vec(mode=DISABLED),
    "async-same-step": async_vec(mode=SAME),
    "async-next-step": async_vec(mode=NEXT),
    "make_vec-async": lambda ctx: gym.make_vec(
        "CartPole-v1",
        num_envs=N,
        vectorization_mode="async",
        max_episode_steps=20,
        vector_kwargs={"autoreset_mode": SAME},
    ),
}
BASE = {"seed": 7, "sample_batch_size": 25, "model": {"fcnet_hiddens": [16]}}


def sample_both(vector_creator, plain_creator, fragments=3, **config):
    """Batches and episode metrics of ``fragments`` samples: the vector env path, then the plain path (``N``
    sub-envs of ``plain_creator``), same seed, same policy."""
    out = []
    for creator, n in ((vector_creator, 1), (plain_creator, N)):
        worker = RolloutWorker(creator, PGTorchPolicy, policy_config={**BASE, **config, "num_envs_per_worker": n})
        try:
            batches = [worker.sample() for _ in range(fragments)]
            out.append((batches, worker.get_metrics(), worker))
        finally:
            worker.stop()
    return out


def assert_same_batches(vector, plain):
    for vb, pb in zip(vector, plain):
        assert vb.count == pb.count == N * BASE["sample_batch_size"]
        assert sorted(vb.keys()) == sorted(pb.keys())
        for key in pb.keys():
            if key == SampleBatch.INFOS:
                assert [dict(i) for i in vb[key]] == [dict(i) for i in pb[key]], key
            else:
                np.testing.assert_array_equal(vb[key], pb[key], err_msg=key)


def lengths_and_returns(metrics):
    return [(m.episode_length, m.episode_reward) for m in metrics]


@pytest.mark.parametrize("name", list(VECTOR_ENVS))
def test_vector_env_path_gives_the_plain_paths_batches_and_episodes(name):
    (vb, vm, vw), (pb, pm, _) = sample_both(VECTOR_ENVS[name], cartpole)
    assert isinstance(vw.async_env, GymVectorEnvAdapter) or isinstance(vw.async_env.env, GymVectorEnvAdapter)
    assert vw.async_env.num_envs == N
    assert_same_batches(vb, pb)
    assert lengths_and_returns(vm) == lengths_and_returns(pm)
    batch = SampleBatch.concat_samples(vb)
    terminated, truncated = batch[SampleBatch.TERMINATEDS], batch[SampleBatch.TRUNCATEDS]
    assert terminated.any() and truncated.any()  # both kinds of episode end were compared
    assert set(batch[SampleBatch.T][truncated] + 1) == {20}  # the TimeLimit's truncations, at its limit
    # the final observation (not the reset one) is the new_obs of an episode's last step
    ends = np.flatnonzero(terminated)
    assert (np.abs(batch[SampleBatch.NEXT_OBS][ends][:, [0, 2]]) > [2.4, 0.2095]).any(axis=1).all()
    # episodes: the sums of steps and returns match the batch's rows of finished episodes
    assert sum(length for length, _ in lengths_and_returns(vm)) <= batch.count
    assert len(vm) == int((terminated | truncated).sum())


@pytest.mark.parametrize(
    "make",
    [sync_vec(mode=SAME), sync_vec(mode=NEXT), async_vec(mode=SAME)],
    ids=["sync-same-step", "sync-next-step", "async-same-step"],
)
def test_horizon_cuts_episodes_alike(make):
    """horizon (the sampler's truncation) resets a sub-env the vector env did not end: a masked reset."""
    (vb, vm, _), (pb, pm, _) = sample_both(make, cartpole, horizon=7)
    assert_same_batches(vb, pb)
    assert lengths_and_returns(vm) == lengths_and_returns(pm)
    assert max(length for length, _ in lengths_and_returns(vm)) == 7


@pytest.mark.parametrize("mode", [SAME, NEXT])
def test_dict_observations_and_infos(mode):
    (vb, vm, _), (pb, pm, _) = sample_both(sync_vec(info_env, mode), info_env, model={"fcnet_hiddens": [8]})
    assert_same_batches(vb, pb)
    assert lengths_and_returns(vm) == lengths_and_returns(pm)
    infos = SampleBatch.concat_samples(vb)[SampleBatch.INFOS]
    assert any("end" in i for i in infos) and all(i["t"] >= 1 for i in infos)


def test_check_env_wraps_the_adapter():
    (vb, _, vw), (pb, _, _) = sample_both(sync_vec(mode=NEXT), cartpole, check_env=True)
    assert isinstance(vw.async_env, CheckedVectorEnv) and isinstance(vw.async_env.env, GymVectorEnvAdapter)
    assert_same_batches(vb, pb)


def test_adapter_hands_over_step_infos_reset_obs_and_reset_infos():
    """Driven by hand like the sampler: each step's infos are the sub-envs' step infos, and reset_at(i) gives
    what sub-env i's own reset() gave (the SAME_STEP reset done inside step(), handed over)."""
    adapters = [GymVectorEnvAdapter(sync_vec(info_env, mode)(None)) for mode in (SAME, NEXT, DISABLED)]
    plain = VectorEnv.wrap(lambda i: info_env(), N)
    envs = adapters + [plain]
    first = [env.vector_reset([5, 6, 7]) for env in envs]
    for obs in first[:-1]:
        assert [o["pos"].tolist() for o in obs] == [o["pos"].tolist() for o in first[-1]]
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(40):
        actions = list(rng.integers(0, 2, N))
        results = [env.vector_step(actions) for env in envs]
        for obs, rewards, terms, truncs, infos in results:
            ref = results[-1]
            assert [o["pos"].tolist() for o in obs] == [o["pos"].tolist() for o in ref[0]]
            assert list(rewards) == list(ref[1]) and list(terms) == list(ref[2]) and list(truncs) == list(ref[3])
            assert list(infos) == list(ref[4]) and all(info["pid"] == os.getpid() for info in infos)
        for i in np.flatnonzero(np.asarray(results[-1][2]) | np.asarray(results[-1][3])):
            ends += 1
            resets = [env.reset_at(int(i)) for env in envs]
            for obs, info in resets:
                assert obs["pos"].tolist() == resets[-1][0]["pos"].tolist() and info == resets[-1][1]
    assert ends > 5
    for env in envs:
        env.close()


def test_async_vector_env_steps_in_subprocesses():
    worker = RolloutWorker(async_vec(info_env, n=2), PGTorchPolicy, policy_config=BASE)
    try:
        pids = {i["pid"] for i in worker.sample()[SampleBatch.INFOS]}
        children = {p.pid for p in psutil.Process().children()}
        assert len(pids) == 2 and os.getpid() not in pids and pids <= children
    finally:
        worker.stop()
    assert not any(_alive(pid) for pid in pids)


def test_a_late_resetting_vector_env_without_spec_or_reset_mask_is_a_clear_error():
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    with pytest.raises(
        ValueError,
        match=r"CartPoleVectorEnv resets a finished sub-env one step late .*"
        r"vectorization_mode='async'",
    ):
        RolloutWorker(lambda ctx: CartPoleVectorEnv(num_envs=2), PGTorchPolicy)


def test_plain_make_vec_of_cartpole_is_stepped_as_a_sync_vector_env(caplog):
    """gym.make_vec("CartPole-v1") is CartPole's own CartPoleVectorEnv (late, all-at-once resets): rebuilt from its
    spec as a SyncVectorEnv, with a warning; the batches equal the plain path's."""
    with caplog.at_level("WARNING"):
        (vec, _, vec_worker), (plain, _, _) = sample_both(
            lambda ctx: gym.make_vec("CartPole-v1", num_envs=N, max_episode_steps=20), cartpole
        )
    assert "stepping its 3 sub-envs as a SyncVectorEnv of CartPole-v1" in caplog.text
    assert type(vec_worker.sampler.env.env.vector_env.unwrapped).__name__ == "SyncVectorEnv"
    for a, b in zip(vec, plain):
        assert np.array_equal(a["obs"], b["obs"]) and np.array_equal(a["dones"], b["dones"])


def test_async_next_step_without_shared_memory_is_a_clear_error():
    with pytest.raises(ValueError, match="shared_memory=False and autoreset_mode NEXT_STEP"):
        RolloutWorker(async_vec(mode=NEXT, n=2, shared_memory=False), PGTorchPolicy)


def test_num_envs_per_worker_stays_one_with_a_vector_env():
    with pytest.raises(ValueError, match=r"SyncVectorEnv of 3 sub-envs.*num_envs_per_worker must stay 1 \(got 2\)"):
        RolloutWorker(sync_vec(), PGTorchPolicy, policy_config={"num_envs_per_worker": 2})


register_env("test-sync-vec-cartpole", sync_vec(n=2))
register_env("test-async-vec-cartpole", async_vec(n=4))
register_env("test-make-vec-pendulum", lambda ctx: gym.make_vec("Pendulum-v1", num_envs=2))  # SyncVectorEnv
PPO_SMALL = {
    "sample_batch_size": 50,
    "train_batch_size": 200,
    "sgd_minibatch_size": 50,
    "num_sgd_iter": 2,
    "model": {"fcnet_hiddens": [16]},
    "seed": 0,
}


@pytest.mark.parametrize("trainer_cls", [PPOTrainer, PGTrainer])
@pytest.mark.parametrize("env", ["test-sync-vec-cartpole", "test-async-vec-cartpole", "test-make-vec-pendulum"])
def test_trainers_train_on_vector_envs(trainer_cls, env):
    trainer = trainer_cls(
        env=env,
        config=PPO_SMALL
        if trainer_cls is PPOTrainer
        else {k: PPO_SMALL[k] for k in ("sample_batch_size", "train_batch_size", "model", "seed")},
    )
    try:
        result = trainer.train()
    finally:
        trainer.stop()
    assert result["timesteps_this_iter"] >= 200
    if env != "test-make-vec-pendulum":  # Pendulum's episodes take 200 steps per sub-env
        assert result["episodes_this_iter"] > 0 and 1 <= result["episode_len_mean"] <= 20


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _subprocess_pids(worker) -> list[int]:
    return [p.pid for p in worker.env.vector_env.unwrapped.processes]


def test_remote_worker_with_async_vector_env_stops_its_subprocesses(ray_session):
    trainer = PPOTrainer(env="test-async-vec-cartpole", config={**PPO_SMALL, "num_workers": 1})
    try:
        result = trainer.train()
        local_pids, remote_pids = trainer.workers.foreach_worker(_subprocess_pids)
        remote_host = trainer.workers.foreach_worker(lambda w: os.getpid())[1]
        assert len(remote_pids) == 4 and remote_host != os.getpid()
        assert all(psutil.Process(pid).ppid() == remote_host for pid in remote_pids)
    finally:
        trainer.stop()
    assert result["timesteps_this_iter"] >= 200 and result["episodes_this_iter"] > 0
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in local_pids + remote_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in local_pids + remote_pids if _alive(pid)]

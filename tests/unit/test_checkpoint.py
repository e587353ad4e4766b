"""Checkpoints: exact round trips, other num_workers, kill -9 during a save, corrupt checkpoints, no pickle."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from relayrl.agents.checkpoint import MANIFEST, TENSORS, CheckpointError
from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.agents.trainer import Trainer

SMALL = {
    "num_workers": 0,
    "sample_batch_size": 128,
    "train_batch_size": 256,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "observation_filter": "MeanStdFilter",
    "model": {"fcnet_hiddens": [32, 32]},
    "seed": 0,
}


def observations(n: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)) * [1.0, 1.5, 0.1, 1.5]).astype(np.float32)


def snapshot(trainer: Trainer) -> dict:
    local = trainer.workers.local_worker()
    return {
        "weights": trainer.get_policy().get_weights(),
        "filter": local.get_filter_states()["default_policy"],
        "counters": (trainer.iteration, trainer._timesteps_total, trainer.optimizer.num_steps_sampled),
        "actions": [int(trainer.compute_action(o, explore=False)) for o in observations()],
    }


def assert_same(a: dict, b: dict) -> None:
    assert set(a["weights"]) == set(b["weights"])
    for k in a["weights"]:
        np.testing.assert_array_equal(a["weights"][k], b["weights"][k], err_msg=k)
    fa, fb = a["filter"], b["filter"]
    for part in ("rs", "buffer"):
        assert fa[part]["n"] == fb[part]["n"]
        np.testing.assert_array_equal(fa[part]["mean"], fb[part]["mean"])
        np.testing.assert_array_equal(fa[part]["m2"], fb[part]["m2"])
    assert a["counters"] == b["counters"]
    assert a["actions"] == b["actions"]


@pytest.fixture(scope="module")
def trained():
    trainer = PPOTrainer(env="CartPole-v1", config=SMALL)
    trainer.train()
    yield trainer
    trainer.stop()


@pytest.fixture(scope="module")
def good_checkpoint(trained, tmp_path_factory):
    return trained.save(str(tmp_path_factory.mktemp("good")))


def test_save_restore_round_trip(trained, good_checkpoint):
    before = snapshot(trained)
    assert before["filter"]["rs"]["n"] > 0 and before["counters"][0] == 1
    fresh = PPOTrainer(env="CartPole-v1", config=SMALL)
    fresh.restore(good_checkpoint)
    assert_same(before, snapshot(fresh))
    # The optimizer state comes back too: the next iteration of both trainers is identical.
    opt_a = trained.get_policy().get_state()["optimizers"]
    opt_b = fresh.get_policy().get_state()["optimizers"]
    assert json.dumps(opt_a, default=lambda x: np.asarray(x).tolist()) == json.dumps(
        opt_b, default=lambda x: np.asarray(x).tolist()
    )
    rebuilt = Trainer.from_checkpoint(good_checkpoint)
    assert type(rebuilt) is PPOTrainer and rebuilt.config["model"]["fcnet_hiddens"] == [32, 32]
    assert_same(before, snapshot(rebuilt))
    for t in (fresh, rebuilt):
        t.stop()


def test_no_pickle_in_checkpoint(good_checkpoint):
    files = [os.path.join(root, f) for root, _, fs in os.walk(good_checkpoint) for f in fs]
    assert {os.path.basename(f) for f in files} >= {MANIFEST, TENSORS}
    for path in files:
        with open(path, "rb") as f:
            head = f.read(2)
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{path} is a pickle"
        assert not path.endswith((".pkl", ".pickle"))


def test_restore_with_other_num_workers(trained, good_checkpoint, ray_session, tmp_path):
    import ray

    before = snapshot(trained)
    remote = PPOTrainer(env="CartPole-v1", config={**SMALL, "num_workers": 1})
    try:
        remote.restore(good_checkpoint)
        assert_same(before, snapshot(remote))
        worker = remote.workers.remote_workers()[0]
        remote_weights = ray.get(worker.get_weights.remote())["default_policy"]
        for k, v in before["weights"].items():
            np.testing.assert_array_equal(remote_weights[k], v)
        assert ray.get(worker.get_filter_states.remote())["default_policy"]["rs"]["n"] == before["filter"]["rs"]["n"]
        back = remote.save(str(tmp_path))
    finally:
        remote.stop()
    local = PPOTrainer(env="CartPole-v1", config=SMALL)
    local.restore(back)
    assert_same(before, snapshot(local))
    local.stop()


# --- corrupt and mismatched checkpoints ---------------------------------------------------------------------
def _other_trainer_checkpoint(tmp, trainer_cls, env, config):
    trainer = trainer_cls(env=env, config=config)
    try:
        return trainer.save(str(tmp))
    finally:
        trainer.stop()


def _edit_manifest(path, fn):
    with open(os.path.join(path, MANIFEST)) as f:
        manifest = json.load(f)
    fn(manifest)
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _truncate(path):
    tensors = os.path.join(path, TENSORS)
    size = os.path.getsize(tensors)
    with open(tensors, "r+b") as f:
        f.truncate(size // 2)


CORRUPTIONS = {
    "other algorithm": (
        lambda p, tmp: _other_trainer_checkpoint(tmp, PGTrainer, "CartPole-v1", {"seed": 0}),
        "written by trainer 'PG'",
    ),
    "other spaces": (lambda p, tmp: _other_trainer_checkpoint(tmp, PPOTrainer, "Acrobot-v1", SMALL), "spaces"),
    "other model": (
        lambda p, tmp: _other_trainer_checkpoint(
            tmp, PPOTrainer, "CartPole-v1", {**SMALL, "model": {"fcnet_hiddens": [16]}}
        ),
        "do not match",
    ),
    "missing tensors file": (lambda p, tmp: os.remove(os.path.join(p, TENSORS)), "missing"),
    "missing manifest": (lambda p, tmp: os.remove(os.path.join(p, MANIFEST)), "missing"),
    "bad manifest json": (lambda p, tmp: _write(os.path.join(p, MANIFEST), "{not json"), "not valid JSON"),
    "newer format version": (
        lambda p, tmp: _edit_manifest(p, lambda m: m.update(format_version=99)),
        "format version 99",
    ),
    "truncated tensors": (lambda p, tmp: _truncate(p), "corrupt"),
    "missing path": (lambda p, tmp: shutil.rmtree(p), "does not exist"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_checkpoint_is_a_clear_error_and_changes_nothing(case, trained, good_checkpoint, tmp_path):
    make, message = CORRUPTIONS[case]
    path = str(tmp_path / "ckpt")
    shutil.copytree(good_checkpoint, path)
    path = make(path, tmp_path / "other") or path
    target = PPOTrainer(env="CartPole-v1", config=SMALL)  # untrained: differs from the checkpoint
    before = snapshot(target)
    with pytest.raises(CheckpointError, match=message):
        target.restore(path)
    assert_same(before, snapshot(target))
    target.stop()


# --- kill -9 in the middle of a save --------------------------------------------------------------------------
SAVER = textwrap.dedent("""
    import sys, torch
    from relayrl.agents.ppo import PPOTrainer
    path = sys.argv[1]
    config = {"num_workers": 0, "model": {"fcnet_hiddens": [1024, 1024, 1024]}, "seed": 0,
              "sample_batch_size": 16, "train_batch_size": 16, "sgd_minibatch_size": 16}
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    model = trainer.get_policy().model
    k = 0
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(k))
        trainer.iteration = k
        trainer.save_to_path(path)
        print("saved", k, flush=True)
        k += 1
""")


@pytest.mark.parametrize("round_", [0, 1])
def test_kill_during_save_keeps_previous_checkpoint(round_, tmp_path):
    path = str(tmp_path / "ckpt")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, path], stdout=subprocess.PIPE, text=True)
    try:
        saved = []
        while len(saved) < 2:  # at least one overwrite has happened, so the next saves replace a checkpoint
            line = proc.stdout.readline()
            assert line, "the saver subprocess died"
            saved.append(int(line.split()[1]))
        time.sleep(random.Random(round_).uniform(0.05, 0.6))
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    restored = Trainer.from_checkpoint(path)
    k = restored.iteration
    assert k >= saved[-1]
    for p in restored.get_policy().model.parameters():
        assert bool((p == float(k)).all()), "the checkpoint mixes two saves"
    restored.stop()


def test_save_killed_between_its_two_renames(trained, good_checkpoint, tmp_path):
    # write_checkpoint moves the old directory aside, then renames the new one into place; a kill between
    # the two renames leaves only PATH.old-PID, which readers must still find.
    path = str(tmp_path / "ckpt")
    shutil.copytree(good_checkpoint, path + ".old-12345")
    fresh = PPOTrainer(env="CartPole-v1", config=SMALL)
    fresh.restore(path)
    assert_same(snapshot(trained), snapshot(fresh))
    fresh.stop()


def test_pg_checkpoint_restores_although_its_value_branch_never_steps(tmp_path):
    """PG trains no value branch: its Adam state holds per-parameter step counts that differ (some stay 0)."""
    from relayrl.agents.pg import PGTrainer

    config = {"train_batch_size": 100, "model": {"fcnet_hiddens": [8]}, "seed": 0}
    trainer = PGTrainer(env="CartPole-v1", config=config)
    trainer.train()
    steps = trainer.get_policy()._optimizers[0].state_dict()["step"]
    assert 0 in steps and max(steps) == 1
    path = trainer.save(str(tmp_path))
    fresh = PGTrainer(env="CartPole-v1", config=config)
    fresh.restore(path)
    assert fresh.get_policy()._optimizers[0].state_dict()["step"] == steps
    assert fresh.iteration == 1


def test_a_checkpoint_of_an_env_class_names_it_by_import_path_and_rolls_out_without_env(tmp_path):
    from relayrl.agents.checkpoint import read_manifest
    from relayrl.examples.stateless_cartpole import StatelessCartPole

    trainer = PPOTrainer(env=StatelessCartPole, config=SMALL)
    trainer.train()
    path = trainer.save(str(tmp_path))
    trainer.stop()
    manifest = read_manifest(path)
    assert manifest["env"] is None
    assert manifest["env_callable"] == "relayrl.examples.stateless_cartpole:StatelessCartPole"
    rebuilt = Trainer.from_checkpoint(path)
    assert rebuilt.config["env"] is StatelessCartPole and rebuilt.iteration == 1
    rebuilt.stop()
    proc = subprocess.run(
        [sys.executable, "-m", "relayrl", "rollout", path, "--episodes", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mean return over 2 episodes" in proc.stdout


def test_a_checkpoint_of_a_local_env_class_asks_for_the_env(tmp_path):
    import gymnasium as gym

    class LocalCartPole(gym.Wrapper):
        def __init__(self, ctx):
            super().__init__(gym.make("CartPole-v1"))

    trainer = PPOTrainer(env=LocalCartPole, config=SMALL)
    path = trainer.save(str(tmp_path))
    trainer.stop()
    with pytest.raises(CheckpointError, match="no environment given"):
        Trainer.from_checkpoint(path)
    rebuilt = Trainer.from_checkpoint(path, {"env": LocalCartPole})
    assert rebuilt.config["env"] is LocalCartPole
    rebuilt.stop()

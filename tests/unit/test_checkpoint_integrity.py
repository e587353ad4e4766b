"""Checkpoint integrity (issue 10 item 4): checksums, all-or-nothing restore, stale temp directories.

Every corrupt or mismatched checkpoint must raise CheckpointError naming what is wrong and leave the trainer
bit-identical: weights, optimizer state, filters, counters and global vars. Saves are atomic under SIGKILL,
and the temp / ``.old-PID`` directories that killed saves leave behind go away on the next successful save.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from relayrl.agents import checkpoint as ckpt
from relayrl.agents.checkpoint import MANIFEST, TENSORS, CheckpointError
from relayrl.agents.dqn import DQNTrainer
from relayrl.agents.pg import PGTrainer
from relayrl.agents.ppo import PPOTrainer
from relayrl.agents.trainer import Trainer

PPO_CONFIG = {
    "num_workers": 0,
    "sample_batch_size": 128,
    "train_batch_size": 256,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "observation_filter": "MeanStdFilter",
    "model": {"fcnet_hiddens": [32, 32]},
    "seed": 0,
}
DQN_CONFIG = {
    "num_workers": 0,
    "seed": 0,
    "compress_observations": False,
    "learning_starts": 100,
    "timesteps_per_iteration": 300,
    "min_iter_time_s": 0,
    "hiddens": [16],
    "model": {"fcnet_hiddens": [16]},
}
ALGOS = {"PPO": (PPOTrainer, PPO_CONFIG), "DQN": (DQNTrainer, DQN_CONFIG)}


# --- the whole state of a trainer, compared bit for bit -------------------------------------------------------
def full_state(trainer: Trainer) -> dict:
    local = trainer.workers.local_worker()
    return {
        "policies": {pid: p.get_state() for pid, p in local.policy_map.items()},
        "filters": local.get_filter_states(),
        "counters": [trainer.iteration, trainer._timesteps_total, trainer._time_total, trainer._metrics.episodes_total],
        "optimizer": trainer.optimizer.save(),
        "extra": trainer._extra_state(),
        "global_vars": dict(local.global_vars),
    }


def assert_identical(a, b, where: str = "state") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        assert type(a) is type(b), where
        x = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
        y = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else b
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), where
    else:
        assert type(a) is type(b) and repr(a) == repr(b), f"{where}: {a!r} != {b!r}"


# --- fixtures: a trained trainer per algorithm, its checkpoint, and a fresh (different) target ------------------
@pytest.fixture(scope="module")
def trained():
    out = {}
    for name, (cls, config) in ALGOS.items():
        trainer = cls(env="CartPole-v1", config=config)
        trainer.train()
        out[name] = trainer
    yield out
    for trainer in out.values():
        trainer.stop()


@pytest.fixture(scope="module")
def good(trained, tmp_path_factory):
    return {name: t.save(str(tmp_path_factory.mktemp(f"good-{name}"))) for name, t in trained.items()}


@pytest.fixture(scope="module")
def targets():
    # Untrained, so a partial restore would show; failed restores must not change them.
    out = {name: cls(env="CartPole-v1", config=config) for name, (cls, config) in ALGOS.items()}
    yield out
    for trainer in out.values():
        trainer.stop()


# --- ways to damage a checkpoint --------------------------------------------------------------------------
def edit_manifest(path: str, fn) -> None:
    with open(os.path.join(path, MANIFEST)) as f:
        manifest = json.load(f)
    fn(manifest)
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f)


def edit_state(fn):
    return lambda path: edit_manifest(path, lambda m: fn(m["state"]))


def edit_tensors(fn):
    """Changes the tensors and re-seals the file (its checksum in the manifest matches): a well-formed
    checkpoint whose content does not fit the trainer."""

    def run(path: str) -> None:
        file = os.path.join(path, TENSORS)
        tensors = load_file(file)
        fn(tensors)
        save_file(tensors, file)
        with open(file, "rb") as f:
            data = f.read()
        edit_manifest(
            path,
            lambda m: m["files"].update({TENSORS: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}),
        )

    return run


def flip_tensor_bytes(path: str) -> None:
    file = os.path.join(path, TENSORS)
    with open(file, "r+b") as f:
        header = int.from_bytes(f.read(8), "little")
        size = os.path.getsize(file)
        start = 8 + header + (size - 8 - header) // 2  # inside the tensor data, not the header
        f.seek(start)
        chunk = f.read(4)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in chunk))


def truncate_tensors(path: str) -> None:
    file = os.path.join(path, TENSORS)
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


def write(name: str, text: str):
    def run(path: str) -> None:
        with open(os.path.join(path, name), "w") as f:
            f.write(text)

    return run


def not_a_checkpoint(path: str) -> None:
    shutil.rmtree(path)
    os.makedirs(path)
    with open(os.path.join(path, "notes.txt"), "w") as f:
        f.write("hello")


def other_checkpoint(cls, env, config):
    def run(path: str) -> str:
        trainer = cls(env=env, config=config)
        try:
            return trainer.save(path + "-other")
        finally:
            trainer.stop()

    return run


def replace_tensor(key_part: str, new):
    def fn(tensors):
        key = sorted(k for k in tensors if key_part in k)[0]
        tensors[key] = new(tensors[key])

    return fn


WEIGHTS = "policies.default_policy.weights."


def pol(state):
    return state["policies"]["default_policy"]


COMMON = {
    "flipped tensor bytes": (flip_tensor_bytes, r"tensors\.safetensors is corrupt: its SHA-256"),
    "truncated tensors": (truncate_tensors, r"tensors\.safetensors is corrupt"),
    "missing tensors file": (lambda p: os.remove(os.path.join(p, TENSORS)), r"tensors\.safetensors is missing"),
    "missing manifest": (lambda p: os.remove(os.path.join(p, MANIFEST)), r"not a relayrl checkpoint"),
    "garbled manifest": (write(MANIFEST, '{"format_version": 2, "trai\x00\x13'), r"manifest\.json is not valid JSON"),
    "manifest not an object": (write(MANIFEST, "[1, 2, 3]"), r"manifest\.json is not a JSON object"),
    "manifest without state": (lambda p: edit_manifest(p, lambda m: m.pop("state")), r"'state'"),
    "state not an object": (lambda p: edit_manifest(p, lambda m: m.update(state=[1])), r"'state'"),
    "manifest without trainer": (lambda p: edit_manifest(p, lambda m: m.pop("trainer")), r"'trainer'"),
    "format version a string": (
        lambda p: edit_manifest(p, lambda m: m.update(format_version="2")),
        r"format version '2'",
    ),
    "newer format version": (lambda p: edit_manifest(p, lambda m: m.update(format_version=99)), "format version 99"),
    "checksums missing": (lambda p: edit_manifest(p, lambda m: m.pop("files")), r"'files'"),
    "checksum malformed": (lambda p: edit_manifest(p, lambda m: m["files"][TENSORS].update(sha256="abc")), r"sha256"),
    "checksum names a path outside": (
        lambda p: edit_manifest(p, lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}})),
        r"'\.\./x'",
    ),
    "not a checkpoint": (not_a_checkpoint, r"not a relayrl checkpoint"),
    "missing path": (shutil.rmtree, r"does not exist"),
    "iteration not a number": (
        lambda p: edit_manifest(p, lambda m: m["counters"].update(iteration="abc")),
        r"counter 'iteration' must be a non-negative integer, found 'abc'",
    ),
    "iteration a float": (
        lambda p: edit_manifest(p, lambda m: m["counters"].update(iteration=1.5)),
        r"counter 'iteration'",
    ),
    "negative timesteps": (
        lambda p: edit_manifest(p, lambda m: m["counters"].update(timesteps_total=-3)),
        r"counter 'timesteps_total'",
    ),
    "time not a number": (
        lambda p: edit_manifest(p, lambda m: m["counters"].update(time_total_s="x")),
        r"counter 'time_total_s' must be a non-negative number",
    ),
    "episodes missing": (
        lambda p: edit_manifest(p, lambda m: m["counters"].pop("episodes_total")),
        r"counter 'episodes_total' is missing",
    ),
    "counters missing": (lambda p: edit_manifest(p, lambda m: m.pop("counters")), r"'counters'"),
    "global_timestep not a number": (
        edit_state(lambda s: pol(s).update(global_timestep="x")),
        r"'policies\.default_policy\.global_timestep' must be a non-negative integer",
    ),
    "policy missing": (edit_state(lambda s: s["policies"].pop("default_policy")), r"'default_policy'"),
    "policy has an unknown field": (edit_state(lambda s: pol(s).update(surprise=1)), r"unexpected \['surprise'\]"),
    "optimizer step not a number": (
        edit_state(lambda s: pol(s)["optimizers"][0].update(step="abc")),
        r"'policies\.default_policy\.optimizers\.0\.step'",
    ),
    "optimizer list too long": (
        edit_state(lambda s: pol(s)["optimizers"].append(pol(s)["optimizers"][0])),
        r"'policies\.default_policy\.optimizers' has 2 entries",
    ),
    "optimizer counter not a number": (
        edit_state(lambda s: s["optimizer"].update(num_steps_sampled="x")),
        r"'optimizer\.num_steps_sampled'",
    ),
    "extra state unknown": (edit_state(lambda s: s["trainer"].update(x=1)), r"'trainer'.*unexpected \['x'\]"),
    "weight of the wrong shape": (
        edit_tensors(replace_tensor(WEIGHTS, lambda t: np.zeros((3, 3), t.dtype))),
        r"'policies\.default_policy\.weights\..*' has shape \(3, 3\)",
    ),
    "weight of the wrong dtype": (edit_tensors(replace_tensor(WEIGHTS, lambda t: t.astype(np.float64))), r"float64"),
    "optimizer state of the wrong shape": (
        edit_tensors(replace_tensor("optimizers.0.exp_avg.", lambda t: np.zeros(7, t.dtype))),
        r"'policies\.default_policy\.optimizers\.0\.",
    ),
    "tensor missing from the file": (
        edit_tensors(lambda ts: ts.pop(sorted(k for k in ts if WEIGHTS in k)[0])),
        r"missing from tensors\.safetensors",
    ),
    "tensors file of another checkpoint": (
        lambda p: shutil.copy(
            os.path.join(other_checkpoint(PGTrainer, "CartPole-v1", {"seed": 0})(p), TENSORS), os.path.join(p, TENSORS)
        ),
        r"tensors\.safetensors is corrupt",
    ),
    "other trainer": (other_checkpoint(PGTrainer, "CartPole-v1", {"seed": 0}), r"written by trainer 'PG'"),
}
PPO_ONLY = {
    "filter buffer missing": (
        edit_state(lambda s: s["filters"]["default_policy"].pop("buffer")),
        r"'filters\.default_policy' lacks 'buffer'",
    ),
    "filter mean of the wrong shape": (
        edit_tensors(replace_tensor("filters.default_policy.rs.mean", lambda t: np.zeros(5, t.dtype))),
        r"'filters\.default_policy\.rs\.mean' has shape \(5,\), the filter's is \(4,\)",
    ),
    "filter count negative": (
        edit_state(lambda s: s["filters"]["default_policy"]["rs"].update(n=-1)),
        r"'filters\.default_policy\.rs\.n' must be a non-negative integer",
    ),
    "filter m2 negative": (
        edit_tensors(replace_tensor("filters.default_policy.buffer.m2", lambda t: -np.ones_like(t))),
        r"'filters\.default_policy\.buffer\.m2'",
    ),
    "filter of another type": (
        edit_state(lambda s: s["filters"].update(default_policy={"type": "NoFilter"})),
        r"'filters\.default_policy' is a NoFilter, this trainer's observation_filter is"
        r" a MeanStdFilter",
    ),
    "filter missing": (edit_state(lambda s: s["filters"].pop("default_policy")), r"'filters'.*'default_policy'"),
    "kl_coeff not a number": (
        edit_state(lambda s: pol(s).update(kl_coeff="big")),
        r"'policies\.default_policy\.kl_coeff'",
    ),
    "other spaces": (other_checkpoint(PPOTrainer, "Acrobot-v1", PPO_CONFIG), r"spaces"),
    "other model": (
        other_checkpoint(PPOTrainer, "CartPole-v1", {**PPO_CONFIG, "model": {"fcnet_hiddens": [16]}}),
        r"do not match",
    ),
    "no observation filter in the checkpoint": (
        other_checkpoint(PPOTrainer, "CartPole-v1", {**PPO_CONFIG, "observation_filter": "NoFilter"}),
        r"observation_filter",
    ),
}
DQN_ONLY = {
    "target weights of the wrong shape": (
        edit_tensors(replace_tensor("target_weights.", lambda t: np.zeros((2, 2), t.dtype))),
        r"'policies\.default_policy\.target_weights\.",
    ),
    "target weights missing": (
        edit_state(lambda s: pol(s).pop("target_weights")),
        r"'policies\.default_policy' lacks 'target_weights'",
    ),
    "replay optimizer counter not a number": (
        edit_state(lambda s: s["optimizer"].update(last_target_update_ts="x")),
        r"'optimizer\.last_target_update_ts'",
    ),
    "target update count negative": (
        edit_state(lambda s: s["optimizer"].update(num_target_updates=-2)),
        r"'optimizer\.num_target_updates'",
    ),
}
CASES = [("PPO", c) for c in sorted({**COMMON, **PPO_ONLY})] + [("DQN", c) for c in sorted({**COMMON, **DQN_ONLY})]


@pytest.mark.parametrize("algo,case", CASES)
def test_bad_checkpoint_is_a_clear_error_and_changes_nothing(algo, case, good, targets, tmp_path):
    make, message = {**COMMON, **PPO_ONLY, **DQN_ONLY}[case]
    path = str(tmp_path / "ckpt")
    shutil.copytree(good[algo], path)
    path = make(path) or path
    target = targets[algo]
    before = full_state(target)
    with pytest.raises(CheckpointError, match=message) as info:
        target.restore(path)
    assert "Traceback" not in str(info.value)
    assert_identical(before, full_state(target))


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_failure_while_applying_rolls_everything_back(algo, good, targets, monkeypatch):
    # A check that passes but an apply step that fails anyway (a bug, a full disk...): nothing half-done stays.
    target = targets[algo]
    before = full_state(target)
    original, calls = target.optimizer.restore, []

    def fails_once(data):  # the rollback's own call goes through
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("boom")
        original(data)

    monkeypatch.setattr(target.optimizer, "restore", fails_once)
    with pytest.raises(CheckpointError, match="could not be loaded.*boom"):
        target.restore(good[algo])
    monkeypatch.undo()
    assert len(calls) == 2
    assert_identical(before, full_state(target))


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_good_checkpoint_restores_exactly_after_failed_attempts(algo, trained, good, tmp_path):
    cls, config = ALGOS[algo]
    fresh = cls(env="CartPole-v1", config=config)
    try:
        bad = str(tmp_path / "bad")
        shutil.copytree(good[algo], bad)
        flip_tensor_bytes(bad)
        with pytest.raises(CheckpointError):
            fresh.restore(bad)
        fresh.restore(good[algo])
        expected, got = full_state(trained[algo]), full_state(fresh)
        expected.pop("global_vars"), got.pop("global_vars")
        assert_identical(expected, got)
        fresh.train()
        for w in fresh.get_policy().get_weights().values():
            assert np.isfinite(w).all()
    finally:
        fresh.stop()


def test_format_1_checkpoint_without_checksums_still_restores(trained, good, tmp_path):
    path = str(tmp_path / "v1")
    shutil.copytree(good["PPO"], path)
    edit_manifest(path, lambda m: (m.pop("files"), m.update(format_version=1)))
    fresh = PPOTrainer(env="CartPole-v1", config=PPO_CONFIG)
    fresh.restore(path)
    assert_identical(full_state(trained["PPO"])["policies"], full_state(fresh)["policies"])
    fresh.stop()


def test_manifest_lists_a_checksum_for_every_binary_file(good):
    for path in good.values():
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
        assert manifest["format_version"] == ckpt.FORMAT_VERSION >= 2
        binaries = sorted(n for n in os.listdir(path) if n != MANIFEST)
        assert sorted(manifest["files"]) == binaries == [TENSORS]
        with open(os.path.join(path, TENSORS), "rb") as f:
            data = f.read()
        assert manifest["files"][TENSORS] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_from_checkpoint_of_a_corrupt_checkpoint(good, tmp_path):
    path = str(tmp_path / "ckpt")
    shutil.copytree(good["DQN"], path)
    edit_manifest(path, lambda m: m.update(trainer="NOPE"))
    with pytest.raises(CheckpointError, match="trainer 'NOPE'"):
        Trainer.from_checkpoint(path)
    edit_manifest(path, lambda m: (m.update(trainer="DQN"), m["state"].update(config=[1])))
    with pytest.raises(CheckpointError, match="'config'"):
        Trainer.from_checkpoint(path)
    edit_manifest(path, lambda m: m["state"].update(config={"lr": "fast"}))
    with pytest.raises(CheckpointError, match="stored config.*lr"):
        Trainer.from_checkpoint(path)


# --- stale directories of killed saves --------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_dir(path: str, files=(MANIFEST,), age_s: float = 0.0) -> str:
    os.makedirs(path)
    for name in files:
        with open(os.path.join(path, name), "w") as f:
            f.write("{}")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_next_save_removes_stale_temp_and_old_directories_only(trained, tmp_path):
    trainer = trained["PPO"]
    root = str(tmp_path)
    host, other_host = ckpt._host_tag(), "0123abcd" if ckpt._host_tag() != "0123abcd" else "4567cdef"
    dead, live = dead_pid(), os.getppid()
    trainer.save_to_path(os.path.join(root, "ckpt"))
    trainer.save_to_path(os.path.join(root, "other"))
    stale = [
        make_dir(os.path.join(root, f".tmp-ckpt-{dead}-{host}-abcd_123")),
        make_dir(os.path.join(root, f".tmp-ckpt-{dead}-{host}-zz9yx8wv"), files=(MANIFEST, TENSORS)),
        make_dir(os.path.join(root, f".tmp-other-{dead}-{host}-qwertyui"), files=()),
        make_dir(os.path.join(root, f"ckpt.old-{dead}-{host}")),
        make_dir(os.path.join(root, f"other.old-{dead}")),  # the naming before checksums: PID only
        make_dir(os.path.join(root, ".tmp-ckpt-a1b2c3d4"), age_s=7200),  # mkdtemp's name before PIDs, old
        make_dir(os.path.join(root, f".tmp-ckpt-{live}-{other_host}-abcdefgh"), age_s=7200),  # another host, old
    ]
    kept = [
        make_dir(os.path.join(root, f".tmp-ckpt-{live}-{host}-abcdefgh")),  # a live save of another process
        make_dir(os.path.join(root, f".tmp-ckpt-{os.getpid()}-{host}-abcdefgh")),  # ours (another thread)
        make_dir(os.path.join(root, f".tmp-ckpt-{live}-{other_host}-hgfedcba")),  # another host, recent
        make_dir(os.path.join(root, ".tmp-ckpt-h1h2h3h4")),  # mkdtemp's name before PIDs, recent
        make_dir(os.path.join(root, f"gone.old-{dead}-{host}")),  # the only copy of checkpoint "gone"
        make_dir(os.path.join(root, f".tmp-ckpt-{dead}-{host}-abcdefgh"), files=("data.csv",)),  # not ours
        make_dir(os.path.join(root, f".tmp-notes-{dead}")),  # not our naming scheme
        make_dir(os.path.join(root, f"ckpt.older-{dead}")),
        make_dir(os.path.join(root, f"ckpt.old-{dead}-{host}-x")),
    ]
    path = trainer.save_to_path(os.path.join(root, "ckpt"))
    assert [p for p in stale if os.path.exists(p)] == []
    assert [p for p in kept if not os.path.exists(p)] == []
    assert os.path.isfile(os.path.join(path, MANIFEST))


# --- SIGKILL during save(), 50 times --------------------------------------------------------------------------
ZYGOTE = textwrap.dedent("""
    import os, sys, torch
    from relayrl.agents import checkpoint_files
    from relayrl.agents.ppo import PPOTrainer
    path, mode = sys.argv[1:]
    if mode == "two-renames":  # as on a file system without renameat2(RENAME_EXCHANGE)
        checkpoint_files._libc = lambda: None
    config = {"num_workers": 0, "model": {"fcnet_hiddens": [512, 512]}, "seed": 0,
              "sample_batch_size": 16, "train_batch_size": 16, "sgd_minibatch_size": 16}
    trainer = PPOTrainer(env="CartPole-v1", config=config)
    params = list(trainer.get_policy().model.parameters())

    def save(k):
        with torch.no_grad():
            for p in params:
                p.fill_(float(k))
        trainer.iteration = k
        trainer.save_to_path(path)

    save(0)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, arg = line.split()
        if cmd == "fork":  # a saver that loops until it is killed; forked, so it needs no start-up
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                k = int(arg)
                while os.getppid() == parent:  # never outlives this process (a failed test kills it)
                    save(k)
                    k += 1
                os._exit(0)
            print(pid, flush=True)
        elif cmd == "reap":
            os.waitpid(int(arg), 0)
            print("reaped", flush=True)
        elif cmd == "save":
            save(int(arg))
            print("saved", flush=True)
""")
KILL_CONFIG = {
    "num_workers": 0,
    "model": {"fcnet_hiddens": [512, 512]},
    "seed": 0,
    "sample_batch_size": 16,
    "train_batch_size": 16,
    "sgd_minibatch_size": 16,
}


def stale_entries(root: str) -> list[str]:
    return sorted(n for n in os.listdir(root) if n.startswith(".tmp-") or ".old-" in n)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_sigkill_during_save_50_times(mode, tmp_path):
    """A process that saves to one path over and over is SIGKILLed 50 times at random moments (each time a
    fresh saver forked from a process that has everything imported, so the 50 rounds take seconds). After
    each kill the newest complete checkpoint restores, never mixing two saves or going back in time; after
    the next successful save no temp or .old- directory is left."""
    root = str(tmp_path)
    path = os.path.join(root, "ckpt")
    rng = random.Random(mode)
    zygote = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE, path, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def ask(command: str) -> str:
        zygote.stdin.write(command + "\n")
        zygote.stdin.flush()
        answer = zygote.stdout.readline()
        assert answer, "the saver process died"
        return answer.strip()

    restorer = PPOTrainer(env="CartPole-v1", config=KILL_CONFIG)
    pid = None
    try:
        assert zygote.stdout.readline().strip() == "ready"
        start, last_k, kills_mid_save = time.time(), 0, 0
        for i in range(50):
            pid = int(ask(f"fork {(i + 1) * 1000}"))
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            assert ask(f"reap {pid}") == "reaped"
            pid = None
            kills_mid_save += bool(stale_entries(root))
            restorer.restore(path)  # the latest complete checkpoint is always there
            k = restorer.iteration
            assert k >= last_k, "a kill brought back an older checkpoint"
            for p in restorer.get_policy().model.parameters():
                assert bool((p == float(k)).all()), f"round {i}: the checkpoint mixes two saves"
            last_k = k
        assert ask("save 999999") == "saved"
        assert stale_entries(root) == [], "a successful save leaves no stale directories"
        restorer.restore(path)
        assert restorer.iteration == 999999
        elapsed = time.time() - start
    finally:
        restorer.stop()
        if pid is not None:  # a saver still running: the test failed between fork and kill
            os.kill(pid, signal.SIGKILL)
        zygote.kill()
        zygote.wait(timeout=30)
    print(f"{kills_mid_save} of 50 kills left a save's directory behind; {elapsed:.1f} s")
    assert kills_mid_save >= 5, f"only {kills_mid_save} of 50 kills landed while a save was in progress"
    assert elapsed < 60


def test_a_format_2_replay_checkpoint_restores(tmp_path):
    """Format 3 keeps the replay optimizers' target-update counters per policy; a format 2 checkpoint (one number
    for all) restores with that number given to every policy."""
    config = {"seed": 0, "learning_starts": 100, "timesteps_per_iteration": 300, "target_network_update_freq": 400}
    trainer = DQNTrainer(env="CartPole-v1", config=config)
    try:
        trainer.train()
        trainer.train()
        path = trainer.save(str(tmp_path))
        last = trainer.optimizer.last_target_update_ts["default_policy"]
    finally:
        trainer.stop()

    def as_format_2(manifest):
        manifest["format_version"] = 2
        manifest["state"]["optimizer"]["last_target_update_ts"] = last

    edit_manifest(path, as_format_2)
    fresh = DQNTrainer(env="CartPole-v1", config=config)
    try:
        fresh.restore(path)
        assert fresh.optimizer.last_target_update_ts == {"default_policy": last}
        assert fresh.train()["timesteps_total"] > 0
    finally:
        fresh.stop()

"""The relayrl command, run as a user would (``python -m relayrl`` in a subprocess)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

SMALL = {
    "train_batch_size": 256,
    "sample_batch_size": 128,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "model": {"fcnet_hiddens": [32, 32]},
    "seed": 0,
}


def relayrl(*args: str, timeout: int = 300, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    return subprocess.run(
        [sys.executable, "-m", "relayrl", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one ``relayrl: error:`` line, a hint and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("relayrl: error: ")]
    assert len(errors) == 1, proc.stderr
    assert any(ln.startswith("relayrl: hint: ") for ln in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny PPO run through the CLI, kept for the rollout tests."""
    tmp = tmp_path_factory.mktemp("train")
    proc = relayrl(
        "train",
        "--run",
        "PPO",
        "--env",
        "CartPole-v1",
        "--config",
        json.dumps(SMALL),
        "--stop",
        '{"training_iteration": 2}',
        "--checkpoint-at-end",
        "--local-dir",
        str(tmp),
        "--experiment-name",
        "cli_test",
        "--plot",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"checkpoint: (\S+)", proc.stdout)
    assert match, proc.stdout
    return {"stdout": proc.stdout, "checkpoint": match.group(1), "local_dir": tmp}


def test_train_writes_tune_results_and_a_checkpoint(checkpoint_dir):
    out = checkpoint_dir["stdout"]
    # One progress line per iteration with iteration, timesteps, reward and steps/s.
    progress = [ln for ln in out.splitlines() if re.search(r"iter +\d+ +ts +\d+ +reward .* steps/s", ln)]
    assert len(progress) == 2, out
    (trial_dir,) = [
        os.path.join(checkpoint_dir["local_dir"], "cli_test", d)
        for d in os.listdir(os.path.join(checkpoint_dir["local_dir"], "cli_test"))
        if d.startswith("PPO")
    ]
    files = set(os.listdir(trial_dir))
    assert {"params.json", "result.json", "progress.csv", "learning_curve.png"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert "params.pkl" not in files
    with open(os.path.join(trial_dir, "params.json")) as f:
        assert json.load(f)["train_batch_size"] == 256
    ckpt = checkpoint_dir["checkpoint"]
    assert ckpt.startswith(trial_dir)
    for root, _, names in os.walk(ckpt):  # no pickle anywhere in what Tune and relayrl wrote as the checkpoint
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                head = f.read(2)
            assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), name


def test_rollout_of_the_tune_checkpoint(checkpoint_dir, tmp_path):
    out_file = tmp_path / "episodes.jsonl"
    proc = relayrl(
        "rollout",
        checkpoint_dir["checkpoint"],
        "--run",
        "PPO",
        "--env",
        "CartPole-v1",
        "--episodes",
        "3",
        "--out",
        str(out_file),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    returns = [float(m) for m in re.findall(r"episode +\d+ +return +([\d.]+)", proc.stdout)]
    assert len(returns) == 3
    mean = float(re.search(r"mean return over 3 episodes: ([\d.]+)", proc.stdout).group(1))
    assert mean == pytest.approx(sum(returns) / 3, abs=0.01)
    episodes = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [e["episode"] for e in episodes] == [0, 1, 2]
    for e, r in zip(episodes, returns):
        assert len(e["obs"]) == len(e["actions"]) == len(e["rewards"]) == e["length"]
        assert e["return"] == pytest.approx(r, abs=0.01)
    proc = relayrl("rollout", checkpoint_dir["checkpoint"], "--steps", "30")  # --run/--env from the checkpoint
    assert proc.returncode == 0, proc.stderr
    assert "mean return over" in proc.stdout


def test_restore_continues_the_counters(checkpoint_dir, tmp_path, ray_session, capsys):
    # In-process (cli.main) on the test session's Ray: the same code path as the command, without a Ray start.
    from relayrl.cli import main

    rc = main(
        [
            "train",
            "--run",
            "PPO",
            "--env",
            "CartPole-v1",
            "--config",
            json.dumps(SMALL),
            "--stop",
            '{"training_iteration": 3}',
            "--restore",
            checkpoint_dir["checkpoint"],
            "--local-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert re.findall(r"iter +(\d+)", out.out) == ["3"], out.out


def test_two_experiment_yaml_runs_both(tmp_path):
    yaml_file = tmp_path / "two.yaml"
    yaml_file.write_text(
        "ppo-small:\n  run: PPO\n  env: CartPole-v1\n  stop: {training_iteration: 1}\n"
        f"  config: {json.dumps(SMALL)}\n"
        "pg-small:\n  run: PG\n  env: CartPole-v1\n  stop: {training_iteration: 2}\n"
        "  config: {seed: 0}\n  expected: {episode_reward_mean: 10}\n"
    )
    proc = relayrl("train", "-f", str(yaml_file), "--local-dir", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path / "results")) == ["pg-small", "ppo-small"]
    for name, iters in (("ppo-small", 1), ("pg-small", 2)):
        exp_dir = tmp_path / "results" / name
        (trial,) = [d for d in os.listdir(exp_dir) if os.path.isdir(exp_dir / d)]
        rows = (exp_dir / trial / "result.json").read_text().splitlines()
        assert len(rows) == iters


def test_failing_trial_ends_nonzero_with_its_error(tmp_path, ray_session, capsys):
    from relayrl.cli import main

    rc = main(
        [
            "train",
            "--run",
            "PG",
            "--env",
            "CartPole-v1",
            "--config",
            '{"env_config": {"bogus": 1}}',
            "--stop",
            '{"training_iteration": 1}',
            "--local-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr()
    line = one_error_line(subprocess.CompletedProcess([], rc, out.out, out.err))
    assert "trial" in line and "bogus" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--run", "PPOO", "--env", "CartPole-v1"], "unknown algorithm 'PPOO' (did you mean 'PPO'?)"),
        (["train", "--run", "PPO", "--env", "CartPol-v1"], "unknown environment 'CartPol-v1'"),
        (["train", "--run", "PPO", "--env", "CartPole-v1", "--config", "{lr: 1"], "--config is not valid JSON"),
        (["train", "--run", "PPO", "--env", "CartPole-v1", "--stop", "[1"], "--stop is not valid JSON"),
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--config", '{"lrr": 0.1}'],
            "unknown key 'lrr' (did you mean 'lr'?)",
        ),
        (["train", "--run", "PPO", "--env", "CartPole-v1", "--config", '{"gamma": 2.0}'], "'gamma' must be"),
        (["train", "-f", "BADYAML"], "cannot parse YAML file"),
        (["train", "-f", "/no/such/file.yaml"], "does not exist"),
        (["train", "--run", "PPO", "--env", "CartPole-v1", "--restore", "/no/such/ckpt"], "does not exist"),
        (["rollout", "/no/such/checkpoint", "--run", "PPO", "--env", "CartPole-v1"], "does not exist"),
        (["train", "--run", "PPO"], "needs --run and --env"),
        (["train", "--no-such-flag"], "unrecognized arguments"),
        # Issue 10, item 6: each of these used to train forever or exit 0 having done nothing.
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--stop", '{"episode_reward_meen": 100}'],
            "unknown stop criterion 'episode_reward_meen' (did you mean 'episode_reward_mean'?)",
        ),
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--stop", '{"evaluation/episode_reward_mean": 100}'],
            "evaluation_interval is not set",
        ),
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--num-samples", "0"],
            "argument --num-samples: must be >= 1, got 0",
        ),
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--config", '{"horizon": 0}'],
            "'horizon' must be None or >= 1",
        ),
        (
            ["train", "--run", "PPO", "--env", "CartPole-v1", "--config", '{"model": {"fcnet_hiddens": [-5]}}'],
            "'model.fcnet_hiddens' must be a list of positive ints",
        ),
        (["train", "-f", "ZEROSAMPLES"], "num_samples must be an integer >= 1, got 0"),
        (["rollout", "/no/such/checkpoint", "--episodes", "-3"], "argument --episodes: must be >= 1, got -3"),
    ],
)
def test_user_mistakes_give_one_line(args, expected, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("exp:\n  run: PPO\n  config: {lr: [1, 2}\n")
    zero = tmp_path / "zero.yaml"
    zero.write_text("exp:\n  run: PG\n  env: CartPole-v1\n  num_samples: 0\n")
    files = {"BADYAML": str(bad), "ZEROSAMPLES": str(zero)}
    proc = relayrl(*[files.get(a, a) for a in args], timeout=120)
    assert expected in one_error_line(proc)
    assert proc.returncode == 2


def test_verbose_shows_the_traceback():
    proc = relayrl("train", "--run", "PPO", "--env", "CartPole-v1", "--config", '{"lrr": 0.1}', "-v", timeout=120)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "relayrl: error: " in proc.stderr


def test_rollout_with_the_wrong_algorithm(checkpoint_dir):
    line = one_error_line(relayrl("rollout", checkpoint_dir["checkpoint"], "--run", "PG", timeout=120))
    assert "written by PPO, not PG" in line


def test_plot_command(checkpoint_dir, tmp_path):
    out = tmp_path / "curve.png"
    proc = relayrl("plot", str(checkpoint_dir["local_dir"] / "cli_test"), "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "does not exist" in one_error_line(relayrl("plot", str(tmp_path / "nothing"), timeout=120))


def test_export_command(checkpoint_dir, tmp_path):
    import numpy as np

    ort = pytest.importorskip("onnxruntime")
    proc = relayrl("export", checkpoint_dir["checkpoint"], str(tmp_path / "exported"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    side = json.loads((tmp_path / "exported" / "export.json").read_text())
    assert side["observation_filter"]["type"] == "MeanStdFilter" and side["observation_filter"]["rs"]["n"] > 0
    session = ort.InferenceSession(str(tmp_path / "exported" / "model.onnx"))
    actions, logits = session.run(None, {"obs": np.zeros((3, 4), dtype=np.float32)})
    assert actions.shape == (3,) and logits.shape == (3, 2)


def test_more_resources_than_the_cluster_has_is_an_error_not_a_hang(tmp_path, ray_session, capsys):
    import ray
    import torch

    from relayrl.cli import main

    cpus = int(ray.cluster_resources()["CPU"])
    checks = [({"num_workers": cpus + 3}, f"a trial needs {cpus + 4} CPUs")]
    if not torch.cuda.is_available():
        checks.append(({"num_gpus": 1}, "a trial asks for 1 GPUs"))
    for config, expected in checks:
        rc = main(
            [
                "train",
                "--run",
                "PG",
                "--env",
                "CartPole-v1",
                "--config",
                json.dumps(config),
                "--stop",
                '{"training_iteration": 1}',
                "--local-dir",
                str(tmp_path),
            ]
        )
        out = capsys.readouterr()
        assert rc == 2 and expected in one_error_line(subprocess.CompletedProcess([], rc, out.out, out.err))


def test_rollout_in_an_env_with_other_spaces(checkpoint_dir):
    line = one_error_line(relayrl("rollout", checkpoint_dir["checkpoint"], "--env", "MountainCar-v0", timeout=120))
    assert "environment 'MountainCar-v0' does not fit the checkpoint" in line
    assert "observation space is Box(" in line and "(2,), float32), the checkpoint's is Box(" in line
    assert "action space is Discrete(3), the checkpoint's is Discrete(2)" in line


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_train_cleanly(sig, code, tmp_path):
    """SIGTERM (a scheduler, `kill`) and SIGINT (Ctrl+C) stop Tune and Ray: a short message and 128 + signal,
    no C++ stack dump from Ray's core worker and no Python traceback. (worker_start_timeout_s 1: a trial whose
    actor takes longer than that to start is not mistaken for one that waits for resources.)"""
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relayrl",
            "train",
            "--run",
            "PG",
            "--env",
            "CartPole-v1",
            "--stop",
            '{"training_iteration": 100000}',
            "--config",
            '{"train_batch_size": 200, "worker_start_timeout_s": 1}',
            "--local-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 240
        line = ""
        while " iter " not in line and time.time() < deadline:  # the first progress line: Tune and Ray are up
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert " iter " in line, proc.stderr.read()
        sent = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert time.time() - sent < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"relayrl: stopped by {signal.Signals(sig).name}", err
    for dump in ("stack trace", "*** SIGTERM received", "*** SIGINT received", "logging.cc", "PC: @", "Traceback"):
        assert dump not in err, err


def test_in_process_and_tune_runs_write_the_same_files(tmp_path):
    """A single trial with num_workers 0 runs in this process (no Ray start); --tune runs it through Tune. Both
    write the same result files with the same result keys, and print the same kind of progress and end lines."""
    runs = {}
    for mode, extra in (("local", []), ("tune", ["--tune"])):
        proc = relayrl(
            "train",
            "--run",
            "PG",
            "--env",
            "CartPole-v1",
            "--config",
            '{"train_batch_size": 200}',
            "--stop",
            '{"training_iteration": 3}',
            "--checkpoint-freq",
            "2",
            "--checkpoint-at-end",
            "--local-dir",
            str(tmp_path / mode),
            *extra,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"TERMINATED, 3 iterations", proc.stdout), proc.stdout
        (trial,) = [d for d in (tmp_path / mode / "default").iterdir() if d.is_dir() and d.name.startswith("PG_")]
        files = {f.name for f in trial.iterdir()}
        assert {"params.json", "result.json", "progress.csv"} <= files, files
        assert any(f.startswith("events.out.tfevents") for f in files)
        results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        assert [r["training_iteration"] for r in results] == [1, 2, 3]
        assert results[-1]["done"] is True or mode == "tune"
        checkpoint = re.search(r"checkpoint: (\S+)", proc.stdout).group(1)
        runs[mode] = (set(results[-1]), checkpoint)
    local_keys, tune_keys = runs["local"][0], runs["tune"][0]
    relayrl_keys = {
        "episode_reward_mean",
        "timesteps_total",
        "info",
        "training_iteration",
        "time_total_s",
        "num_healthy_workers",
        "trial_id",
        "timestamp",
        "config",
        "time_since_restore",
    }
    assert relayrl_keys <= local_keys and relayrl_keys <= tune_keys
    # both checkpoints roll out
    for _, checkpoint in runs.values():
        proc = relayrl("rollout", checkpoint, "--steps", "20")
        assert proc.returncode == 0, proc.stderr


def test_multi_agent_yaml_trains_rolls_out_and_exports(tmp_path):
    """The multi-agent CartPole tuned example through `relayrl train -f` (3 iterations instead of its stop), its
    checkpoint rolled out (every agent's return, with its policy) and exported (one directory per policy)."""
    proc = relayrl(
        "train",
        "-f",
        "ppo/multi-cartpole-ppo.yaml",
        "--stop",
        '{"training_iteration": 3}',
        "--checkpoint-at-end",
        "--local-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"TERMINATED, 3 iterations, 1536 timesteps", proc.stdout), proc.stdout
    assert re.search(r"policy_reward_mean \{'p0': [\d.]+, 'p1': [\d.]+\}", proc.stdout), proc.stdout
    checkpoint = re.search(r"checkpoint: (\S+)", proc.stdout).group(1)
    proc = relayrl("rollout", checkpoint, "--episodes", "2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    episodes = [ln for ln in proc.stdout.splitlines() if ln.startswith("episode")]
    assert len(episodes) == 2 and all("agents: 0 (p0) " in ln and ", 1 (p1) " in ln for ln in episodes), proc.stdout
    assert "agent 0 (policy 'p0'): mean return" in proc.stdout and "agent 1 (policy 'p1')" in proc.stdout
    proc = relayrl("export", checkpoint, str(tmp_path / "exported"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    index = json.loads((tmp_path / "exported" / "policies.json").read_text())
    assert index["policies"] == {"p0": "p0", "p1": "p1"}
    for name in ("p0", "p1"):
        assert {"model.onnx", "model.pt", "export.json"} <= set(os.listdir(tmp_path / "exported" / name))

"""``relayrl serve CHECKPOINT``: a trained policy behind the policy server's protocol, inference only.

Each server is a ``relayrl serve`` subprocess on 127.0.0.1 with a free port (``--port 0``, read from its first
line), stopped by its PID (SIGTERM) at the end. The README's curl example is run as written (the port replaced).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from relayrl.agents.trainer import Trainer
from relayrl.serving import PolicyClient, PolicyServerError

pytestmark = pytest.mark.timeout(300)

ROOT = pathlib.Path(__file__).resolve().parents[2]
URL = re.compile(r" on (http://127\.0\.0\.1:\d+) ")
TINY_PPO = {"num_workers": 0, "train_batch_size": 256, "sgd_minibatch_size": 64, "num_sgd_iter": 2, "seed": 0}


def _train(tmp: pathlib.Path, env, config: dict, algo: str = "PPO") -> str:
    from relayrl.agents.registry import get_trainer_class

    trainer = get_trainer_class(algo)(env=env, config=config)
    try:
        trainer.train()
        return trainer.save(str(tmp))
    finally:
        trainer.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = {**TINY_PPO, "observation_filter": "MeanStdFilter"}
    return _train(tmp_path_factory.mktemp("ppo"), "CartPole-v1", config)


@pytest.fixture(scope="module")
def multi_checkpoint(tmp_path_factory):
    config = {
        **TINY_PPO,
        "env_config": {"num_agents": 2},
        "multiagent": {"policies": {"p0": None, "p1": None}, "policy_mapping_fn": "p{agent_id}"},
    }
    return _train(tmp_path_factory.mktemp("multi"), "multi_agent:CartPole-v1", config)


@pytest.fixture(scope="module")
def lstm_checkpoint(tmp_path_factory):
    from relayrl.examples.stateless_cartpole import register

    config = {**TINY_PPO, "model": {"use_lstm": True, "lstm_cell_size": 16, "fcnet_hiddens": [16]}}
    return _train(tmp_path_factory.mktemp("lstm"), register(), config)


@contextlib.contextmanager
def relayrl_serve(*args: str):
    """``relayrl serve ARGS --port 0`` -> (url, process, output lines); SIGTERM by PID at the end."""
    cmd = [sys.executable, "-m", "relayrl", "serve", *args, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(URL.search(line) for line in lines):
            assert proc.poll() is None, "relayrl serve exited:\n" + "".join(lines)
            assert time.monotonic() < deadline, "relayrl serve did not start:\n" + "".join(lines)
            time.sleep(0.05)
        url = next(URL.search(line).group(1) for line in lines if URL.search(line))
        yield url, proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(5)


def readme_curl_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "relayrl serve" in b and "curl" in b)
    return [line for line in block.splitlines() if line.startswith(("J=", "curl"))]


def test_the_readme_curl_example_works_against_relayrl_serve(checkpoint):
    lines = readme_curl_lines()
    assert len([line for line in lines if line.startswith("curl")]) == 5
    with relayrl_serve(checkpoint) as (url, proc, output):
        outputs = []
        for line in lines[1:]:
            command, _, comment = line.partition("   #")
            script = lines[0] + "\n" + command.replace("localhost:9900", url.removeprefix("http://"))
            out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
            outputs.append(json.loads(out.stdout))
            if "..." not in comment and comment.strip().startswith("{"):  # a literal answer: exactly it
                assert outputs[-1] == json.loads(comment), line
        assert outputs[0] == {"episode_id": "ep1"} and outputs[1]["action"] in (0, 1)
        assert outputs[2] == {} and outputs[3] == {}
        assert outputs[4]["protocol"] == 1 and outputs[4]["multiagent"] is False
        form = subprocess.run(["curl", "-s", url + "/v1/start_episode", "-d", "{}"], capture_output=True, text=True)
        assert json.loads(form.stdout)["error"]["status"] == 415  # what the README warns about
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 143
    text = "".join(output)
    assert "relayrl serve: stopped; 1 episodes ended, 1 steps, 1 actions served" in text, text
    assert "relayrl: stopped by SIGTERM" in text


def test_served_actions_are_the_checkpoints_greedy_actions_and_local_clients_pull_it(checkpoint):
    trainer = Trainer.from_checkpoint(checkpoint, {"num_workers": 0})
    rng = np.random.default_rng(0)
    observations = rng.normal(0, 1, size=(40, 4)).astype(np.float32)
    expected = [int(trainer.compute_action(o, explore=False)) for o in observations]
    trainer.stop()
    assert len(set(expected)) == 2  # the check means something: both actions occur
    with relayrl_serve(checkpoint) as (url, proc, output):
        client = PolicyClient(url, encoding="msgpack")
        eid = client.start_episode()
        got = []
        for o in observations[:20]:
            got.append(int(client.get_action(eid, o)))
            client.log_returns(eid, 1.0)
        calls = [{"command": "get_action", "episode_id": client.start_episode(), "observation": o}
                 for o in observations[20:]]  # fmt: skip
        got += [int(r["action"]) for r in client.batch(calls)]  # one batched forward pass
        assert got == expected
        client.end_episode(eid, observations[0])
        with pytest.raises(PolicyServerError, match="has shape \\(3,\\)") as e:
            client.get_action(client.start_episode(), [0.0, 0.0, 0.0])
        assert e.value.status == 400
        local = PolicyClient(url, inference_mode="local", update_interval=3600)  # experience is only counted
        eid = local.start_episode()
        assert local.get_action(eid, observations[0]) in (0, 1)
        local.end_episode(eid, observations[1])
        local.close()
        time.sleep(0.5)
    text = "".join(output)
    assert "2 episodes ended, 41 steps, 40 actions served, 1 logged; mean return of the last 2 episodes 10.00" in text


def test_a_multi_agent_checkpoint_maps_each_agent_to_its_policy(multi_checkpoint):
    trainer = Trainer.from_checkpoint(multi_checkpoint, {"num_workers": 0})
    observations = np.random.default_rng(1).normal(0, 1, size=(30, 4)).astype(np.float32)
    expected = {pid: [int(trainer.compute_action(o, policy_id=pid, explore=False)) for o in observations]
                for pid in ("p0", "p1")}  # fmt: skip
    trainer.stop()
    assert expected["p0"] != expected["p1"]
    with relayrl_serve(multi_checkpoint) as (url, _, _):
        client = PolicyClient(url)
        assert client.multiagent
        eid = client.start_episode()
        got = {"p0": [], "p1": []}
        for o in observations:
            actions = client.get_action(eid, {"0": o, "1": o})
            got["p0"].append(int(actions["0"]))
            got["p1"].append(int(actions["1"]))
        assert got == expected
        with pytest.raises(PolicyServerError, match="observation.7") as e:
            client.get_action(eid, {"7": observations[0]})  # agent 7 maps to p7, which the checkpoint lacks
        assert e.value.status == 400 and "p7" in e.value.message


def greedy_recurrent_actions(checkpoint: str, observations: np.ndarray) -> list[int]:
    """The checkpoint's greedy actions for one episode of ``observations``, its state carried in process."""
    trainer = Trainer.from_checkpoint(checkpoint, {"num_workers": 0})
    state, actions = trainer.get_policy().get_initial_state(), []
    for o in observations:
        action, state, _ = trainer.compute_action(o, state, explore=False)
        actions.append(int(action))
    trainer.stop()
    return actions


def test_a_recurrent_policy_keeps_its_state_per_episode(lstm_checkpoint):
    observations = np.random.default_rng(2).normal(0, 0.1, size=(25, 2)).astype(np.float32)
    expected = greedy_recurrent_actions(lstm_checkpoint, observations)
    out = subprocess.run([sys.executable, "-m", "relayrl", "serve", lstm_checkpoint], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2 and "unknown environment 'StatelessCartPole-v1'" in out.stderr
    assert "pass --env" in out.stderr  # registered by a script: not here
    with relayrl_serve(lstm_checkpoint, "--env", "relayrl.examples.stateless_cartpole:StatelessCartPole") as (
        url,
        _,
        _,
    ):
        client = PolicyClient(url)
        first, second = client.start_episode(), client.start_episode()
        got_first, got_second = [], []
        for o in observations:  # two interleaved episodes: each keeps its own state
            got_first.append(int(client.get_action(first, o)))
            got_second.append(int(client.get_action(second, o)))
        assert got_first == expected and got_second == expected


def test_tokens_and_bad_arguments(checkpoint, monkeypatch):
    out = subprocess.run([sys.executable, "-m", "relayrl", "serve", checkpoint, "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "without auth_token" in out.stderr and "--token" in out.stderr
    out = subprocess.run([sys.executable, "-m", "relayrl", "serve", "/nonexistent/checkpoint_000001"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "relayrl: error:" in out.stderr
    monkeypatch.setenv("RELAYRL_SERVE_TOKEN", "t0ken-from-the-environment")
    with relayrl_serve(checkpoint) as (url, _, output):
        assert "token required" in "".join(output)
        assert requests.get(url + "/v1/info", timeout=10).status_code == 401
        client = PolicyClient(url, auth_token="t0ken-from-the-environment")
        assert client.get_action(client.start_episode(), np.zeros(4, np.float32)) in (0, 1)


@contextlib.contextmanager
def served_in_process(checkpoint: str, env: str | None = None, **server_kwargs):
    """``relayrl serve``'s objects in this process (serve_cli's calls): (server, actor, sizes), where ``sizes``
    records the rows of every forward pass; the first one sleeps 0.5 s (the event loop busy meanwhile)."""
    from relayrl.serving import PolicyServer
    from relayrl.serving.inference import PolicyActor, inference_env
    from relayrl.serving.serve_cli import load_trainer

    trainer = load_trainer(checkpoint, env, "{}")
    try:
        worker = trainer.workers.local_worker()
        env_ = inference_env(worker)
        actor = PolicyActor(worker, env_)
        policy, sizes = worker.get_policy(), []
        compute = policy.compute_actions

        def recording(obs, *args, **kwargs):
            sizes.append(len(obs))
            if len(sizes) == 1:
                time.sleep(0.5)
            return compute(obs, *args, **kwargs)

        policy.compute_actions = recording
        with PolicyServer(env_, "127.0.0.1", 0, **server_kwargs) as server:
            yield server, actor, sizes
    finally:
        trainer.stop()


def test_concurrent_clients_and_batches_are_acted_on_in_one_forward_pass_each(checkpoint):
    trainer = Trainer.from_checkpoint(checkpoint, {"num_workers": 0})
    observations = np.random.default_rng(3).normal(0, 1, size=(64, 4)).astype(np.float32)
    expected = [int(trainer.compute_action(o, explore=False)) for o in observations]
    trainer.stop()
    with served_in_process(checkpoint) as (server, actor, sizes):
        clients = [PolicyClient(server.url) for _ in range(16)]
        episodes = [c.start_episode() for c in clients]
        got = [None] * 16

        def act(i: int) -> None:
            if i:
                time.sleep(0.1)  # while the first one's forward pass holds the event loop
            got[i] = int(clients[i].get_action(episodes[i], observations[i]))

        threads = [threading.Thread(target=act, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert got == expected[:16]
        assert sizes[0] == 1 and sum(sizes) == 16 and len(sizes) <= 3, sizes  # 15 clients, one or two passes
        del sizes[:]
        calls = [{"command": "get_action", "episode_id": c.start_episode(), "observation": o}
                 for c, o in zip(clients * 4, observations)]  # fmt: skip
        assert [int(r["action"]) for r in clients[0].batch(calls)] == expected
        assert sizes == [64]  # a batch of 64 get_actions: one forward pass of 64 rows
        assert actor.stats["actions"] == 80


def test_recurrent_state_per_episode_through_batched_passes(lstm_checkpoint):
    observations = np.random.default_rng(4).normal(0, 0.1, size=(12, 2)).astype(np.float32)
    expected = greedy_recurrent_actions(lstm_checkpoint, observations)
    with served_in_process(lstm_checkpoint, "relayrl.examples.stateless_cartpole:StatelessCartPole") as (
        server,
        _,
        sizes,
    ):
        client = PolicyClient(server.url, encoding="msgpack")
        first, second, third = client.start_episode(), client.start_episode(), client.start_episode()
        got = {first: [], second: [], third: []}
        for i, o in enumerate(observations):  # the third episode starts late: its state is its own
            calls = [{"command": "get_action", "episode_id": e, "observation": o} for e in (first, second)]
            if i == 6:  # a logged action advances the state as well
                calls[1] = {"command": "log_action", "episode_id": second, "observation": o, "action": 1}
            if i >= 4:
                calls.append({"command": "get_action", "episode_id": third, "observation": observations[i - 4]})
            for call, result in zip(calls, client.batch(calls)):
                if call["command"] == "get_action":
                    got[call["episode_id"]].append(int(result["action"]))
        assert got[first] == expected and got[third] == expected[:8]
        assert got[second] == expected[:6] + expected[7:]
        assert sizes == [2] * 4 + [3] * 8


def test_a_get_action_after_its_own_logged_step_in_one_batch_sees_the_advanced_state(lstm_checkpoint):
    observations = np.random.default_rng(5).normal(0, 0.5, size=(8, 2)).astype(np.float32)
    trainer = Trainer.from_checkpoint(lstm_checkpoint, {"num_workers": 0})
    state, states = trainer.get_policy().get_initial_state(), []
    for o in observations:
        _, state, _ = trainer.compute_action(o, state, explore=False)
        states.append(state)
    trainer.stop()
    with served_in_process(lstm_checkpoint, "relayrl.examples.stateless_cartpole:StatelessCartPole") as (
        server,
        actor,
        sizes,
    ):
        client = PolicyClient(server.url, encoding="msgpack")
        mine, other = client.start_episode(), client.start_episode()
        for i in range(0, 8, 2):  # my logged step, then my get_action, in one batch; another episode acts alongside
            calls = [
                {"command": "log_action", "episode_id": mine, "observation": observations[i], "action": 1},
                {"command": "get_action", "episode_id": mine, "observation": observations[i + 1]},
                {"command": "get_action", "episode_id": other, "observation": observations[i // 2]},
            ]
            assert [set(r) for r in client.batch(calls)] == [set(), {"action"}, {"action"}]
            memory = actor._memory[mine]["agent0"][1]
            for got, want in zip(memory["state"], states[i + 1]):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # each batch: the logged step and the other episode's get_action in one pass, then my get_action after it
        assert sizes == [2, 1] * 4


def test_a_failing_forward_pass_answers_503_and_stops_serving(checkpoint):
    with served_in_process(checkpoint) as (server, actor, sizes):
        client = PolicyClient(server.url)
        eid = client.start_episode()
        assert client.get_action(eid, np.zeros(4, np.float32)) in (0, 1)
        actor.worker.get_policy().compute_actions = None  # a bug: calling it raises TypeError
        with pytest.raises(PolicyServerError) as e:
            client.get_action(eid, np.zeros(4, np.float32))
        assert e.value.status == 503 and "closed" in e.value.message
        assert actor.failed.is_set() and isinstance(actor.error, TypeError)
        from relayrl.serving.inference import serve_forever

        with pytest.raises(RuntimeError, match="computing actions failed"):
            serve_forever(actor, server)  # what relayrl serve runs: it ends, the server stopped
        with pytest.raises(OSError):
            requests.get(server.url + "/v1/info", timeout=5)


def test_an_idle_episode_ends_by_the_timeout_through_the_inline_actor(checkpoint):
    with served_in_process(checkpoint, episode_timeout_s=0.4) as (server, actor, _):
        client = PolicyClient(server.url)
        eid = client.start_episode()
        assert client.get_action(eid, np.zeros(4, np.float32)) in (0, 1)
        client.log_returns(eid, 2.5)
        deadline = time.monotonic() + 10
        while actor.stats["episodes"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert actor.summary().startswith("1 episodes ended, 1 steps, 1 actions served, 0 logged")
        assert list(actor.recent_returns) == [2.5] and not actor._memory
        with pytest.raises(PolicyServerError) as e:
            client.get_action(eid, np.zeros(4, np.float32))
        assert e.value.status == 404 and "has ended" in e.value.message

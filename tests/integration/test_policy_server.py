"""PolicyServer / PolicyClient over loopback HTTP: every server on a free port (port=0), stopped in a fixture.

A fake sampler thread drives the server's ExternalEnv (poll -> a real PPO policy -> send_actions), as the
trainer's sampler will; the trainer itself is not involved."""

import json
import pathlib
import socket
import subprocess
import sys
import threading

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import requests

from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
from relayrl.env.base_env import ALL
from relayrl.env.external_env import ExternalEnv, ExternalEnvError, ExternalMultiAgentEnv
from relayrl.serving import PolicyClient, PolicyServer, PolicyServerError, ServedPolicy
from relayrl.serving.policy_server import check_bind
from relayrl.serving.protocol import COMMANDS, ProtocolError

pytestmark = pytest.mark.timeout(120)

CARTPOLE = gym.make("CartPole-v1")
OBS_SPACE, ACT_SPACE = CARTPOLE.observation_space, CARTPOLE.action_space
TOKEN = "s3cret-token-for-tests"


class Idle(ExternalEnv):
    """Episodes come from HTTP clients only: run() just waits (the server is started by the test)."""

    def run(self):
        threading.Event().wait()


class IdleMulti(ExternalMultiAgentEnv):
    def run(self):
        threading.Event().wait()


class FakeSampler(threading.Thread):
    """poll -> one batched compute_actions for every waiting agent -> send_actions; records what it saw."""

    def __init__(self, env, policy):
        super().__init__(daemon=True)
        self.env, self.policy = env, policy
        self.seen = []  # (env_id, agent, obs, reward, terminated, truncated, off-policy action, sent action)
        self.error = None

    def run(self):
        try:
            while True:
                obs, rewards, terms, truncs, _, off = self.env.poll()
                waiting, rows = [], []
                for eid in obs:
                    done = terms[eid][ALL] or truncs[eid][ALL]
                    for agent, o in obs[eid].items():
                        logged = off.get(eid, {}).get(agent)
                        rows.append([eid, agent, np.asarray(o), rewards[eid].get(agent, 0.0), terms[eid][ALL],
                                     truncs[eid][ALL], logged, None])  # fmt: skip
                        if not done and logged is None:
                            waiting.append(rows[-1])
                if waiting:
                    actions, _, _ = self.policy.compute_actions(np.stack([r[2] for r in waiting]).astype(np.float32))
                    out = {}
                    for row, a in zip(waiting, actions):
                        row[7] = int(a)
                        out.setdefault(row[0], {})[row[1]] = int(a)
                    self.env.send_actions(out)
                self.seen.extend(tuple(r) for r in rows)
        except ExternalEnvError as e:
            if "closed" not in str(e):
                self.error = e

    def episode(self, eid):
        return [r for r in list(self.seen) if r[0] == eid]


@pytest.fixture(scope="module")
def policy():
    return PPOTorchPolicy(OBS_SPACE, ACT_SPACE, {**DEFAULT_CONFIG, "seed": 0})


@pytest.fixture
def serve(policy):
    """serve(env=None, **server_kwargs) -> (server, sampler); all stopped at the test's end."""
    started = []

    def make(env=None, **kwargs):
        env = env or Idle(ACT_SPACE, OBS_SPACE, poll_timeout_s=60)
        server = PolicyServer(env, "127.0.0.1", 0, **kwargs).start()
        sampler = FakeSampler(env, policy)
        started.append((server, env, sampler))
        sampler.start()
        return server, sampler

    yield make
    for server, env, sampler in started:
        server.stop()
        env.close()
        sampler.join(10)
        assert sampler.error is None, sampler.error


def play(client, seed, steps=15, log_every=0):
    """A CartPole episode through the client; returns (episode id, actions it took, rewards, logged steps)."""
    env = gym.make("CartPole-v1")
    eid = client.start_episode()
    obs, _ = env.reset(seed=seed)
    actions, logged = [], []
    for t in range(steps):
        if log_every and t % log_every == 1:
            action = t % 2
            client.log_action(eid, obs, action)
            logged.append(t)
        else:
            action = client.get_action(eid, obs)
            assert action in (0, 1)
        obs, reward, terminated, _, _ = env.step(action)
        client.log_returns(eid, reward, {"t": t})
        actions.append(int(action))
        if terminated:
            break
    client.end_episode(eid, obs, truncated=not terminated)
    return eid, actions, logged


def wait_for(predicate, timeout=20.0):
    event = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        event.wait(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_the_five_calls_in_remote_mode(serve, encoding):
    server, sampler = serve()
    with PolicyClient(f"127.0.0.1:{server.port}", encoding=encoding) as client:
        eid, actions, logged = play(client, seed=1, log_every=4)
    wait_for(lambda: any(r[4] or r[5] for r in sampler.episode(eid)))
    rows = sampler.episode(eid)
    assert len(rows) == len(actions) + 1
    for t, (row, action) in enumerate(zip(rows, actions)):
        assert (row[6] if t in logged else row[7]) == action  # the client got the sampler's action, or logged its own
        assert (row[6] is not None) == (t in logged)
        assert row[3] == (0.0 if t == 0 else 1.0)
    assert rows[-1][3] == 1.0 and (rows[-1][4] or rows[-1][5])
    assert server.env.training_enabled(eid) is True


def test_batched_get_action_for_many_episodes_in_one_request(serve):
    server, sampler = serve()
    client = PolicyClient(server.url, encoding="msgpack")
    ids = [client.start_episode() for _ in range(16)]
    obs = CARTPOLE.reset(seed=0)[0]
    results = client.batch([{"command": "get_action", "episode_id": e, "observation": obs} for e in ids])
    assert [r["action"] in (0, 1) for r in results] == [True] * 16
    calls = [{"command": "log_returns", "episode_id": e, "reward": 1.0} for e in ids]
    calls += [{"command": "end_episode", "episode_id": e, "observation": obs} for e in ids]
    assert client.batch(calls) == [{}] * 32
    wait_for(lambda: sum(1 for r in list(sampler.seen) if r[4]) == 16)
    bad_order = [{"command": "get_action", "episode_id": "x1", "observation": obs}, {"command": "log_returns",
                 "episode_id": "x1", "reward": 1.0}]  # fmt: skip
    with pytest.raises(PolicyServerError, match="after its get_action in calls\\[0\\]") as e:
        client.batch(bad_order)
    assert e.value.status == 400 and e.value.field == "calls[1].episode_id"


def test_concurrent_episodes_from_several_client_threads(serve):
    server, sampler = serve()
    results, errors = {}, []

    def worker(i):
        try:
            with PolicyClient(server.url, encoding="json" if i % 2 else "msgpack") as client:
                for k in range(3):
                    eid, actions, _ = play(client, seed=10 * i + k, steps=12)
                    results[eid] = actions
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert len(results) == 24
    wait_for(lambda: sum(1 for r in list(sampler.seen) if r[4] or r[5]) == 24)
    for eid, actions in results.items():
        rows = sampler.episode(eid)
        assert [r[7] for r in rows[:-1]] == actions  # each episode got its own actions, in order


def test_bad_requests_get_4xx_naming_the_problem_and_the_server_keeps_serving(serve, tmp_path):
    server, _ = serve(max_request_bytes=4096)
    url = server.url + "/v1/"
    post = lambda cmd, body, **kw: requests.post(url + cmd, data=body, timeout=10, **kw)  # noqa: E731
    eid = requests.post(url + "start_episode", json={}, timeout=10).json()["episode_id"]

    def error(r, status):
        assert r.status_code == status, r.text
        if r.headers["Content-Type"].startswith("application/msgpack"):
            return msgpack.unpackb(r.content)["error"]
        return r.json()["error"]

    assert error(post("get_action", "{not json"), 400)["message"].startswith("the body is not valid JSON")
    assert error(post("get_action", "[" * 1500 + "]" * 1500), 400)
    e = error(requests.post(url + "get_action", json={"observation": [0, 0, 0, 0]}, timeout=10), 400)
    assert e["field"] == "episode_id" and "missing" in e["message"]
    e = error(requests.post(url + "get_action", json={"episode_id": eid, "observation": [0, 0, 0]}, timeout=10), 400)
    assert e["field"] == "observation" and "shape (3,)" in e["message"] and "(4,)" in e["message"]
    e = error(requests.post(url + "get_action", json={"episode_id": eid, "observation": ["a"] * 4}, timeout=10), 400)
    assert e["field"] == "observation" and "numbers" in e["message"]
    e = error(requests.post(url + "log_action", json={"episode_id": eid, "observation": [0] * 4, "action": 1.5}), 400)
    assert e["field"] == "action" and "integers" in e["message"]
    e = error(requests.post(url + "log_returns", json={"episode_id": eid, "reward": 1, "bogus": 1}, timeout=10), 400)
    assert e["field"] == "bogus"
    e = error(requests.post(url + "get_action", json={"episode_id": "nope", "observation": [0] * 4}, timeout=10), 404)
    assert "'nope' was never started" in e["message"]
    assert error(post("teleport", "{}"), 404)["message"].startswith("unknown command 'teleport'")
    assert error(requests.get(url + "get_action", timeout=10), 405)
    assert error(post("get_action", b"x" * 5000), 413)["message"].endswith("max_request_bytes=4096")
    # A pickle that would create a file when unpickled: refused as a body type, and as "JSON"; nothing runs.
    marker = tmp_path / "pwned"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    assert error(post("get_action", payload, headers={"Content-Type": "application/python-pickle"}), 415)
    assert error(post("get_action", payload), 400)
    assert error(post("get_action", payload, headers={"Content-Type": "application/msgpack"}), 400)
    assert not marker.exists()
    with PolicyClient(server.url) as client:  # the client raises with the server's message
        with pytest.raises(PolicyServerError, match="field 'observation' has shape \\(2,\\)") as exc:
            client.get_action(eid, np.zeros(2))
        assert exc.value.status == 400 and exc.value.field == "observation"
        with pytest.raises(PolicyServerError, match="never started") as exc:
            client.log_returns("unknown-episode", 1.0)
        assert exc.value.status == 404
        assert client.get_action(eid, np.zeros(4, np.float32)) in (0, 1)  # still serving


def test_oversized_request_heads_are_refused_and_the_server_keeps_serving(serve):
    """A request line or a header over 8 KB (one that never ends included), or too many headers, get 400 and a
    closed connection before the server holds more of them (aiohttp's parser limits)."""
    server, _ = serve()
    host, port = server.url.removeprefix("http://").split(":")
    heads = [
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
        b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"b" * 2_000_000,  # never ends: cut off early
    ]
    for head in heads:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            try:
                sock.sendall(head)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed while the rest was still being written
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
    with PolicyClient(server.url) as client:
        assert client.get_action(client.start_episode(), np.zeros(4, np.float32)) in (0, 1)
    ok = b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(50)) + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(ok)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")


def test_expect_100_continue_is_answered_before_the_body_and_a_too_large_one_is_refused_at_once(serve):
    """curl sends ``Expect: 100-continue`` before a large body and waits a second for the interim answer."""
    server, _ = serve(max_request_bytes=4096)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"training_enabled": True}).encode()
    head = b"POST /v1/start_episode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200") and b'"episode_id"' in answer, answer
        sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n")  # over the limit
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and b"max_request_bytes=4096" in answer, answer
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"Expect: something-else\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 417") and b"100-continue" in answer, answer


def test_auth_token_and_non_loopback_binding(serve):
    server, _ = serve(auth_token=TOKEN)
    info = server.url + "/v1/info"
    assert requests.get(info, timeout=10).status_code == 401
    r = requests.get(info, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(info, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()["protocol"] == 1
    with pytest.raises(PolicyServerError, match="bearer token") as e:
        PolicyClient(server.url)
    assert e.value.status == 401
    client = PolicyClient(server.url, auth_token=TOKEN)
    assert client.get_action(client.start_episode(), np.zeros(4, np.float32)) in (0, 1)
    env = Idle(ACT_SPACE, OBS_SPACE)
    for address in ("0.0.0.0", "", "::"):
        with pytest.raises(ValueError, match="not a loopback address\\) without auth_token"):
            PolicyServer(env, address, 0)
    check_bind("0.0.0.0", TOKEN)  # with a token it may bind (not done here: loopback only)
    check_bind("localhost", None)


def test_local_mode_acts_with_pulled_weights_and_reports_experience(serve, policy):
    served = PPOTorchPolicy(OBS_SPACE, ACT_SPACE, {**DEFAULT_CONFIG, "seed": 1})

    def prefer(action):
        w = served.get_weights()
        w["logits.weight"][:] = 0.0
        w["logits.bias"][:] = [50.0, -50.0] if action == 0 else [-50.0, 50.0]
        served.set_weights(w)

    prefer(1)
    env = Idle(ACT_SPACE, OBS_SPACE, poll_timeout_s=60)
    env.served_policy = ServedPolicy("PPO", served, {**DEFAULT_CONFIG, "env": "secret"}, cache_s=0.0)
    server, sampler = serve(env)
    client = PolicyClient(server.url, inference_mode="local", update_interval=3600, encoding="msgpack")
    manifest = requests.get(server.url + "/v1/policy", timeout=10).json()
    assert manifest["algorithm"] == "PPO" and "env" in manifest["config_keys_not_sent"]
    eid, actions, _ = play(client, seed=3, steps=8)
    assert set(actions) == {1}
    assert sampler.episode(eid) == []  # nothing reported before the update interval
    prefer(0)
    client.update()  # reports the episode and pulls the new weights
    eid2 = client.start_episode()
    assert client.get_action(eid2, np.zeros(4, np.float32)) == 0
    client.end_episode(eid2, np.zeros(4, np.float32))
    client.close()
    wait_for(lambda: any(r[4] or r[5] for r in sampler.episode(eid2)))
    rows = sampler.episode(eid)
    assert [r[6] for r in rows[:-1]] == actions and all(r[7] is None for r in rows)  # logged, not asked for
    assert [r[3] for r in rows] == [0.0] + [1.0] * len(actions)
    other = Idle(ACT_SPACE, OBS_SPACE)  # no ServedPolicy: local mode is refused with a clear message
    server2, _ = serve(other)
    with pytest.raises(PolicyServerError, match="no policy for local inference"):
        PolicyClient(server2.url, inference_mode="local")


def test_an_abandoned_episode_is_ended_truncated_after_the_timeout(serve):
    server, sampler = serve(episode_timeout_s=0.4)
    client = PolicyClient(server.url)
    eid = client.start_episode()
    client.get_action(eid, np.ones(4, np.float32))
    client.log_returns(eid, 3.0)  # then the client vanishes
    wait_for(lambda: any(r[5] for r in sampler.episode(eid)), timeout=15)
    last = sampler.episode(eid)[-1]
    assert last[3] == 3.0 and last[5] and not last[4] and np.all(last[2] == 1)


def test_multi_agent_env_over_http(serve):
    server, sampler = serve(IdleMulti(ACT_SPACE, OBS_SPACE, poll_timeout_s=60))
    client = PolicyClient(server.url, encoding="msgpack")
    eid = client.start_episode()
    actions = client.get_action(eid, {"red": np.zeros(4, np.float32), "blue": np.ones(4, np.float32)})
    assert set(actions) == {"red", "blue"}
    client.log_returns(eid, {"red": 1.0, "blue": -1.0})
    with pytest.raises(PolicyServerError, match="field 'observation.red' has shape") as e:
        client.get_action(eid, {"red": [0, 0]})
    assert e.value.status == 400
    client.end_episode(eid, {"red": np.zeros(4, np.float32), "blue": np.zeros(4, np.float32)})
    wait_for(lambda: len(sampler.episode(eid)) == 4)
    final = {r[1]: r for r in sampler.episode(eid)[2:]}
    assert final["red"][3] == 1.0 and final["blue"][3] == -1.0 and final["red"][4]


def test_the_seed_era_example_serves_from_run(policy):
    class CartPoleServing(ExternalEnv):
        def run(self):
            self.server = PolicyServer(self, "127.0.0.1", 0)
            self.ready.set()
            self.server.serve_forever()

    env = CartPoleServing(ACT_SPACE, OBS_SPACE, poll_timeout_s=60)
    env.ready = threading.Event()
    sampler = FakeSampler(env, policy)
    sampler.start()  # its first poll starts run()
    try:
        assert env.ready.wait(10)
        wait_for(lambda: env.server._serving.is_set())
        client = PolicyClient(f"127.0.0.1:{env.server.port}")
        eid, actions, _ = play(client, seed=0, steps=5)
        wait_for(lambda: len(sampler.episode(eid)) == len(actions) + 1)
    finally:
        env.server.stop()
        env.close()
        sampler.join(10)


def test_serving_never_uses_pickle_and_import_relayrl_loads_no_http_stack():
    root = pathlib.Path(__file__).resolve().parents[2] / "relayrl"
    files = list((root / "serving").glob("*.py")) + [root / "env" / "external_env.py"]
    for path in files:
        text = path.read_text()
        for word in ("pickle", "marshal", "cloudpickle", "dill"):
            assert f"import {word}" not in text and f"{word}.load" not in text, f"{path.name} uses {word}"
    stacks = "('aiohttp', 'uvicorn', 'httptools')"
    code = f"import sys, relayrl, relayrl.serving; print(any(m.split('.')[0] in {stacks} for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


def test_fuzzed_requests_never_get_a_5xx(serve):
    """Random and mutated requests (bounded: 1,500, one connection) get 4xx answers, never 5xx, and the server
    still serves a good call afterwards."""
    server, _ = serve(max_request_bytes=8192, episode_timeout_s=None)
    rng = np.random.default_rng(0)
    session, url = requests.Session(), server.url + "/v1/"
    eid = session.post(url + "start_episode", json={}, timeout=10).json()["episode_id"]
    values = [None, True, 0, -1, 2**70, 1.5, float("nan"), "x", "", [], {}, [0] * 4, [[0]] * 4, [0.1] * 4, {"a": 1},
              [None] * 4, ["1"] * 4, 10**400, eid, "../../etc", "a" * 200]  # fmt: skip
    commands = [*COMMANDS, "batch", "info", "policy", "weights", "", "get_action/x", "GET_ACTION"]
    fields = ["episode_id", "observation", "action", "reward", "info", "training_enabled", "truncated", "calls", "x"]
    statuses = {}
    for _ in range(1500):
        command = commands[rng.integers(len(commands))]
        kind = rng.integers(4)
        if kind == 0:  # random bytes
            body = rng.bytes(int(rng.integers(0, 64)))
        elif kind == 1:  # a message with random fields and values
            msg = {fields[j]: values[rng.integers(len(values))] for j in rng.choice(len(fields), rng.integers(0, 5))}
            body = json.dumps(msg, allow_nan=True).encode()
        elif kind == 2:  # a valid message with one byte flipped
            msg = json.dumps({"episode_id": eid, "observation": [0.1, 0.2, 0.3, 0.4]}).encode()
            j = int(rng.integers(len(msg)))
            body = msg[:j] + bytes([int(rng.integers(256))]) + msg[j + 1 :]
        else:  # a batch of random calls
            calls = [{"command": commands[rng.integers(len(commands))], "episode_id": eid, "reward": values[k]}
                     for k in rng.integers(len(values), size=3)]  # fmt: skip
            body, command = json.dumps({"calls": calls}, allow_nan=True).encode(), "batch"
        ctype = ["application/json", "application/msgpack", "text/plain", ""][rng.integers(4)]
        method = "GET" if rng.random() < 0.1 else "POST"
        r = session.request(method, url + command, data=body, headers={"Content-Type": ctype}, timeout=10)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, command, body[:200], r.content[:300])
    assert session.post(url + "log_returns", json={"episode_id": eid, "reward": 1.0}, timeout=10).status_code in (
        200,
        409,
    )
    new = session.post(url + "start_episode", json={}, timeout=10).json()["episode_id"]
    r = session.post(url + "get_action", json={"episode_id": new, "observation": [0.0] * 4}, timeout=10)
    assert r.status_code == 200 and r.json()["action"] in (0, 1), statuses
    assert {200, 400, 404, 405, 415} <= set(statuses), statuses  # the mutations reach every check


def test_a_batchs_observations_decoded_at_once_exactly_as_one_by_one(monkeypatch):
    """validate_batch decodes a single-agent batch's observations as one array: the same fields, dtypes and errors
    (the first failing call's field) as decoding them one by one, for random batches of good and bad values."""
    from relayrl.serving import protocol

    env = Idle(ACT_SPACE, OBS_SPACE)
    rng = np.random.default_rng(0)
    good = [np.zeros(4, np.float32), np.arange(4, dtype=np.float64), [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4],
            np.arange(4, dtype=np.int16), [True, False, True, False]]  # fmt: skip
    bad = [[0.1] * 3, [[0.1] * 4], [float("nan")] + [0.0] * 3, ["1"] * 4, "abcd", None, {"a": 1}, True,
           [2**70] * 4, np.zeros(4, np.complex64), [[0.1], 0.2, 0.3, 0.4], [None] * 4]  # fmt: skip
    commands = ["get_action", "get_action", "log_action", "end_episode", "log_returns"]

    def outcome(calls, one_by_one):
        with monkeypatch.context() as m:
            if one_by_one:
                m.setattr(protocol, "_observations_at_once", lambda calls, env: {})
            try:
                return protocol.validate_batch({"calls": calls}, env)
            except ProtocolError as e:
                return (e.status, e.message, e.field)

    for trial in range(300):
        calls = []
        for i in range(int(rng.integers(1, 8))):
            pool = bad if rng.random() < 0.08 else good
            call = {"command": commands[rng.integers(len(commands))], "episode_id": f"e{i}"}
            call["observation"] = pool[rng.integers(len(pool))]
            if call["command"] == "log_action":
                call["action"] = 1
            calls.append(call)
        at_once, one_by_one = outcome(calls, False), outcome(calls, True)
        if isinstance(one_by_one, tuple):
            assert at_once == one_by_one, (trial, calls)
            continue
        assert [c for c, _ in at_once] == [c for c, _ in one_by_one]
        for (_, a), (_, b) in zip(at_once, one_by_one):
            assert a.keys() == b.keys()
            if "observation" in a:
                assert a["observation"].dtype == b["observation"].dtype == np.float32
                np.testing.assert_array_equal(a["observation"], b["observation"])

"""PolicyClient against several servers (one per rollout worker), coalesced rewards, and the server's backpressure
on reported experience. Servers on 127.0.0.1, free ports, stopped at the end (the fixture of
test_policy_server.py's style: a fake sampler thread per server answers with a real PPO policy)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_policy_server import ACT_SPACE, OBS_SPACE, FakeSampler, Idle, wait_for

from relayrl.agents.ppo import DEFAULT_CONFIG, PPOTorchPolicy
from relayrl.serving import PolicyClient, PolicyServer, PolicyServerError, ServedPolicy

pytestmark = pytest.mark.timeout(120)
OBS = np.array([0.01, -0.02, 0.03, 0.04], np.float32)


@pytest.fixture(scope="module")
def policy():
    return PPOTorchPolicy(OBS_SPACE, ACT_SPACE, {**DEFAULT_CONFIG, "seed": 0})


@pytest.fixture
def servers(policy):
    """servers(n, sample=True, **kwargs) -> [(server, sampler or None)], stopped at the test's end."""
    started = []

    def make(n: int, sample: bool = True, **kwargs):
        out = []
        for _ in range(n):
            env = Idle(ACT_SPACE, OBS_SPACE, poll_timeout_s=60)
            env.served_policy = ServedPolicy("PPO", policy, DEFAULT_CONFIG)
            server = PolicyServer(env, "127.0.0.1", 0, **kwargs).start()
            sampler = FakeSampler(env, policy) if sample else None
            if sampler is not None:
                sampler.start()
            started.append((server, env, sampler))
            out.append((server, sampler))
        return out

    yield make
    for server, env, sampler in started:
        server.stop()
        env.close()
        if sampler is not None:
            sampler.join(10)
            assert sampler.error is None, sampler.error


def test_episodes_go_to_the_server_with_fewest_running_and_stay_there(servers):
    (a, sa), (b, sb) = servers(2)
    client = PolicyClient([a.url, b.url.removeprefix("http://")])
    ids = [client.start_episode() for _ in range(4)]
    assert sorted(a.env.running_episodes() + b.env.running_episodes()) == sorted(ids)
    assert len(a.env.running_episodes()) == len(b.env.running_episodes()) == 2
    for eid in ids:
        for _ in range(3):
            assert client.get_action(eid, OBS) in (0, 1)
            client.log_returns(eid, 1.0)
    for server, sampler in ((a, sa), (b, sb)):  # every step of an episode reached its own server only
        for eid in server.env.running_episodes():
            wait_for(lambda s=sampler, e=eid: len(s.episode(e)) == 3)
    first_on_a = a.env.running_episodes()[0]
    client.end_episode(first_on_a, OBS)
    new = client.start_episode()
    assert new in a.env.running_episodes()  # a now runs fewer of this client's episodes
    calls = [{"command": "get_action", "episode_id": e, "observation": OBS} for e in [new, *ids[1:]]]
    results = client.batch(calls)  # split by server, answered in the calls' order
    assert [r["action"] in (0, 1) for r in results] == [True] * 4
    with pytest.raises(ValueError, match="non-empty list"):
        PolicyClient([])
    with pytest.raises(ValueError, match="host:port"):
        PolicyClient([a.url, "no-port"])


def test_local_mode_with_two_servers_reports_each_episode_to_its_server(servers):
    (a, sa), (b, sb) = servers(2)
    client = PolicyClient([a.url, b.url], inference_mode="local", update_interval=3600, encoding="msgpack")
    ids = [client.start_episode() for _ in range(2)]
    for eid in ids:
        for _ in range(4):
            action = client.get_action(eid, OBS)
            client.log_returns(eid, 1.0)
        client.end_episode(eid, OBS)
    assert sa.seen == [] and sb.seen == []  # nothing before the flush
    client.flush()
    wait_for(lambda: len(sa.seen) == 5 and len(sb.seen) == 5)
    assert {r[0] for r in sa.seen} | {r[0] for r in sb.seen} == set(ids)
    assert all(r[6] is not None for r in sa.seen[:-1]) and action in (0, 1)  # logged, not asked for


def test_coalesced_rewards_travel_with_the_next_call(servers):
    ((server, sampler),) = servers(1)
    client = PolicyClient(server.url, coalesce_rewards=True)
    eid = client.start_episode()
    client.get_action(eid, OBS)
    client.log_returns(eid, 2.0)
    client.log_returns(eid, 0.5)  # both sent with the next call, in one request
    client.get_action(eid, OBS)
    wait_for(lambda: len(sampler.episode(eid)) == 2)
    assert sampler.episode(eid)[1][3] == 2.5
    client.log_returns("never-started", 1.0)
    with pytest.raises(PolicyServerError, match="log_returns \\(sent with the next call\\): .*never started") as e:
        client.end_episode("never-started", OBS)
    assert e.value.status == 404
    client.log_returns(eid, 1.0)
    client.close()  # sends what is pending
    client.end_episode(eid, OBS)
    wait_for(lambda: len(sampler.episode(eid)) == 3)
    assert sampler.episode(eid)[2][3] == 1.0


def test_reported_experience_waits_while_the_sampler_is_behind(servers, policy):
    ((server, _),) = servers(1, sample=False, max_backlog_steps=10)
    client = PolicyClient(server.url, encoding="msgpack")
    eid = client.start_episode()
    calls = [{"command": "log_action", "episode_id": eid, "observation": OBS, "action": 1} for _ in range(30)]
    done = threading.Event()
    threading.Thread(target=lambda: (client.batch(calls), done.set()), daemon=True).start()
    time.sleep(1.0)
    assert not done.is_set() and server.env.pending_steps() == 30  # held: the sampler has not polled
    sampler = FakeSampler(server.env, policy)
    sampler.start()
    assert done.wait(20)  # answered once the sampler caught up to 10 waiting steps
    assert server.env.pending_steps() <= 10
    with pytest.raises(ValueError, match="max_backlog_steps"):
        PolicyServer(server.env, "127.0.0.1", 0, max_backlog_steps=0)
    server.env.close()
    sampler.join(10)


def test_get_action_without_an_answer_in_time_is_a_504_and_the_episode_recovers(servers, policy):
    ((server, _),) = servers(1, sample=False, action_timeout_s=0.5)
    client = PolicyClient(server.url)
    eid, other = client.start_episode(), client.start_episode()
    with pytest.raises(PolicyServerError, match="action_timeout_s=0.5") as e:
        client.get_action(eid, OBS)
    assert e.value.status == 504
    results = client._request("POST", "batch", {"calls": [{"command": "get_action", "episode_id": other,
                                                           "observation": OBS}]})["results"]  # fmt: skip
    assert results[0]["error"]["status"] == 504
    with pytest.raises(PolicyServerError, match="still waiting") as e:  # the sampler has not answered yet
        client.get_action(eid, OBS)
    assert e.value.status == 409
    sampler = FakeSampler(server.env, policy)
    sampler.start()  # answers the abandoned waits (dropped), then the episode goes on
    wait_for(lambda: len(sampler.episode(eid)) == 1)
    time.sleep(0.2)
    assert client.get_action(eid, OBS) in (0, 1)
    server.env.close()
    sampler.join(10)

"""The seed-era CartPole client: a simulator process stepping Gymnasium CartPole-v1 through PolicyClient.

    python -m relayrl.examples.serving.cartpole_client                              # remote: the server acts
    python -m relayrl.examples.serving.cartpole_client --inference-mode local       # a copy of the policy acts here
    python -m relayrl.examples.serving.cartpole_client --off-policy 0.2             # 20% random actions, logged
    python -m relayrl.examples.serving.cartpole_client --num-workers 2              # a server with 2 rollout workers

It plays episodes (``--num-envs`` of them at once, one thread each) until the mean return of its last 20 episodes
reaches ``--stop-reward`` or it has taken ``--max-steps`` steps, then prints one JSON line (steps, episodes, that
mean, seconds) and exits 0 when the reward was reached, else 1. ``--no-train`` plays episodes the trainer acts on
but does not learn from. Multi-agent servers (``--agents 2``): every agent drives its own CartPole and the episode
ends when one of them falls; its return is the agents' mean.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import time
from typing import Any

import numpy as np

from relayrl.examples.serving.cartpole_server import SERVER_ADDRESS, SERVER_PORT, agent_ids, make_cartpole
from relayrl.serving import PolicyClient


class Progress:
    """Steps and episode returns of all the client's threads; ``done`` once the goal or the step budget is met."""

    def __init__(self, stop_reward: float | None, max_steps: int, window: int = 20):
        self.stop_reward, self.max_steps = stop_reward, max_steps
        self.returns: collections.deque = collections.deque(maxlen=window)
        self.steps = self.episodes = 0
        self.reached_at: int | None = None
        self.mean_at_reach: float | None = None
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.start = time.perf_counter()
        self.seconds: float | None = None

    def step(self, n: int = 1) -> None:
        with self.lock:
            self.steps += n
            if self.steps >= self.max_steps:
                self._finish()

    def episode(self, total: float) -> None:
        with self.lock:
            self.episodes += 1
            self.returns.append(total)
            full = len(self.returns) == self.returns.maxlen
            if self.stop_reward is not None and full and self.mean() >= self.stop_reward and self.reached_at is None:
                # the goal as it was met: the other threads' episodes still ending afterwards move the window on
                self.reached_at, self.mean_at_reach = self.steps, self.mean()
                self._finish()
            if self.episodes % 50 == 0:
                print(f"cartpole_client: {self.steps} steps, {self.episodes} episodes, last-20 mean {self.mean():.1f}",
                      flush=True)  # fmt: skip

    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def _finish(self) -> None:
        if not self.done.is_set():
            self.seconds = time.perf_counter() - self.start
            self.done.set()


# With several servers a trainer samples its workers in lock step: once the other threads have stopped, an episode
# waiting for an action from one worker can wait for ever (the trainer waits for the other worker's fragment).
STRAGGLER_S = 15.0


def play(client: PolicyClient, args: argparse.Namespace, progress: Progress, index: int) -> None:
    """Episodes of one simulator (a CartPole per agent) until ``progress.done``."""
    agents = agent_ids(args.agents) if args.agents > 1 else [None]
    envs = {a: make_cartpole(args.env) for a in agents}
    rng = np.random.default_rng(args.seed + 1000 * index)
    episode = 0
    while not progress.done.is_set():
        eid = client.start_episode(training_enabled=not args.no_train)
        seed = args.seed + 1000 * index + episode
        obs = {a: env.reset(seed=seed + 100_000 * i)[0] for i, (a, env) in enumerate(envs.items())}
        episode += 1
        total = 0.0
        while True:
            if rng.random() < args.off_policy:  # the simulator's own choice: reported, not asked for
                action = {a: env.action_space.sample() for a, env in envs.items()}
                client.log_action(eid, _one(obs, args), _one(action, args))
            else:
                action = client.get_action(eid, _one(obs, args))
                action = action if args.agents > 1 else {None: action}
            terminated = truncated = False
            rewards = {}
            for a, env in envs.items():
                obs[a], rewards[a], term, trunc, _ = env.step(action[a])
                terminated, truncated = terminated or term, truncated or trunc
            total += float(np.mean(list(rewards.values())))
            client.log_returns(eid, _one(rewards, args))
            progress.step()
            if terminated or truncated or progress.done.is_set():  # done: end the episode now (truncated)
                client.end_episode(eid, _one(obs, args), truncated=not terminated)
                if terminated or truncated:
                    progress.episode(total)
                break


def _one(per_agent: dict, args: argparse.Namespace) -> Any:
    """A single-agent server takes the value itself, a multi-agent one the dict keyed by agent id."""
    return per_agent if args.agents > 1 else per_agent[None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", action="append", default=None, help="a server 'host:port' (repeatable)")
    parser.add_argument("--host", default=SERVER_ADDRESS, help="the server's host (without --address)")
    parser.add_argument("--port", type=int, default=SERVER_PORT, help="the server's base port (without --address)")
    parser.add_argument("--num-workers", type=int, default=0, help="the server's: its servers are port+1..port+N")
    parser.add_argument("--inference-mode", default="remote", choices=["remote", "local"])
    parser.add_argument("--update-interval", type=float, default=10.0, help="local mode: seconds between syncs")
    parser.add_argument("--encoding", default="json", choices=["json", "msgpack"])
    parser.add_argument("--coalesce-rewards", action="store_true", help="remote: log_returns with the next call")
    parser.add_argument("--token", default=None, help="the server's bearer token")
    parser.add_argument("--env", default="CartPole-v1", choices=["CartPole-v1", "StatelessCartPole-v1"])
    parser.add_argument("--agents", type=int, default=1, help="the server's --agents")
    parser.add_argument("--num-envs", type=int, default=1, help="episodes played at once (one thread each)")
    parser.add_argument("--off-policy", type=float, default=0.0, help="fraction of random, logged actions")
    parser.add_argument("--no-train", action="store_true", help="episodes the trainer does not learn from")
    parser.add_argument("--stop-reward", type=float, default=None, help="stop at this mean of the last 20 returns")
    parser.add_argument("--max-steps", type=int, default=150_000, help="stop after this many steps")
    parser.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the server(s) to start")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    offsets = range(1, args.num_workers + 1) if args.num_workers else [0]
    addresses = args.address or [f"{args.host}:{args.port + i}" for i in offsets]
    client = PolicyClient(
        addresses,
        inference_mode=args.inference_mode,
        update_interval=args.update_interval,
        auth_token=args.token,
        encoding=args.encoding,
        wait_s=args.wait_s,
        coalesce_rewards=args.coalesce_rewards,
    )
    progress = Progress(args.stop_reward, args.max_steps)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            play(client, args, progress, index)
        except BaseException as e:  # noqa: BLE001 - reported below, the other threads stop
            errors.append(e)
            progress.done.set()
        finally:
            client.close()  # local mode: flushes this thread's share of experience; closes its connections

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(args.num_envs)]
    for t in threads:
        t.start()
    progress.done.wait()
    deadline = time.monotonic() + STRAGGLER_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stragglers = sum(t.is_alive() for t in threads)
    if stragglers:  # left to the servers' episode timeout (daemon threads)
        print(f"cartpole_client: {stragglers} episode(s) still waiting for an action after {STRAGGLER_S} s: left")
    if errors:
        raise errors[0]
    reached = args.stop_reward is None or progress.reached_at is not None
    summary = {
        "reached": reached,
        "steps": progress.steps,
        "steps_at_reach": progress.reached_at,
        "mean_at_reach": progress.mean_at_reach,
        "episodes": progress.episodes,
        "last20_mean": progress.mean(),
        "seconds": progress.seconds,
        "inference_mode": args.inference_mode,
    }
    print(json.dumps(summary), flush=True)
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())

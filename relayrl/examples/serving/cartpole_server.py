"""The seed-era CartPole server: a trainer whose env is an ExternalEnv that serves clients over HTTP from run().

    python -m relayrl.examples.serving.cartpole_server --run PPO                     # serves on 127.0.0.1:9900
    python -m relayrl.examples.serving.cartpole_client --inference-mode remote       # in another shell (or several)

The trainer samples its env like any other: each episode a client drives is an env of the sampler, which answers
every waiting ``get_action`` with one batched forward pass and learns from what the clients report. With
``--num-workers N`` each of the N rollout workers builds its own env from ``env_creator(ctx)`` and serves on
``port + ctx.worker_index`` (9901 .. 9900+N; the local worker, index 0, only learns); a client given every
address (``cartpole_client --num-workers N``) spreads its episodes over them. ``--port 0``: every server takes a
free port and prints it (Ray folds the workers' look-alike lines into one unless ``RAY_DEDUP_LOGS=0``).
``--agents 2``: an ExternalMultiAgentEnv whose agents a0, a1 each drive a CartPole of the episode and learn with
their own policy (p0, p1). ``--env StatelessCartPole-v1`` with ``--config '{"model": {"use_lstm": true}}'``: a
recurrent policy behind the server (the sampler keeps each episode's state).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from relayrl.env.external_env import ExternalEnv, ExternalMultiAgentEnv
from relayrl.env.registry import EnvContext, register_env

SERVER_ADDRESS = "127.0.0.1"
SERVER_PORT = 9900

# Settings that solve CartPole-v1 quickly (relayrl/tuned_examples/ppo/cartpole-ppo.yaml, dqn/cartpole-dqn.yaml).
CONFIGS: dict[str, dict] = {
    "PPO": {
        "sample_batch_size": 64,
        "train_batch_size": 512,
        "sgd_minibatch_size": 128,
        "num_sgd_iter": 5,
        "lr": 0.004,
        "lambda": 0.95,
        "vf_clip_param": 1000.0,
        "kl_coeff": 0.0,
        "observation_filter": "MeanStdFilter",
        "model": {"fcnet_hiddens": [64, 64]},
    },
    # Served episodes step together: a 4-step fragment (sample_batch_size) holds about one step of each of a
    # client's 4 episodes, which cuts 3-step returns (n_step) to one step. 16-step fragments give each about 4
    # consecutive steps (as a lone CartPole gets from 4-step fragments), and 4x the train batch keeps the replay
    # ratio (16 replayed rows per sampled step) with 4x fewer updates.
    "DQN": {
        "model": {"fcnet_hiddens": [64], "fcnet_activation": "relu"},
        "hiddens": [64],
        "lr": 0.001,
        "n_step": 3,
        "sample_batch_size": 16,
        "train_batch_size": 256,
        "target_network_update_freq": 500,
        "exploration_fraction": 0.1,
        "schedule_max_timesteps": 100000,
        "timesteps_per_iteration": 2000,
        "min_iter_time_s": 0,
    },
}


def make_cartpole(env_id: str) -> Any:
    """A Gymnasium CartPole-v1, or the memory test StatelessCartPole-v1 (the velocities hidden)."""
    if env_id == "StatelessCartPole-v1":
        from relayrl.examples.stateless_cartpole import StatelessCartPole

        return StatelessCartPole()
    import gymnasium as gym

    return gym.make(env_id)


def agent_ids(n: int) -> list[str]:
    return [f"a{i}" for i in range(n)]


class CartPoleServing(ExternalEnv):
    """The trainer's env: ``run()`` (started by the sampler's first poll) serves clients until the process ends."""

    def __init__(self, env_id: str = "CartPole-v1", address: str = SERVER_ADDRESS, port: int = SERVER_PORT, **server):
        cartpole = make_cartpole(env_id)
        super().__init__(cartpole.action_space, cartpole.observation_space, max_concurrent=100)
        self.address, self.port, self.server_kwargs = address, port, server

    def run(self) -> None:
        serve(self)


class MultiCartPoleServing(ExternalMultiAgentEnv):
    """Each agent of an episode drives its own CartPole; the client ends the episode when one falls."""

    def __init__(self, env_id: str = "CartPole-v1", address: str = SERVER_ADDRESS, port: int = SERVER_PORT, **server):
        cartpole = make_cartpole(env_id)
        super().__init__(cartpole.action_space, cartpole.observation_space, max_concurrent=100)
        self.address, self.port, self.server_kwargs = address, port, server

    def run(self) -> None:
        serve(self)


def serve(env: Any) -> None:
    from relayrl.serving import PolicyServer

    server = PolicyServer(env, env.address, env.port, **env.server_kwargs)
    print(f"cartpole_server: serving on {server.url}", flush=True)
    server.serve_forever()


def env_creator(ctx: EnvContext) -> ExternalEnv:
    """One server per rollout worker: worker ``ctx.worker_index`` serves on ``port + worker_index`` (port 0: a free
    port each). ``ctx`` (env_config): env_id, address, port, agents, token, max_backlog_steps."""
    port = ctx.get("port", SERVER_PORT)
    server = {"auth_token": ctx.get("token"), "max_backlog_steps": ctx.get("max_backlog_steps", 1000)}
    cls = MultiCartPoleServing if ctx.get("agents", 1) > 1 else CartPoleServing
    return cls(
        ctx.get("env_id", "CartPole-v1"),
        ctx.get("address", SERVER_ADDRESS),
        port + ctx.worker_index if port else 0,
        **server,
    )


def build_config(args: argparse.Namespace) -> dict:
    from relayrl.config import merge_dicts

    env_config = {"env_id": args.env, "address": args.address, "port": args.port, "agents": args.agents}
    env_config.update({"token": args.token, "max_backlog_steps": args.max_backlog_steps})
    config = {**CONFIGS.get(args.run, {}), "num_workers": args.num_workers, "seed": args.seed, "env_config": env_config}
    config["metrics_smoothing_episodes"] = 20
    if args.agents > 1:  # one policy per agent: a0 -> p0, a1 -> p1, ...
        ids = agent_ids(args.agents)
        config["multiagent"] = {
            "policies": {f"p{i}": None for i in range(args.agents)},
            "policy_mapping_fn": {a: f"p{i}" for i, a in enumerate(ids)},
        }
    return merge_dicts(config, json.loads(args.config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="PPO", help=f"the algorithm (default PPO; settings for {sorted(CONFIGS)})")
    parser.add_argument("--env", default="CartPole-v1", choices=["CartPole-v1", "StatelessCartPole-v1"])
    parser.add_argument("--address", default=SERVER_ADDRESS, help="address to bind (others need --token)")
    parser.add_argument("--port", type=int, default=SERVER_PORT, help="base port; 0: a free port per server")
    parser.add_argument("--num-workers", type=int, default=0, help="rollout workers, each serving on port + index")
    parser.add_argument("--agents", type=int, default=1, help="agents per episode, each with its own policy")
    parser.add_argument("--token", default=None, help="bearer token clients must send")
    parser.add_argument("--max-backlog-steps", type=int, default=1000, help="PolicyServer's max_backlog_steps")
    parser.add_argument("--config", default="{}", help="trainer config overrides as a JSON object")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-timesteps", type=int, default=10**9, help="stop after this many timesteps")
    parser.add_argument("--stop-reward", type=float, default=None, help="stop at this episode_reward_mean")
    parser.add_argument("--restore", default=None, help="checkpoint to start from")
    parser.add_argument("--checkpoint-dir", default=None, help="save a checkpoint here when training stops")
    args = parser.parse_args(argv)
    # Every rollout worker prints its own "serving on" line; Ray's log deduplication would fold the second one (a
    # line that differs only in its numbers) into "[repeated 2x across cluster]" and hide its port.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    from relayrl.agents.registry import get_trainer_class

    register_env("cartpole_serving", env_creator)
    trainer = get_trainer_class(args.run)(env="cartpole_serving", config=build_config(args))
    if args.restore:
        trainer.restore(args.restore)
    print(f"cartpole_server: {args.run} training; clients connect to {args.address}:{args.port}", flush=True)
    start = time.perf_counter()
    try:
        while True:
            result = trainer.train()
            per_policy = result.get("policy_reward_mean") or {}
            print(
                f"cartpole_server: iteration {result['training_iteration']}, {result['timesteps_total']} timesteps,"
                f" {time.perf_counter() - start:.1f} s, episode_reward_mean {result['episode_reward_mean']:.1f}"
                + (f", policy_reward_mean {json.dumps(per_policy)}" if args.agents > 1 else ""),
                flush=True,
            )
            reward = result["episode_reward_mean"]
            if result["timesteps_total"] >= args.stop_timesteps or (
                args.stop_reward is not None and reward == reward and reward >= args.stop_reward
            ):
                break
    finally:
        if args.checkpoint_dir:
            print(f"cartpole_server: checkpoint {trainer.save(args.checkpoint_dir)}", flush=True)
        trainer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``relayrl serve CHECKPOINT``: a trained policy behind the policy server's protocol, inference only (no training).

    relayrl serve ~/ray_results/default/PPO_CartPole-v1_.../checkpoint_000010 --port 9900
    relayrl serve CHECKPOINT --host 0.0.0.0 --port 9900 --token "$(cat token.txt)"   # any other address needs a token
    RELAYRL_SERVE_TOKEN=... relayrl serve CHECKPOINT --host 0.0.0.0                   # the token kept out of `ps`
    relayrl serve CHECKPOINT --env CartPole-v1     # a policy trained behind a PolicyServer: an env with its spaces

It prints ``serving ... on http://HOST:PORT`` once it accepts requests (``--port 0``: a free port, printed), a
summary every minute while episodes end, and runs until SIGTERM / Ctrl+C (exit status 143 / 130). The checkpoint's
env is built only to rebuild the trainer (``--env`` replaces it); the spaces served are the policies' own.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

TOKEN_ENV = "RELAYRL_SERVE_TOKEN"


def add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Adds the ``serve`` subcommand to ``relayrl``'s subparsers (``cli.build_parser``)."""
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a checkpoint's policy over HTTP (inference only)",
        description="Serve a trained policy with the policy server's protocol (relayrl.serving); no training.",
    )
    serve.add_argument("checkpoint", help="checkpoint directory (as printed by `relayrl train`)")
    serve.add_argument("--port", type=_port, default=9900, help="TCP port (default 9900; 0: a free one, printed)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    serve.add_argument("--token", default=None, help=f"bearer token clients must send (default: ${TOKEN_ENV})")
    serve.add_argument(
        "--env",
        default=None,
        help="env to rebuild the trainer with (default: the checkpoint's): a Gymnasium id, a registered name or an"
        " import path 'package.module:EnvClass'",
    )
    serve.add_argument("--config", default="{}", help="config overrides as a JSON object")
    serve.add_argument("--explore", action="store_true", help="sample actions instead of acting greedily")
    serve.add_argument("--max-concurrent", type=_port, default=1000, help="most episodes at once (default 1000)")
    serve.set_defaults(handler=run_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    from relayrl.cli import install_stop_handlers
    from relayrl.experiments import UserError
    from relayrl.serving.inference import PolicyActor, inference_env, serve_forever
    from relayrl.serving.policy_server import PolicyServer

    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        from relayrl.serving.policy_server import check_bind

        check_bind(args.host, token)  # before the checkpoint is loaded: a refused bind is a quick error
    except ValueError as e:
        raise UserError(str(e), f"pass --token (or set ${TOKEN_ENV}), or bind --host 127.0.0.1") from e
    if args.max_concurrent < 1:
        raise UserError("--max-concurrent must be >= 1", "e.g. --max-concurrent 100")
    trainer = load_trainer(args.checkpoint, args.env, args.config)
    install_stop_handlers()  # again, in case anything replaced them while loading
    try:
        worker = trainer.workers.local_worker()
        env = inference_env(worker, args.max_concurrent)
        try:
            server = PolicyServer(env, args.host, args.port, auth_token=token, episode_timeout_s=600.0)
        except OSError as e:
            raise UserError(str(e), "choose another --port (0: any free port)") from e
        actor = PolicyActor(worker, env, explore=args.explore)  # acts on the server's event loop thread
        server.start()
        policies = ", ".join(f"{pid!r} ({type(p).__name__})" for pid, p in worker.policy_map.items())
        print(
            f"relayrl serve: serving {policies} from {args.checkpoint} on {server.url} (protocol v1, inference only,"
            f" {'sampled' if args.explore else 'greedy'} actions{', token required' if token else ''})",
            flush=True,
        )
        try:
            serve_forever(actor, server)
        finally:
            print(f"relayrl serve: stopped; {actor.summary()}", flush=True)
    finally:
        trainer.stop()
    return 0


def load_trainer(checkpoint: str, env: str | None, config_json: str) -> Any:
    """The checkpoint's trainer (no remote workers, no evaluation), rebuilt with ``env`` instead of the checkpoint's
    when given; UserError for a checkpoint or env that cannot be used."""
    from relayrl.agents.checkpoint import CheckpointError, read_checkpoint
    from relayrl.agents.registry import get_trainer_class
    from relayrl.agents.trainer import Trainer
    from relayrl.agents.trainer_state import rebuild_config
    from relayrl.cli import parse_json
    from relayrl.experiments import UserError

    overrides = {**parse_json(config_json, "--config"), "num_workers": 0, "evaluation_interval": None}
    overrides["monitor"] = False
    try:
        if env is None:
            return Trainer.from_checkpoint(checkpoint, overrides)
        manifest, state = read_checkpoint(checkpoint, resolve_callables=False)
        trainer_cls = get_trainer_class(manifest["trainer"])
        config = rebuild_config(checkpoint, state["config"], trainer_cls._default_config, overrides)
        trainer = trainer_cls(config=config, env=_env(env))
        try:
            trainer.restore(checkpoint)
        except BaseException:
            trainer.stop()
            raise
        return trainer
    except (CheckpointError, ValueError) as e:
        if "environment" in str(e) or "--env" in str(
            e
        ):  # one this process cannot build: registered by a script, an ExternalEnv
            raise UserError(str(e), f"pass --env: an env of the same spaces, e.g. --env CartPole-v1 or {_EG}") from e
        raise UserError(str(e), "pass a checkpoint directory printed by `relayrl train` (checkpoint_...)") from e


_EG = "--env relayrl.examples.stateless_cartpole:StatelessCartPole"


def _env(name: str) -> Any:
    """``--env``: what ``get_env_creator`` resolves, else an import path 'package.module:EnvClass' (imported)."""
    from relayrl.env.registry import get_env_creator
    from relayrl.multiagent_config import import_path

    try:
        get_env_creator(name)
        return name
    except ValueError:
        if ":" not in name:
            raise
    return import_path(name, "--env")


if __name__ == "__main__":
    from relayrl.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))

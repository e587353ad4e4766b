"""The ``relayrl`` command (also ``python -m relayrl``): train through Ray Tune, roll out or serve a checkpoint, plot.

    relayrl train --run PPO --env CartPole-v1 --stop '{"episode_reward_mean": 475}' --checkpoint-at-end
    relayrl train -f relayrl/tuned_examples/ppo/cartpole-ppo.yaml
    relayrl rollout ~/ray_results/default/PPO_CartPole-v1_.../checkpoint_000003 --run PPO --env CartPole-v1
    relayrl plot ~/ray_results/default
    relayrl export ~/ray_results/default/PPO_CartPole-v1_.../checkpoint_000003 exported/
    relayrl config PPO             # every key of PPO's config with its default and meaning

A user mistake (unknown algorithm, env or config key, bad JSON or YAML, missing checkpoint) ends the command
with exit status 2 and one line ``relayrl: error: ...`` plus a hint; ``-v`` adds the traceback. Everything is
checked before Ray starts. A failed trial ends ``train`` with exit status 1 and the trial's error. SIGTERM and
SIGINT stop Tune and Ray and end the command with ``relayrl: stopped by SIGTERM`` and exit status 143 (130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, Iterator

from relayrl.experiments import UserError
from relayrl.serving.serve_cli import add_serve_parser

EXIT_USER_ERROR = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of the rest of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message, f"see `{self.prog} --help`")


def _int_at_least(minimum: int):
    """An argparse type: an int >= minimum (``--episodes -3`` is a mistake, not zero episodes run silently)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived: unwinds the command so that it stops Tune and Ray and exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stopping = threading.Event()


def _on_stop_signal(signum: int, frame: Any) -> None:
    if _stopping.is_set():  # a second signal while Ray shuts down: leave at once
        os._exit(128 + signum)
    _stopping.set()
    raise Stopped(signum)


def install_stop_handlers() -> None:
    """SIGTERM and SIGINT raise Stopped in the main thread. Called again after ``ray.init``, which installs its
    own SIGTERM handler (Ray's core worker then prints a C++ stack dump); Tune's SIGINT handler is turned off
    (TUNE_DISABLE_SIGINT_HANDLER) so that a first Ctrl+C stops the run instead of only asking it to."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


@contextlib.contextmanager
def _stop_handlers() -> Iterator[None]:
    """The stop handlers while a command runs; the previous ones afterwards (``main`` is called in-process too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    _stopping.clear()
    install_stop_handlers()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _shutdown_ray() -> None:
    """Ends this driver's Ray session: a Ray it started goes away with its trials, on a cluster the trials'
    actors die with their driver."""
    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more output: Tune's reports and full tracebacks (-vv: Ray's logs too)",
    )
    parser = _Parser(prog="relayrl", description="Train, roll out, serve and plot relayrl agents.", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train through Ray Tune",
        description="Train one or more experiments through Ray Tune.",
    )
    train.add_argument("--run", help="algorithm to train, e.g. PPO, PG, A2C, IMPALA, DQN")
    train.add_argument("--env", help="environment: a Gymnasium id such as CartPole-v1")
    train.add_argument("--config", default="{}", help="trainer config overrides as a JSON object")
    train.add_argument("--stop", default="{}", help="stopping criteria as JSON, e.g. '{\"episode_reward_mean\": 475}'")
    train.add_argument("-f", "--config-file", dest="file", help="experiment YAML file (name: {run, env, stop, config})")
    train.add_argument("--experiment-name", default="default", help="experiment directory name (without -f)")
    train.add_argument(
        "--checkpoint-freq", type=_int_at_least(0), default=None, help="save a checkpoint every N iterations"
    )
    train.add_argument("--checkpoint-at-end", action="store_true", help="save a checkpoint when each trial ends")
    train.add_argument("--local-dir", default=None, help="results directory (default ~/ray_results)")
    train.add_argument("--restore", default=None, help="checkpoint directory to resume training from")
    train.add_argument(
        "--num-samples", type=_int_at_least(1), default=None, help="repetitions of each grid-search point"
    )
    train.add_argument("--ray-address", default=None, help="address of a running Ray cluster (default: start one)")
    train.add_argument(
        "--ray-num-cpus",
        type=_int_at_least(1),
        default=None,
        help="CPUs of the local Ray instance (default: enough for the largest trial)",
    )
    train.add_argument("--plot", action="store_true", help="write a learning-curve PNG into each trial directory")
    train.add_argument(
        "--tune",
        action="store_true",
        help="run through Ray Tune even a single trial with num_workers 0 (which otherwise runs in"
        " this process, without starting Ray; the result files are the same)",
    )

    rollout = sub.add_parser(
        "rollout",
        parents=[common],
        help="run a checkpoint without exploration",
        description="Roll out a trained checkpoint with deterministic actions.",
    )
    rollout.add_argument("checkpoint", help="checkpoint directory (as printed by `relayrl train`)")
    rollout.add_argument("--run", help="algorithm of the checkpoint (checked against it)")
    rollout.add_argument("--env", help="environment to roll out in (default: the checkpoint's)")
    rollout.add_argument("--episodes", type=_int_at_least(1), default=None, help="number of episodes (default 10)")
    rollout.add_argument("--steps", type=_int_at_least(1), default=None, help="stop after this many environment steps")
    rollout.add_argument("--render", action="store_true", help="render the environment (render_mode='human')")
    rollout.add_argument(
        "--video",
        default=None,
        metavar="DIR",
        help="record every episode as DIR/rollout-episode-<n>.mp4 (needs the video extra: moviepy)",
    )
    rollout.add_argument("--out", default=None, help="write each episode as a JSON line to this file")
    rollout.add_argument("--config", default="{}", help="config overrides as a JSON object")

    export = sub.add_parser(
        "export",
        parents=[common],
        help="export a checkpoint's policy to ONNX/TorchScript",
        description="Export a policy (ONNX, TorchScript, JSON sidecar) with its filter.",
    )
    export.add_argument("checkpoint", help="checkpoint directory (as printed by `relayrl train`)")
    export.add_argument("export_dir", help="directory to write model.onnx, model.pt and export.json into")
    export.add_argument(
        "--policy-id",
        default=None,
        help="policy to export (multi-agent; default: the only policy, or every policy into EXPORT_DIR/<id>/)",
    )
    export.add_argument("--config", default="{}", help="config overrides as a JSON object")

    config = sub.add_parser(
        "config",
        parents=[common],
        help="an algorithm's config keys, defaults and docs",
        description="Print every config key of an algorithm with its default and meaning.",
    )
    config.add_argument("algorithm", help="algorithm name, e.g. PPO, DQN, IMPALA")

    plot = sub.add_parser(
        "plot",
        parents=[common],
        help="learning curve of a run",
        description="Plot episode_reward_mean against timesteps_total from progress.csv.",
    )
    plot.add_argument("result_dir", help="a trial directory or an experiment directory of trials")
    plot.add_argument("--out", default=None, help="PNG path (default RESULT_DIR/learning_curve.png)")
    add_serve_parser(sub, common)  # relayrl serve CHECKPOINT: relayrl/serving/serve_cli.py
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = sum(a.count("v") for a in argv if a.startswith("-") and set(a[1:]) == {"v"}) + argv.count("--verbose")
    try:
        with _stop_handlers():
            try:
                args = build_parser().parse_args(argv)
                verbose = max(verbose, args.verbose)
                commands = {"train": train, "rollout": rollout, "plot": plot, "export": export, "config": config}
                return (commands.get(args.command) or args.handler)(args)  # serve: its handler
            except Stopped:
                _shutdown_ray()  # still under the handlers: a second signal exits at once
                raise
    except Stopped as e:
        print(f"relayrl: stopped by {e.name}", file=sys.stderr)
        return 128 + e.signum
    except UserError as e:
        if verbose:
            traceback.print_exc()
        print(f"relayrl: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"relayrl: hint: {e.hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("relayrl: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - anything else: one line, the traceback only with -v
        if verbose:
            traceback.print_exc()
        print(f"relayrl: error: {type(e).__name__}: {e}", file=sys.stderr)
        print("relayrl: hint: rerun with -v for the full traceback", file=sys.stderr)
        return EXIT_FAILED


def parse_json(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{flag} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}): {text!r}",
            f"quote the JSON for the shell: {flag} '{{\"lr\": 0.001}}'",
        ) from e
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a JSON object, got {text!r}", f"e.g. {flag} '{{\"lr\": 0.001}}'")
    return value


# --- train -------------------------------------------------------------------------------------------------
def experiments_from_args(args: argparse.Namespace) -> dict[str, dict]:
    from relayrl.experiments import load_experiment_file

    config, stop = parse_json(args.config, "--config"), parse_json(args.stop, "--stop")
    if args.file:
        experiments = load_experiment_file(args.file)
        for spec in experiments.values():  # flags given on the command line apply to every experiment
            if args.run:
                spec["run"] = args.run
            if args.env:
                spec["env"] = args.env
            if config:
                spec["config"] = {**(spec.get("config") or {}), **config}
            if stop:
                spec["stop"] = stop
    else:
        if not args.run or not (args.env or config.get("env")):
            raise UserError(
                "train needs --run and --env, or -f FILE.yaml",
                "e.g. relayrl train --run PPO --env CartPole-v1 --stop '{\"training_iteration\": 10}'",
            )
        experiments = {
            args.experiment_name: {
                "run": args.run,
                "env": args.env or config.pop("env"),
                "stop": stop,
                "config": config,
            }
        }
    for spec in experiments.values():
        for key, value in (
            ("checkpoint_freq", args.checkpoint_freq),
            ("restore", args.restore),
            ("num_samples", args.num_samples),
        ):
            if value is not None:
                spec[key] = value
        if args.checkpoint_at_end:
            spec["checkpoint_at_end"] = True
    return experiments


def train(args: argparse.Namespace) -> int:
    from relayrl.experiments import (
        PlacementTimeout,
        normalize_experiments,
        resources_needed,
        run_experiments,
        start_ray,
        validate_experiments,
    )
    from relayrl.local_run import runs_in_process

    experiments = experiments_from_args(args)
    validate_experiments(experiments)
    cpus, gpus = resources_needed(experiments)
    experiments = normalize_experiments(experiments, args.local_dir)
    if not (args.tune or args.ray_address or args.ray_num_cpus) and runs_in_process(experiments):
        have_gpus = _cuda_devices() if gpus else 0
        if have_gpus < gpus:  # as through Tune: a GPU asked for and not there is an error, not a silent CPU run
            raise UserError(
                f"a trial asks for {gpus:g} GPUs (num_gpus) but this machine has {have_gpus}",
                "set num_gpus: 0 to train on CPU",
            )
        trials = [_train_in_process(experiments)]
        return _report(trials, args)
    num_cpus = args.ray_num_cpus or (None if args.ray_address else max(os.cpu_count() or 1, cpus))
    if args.ray_num_cpus is not None and args.ray_num_cpus < cpus:
        raise UserError(
            f"a trial needs {cpus} CPUs but --ray-num-cpus is {args.ray_num_cpus}",
            "raise --ray-num-cpus or lower num_workers in --config",
        )
    start_ray(args.ray_address, num_cpus, args.verbose, need=cpus, need_gpus=gpus)
    install_stop_handlers()  # again: ray.init replaced the SIGTERM handler
    with _env_var("TUNE_DISABLE_SIGINT_HANDLER", "1"):
        try:
            trials = run_experiments(experiments, verbose=args.verbose)
        except PlacementTimeout as e:
            if args.verbose:
                traceback.print_exc()
            print(f"relayrl: error: {e}", file=sys.stderr)
            print(f"relayrl: hint: {e.hint}", file=sys.stderr)
            return EXIT_FAILED
    return _report(trials, args)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _train_in_process(experiments: dict[str, dict]) -> Any:
    from relayrl.local_run import LocalTrial
    from relayrl.tune_callbacks import ProgressPrinter

    ((name, spec),) = experiments.items()
    printer = ProgressPrinter()
    trial = LocalTrial(name, spec)
    try:
        trial.run(lambda t, result: printer.result(t, str(t), result))
    except (Stopped, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - reported like a failed Tune trial: one line, the traceback in error.txt
        trial.error = f"{type(e).__module__}.{type(e).__qualname__}: {e}".replace("builtins.", "")
        os.makedirs(trial.path, exist_ok=True)
        with open(os.path.join(trial.path, "error.txt"), "w") as f:
            f.write(traceback.format_exc())
    printer.last(trial, str(trial), trial.last_result)
    return trial


def _report(trials: list, args: argparse.Namespace) -> int:
    from relayrl.experiments import trial_error

    failed = [t for t in trials if t.status != "TERMINATED"]
    for t in trials:
        result = t.last_result or {}
        per_policy = result.get("policy_reward_mean") or {}  # multi-agent: each policy's too
        print(
            f"{t}: {t.status}, {result.get('training_iteration', 0)} iterations, "
            f"{result.get('timesteps_total', 0)} timesteps, episode_reward_mean {result.get('episode_reward_mean')}"
            + (f", policy_reward_mean {per_policy}" if len(per_policy) > 1 else "")
        )
        print(f"  results: {t.path}")
        if t.checkpoint is not None:
            print(f"  checkpoint: {t.checkpoint.path}")
        if args.plot and t.path and os.path.isfile(os.path.join(t.path, "progress.csv")):
            from relayrl.utils.plot import plot_learning_curve

            print(f"  plot: {plot_learning_curve(t.path)}")
    if failed:
        t = failed[0]
        print(f"relayrl: error: trial {t} {t.status}: {trial_error(t)}", file=sys.stderr)
        error_file = os.path.join(t.path or "", "error.txt")
        where = f"full traceback in {error_file}" if os.path.isfile(error_file) else "rerun with -v"
        print(f"relayrl: hint: {len(failed)} of {len(trials)} trials did not finish; {where}", file=sys.stderr)
        return EXIT_FAILED
    last = [t for t in trials if t.checkpoint is not None]
    if last:
        t = last[-1]
        print(
            f"roll out with: relayrl rollout {t.checkpoint.path} --run {t.trainable_name} "
            f"--env {t.config.get('env')} --episodes 10"
        )
    return 0


@contextlib.contextmanager
def _env_var(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


# --- rollout -----------------------------------------------------------------------------------------------
def rollout(args: argparse.Namespace) -> int:
    from relayrl.rollout import run_rollout

    return run_rollout(args)


def config(args: argparse.Namespace) -> int:
    from relayrl.agents.registry import get_trainer_class
    from relayrl.config import describe_config

    try:
        trainer_cls = get_trainer_class(args.algorithm)
    except ValueError as e:
        raise UserError(str(e), "e.g. relayrl config PPO") from e
    print(describe_config(trainer_cls))
    return 0


def export(args: argparse.Namespace) -> int:
    from relayrl.agents.checkpoint import CheckpointError
    from relayrl.agents.trainer import Trainer

    try:
        overrides = {**parse_json(args.config, "--config"), "num_workers": 0, "evaluation_interval": None}
        trainer = Trainer.from_checkpoint(args.checkpoint, {**overrides, "monitor": False})
    except CheckpointError as e:
        raise UserError(str(e), "pass a checkpoint directory printed by `relayrl train` (checkpoint_...)") from e
    policy_ids = sorted(trainer.workers.local_worker().policy_map)
    try:
        if args.policy_id is not None and args.policy_id not in policy_ids:
            raise UserError(f"no policy {args.policy_id!r} in this checkpoint", f"choose one of {policy_ids}")
        if args.policy_id is None and len(policy_ids) > 1:  # multi-agent: every policy into its own directory
            from relayrl.policy.export import policy_dir_name

            exports = {
                os.path.join(args.export_dir, policy_dir_name(pid)): (pid, s)
                for pid, s in trainer.export_policy_models(args.export_dir).items()
            }
        else:
            pid = args.policy_id or policy_ids[0]
            exports = {args.export_dir: (pid, trainer.export_policy_model(args.export_dir, pid))}
    finally:
        trainer.stop()
    for where, (pid, sidecar) in exports.items():
        for kind, name in sidecar["files"].items():
            if name:
                print(f"{kind}: {os.path.join(where, name)}")
        print(f"sidecar: {os.path.join(where, 'export.json')}" + (f"  (policy {pid!r})" if len(exports) > 1 else ""))
    if len(exports) > 1:
        print(f"index: {os.path.join(args.export_dir, 'policies.json')}")
    return 0


# --- plot --------------------------------------------------------------------------------------------------
def plot(args: argparse.Namespace) -> int:
    from relayrl.utils.plot import plot_learning_curve

    if not os.path.isdir(os.path.expanduser(args.result_dir)):
        raise UserError(
            f"result directory {args.result_dir} does not exist",
            "pass a trial directory under ~/ray_results/<experiment>/",
        )
    try:
        print(plot_learning_curve(os.path.expanduser(args.result_dir), args.out))
    except FileNotFoundError as e:
        raise UserError(str(e), "a result directory holds progress.csv (written by `relayrl train`)") from e
    except ImportError as e:
        raise UserError(f"plotting needs matplotlib: {e}", "pip install 'relayrl[plot]'") from e
    return 0


if __name__ == "__main__":
    sys.exit(main())

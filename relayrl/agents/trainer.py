"""Trainer: config + WorkerSet + PolicyOptimizer, with train / save / restore / compute_action.

    trainer = PPOTrainer(env="CartPole-v1", config={"num_workers": 2})
    result = trainer.train()                    # one iteration -> result dict
    path = trainer.save()                       # a checkpoint directory
    trainer.restore(path)
    action = trainer.compute_action(obs)

Trainers are plain classes (importing relayrl does not import Ray Tune); ``relayrl.agents.tune_adapter``
wraps each one as a ``ray.tune.Trainable`` for ``tune.run_experiments`` and the CLI. An algorithm is
written with ``build_trainer`` (trainer_template.py), not by subclassing this directly.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import tempfile
import time
from datetime import datetime
from typing import Any

import numpy as np

import relayrl
from relayrl.agents import checkpoint as ckpt
from relayrl.agents.trainer_state import (  # noqa: F401 - check_counters is public here (ES / ARS restore)
    apply_state,
    check_counters,
    checked_state,
    current_state,
    env_from_manifest,
    env_reference,
    portable_config,
    rebuild_config,
    space_signature,
)
from relayrl.config import (  # noqa: F401 - with_common_config is re-exported for the algorithms
    COMMON_CONFIG,
    merge_dicts,
    prepare_config,
    with_common_config,
)
from relayrl.env.registry import get_env_creator
from relayrl.evaluation.metrics import MetricsWindow, RolloutMetrics
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.models.spaces import UnsupportedSpaceException, clip_action, is_nested, unflatten_action
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID

logger = logging.getLogger(__name__)


class Trainer:
    """An algorithm: its config, a WorkerSet and (for those built with ``build_trainer``, the way to write one) a
    PolicyOptimizer; ``train()`` runs one iteration and returns its result dict.

    Args:
        config: overrides of the algorithm's DEFAULT_CONFIG (validated: an unknown key or a bad value is a
            ValueError naming it).
        env: a Gymnasium id, a name given to ``register_env``, an env class or a creator; else ``config["env"]``.
        logger_creator: under Tune, the trial directory (checkpoints go there; Tune writes the result files); a
            value that is not a string is ignored.
        logdir: a directory for ``params.json``, ``result.json``, ``progress.csv`` and TensorBoard events of
            every ``train()`` (the files a Tune trial has); ``save()`` puts checkpoints there too.
    """

    _name = "Trainer"
    _default_config: dict = COMMON_CONFIG
    _policy: Any = None

    def __init__(
        self, config: dict | None = None, env: Any = None, logger_creator: Any = None, logdir: str | None = None
    ):
        self.raw_user_config = dict(config or {})
        env = env if env is not None else self.raw_user_config.get("env")
        # Translated, validated and merged once: everything downstream reads self.config[key].
        self.config = prepare_config(self.raw_user_config, self._default_config, self._name, self._validate_config)
        self.config["env"] = env
        logging.getLogger("relayrl").setLevel(str(self.config["log_level"]).upper().replace("WARNING", "WARN"))
        self.env_creator = get_env_creator(env)
        self._env_id = env if isinstance(env, str) else getattr(env, "__name__", repr(env))
        self.iteration = 0
        self._time_total = 0.0
        self._timesteps_total = 0
        self._metrics = MetricsWindow(self.config["metrics_smoothing_episodes"])
        self._logdir = logdir or (logger_creator if isinstance(logger_creator, str) else None)
        self._result_logger = None
        import torch

        # The learner uses the CPUs reserved for the driver: torch's default (all cores) makes its threads
        # fight the rollout workers' processes and each other, which is many times slower for small networks.
        torch.set_num_threads(max(1, int(self.config["num_cpus_for_driver"])))
        if self.config["seed"] is not None:
            np.random.seed(self.config["seed"])
            torch.manual_seed(self.config["seed"])
        if self.config["monitor"]:
            self.config["_video_dir"] = self.logdir  # read by EnvContext.from_config in every worker
        try:
            self._init(self.config, self.env_creator)
        except UnsupportedSpaceException as e:  # raised by a policy or the catalog: name this algorithm
            raise e.for_algorithm(self._name) from None
        self._evaluation_workers: WorkerSet | None = None
        if logdir is not None:
            from relayrl.utils.result_logger import ResultLogger

            self._result_logger = ResultLogger(logdir, self.config)

    # --- to be provided by build_trainer ---------------------------------------------------------------------
    def _init(self, config: dict, env_creator: Any) -> None:
        raise NotImplementedError

    def _train(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def _validate_config(config: dict) -> None:
        pass

    # --- training ------------------------------------------------------------------------------------------
    def train(self) -> dict:
        start = time.time()
        result = self._train()
        self.iteration += 1
        elapsed = time.time() - start
        self._time_total += elapsed
        steps_this_iter = result.pop("timesteps_this_iter", 0)
        self._timesteps_total += steps_this_iter
        # Agent steps come from the policy optimizer (build_trainer); a trainer without one (ES, ARS) is
        # single-agent: one agent step per env step.
        agent_steps_total = result.pop("agent_steps_total", self._timesteps_total)
        result.update(
            training_iteration=self.iteration,
            timesteps_this_iter=steps_this_iter,
            timesteps_total=self._timesteps_total,
            agent_steps_this_iter=result.pop("agent_steps_this_iter", steps_this_iter),
            agent_steps_total=agent_steps_total,
            time_this_iter_s=elapsed,
            time_total_s=self._time_total,
            num_steps_per_s=steps_this_iter / elapsed if elapsed > 0 else 0.0,
            num_healthy_workers=self.workers.num_healthy_workers,
            num_recreated_workers=self.workers.num_recreated,
            date=datetime.now().strftime("%Y-%m-%d_%H-%M-%S"),
            hostname=platform.node(),
            pid=os.getpid(),
            done=False,
        )
        interval = self.config["evaluation_interval"]
        if interval and self.iteration % interval == 0:
            result["evaluation"] = self._evaluate()
        callback = (self.config.get("callbacks") or {}).get("on_train_result")
        if callback is not None:
            callback({"trainer": self, "result": result})
        if self._result_logger is not None:
            self._result_logger.log(result)
        return result

    def collect_metrics(self) -> dict:
        """Episode statistics over the last ``metrics_smoothing_episodes`` episodes of every worker. A remote
        worker that does not answer within ``collect_metrics_timeout`` is left out; one that died is handled by
        ``WorkerSet.handle_worker_failure`` (its unreported episodes are lost)."""
        episodes: list[RolloutMetrics] = self.workers.local_worker().get_metrics()
        perf = [self.workers.local_worker().sampler_perf()]
        if self.workers.remote_workers():
            # One round trip (and one collect_metrics_timeout) for both, as before the failure handling.
            timeout = self.config["collect_metrics_timeout"]
            for _, (metrics, worker_perf) in self.workers.gather(
                lambda w, i: w.apply.remote(_metrics_and_perf), timeout
            ):
                episodes.extend(metrics)
                perf.append(worker_perf)
        result = self._metrics.add(episodes)
        perf = [p for p in perf if p]
        result["sampler_perf"] = {k: float(np.mean([p[k] for p in perf])) for k in perf[0]} if perf else {}
        return result

    def _evaluate(self) -> dict:
        """Runs ``evaluation_num_episodes`` episodes with ``evaluation_config`` applied; returns their summary."""
        if self._evaluation_workers is None:
            eval_config = merge_dicts(
                self.config,
                {
                    **self.config["evaluation_config"],
                    "num_envs_per_worker": 1,
                    "sample_batch_size": 1,
                    "batch_mode": "complete_episodes",
                },
            )
            if eval_config["monitor"]:
                eval_config["_video_dir"] = os.path.join(self.logdir, "evaluation")
            policies = worker_policies(eval_config, self._policy)
            self._evaluation_workers = WorkerSet(self.env_creator, policies, eval_config, num_workers=0)
        worker = self._evaluation_workers.local_worker()
        local = self.workers.local_worker()
        worker.set_weights(local.get_weights())
        worker.set_filter_states(local.get_filter_states())
        episodes: list[RolloutMetrics] = []
        while len(episodes) < self.config["evaluation_num_episodes"]:
            worker.sample()
            episodes.extend(worker.get_metrics())
        episodes = episodes[: self.config["evaluation_num_episodes"]]
        window = MetricsWindow(len(episodes))
        return window.add(episodes)

    # --- acting --------------------------------------------------------------------------------------------
    def compute_action(
        self,
        observation: Any,
        state: list | None = None,
        prev_action: Any = None,
        prev_reward: Any = None,
        info: Any = None,
        policy_id: str = DEFAULT_POLICY_ID,
        full_fetch: bool = False,
        explore: bool | None = None,
    ) -> Any:
        """The policy's action for one raw observation (preprocessed and filtered like in training, without
        updating the filter; Box values clipped to their bounds when ``clip_actions``, as the sampler steps the
        env). Returns ``(action, state_out, extra)`` when ``state`` is given or ``full_fetch``,
        else the action alone. Multi-agent: ``policy_id`` is the policy of the agent (``policy_mapping_fn``); it
        may be left out when the trainer has one policy.

        A recurrent policy (``model.use_lstm``) is driven one episode at a time, like the sampler does::

            state, prev_action, prev_reward = trainer.get_policy().get_initial_state(), 0, 0.0  # episode start
            action, state, _ = trainer.compute_action(obs, state, prev_action, prev_reward)
            obs, reward, ... = env.step(action); prev_action, prev_reward = action, reward

        Without ``state`` it is a ValueError (never a silent start from the initial state at every step, which
        would act as a policy without memory); ``prev_action`` / ``prev_reward`` (zeros at an episode's start, of
        the action's shape for a Box; the reward clipped as in training) are required when the model reads them
        (``model.lstm_use_prev_action_reward``) and ignored otherwise."""
        worker = self.workers.local_worker()
        policy_id = self._known_policy_id(policy_id)
        obs = worker.preprocessors[policy_id].transform(observation)
        obs = worker.filters[policy_id](np.asarray(obs)[None], update=False)[0]
        policy = worker.policy_map[policy_id]
        if policy.is_recurrent():
            _check_recurrent_inputs(policy, policy_id, state, prev_action, prev_reward)
        kwargs = {} if explore is None else {"explore": explore}
        action, state_out, extra = policy.compute_single_action(
            obs, state or None, prev_action=prev_action, prev_reward=prev_reward, info=info, **kwargs
        )
        if is_nested(policy.action_space):  # the policy's flat row -> the env's tuple / dict
            action = unflatten_action(action, policy.action_space)
        if self.config["clip_actions"]:  # as the sampler steps the env
            action = clip_action(action, policy.action_space)
        if state is not None or full_fetch:
            return action, state_out, extra
        return action

    def export_policy_model(self, export_dir: str, policy_id: str = DEFAULT_POLICY_ID) -> dict:
        """Exports a policy (ONNX, TorchScript, JSON sidecar) with this trainer's observation filter baked in."""
        worker = self.workers.local_worker()
        policy_id = self._known_policy_id(policy_id)
        return worker.policy_map[policy_id].export_model(
            export_dir, obs_filter=worker.filters[policy_id], raw_obs_space=worker.preprocessors[policy_id].obs_space
        )

    def export_policy_models(self, export_dir: str) -> dict[str, dict]:
        """Exports every policy, each into ``export_dir/<policy_dir_name(id)>`` (the id, percent-encoded where it is
        no safe file name: "player/1" -> player%2F1), and writes ``export_dir/policies.json`` ({id: directory})."""
        from relayrl.policy.export import write_policy_index

        dirs = write_policy_index(export_dir, list(self.workers.local_worker().policy_map))
        return {pid: self.export_policy_model(os.path.join(export_dir, d), pid) for pid, d in dirs.items()}

    def _known_policy_id(self, policy_id: str) -> str:
        """``policy_id`` if this trainer has it; the only policy for the default id; else a ValueError naming them."""
        policy_map = self.workers.local_worker().policy_map
        if policy_id in policy_map:
            return policy_id
        if policy_id in (DEFAULT_POLICY_ID, "default"):  # "default": the RLlib 0.7-era id
            if DEFAULT_POLICY_ID in policy_map or len(policy_map) == 1:
                return DEFAULT_POLICY_ID if DEFAULT_POLICY_ID in policy_map else next(iter(policy_map))
        raise ValueError(f"no policy {policy_id!r} in this trainer; its policies are {sorted(policy_map)}")

    def get_policy(self, policy_id: str = DEFAULT_POLICY_ID):
        return self.workers.local_worker().get_policy(policy_id)

    def get_weights(self, policies: list[str] | None = None) -> dict:
        return self.workers.local_worker().get_weights(policies)

    def set_weights(self, weights: dict) -> None:
        self.workers.local_worker().set_weights(weights)
        self.workers.sync_weights()

    @property
    def local_evaluator(self) -> RolloutWorker:
        return self.workers.local_worker()

    @property
    def remote_evaluators(self) -> list:
        return self.workers.remote_workers()

    # --- checkpoints ---------------------------------------------------------------------------------------
    def save(self, checkpoint_dir: str | None = None) -> str:
        """Writes a checkpoint directory and returns its path (``restore`` takes it)."""
        base = checkpoint_dir or self.logdir
        path = os.path.join(base, f"checkpoint_{self.iteration:06d}")
        return self.save_to_path(path)

    def save_to_path(self, path: str) -> str:
        local = self.workers.local_worker()
        manifest = {
            "library": "relayrl",
            "library_version": relayrl.__version__,
            "trainer": self._name,
            **env_reference(self.config["env"]),
            "spaces": {pid: space_signature(p) for pid, p in local.policy_map.items()},
            "counters": {
                "iteration": self.iteration,
                "timesteps_total": self._timesteps_total,
                "time_total_s": self._time_total,
                "episodes_total": self._metrics.episodes_total,
                "agent_steps_total": int(getattr(self.optimizer, "num_agent_steps_sampled", 0)),
            },
        }
        state = {
            "config": portable_config(self.config),
            "policies": {pid: p.get_state() for pid, p in local.policy_map.items()},
            "filters": local.get_filter_states(),
            "optimizer": self.optimizer.save(),
            "trainer": self._extra_state(),
        }
        return ckpt.write_checkpoint(path, manifest, state)

    def restore(self, checkpoint_path: str) -> None:
        """Loads a checkpoint, all or nothing. Everything in it is read and checked against this trainer first
        (file checksums, manifest, counters, weights, optimizer and filter state, algorithm state), then
        applied; on any problem a CheckpointError names the file or field and this trainer is left as it was."""
        # The stored config is not applied: its functions need not be importable here (e.g. a script's __main__).
        manifest, state = ckpt.read_checkpoint(checkpoint_path, resolve_callables=False)
        loaded = checked_state(self, checkpoint_path, manifest, state)
        backup = current_state(self)
        try:
            apply_state(self, loaded)
        except Exception as e:
            apply_state(self, backup)  # whatever was applied before the failure is undone
            raise ckpt.CheckpointError(
                f"checkpoint {checkpoint_path} could not be loaded ({type(e).__name__}: {e}); this trainer is unchanged"
            ) from e
        self.workers.sync_weights()
        if self.workers.remote_workers():
            import ray

            filters = ray.put(self.workers.local_worker().get_filters())
            ray.get([w.sync_filters.remote(filters) for w in self.workers.remote_workers()])

    @classmethod
    def from_checkpoint(cls, path: str, config_overrides: dict | None = None) -> "Trainer":
        """Rebuilds the trainer named in a checkpoint's manifest with the stored config, then restores it."""
        from relayrl.agents.registry import get_trainer_class

        manifest, state = ckpt.read_checkpoint(path, resolve_callables=False)
        name = manifest["trainer"]
        try:
            trainer_cls = get_trainer_class(name)
        except ValueError as e:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was written by trainer {name!r}, which this relayrl cannot build: {e}"
            ) from e
        stored = state.get("config")
        if not isinstance(stored, dict):
            raise ckpt.CheckpointError(f"checkpoint {path}: its state has no 'config' object")
        config = rebuild_config(path, stored, trainer_cls._default_config, config_overrides or {})
        env = (config_overrides or {}).get("env") or stored.get("env") or env_from_manifest(path, manifest)
        try:
            trainer = trainer_cls(config=config, env=env)
        except ValueError as e:  # a config key of the wrong type or value: validate_config names it
            raise ckpt.CheckpointError(
                f"checkpoint {path}: cannot rebuild its {name} trainer from the stored config: {e}"
            ) from e
        try:
            trainer.restore(path)
        except BaseException:
            trainer.stop()
            raise
        return trainer

    def _extra_state(self) -> dict:
        return {}

    def _restore_extra_state(self, state: dict) -> None:
        pass

    # --- lifecycle -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        if getattr(self, "_result_logger", None) is not None:
            self._result_logger.close()
            self._result_logger = None
        if getattr(self, "workers", None) is not None:
            self.workers.stop()
        if self._evaluation_workers is not None:
            self._evaluation_workers.stop()
        if getattr(self, "optimizer", None) is not None:
            self.optimizer.stop()

    @property
    def logdir(self) -> str:
        """Where ``save()`` puts checkpoints by default: made on first use under ~/ray_results."""
        if self._logdir is None:
            base = os.path.expanduser("~/ray_results")
            os.makedirs(base, exist_ok=True)
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            env = re.sub(r"[^\w.-]+", "_", str(self._env_id))  # "ALE/Pong-v5", "pettingzoo:classic/tictactoe-v3"
            self._logdir = tempfile.mkdtemp(prefix=f"{self._name}_{env}_{stamp}_", dir=base)
        os.makedirs(self._logdir, exist_ok=True)
        return self._logdir

    def __repr__(self) -> str:
        return f"{self._name}Trainer(env={self._env_id!r}, iteration={self.iteration})"


def _check_recurrent_inputs(policy: Any, policy_id: str, state: Any, prev_action: Any, prev_reward: Any) -> None:
    """A ValueError naming what ``compute_action`` of a recurrent policy lacks: its state, or the previous action
    and reward that its model reads."""
    from relayrl.evaluation.sampler import wants_prev_action_reward

    if not state:
        raise ValueError(
            f"policy {policy_id!r} is recurrent: pass its state, trainer.get_policy({policy_id!r}).get_initial_state()"
            " at an episode's start, then the state_out of the previous call (action, state_out, extra ="
            " trainer.compute_action(obs, state, ...))"
        )
    if wants_prev_action_reward(policy) and (prev_action is None or prev_reward is None):
        raise ValueError(
            f"the model of policy {policy_id!r} reads the previous action and reward"
            " (model.lstm_use_prev_action_reward): pass prev_action and prev_reward (zeros at an episode's start)"
        )


def worker_policies(config: dict, default_policy: Any) -> Any:
    """What a trainer's WorkerSets are built with: ``multiagent.policies`` with a None class replaced by the
    trainer's policy class; without multi-agent policies, that class."""
    specs = (config.get("multiagent") or {}).get("policies") or {}
    if not specs:
        return default_policy
    return {pid: (cls or default_policy, obs, act, conf) for pid, (cls, obs, act, conf) in specs.items()}


def _metrics_and_perf(worker: RolloutWorker) -> tuple[list, dict]:
    return worker.get_metrics(), worker.sampler_perf()

"""TorchPolicy: a Policy whose model is a torch module and whose learning is a loss function.

An algorithm does not subclass this; it calls ``build_torch_policy(name, loss_fn, ...)`` (see
``torch_policy_template.py``). Learning comes in two grains:

    stats = policy.learn_on_batch(batch)               # one gradient step on a whole SampleBatch
    tensors = policy.load_batch(batch)                 # once per train batch (LocalMultiGPUOptimizer) ...
    stats = policy.learn_on_tensors(minibatch)         # ... then one step per minibatch of those tensors

and one update is these public steps, which a caller that computes the gradients itself (the multi-GPU towers,
several model replicas) drives directly:

    loss, stats, fetches = policy.compute_loss(model, tensors)   # the loss function's output, normalised
    policy.zero_grad(); loss.backward()                           # (or gradients summed into .grad by hand)
    out = policy.apply_update([loss], tensors, stats, fetches)    # NaN check, grad clipping, optimizer step
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from relayrl.models.action_dist import ActionDistribution
from relayrl.models.catalog import ModelCatalog
from relayrl.models.torch_model import TorchModel
from relayrl.policy.finite_checks import check_update
from relayrl.policy.policy import Policy
from relayrl.policy.rnn_sequencing import chop_into_sequences, flatten_sequences
from relayrl.policy.sample_batch import SampleBatch
from relayrl.utils.blas import single_blas_thread
from relayrl.utils.schedules import PiecewiseSchedule
from relayrl.utils.torch_optim import Adam

LEARNER_STATS_KEY = "learner_stats"


def vf_preds_fetches(policy: "TorchPolicy", input_dict, state_batches, model: TorchModel, action_dist) -> dict:
    """``extra_action_out_fn`` that records the value estimate of every observation (actor-critics). Kept for
    policies written against it: ``build_torch_policy(extra_action_out_fn=vf_preds_fetches)`` is read as
    ``needs_value=True``, which the template's own acting paths serve (the numpy fast path included)."""
    return {SampleBatch.VF_PREDS: model.value_function()}


class TorchPolicy(Policy):
    """A Policy whose model is a torch module and whose learning is a loss function. Built with
    ``build_torch_policy`` (which fills in the hooks below), not subclassed; a RolloutWorker constructs it.

    Args:
        observation_space: the (preprocessed) observation space the model takes.
        action_space: the env's action space; it picks the action distribution when ``dist_class`` is None.
        config: the trainer config. The keys read here: ``model`` (the model config for ``ModelCatalog``),
            ``num_gpus`` (> 0 and CUDA available: the model lives on ``cuda``, else on the CPU), ``lr`` (the
            learning rate, 1e-4 when absent), ``lr_schedule`` (``[[timestep, lr], ...]``, a PiecewiseSchedule of
            the global timestep; None: a constant ``lr``), ``seed`` (the numpy generator of the CPU fast path's
            action sampling), ``explore`` (sample, or the deterministic action; True when absent), ``grad_clip``
            (the gradient norm is clipped to it; None or 0: no clipping), ``check_nan`` (refuse a non-finite
            loss or gradient; True when absent) and ``observation_filter`` (refused unless "NoFilter" when the
            observation has an action mask, which a filter would standardise).
        model: the TorchModel to use (moved to the policy's device); None: ``ModelCatalog.get_model`` builds one
            from ``config["model"]`` with the action distribution's number of outputs.
        dist_class: the ActionDistribution class; None: ``ModelCatalog.get_action_dist(action_space,
            config["model"])`` picks it.
    """

    # Hooks, filled in by build_torch_policy (see its docstring for their signatures).
    _loss_fn: Callable | None = None
    _stats_fn: Callable | None = None
    _stats_fn_takes_loss_stats: bool = False  # stats_fn(policy, train_batch, loss_stats) rather than (policy, batch)
    _postprocess_fn: Callable | None = None
    _postprocess_takes_last_r: bool = False  # postprocess_fn accepts the bootstrap values as ``last_r=``
    _extra_action_out_fn: Callable | None = None
    _extra_grad_process_fn: Callable | None = None
    _optimizer_fn: Callable | None = None
    # The policy records the value estimate of every observation while acting (``vf_preds``, for GAE and
    # bootstrapping); build_torch_policy's ``needs_value``.
    _needs_value: bool = False
    # The loss reads sequences (seq_lens, state_in_*, seq_mask): the model may be recurrent; build_torch_policy's
    # ``recurrent``.
    _supports_recurrent: bool = False

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: dict,
        model: TorchModel | None = None,
        dist_class: type[ActionDistribution] | None = None,
    ):
        super().__init__(observation_space, action_space, config)
        use_gpu = config.get("num_gpus", 0) > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        if dist_class is None:
            dist_class, num_outputs = ModelCatalog.get_action_dist(action_space, config.get("model"))
        else:
            num_outputs = dist_class.required_model_output_shape(action_space, config.get("model", {}))
        self.dist_class = dist_class
        if model is None:
            model = ModelCatalog.get_model(observation_space, action_space, num_outputs, config.get("model", {}))
        self.model = model.to(self.device)
        self._recurrent = bool(model.get_initial_state())
        model_config = config.get("model") or {}
        if (self._recurrent or (model_config.get("use_lstm") and not model_config.get("custom_model"))) and not (
            self._supports_recurrent
        ):
            raise ValueError(
                f"model.use_lstm: {type(self).__name__} does not train recurrent models; PG, PPO, A2C, A3C,"
                " IMPALA, DQN and APEX do"
            )
        # Recurrent learning: trajectories cut into sequences of at most this many steps (rnn_sequencing).
        self.max_seq_len = int(model_config.get("max_seq_len", 20))
        self._discrete = isinstance(action_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete))
        self._rng = np.random.default_rng(config.get("seed"))
        # Acting in numpy (the model's numpy_forward, or numpy_step for a recurrent one) when the model has it.
        numpy_fn = "numpy_step" if self._recurrent else "numpy_forward"
        self._fast_path = (
            self.device.type == "cpu"
            and self._extra_action_out_fn is None
            and getattr(type(model), numpy_fn) is not getattr(TorchModel, numpy_fn)
            and all(
                getattr(dist_class, name, None) not in (None, getattr(ActionDistribution, name))
                for name in ("numpy_sample", "numpy_logp")
            )
        )
        self.global_timestep = 0
        self.cur_lr = config.get("lr", 1e-4)
        schedule = config.get("lr_schedule")
        self._lr_schedule = PiecewiseSchedule(schedule) if schedule else None
        self._optimizers = self._make_optimizers()

    # --- acting -------------------------------------------------------------------------------------------
    def compute_actions(
        self,
        obs_batch: Any,
        state_batches: list | None = None,
        prev_action_batch: Any = None,
        prev_reward_batch: Any = None,
        info_batch: Any = None,
        episodes: list | None = None,
        explore: bool | None = None,
        deferred: bool = False,
        **kwargs: Any,
    ) -> tuple[np.ndarray, list, dict]:
        explore = self.config.get("explore", True) if explore is None else explore
        obs = np.asarray(obs_batch, dtype=np.float32)
        if self._fast_path and bool(state_batches) == self._recurrent:
            out = self._numpy_actions(obs, state_batches, prev_action_batch, prev_reward_batch, explore, deferred)
            if out is not None:
                return out
        with torch.no_grad():
            input_dict = {"obs": torch.from_numpy(obs).to(self.device), "is_training": False}
            if prev_action_batch is not None:
                input_dict[SampleBatch.PREV_ACTIONS] = torch.as_tensor(
                    np.asarray(prev_action_batch), device=self.device
                )
            if prev_reward_batch is not None:
                input_dict[SampleBatch.PREV_REWARDS] = torch.as_tensor(
                    np.asarray(prev_reward_batch, dtype=np.float32), device=self.device
                )
            state = [torch.as_tensor(np.asarray(s), device=self.device) for s in state_batches or []]
            seq_lens = torch.ones(len(obs), dtype=torch.int32) if state else None
            dist_inputs, state_out = self.model(input_dict, state, seq_lens)
            dist = self.dist_class(dist_inputs, self.model)
            actions = dist.sample() if explore else dist.deterministic_sample()
            extra = {SampleBatch.ACTION_DIST_INPUTS: dist_inputs, SampleBatch.ACTION_LOGP: dist.logp(actions)}
            if self._needs_value:
                extra[SampleBatch.VF_PREDS] = self.model.value_function()
            if self._extra_action_out_fn is not None:
                extra.update(self._extra_action_out_fn(self, input_dict, state, self.model, dist))
            return (
                actions.cpu().numpy(),
                [s.cpu().numpy() for s in state_out],
                {k: v.cpu().numpy() for k, v in extra.items()},
            )

    def _numpy_actions(self, obs, state, prev_actions, prev_rewards, explore: bool, deferred: bool) -> tuple | None:
        """compute_actions in numpy (None when the model has no numpy path for this call). With ``deferred`` (the
        sampler) the log-probabilities, which do not influence the action, are left to postprocess_fragment, and
        so are a feed-forward model's value estimates (one pass over the fragment); a recurrent model's come
        with each step (the value head is one more column of the policy head's product)."""
        if self._recurrent:
            out = self.model.numpy_step(obs, state, prev_actions, prev_rewards, value=self._needs_value)
            if out is None:
                return None
            dist_inputs, values, state_out = out
        else:
            out = self.model.numpy_forward(obs, value=self._needs_value and not deferred)
            if out is None:
                return None
            (dist_inputs, values), state_out = out, []
        actions = self.dist_class.numpy_sample(dist_inputs, self._rng, explore)
        extra = {SampleBatch.ACTION_DIST_INPUTS: dist_inputs}
        if not deferred:
            extra[SampleBatch.ACTION_LOGP] = self.dist_class.numpy_logp(dist_inputs, actions)
        if values is not None:
            extra[SampleBatch.VF_PREDS] = values
        return actions, state_out, extra

    def value(self, obs: np.ndarray) -> np.ndarray:
        """The model's value estimates of a batch of observations (for bootstrapping)."""
        obs = np.asarray(obs, dtype=np.float32)
        if self._fast_path:
            # In blocks of rows whose activations stay in cache: a whole fragment at once is ~1.5x slower.
            values = [self.model.numpy_value(obs[i : i + 512]) for i in range(0, len(obs), 512)]
            if values and values[0] is not None:
                return np.concatenate(values)
        with torch.inference_mode():
            self.model({"obs": torch.from_numpy(obs).to(self.device), "is_training": False}, [], None)
            return self.model.value_function().cpu().numpy()

    def get_initial_state(self) -> list[np.ndarray]:
        return [np.asarray(s) for s in self.model.get_initial_state()]

    def is_recurrent(self) -> bool:
        return self._recurrent

    def bootstrap_values(self, batch: SampleBatch) -> np.ndarray:
        """One value per trajectory of ``batch``: 0 where its last step terminated the episode, else the value of
        the observation after that step. A recurrent model values it with the state after the last step (the
        batch's ``state_out_*`` when the sampler recorded them, else one step from that row's ``state_in_*``)."""
        last = np.flatnonzero(batch.trajectory_ends())
        if not self._recurrent:
            values = np.asarray(self.value(batch[SampleBatch.NEXT_OBS][last]), dtype=np.float64)
        else:
            num_states = len(self.get_initial_state())
            # One step on one row per trajectory: small products, which a second BLAS thread slows down (by tens of
            # milliseconds per fragment on loaded cores); the sampler acts with one thread too.
            with torch.no_grad(), single_blas_thread():
                if all(f"state_out_{j}" in batch for j in range(num_states)):
                    state = [batch[f"state_out_{j}"][last] for j in range(num_states)]
                else:
                    _, state = self._recurrent_step(
                        batch, last, [batch[f"state_in_{j}"][last] for j in range(num_states)]
                    )
                after = {
                    SampleBatch.OBS: batch[SampleBatch.NEXT_OBS],
                    SampleBatch.PREV_ACTIONS: batch[SampleBatch.ACTIONS],
                    SampleBatch.PREV_REWARDS: batch[SampleBatch.REWARDS],
                }
                values, _ = self._recurrent_step(after, last, state)
            values = values.astype(np.float64)
        values[np.asarray(batch[SampleBatch.TERMINATEDS])[last]] = 0.0
        return values

    def _recurrent_step(self, cols, rows: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """One step of the model on ``cols``' given rows from ``state``: ``(values, state_out)`` in numpy."""
        prev = [cols[k][rows] if k in cols else None for k in (SampleBatch.PREV_ACTIONS, SampleBatch.PREV_REWARDS)]
        out = self.model.numpy_step(cols[SampleBatch.OBS][rows], state, *prev) if self._fast_path else None
        if out is not None:
            return out[1], out[2]
        input_dict = {
            "obs": torch.as_tensor(np.asarray(cols[SampleBatch.OBS][rows], dtype=np.float32), device=self.device)
        }
        for key in (SampleBatch.PREV_ACTIONS, SampleBatch.PREV_REWARDS):
            if key in cols:
                input_dict[key] = torch.as_tensor(np.asarray(cols[key][rows]), device=self.device)
        state = [torch.as_tensor(np.asarray(s), device=self.device) for s in state]
        _, state_out = self.model(input_dict, state, torch.ones(len(rows), dtype=torch.int32))
        return self.model.value_function().cpu().numpy(), [s.cpu().numpy() for s in state_out]

    def postprocess_fragment(
        self, batch: SampleBatch, episodes: list | None = None, other_agent_batches: list | None = None
    ) -> SampleBatch:
        """Computes the deferred value estimates of the whole fragment in one pass (its observations plus each
        trajectory's last next-observation, for bootstrapping), then postprocesses: in one call when the
        postprocess function handles several trajectories (``@multi_trajectory``), else trajectory by trajectory.
        The bootstrap values of that pass (one per trajectory: 0 after a termination) reach a postprocess
        function that takes them as its ``last_r`` argument; without it the function computes them itself."""
        self._fill_deferred_logp(batch)
        last_r = None
        if self._needs_value and batch.count and SampleBatch.VF_PREDS not in batch:
            last = np.flatnonzero(batch.trajectory_ends())
            values = self.value(np.concatenate([batch[SampleBatch.OBS], batch[SampleBatch.NEXT_OBS][last]]))
            batch[SampleBatch.VF_PREDS] = values[: batch.count]
            last_r = values[batch.count :].astype(np.float64)
            last_r[batch[SampleBatch.TERMINATEDS][last]] = 0.0
        fn = self._postprocess_fn
        if fn is None:
            return batch
        if getattr(fn, "multi_trajectory", False):
            return self._postprocess(batch, None, None, last_r)
        pieces = batch.split_trajectories()
        episodes = episodes or [None] * len(pieces)
        others = other_agent_batches or [None] * len(pieces)
        return SampleBatch.concat_samples(
            [
                self._postprocess(p, o, ep, None if last_r is None else last_r[i : i + 1])
                for i, (p, ep, o) in enumerate(zip(pieces, episodes, others))
            ]
        )

    def _postprocess(
        self, batch: SampleBatch, other_agent_batches: dict | None, episode: Any, last_r: np.ndarray | None
    ) -> SampleBatch:
        if last_r is not None and self._postprocess_takes_last_r:
            return self._postprocess_fn(self, batch, other_agent_batches, episode, last_r=last_r)
        return self._postprocess_fn(self, batch, other_agent_batches, episode)

    def _fill_deferred_logp(self, batch: SampleBatch) -> None:
        if SampleBatch.ACTION_LOGP not in batch and SampleBatch.ACTION_DIST_INPUTS in batch and self._fast_path:
            batch[SampleBatch.ACTION_LOGP] = self.dist_class.numpy_logp(
                batch[SampleBatch.ACTION_DIST_INPUTS], batch[SampleBatch.ACTIONS]
            )

    def postprocess_trajectory(self, sample_batch, other_agent_batches=None, episode=None):
        self._fill_deferred_logp(sample_batch)
        if self._needs_value and SampleBatch.VF_PREDS not in sample_batch:
            sample_batch[SampleBatch.VF_PREDS] = self.value(sample_batch[SampleBatch.OBS])
        if self._postprocess_fn is None:
            return sample_batch
        return self._postprocess_fn(self, sample_batch, other_agent_batches, episode)

    # --- learning -----------------------------------------------------------------------------------------
    def load_batch(self, batch: SampleBatch) -> dict[str, torch.Tensor]:
        """Moves the numeric columns of a batch to this policy's device, once. A recurrent policy's batch is cut
        into padded sequences first (``rnn_sequencing.chop_into_sequences``: ``[num_seq, max_seq_len, ...]`` step
        columns, ``seq_lens``, ``state_in_*`` at each sequence's start, ``seq_mask``); index it by sequence."""
        tensors = {}
        columns = batch.items()
        if self._recurrent:
            columns = chop_into_sequences(batch, self.max_seq_len, len(self.get_initial_state())).items()
        for key, col in columns:
            if col.dtype == object or key == SampleBatch.INFOS:
                continue
            if key == SampleBatch.ACTIONS and self._discrete:
                col = col.astype(np.int64, copy=False)
            elif col.dtype == np.float64:
                col = col.astype(np.float32)
            col = np.ascontiguousarray(col)
            if not col.flags.writeable:  # a batch that came through Ray's object store is read-only
                col = col.copy()
            tensors[key] = torch.from_numpy(col).to(self.device, non_blocking=True)
        return tensors

    def learn_on_batch(self, samples: SampleBatch) -> dict:
        return self.learn_on_tensors(self.load_batch(samples))

    def compute_loss(self, model: TorchModel, train_batch: dict[str, torch.Tensor]) -> tuple[Any, dict, dict]:
        """The loss function on ``model`` (this policy's, or a replica of it on another device) and a batch of
        tensors, as ``(loss, stats, fetches)``: the loss (or a list, one per optimizer), the loss's statistics
        (tensors or numbers, ``{}`` when it reports none) and its per-row outputs such as ``td_error``
        (``{}`` when none). See build_torch_policy for what a loss function may return. A batch of padded
        sequences reaches the loss with its step columns flattened to ``[num_seq * max_seq_len, ...]``
        (``rnn_sequencing.flatten_sequences``)."""
        return split_loss_output(self._loss_fn(self, model, self.dist_class, flatten_sequences(train_batch)))

    def zero_grad(self) -> None:
        for opt in self._optimizers:
            opt.zero_grad(set_to_none=True)

    def apply_update(
        self, losses: list[torch.Tensor], train_batch: dict, loss_stats: dict, fetches: dict | None = None
    ) -> dict:
        """Finishes an update whose gradients are in the parameters' ``.grad``: refuses non-finite losses or
        gradients (``check_nan``: NonFiniteLossError, the weights unchanged), processes the gradients
        (``extra_grad_process``: clipping by default), steps the optimizers. Returns
        ``{"learner_stats": {...}, **fetches}`` with the fetches as numpy arrays."""
        if self.config.get("check_nan", True):
            check_update(self, losses, train_batch, lambda: self.stats(train_batch, loss_stats))
        grad_info = self.extra_grad_process()
        for opt in self._optimizers:
            opt.step()
        return self._learn_fetches(grad_info, train_batch, loss_stats, fetches)

    def learn_on_tensors(self, train_batch: dict[str, torch.Tensor]) -> dict:
        """One optimizer step on a (mini)batch of tensors; returns ``{"learner_stats": {...}, **fetches}``."""
        loss, stats, fetches = self.compute_loss(self.model, train_batch)
        losses = loss if isinstance(loss, (list, tuple)) else [loss]
        self.zero_grad()
        for i, each in enumerate(losses):
            each.backward(retain_graph=i < len(losses) - 1)
        return self.apply_update(losses, train_batch, stats, fetches)

    def compute_gradients(self, postprocessed_batch: SampleBatch) -> tuple[list[np.ndarray], dict]:
        train_batch = self.load_batch(postprocessed_batch)
        loss, stats, fetches = self.compute_loss(self.model, train_batch)
        self.zero_grad()
        loss.backward()
        if self.config.get("check_nan", True):
            # NaN gradients never reach the learner's weights
            check_update(self, [loss], train_batch, lambda: self.stats(train_batch, stats))
        grad_info = self.extra_grad_process()
        grads = [None if p.grad is None else p.grad.detach().cpu().numpy().copy() for p in self.model.parameters()]
        info = {**self._learn_fetches(grad_info, train_batch, stats, fetches), "batch_count": postprocessed_batch.count}
        return grads, info

    def _learn_fetches(self, grad_info: dict, train_batch: dict, loss_stats: dict, fetches: dict | None) -> dict:
        out = {LEARNER_STATS_KEY: {**grad_info, **self.stats(train_batch, loss_stats)}}
        for key, value in (fetches or {}).items():
            out[key] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return out

    def apply_gradients(self, gradients: list[np.ndarray]) -> None:
        for p, g in zip(self.model.parameters(), gradients):
            p.grad = None if g is None else torch.from_numpy(np.array(g)).to(self.device)
        for opt in self._optimizers:
            opt.step()

    def extra_grad_process(self) -> dict:
        if self._extra_grad_process_fn is not None:
            return self._extra_grad_process_fn(self)
        clip = self.config.get("grad_clip")
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            return {"grad_gnorm": float(norm)}
        return {}

    def stats(self, train_batch: dict, loss_stats: dict | None = None) -> dict:
        """The learner statistics of an update, as numbers: ``cur_lr``, the loss's stats, then what
        ``stats_fn`` adds (it receives the loss's stats when it takes a third argument)."""
        loss_stats = loss_stats or {}
        stats = {"cur_lr": self.cur_lr, **{k: _to_float(v) for k, v in loss_stats.items()}}
        if self._stats_fn is not None:
            extra = (
                self._stats_fn(self, train_batch, loss_stats)
                if self._stats_fn_takes_loss_stats
                else self._stats_fn(self, train_batch)
            )
            stats.update({k: _to_float(v) for k, v in extra.items()})
        return stats

    def _make_optimizers(self) -> list:
        if self._optimizer_fn is not None:
            opts = self._optimizer_fn(self, self.config)
            return list(opts) if isinstance(opts, (list, tuple)) else [opts]
        return [Adam(self.model.parameters(), lr=self.cur_lr)]

    def on_global_var_update(self, global_vars: dict) -> None:
        super().on_global_var_update(global_vars)
        if self._lr_schedule is not None:
            self.cur_lr = self._lr_schedule.value(self.global_timestep)
            for opt in self._optimizers:
                for group in opt.param_groups:
                    group["lr"] = self.cur_lr

    def export_model(self, export_dir: str, obs_filter: Any = None, raw_obs_space: Any = None) -> dict:
        """ONNX + TorchScript + JSON sidecar of the deterministic policy (relayrl/policy/export.py); without
        ``obs_filter`` the observation filter is the identity (Trainer.export_policy_model passes the worker's)."""
        from relayrl.policy.export import export_policy

        return export_policy(self, export_dir, obs_filter=obs_filter, raw_obs_space=raw_obs_space)

    # --- weights and state --------------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        # Arrays that arrive through Ray are read-only; torch wants writable memory to wrap.
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})

    def get_state(self) -> dict:
        return {
            "weights": self.get_weights(),
            "optimizers": [opt.state_dict() for opt in self._optimizers],
            "global_timestep": self.global_timestep,
        }

    def set_state(self, state: dict) -> None:
        self.set_weights(state["weights"])
        for opt, opt_state in zip(self._optimizers, state.get("optimizers", [])):
            opt.load_state_dict(opt_state)
        self.global_timestep = state.get("global_timestep", 0)


def split_loss_output(out: Any) -> tuple[Any, dict, dict]:
    """A loss function's return value as ``(loss, stats, fetches)``: it returns ``loss``, ``(loss, stats)`` or
    ``(loss, stats, fetches)``, where ``loss`` is a tensor or a list of tensors (one per optimizer)."""
    if isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[1], dict):
        return out[0], out[1], (out[2] if len(out) == 3 else None) or {}
    return out, {}, {}


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.detach().cpu().numpy()
    return v

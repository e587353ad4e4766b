"""SyncReplayOptimizer (alias LocalSyncReplayOptimizer, its RLlib name until ray-project/ray#2303, 2018): sample,
store in a replay buffer, learn on replay.

The loop behind DQN and DDPG (Mnih et al. 2015; Schaul et al. 2016 for prioritized replay)::

    opt = SyncReplayOptimizer(workers, learning_starts=1000, buffer_size=50000, train_batch_size=32)
    while True:
        opt.step()   # weights -> workers; sample_batch_size steps per worker -> buffer; one replayed update

One ``step()``: the workers sample (each returns ``sample_batch_size * num_envs`` steps), the steps go to one
replay buffer per policy; once ``learning_starts`` steps were sampled, one batch of ``train_batch_size`` is
replayed and learned on; with prioritized replay the sampled rows get new priorities |TD error| and beta is
annealed linearly from ``prioritized_replay_beta`` to ``final_prioritized_replay_beta`` over
``beta_annealing_fraction * schedule_max_timesteps`` sampled env steps (the clock of the epsilon schedule).
Every ``target_network_update_freq`` sampled steps ``policy.update_target()`` runs on every trained policy
that has one. The keyword options are the fields of ``ReplayOptions`` (``replay_options.py``), which
AsyncReplayOptimizer shares.

Multi-agent (a MultiAgentBatch): each policy in ``policies_to_train`` has its own buffer, holding exactly that
policy's rows (a policy that is not trained stores nothing), its own replayed batch per step, its own priorities
(from its own ``td_error``) and its own target-update clock; a policy's config overrides of the replay options
(``replay_options.POLICY_OPTIONS``: ``train_batch_size``, ``target_network_update_freq``, ``buffer_size``...)
apply to it alone. ``num_steps_sampled`` counts the batches' ``count`` (env steps, or agent steps with
``count_steps_by: agent_steps``), ``num_agent_steps_sampled`` their rows over all policies.

Recurrent policies (``model.use_lstm``, R2D2): the buffer of a policy whose ``is_recurrent()`` stores one sequence
per slot (``sequence_replay.py``: ``replay_sequence_length`` steps with the state at their start), so its
``buffer_size`` and ``train_batch_size`` count sequences.

Worker failures: a remote worker that dies while a step waits on its batch goes to
``WorkerSet.handle_worker_failure``. With ``recreate_failed_workers: True`` its replacement (current weights,
filters and global vars) samples in its place in the same step; with ``ignore_worker_failures: True`` the step
carries on with the others' batches (an error once none is left); with neither, WorkerFailureError names the
worker and both keys. Only batches that arrived go into the buffer and ``num_steps_sampled``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.replay_buffer import PrioritizedReplayBuffer, ReplayBuffer
from relayrl.optimizers.replay_options import ReplayOptions, build_options, policy_options
from relayrl.optimizers.sequence_replay import SequenceSpec, sequence_columns, sequence_spec
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.utils.timers import TimerStat

SB = SampleBatch
# The columns a replayed transition needs (plus any of OPTIONAL_COLUMNS the batches carry).
REPLAY_COLUMNS = (SB.OBS, SB.ACTIONS, SB.REWARDS, SB.NEXT_OBS, SB.TERMINATEDS)
OPTIONAL_COLUMNS = ("n_step_discount",)
PRIORITIES = "priorities"


def replay_columns(batch: SampleBatch) -> dict[str, np.ndarray]:
    """The columns of a (decompressed) batch that go into a replay buffer."""
    cols = {k: batch[k] for k in REPLAY_COLUMNS}
    cols.update({k: batch[k] for k in OPTIONAL_COLUMNS if k in batch})
    cols[SB.TERMINATEDS] = cols[SB.TERMINATEDS].astype(np.float32)
    return cols


def by_policy(batch: SampleBatch | MultiAgentBatch) -> dict[str, SampleBatch]:
    """``{policy_id: batch}``: a MultiAgentBatch's policy batches, a SampleBatch as the default policy's."""
    if isinstance(batch, MultiAgentBatch):
        return batch.policy_batches
    return {DEFAULT_POLICY_ID: batch}


def make_buffer(
    buffer_size: int,
    prioritized: bool,
    alpha: float,
    eps: float,
    compress: bool,
    seed: int | None = None,
    sequences: bool = False,
) -> ReplayBuffer:
    """A replay buffer of transitions, or of sequences (``sequences``: ``sequence_replay``; ``buffer_size``
    then counts sequences)."""
    compress_columns = ((SB.OBS,) if sequences else (SB.OBS, SB.NEXT_OBS)) if compress else ()
    if prioritized:
        return PrioritizedReplayBuffer(buffer_size, alpha=alpha, eps=eps, compress_columns=compress_columns, seed=seed)
    return ReplayBuffer(buffer_size, compress_columns=compress_columns, seed=seed)


def add_to_buffer(buffer: ReplayBuffer, batch: SampleBatch, sequences: SequenceSpec | None = None) -> None:
    """Adds a batch's transitions, or with ``sequences`` its sequences (a recurrent policy's, ``sequence_replay``);
    worker-side priorities (a ``priorities`` column) are used for transitions when present."""
    batch.decompress_if_needed()
    if sequences is not None:
        buffer.add_batch(sequence_columns(batch, sequences))
        return
    cols = replay_columns(batch)
    if isinstance(buffer, PrioritizedReplayBuffer) and PRIORITIES in batch:
        buffer.add_batch(cols, priorities=np.asarray(batch[PRIORITIES], dtype=np.float64))
    else:
        buffer.add_batch(cols)


class SyncReplayOptimizer(PolicyOptimizer):
    """Each ``step()``: weights to the remote workers, one batch from each into a replay buffer per policy, then
    (after ``learning_starts`` sampled steps) one replayed batch learned on per trained policy; target networks
    updated every ``target_network_update_freq`` sampled steps.

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        **options: the replay options, the fields of ``ReplayOptions`` (``relayrl/optimizers/replay_options.py``,
            where each is documented with its default); kept as ``self.options``. An unknown keyword is a
            TypeError naming it.
    """

    # The keyword options: the fields of ReplayOptions (their defaults and docs are there).
    options_type = ReplayOptions

    def __init__(self, workers: Any, remote_workers: list | None = None, **options: Any):
        super().__init__(workers, remote_workers)
        self.options = opts = build_options(options, owner=type(self).__name__)
        self.learning_starts = opts.learning_starts
        self.train_batch_size = opts.train_batch_size
        self.sample_batch_size = opts.sample_batch_size
        self.prioritized_replay = opts.prioritized_replay
        self.target_network_update_freq = opts.target_network_update_freq
        self.beta_schedule = opts.beta_schedule()
        # Each policy's options: these with its config's overrides (replay_options.POLICY_OPTIONS).
        self.policy_options = policy_options(opts, self.workers.local_worker())
        self._beta_schedules = {pid: o.beta_schedule() for pid, o in self.policy_options.items()}
        self.replay_buffers: dict[str, ReplayBuffer] = {}
        # A recurrent policy's replay stores sequences (sequence_replay.py; R2D2), a feed-forward one transitions.
        policy_map = getattr(self.workers.local_worker(), "policy_map", None) or {}
        self.sequence_specs = {pid: sequence_spec(p) for pid, p in policy_map.items()}
        # Sampled steps at each policy's last target update.
        self.last_target_update_ts = {pid: 0 for pid in self.policy_options}
        self.num_target_updates = 0
        self.cur_beta = opts.prioritized_replay_beta
        self.sample_timer, self.replay_timer, self.grad_timer = TimerStat(), TimerStat(), TimerStat()
        self.update_weights_timer, self.update_priorities_timer = TimerStat(), TimerStat()
        self.learner_stats: dict = {}

    def options_of(self, policy_id: str) -> ReplayOptions:
        """The replay options of one policy (the optimizer's, with that policy's config overrides)."""
        return self.policy_options.get(policy_id, self.options)

    def buffer(self, policy_id: str = DEFAULT_POLICY_ID) -> ReplayBuffer:
        if policy_id not in self.replay_buffers:
            o = self.options_of(policy_id)
            self.replay_buffers[policy_id] = make_buffer(
                o.buffer_size,
                o.prioritized_replay,
                o.prioritized_replay_alpha,
                o.prioritized_replay_eps,
                o.compress_observations,
                o.seed,
                sequences=self.sequence_specs.get(policy_id) is not None,
            )
        return self.replay_buffers[policy_id]

    def step(self) -> dict:
        with self.update_weights_timer:
            if self.workers.remote_workers():
                self.workers.sync_weights({"timestep": self.num_steps_sampled}, policies=self.policies_to_sync())
        with self.sample_timer:
            batch = self._sample()
            trained = self.workers.local_worker().policies_to_train
            for pid, b in by_policy(batch).items():
                if pid in trained:  # a policy that does not learn needs no replay
                    add_to_buffer(self.buffer(pid), b, self.sequence_specs.get(pid))
        self.num_steps_sampled += batch.count
        self.num_agent_steps_sampled += agent_steps(batch)
        self._optimize()
        self.update_targets()
        return self.learner_stats

    def _sample(self) -> SampleBatch | MultiAgentBatch:
        """One batch from every healthy remote worker (a replacement samples in a dead worker's place), or from the
        local worker; again while it holds no rows (external envs with no news for their ``idle_s`` hand back none)."""
        while True:
            if not self.workers.remote_workers():
                self.workers.check_healthy_workers()
                batch = self.workers.local_worker().sample()
            else:
                batches = [b for _, b in self.workers.gather(lambda w, i: w.sample.remote())]
                batch = SampleBatch.concat_samples(batches) if batches else None
            if batch is not None and batch.count:
                return batch

    def _optimize(self) -> None:
        """One replayed batch per trained policy whose ``learning_starts`` has passed."""
        local = self.workers.local_worker()
        self.cur_beta = self.beta_schedule.value(self.num_steps_sampled)
        stats = {}
        for pid, buffer in self.replay_buffers.items():
            o = self.options_of(pid)
            if pid not in local.policies_to_train or self.num_steps_sampled < o.learning_starts or not len(buffer):
                continue
            with self.replay_timer:
                if isinstance(buffer, PrioritizedReplayBuffer):
                    beta = self._beta_schedules.get(pid, self.beta_schedule).value(self.num_steps_sampled)
                    rows = buffer.sample(o.train_batch_size, beta=beta)
                else:
                    rows = buffer.sample(o.train_batch_size)
                idx = rows.pop("batch_indexes")
            with self.grad_timer:
                info = local.policy_map[pid].learn_on_batch(SampleBatch(rows))
            self.grad_timer.push_units_processed(o.train_batch_size)
            if isinstance(buffer, PrioritizedReplayBuffer):
                with self.update_priorities_timer:
                    buffer.update_priorities(idx, np.abs(_td_errors(info, pid)))
            stats[pid] = info.get(LEARNER_STATS_KEY, {})
            self.num_steps_trained += o.train_batch_size
        if stats:
            self.learner_stats = stats

    def update_targets(self) -> None:
        """``update_target()`` on each trained policy whose ``target_network_update_freq`` (its own, when its config
        overrides it) sampled steps have passed since its last update."""
        local = self.workers.local_worker()
        for pid in local.policies_to_train:
            freq = self.options_of(pid).target_network_update_freq
            if not freq or self.num_steps_sampled - self.last_target_update_ts.get(pid, 0) < freq:
                continue
            policy = local.policy_map[pid]
            if hasattr(policy, "update_target"):
                policy.update_target()
                self.num_target_updates += 1
            self.last_target_update_ts[pid] = self.num_steps_sampled

    def stats(self) -> dict:
        return {
            **super().stats(),
            "sample_time_ms": round(1000 * self.sample_timer.mean, 3),
            "replay_time_ms": round(1000 * self.replay_timer.mean, 3),
            "grad_time_ms": round(1000 * self.grad_timer.mean, 3),
            "update_time_ms": round(1000 * self.update_weights_timer.mean, 3),
            "update_priorities_time_ms": round(1000 * self.update_priorities_timer.mean, 3),
            "opt_peak_throughput": round(self.grad_timer.mean_throughput, 3),
            "num_target_updates": self.num_target_updates,
            "prioritized_replay_beta": self.cur_beta,
            "replay_shard_0": {pid: buffer_stats(b) for pid, b in self.replay_buffers.items()},
            "learner": self.learner_stats,
        }

    def save(self) -> dict:
        return {
            **super().save(),
            "last_target_update_ts": dict(self.last_target_update_ts),
            "num_target_updates": self.num_target_updates,
        }

    def restore(self, data: dict) -> None:
        super().restore(data)
        self.last_target_update_ts = restore_per_policy(data.get("last_target_update_ts", 0), self.policy_options)
        self.num_target_updates = int(data.get("num_target_updates", 0))


def restore_per_policy(value: int | dict, policy_ids: Any) -> dict[str, int]:
    """A per-policy counter from a checkpoint: a dict by policy id, or (older checkpoints) one int for all."""
    if isinstance(value, dict):
        return {pid: int(value.get(pid, 0)) for pid in policy_ids}
    return {pid: int(value) for pid in policy_ids}


def buffer_stats(buffer: ReplayBuffer) -> dict:
    stats = buffer.stats()
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}


LocalSyncReplayOptimizer = SyncReplayOptimizer


def _td_errors(info: dict, pid: str) -> np.ndarray:
    """The per-row TD errors a prioritised replay buffer needs from ``learn_on_batch`` (its ``"td_error"``)."""
    if "td_error" not in info:
        raise ValueError(
            f"prioritized_replay: policy {pid!r}'s learn_on_batch returned no 'td_error' (one per row, for the"
            f" priorities; it returned {sorted(info)}); return it, or set prioritized_replay: False"
        )
    return info["td_error"]

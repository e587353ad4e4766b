"""Ape-X's replay shard (ReplayActor) and learner thread (LearnerThread), driven by AsyncReplayOptimizer.

Horgan et al. 2018, "Distributed Prioritized Experience Replay" (https://arxiv.org/abs/1803.00933), Algorithm 2
(the learner) and the replay memory of section 3. Both work per policy: a shard holds one buffer per trained
policy, its replayed batch carries one batch per policy, and the learner updates each policy on its own batch
and sends back that policy's priorities::

    shard.add_batch(batch)                   # SampleBatch (default policy) or MultiAgentBatch
    replayed = shard.replay(beta)            # SampleBatch, MultiAgentBatch ({pid: batch}, count = rows) or None
    learner.inqueue.put((shard, replayed)); learner.step()
    shard, idx, td, count = learner.outqueue.get()   # idx, td: arrays, or {pid: array} for a MultiAgentBatch
    shard.update_priorities(idx, td)
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from relayrl.optimizers.replay_buffer import PrioritizedReplayBuffer, ReplayBuffer
from relayrl.optimizers.sync_replay import add_to_buffer, buffer_stats, by_policy, make_buffer
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.utils.timers import TimerStat


class ReplayActor:
    """One shard of the replay memory: per policy, a buffer of ``buffer_size / num_shards`` rows that replays once
    it holds ``learning_starts / num_shards``. Runs as a Ray actor (``ray.remote(num_cpus=0)(ReplayActor)``).

    Args:
        num_shards: shards of the whole replay memory (this is one of them).
        learning_starts: rows over all shards before a policy's batches are replayed.
        buffer_size: rows over all shards of a policy's buffer.
        train_batch_size: rows of a replayed batch (per policy).
        prioritized_replay: prioritized (True) or uniform replay.
        alpha: priority exponent.
        eps: added to |TD error| to make a priority.
        compress: LZ4-compress the stored observations.
        seed: seed of the replay sampling.
        policy_overrides: ``{policy_id: {argument: value}}``, the policies whose rows are stored (the trained ones)
            with the arguments above that differ for them (their configs' replay overrides); None: every policy's
            rows, all with the arguments above. A recurrent policy's entry also holds ``sequences``, its
            ``sequence_replay.SequenceSpec``: its buffer stores sequences.
    """

    def __init__(
        self,
        num_shards: int,
        learning_starts: int,
        buffer_size: int,
        train_batch_size: int,
        prioritized_replay: bool,
        alpha: float,
        eps: float,
        compress: bool,
        seed: int | None = None,
        policy_overrides: dict[str, dict] | None = None,
    ):
        self.num_shards = num_shards
        self.seed = seed
        self._base = {
            "learning_starts": learning_starts,
            "buffer_size": buffer_size,
            "train_batch_size": train_batch_size,
            "prioritized_replay": prioritized_replay,
            "alpha": alpha,
            "eps": eps,
            "compress": compress,
        }
        self.policy_overrides = policy_overrides
        self.buffers: dict[str, ReplayBuffer] = {}
        self.add_timer, self.replay_timer, self.update_timer = TimerStat(), TimerStat(), TimerStat()

    def args_of(self, policy_id: str) -> dict:
        """The shard's arguments for one policy's buffer (with its overrides)."""
        return {**self._base, **(self.policy_overrides or {}).get(policy_id, {})}

    def buffer(self, policy_id: str = DEFAULT_POLICY_ID) -> ReplayBuffer:
        if policy_id not in self.buffers:
            a = self.args_of(policy_id)
            size = max(1, a["buffer_size"] // self.num_shards)
            self.buffers[policy_id] = make_buffer(
                size,
                a["prioritized_replay"],
                a["alpha"],
                a["eps"],
                a["compress"],
                self.seed,
                sequences=a.get("sequences") is not None,
            )
        return self.buffers[policy_id]

    def add_batch(self, batch: SampleBatch | MultiAgentBatch) -> int:
        """Stores each stored policy's rows in its own buffer; returns the batch's count."""
        with self.add_timer:
            for pid, b in by_policy(batch).items():
                if self.policy_overrides is None or pid in self.policy_overrides:
                    add_to_buffer(self.buffer(pid), b, self.args_of(pid).get("sequences"))
        return batch.count

    def replay(self, beta: float | dict[str, float]) -> SampleBatch | MultiAgentBatch | None:
        """A train batch from each policy's buffer that holds its ``learning_starts / num_shards`` rows (beta: one
        for all, or by policy id): the default policy's alone as a SampleBatch, else a MultiAgentBatch whose count
        is its rows; None while no buffer is ready."""
        out = {}
        with self.replay_timer:
            for pid, buf in self.buffers.items():
                a = self.args_of(pid)
                if len(buf) < max(1, a["learning_starts"] // self.num_shards):
                    continue
                if isinstance(buf, PrioritizedReplayBuffer):
                    b = beta.get(pid, 0.4) if isinstance(beta, dict) else beta
                    out[pid] = SampleBatch(buf.sample(a["train_batch_size"], beta=b))
                else:
                    out[pid] = SampleBatch(buf.sample(a["train_batch_size"]))
        if not out:
            return None
        return MultiAgentBatch.wrap_as_needed(out, sum(b.count for b in out.values()))

    def update_priorities(self, idxes: np.ndarray | dict, td_errors: np.ndarray | dict) -> None:
        """New priorities |td| for replayed rows: arrays for the default policy, or dicts by policy id."""
        if not isinstance(idxes, dict):
            idxes, td_errors = {DEFAULT_POLICY_ID: idxes}, {DEFAULT_POLICY_ID: td_errors}
        with self.update_timer:
            for pid, idx in idxes.items():
                buf = self.buffers.get(pid)
                if isinstance(buf, PrioritizedReplayBuffer) and td_errors.get(pid) is not None:
                    buf.update_priorities(np.asarray(idx), np.abs(np.asarray(td_errors[pid], dtype=np.float64)))

    def stats(self) -> dict:
        """Each policy's buffer statistics (by policy id) and the shard's timings."""
        out: dict[str, Any] = {pid: buffer_stats(b) for pid, b in self.buffers.items()}
        out.update(
            add_time_ms=1000 * self.add_timer.mean,
            replay_time_ms=1000 * self.replay_timer.mean,
            update_priorities_time_ms=1000 * self.update_timer.mean,
        )
        return out


class LearnerThread(threading.Thread):
    """Learns on ``(shard, batch)`` items of ``inqueue`` (a MultiAgentBatch: one update per policy batch); puts
    ``(shard, indexes, td_errors, count)`` on ``outqueue``, indexes and TD errors as arrays for a SampleBatch and
    as dicts by policy id for a MultiAgentBatch. ``lock`` is held during each update so the driver can read
    consistent weights.

    Args:
        policies: the policy to train (the default policy), or ``{policy_id: policy}``.
        target_network_update_freq: rows a policy is trained on between two of its target updates (0: never); a
            dict by policy id gives each its own.
    """

    def __init__(self, policies: Any, target_network_update_freq: int | dict[str, int] = 0):
        super().__init__(name="relayrl-learner", daemon=True)
        self.policies = policies if isinstance(policies, dict) else {DEFAULT_POLICY_ID: policies}
        freq = target_network_update_freq
        self.target_freqs = {pid: int(freq.get(pid, 0) if isinstance(freq, dict) else freq) for pid in self.policies}
        self.inqueue: queue.Queue = queue.Queue(maxsize=16)
        self.outqueue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.num_steps_trained = 0
        self.rows_since_target_update = {pid: 0 for pid in self.policies}
        self.num_target_updates = 0
        self.weights_version = 0
        self.stats: dict = {}  # policy id -> its latest learner stats
        self.error: BaseException | None = None
        self.grad_timer, self.queue_timer = TimerStat(), TimerStat()
        self._stopped = threading.Event()

    @property
    def policy(self) -> Any:
        """The default policy (single-agent)."""
        return self.policies[DEFAULT_POLICY_ID]

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                self.step()
        except BaseException as e:  # noqa: BLE001 - surfaced by the driver's next step()
            self.error = e

    def step(self) -> None:
        with self.queue_timer:
            try:
                shard, batch = self.inqueue.get(timeout=0.5)
            except queue.Empty:
                return
        idxes, tds, count = {}, {}, 0
        with self.grad_timer, self.lock:
            for pid, b in by_policy(batch).items():
                idxes[pid] = b.data.pop("batch_indexes")
                info = self.policies[pid].learn_on_batch(b)
                tds[pid] = info.get("td_error")
                self.stats[pid] = info.get(LEARNER_STATS_KEY, {})
                count += b.count
                self._maybe_update_target(pid, b.count)
            self.num_steps_trained += count
            self.weights_version += 1
        self.grad_timer.push_units_processed(count)
        if isinstance(batch, MultiAgentBatch):
            self.outqueue.put((shard, idxes, tds, count))
        else:
            self.outqueue.put((shard, idxes[DEFAULT_POLICY_ID], tds[DEFAULT_POLICY_ID], count))

    def _maybe_update_target(self, pid: str, rows: int) -> None:
        self.rows_since_target_update[pid] += rows
        freq = self.target_freqs[pid]
        if freq and self.rows_since_target_update[pid] >= freq:
            self.policies[pid].update_target()
            self.rows_since_target_update[pid] = 0
            self.num_target_updates += 1

    def stop(self) -> None:
        self._stopped.set()

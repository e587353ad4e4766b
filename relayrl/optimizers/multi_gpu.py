"""LocalMultiGPUOptimizer: minibatch SGD with the train batch loaded onto the device once.

After gathering ``train_batch_size`` steps, each trainable policy's batch is converted to tensors on its
device a single time; then ``num_sgd_iter`` epochs index shuffled minibatches of ``sgd_batch_size`` rows out of
those tensors (no host-to-device copies inside the loop). The epochs are SyncSamplesOptimizer's routine
(``minibatch_sgd.py``: seeded from ``seed``, the last partial minibatch of each epoch dropped). On a machine
without CUDA the one device is the CPU. With ``num_gpus > 1`` each minibatch is split across the GPUs
("towers"), each tower computes gradients on its share with a replica of the model, and their average is
applied to the learner's model.

Worker failures are handled while sampling, as in SyncSamplesOptimizer (``collect_samples``):
``recreate_failed_workers: True`` replaces a dead worker, ``ignore_worker_failures: True`` carries on without
it, neither raises WorkerFailureError naming it; only the batches that arrived are loaded and counted.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch

from relayrl.optimizers.minibatch_sgd import MinibatchSGD
from relayrl.optimizers.policy_optimizer import PolicyOptimizer, agent_steps
from relayrl.optimizers.rollout import collect_samples
from relayrl.optimizers.sync_samples import policy_batch_label, standardize
from relayrl.policy.rnn_sequencing import SEQ_MASK
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.policy.torch_policy import TorchPolicy
from relayrl.utils.timers import TimerStat

logger = logging.getLogger(__name__)


class LocalMultiGPUOptimizer(PolicyOptimizer):
    """Each ``step()``: the local weights to every worker, at least ``train_batch_size`` steps sampled, each trained
    policy's batch loaded onto its device once, then ``num_sgd_iter`` epochs of minibatch SGD on those tensors.
    Every trained policy must be a TorchPolicy (else ValueError).

    Args:
        workers: a WorkerSet, or the local worker (see PolicyOptimizer).
        remote_workers: the remote workers when ``workers`` is a local worker.
        sgd_batch_size: rows of one minibatch (``MinibatchSGD``); 0, or at least the batch's size: one update per
            epoch on the whole batch.
        num_sgd_iter: epochs of learning over each train batch.
        train_batch_size: the env steps to sample per ``step()`` (at least; the workers' whole batches are kept).
        num_gpus: above 1 (rounded up, at most the CUDA devices present), each minibatch is split across that many
            towers (model replicas); else the policy learns alone on its own device (from its config's
            ``num_gpus``). Non-zero without CUDA: a warning, and the CPU.
        standardize_fields: columns brought to zero mean and unit variance before learning (PPO: advantages).
        seed: seed of the minibatch shuffles (None: seeded with 0).

    Any other keyword argument is accepted and ignored.
    """

    def __init__(
        self,
        workers: Any,
        remote_workers: list | None = None,
        *,
        sgd_batch_size: int = 128,
        num_sgd_iter: int = 10,
        train_batch_size: int = 1024,
        num_gpus: float = 0,
        standardize_fields: tuple[str, ...] = (),
        seed: int | None = None,
        **_ignored: Any,
    ):
        super().__init__(workers, remote_workers)
        self.batch_size = sgd_batch_size
        self.num_sgd_iter = num_sgd_iter
        self.train_batch_size = train_batch_size
        self.standardize_fields = tuple(standardize_fields)
        local = self.workers.local_worker()
        self.policies = {pid: local.policy_map[pid] for pid in local.policies_to_train}
        for pid, policy in self.policies.items():
            if not isinstance(policy, TorchPolicy):
                raise ValueError(
                    f"LocalMultiGPUOptimizer needs TorchPolicies; policy {pid!r} is {type(policy).__name__}"
                )
        self.devices = _devices(num_gpus)
        multi = len(self.devices) > 1
        self._towers = {pid: _Towers(p, self.devices) for pid, p in self.policies.items()} if multi else {}
        # A multi-agent batch's rows per policy are agent steps, not train_batch_size: checked per policy instead.
        multi_agent = getattr(local, "multi_agent", False)
        self.sgd = MinibatchSGD(sgd_batch_size, num_sgd_iter, seed, None if multi_agent else train_batch_size)
        self.sample_timer = TimerStat()
        self.load_timer = TimerStat()
        self.grad_timer = TimerStat()
        self.update_weights_timer = TimerStat()
        self.learner_stats: dict = {}

    def step(self) -> dict:
        with self.update_weights_timer:
            self.workers.sync_weights(policies=self.policies_to_sync())
        with self.sample_timer:
            samples = collect_samples(self.workers, self.train_batch_size)
        self.sample_timer.push_units_processed(samples.count)
        batches = samples.policy_batches if isinstance(samples, MultiAgentBatch) else {DEFAULT_POLICY_ID: samples}
        stats = {}
        for pid, batch in batches.items():
            if pid not in self.policies:
                continue
            standardize(batch, self.standardize_fields)
            policy = self.policies[pid]
            if isinstance(samples, MultiAgentBatch):
                self.sgd.warn_remainder(batch.count, policy_batch_label(pid))
            with self.load_timer:
                tensors = policy.load_batch(batch)
            with self.grad_timer:
                stats[pid] = self._sgd(pid, policy, tensors, batch.count)
            self.grad_timer.push_units_processed(batch.count * self.num_sgd_iter)
        self.learner_stats = stats
        self.num_steps_sampled += samples.count
        self.num_steps_trained += samples.count
        self.num_agent_steps_sampled += agent_steps(samples)
        return stats

    def _sgd(self, pid: str, policy: TorchPolicy, tensors: dict[str, torch.Tensor], n: int) -> dict:
        learn = self._towers[pid].learn if pid in self._towers else policy.learn_on_tensors

        def learn_rows(rows: torch.Tensor | None) -> dict:
            return learn(tensors if rows is None else {k: v[rows] for k, v in tensors.items()})

        device = next(iter(tensors.values())).device
        seq_lens = tensors.get(SampleBatch.SEQ_LENS)  # a recurrent policy's padded sequences: whole ones per minibatch
        if seq_lens is not None:
            return self.sgd.run(len(seq_lens), learn_rows, device=device, seq_lens=seq_lens.cpu().numpy())
        return self.sgd.run(n, learn_rows, device=device)

    def stats(self) -> dict:
        return {
            **super().stats(),
            "sample_time_ms": round(1000 * self.sample_timer.mean, 3),
            "load_time_ms": round(1000 * self.load_timer.mean, 3),
            "grad_time_ms": round(1000 * self.grad_timer.mean, 3),
            "update_time_ms": round(1000 * self.update_weights_timer.mean, 3),
            "learner_throughput": round(self.grad_timer.mean_throughput, 1),
            "sample_throughput": round(self.sample_timer.mean_throughput, 1),
            "learner": self.learner_stats,
        }


def _devices(num_gpus: float) -> list[torch.device]:
    if num_gpus and torch.cuda.is_available():
        n = min(max(1, math.ceil(num_gpus)), torch.cuda.device_count())
        return [torch.device(f"cuda:{i}") for i in range(n)]
    if num_gpus:
        logger.warning("num_gpus=%s but CUDA is not available: learning on the CPU", num_gpus)
    return [torch.device("cpu")]


class _Towers:
    """Data-parallel gradient computation: model replicas on the other devices share each minibatch."""

    def __init__(self, policy: TorchPolicy, devices: list[torch.device]):
        self.policy = policy
        self.replicas = [copy.deepcopy(policy.model).to(d) for d in devices[1:]]
        self.devices = devices

    def learn(self, minibatch: dict[str, torch.Tensor]) -> dict:
        """One update on a minibatch: each tower's loss on its share, gradients summed into the learner's
        parameters, then the policy's own update step (NaN check, clipping, optimizer step)."""
        policy = self.policy
        n = next(iter(minibatch.values())).shape[0]
        shares = np.array_split(np.arange(n), len(self.devices))
        params = list(policy.model.parameters())
        policy.zero_grad()
        stats, losses = {}, []
        for model, device, share in zip([policy.model, *self.replicas], self.devices, shares):
            if model is not policy.model:
                model.load_state_dict(policy.model.state_dict())
            idx = torch.as_tensor(share, device=minibatch[next(iter(minibatch))].device)
            shard = {k: v[idx].to(device, non_blocking=True) for k, v in minibatch.items()}
            loss, tower_stats, _ = policy.compute_loss(model, shard)
            if isinstance(loss, (list, tuple)):
                raise ValueError(f"{type(policy).__name__}: multi-GPU towers need a loss function with one loss")
            # The share of the minibatch's steps (a recurrent batch: real steps of its sequences, not padding).
            mask = minibatch.get(SEQ_MASK)
            loss = loss * (len(share) / n if mask is None else float(mask[idx].sum()) / float(mask.sum()))
            losses.append(loss.detach().to(self.devices[0]))
            grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    g = g.to(p.device)
                    p.grad = g if p.grad is None else p.grad + g
            if model is policy.model:
                stats = tower_stats  # the first tower's share reports the statistics
        return policy.apply_update(losses, minibatch, stats)  # checks the summed gradients, before the step

"""Minibatch SGD over a train batch: the one routine behind SyncSamplesOptimizer and LocalMultiGPUOptimizer.

    sgd = MinibatchSGD(minibatch_size=128, num_sgd_iter=30, seed=config["seed"], train_batch_size=4000)
    stats = sgd.run(batch.count, lambda rows: policy.learn_on_tensors({k: v[rows] for k, v in tensors.items()}))

Each of the ``num_sgd_iter`` epochs draws a new permutation of the ``n`` rows (``torch.randperm`` on a generator
seeded once from the config's ``seed``; 0 when it is None) and learns on consecutive slices of
``minibatch_size`` rows of it. Remainder rule: the ``n % minibatch_size`` rows at the end of an epoch's
permutation are dropped for that epoch (every minibatch has the same size, so every update has the same
weight); they are different rows each epoch. A ``minibatch_size`` of 0, or one that covers the batch, is one
update per epoch on the whole batch in its order (no permutation is drawn). As Stable-Baselines3 does, a
``train_batch_size`` that is not a multiple of ``minibatch_size`` is warned about (once per optimizer; with a
MultiAgentBatch, once per policy about the agent steps of its first batch, which vary from batch to batch).

Recurrent policies learn on whole sequences (``relayrl.policy.rnn_sequencing``): given ``seq_lens``, ``n`` counts
sequences, each epoch permutes them and ``rnn_sequencing.sequence_minibatches`` groups them into minibatches of
about ``minibatch_size`` real steps (the size stays counted in steps; the remainder is dropped in the same way).

The stats returned are the mean over the last epoch's minibatches of each learner stat (the last value for a
stat that is not a number); with a single update per epoch, that update's stats as they are.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch

from relayrl.policy.rnn_sequencing import sequence_minibatches
from relayrl.policy.torch_policy import LEARNER_STATS_KEY

logger = logging.getLogger(__name__)


class MinibatchSGD:
    """``num_sgd_iter`` epochs of shuffled minibatches over a train batch (see the module docstring).

    Args:
        minibatch_size: rows of one minibatch; 0 (or None), or at least the batch's size: one update per epoch on
            the whole batch in its order.
        num_sgd_iter: epochs per ``run()``.
        seed: seed of the torch generator of the shuffles, seeded once (None: 0).
        train_batch_size: the expected batch size, only to warn (once) when it is not a multiple of
            ``minibatch_size``; None: no check.
    """

    def __init__(
        self, minibatch_size: int, num_sgd_iter: int, seed: int | None = None, train_batch_size: int | None = None
    ):
        self.minibatch_size = int(minibatch_size or 0)
        self.num_sgd_iter = int(num_sgd_iter)
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self._warned: set[str] = set()
        if train_batch_size:
            self.warn_remainder(train_batch_size)

    def warn_remainder(self, rows: int, what: str = "train_batch_size") -> None:
        """Warns (once per ``what``: a multi-agent optimizer warns once per policy, about its first batch's agent
        steps) when a batch of ``rows`` rows is not a multiple of ``minibatch_size``."""
        size = self.minibatch_size
        if what in self._warned or not 0 < size < rows or not rows % size:
            return
        self._warned.add(what)
        logger.warning(
            "%s=%d is not a multiple of sgd_minibatch_size=%d: each SGD epoch learns on %d minibatches and leaves"
            " out the last %d rows of its shuffle (different rows each epoch); pick a multiple to use every sample"
            " in every epoch",
            what,
            rows,
            size,
            rows // size,
            rows % size,
        )

    def epoch(self, n: int, device: torch.device | str = "cpu", seq_lens: Any = None) -> list[torch.Tensor | None]:
        """The row indices of one epoch's minibatches (``[None]``: the whole batch in its order); with
        ``seq_lens`` (one length per sequence, ``n`` of them), the sequence indices of each minibatch."""
        size = self.minibatch_size
        total = n if seq_lens is None else int(np.asarray(seq_lens).sum())
        if not size or size >= total:
            return [None]
        perm = torch.randperm(n, generator=self.generator)
        if seq_lens is not None:
            return [torch.as_tensor(idx, device=device) for idx in sequence_minibatches(seq_lens, size, perm)]
        perm = perm.to(device)
        return [perm[b * size : (b + 1) * size] for b in range(n // size)]

    def run(
        self,
        n: int,
        learn: Callable[[torch.Tensor | None], dict],
        device: torch.device | str = "cpu",
        seq_lens: Any = None,
    ) -> dict:
        """``num_sgd_iter`` epochs of ``learn(rows)`` over a batch of ``n`` rows (``rows`` None: all of them);
        ``learn`` returns a learner fetch (``{"learner_stats": {...}, ...}``). Returns the last epoch's stats.
        With ``seq_lens``, ``n`` counts sequences and ``rows`` are sequence indices (see ``epoch``)."""
        epoch_stats: list[dict] = []
        for _ in range(self.num_sgd_iter):
            epoch_stats = [get_learner_stats(learn(rows)) for rows in self.epoch(n, device, seq_lens)]
        if len(epoch_stats) == 1:
            return epoch_stats[0]
        return mean_stats(epoch_stats)


def get_learner_stats(fetches: dict) -> dict:
    return fetches.get(LEARNER_STATS_KEY, fetches)


def mean_stats(stats: list[dict]) -> dict:
    """The mean of each stat over a list of stats dicts (the last value for one that is not a number)."""
    if not stats:
        return {}
    out: dict[str, Any] = {}
    for k in stats[0]:
        vals = [s[k] for s in stats if k in s]
        try:
            out[k] = float(np.mean(vals))
        except (TypeError, ValueError):
            out[k] = vals[-1]
    return out

"""Sequence replay for recurrent Q-learning (Kapturowski et al. 2019, "Recurrent Experience Replay in Distributed
RL" (R2D2), section 3): one replay slot holds one fixed-length sequence with the RNN state it started from.

    spec = sequence_spec(policy)                     # None for a feed-forward policy
    cols = sequence_columns(batch, spec)             # one row per sequence, for ReplayBuffer.add_batch
    buffer.add_batch(cols)                           # any ReplayBuffer / PrioritizedReplayBuffer

A sequence slot is a row of the ordinary columnar buffers (their rows may have any shape), so uniform and
prioritized sampling, priorities and eviction work per sequence unchanged. The sequences come from
``rnn_sequencing.chop_into_sequences`` (never across episodes or trajectory pieces): ``replay_sequence_length``
steps, consecutive ones overlapping by ``burn_in`` steps (the paper's 80-step sequences overlap by 40), so every
step is learned on in some sequence after its burn-in (a trajectory of at most ``burn_in`` steps is not stored:
nothing in it could be learned on). Columns of a slot:

- ``obs`` ``[L + 1, ...]``: the sequence's observations, then the observation after its last real step (the
  bootstrap of the last steps' n-step targets) at position ``seq_lens``; zero after it;
- ``actions``, ``rewards`` (one-step), ``terminateds`` ``[L]``, zero-padded;
- ``seq_lens`` (real steps) and ``state_in_*``: the state the sampler recorded at the sequence's first step (the
  paper's "stored state").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from relayrl.policy.rnn_sequencing import chop_into_sequences, state_keys
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch


@dataclass(frozen=True)
class SequenceSpec:
    """How a recurrent policy's steps are stored: ``length`` steps per sequence, ``overlap`` shared by consecutive
    sequences of a trajectory, ``num_states`` state tensors."""

    length: int
    overlap: int
    num_states: int


def sequence_spec(policy: Any) -> SequenceSpec | None:
    """The sequence storage of a recurrent policy (its ``replay_sequence_length`` and ``burn_in``); None for a
    feed-forward one (its rows are stored as transitions)."""
    if policy is None or not getattr(policy, "is_recurrent", lambda: False)():
        return None
    config = policy.config
    return SequenceSpec(
        int(config.get("replay_sequence_length", 20)),
        int(config.get("burn_in", 0)),
        len(policy.get_initial_state()),
    )


def sequence_columns(batch: SampleBatch, spec: SequenceSpec) -> dict[str, np.ndarray]:
    """One row per sequence of a (decompressed) sample batch, as described in the module docstring."""
    seqs = chop_into_sequences(batch, spec.length, spec.num_states, overlap=spec.overlap)
    # A sequence no longer than the burn-in has no step to learn on (only a trajectory of at most ``overlap``
    # steps makes one); stored at priority ~0 it would also shrink every PER weight (w ~ (p / p_min) ** -beta).
    keep = seqs[SB.SEQ_LENS] > spec.overlap
    if not keep.all():
        seqs = {k: v[keep] for k, v in seqs.items()}
    lens = seqs[SB.SEQ_LENS].astype(np.int64)
    obs = seqs[SB.OBS]
    obs_ext = np.zeros((len(lens), spec.length + 1) + obs.shape[2:], dtype=obs.dtype)
    obs_ext[:, : spec.length] = obs
    rows = np.arange(len(lens))
    obs_ext[rows, lens] = seqs[SB.NEXT_OBS][rows, lens - 1]
    cols = {
        SB.OBS: obs_ext,
        SB.ACTIONS: seqs[SB.ACTIONS],
        SB.REWARDS: seqs[SB.REWARDS].astype(np.float32),
        SB.TERMINATEDS: seqs[SB.TERMINATEDS].astype(np.float32),
        SB.SEQ_LENS: seqs[SB.SEQ_LENS],
    }
    cols.update({k: seqs[k].astype(np.float32) for k in state_keys(seqs)[: spec.num_states]})
    return cols

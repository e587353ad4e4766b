"""Sequences for recurrent policies: trajectories cut into pieces of at most ``max_seq_len`` steps, zero-padded.

The one chunking utility behind every recurrent learner (PG, PPO, A2C, A3C, IMPALA; DQN's sequence
replay, ``optimizers/sequence_replay.py``, with overlapping sequences).
Usage::

    starts, lens = sequence_layout(batch, max_seq_len)          # where each sequence lies in the flat batch
    seqs = chop_into_sequences(batch, max_seq_len)              # padded arrays, sequence-major
    seqs["obs"].shape == (num_seq, max_seq_len, *obs_shape)    # every step column, zero-padded after its end
    seqs["seq_lens"].shape == (num_seq,)                       # real steps of each sequence (>= 1)
    seqs["state_in_0"].shape == (num_seq, *state_shape)        # the RNN state at each sequence's first step
    seqs[SEQ_MASK].shape == (num_seq, max_seq_len)             # True on real steps, False on padding
    for seq_idx in sequence_minibatches(lens, minibatch_steps, perm): ...   # whole sequences, ~steps each

A sequence never crosses a trajectory boundary: the end of the batch, a change of ``unroll_id`` (the sampler's
trajectory pieces, ``SampleBatch.trajectory_ends``), of ``eps_id`` or of ``agent_index``, a row after
``dones``, and a row whose ``t`` does not exceed the previous row's (IMPALA's replay may put a copy of a batch
right after the batch itself). Each trajectory is cut from its first row into ``max_seq_len``-step pieces, the
last one shorter.
The state at a sequence's start is the ``state_in_*`` that the sampler recorded for that step (the initial state
at an episode's first step), so a sequence that starts inside a trajectory resumes from the state acting had.

Layout: every array has the sequences on its first axis (``[S, L, ...]`` for step columns, ``[S, ...]`` for
``seq_lens`` and ``state_in_*``), so indexing any column with sequence indices selects whole sequences (the
minibatches of ``MinibatchSGD``, a replay of sequences). ``flatten_sequences`` gives a loss the step columns as
``[S * L, ...]`` rows; a recurrent model receives those rows with ``seq_lens`` and the ``state_in_*`` and
reshapes them to ``[S, L]`` (``relayrl.models.recurrent``). Losses reduce with ``masked_mean`` / ``masked_sum``
over ``seq_mask`` so that padded steps change no loss, gradient or statistic. Object columns (``infos``) are
left out.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from relayrl.policy.sample_batch import SampleBatch

# Column of the padded batch: True on a real step, False on padding ([S, L]; [S * L] once flattened).
SEQ_MASK = "seq_mask"
STATE_IN = "state_in_"


def trajectory_starts(batch: SampleBatch) -> np.ndarray:
    """A mask of the first row of each trajectory (see the module docstring for the boundaries)."""
    n = batch.count
    starts = np.zeros(n, dtype=bool)
    if not n:
        return starts
    starts[0] = True
    starts[1:] = batch.trajectory_ends()[:-1]
    for key in (SampleBatch.EPS_ID, SampleBatch.AGENT_INDEX):
        if key in batch:
            ids = batch[key]
            starts[1:] |= ids[1:] != ids[:-1]
    if SampleBatch.DONES in batch:
        starts[1:] |= np.asarray(batch[SampleBatch.DONES][:-1], dtype=bool)
    if SampleBatch.T in batch:  # t grows along a trajectory; not where a replayed copy follows the batch itself
        t = batch[SampleBatch.T]
        starts[1:] |= t[1:] <= t[:-1]
    return starts


def sequence_layout(batch: SampleBatch, max_seq_len: int, overlap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lens)``: the first row and the length of each sequence, in row order; they tile the batch
    (without ``overlap``).
    ``overlap > 0`` (sequence replay, R2D2's burn-in): consecutive sequences of a trajectory share ``overlap``
    steps (they start every ``max_seq_len - overlap`` rows; the last one ends at the trajectory's end)."""
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if not 0 <= overlap < max_seq_len:
        raise ValueError(f"overlap must be in [0, max_seq_len={max_seq_len}), got {overlap}")
    stride = max_seq_len - overlap
    traj_starts = np.flatnonzero(trajectory_starts(batch))
    traj_lens = np.diff(np.append(traj_starts, batch.count))
    # Sequences per trajectory: one, plus one per stride until a sequence reaches the trajectory's end.
    chunks = 1 + np.maximum(0, -(-(traj_lens - max_seq_len) // stride))
    first = np.repeat(np.cumsum(chunks) - chunks, chunks)  # index of each sequence's trajectory's first sequence
    k = np.arange(int(chunks.sum())) - first  # position of the sequence within its trajectory
    owner = np.repeat(np.arange(len(traj_starts)), chunks)
    starts = traj_starts[owner] + k * stride
    lens = np.minimum(max_seq_len, traj_lens[owner] - k * stride)
    return starts.astype(np.int64), lens.astype(np.int64)


def state_keys(batch) -> list[str]:
    """``state_in_0``, ``state_in_1``, ... present in ``batch`` (in order, stopping at the first gap)."""
    return list(itertools.takewhile(lambda k: k in batch, (f"{STATE_IN}{j}" for j in itertools.count())))


def chop_into_sequences(
    batch: SampleBatch, max_seq_len: int, num_states: int | None = None, overlap: int = 0
) -> dict[str, np.ndarray]:
    """The padded, sequence-major arrays of ``batch`` (module docstring). ``num_states``: the number of state
    columns the model needs (ValueError when the batch has fewer); None: those present. ``overlap``: steps shared
    by consecutive sequences of a trajectory (``sequence_layout``)."""
    keys = state_keys(batch)
    if num_states is not None and len(keys) < num_states:
        raise ValueError(
            f"a recurrent policy needs the state columns state_in_0..state_in_{num_states - 1} in its train batch"
            f" (the sampler records the state each step starts from); the batch has {sorted(batch.keys())}"
        )
    starts, lens = sequence_layout(batch, max_seq_len, overlap)
    mask = np.arange(max_seq_len)[None, :] < lens[:, None]
    rows = (starts[:, None] + np.arange(max_seq_len)[None, :])[mask] if overlap else None
    out: dict[str, np.ndarray] = {SampleBatch.SEQ_LENS: lens.astype(np.int32), SEQ_MASK: mask}
    for key, col in batch.items():
        if key == SampleBatch.SEQ_LENS or key == SEQ_MASK or col.dtype == object:
            continue
        if key in keys:
            out[key] = col[starts]
            continue
        padded = np.zeros((len(lens), max_seq_len) + col.shape[1:], dtype=col.dtype)
        padded[mask] = col if rows is None else col[rows]  # without overlap the sequences tile the batch
        out[key] = padded
    return out


def is_sequence_column(key: str) -> bool:
    """Whether a column of a padded batch holds one row per sequence (not ``[S, L]`` steps)."""
    return key == SampleBatch.SEQ_LENS or key.startswith(STATE_IN)


def flatten_sequences(batch: dict) -> dict:
    """A padded batch with its step columns as ``[S * L, ...]`` rows (what a loss function reads); the sequence
    columns (``seq_lens``, ``state_in_*``) stay ``[S, ...]``. A batch without ``seq_lens`` is returned as it is."""
    if SampleBatch.SEQ_LENS not in batch:
        return batch
    return {k: v if is_sequence_column(k) else v.reshape((-1,) + tuple(v.shape[2:])) for k, v in batch.items()}


def sequence_minibatches(seq_lens, minibatch_steps: int, perm) -> list[np.ndarray]:
    """Minibatches of whole sequences taken in the order ``perm`` (a permutation of the sequence indices), each
    of about ``minibatch_steps`` real steps: laid end to end in that order, sequence ``perm[i]`` starts at step
    ``s_i`` and goes to minibatch ``s_i // minibatch_steps``, so a minibatch holds more than ``minibatch_steps -
    max_seq_len`` and fewer than ``minibatch_steps + max_seq_len`` steps (keep ``minibatch_steps`` several times
    ``max_seq_len``). As for rows, ``total // minibatch_steps`` minibatches are kept and the sequences after them
    (fewer than ``minibatch_steps`` steps) dropped, different ones each epoch. Each minibatch's indices are sorted
    (row order: the sequences of one trajectory stay in time order)."""
    lens = np.asarray(seq_lens.cpu() if isinstance(seq_lens, torch.Tensor) else seq_lens, dtype=np.int64)
    order = np.asarray(perm.cpu() if isinstance(perm, torch.Tensor) else perm, dtype=np.int64)
    kept = int(lens.sum()) // minibatch_steps
    group = (np.cumsum(lens[order]) - lens[order]) // minibatch_steps
    return [np.sort(order[group == g]) for g in range(kept) if (group == g).any()]


def sequence_rows(starts: np.ndarray, lens: np.ndarray, seq_idx: np.ndarray) -> np.ndarray:
    """The flat-batch rows of the given sequences (``sequence_layout``'s ``starts`` and ``lens``), in order."""
    if not len(seq_idx):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(starts[i], starts[i] + lens[i]) for i in seq_idx])


def model_inputs(train_batch: dict, is_training: bool = True) -> tuple[dict, list, torch.Tensor | None]:
    """``(input_dict, state, seq_lens)`` of a (flattened) train batch for ``model(input_dict, state, seq_lens)``:
    the observations, the previous actions and rewards when the batch has them, the ``seq_mask`` of a padded
    batch (the rows the loss reads: a recurrent model may leave the padding out, ``relayrl.models.recurrent``),
    and the sequences' start states (``[]`` and None for a feed-forward batch)."""
    input_dict = {"obs": train_batch[SampleBatch.OBS], "is_training": is_training}
    for key in (SampleBatch.PREV_ACTIONS, SampleBatch.PREV_REWARDS, SEQ_MASK):
        if key in train_batch:
            input_dict[key] = train_batch[key]
    return input_dict, [train_batch[k] for k in state_keys(train_batch)], train_batch.get(SampleBatch.SEQ_LENS)


def valid(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The real steps of ``x`` (``x`` itself when ``mask`` is None), e.g. for a variance: ``x[mask]``."""
    return x if mask is None else x[mask]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``x`` over the real steps (all of them when ``mask`` is None). The padded steps' (zero-padded,
    hence finite) values reach neither the result nor the gradient."""
    return valid(x, mask).mean()


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The sum of ``x`` over the real steps (all of them when ``mask`` is None)."""
    return valid(x, mask).sum()

"""SampleBatch: a table of experience, one numpy array per column, all of the same length.

Usage::

    batch = SampleBatch({SampleBatch.OBS: obs, SampleBatch.ACTIONS: actions, SampleBatch.REWARDS: rewards})
    batch.count                        # number of rows
    batch[SampleBatch.REWARDS]         # a column
    batch.slice(0, 32)                 # rows 0..31, views where numpy allows
    SampleBatch.concat_samples([b1, b2])
    for episode in batch.split_by_episode(): ...
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np

from relayrl.utils import compression

DEFAULT_POLICY_ID = "default_policy"


class SampleBatch:
    """Columns of experience. Column names are the class constants below."""

    OBS = "obs"
    CUR_OBS = "obs"
    NEXT_OBS = "new_obs"
    ACTIONS = "actions"
    REWARDS = "rewards"
    PREV_ACTIONS = "prev_actions"
    PREV_REWARDS = "prev_rewards"
    DONES = "dones"  # the episode ended here, by termination or truncation
    TERMINATEDS = "terminateds"  # the MDP terminated: the value of the next state is 0
    TRUNCATEDS = "truncateds"  # cut by a time limit or the horizon: bootstrap from the next state's value
    INFOS = "infos"
    EPS_ID = "eps_id"
    UNROLL_ID = "unroll_id"
    AGENT_INDEX = "agent_index"
    T = "t"
    ACTION_LOGP = "action_logp"
    ACTION_DIST_INPUTS = "action_dist_inputs"
    VF_PREDS = "vf_preds"
    SEQ_LENS = "seq_lens"

    def __init__(self, *args: Any, **kwargs: Any):
        data = dict(*args, **kwargs)
        self.data: dict[str, np.ndarray] = {}
        lengths = set()
        for key, value in data.items():
            if key == self.SEQ_LENS:
                self.data[key] = np.asarray(value)
                continue
            arr = _as_column(value)
            self.data[key] = arr
            lengths.add(len(arr))
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in self.data.items() if k != self.SEQ_LENS}
            raise ValueError(f"SampleBatch columns differ in length: {sizes}")
        self.count = lengths.pop() if lengths else 0

    # --- dict-like access ---------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        arr = _as_column(value)
        if self.data and key != self.SEQ_LENS and len(arr) != self.count:
            raise ValueError(f"column {key!r} has {len(arr)} rows, the batch has {self.count}")
        if not self.data:
            self.count = len(arr)
        self.data[key] = arr

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"SampleBatch({self.count} rows: {sorted(self.data)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleBatch) or set(self.data) != set(other.data):
            return False
        return all(np.array_equal(self.data[k], other.data[k]) for k in self.data)

    def keys(self):
        return self.data.keys()

    def items(self):
        return self.data.items()

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def copy(self) -> "SampleBatch":
        return SampleBatch({k: v.copy() for k, v in self.data.items()})

    # --- rows and columns ---------------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, Any]]:
        """Yields each row as a dict of column name -> value."""
        for i in range(self.count):
            yield {k: v[i] for k, v in self.data.items() if k != self.SEQ_LENS}

    def columns(self, keys: Iterable[str]) -> list[np.ndarray]:
        return [self.data[k] for k in keys]

    def slice(self, start: int, end: int) -> "SampleBatch":
        return SampleBatch({k: v[start:end] for k, v in self.data.items() if k != self.SEQ_LENS})

    def shuffle(self, rng: np.random.Generator | None = None) -> "SampleBatch":
        """Permutes the rows in place (same permutation for every column) and returns self."""
        rng = rng or np.random.default_rng()
        perm = rng.permutation(self.count)
        for k, v in self.data.items():
            if k != self.SEQ_LENS:
                self.data[k] = v[perm]
        return self

    def split_by_episode(self) -> list["SampleBatch"]:
        """Splits into one batch per episode, using ``eps_id`` (or ``dones`` where there is no eps_id)."""
        if self.count == 0:
            return []
        if self.EPS_ID in self.data:
            ids = self.data[self.EPS_ID]
            bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        elif self.DONES in self.data:
            bounds = np.flatnonzero(self.data[self.DONES][:-1]) + 1
        else:
            raise KeyError("split_by_episode needs an 'eps_id' or a 'dones' column")
        edges = [0, *bounds.tolist(), self.count]
        return [self.slice(a, b) for a, b in zip(edges, edges[1:])]

    def trajectory_ends(self) -> np.ndarray:
        """A mask of the last row of each trajectory: the batch's last row, and every row after which
        ``unroll_id`` changes (a sampler gives each trajectory, or piece of one, its own unroll id)."""
        ends = np.zeros(self.count, dtype=bool)
        if self.count:
            ends[-1] = True
            ids = self.data.get(self.UNROLL_ID)
            if ids is not None:
                ends[:-1] = ids[1:] != ids[:-1]
        return ends

    def split_trajectories(self) -> list["SampleBatch"]:
        """One batch per trajectory (see ``trajectory_ends``); views of this batch's columns."""
        edges = [0, *(np.flatnonzero(self.trajectory_ends()) + 1).tolist()]
        return [self.slice(a, b) for a, b in zip(edges, edges[1:])]

    def concat(self, other: "SampleBatch") -> "SampleBatch":
        return SampleBatch.concat_samples([self, other])

    @staticmethod
    def concat_samples(samples: list) -> "SampleBatch | MultiAgentBatch":
        """Joins batches row-wise; MultiAgentBatches are joined policy by policy."""
        samples = [s for s in samples if s is not None]
        if any(isinstance(s, MultiAgentBatch) for s in samples):
            return MultiAgentBatch.concat_samples(samples)
        samples = [s for s in samples if s.count > 0]
        if not samples:
            return SampleBatch()
        if len(samples) == 1:
            return samples[0]
        keys = samples[0].data.keys()
        for s in samples[1:]:
            if s.data.keys() != keys:
                raise ValueError(f"cannot concat batches with columns {sorted(keys)} and {sorted(s.data.keys())}")
        return SampleBatch({k: np.concatenate([s.data[k] for s in samples]) for k in keys})

    # --- compression ----------------------------------------------------------------------------------------
    def compress(self, bulk: bool = False, columns: Iterable[str] = (OBS, NEXT_OBS)) -> "SampleBatch":
        """LZ4-compresses the named columns in place (row by row, or as one block when ``bulk``)."""
        for key in columns:
            if key in self.data and not _is_packed(self.data[key]):
                arr = self.data[key]
                self.data[key] = (
                    np.array([compression.pack(arr)], dtype=object) if bulk else compression.pack_column(arr)
                )
                if bulk:
                    self._bulk = getattr(self, "_bulk", set()) | {key}
        return self

    def decompress_if_needed(self, columns: Iterable[str] = (OBS, NEXT_OBS)) -> "SampleBatch":
        for key in columns:
            if key in self.data and _is_packed(self.data[key]):
                col = self.data[key]
                if key in getattr(self, "_bulk", set()):
                    self.data[key] = compression.unpack(col[0])
                    self._bulk.discard(key)
                else:
                    self.data[key] = compression.unpack_column(col)
        return self

    def size_bytes(self) -> int:
        return int(sum(v.nbytes for v in self.data.values()))


class MultiAgentBatch:
    """A batch per policy id, plus the number of environment steps they came from."""

    def __init__(self, policy_batches: dict[str, SampleBatch], count: int):
        self.policy_batches = policy_batches
        self.count = count

    @staticmethod
    def wrap_as_needed(batches: dict[str, SampleBatch], count: int) -> "SampleBatch | MultiAgentBatch":
        if len(batches) == 1 and DEFAULT_POLICY_ID in batches:
            return batches[DEFAULT_POLICY_ID]
        return MultiAgentBatch(batches, count)

    @staticmethod
    def concat_samples(samples: list) -> "MultiAgentBatch":
        per_policy: dict[str, list[SampleBatch]] = {}
        count = 0
        for s in samples:
            if isinstance(s, SampleBatch):
                s = MultiAgentBatch({DEFAULT_POLICY_ID: s}, s.count)
            for pid, batch in s.policy_batches.items():
                per_policy.setdefault(pid, []).append(batch)
            count += s.count
        return MultiAgentBatch({pid: SampleBatch.concat_samples(bs) for pid, bs in per_policy.items()}, count)

    def copy(self) -> "MultiAgentBatch":
        return MultiAgentBatch({k: v.copy() for k, v in self.policy_batches.items()}, self.count)

    def total(self) -> int:
        return sum(b.count for b in self.policy_batches.values())

    def compress(self, bulk: bool = False, columns: Iterable[str] = (SampleBatch.OBS, SampleBatch.NEXT_OBS)):
        for batch in self.policy_batches.values():
            batch.compress(bulk=bulk, columns=columns)
        return self

    def decompress_if_needed(self, columns: Iterable[str] = (SampleBatch.OBS, SampleBatch.NEXT_OBS)):
        for batch in self.policy_batches.values():
            batch.decompress_if_needed(columns)
        return self

    def size_bytes(self) -> int:
        return sum(b.size_bytes() for b in self.policy_batches.values())

    def __repr__(self) -> str:
        return f"MultiAgentBatch({self.count} env steps, {self.policy_batches})"


def _as_column(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list) and value and isinstance(value[0], dict):
        col = np.empty(len(value), dtype=object)
        col[:] = value
        return col
    return np.asarray(value)


def _is_packed(col: np.ndarray) -> bool:
    return col.dtype == object and len(col) > 0 and isinstance(col[0], bytes)

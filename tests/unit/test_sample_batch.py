import numpy as np
import pytest

from relayrl.policy.sample_batch import MultiAgentBatch, SampleBatch


def make(n, start=0, eps=None):
    return SampleBatch(
        {
            SampleBatch.OBS: np.arange(start, start + n, dtype=np.float32)[:, None].repeat(2, 1),
            SampleBatch.ACTIONS: np.arange(start, start + n),
            SampleBatch.REWARDS: np.ones(n),
            SampleBatch.EPS_ID: np.array(eps if eps is not None else [0] * n),
        }
    )


def test_count_and_columns():
    b = make(5)
    assert b.count == 5 and len(b) == 5
    assert b[SampleBatch.OBS].shape == (5, 2)
    assert b.columns([SampleBatch.ACTIONS])[0].tolist() == [0, 1, 2, 3, 4]


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        SampleBatch({"a": np.zeros(3), "b": np.zeros(4)})
    b = make(3)
    with pytest.raises(ValueError, match="rows"):
        b["x"] = np.zeros(2)


def test_concat_samples_and_concat():
    a, b = make(3), make(2, start=3)
    c = SampleBatch.concat_samples([a, b])
    assert c.count == 5
    assert c[SampleBatch.ACTIONS].tolist() == [0, 1, 2, 3, 4]
    assert a.concat(b) == c
    with pytest.raises(ValueError, match="columns"):
        SampleBatch.concat_samples([a, SampleBatch({"other": np.zeros(2)})])


def test_slice_rows_shuffle():
    b = make(6)
    s = b.slice(2, 4)
    assert s[SampleBatch.ACTIONS].tolist() == [2, 3]
    rows = list(b.rows())
    assert len(rows) == 6 and rows[3][SampleBatch.ACTIONS] == 3
    b.shuffle(np.random.default_rng(0))
    # Rows stay aligned across columns after the shuffle.
    assert np.array_equal(b[SampleBatch.OBS][:, 0].astype(int), b[SampleBatch.ACTIONS])
    assert sorted(b[SampleBatch.ACTIONS].tolist()) == list(range(6))
    assert b[SampleBatch.ACTIONS].tolist() != list(range(6))


def test_split_by_episode():
    b = make(6, eps=[7, 7, 8, 8, 8, 9])
    parts = b.split_by_episode()
    assert [p.count for p in parts] == [2, 3, 1]
    assert [int(p[SampleBatch.EPS_ID][0]) for p in parts] == [7, 8, 9]
    d = SampleBatch({SampleBatch.DONES: np.array([False, True, False, False, True]), "x": np.arange(5)})
    assert [p.count for p in d.split_by_episode()] == [2, 3]


def test_compress_round_trip():
    b = make(4)
    original = b[SampleBatch.OBS].copy()
    b.compress()
    assert b[SampleBatch.OBS].dtype == object
    b.decompress_if_needed()
    assert np.array_equal(b[SampleBatch.OBS], original)
    b.compress(bulk=True).decompress_if_needed()
    assert np.array_equal(b[SampleBatch.OBS], original)


def test_multi_agent_batch():
    m1 = MultiAgentBatch({"p0": make(2), "p1": make(3)}, count=3)
    m2 = MultiAgentBatch({"p0": make(1)}, count=1)
    m = SampleBatch.concat_samples([m1, m2])
    assert isinstance(m, MultiAgentBatch)
    assert m.count == 4 and m.policy_batches["p0"].count == 3 and m.policy_batches["p1"].count == 3
    assert MultiAgentBatch.wrap_as_needed({"default_policy": make(2)}, 2).count == 2

import numpy as np

from relayrl.utils.filters import MeanStdFilter, NoFilter, filter_from_state, get_filter


def test_mean_std_against_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal([5.0, -3.0, 100.0], [2.0, 0.5, 30.0], size=(994, 3))
    f = MeanStdFilter((3,))
    out = [f(data[i : i + 7]) for i in range(0, len(data), 7)]
    assert f.rs.n == len(data)
    np.testing.assert_allclose(f.rs.mean, data.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(f.rs.std, data.std(axis=0, ddof=1), rtol=1e-10)
    # Once the statistics have settled, filtered values are the numpy z-scores (clipped at 10).
    expected = np.clip((data[-7:] - data.mean(0)) / data.std(0, ddof=1), -10, 10)
    np.testing.assert_allclose(out[-1], expected, atol=0.05)
    assert out[-1].dtype == np.float32


def test_update_false_leaves_statistics():
    f = MeanStdFilter((2,))
    f(np.ones((4, 2)))
    n = f.rs.n
    f(np.zeros((4, 2)), update=False)
    assert f.rs.n == n


def test_merge_across_two_workers_equals_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 2, size=(300, 4)), rng.normal(-4, 1, size=(500, 4))
    master, w1, w2 = MeanStdFilter((4,)), MeanStdFilter((4,)), MeanStdFilter((4,))
    w1(a)
    w2(b)
    # The driver folds each worker's buffer into its filter, then sends the result back.
    for w in (w1, w2):
        master.apply_changes(w.copy())
        w.clear_buffer()
    for w in (w1, w2):
        w.sync(master.copy())
    both = np.concatenate([a, b])
    for f in (master, w1, w2):
        assert f.rs.n == 800
        np.testing.assert_allclose(f.rs.mean, both.mean(0), rtol=1e-10)
        np.testing.assert_allclose(f.rs.std, both.std(0, ddof=1), rtol=1e-10)
    # A second round counts only the new observations.
    c = rng.normal(0, 1, size=(100, 4))
    w1(c)
    master.apply_changes(w1.copy())
    everything = np.concatenate([a, b, c])
    np.testing.assert_allclose(master.rs.mean, everything.mean(0), rtol=1e-10)
    assert master.rs.n == 900


def test_state_round_trip_and_names():
    f = MeanStdFilter((2,))
    f(np.arange(10.0).reshape(5, 2))
    g = filter_from_state(f.to_state())
    np.testing.assert_array_equal(g.rs.mean, f.rs.mean)
    assert g.rs.n == f.rs.n
    assert isinstance(get_filter("NoFilter", (2,)), NoFilter)
    try:
        get_filter("Bogus", (2,))
    except ValueError as e:
        assert "Bogus" in str(e)
    else:
        raise AssertionError("unknown filter accepted")

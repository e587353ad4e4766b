"""The tuned examples reach the results written in them (``expected``), run through Tune like `relayrl train -f`.

Long: run with ``pytest -m learning tests/learning/test_tuned_examples.py`` (or
``python -m relayrl.tuned_examples.regression`` for a table).
"""

import os

import pytest

from relayrl.tuned_examples.regression import HERE, run_tuned_example, runnable, tuned_example_files

FILES = [os.path.relpath(f, HERE) for f in tuned_example_files()]


def test_every_tuned_example_states_its_expected_result():
    from relayrl.experiments import load_experiment_file

    assert {"ppo/cartpole-ppo.yaml", "ppo/pendulum-ppo.yaml", "pg/cartpole-pg.yaml"} <= set(FILES)
    for name in FILES:
        for exp_name, spec in load_experiment_file(os.path.join(HERE, name)).items():
            expected = spec.get("expected") or {}
            reward = "episode_reward_mean" in expected or "policy_reward_mean" in expected  # multi-agent: per policy
            assert reward and "timesteps_total" in expected, (name, exp_name)


@pytest.mark.parametrize("name", FILES)
def test_tuned_example_validates_before_ray(name):
    """Algorithm, environment and every config key of each tuned example are accepted (no Ray, no training)."""
    from relayrl.experiments import load_experiment_file, validate_experiments

    experiments = load_experiment_file(os.path.join(HERE, name))
    if any("NoFrameskip" in str(spec.get("env")) for spec in experiments.values()):
        pytest.importorskip("ale_py", reason="Atari examples need ale-py (pip install 'relayrl[atari]')")
    if any(str(spec.get("env")).startswith("pettingzoo") for spec in experiments.values()):
        pytest.importorskip(
            "pettingzoo", reason="PettingZoo examples need pettingzoo (pip install 'relayrl[pettingzoo]')"
        )
    assert validate_experiments(experiments) >= 1


@pytest.mark.learning
@pytest.mark.parametrize("name", FILES)
def test_tuned_example(name, tmp_path):
    _, why_not = runnable(os.path.join(HERE, name))
    if why_not:  # e.g. the Atari examples ask for a GPU
        pytest.skip(why_not)
    summaries = run_tuned_example(os.path.join(HERE, name), local_dir=str(tmp_path))
    assert summaries
    for s in summaries:
        print(
            f"{name}:{s['experiment']}: reward {s['episode_reward_mean']} at {s['timesteps_total']} steps,"
            f" {s['time_total_s']:.1f} s training"
        )
        assert s["passed"], s["why"]

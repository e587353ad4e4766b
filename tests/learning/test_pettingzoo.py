"""PettingZoo through relayrl (issue 12): a PPO learner beats a random opponent at tic-tac-toe (AEC, action masks)
without ever making an illegal move, and a Parallel env (mpe2's simple_spread) trains.

The learner plays first (player_1); the opponent is RandomPolicy, which picks uniformly among the legal moves and
is not trained. Wins are counted by an on_episode_end callback (custom metric ``win``, averaged over the last 100
games); illegal moves are counted by the env itself, against the mask of the observation the mover was given.
"""

import numpy as np
import pytest

pytest.importorskip("pettingzoo")

from relayrl.agents.ppo import PPOTrainer  # noqa: E402
from relayrl.env import ParallelPettingZooEnv, PettingZooEnv, register_env  # noqa: E402
from relayrl.policy import RandomPolicy  # noqa: E402


class CountingTicTacToe(PettingZooEnv):
    """Tic-tac-toe that counts the moves its players were told were illegal."""

    illegal = 0

    def __init__(self):
        import pettingzoo

        super().__init__(pettingzoo.make("aec", "classic/tictactoe-v3"))

    def reset(self, *, seed=None, options=None):
        obs, infos = super().reset(seed=seed, options=options)
        self._last = obs
        return obs, infos

    def step(self, actions):
        for agent, action in actions.items():
            CountingTicTacToe.illegal += int(self._last[agent]["action_mask"][action] == 0)
        out = super().step(actions)
        self._last = out[0]
        return out


def count_wins(info):
    episode = info["episode"]
    episode.custom_metrics["win"] = float(episode.agent_rewards.get(("player_1", "learner"), 0.0) > 0)


def test_ppo_beats_a_random_tic_tac_toe_player_without_illegal_moves():
    register_env("counting_tictactoe", lambda ctx: CountingTicTacToe())
    CountingTicTacToe.illegal = 0
    trainer = PPOTrainer(
        env="counting_tictactoe",
        config={
            "seed": 0,
            "num_workers": 0,
            "train_batch_size": 2000,
            "sgd_minibatch_size": 250,
            "num_sgd_iter": 10,
            "lr": 3e-4,
            "entropy_coeff": 0.01,
            "count_steps_by": "agent_steps",
            "callbacks": {"on_episode_end": count_wins},
            "multiagent": {
                "policies": {"learner": (None, None, None, {}), "random": (RandomPolicy, None, None, {})},
                "policy_mapping_fn": lambda agent_id, episode, **kw: "learner" if agent_id == "player_1" else "random",
                "policies_to_train": ["learner"],
            },
        },
    )
    try:
        random_weights = trainer.get_policy("random").get_weights()
        wins = []
        while True:
            result = trainer.train()
            wins.append(result["custom_metrics"]["win_mean"])
            if wins[-1] >= 0.9 or result["agent_steps_total"] >= 100_000:
                break
        print(f"tic-tac-toe: win rate {wins[-1]:.2f} at {result['agent_steps_total']} agent steps; {wins}")
        assert wins[0] < 0.85  # a random first player wins about 60% of its games
        assert wins[-1] >= 0.9 and result["agent_steps_total"] <= 100_000
        assert CountingTicTacToe.illegal == 0
        assert result["policy_reward_mean"]["learner"] > 0.7
        assert trainer.get_policy("random").get_weights() == random_weights
    finally:
        trainer.stop()


def test_a_parallel_pettingzoo_env_trains():
    pytest.importorskip("mpe2")
    from mpe2 import simple_spread_v3

    register_env("spread", lambda ctx: ParallelPettingZooEnv(simple_spread_v3.parallel_env(max_cycles=25, N=3)))
    trainer = PPOTrainer(
        env="spread",
        config={"seed": 0, "num_workers": 0, "train_batch_size": 600, "sgd_minibatch_size": 200, "num_sgd_iter": 3},
    )
    try:
        weights = trainer.get_policy().get_weights()
        for _ in range(3):
            result = trainer.train()
        assert result["episodes_total"] >= 3 * 600 // 25 - 1
        assert np.isfinite(result["episode_reward_mean"])
        assert result["agent_steps_total"] == 3 * result["timesteps_total"]  # all 3 agents act every step
        assert any(not np.array_equal(weights[k], v) for k, v in trainer.get_policy().get_weights().items())
    finally:
        trainer.stop()

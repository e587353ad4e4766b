"""Augmented Random Search (Mania et al. 2018, "Simple random search provides a competitive approach to
reinforcement learning", https://arxiv.org/abs/1803.07055), Algorithm 2 (V2-t): a linear policy on
normalised observations (MeanStdFilter), N antithetic directions per iteration, the b best kept:

    theta <- theta + alpha / (b * sigma_R) * sum_{k in top b} (r(theta + nu delta_k) - r(theta - nu delta_k)) delta_k

with sigma_R the standard deviation of the 2b returns used and the directions ranked by max(r+, r-).
``policy_type: "MLPPolicy"`` swaps the linear map for a small MLP (``model.fcnet_hiddens``).
"""

from __future__ import annotations

import math

import numpy as np

from relayrl.agents.es.perturbation_trainer import PerturbationTrainer, validate_perturbation_config
from relayrl.agents.trainer import with_common_config
from relayrl.utils import es_utils

DEFAULT_CONFIG = with_common_config(
    {
        # std deviation of parameter noise (nu).
        "noise_stdev": 0.02,
        # number of perturbs to try (directions N per iteration, each rolled out +/-).
        "num_rollouts": 32,
        # number of perturbs to keep in gradient estimate (the top b directions).
        "rollouts_used": 32,
        # Rollout workers (Ray actors); 0: rollouts run in this process.
        "num_workers": 2,
        # sgd step-size (alpha).
        "sgd_stepsize": 0.01,
        # Observation filter (ARS V2: states normalised by running mean and std).
        "observation_filter": "MeanStdFilter",
        # Floats in the shared noise table (250M float32 = 1 GB, put once in the Ray object store).
        "noise_size": 250000000,
        # probability of evaluating the parameter rewards (an unperturbed episode per direction tried).
        "eval_prob": 0.03,
        # how many of the last rewards we average over (iterations in episode_reward_mean).
        "report_length": 10,
        # Subtracted from every reward of perturbed rollouts (e.g. a survival bonus); not from evaluations.
        "offset": 0,
        # Policy: "LinearPolicy" (a = M x, M_0 = 0) or "MLPPolicy" (model.fcnet_hiddens, model.fcnet_activation).
        "policy_type": "LinearPolicy",
        # Momentum of the SGD step (an EMA of the gradient, as the reference RLlib ARS; 0 is the paper's update).
        "sgd_momentum": 0.9,
    }
)


def validate_config(config: dict) -> None:
    get = config.__getitem__
    if get("rollouts_used") > get("num_rollouts"):
        raise ValueError(
            f"ARS config: 'rollouts_used' ({get('rollouts_used')}) must be <= 'num_rollouts' ({get('num_rollouts')})"
        )
    validate_perturbation_config("ARS", config)
    for key in ("num_rollouts", "rollouts_used"):
        if get(key) < 1:
            raise ValueError(f"ARS config: {key!r} must be >= 1, got {get(key)!r}")
    if get("sgd_stepsize") <= 0:
        raise ValueError(f"ARS config: 'sgd_stepsize' must be > 0, got {get('sgd_stepsize')!r}")
    if not 0.0 <= get("sgd_momentum") < 1.0:
        raise ValueError(f"ARS config: 'sgd_momentum' must be in [0, 1), got {get('sgd_momentum')!r}")


class ARSTrainer(PerturbationTrainer):
    """Augmented Random Search (Mania et al. 2018)."""

    _name = "ARS"
    _default_config = DEFAULT_CONFIG
    _validate_config = staticmethod(validate_config)

    def _make_optimizer(self, num_params: int):
        return es_utils.SGD(num_params, self.config["sgd_stepsize"], momentum=self.config["sgd_momentum"])

    def _rollout_plan(self, num_workers: int, episodes: int, steps: int) -> list[tuple[int, int]]:
        # Exactly num_rollouts directions, split over the workers (the first ones take the remainder).
        missing = max(1, self.config["num_rollouts"] - episodes // 2)
        base, extra = divmod(missing, num_workers)
        return [(base + (i < extra), 0) for i in range(num_workers) if base + (i < extra) > 0]

    def _enough(self, episodes: int, steps: int) -> bool:
        return episodes // 2 >= self.config["num_rollouts"]

    def _update(self, theta: np.ndarray, noise_indices: np.ndarray, noisy_returns: np.ndarray):
        # Keep the rollouts_used best directions, ranked by max(r+, r-) (ARS V2-t, Algorithm 2 step 6).
        used = min(self.config["rollouts_used"], len(noisy_returns))
        order = np.argsort(-noisy_returns.max(axis=1), kind="stable")[:used]
        returns, indices = noisy_returns[order], noise_indices[order]
        n = self.policy.num_params
        g, _ = es_utils.batched_weighted_sum(
            returns[:, 0] - returns[:, 1], (self.noise.get(int(i), n) for i in indices), batch_size=500
        )
        g /= used
        std = float(np.std(returns))
        if not math.isclose(std, 0.0):
            g /= std
        new_theta, update_ratio = self._flat_optimizer.update(theta, -g)
        return new_theta, {
            "grad_norm": float(np.square(g).sum()),
            "update_ratio": float(update_ratio),
            "directions_used": used,
            "returns_std": std,
        }

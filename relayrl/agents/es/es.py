"""Evolution Strategies (Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning", https://arxiv.org/abs/1703.03864): Algorithm 2 with antithetic sampling (mirrored perturbations),
centered-rank fitness shaping, weight decay and Adam, over a shared noise table.

    g = 1 / (2n) * sum_i (F(theta + sigma eps_i) - F(theta - sigma eps_i)) eps_i     (F: centered ranks)
    theta <- Adam(theta, -g + l2_coeff * theta)
"""

from __future__ import annotations

import math

import numpy as np

from relayrl.agents.es.perturbation_trainer import PerturbationTrainer, validate_perturbation_config
from relayrl.agents.trainer import with_common_config
from relayrl.utils import es_utils

DEFAULT_CONFIG = with_common_config(
    {
        # Coefficient of the L2 weight decay added to the ES gradient.
        "l2_coeff": 0.005,
        # Standard deviation sigma of the parameter perturbations.
        "noise_stdev": 0.02,
        # Minimum number of perturbed episodes per iteration (both halves of each antithetic pair count).
        "episodes_per_batch": 1000,
        # Minimum number of env steps of perturbed episodes per iteration.
        "train_batch_size": 10000,
        # Probability of running an unperturbed evaluation episode in place of a perturbed pair.
        "eval_prob": 0.003,
        # Fitness shaping of the returns: "centered_rank" (ranks mapped to [-0.5, 0.5]).
        "return_proc_mode": "centered_rank",
        # Rollout workers (Ray actors); 0: rollouts run in this process.
        "num_workers": 10,
        # Adam step size.
        "stepsize": 0.01,
        # Observation filter, synchronised across workers after each iteration.
        "observation_filter": "MeanStdFilter",
        # Floats in the shared noise table (250M float32 = 1 GB, put once in the Ray object store).
        "noise_size": 250000000,
        # Iterations averaged in episode_reward_mean (over those with evaluation episodes).
        "report_length": 10,
        # Policy: "MLPPolicy" (model.fcnet_hiddens, model.fcnet_activation) or "LinearPolicy".
        "policy_type": "MLPPolicy",
    }
)


# return_proc_mode -> fitness shaping of the [N, 2] returns of the antithetic pairs.
RETURN_PROCS = {"centered_rank": es_utils.compute_centered_ranks}


def validate_config(config: dict) -> None:
    get = config.__getitem__
    if get("return_proc_mode") not in RETURN_PROCS:
        raise ValueError(
            f"ES config: 'return_proc_mode' must be one of {sorted(RETURN_PROCS)}, got {get('return_proc_mode')!r}"
        )
    validate_perturbation_config("ES", config)
    if get("stepsize") <= 0:
        raise ValueError(f"ES config: 'stepsize' must be > 0, got {get('stepsize')!r}")
    if get("episodes_per_batch") < 1:
        raise ValueError(f"ES config: 'episodes_per_batch' must be >= 1, got {get('episodes_per_batch')!r}")
    if get("l2_coeff") < 0:
        raise ValueError(f"ES config: 'l2_coeff' must be >= 0, got {get('l2_coeff')!r}")


class ESTrainer(PerturbationTrainer):
    """Evolution Strategies (Salimans et al. 2017)."""

    _name = "ES"
    _default_config = DEFAULT_CONFIG
    _validate_config = staticmethod(validate_config)

    def _make_optimizer(self, num_params: int):
        return es_utils.Adam(num_params, self.config["stepsize"])

    def _rollout_plan(self, num_workers: int, episodes: int, steps: int) -> list[tuple[int, int]]:
        # Split what is still missing evenly: pairs (2 episodes each) and env steps per worker.
        missing_eps = max(0, self.config["episodes_per_batch"] - episodes)
        missing_steps = max(0, self.config["train_batch_size"] - steps)
        pairs = max(1, math.ceil(missing_eps / (2 * num_workers)))
        return [(pairs, math.ceil(missing_steps / num_workers))] * num_workers

    def _enough(self, episodes: int, steps: int) -> bool:
        return episodes >= self.config["episodes_per_batch"] and steps >= self.config["train_batch_size"]

    def _update(self, theta: np.ndarray, noise_indices: np.ndarray, noisy_returns: np.ndarray):
        proc = RETURN_PROCS[self.config["return_proc_mode"]](noisy_returns)
        n = self.policy.num_params
        g, count = es_utils.batched_weighted_sum(
            proc[:, 0] - proc[:, 1], (self.noise.get(int(i), n) for i in noise_indices), batch_size=500
        )
        g /= noisy_returns.size
        new_theta, update_ratio = self._flat_optimizer.update(theta, -g + self.config["l2_coeff"] * theta)
        return new_theta, {"grad_norm": float(np.square(g).sum()), "update_ratio": float(update_ratio)}

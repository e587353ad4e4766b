"""A3C: asynchronous advantage actor-critic (Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement
Learning", https://arxiv.org/abs/1602.01783).

Remote workers each sample a fragment (in a background thread with ``sample_async``), compute the actor-critic
gradient on it, and the driver applies every gradient as it arrives, sending that worker fresh weights
(AsyncGradientsOptimizer, RLlib 0.7's A3C). The loss is in ``a3c_torch_policy.py``.
"""

from __future__ import annotations

from relayrl.agents.a3c.a3c_torch_policy import A3CTorchPolicy
from relayrl.agents.trainer import with_common_config
from relayrl.agents.trainer_template import build_trainer
from relayrl.optimizers.async_gradients import AsyncGradientsOptimizer

DEFAULT_CONFIG = with_common_config(
    {
        # Size of rollout batch (steps per sub-env in one sample() fragment).
        "sample_batch_size": 10,
        # Use PyTorch as backend - no LSTM support (legacy switch; relayrl always uses PyTorch).
        "use_pytorch": False,
        # GAE(gamma) parameter (the "lambda" of GAE(gamma, lambda)).
        "lambda": 1.0,
        # Max global norm for each gradient calculated by worker.
        "grad_clip": 40.0,
        # Learning rate.
        "lr": 0.0001,
        # Learning rate schedule: [[timestep, lr], ...], interpolated linearly; None keeps lr.
        "lr_schedule": None,
        # Value Function Loss coefficient.
        "vf_loss_coeff": 0.5,
        # Entropy coefficient. The loss ADDS entropy_coeff * entropy (RLlib 2019 convention): negative = bonus.
        "entropy_coeff": -0.01,
        # Min time per iteration.
        "min_iter_time_s": 5,
        # Workers sample async. Note that this increases the effective
        # sample_batch_size by up to 5x due to async buffering of batches.
        "sample_async": True,
        # Remote workers computing gradients (the seed relied on RLlib's common default of 2; 0: one process).
        "num_workers": 2,
        # Options of AsyncGradientsOptimizer: gradients applied per optimizer step.
        "optimizer": {"grads_per_step": 100},
    }
)


def validate_config(config: dict) -> None:
    get = config.__getitem__
    if not 0.0 <= get("lambda") <= 1.0:
        raise ValueError(f"A3C config: 'lambda' must be in [0, 1], got {get('lambda')!r}")
    if get("vf_loss_coeff") < 0:
        raise ValueError(f"A3C config: 'vf_loss_coeff' must be >= 0, got {get('vf_loss_coeff')!r}")
    if get("grad_clip") is not None and get("grad_clip") <= 0:
        raise ValueError(f"A3C config: 'grad_clip' must be > 0 or None, got {get('grad_clip')!r}")


def policy_optimizer(config: dict) -> tuple[type, dict]:
    return AsyncGradientsOptimizer, {}


A3CTrainer = build_trainer(
    name="A3C",
    default_config=DEFAULT_CONFIG,
    default_policy=A3CTorchPolicy,
    policy_optimizer=policy_optimizer,
    validate_config=validate_config,
)

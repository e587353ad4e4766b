"""The training iteration of the asynchronous trainers (IMPALA, Ape-X DQN, Ape-X DDPG).

It differs from build_trainer's in two ways:

- filters are synchronised once per iteration (and only with a real observation filter), not after every
  optimizer step: a filter round trip queues behind the workers' in-flight samples and would drain the
  asynchronous pipeline each step;
- ``timesteps_this_iter`` is the optimizer's ``num_steps_sampled`` minus the trainer's ``timesteps_total``, not
  the growth since the iteration began, so that ``timesteps_total`` stays equal to ``num_steps_sampled`` even
  after an iteration that raised (e.g. a WorkerFailureError) while batches had already arrived.
"""

from __future__ import annotations

import time
from typing import Any

from relayrl.optimizers.rollout import synchronize_filters


def async_train(trainer: Any) -> dict:
    """One iteration: ``optimizer.step()`` until ``min_iter_time_s`` and ``timesteps_per_iteration`` are met."""
    start = time.time()
    optimizer = trainer.optimizer
    config = trainer.config
    prev_steps = optimizer.num_steps_sampled
    local = trainer.workers.local_worker()
    while True:
        optimizer.step()
        local.set_global_vars({"timestep": optimizer.num_steps_sampled})
        sampled = optimizer.num_steps_sampled - prev_steps
        if time.time() - start >= config["min_iter_time_s"] and sampled >= max(1, config["timesteps_per_iteration"]):
            break
    if config["synchronize_filters"] and config["observation_filter"] != "NoFilter":
        synchronize_filters(trainer.workers)
    result = trainer.collect_metrics()
    result["timesteps_this_iter"] = optimizer.num_steps_sampled - trainer._timesteps_total
    stats = optimizer.stats()
    result["info"] = {
        "learner": stats.pop("learner", {}),
        "num_steps_sampled": optimizer.num_steps_sampled,
        "num_steps_trained": optimizer.num_steps_trained,
        **stats,
    }
    return result

"""``build_torch_policy``: an algorithm's policy is a loss function and a few hooks, not a class hierarchy.

    PGTorchPolicy = build_torch_policy("PGTorchPolicy", loss_fn=pg_loss, postprocess_fn=postprocess_pg)

Every hook receives the policy first. ``loss_fn(policy, model, dist_class, train_batch) -> loss`` gets a dict
of tensors keyed by SampleBatch column names; it may return a list of losses, one per optimizer.
"""

from __future__ import annotations

import sys
from typing import Callable

import gymnasium as gym

from relayrl.policy.torch_policy import TorchPolicy


def build_torch_policy(
    name: str,
    loss_fn: Callable,
    get_default_config: Callable[[], dict] | None = None,
    stats_fn: Callable | None = None,
    postprocess_fn: Callable | None = None,
    extra_action_out_fn: Callable | None = None,
    extra_grad_process_fn: Callable | None = None,
    optimizer_fn: Callable | None = None,
    before_init: Callable | None = None,
    after_init: Callable | None = None,
    make_model_and_action_dist: Callable | None = None,
    mixins: list[type] | None = None,
) -> type[TorchPolicy]:
    """Returns a TorchPolicy subclass named ``name`` wired with the given hooks.

    - ``stats_fn(policy, train_batch) -> dict`` learner statistics;
    - ``postprocess_fn(policy, batch, other_agent_batches, episode) -> batch`` e.g. GAE;
    - ``extra_action_out_fn(policy, input_dict, state, model, dist) -> dict`` extra columns per step;
    - ``extra_grad_process_fn(policy) -> dict`` after backward, before the step (default: ``grad_clip``);
    - ``optimizer_fn(policy, config) -> optimizer or list`` (default: Adam at ``lr``);
    - ``before_init`` / ``after_init(policy, obs_space, action_space, config)``;
    - ``make_model_and_action_dist(policy, obs_space, action_space, config) -> (model, dist_class)``;
    - ``mixins``: classes placed before TorchPolicy, for methods such as a KL-coefficient update.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, config: dict):
        if get_default_config is not None:
            config = {**get_default_config(), **config}
        if before_init is not None:
            before_init(self, observation_space, action_space, config)
        model = dist_class = None
        if make_model_and_action_dist is not None:
            # The model is built by the hook; the template's own config must already be set for it.
            self.config = config
            model, dist_class = make_model_and_action_dist(self, observation_space, action_space, config)
        TorchPolicy.__init__(self, observation_space, action_space, config, model=model, dist_class=dist_class)
        if after_init is not None:
            after_init(self, observation_space, action_space, config)

    attrs = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__init__": __init__,
        "__doc__": f"Torch policy {name} built by build_torch_policy.",
        "_loss_fn": staticmethod(loss_fn),
        "_stats_fn": _static(stats_fn),
        "_postprocess_fn": _static(postprocess_fn),
        "_extra_action_out_fn": _static(extra_action_out_fn),
        "_extra_grad_process_fn": _static(extra_grad_process_fn),
        "_optimizer_fn": _static(optimizer_fn),
    }
    return type(name, (*(mixins or []), TorchPolicy), attrs)


def _static(fn: Callable | None):
    return None if fn is None else staticmethod(fn)

"""``build_torch_policy``: an algorithm's policy is a loss function and a few hooks, not a class hierarchy.

    PGTorchPolicy = build_torch_policy("PGTorchPolicy", loss_fn=pg_loss, postprocess_fn=postprocess_pg)

Every hook receives the policy first. ``loss_fn(policy, model, dist_class, train_batch)`` gets a dict of tensors
keyed by SampleBatch column names; what it returns is described in build_torch_policy's docstring.
"""

from __future__ import annotations

import inspect
import sys
from typing import Callable

import gymnasium as gym

from relayrl.policy.torch_policy import TorchPolicy, vf_preds_fetches


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
    needs_value: bool = False,
    recurrent: bool = False,
) -> type[TorchPolicy]:
    """Returns a TorchPolicy subclass named ``name`` wired with the given hooks.

    Data flows through arguments and return values; a hook never leaves results on the policy for another to read.

    - ``loss_fn(policy, model, dist_class, train_batch)`` returns one of
        ``loss``                      a tensor, or a list of tensors (one per optimizer, in ``optimizer_fn``'s order);
        ``(loss, stats)``             plus the loss's statistics: a dict of scalar tensors or numbers, computed
                                      under ``torch.no_grad()`` (they become ``learner_stats``, as floats);
        ``(loss, stats, fetches)``    plus per-row outputs that are not statistics, e.g. ``{"td_error": td}``
                                      (detached): ``learn_on_batch`` / ``compute_gradients`` return them as numpy
                                      arrays next to ``learner_stats`` (replay optimizers read ``td_error``).
      ``model`` is the policy's model or, with several GPUs, a replica of it: compute everything from it.
    - ``stats_fn(policy, train_batch) -> dict`` statistics added to the loss's (e.g. the exploration rate);
      written ``stats_fn(policy, train_batch, loss_stats)`` it also receives the loss's stats. A loss that returns
      only a tensor leaves all the statistics to it;
    - ``postprocess_fn(policy, batch, other_agent_batches, episode) -> batch`` e.g. GAE. Declared with a further
      ``last_r=None`` parameter, it receives the bootstrap values that the fragment's value pass computed (one per
      trajectory of ``batch``: 0 after a termination, else V(next obs)), and computes them itself when None
      (``relayrl.evaluation.postprocessing.bootstrap_values``);
    - ``extra_action_out_fn(policy, input_dict, state, model, dist) -> dict`` extra columns per step (a policy with
      one cannot use the numpy acting path);
    - ``needs_value``: the policy records the value estimate of every observation while acting (the ``vf_preds``
      column, for GAE and bootstrapping). ``extra_action_out_fn=vf_preds_fetches`` is the RLlib 0.7 (2019) way to say so
      and means ``needs_value=True``;
    - ``recurrent``: the loss is written for sequences, so the model may be recurrent (``model.use_lstm`` or a
      custom model with a state; else such a model is rejected when the policy is built). For a recurrent model
      ``train_batch`` is ``load_batch``'s padded batch flattened (``relayrl.policy.rnn_sequencing``): the loss
      calls ``model(*model_inputs(train_batch))`` (observations, previous actions / rewards, ``state_in_*``,
      ``seq_lens``) and reduces with ``masked_mean`` / ``masked_sum`` over ``train_batch.get(SEQ_MASK)`` (None for
      a feed-forward model), so that padded steps change no loss, gradient or statistic;
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

    if extra_action_out_fn is vf_preds_fetches:
        needs_value, extra_action_out_fn = True, None
    attrs = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__init__": __init__,
        "__doc__": f"Torch policy {name} built by build_torch_policy.",
        "_loss_fn": staticmethod(loss_fn),
        "_stats_fn": _static(stats_fn),
        "_stats_fn_takes_loss_stats": stats_fn is not None and _positional_arity(stats_fn) >= 3,
        "_postprocess_fn": _static(postprocess_fn),
        "_postprocess_takes_last_r": postprocess_fn is not None and _takes_keyword(postprocess_fn, "last_r"),
        "_needs_value": bool(needs_value),
        "_supports_recurrent": bool(recurrent),
        "_extra_action_out_fn": _static(extra_action_out_fn),
        "_extra_grad_process_fn": _static(extra_grad_process_fn),
        "_optimizer_fn": _static(optimizer_fn),
    }
    return type(name, (*(mixins or []), TorchPolicy), attrs)


def _static(fn: Callable | None):
    return None if fn is None else staticmethod(fn)


def _params(fn: Callable) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature: the classic form
        return []


def _positional_arity(fn: Callable) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``)."""
    params = _params(fn)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 1 << 20
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _takes_keyword(fn: Callable, name: str) -> bool:
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY) for p in _params(fn))

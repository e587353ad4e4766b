"""The Policy interface: numpy in, numpy out, no deep-learning framework and no Ray.

A RolloutWorker drives a policy like this::

    policy = MyPolicy(observation_space, action_space, config)
    actions, state_outs, extra = policy.compute_actions(obs_batch, state_batches)   # every env step
    batch = policy.postprocess_trajectory(trajectory_batch)                          # at a trajectory's end
    stats = policy.learn_on_batch(train_batch)                                       # by a policy optimizer
    weights = policy.get_weights(); other_policy.set_weights(weights)                # weight sync

Write one from scratch (see ``tests/integration/test_seed_examples.py``) or build a torch one with
``relayrl.policy.build_torch_policy``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from relayrl.policy.sample_batch import SampleBatch


class Policy:
    """Base class of every policy. Subclasses override ``compute_actions`` and, to learn, ``learn_on_batch``
    (or ``compute_gradients`` + ``apply_gradients``), ``get_weights`` and ``set_weights``."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, config: dict):
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config

    def compute_actions(
        self,
        obs_batch: Any,
        state_batches: list | None = None,
        prev_action_batch: Any = None,
        prev_reward_batch: Any = None,
        info_batch: Any = None,
        episodes: list | None = None,
        **kwargs: Any,
    ) -> tuple[Any, list, dict[str, np.ndarray]]:
        """Returns ``(actions, state_outs, extra_fetches)`` for a batch of observations.

        ``extra_fetches`` maps column names (e.g. ``vf_preds``, ``action_logp``) to arrays of one row per
        observation; the sampler stores them in the trajectory. The sampler passes ``deferred=True`` to a policy
        that takes it (or ``**kwargs``): columns that ``postprocess_fragment`` fills in may then be left out."""
        raise NotImplementedError

    def compute_single_action(
        self,
        obs: Any,
        state: list | None = None,
        prev_action: Any = None,
        prev_reward: Any = None,
        info: Any = None,
        episode: Any = None,
        **kwargs: Any,
    ) -> tuple[Any, list, dict[str, Any]]:
        """Unbatched ``compute_actions``: one observation in, one action out."""
        prev_a = None if prev_action is None else [prev_action]
        prev_r = None if prev_reward is None else [prev_reward]
        actions, state_out, extra = self.compute_actions(
            [obs] if not isinstance(obs, np.ndarray) else obs[None],
            [np.asarray(s)[None] for s in state or []],
            prev_action_batch=prev_a,
            prev_reward_batch=prev_r,
            info_batch=None if info is None else [info],
            episodes=None if episode is None else [episode],
            **kwargs,
        )
        return actions[0], [s[0] for s in state_out], {k: v[0] for k, v in extra.items()}

    def postprocess_trajectory(
        self, sample_batch: SampleBatch, other_agent_batches: dict | None = None, episode: Any = None
    ) -> SampleBatch:
        """Called on each trajectory (one episode or the piece of one in a fragment); e.g. computes GAE."""
        return sample_batch

    def postprocess_fragment(
        self, batch: SampleBatch, episodes: list | None = None, other_agent_batches: list | None = None
    ) -> SampleBatch:
        """What the sampler calls once per fragment: ``batch`` holds consecutive trajectories (a new
        ``unroll_id`` starts each; ``episodes`` has one entry per trajectory; in a multi-agent env
        ``other_agent_batches`` too: per trajectory, ``{agent_id: (policy, batch)}`` of the same episode's other
        agents in this fragment). Returns them postprocessed and joined in the same order. The default calls
        ``postprocess_trajectory`` on each; a policy may override it to batch work across trajectories."""
        pieces = batch.split_trajectories()
        episodes = episodes or [None] * len(pieces)
        others = other_agent_batches or [None] * len(pieces)
        return SampleBatch.concat_samples(
            [self.postprocess_trajectory(b, o, ep) for b, ep, o in zip(pieces, episodes, others)]
        )

    def learn_on_batch(self, samples: SampleBatch) -> dict:
        """Improves the policy on a batch; returns learner stats."""
        grads, info = self.compute_gradients(samples)
        self.apply_gradients(grads)
        return info

    def compute_gradients(self, postprocessed_batch: SampleBatch) -> tuple[Any, dict]:
        raise NotImplementedError

    def apply_gradients(self, gradients: Any) -> None:
        raise NotImplementedError

    def get_weights(self) -> Any:
        raise NotImplementedError

    def set_weights(self, weights: Any) -> None:
        raise NotImplementedError

    def get_initial_state(self) -> list[np.ndarray]:
        """The RNN state at an episode's start (one array per state tensor, unbatched); [] if stateless."""
        return []

    def num_state_tensors(self) -> int:
        return len(self.get_initial_state())

    def is_recurrent(self) -> bool:
        """Whether the policy carries a state from step to step (then it learns on sequences)."""
        return bool(self.get_initial_state())

    def on_global_var_update(self, global_vars: dict) -> None:
        """Receives counters such as ``timestep`` from the trainer (drives schedules)."""
        self.global_timestep = global_vars.get("timestep", 0)

    def get_state(self) -> dict:
        """Everything needed to restore this policy in a checkpoint (numpy arrays and plain values)."""
        return {"weights": self.get_weights()}

    def set_state(self, state: dict) -> None:
        self.set_weights(state["weights"])

    def export_model(self, export_dir: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support export_model")

    def export_checkpoint(self, export_dir: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support export_checkpoint")

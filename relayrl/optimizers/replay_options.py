"""The options the two replay optimizers share (SyncReplayOptimizer for DQN/DDPG, AsyncReplayOptimizer for Ape-X).

    options = replay_options(config)                          # from a DQN/DDPG-family config, in one place
    optimizer = SyncReplayOptimizer(workers, **options.kwargs())
    cls, kwargs = replay_optimizer_spec(config)               # build_trainer's policy_optimizer for that family
    SyncReplayOptimizer(workers, learning_starts=1000, buffer_size=50000)   # standalone: any subset, as keywords

Each optimizer takes these as keyword arguments (its ``options_type``; the trainer checks ``optimizer`` sub-keys
against them) and keeps them as ``optimizer.options``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from relayrl.utils.schedules import LinearSchedule


@dataclass(frozen=True)
class ReplayOptions:
    """The keyword options of SyncReplayOptimizer and AsyncReplayOptimizer (frozen; defaults as declared below).

    Args:
        learning_starts: env steps sampled before the first replayed update (Ape-X: over all shards).
        buffer_size: transitions the replay memory holds (Ape-X: over all shards), the oldest evicted first.
        prioritized_replay: prioritized replay (Schaul et al. 2016) instead of uniform sampling.
        prioritized_replay_alpha: priority exponent alpha, P(i) ~ p_i^alpha.
        prioritized_replay_beta: initial importance-sampling exponent beta.
        final_prioritized_replay_beta: beta after its linear annealing (see ``beta_schedule``).
        beta_annealing_fraction: fraction of ``schedule_max_timesteps`` over which beta is annealed.
        schedule_max_timesteps: length of the annealing schedules, in sampled env steps.
        prioritized_replay_eps: added to |TD error| to make a priority.
        train_batch_size: rows of one replayed training batch.
        sample_batch_size: steps per sub-env of a worker's sample batch.
        target_network_update_freq: target network update period: sampled steps (SyncReplay) or trained steps
            (AsyncReplay); 0: never updated by the optimizer.
        compress_observations: LZ4-compress the observations stored in the replay memory.
        seed: seed of the replay sampling (None: not seeded).
    """

    # Steps sampled before the first replayed update (Ape-X: over all shards).
    learning_starts: int = 1000
    # Transitions the replay memory holds (Ape-X: over all shards), the oldest evicted first.
    buffer_size: int = 10000
    # Prioritized replay (Schaul et al. 2016) instead of uniform sampling.
    prioritized_replay: bool = True
    # Priority exponent alpha: P(i) ~ p_i^alpha.
    prioritized_replay_alpha: float = 0.6
    # Initial importance-sampling exponent beta.
    prioritized_replay_beta: float = 0.4
    # Beta after annealing (linear, over beta_annealing_fraction * schedule_max_timesteps sampled steps).
    final_prioritized_replay_beta: float = 0.4
    # Fraction of schedule_max_timesteps over which beta is annealed.
    beta_annealing_fraction: float = 0.2
    # The length of the annealing schedules, in sampled env steps.
    schedule_max_timesteps: int = 100000
    # Added to |TD error| to make a priority.
    prioritized_replay_eps: float = 1e-6
    # Rows of one replayed training batch.
    train_batch_size: int = 32
    # Steps per sub-env of a worker's sample batch.
    sample_batch_size: int = 4
    # Target network update period: sampled steps (SyncReplay) or trained steps (AsyncReplay); 0: never here.
    target_network_update_freq: int = 0
    # LZ4-compress the observations stored in the replay memory.
    compress_observations: bool = False
    # Seed of the replay sampling (None: not seeded).
    seed: int | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of a replay optimizer."""
        return dataclasses.asdict(self)

    def beta_schedule(self) -> LinearSchedule:
        """Beta as a function of sampled steps: ``prioritized_replay_beta`` annealed linearly to
        ``final_prioritized_replay_beta`` over ``beta_annealing_fraction * schedule_max_timesteps`` steps."""
        return LinearSchedule(
            int(self.beta_annealing_fraction * self.schedule_max_timesteps),
            final_p=self.final_prioritized_replay_beta,
            initial_p=self.prioritized_replay_beta,
        )


# The replay options that a policy's config overrides (``multiagent.policies[pid][3]``) set for that policy alone:
# its buffer, its replayed batches, its target updates. The others are the optimizer's: a worker samples
# (``sample_batch_size``) for all of its policies at once, and one seed drives the replay sampling.
POLICY_OPTIONS = (
    "learning_starts",
    "buffer_size",
    "prioritized_replay",
    "prioritized_replay_alpha",
    "prioritized_replay_beta",
    "final_prioritized_replay_beta",
    "beta_annealing_fraction",
    "schedule_max_timesteps",
    "prioritized_replay_eps",
    "train_batch_size",
    "target_network_update_freq",
    "compress_observations",
)


def policy_options(options: ReplayOptions, worker: Any) -> dict[str, ReplayOptions]:
    """Each policy's replay options: ``options`` with the POLICY_OPTIONS that the policy's config overrides, i.e.
    those where the policy's config differs from its worker's (the worker merges each policy's overrides into its
    own config). A worker without a policy map (a user's RLlib 0.7-era evaluator) has one default policy."""
    policy_map = getattr(worker, "policy_map", None)
    if not policy_map:
        from relayrl.policy.sample_batch import DEFAULT_POLICY_ID

        return {DEFAULT_POLICY_ID: options}
    base = getattr(worker, "config", None) or {}
    out = {}
    for pid, policy in policy_map.items():
        own = getattr(policy, "config", None) or {}
        changed = {k: own[k] for k in POLICY_OPTIONS if k in base and k in own and own[k] != base[k]}
        out[pid] = dataclasses.replace(options, **changed) if changed else options
    return out


def build_options(
    options: dict[str, Any], defaults: dict[str, Any] | None = None, owner: str = "replay optimizer"
) -> ReplayOptions:
    """ReplayOptions from a replay optimizer's keyword arguments (``defaults``: the optimizer's own defaults);
    an unknown keyword is a TypeError naming it, as for an explicit signature."""
    unknown = sorted(set(options) - set(ReplayOptions.names()))
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}")
    return ReplayOptions(**{**(defaults or {}), **options})


def replay_options(config: dict) -> ReplayOptions:
    """The replay options of a DQN- or DDPG-family config (DQN, APEX, DDPG, TD3, APEX_DDPG). A config without
    beta annealing keys (DDPG's) keeps beta at ``prioritized_replay_beta``."""
    keys = (
        "learning_starts",
        "buffer_size",
        "prioritized_replay",
        "prioritized_replay_alpha",
        "prioritized_replay_beta",
        "schedule_max_timesteps",
        "prioritized_replay_eps",
        "train_batch_size",
        "sample_batch_size",
        "target_network_update_freq",
        "compress_observations",
        "seed",
    )
    values = {k: config[k] for k in keys}
    values["final_prioritized_replay_beta"] = config.get(
        "final_prioritized_replay_beta", config["prioritized_replay_beta"]
    )
    if "beta_annealing_fraction" in config:
        values["beta_annealing_fraction"] = config["beta_annealing_fraction"]
    return ReplayOptions(**values)


def replay_optimizer_spec(config: dict) -> tuple[type, dict]:
    """build_trainer's ``policy_optimizer`` spec of the DQN and DDPG families: the replay optimizer that
    ``optimizer_class`` names, with the config's replay options."""
    if config["optimizer_class"] == "AsyncReplayOptimizer":
        from relayrl.optimizers.async_replay import AsyncReplayOptimizer as cls
    else:
        from relayrl.optimizers.sync_replay import SyncReplayOptimizer as cls
    return cls, replay_options(config).kwargs()

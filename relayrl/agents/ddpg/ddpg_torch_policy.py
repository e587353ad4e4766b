"""DDPG's policy, with the TD3 options.

Lillicrap et al. 2016, "Continuous control with deep RL" (https://arxiv.org/abs/1509.02971), Algorithm 1:
a deterministic actor mu(s), a critic Q(s, a) regressed on r + gamma Q'(s', mu'(s')), the actor ascending
Q(s, mu(s)), soft target updates theta' <- tau theta + (1 - tau) theta', OU exploration noise.
Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic Methods" (TD3,
https://arxiv.org/abs/1802.09477), Algorithm 1: ``twin_q`` (clipped double Q: the target takes min(Q1', Q2')),
``policy_delay`` (actor and targets updated every d critic updates), ``smooth_target_policy`` (a' = mu'(s') + clip(
N(0, target_noise), -target_noise_clip, target_noise_clip), noise in units of half the action range).

The TD target uses ``n_step_discount`` and TERMINATEDS from the n-step postprocessing (shared with DQN): a
time-limit truncation bootstraps. Prioritized replay weights scale the critic loss; ``td_error`` is returned
for the priority update.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from relayrl.agents.dqn.dqn_torch_policy import (
    N_STEP_DISCOUNT,
    PRIO_WEIGHTS,
    PRIORITIES,
    add_nstep_columns,
    huber,
    small_net_threads,
)
from relayrl.models.action_dist import Deterministic
from relayrl.models.numpy_mirror import ACTIVATIONS as NP_ACTIVATIONS
from relayrl.models.numpy_mirror import NumpyMirror, linear_layers, mlp
from relayrl.models.spaces import UnsupportedSpaceException, check_action_space
from relayrl.models.torch_model import TorchModel, get_activation
from relayrl.policy.finite_checks import check_update
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy import LEARNER_STATS_KEY
from relayrl.policy.torch_policy_template import build_torch_policy
from relayrl.utils.exploration import GaussianNoise, OUNoise, epsilon_schedule
from relayrl.utils.torch_optim import Adam

SB = SampleBatch


def _mlp(in_size: int, hiddens: list[int], activation: str, out_size: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hiddens:
        layers += [nn.Linear(in_size, size), get_activation(activation)()]
        in_size = size
    layers.append(nn.Linear(in_size, out_size))
    return nn.Sequential(*layers)


class DDPGModel(TorchModel):
    """Actor mu(s) squashed by tanh into the Box bounds; critic(s) Q(s, a) on [obs, action]."""

    structured_obs = False  # reads the flat observation vector

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, config: dict):
        act_dim = int(np.prod(action_space.shape))
        super().__init__(obs_space, action_space, act_dim, config.get("model", {}), "ddpg_model")
        obs_dim = int(np.prod(obs_space.shape))
        self.actor_activation = config["actor_hidden_activation"]
        self.actor = _mlp(obs_dim, config["actor_hiddens"], self.actor_activation, act_dim)
        self.q1 = _mlp(obs_dim + act_dim, config["critic_hiddens"], config["critic_hidden_activation"], 1)
        self.q2 = (
            _mlp(obs_dim + act_dim, config["critic_hiddens"], config["critic_hidden_activation"], 1)
            if config["twin_q"]
            else None
        )
        low, high = action_space.low.astype(np.float32), action_space.high.astype(np.float32)
        self.register_buffer("action_low", torch.from_numpy(low), persistent=False)
        self.register_buffer("action_range", torch.from_numpy(high - low), persistent=False)
        self._np_low, self._np_range = low, high - low
        self.reset_numpy_mirrors()

    def reset_numpy_mirrors(self) -> None:
        self._np_actor = NumpyMirror(self.actor.parameters(), self._build_np_actor)
        self._np_ok = self.action_low.device.type == "cpu" and self.actor_activation in NP_ACTIVATIONS

    def _build_np_actor(self) -> list:  # a bound method: a deep copy (the target actor) builds from its own layers
        return linear_layers(self.actor)

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        squashed = torch.tanh(self.actor(obs.float().flatten(1)))
        return self.action_low + (squashed + 1.0) * 0.5 * self.action_range

    def q_values(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.cat([obs.float().flatten(1), actions.float()], dim=1)
        q1 = self.q1(x).squeeze(-1)
        return q1, (self.q2(x).squeeze(-1) if self.q2 is not None else None)

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.q1.parameters()) + (list(self.q2.parameters()) if self.q2 is not None else [])

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        return self.policy(input_dict["obs"]), state

    def numpy_policy(self, obs: np.ndarray) -> np.ndarray | None:
        """mu(s) in numpy for the sampler (CPU only)."""
        if not self._np_ok:
            return None
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        x = mlp(x, self._np_actor.get(), NP_ACTIVATIONS[self.actor_activation], last_linear=True)
        return self._np_low + (np.tanh(x) + 1.0) * 0.5 * self._np_range


def _l2(module: nn.Module) -> torch.Tensor:
    """0.5 * sum of squared weight matrices (biases excluded), as RLlib's l2_reg."""
    return 0.5 * sum((m.weight**2).sum() for m in module.modules() if isinstance(m, nn.Linear))


def target_policy_actions(target: DDPGModel, new_obs: torch.Tensor, config: dict) -> torch.Tensor:
    """mu'(s'), with TD3's target policy smoothing when ``smooth_target_policy``: plus noise
    clip(N(0, target_noise^2), -target_noise_clip, target_noise_clip) * (high - low) / 2, within the bounds."""
    a_tp1 = target.policy(new_obs)
    if not config["smooth_target_policy"]:
        return a_tp1
    noise = (torch.randn_like(a_tp1) * config["target_noise"]).clamp(
        -config["target_noise_clip"], config["target_noise_clip"]
    )
    high = target.action_low + target.action_range
    return torch.max(torch.min(a_tp1 + noise * 0.5 * target.action_range, high), target.action_low)


def critic_loss_fn(policy, model: DDPGModel, batch: dict) -> tuple[torch.Tensor, dict, dict]:
    """(critic loss, stats, {"td_error": Q1 - y per row}) of a batch, as build_torch_policy's loss convention; the
    TD3 target when twin_q / smooth_target_policy are set."""
    config = policy.config
    target: DDPGModel = policy.target_model
    obs, new_obs = batch[SB.OBS], batch[SB.NEXT_OBS]
    rewards = batch[SB.REWARDS].float()
    discount = batch[N_STEP_DISCOUNT] if N_STEP_DISCOUNT in batch else torch.full_like(rewards, config["gamma"])
    live = discount * (1.0 - batch[SB.TERMINATEDS].float())
    with torch.no_grad():
        a_tp1 = target_policy_actions(target, new_obs, config)
        q1_tp1, q2_tp1 = target.q_values(new_obs, a_tp1)
        q_tp1 = torch.min(q1_tp1, q2_tp1) if q2_tp1 is not None else q1_tp1
        y = rewards + live * q_tp1
    q1, q2 = model.q_values(obs, batch[SB.ACTIONS])
    weights = batch[PRIO_WEIGHTS] if PRIO_WEIGHTS in batch else torch.ones_like(rewards)

    def err(q):
        td = q - y
        return huber(td, config["huber_threshold"]) if config["use_huber"] else 0.5 * td * td

    td_error = q1 - y
    per_sample = err(q1) + (err(q2) if q2 is not None else 0.0)
    loss = (weights * per_sample).mean()
    if config["l2_reg"]:
        loss = loss + config["l2_reg"] * (_l2(model.q1) + (_l2(model.q2) if model.q2 is not None else 0.0))
    stats = {"critic_loss": loss.detach(), "mean_q": q1.detach().mean()}
    return loss, stats, {"td_error": td_error.detach()}


def actor_loss_fn(policy, model: DDPGModel, batch: dict) -> torch.Tensor:
    obs = batch[SB.OBS]
    q1, _ = model.q_values(obs, model.policy(obs))
    loss = -q1.mean()
    if policy.config["l2_reg"]:
        loss = loss + policy.config["l2_reg"] * _l2(model.actor)
    return loss


def ddpg_loss(policy, model, dist_class, batch: dict) -> tuple[list[torch.Tensor], dict, dict]:
    """([actor loss, critic loss], stats, fetches): the template's view; learning itself is
    DDPGLearningMixin.learn_on_tensors."""
    critic_loss, stats, fetches = critic_loss_fn(policy, model, batch)
    return [actor_loss_fn(policy, model, batch), critic_loss], stats, fetches


class DDPGLearningMixin:
    """The update: critic step; every ``policy_delay`` updates an actor step and a soft target update."""

    def learn_on_batch(self, samples) -> dict:
        with small_net_threads(self):
            return self.learn_on_tensors(self.load_batch(samples))

    def learn_on_tensors(self, batch: dict) -> dict:
        """One critic step (and, every ``policy_delay``, an actor step); returns ``learner_stats`` and the
        critic's per-row ``td_error`` for the priority update."""
        config, model = self.config, self.model
        actor_opt, critic_opt = self._optimizers
        critic_loss, critic_stats, fetches = critic_loss_fn(self, model, batch)
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        if config.get("check_nan", True):
            check_update(self, [critic_loss], batch, critic_stats)  # before the step: NaN never reaches the weights
        stats = {k: v.item() for k, v in critic_stats.items()}
        clip = config.get("grad_norm_clipping")
        if clip:
            stats["critic_gnorm"] = float(nn.utils.clip_grad_norm_(model.critic_parameters(), clip))
        critic_opt.step()
        self.num_updates += 1
        if self.num_updates % config["policy_delay"] == 0:
            actor_loss = actor_loss_fn(self, model, batch)
            actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            if config.get("check_nan", True):
                check_update(self, [actor_loss], batch, {"actor_loss": actor_loss})
            if clip:
                stats["actor_gnorm"] = float(nn.utils.clip_grad_norm_(model.actor.parameters(), clip))
            actor_opt.step()
            self.num_actor_updates += 1
            self._last_actor_loss = actor_loss.item()
            if not config["target_network_update_freq"]:
                self.update_target(config["tau"])
        stats["actor_loss"] = self._last_actor_loss
        return {LEARNER_STATS_KEY: stats, "td_error": fetches["td_error"].cpu().numpy()}

    def compute_gradients(self, samples):
        raise NotImplementedError("DDPG learns with learn_on_batch (two optimizers, delayed actor updates)")

    def compute_td_error(self, batch) -> np.ndarray:
        tensors = self.load_batch(batch if isinstance(batch, SampleBatch) else SampleBatch(batch))
        tensors.pop(PRIO_WEIGHTS, None)
        with torch.no_grad(), small_net_threads(self):
            _, _, fetches = critic_loss_fn(self, self.model, tensors)
        return fetches["td_error"].cpu().numpy()

    def update_target(self, tau: float | None = None) -> None:
        """theta' <- tau theta + (1 - tau) theta' (tau defaults to the config's; 1.0 is a hard copy)."""
        tau = self.config["tau"] if tau is None else tau
        with torch.no_grad():
            src = list(self.model.parameters())
            dst = list(self.target_model.parameters())
            torch._foreach_lerp_(dst, src, tau)

    def get_state(self) -> dict:
        target = {k: v.detach().cpu().numpy().copy() for k, v in self.target_model.state_dict().items()}
        return {**super().get_state(), "target_weights": target, "num_updates": self.num_updates}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "target_weights" in state:
            self.target_model.load_state_dict(
                {k: torch.as_tensor(np.asarray(v)) for k, v in state["target_weights"].items()}
            )
        self.num_updates = int(state.get("num_updates", 0))

    def set_weights(self, weights: dict) -> None:
        # Weights that came through Ray's object store are read-only arrays: copy before torch wraps them.
        super().set_weights(
            {
                k: v if getattr(v, "flags", None) is None or v.flags.writeable else np.array(v)
                for k, v in weights.items()
            }
        )
        if self.config.get("worker_index", 0) > 0:
            self.target_model.load_state_dict(self.model.state_dict())


class DDPGActionMixin:
    """Deterministic actions plus OU or Gaussian noise (scaled to the action range), clipped to the bounds."""

    def cur_noise_multiplier(self) -> float:
        """The exploration schedule's value (Ape-X: the worker's constant epsilon), or 1 without annealing."""
        if self.config["exploration_should_anneal"] or self.config.get("per_worker_exploration"):
            return float(self.exploration.value(self.global_timestep))
        return 1.0

    def compute_actions(
        self,
        obs_batch,
        state_batches=None,
        prev_action_batch=None,
        prev_reward_batch=None,
        info_batch=None,
        episodes=None,
        explore=None,
        **kwargs,
    ):
        explore = self.config.get("explore", True) if explore is None else explore
        obs = np.asarray(obs_batch, dtype=np.float32)
        actions = self.model.numpy_policy(obs)
        if actions is None:
            with torch.no_grad(), small_net_threads(self):
                actions = self.model.policy(torch.from_numpy(obs).to(self.device)).cpu().numpy()
        if not explore:
            return actions, [], {}
        space = self.action_space
        if self.global_timestep < self.config["pure_exploration_steps"]:
            actions = self._rng.uniform(space.low, space.high, size=actions.shape).astype(np.float32)
            return actions, [], {}
        if episodes is not None and self.config["exploration_noise_type"] == "ou":
            ids = np.fromiter((e.episode_id for e in episodes), dtype=np.int64, count=len(episodes))
            if self._episode_ids is not None and len(self._episode_ids) == len(ids):
                self.noise.reset(ids != self._episode_ids)  # a new episode starts with fresh OU state
            self._episode_ids = ids
        scale = self.config["noise_scale"] * self.cur_noise_multiplier()
        if self.config["exploration_noise_type"] == "ou":
            noise = self.noise.sample(len(actions)) * scale * self.model._np_range
        else:
            noise = self.noise.sample(actions.shape) * 0.5 * self.model._np_range * scale
        return np.clip(actions + noise, space.low, space.high).astype(np.float32), [], {}


def postprocess_ddpg(policy, batch: SampleBatch, other_agent_batches=None, episode=None) -> SampleBatch:
    add_nstep_columns(batch, policy.config["n_step"], policy.config["gamma"])
    if policy.config.get("worker_side_prioritization"):
        batch[PRIORITIES] = np.abs(policy.compute_td_error(batch)).astype(np.float32)
    return batch


def make_ddpg_model(policy, obs_space, action_space, config: dict):
    check_action_space("DDPG", action_space, [gym.spaces.Box])
    if len(action_space.shape) != 1:
        raise UnsupportedSpaceException(action_space, [gym.spaces.Box], "DDPG", detail="the Box must be 1-D")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(f"DDPG needs finite action bounds, got {action_space}")
    return DDPGModel(obs_space, action_space, config), Deterministic


def make_optimizers(policy, config: dict) -> list:
    return [
        Adam(policy.model.actor.parameters(), lr=config["actor_lr"]),
        Adam(policy.model.critic_parameters(), lr=config["critic_lr"]),
    ]


def _after_init(policy, obs_space, action_space, config: dict) -> None:
    policy.target_model = copy.deepcopy(policy.model)
    for p in policy.target_model.parameters():
        p.requires_grad_(False)
    policy.num_updates = policy.num_actor_updates = 0
    policy._last_actor_loss = 0.0
    policy.exploration = epsilon_schedule(config, config.get("worker_index", 0))
    act_dim = int(np.prod(action_space.shape))
    if config["exploration_noise_type"] == "ou":
        policy.noise = OUNoise(act_dim, config["exploration_theta"], config["exploration_sigma"], policy._rng)
    else:
        policy.noise = GaussianNoise(config["exploration_gaussian_sigma"], policy._rng)
    policy._episode_ids = None


def _default_config() -> dict:
    from relayrl.agents.ddpg.ddpg import DEFAULT_CONFIG

    return DEFAULT_CONFIG


DDPGTorchPolicy = build_torch_policy(
    "DDPGTorchPolicy",
    loss_fn=ddpg_loss,
    get_default_config=_default_config,
    postprocess_fn=postprocess_ddpg,
    optimizer_fn=make_optimizers,
    after_init=_after_init,
    make_model_and_action_dist=make_ddpg_model,
    mixins=[DDPGActionMixin, DDPGLearningMixin],
)

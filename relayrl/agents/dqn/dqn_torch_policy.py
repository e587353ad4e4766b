"""DQN's policy: the (double, distributional, n-step) Q-learning loss with PER weights, and epsilon-greedy acting.

Mnih et al. 2015, "Human-level control through deep RL" (target network, Huber loss); van Hasselt et al. 2016,
"Deep RL with Double Q-learning" (eq. 4: the online net picks a', the target net values it); Bellemare et al.
2017, "A Distributional Perspective on RL" (Algorithm 1: the C51 projection, cross-entropy loss); Schaul et al.
2016, "Prioritized Experience Replay" (importance weights in the loss, |TD| priorities); Sutton & Barto (n-step
returns); Hessel et al. 2018, "Rainbow" (the combination, the KL/cross-entropy as priority when distributional).

The TD target is r^(n) + gamma^m * (1 - terminated) * Q'(s_{t+m}, a'): ``n_step_discount`` = gamma^m and the
TERMINATEDS column come from ``adjust_nstep``; a time-limit truncation is not a termination and bootstraps.

Action masks: with a Dict observation holding an action mask (``model.action_mask_key``, PettingZoo's
``action_mask`` by default), the policy finds the mask's columns in its own flat observation space (so each
policy of a multi-agent setup finds its own); the model slices them out (the torso never sees them) and masked
actions get Q = -inf: never chosen greedily, by epsilon exploration or as the target's a'. Acting on an all-zero
mask is a ValueError.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from relayrl.agents.dqn.dqn_model import DQNModel
from relayrl.agents.dqn.r2d2 import RecurrentQModel, r2d2_loss
from relayrl.evaluation.n_step import adjust_nstep
from relayrl.models.action_dist import Categorical
from relayrl.models.action_mask import ACTION_MASK, check_legal, mask_columns
from relayrl.models.catalog import MODEL_DEFAULTS
from relayrl.models.spaces import check_action_space
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy
from relayrl.utils.exploration import epsilon_schedule
from relayrl.utils.torch_optim import Adam

SB = SampleBatch
N_STEP_DISCOUNT = "n_step_discount"
PRIORITIES = "priorities"  # worker-side |TD| priorities, consumed by the replay buffer
PRIO_WEIGHTS = "weights"  # importance-sampling weights of prioritized replay


def project_distribution(
    next_probs: torch.Tensor,
    rewards: torch.Tensor,
    discounts: torch.Tensor,
    support: torch.Tensor,
    v_min: float,
    v_max: float,
) -> torch.Tensor:
    """C51's projection of r + discount * Z(s') onto the fixed support (Bellemare et al. 2017, Algorithm 1).

    ``next_probs`` [B, atoms] are the probabilities of Z(s', a*); ``discounts`` [B] is gamma^m (1 - terminated).
    Returns the target probabilities m [B, atoms]."""
    num_atoms = support.shape[0]
    delta_z = (v_max - v_min) / (num_atoms - 1)
    tz = (rewards.unsqueeze(1) + discounts.unsqueeze(1) * support.unsqueeze(0)).clamp(v_min, v_max)
    b = ((tz - v_min) / delta_z).clamp(0, num_atoms - 1)
    lower, upper = b.floor(), b.ceil()
    # When b lands exactly on an atom (lower == upper) all of its mass goes there.
    m_lower = next_probs * (upper - b + (lower == upper).to(b.dtype))
    m_upper = next_probs * (b - lower)
    m = torch.zeros_like(next_probs)
    m.scatter_add_(1, lower.long(), m_lower)
    m.scatter_add_(1, upper.long(), m_upper)
    return m


def huber(x: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    absx = x.abs()
    return torch.where(absx < delta, 0.5 * x * x, delta * (absx - 0.5 * delta))


def dqn_loss(policy, model: DQNModel, dist_class, batch: dict) -> tuple[torch.Tensor, dict, dict]:
    """(loss, stats, {"td_error": per-row TD errors (cross-entropies when distributional), for priorities}); a
    recurrent model's batch of replayed sequences goes to R2D2's loss (``r2d2.py``)."""
    if isinstance(model, RecurrentQModel):
        return r2d2_loss(policy, model, dist_class, batch)
    config = policy.config
    target_model: DQNModel = policy.target_model
    obs, new_obs = batch[SB.OBS], batch[SB.NEXT_OBS]
    actions = batch[SB.ACTIONS].long()
    rewards = batch[SB.REWARDS].float()
    n = len(actions)
    discount = batch[N_STEP_DISCOUNT] if N_STEP_DISCOUNT in batch else torch.full_like(rewards, config["gamma"])
    live = discount * (1.0 - batch[SB.TERMINATEDS].float())
    if model.noisy:
        model.reset_noise()
        target_model.reset_noise()
    rows = torch.arange(n, device=rewards.device)
    if config["double_q"]:
        # One forward over [s_t; s_{t+n}]: the online net's Q(s_t) for the loss and Q(s_{t+n}) to pick a'.
        q_both, logits_both, _ = model.q_values(torch.cat([obs, new_obs]))
        q_t, q_tp1_online = q_both[:n], q_both[n:].detach()
        logits_t = None if logits_both is None else logits_both[:n]
    else:
        q_t, logits_t, _ = model.q_values(obs)
    with torch.no_grad():
        q_tp1, logits_tp1, mask_tp1 = target_model.q_values(new_obs)
        select = q_tp1_online if config["double_q"] else q_tp1
        if mask_tp1 is not None:
            select = select.masked_fill(mask_tp1 <= 0, float("-inf"))
        a_tp1 = select.argmax(dim=1)
        if model.num_atoms == 1:
            target = rewards + live * q_tp1[rows, a_tp1]
        else:
            next_probs = logits_tp1[rows, a_tp1].softmax(dim=-1)
            target = project_distribution(next_probs, rewards, live, model.support, config["v_min"], config["v_max"])
    weights = batch[PRIO_WEIGHTS] if PRIO_WEIGHTS in batch else torch.ones_like(rewards)
    q_selected = q_t[rows, actions]
    if model.num_atoms == 1:
        td_error = q_selected - target
        per_sample = huber(td_error)
    else:
        per_sample = -(target * F.log_softmax(logits_t[rows, actions], dim=-1)).sum(-1)
        td_error = per_sample  # Rainbow prioritizes by the distributional loss
    loss = (weights * per_sample).mean()
    td_error = td_error.detach()
    stats = {"loss": loss.detach(), "mean_q": q_selected.detach().mean(), "mean_td_error": td_error.mean()}
    return loss, stats, {"td_error": td_error}


class small_net_threads:
    """Runs a block with one torch intra-op thread when the policy's nets are small MLPs on the CPU.

    A 32-row update of a small MLP is a few dozen tiny kernels: waking a second intra-op thread for each costs
    more than it saves, and on a busy machine the spinning threads are far worse (measured on 2 shared cores:
    1.1 ms CPU per DQN update with one thread, 44 ms with two). Image models keep torch's thread pool."""

    def __init__(self, policy):
        self.active = policy.device.type == "cpu" and not getattr(policy, "_large_model", False)
        self.prev = 0

    def __enter__(self):
        if self.active:
            self.prev = torch.get_num_threads()
            if self.prev != 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.active and self.prev != 1:
            torch.set_num_threads(self.prev)


def dqn_stats(policy, batch: dict) -> dict:
    return {"cur_epsilon": policy.cur_epsilon()}


def postprocess_nstep(policy, batch: SampleBatch, other_agent_batches=None, episode=None) -> SampleBatch:
    """n-step returns (``adjust_nstep`` with the TERMINATEDS column as its "dones"), ``n_step_discount`` and,
    with ``worker_side_prioritization``, the initial |TD| priorities computed here on the worker."""
    config = policy.config
    if policy.is_recurrent():  # R2D2: the n-step targets are made inside each replayed sequence, by the loss
        return batch
    add_nstep_columns(batch, config["n_step"], config["gamma"])
    if config.get("worker_side_prioritization"):
        batch[PRIORITIES] = np.abs(policy.compute_td_error(batch)).astype(np.float32)
    return batch


def add_nstep_columns(batch: SampleBatch, n_step: int, gamma: float) -> None:
    if n_step > 1:
        cols = {
            "rewards": batch[SB.REWARDS].astype(np.float32),
            "new_obs": batch[SB.NEXT_OBS],
            "dones": batch[SB.TERMINATEDS].copy(),
        }
        adjust_nstep(n_step, gamma, cols)
        batch[SB.REWARDS], batch[SB.NEXT_OBS], batch[SB.TERMINATEDS] = cols["rewards"], cols["new_obs"], cols["dones"]
        batch[N_STEP_DISCOUNT] = cols[N_STEP_DISCOUNT].astype(np.float32)
    else:
        batch[N_STEP_DISCOUNT] = np.full(batch.count, gamma, dtype=np.float32)


class TargetNetworkMixin:
    """A frozen copy of the model; ``update_target()`` copies the online weights into it."""

    def _make_target(self) -> None:
        self.target_model = copy.deepcopy(self.model)
        for p in self.target_model.parameters():
            p.requires_grad_(False)

    def update_target(self) -> None:
        self.target_model.load_state_dict(self.model.state_dict())

    def set_weights(self, weights: dict) -> None:
        # Weights that came through Ray's object store are read-only arrays: copy before torch wraps them.
        super().set_weights(
            {
                k: v if getattr(v, "flags", None) is None or v.flags.writeable else np.array(v)
                for k, v in weights.items()
            }
        )
        if self.config.get("worker_index", 0) > 0:
            # An actor's target is its latest copy of the learner's net (used for worker-side priorities).
            self.update_target()

    def get_state(self) -> dict:
        target = {k: v.detach().cpu().numpy().copy() for k, v in self.target_model.state_dict().items()}
        return {**super().get_state(), "target_weights": target}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "target_weights" in state:
            self.target_model.load_state_dict(
                {k: torch.as_tensor(np.asarray(v)) for k, v in state["target_weights"].items()}
            )
        else:
            self.update_target()


class QLearningMixin:
    """Epsilon-greedy acting over (masked) Q-values, and TD errors for priorities."""

    def cur_epsilon(self) -> float:
        return float(self.exploration.value(self.global_timestep))

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
        obs = np.asarray(obs_batch)
        if obs.dtype != np.uint8:
            obs = obs.astype(np.float32, copy=False)
        noisy = self.model.noisy and explore
        state_out: list = []
        if self._recurrent:  # one step of each row's sequence, from its state
            with torch.no_grad(), small_net_threads(self):
                state = [torch.as_tensor(np.asarray(s, dtype=np.float32), device=self.device) for s in state_batches]
                q, state_t = self.model.unroll(torch.from_numpy(obs).to(self.device)[:, None], state)
            q, mask = q[:, 0].cpu().numpy(), None
            state_out = [s.cpu().numpy() for s in state_t]
            out = q, mask
        else:
            out = None if noisy else self.model.numpy_q(obs)
        if out is None:
            with torch.no_grad(), small_net_threads(self):
                self.model.set_noise(noisy)
                if noisy:
                    self.model.reset_noise()
                q, _, mask = self.model.q_values(torch.from_numpy(obs).to(self.device))
                self.model.set_noise(True)
            q = q.cpu().numpy()
            mask = None if mask is None else mask.cpu().numpy()
        else:
            q, mask = out
        if mask is not None:
            check_legal(mask)
            q = np.where(mask > 0, q, -np.inf)
        actions = q.argmax(axis=1)
        eps = self.cur_epsilon() if explore else 0.0
        if eps > 0.0:
            rand = self._rng.random(len(q)) < eps
            if rand.any():
                scores = self._rng.random((int(rand.sum()), q.shape[1]))
                if mask is not None:
                    scores[mask[rand] <= 0] = -1.0  # a random *valid* action
                actions[rand] = scores.argmax(axis=1)
        return actions, state_out, {}

    def load_batch(self, batch) -> dict:
        """A batch replayed from a sequence buffer is already padded sequences (``sequence_replay``): its columns
        go to the device as they are; any other batch as TorchPolicy loads it."""
        if not (self._recurrent and SB.SEQ_LENS in batch):
            return super().load_batch(batch)
        tensors = {}
        for key, col in batch.items():
            col = np.asarray(col)
            if col.dtype == object or key == SB.INFOS:
                continue
            if key == SB.ACTIONS:
                col = col.astype(np.int64, copy=False)
            elif col.dtype == np.float64:
                col = col.astype(np.float32)
            col = np.array(col) if not col.flags.writeable else np.ascontiguousarray(col)
            tensors[key] = torch.from_numpy(col).to(self.device)
        return tensors

    def compute_td_error(self, batch: SampleBatch | dict) -> np.ndarray:
        """TD errors (cross-entropies when distributional) of a postprocessed batch, without learning."""
        tensors = self.load_batch(batch if isinstance(batch, SampleBatch) else SampleBatch(batch))
        tensors.pop(PRIO_WEIGHTS, None)
        with torch.no_grad(), small_net_threads(self):
            _, _, fetches = self.compute_loss(self.model, tensors)
        return fetches["td_error"].cpu().numpy()

    def learn_on_batch(self, samples) -> dict:
        """One gradient step; the result also holds ``td_error`` (per row, from the loss's fetches) for the
        priority update (as does ``compute_gradients``'s info)."""
        with small_net_threads(self):
            return self.learn_on_tensors(self.load_batch(samples))


def make_q_model(policy, obs_space, action_space, config: dict):
    model_config = {**MODEL_DEFAULTS, **config.get("model", {})}
    if model_config.get("use_lstm") and not model_config.get("custom_model"):
        if config["num_atoms"] > 1 or config["noisy"]:
            raise ValueError("DQN with model.use_lstm (R2D2) supports neither num_atoms > 1 nor noisy yet")
        if mask_columns(obs_space, action_space, model_config.get("action_mask_key", ACTION_MASK)):
            raise ValueError("DQN with model.use_lstm (R2D2) does not support action masks yet")
        q_model = RecurrentQModel(
            obs_space,
            action_space,
            int(action_space.n),
            model_config,
            q_hiddens=config["hiddens"],
            dueling=config["dueling"],
        )
        return q_model, Categorical
    model = DQNModel(
        obs_space,
        action_space,
        int(action_space.n),
        {**MODEL_DEFAULTS, **config.get("model", {})},
        q_hiddens=config["hiddens"],
        dueling=config["dueling"],
        num_atoms=config["num_atoms"],
        v_min=config["v_min"],
        v_max=config["v_max"],
        noisy=config["noisy"],
        sigma0=config["sigma0"],
        mask_slice=mask_columns(obs_space, action_space, config.get("model", {}).get("action_mask_key", ACTION_MASK)),
    )
    return model, Categorical


def clip_gradients(policy) -> dict:
    clip = policy.config.get("grad_norm_clipping")
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(policy._params, clip)
        return {"grad_gnorm": float(norm)}
    return {}


def make_optimizer(policy, config: dict):
    return Adam(policy.model.parameters(), lr=config["lr"], eps=config["adam_epsilon"])


def _after_init(policy, obs_space, action_space, config: dict) -> None:
    policy._make_target()
    policy._params = list(policy.model.parameters())
    policy._large_model = policy.model.vision is not None
    policy.exploration = epsilon_schedule(config, config.get("worker_index", 0))


def _before_init(policy, obs_space, action_space, config: dict) -> None:
    import gymnasium as gym

    check_action_space("DQN", action_space, [gym.spaces.Discrete])


def _default_config() -> dict:
    from relayrl.agents.dqn.dqn import DEFAULT_CONFIG

    return DEFAULT_CONFIG


DQNTorchPolicy = build_torch_policy(
    "DQNTorchPolicy",
    loss_fn=dqn_loss,
    get_default_config=_default_config,
    stats_fn=dqn_stats,
    postprocess_fn=postprocess_nstep,
    extra_grad_process_fn=clip_gradients,
    optimizer_fn=make_optimizer,
    before_init=_before_init,
    after_init=_after_init,
    make_model_and_action_dist=make_q_model,
    mixins=[QLearningMixin, TargetNetworkMixin],
    recurrent=True,  # model.use_lstm: R2D2's sequence loss (r2d2.py)
)

"""R2D2-style recurrent DQN: DQN with ``model.use_lstm`` (Kapturowski et al. 2019, "Recurrent Experience Replay in
Distributed Reinforcement Learning", https://openreview.net/forum?id=r1lyTjAqYX).

- Model: the default torso (``fcnet_hiddens`` MLP or conv stack, ``recurrent.feature_torso``) -> LSTM / GRU of
  ``lstm_cell_size`` (``rnn_type``) -> DQN's advantage head and, with ``dueling``, value head (Wang et al. 2016,
  eq. 9).
- Replay stores fixed-length sequences with the state stored at their start (``optimizers/sequence_replay.py``).
- Loss (section 3, "stored state" with "burn-in"): the online and target nets unroll each sequence from its stored
  state; the first ``burn_in`` steps only warm the online net's state (run without gradient, no loss on them);
  each later real step t gets the n-step double-Q target computed inside the sequence,
  ``sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - terminated) Q'(s_{t+m}, argmax_a Q(s_{t+m}, a))`` with
  ``m = min(n_step, seq_len - t)`` (the sequence's last steps bootstrap from the observation after it); padded
  steps are masked out. Huber loss, averaged over each sequence's learned steps, times its PER weight.
- Priorities (eq. 2 and section 3): ``p = eta * max_t |delta_t| + (1 - eta) * mean_t |delta_t|``, eta = 0.9.

Not here (yet): the value rescaling h(x) of the paper, distributional (C51) and noisy heads, action masks.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from relayrl.models.recurrent import RNN_TYPES, feature_torso
from relayrl.models.torch_model import TorchModel
from relayrl.policy.sample_batch import SampleBatch

SB = SampleBatch
# R2D2's priority mixture: eta * max |TD| + (1 - eta) * mean |TD| over a sequence (section 3).
PRIORITY_ETA = 0.9


class RecurrentQModel(TorchModel):
    """Q-network with an RNN between the torso and the (dueling) heads; ``unroll`` runs ``[S, T]`` sequences."""

    structured_obs = False
    noisy = False
    num_atoms = 1
    mask_slice = None

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        num_outputs: int,
        model_config: dict,
        name: str = "r2d2_model",
        *,
        q_hiddens: list[int] = (256,),
        dueling: bool = True,
    ):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        from relayrl.agents.dqn.dqn_model import DQNModel

        self.num_actions = int(action_space.n)
        self.dueling = bool(dueling)
        self.rnn_type = model_config.get("rnn_type", "lstm")
        if self.rnn_type not in RNN_TYPES:
            raise ValueError(f"model.rnn_type must be one of {sorted(RNN_TYPES)}, got {self.rnn_type!r}")
        if model_config.get("lstm_use_prev_action_reward"):
            raise ValueError("DQN with model.use_lstm does not support model.lstm_use_prev_action_reward yet")
        self.cell_size = int(model_config.get("lstm_cell_size", 256))
        self.torso, in_size = feature_torso(obs_space, action_space, model_config, name)
        self.vision = self.torso if len(obs_space.shape) == 3 else None  # DQN's policy: an image model
        self.rnn = RNN_TYPES[self.rnn_type](in_size, self.cell_size, batch_first=True)
        self.advantage = DQNModel._head(self.cell_size, list(q_hiddens), self.num_actions, nn.Linear)
        self.value = DQNModel._head(self.cell_size, list(q_hiddens), 1, nn.Linear) if dueling else None

    def get_initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cell_size, dtype=np.float32) for _ in range(2 if self.rnn_type == "lstm" else 1)]

    def unroll(self, obs: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """Q-values ``[S, T, A]`` of ``obs`` ``[S, T, ...]`` from ``state`` (one ``[S, cell]`` tensor per state
        tensor), and the state after the ``T`` steps."""
        s, t = obs.shape[:2]
        x = self.torso(obs.reshape((s * t,) + tuple(obs.shape[2:])).float()).reshape(s, t, -1)
        h = tuple(st.float().unsqueeze(0) for st in state)
        out, h_n = self.rnn(x, h if self.rnn_type == "lstm" else h[0])
        adv = self.advantage(out)
        q = self.value(out) + adv - adv.mean(dim=-1, keepdim=True) if self.dueling else adv
        h_n = h_n if self.rnn_type == "lstm" else (h_n,)
        return q, [st.squeeze(0) for st in h_n]

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        obs = input_dict["obs"]
        b = state[0].shape[0]
        q, state_out = self.unroll(obs.reshape((b, obs.shape[0] // b) + tuple(obs.shape[1:])), state)
        return q.reshape(-1, self.num_actions), state_out

    # DQN's acting and loss call these on any Q model.
    def reset_noise(self) -> None:
        pass

    def set_noise(self, on: bool) -> None:
        pass


def sequence_priorities(abs_td: torch.Tensor, mask: torch.Tensor, eta: float = PRIORITY_ETA) -> torch.Tensor:
    """``eta * max + (1 - eta) * mean`` of ``abs_td`` ``[S, T]`` over each row's ``mask``ed steps (0 for a
    sequence without any)."""
    count = mask.sum(dim=1)
    masked = torch.where(mask, abs_td, torch.zeros_like(abs_td))
    mean = masked.sum(dim=1) / count.clamp(min=1)
    return eta * masked.max(dim=1).values + (1.0 - eta) * mean


def r2d2_loss(policy, model: RecurrentQModel, dist_class, batch: dict) -> tuple[torch.Tensor, dict, dict]:
    """(loss, stats, {"td_error": one priority per sequence}) of a batch of replayed sequences (module docstring).
    ``batch`` is flattened (``rnn_sequencing.flatten_sequences``): ``obs`` holds ``S * (L + 1)`` rows, the other
    step columns ``S * L``."""
    from relayrl.agents.dqn.dqn_torch_policy import PRIO_WEIGHTS, huber

    config, target_model = policy.config, policy.target_model
    seq_lens = batch[SB.SEQ_LENS].long()
    s = len(seq_lens)
    actions = batch[SB.ACTIONS].long().reshape(s, -1)
    length = actions.shape[1]
    obs = batch[SB.OBS].reshape((s, length + 1) + tuple(batch[SB.OBS].shape[1:]))
    rewards = batch[SB.REWARDS].float().reshape(s, length)
    terminated = batch[SB.TERMINATEDS].float().reshape(s, length)
    state = [batch[f"state_in_{j}"] for j in range(len(model.get_initial_state()))]
    burn_in = min(int(config.get("burn_in", 0)), length)
    n_step, gamma = int(config["n_step"]), float(config["gamma"])

    if burn_in:
        with torch.no_grad():  # burn-in: the state is warmed, nothing flows back through these steps
            _, state_b = model.unroll(obs[:, :burn_in], state)
        state_b = [st.detach() for st in state_b]
    else:
        state_b = state
    q_online, _ = model.unroll(obs[:, burn_in:], state_b)  # [S, L + 1 - burn_in, A]: steps burn_in .. L
    steps = torch.arange(burn_in, length, device=seq_lens.device)  # the steps that may get a loss
    mask = steps[None, :] < seq_lens[:, None]  # real steps after the burn-in
    with torch.no_grad():
        q_target, _ = target_model.unroll(obs, state)  # [S, L + 1, A]
        m = (seq_lens[:, None] - steps[None, :]).clamp(min=1, max=n_step)  # [S, T']: steps to the bootstrap
        boot = steps[None, :] + m  # index of the bootstrap observation, <= seq_len
        padded_r = torch.cat([rewards, rewards.new_zeros(s, n_step)], dim=1)
        returns = torch.zeros_like(m, dtype=rewards.dtype)
        for k in range(n_step):
            returns += (gamma**k) * padded_r[:, steps + k] * (k < m).to(rewards.dtype)
        last_terminated = terminated.gather(1, (seq_lens - 1).clamp(min=0)[:, None])  # [S, 1]
        live = 1.0 - last_terminated * (boot == seq_lens[:, None]).to(rewards.dtype)
        select = q_online.detach() if config["double_q"] else q_target[:, burn_in:]
        a_boot = select.gather(1, (boot - burn_in)[..., None].expand(-1, -1, select.shape[-1])).argmax(-1)
        q_boot = q_target.gather(1, boot[..., None].expand(-1, -1, q_target.shape[-1]))
        q_boot = q_boot.gather(2, a_boot[..., None]).squeeze(-1)
        target = returns + (gamma ** m.to(rewards.dtype)) * live * q_boot
    q_selected = q_online[:, : length - burn_in].gather(2, actions[:, burn_in:, None]).squeeze(-1)
    td_error = q_selected - target
    zeros = torch.zeros_like(td_error)
    per_step = torch.where(mask, huber(td_error), zeros)
    per_seq = per_step.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    weights = batch[PRIO_WEIGHTS].float() if PRIO_WEIGHTS in batch else torch.ones_like(per_seq)
    loss = (weights * per_seq).mean()
    priorities = sequence_priorities(td_error.detach().abs(), mask)
    valid_steps = mask.sum().clamp(min=1)
    stats = {
        "loss": loss.detach(),
        "mean_q": torch.where(mask, q_selected.detach(), zeros).sum() / valid_steps,
        "mean_td_error": torch.where(mask, td_error.detach(), zeros).sum() / valid_steps,
    }
    return loss, stats, {"td_error": priorities}

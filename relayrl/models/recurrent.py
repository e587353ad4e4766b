"""RecurrentNetwork: what ``model.use_lstm: True`` builds around the default model (RLlib 2019's LSTM wrapper).

    torso (fcnet_hiddens MLP, or VisionNetwork's conv stack for images)
      -> [features, one-hot / raw previous action, previous reward]   (lstm_use_prev_action_reward)
      -> LSTM or GRU of lstm_cell_size (rnn_type)
      -> linear policy head (num_outputs) and linear value head, both on the RNN output.

The value function always reads the RNN output (``vf_share_layers`` does not apply to it).

Input convention (the one every recurrent TorchModel follows): ``forward(input_dict, state, seq_lens)`` takes
``B * T`` rows that are already padded, sequence-major: rows ``b * T .. b * T + seq_lens[b] - 1`` are sequence
``b``'s real steps, the rest of its ``T`` rows padding; ``B`` is ``len(state[0])`` and ``T = rows / B``. ``state``
is one ``[B, lstm_cell_size]`` tensor per state tensor (LSTM: ``h`` and ``c``; GRU: ``h``), the state before each
sequence's first step. Acting passes one row per env (``T = 1``, ``seq_lens`` ones); learning passes the padded
batch of ``relayrl.policy.rnn_sequencing`` (``T = max_seq_len``). The outputs of real steps never depend on the
padding (it comes after them). ``state_out`` is the state after all ``T`` rows: the state after a sequence's last
step when ``seq_lens[b] == T`` (always when acting), after its padding otherwise (the losses do not read it).
An ``input_dict["seq_mask"]`` (``[B * T]`` bool; ``rnn_sequencing.model_inputs`` passes the batch's) says which
rows the caller reads: the torso then runs on those rows only, and the other rows, fed zero features, have
unspecified (finite) outputs. Without it every row is computed (IMPALA reads the step after a sequence's end).

Acting on the CPU goes through ``numpy_step`` (``TorchPolicy.compute_actions``' fast path): the same step in numpy
(``numpy_mirror.lstm_step`` / ``gru_step``), equal to torch's to float32 rounding, with the value head as one more
column of the policy head's product; a conv torso acts through torch.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relayrl.models import numpy_mirror
from relayrl.models.numpy_mirror import NumpyMirror, linear_layers
from relayrl.models.torch_model import TorchModel, normc_init

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}
# SampleBatch.PREV_ACTIONS / PREV_REWARDS and rnn_sequencing.SEQ_MASK (models/ sits below policy/ and does not
# import it).
PREV_ACTIONS, PREV_REWARDS, SEQ_MASK = "prev_actions", "prev_rewards", "seq_mask"


class _ConvTorso(nn.Module):
    """VisionNetwork's conv stack without its heads: [N, H, W, C] -> [N, features]."""

    def __init__(self, convs: nn.Module):
        super().__init__()
        self.convs = convs

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.convs(obs.float().permute(0, 3, 1, 2)).flatten(1)


def feature_torso(obs_space: gym.Space, action_space: gym.Space, model_config: dict, name: str) -> tuple:
    """``(module, num_features)``: the default model's layers below its heads (conv stack for [H, W, C]
    observations, else the ``fcnet_hiddens`` MLP; no layers at all for ``fcnet_hiddens: []``)."""
    if len(obs_space.shape) == 3:
        from relayrl.models.visionnet import VisionNetwork

        vision = VisionNetwork(obs_space, action_space, 0, model_config, name)
        return _ConvTorso(vision.convs), vision.num_features
    from relayrl.models.fcnet import _mlp

    hiddens = list(model_config.get("fcnet_hiddens", [256, 256]))
    in_size = int(np.prod(obs_space.shape))
    mlp = _mlp(in_size, hiddens, model_config.get("fcnet_activation", "tanh"), None, 1.0)
    return nn.Sequential(nn.Flatten(), mlp), hiddens[-1] if hiddens else in_size


def prev_action_size(action_space: gym.Space) -> int:
    """Width of the encoded previous action: one-hot for Discrete / MultiDiscrete, the raw vector for a Box."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, gym.spaces.Box):
        return int(np.prod(action_space.shape))
    raise ValueError(
        f"model.lstm_use_prev_action_reward supports Discrete, MultiDiscrete and Box action spaces, not {action_space}"
    )


class RecurrentNetwork(TorchModel):
    """The ``use_lstm`` model (module docstring). Keys read: ``rnn_type``, ``lstm_cell_size``,
    ``lstm_use_prev_action_reward``, ``free_log_std`` and the torso's (``fcnet_*`` or ``conv_*``)."""

    structured_obs = False  # reads the flat observation vector (or the image batch)

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        self.rnn_type = model_config.get("rnn_type", "lstm")
        if self.rnn_type not in RNN_TYPES:
            raise ValueError(f"model.rnn_type must be one of {sorted(RNN_TYPES)}, got {self.rnn_type!r}")
        self.cell_size = int(model_config.get("lstm_cell_size", 256))
        self.use_prev_action_reward = bool(model_config.get("lstm_use_prev_action_reward", False))
        self.free_log_std = bool(model_config.get("free_log_std", False))
        self.torso, in_size = feature_torso(obs_space, action_space, model_config, name)
        if self.use_prev_action_reward:
            in_size += prev_action_size(action_space) + 1
        self.rnn = RNN_TYPES[self.rnn_type](in_size, self.cell_size, batch_first=True)
        outputs = num_outputs
        if self.free_log_std:
            if num_outputs % 2:
                raise ValueError(f"free_log_std needs an even number of outputs, got {num_outputs}")
            outputs //= 2
            self.log_std = nn.Parameter(torch.zeros(outputs))
        self.logits = nn.Linear(self.cell_size, outputs)
        normc_init(self.logits.weight, 0.01)
        nn.init.zeros_(self.logits.bias)
        self.value_branch = nn.Linear(self.cell_size, 1)
        normc_init(self.value_branch.weight, 1.0)
        nn.init.zeros_(self.value_branch.bias)
        self._features: torch.Tensor | None = None
        self._activation = model_config.get("fcnet_activation", "tanh")
        self.reset_numpy_mirrors()

    def get_initial_state(self) -> list[np.ndarray]:
        return [np.zeros(self.cell_size, dtype=np.float32) for _ in range(2 if self.rnn_type == "lstm" else 1)]

    def forward(self, input_dict: dict, state: list, seq_lens: torch.Tensor | None) -> tuple[torch.Tensor, list]:
        if not state:
            raise ValueError(
                f"{type(self).__name__} is recurrent: call it with its state (policy.get_initial_state() at an"
                " episode's start, the train batch's state_in_* when learning) and seq_lens"
            )
        x = self._torso_features(input_dict["obs"], input_dict.get(SEQ_MASK))
        if self.use_prev_action_reward:
            x = torch.cat([x, self._prev_action_reward(input_dict, x.shape[0])], dim=-1)
        n, b = x.shape[0], state[0].shape[0]
        if n % b or (seq_lens is not None and len(seq_lens) != b):
            raise ValueError(
                f"{type(self).__name__}: {n} rows do not make {b} padded sequences (state rows) of equal length"
                f" with seq_lens of {None if seq_lens is None else len(seq_lens)} sequences"
            )
        t = n // b
        x = x.reshape(b, t, x.shape[-1])
        h = tuple(s.float().unsqueeze(0) for s in state)
        # The padded batch as it is, not packed (pack_padded_sequence makes a CPU learner step 2-3x slower): the
        # padding follows each sequence's real steps, so their outputs, and the gradients of a loss that masks the
        # padding out, do not depend on it.
        out, h_n = self.rnn(x, h if self.rnn_type == "lstm" else h[0])
        self._features = out.reshape(n, self.cell_size)
        logits = self.logits(self._features)
        if self.free_log_std:
            logits = torch.cat([logits, self.log_std.expand_as(logits)], dim=-1)
        h_n = h_n if self.rnn_type == "lstm" else (h_n,)
        return logits, [s.squeeze(0) for s in h_n]

    def _torso_features(self, obs: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
        """The torso's features of every row; with ``read`` (input_dict's ``seq_mask``: the rows whose outputs
        the caller reads) the torso runs on those rows only and the others' features are zeros (a conv torso
        over 20-step sequences of 64-step fragments: 20% fewer frames)."""
        n = obs.shape[0]
        if read is None or n != read.shape[0]:
            return self.torso(obs)
        rows = read.nonzero().squeeze(1)
        # A multiple of 8 rows, the first padded ones making up the difference: minibatches of whole sequences
        # vary in real steps, and oneDNN builds a conv kernel for each new batch size (~50 ms on a CPU).
        extra = -rows.shape[0] % 8
        if rows.shape[0] + extra >= n:
            return self.torso(obs)
        if extra:
            rows = torch.cat([rows, (~read).nonzero().squeeze(1)[:extra]])
        features = self.torso(obs.index_select(0, rows))
        return features.new_zeros((n,) + features.shape[1:]).index_copy(0, rows, features)

    def _prev_action_reward(self, input_dict: dict, n: int) -> torch.Tensor:
        missing = [k for k in (PREV_ACTIONS, PREV_REWARDS) if k not in input_dict]
        if missing:
            raise ValueError(
                f"model.lstm_use_prev_action_reward: the model needs input_dict {missing} (compute_actions'"
                " prev_action_batch / prev_reward_batch when acting, the batch's prev_actions / prev_rewards"
                " columns when learning)"
            )
        actions, rewards = input_dict[PREV_ACTIONS], input_dict[PREV_REWARDS]
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            encoded = F.one_hot(actions.long().reshape(n), int(space.n)).float()
        elif isinstance(space, gym.spaces.MultiDiscrete):
            cols = actions.long().reshape(n, -1)
            encoded = torch.cat([F.one_hot(cols[:, i], int(k)).float() for i, k in enumerate(space.nvec)], dim=-1)
        else:
            encoded = actions.float().reshape(n, -1)
        return torch.cat([encoded, rewards.float().reshape(n, 1)], dim=-1)

    def value_function(self) -> torch.Tensor:
        return self.value_branch(self._features).squeeze(-1)

    # --- fast CPU inference (one step per call: what the sampler asks for) ------------------------------------
    def reset_numpy_mirrors(self) -> None:
        self._np = NumpyMirror(self.parameters(), self._build_np)
        self._np_usable = (
            isinstance(self.torso, nn.Sequential)  # the FC torso; a conv torso acts through torch
            and self._activation in numpy_mirror.ACTIVATIONS
            and self.logits.weight.device.type == "cpu"
        )

    def _build_np(self) -> tuple:
        cell = (numpy_mirror.lstm_weights if self.rnn_type == "lstm" else numpy_mirror.gru_weights)(self.rnn)
        # The policy and value heads as one product: the logits' columns, then the value's.
        (w_pi, b_pi), (w_v, b_v) = linear_layers([self.logits, self.value_branch])
        head = (np.concatenate([w_pi, w_v], axis=1), np.concatenate([b_pi, b_v]))
        log_std = self.log_std.detach().numpy().copy() if self.free_log_std else None
        return linear_layers(self.torso[1]), cell, head, log_std

    def numpy_step(
        self, obs: np.ndarray, state: list, prev_actions=None, prev_rewards=None, value: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]] | None:
        """The torch forward of one step per row (``seq_lens`` ones) in numpy: ``(dist_inputs, values or None,
        state_out)``, equal to it to float32 rounding; None for a conv torso or an activation numpy lacks."""
        if not self._np_usable:
            return None
        torso, cell, (w, b), log_std = self._np.get()
        n, act = len(obs), numpy_mirror.ACTIVATIONS[self._activation]
        x = numpy_mirror.mlp(obs.reshape(n, -1).astype(np.float32, copy=False), torso, act)
        if self.use_prev_action_reward:
            if prev_actions is None or prev_rewards is None:
                self._prev_action_reward({}, n)  # raises, naming what is missing
            x = np.concatenate([x, self._np_encode(prev_actions, n), _f32(prev_rewards).reshape(n, 1)], axis=1)
        h = _f32(state[0])
        if self.rnn_type == "lstm":
            state_out = list(numpy_mirror.lstm_step(x, h, _f32(state[1]), *cell))
        else:
            state_out = [numpy_mirror.gru_step(x, h, *cell)]
        out = state_out[0] @ w
        out += b
        logits = out[:, :-1]
        if log_std is not None:
            logits = np.concatenate([logits, np.broadcast_to(log_std, logits.shape)], axis=-1)
        return logits, (out[:, -1] if value else None), state_out

    def _np_encode(self, actions, n: int) -> np.ndarray:
        """``_prev_action_reward``'s action encoding in numpy."""
        space, actions = self.action_space, np.asarray(actions)
        if isinstance(space, gym.spaces.Discrete):
            return np.eye(int(space.n), dtype=np.float32)[actions.astype(np.intp).reshape(n)]
        if isinstance(space, gym.spaces.MultiDiscrete):
            cols = actions.astype(np.intp).reshape(n, -1)
            return np.concatenate([np.eye(int(k), dtype=np.float32)[cols[:, i]] for i, k in enumerate(space.nvec)], 1)
        return _f32(actions).reshape(n, -1)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)

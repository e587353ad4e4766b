"""The Q-network of DQN and its Rainbow parts.

- a torso: an MLP (``model.fcnet_hiddens``, ``model.fcnet_activation``) or, for image observations, the
  VisionNetwork's convolutions;
- an advantage head of ``hiddens`` ReLU layers with ``num_actions * num_atoms`` outputs and, with ``dueling``
  (Wang et al. 2016, "Dueling Network Architectures", eq. 9), a value head of the same shape with ``num_atoms``
  outputs: Q = V + A - mean_a A (on the atoms' logits when distributional, as RLlib does);
- ``num_atoms > 1``: C51 (Bellemare et al. 2017, "A Distributional Perspective on RL"): a categorical return
  distribution on ``num_atoms`` evenly spaced supports in [v_min, v_max]; Q = sum_i z_i p_i;
- ``noisy``: the head layers are NoisyLinear with factorised Gaussian noise (Fortunato et al. 2018, "Noisy
  Networks for Exploration", section 3 (b));
- action masking: when the observation was a Dict with an action mask entry (``model.action_mask_key``), the flat
  observation holds the mask at columns ``mask_slice`` (``relayrl.models.action_mask.mask_columns``); the torso
  never sees those columns and ``q_values`` returns the mask alongside Q (the policy turns masked actions into
  -inf).

The network also has a numpy forward (noise-free) used by the sampler for flat observations.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relayrl.models.numpy_mirror import ACTIVATIONS as _NP_ACT
from relayrl.models.numpy_mirror import NumpyMirror, linear_layers, mlp
from relayrl.models.torch_model import TorchModel, get_activation


class NoisyLinear(nn.Module):
    """y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b with factorised noise
    eps_w = f(eps_out) f(eps_in)^T, eps_b = f(eps_out), f(x) = sgn(x) sqrt(|x|) (Fortunato et al. 2018, eq. 10-11).

    Initialisation (section 3.2): mu ~ U[-1/sqrt(p), 1/sqrt(p)], sigma = sigma0 / sqrt(p) for p inputs.
    ``reset_noise()`` draws new eps; ``use_noise = False`` gives the mean network (greedy evaluation)."""

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), sigma0 * bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), sigma0 * bound))
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        self.use_noise = True
        self.reset_noise()

    @staticmethod
    def _f(x: torch.Tensor) -> torch.Tensor:
        return x.sign() * x.abs().sqrt()

    def reset_noise(self) -> None:
        self.eps_in.copy_(self._f(torch.randn(self.in_features, device=self.eps_in.device)))
        self.eps_out.copy_(self._f(torch.randn(self.out_features, device=self.eps_out.device)))

    def noise_weight(self) -> torch.Tensor:
        """The weight perturbation sigma_w * eps_w of the current noise."""
        return self.weight_sigma * torch.outer(self.eps_out, self.eps_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_noise:
            return F.linear(x, self.weight, self.bias)
        # (W + sigma * eps_out eps_in^T) x = W x + eps_out * (sigma (eps_in * x)): no [out, in] noise matrix.
        noisy = F.linear(x * self.eps_in, self.weight_sigma) * self.eps_out
        return F.linear(x, self.weight, self.bias) + noisy + self.bias_sigma * self.eps_out


class DQNModel(TorchModel):
    structured_obs = False  # reads the flat observation vector

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        num_outputs: int,
        model_config: dict,
        name: str = "q_model",
        *,
        q_hiddens: list[int] = (256,),
        dueling: bool = True,
        num_atoms: int = 1,
        v_min: float = -10.0,
        v_max: float = 10.0,
        noisy: bool = False,
        sigma0: float = 0.5,
        mask_slice: tuple[int, int] | None = None,
    ):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        self.num_actions = int(action_space.n)
        self.num_atoms, self.dueling, self.noisy = int(num_atoms), bool(dueling), bool(noisy)
        self.mask_slice = tuple(mask_slice) if mask_slice else None
        self.register_buffer("support", torch.linspace(v_min, v_max, self.num_atoms), persistent=False)
        self.vision = None
        if len(obs_space.shape) == 3:
            from relayrl.models.visionnet import VisionNetwork

            self.vision = VisionNetwork(obs_space, action_space, 0, model_config, name + "_torso")
            self.torso = nn.Identity()
            last = self.vision.num_features
            self._activation = None
        else:
            in_size = int(np.prod(obs_space.shape))
            if self.mask_slice:
                in_size -= self.mask_slice[1] - self.mask_slice[0]
            self._activation = model_config.get("fcnet_activation", "relu")
            layers: list[nn.Module] = []
            last = in_size
            for size in model_config.get("fcnet_hiddens", [256, 256]):
                layers += [nn.Linear(last, size), get_activation(self._activation)()]
                last = size
            self.torso = nn.Sequential(*layers)
        linear = (lambda i, o: NoisyLinear(i, o, sigma0)) if noisy else nn.Linear
        self.advantage = self._head(last, list(q_hiddens), self.num_actions * self.num_atoms, linear)
        self.value = self._head(last, list(q_hiddens), self.num_atoms, linear) if dueling else None
        self.reset_numpy_mirrors()

    def reset_numpy_mirrors(self) -> None:
        self._np_ok = self.vision is None and self._activation in _NP_ACT and self.support.device.type == "cpu"
        self._np_mirror = NumpyMirror(self.parameters(), self._build_numpy_mirror)

    def _build_numpy_mirror(self) -> tuple:
        layer_types = (nn.Linear, NoisyLinear)  # a NoisyLinear's weight and bias are its noise-free means
        heads = [linear_layers(h, layer_types) if h is not None else None for h in (self.advantage, self.value)]
        return linear_layers(self.torso), *heads, self.support.numpy().astype(np.float32)

    @staticmethod
    def _head(in_size: int, hiddens: list[int], out: int, linear) -> nn.Sequential:
        layers: list[nn.Module] = []
        for size in hiddens:
            layers += [linear(in_size, size), nn.ReLU()]
            in_size = size
        layers.append(linear(in_size, out))
        return nn.Sequential(*layers)

    # --- torch ---------------------------------------------------------------------------------------------
    def noisy_layers(self) -> list[NoisyLinear]:
        return [m for m in self.modules() if isinstance(m, NoisyLinear)]

    def reset_noise(self) -> None:
        for m in self.noisy_layers():
            m.reset_noise()

    def set_noise(self, on: bool) -> None:
        for m in self.noisy_layers():
            m.use_noise = on

    def split_obs(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(network input, action mask or None) of a batch of flat observations."""
        if self.mask_slice is None:
            return obs, None
        s, e = self.mask_slice
        obs = obs.flatten(1)
        return torch.cat([obs[:, :s], obs[:, e:]], dim=1), obs[:, s:e]

    def q_values(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (Q [B, A], atom logits [B, A, atoms] or None, action mask [B, A] or None); Q unmasked."""
        x, mask = self.split_obs(obs)
        features = self.vision.features(x) if self.vision is not None else self.torso(x.float().flatten(1))
        adv = self.advantage(features)
        if self.num_atoms == 1:
            if self.dueling:
                adv = self.value(features) + adv - adv.mean(dim=1, keepdim=True)
            return adv, None, mask
        logits = adv.view(-1, self.num_actions, self.num_atoms)
        if self.dueling:
            logits = self.value(features).unsqueeze(1) + logits - logits.mean(dim=1, keepdim=True)
        q = (logits.softmax(dim=-1) * self.support).sum(-1)
        return q, logits, mask

    def forward(self, input_dict: dict, state: list, seq_lens) -> tuple[torch.Tensor, list]:
        q, _, mask = self.q_values(input_dict["obs"])
        if mask is not None:
            q = q.masked_fill(mask <= 0, torch.finfo(q.dtype).min)
        return q, state

    # --- numpy (sampler) ------------------------------------------------------------------------------------
    def numpy_q(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Noise-free (mean-weight) Q-values and mask in numpy for flat observations on CPU; None otherwise."""
        if not self._np_ok:
            return None
        torso, adv, value, support = self._np_mirror.get()
        obs = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        mask = None
        if self.mask_slice is not None:
            s, e = self.mask_slice
            mask = obs[:, s:e]
            obs = np.concatenate([obs[:, :s], obs[:, e:]], axis=1)
        x = mlp(obs, torso, _NP_ACT[self._activation])
        a = mlp(x, adv, _NP_ACT["relu"], last_linear=True)
        if self.num_atoms == 1:
            if value is not None:
                a = mlp(x, value, _NP_ACT["relu"], last_linear=True) + a - a.mean(axis=1, keepdims=True)
            return a, mask
        logits = a.reshape(len(a), self.num_actions, self.num_atoms)
        if value is not None:
            v = mlp(x, value, _NP_ACT["relu"], last_linear=True)
            logits = v[:, None, :] + logits - logits.mean(axis=1, keepdims=True)
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return (p @ support) / p.sum(-1), mask

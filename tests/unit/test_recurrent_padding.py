"""RecurrentNetwork with ``input_dict["seq_mask"]`` (what ``rnn_sequencing.model_inputs`` passes): the torso runs
on the rows the loss reads only, and those rows' outputs and the masked loss's gradients are the full pass's."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.models.recurrent import RecurrentNetwork


@pytest.mark.parametrize("image", [False, True])
def test_the_torso_skips_the_padding_and_real_outputs_stay(image):
    torch.manual_seed(0)
    if image:
        obs_space, config = gym.spaces.Box(0, 255, (42, 42, 2), np.uint8), {"lstm_cell_size": 8}
    else:
        obs_space, config = gym.spaces.Box(-1, 1, (3,), np.float32), {"fcnet_hiddens": [6], "lstm_cell_size": 5}
    model = RecurrentNetwork(obs_space, gym.spaces.Discrete(3), 3, config, "m")
    seq_lens = torch.tensor([10, 1, 7, 10, 3, 2])
    b, t = len(seq_lens), 10
    mask = (torch.arange(t)[None, :] < seq_lens[:, None]).reshape(-1)
    if image:
        obs = torch.randint(0, 256, (b * t, *obs_space.shape), dtype=torch.uint8)
    else:
        obs = torch.rand(b * t, 3) * 2 - 1
    obs[~mask] = 0
    state = [torch.randn(b, model.cell_size) * 0.3 for _ in range(2)]
    seen = []
    model.torso.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))

    def run(input_dict):
        model.zero_grad()
        logits, _ = model(input_dict, state, seq_lens)
        values = model.value_function()
        (logits[mask].square().sum() + values[mask].sum()).backward()
        return logits[mask].detach(), values[mask].detach(), [p.grad.clone() for p in model.parameters()]

    full = run({"obs": obs})
    skipped = run({"obs": obs, "seq_mask": mask})
    assert seen == [b * t, 40]  # 33 real rows, and 7 padded ones to a multiple of 8
    for a, c in zip(full[:2] + tuple(full[2]), skipped[:2] + tuple(skipped[2])):  # to float32 rounding
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6 * max(1.0, float(a.abs().max())))

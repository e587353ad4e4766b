"""The numpy fast paths used by the sampler agree with the torch models, and never serve stale weights."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from relayrl.agents.ddpg import DEFAULT_CONFIG as DDPG_CONFIG
from relayrl.agents.ddpg.ddpg_torch_policy import DDPGModel
from relayrl.models.fcnet import FullyConnectedNetwork
from relayrl.models.numpy_mirror import NumpyMirror

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)


def fcnet(**model_config) -> FullyConnectedNetwork:
    torch.manual_seed(0)
    return FullyConnectedNetwork(OBS, gym.spaces.Discrete(3), 3, {"fcnet_hiddens": [16, 16], **model_config}, "m")


def torch_outputs(model, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out, _ = model({"obs": torch.from_numpy(obs)}, [], None)
        return out.numpy(), model.value_function().numpy()


@pytest.mark.parametrize("config", [{}, {"vf_share_layers": True}, {"fcnet_activation": "relu"}])
def test_fcnet_numpy_forward_matches_torch_and_follows_updates(config):
    model = fcnet(**config)
    obs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)

    def check():
        logits, values = torch_outputs(model, obs)
        np_logits, np_values = model.numpy_forward(obs)
        np.testing.assert_allclose(np_logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np_values, values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.numpy_value(obs), values, rtol=1e-5, atol=1e-6)

    check()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # an optimizer step changes every layer
    logits, _ = model({"obs": torch.from_numpy(obs)}, [], None)
    (logits.sum() + model.value_function().sum()).backward()
    optimizer.step()
    check()
    other = fcnet(**config)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    model.load_state_dict(other.state_dict())  # copies in place
    check()
    with torch.no_grad():
        model.value_branch[0].bias.mul_(3.0)  # only the value branch
    check()


def test_a_deep_copy_mirrors_its_own_weights():
    model = fcnet()
    obs = np.ones((2, 5), np.float32)
    model.numpy_forward(obs)  # the original's mirrors are built
    target = copy.deepcopy(model)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(-1.5)
    for m in (target, model):
        logits, values = torch_outputs(m, obs)
        np.testing.assert_allclose(m.numpy_forward(obs)[0], logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.numpy_value(obs), values, rtol=1e-5, atol=1e-6)


def test_a_model_moved_to_another_dtype_leaves_the_numpy_path():
    model = fcnet().double()
    assert model.numpy_forward(np.zeros((2, 5), np.float32)) is not None  # float64 weights, still on the CPU
    model = fcnet().to("meta")
    assert model.numpy_forward(np.zeros((2, 5), np.float32)) is None


def test_gaussian_free_log_std_in_numpy():
    torch.manual_seed(0)
    model = FullyConnectedNetwork(
        OBS, gym.spaces.Box(-1, 1, (2,)), 4, {"fcnet_hiddens": [8], "free_log_std": True}, "m"
    )
    with torch.no_grad():
        model.log_std.fill_(-0.7)
    obs = np.ones((3, 5), np.float32)
    expected = torch_outputs(model, obs)[0]
    np.testing.assert_allclose(model.numpy_forward(obs, value=False)[0], expected, rtol=1e-5, atol=1e-6)


def test_ddpg_numpy_policy_matches_torch_after_an_update():
    space = gym.spaces.Box(np.array([-2.0], np.float32), np.array([1.0], np.float32))
    model = DDPGModel(OBS, space, dict(DDPG_CONFIG, actor_hiddens=[8, 8]))
    obs = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    for _ in range(2):
        with torch.no_grad():
            expected = model.policy(torch.from_numpy(obs)).numpy()
        np.testing.assert_allclose(model.numpy_policy(obs), expected, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            model.actor[0].weight.mul_(-2.0)
    target = copy.deepcopy(model)  # as DDPG builds its target actor
    with torch.no_grad():
        target.actor[2].bias.add_(0.5)
        expected = target.policy(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(target.numpy_policy(obs), expected, rtol=1e-5, atol=1e-6)


def test_mirror_rebuilds_only_on_change():
    param = torch.nn.Parameter(torch.zeros(3))
    builds = []
    mirror = NumpyMirror([param], lambda: builds.append(param.detach().numpy().copy()) or len(builds))
    assert mirror.get() == 1 and mirror.get() == 1
    with torch.no_grad():
        param.add_(1.0)
    assert mirror.get() == 2 and builds[-1].tolist() == [1.0, 1.0, 1.0]

"""The lean Adam (relayrl.utils.torch_optim) against torch.optim.Adam: same parameters after 100 steps."""

import torch

from relayrl.utils.torch_optim import Adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def _train(model: torch.nn.Module, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = torch.randn(64, 6, generator=gen)
        y = torch.randn(64, 3, generator=gen)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if step % 7 == 3:  # a parameter without a gradient this step is left alone by both
            model[2].bias.grad = None
        opt.step()


def test_adam_matches_torch_adam_over_100_steps():
    ours, reference = _model(0), _model(0)
    _train(ours, Adam(ours.parameters(), lr=3e-3, betas=(0.85, 0.995), eps=1e-7), 100, seed=1)
    _train(
        reference,
        torch.optim.Adam(reference.parameters(), lr=3e-3, betas=(0.85, 0.995), eps=1e-7, foreach=False),
        100,
        seed=1,
    )
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, (a - b).abs().max().item())
    # and they moved: the comparison is not between two untouched models
    assert not torch.allclose(ours[0].weight, _model(0)[0].weight)


def test_adam_state_dict_round_trip_continues_identically():
    a, b = _model(2), _model(2)
    opt_a = Adam(a.parameters(), lr=1e-2)
    _train(a, opt_a, 10, seed=3)
    b.load_state_dict(a.state_dict())
    opt_b = Adam(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(opt_a.state_dict())
    _train(a, opt_a, 10, seed=4)
    _train(b, opt_b, 10, seed=4)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)

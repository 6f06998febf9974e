"""A small several-layer model, fixed data and a training loop for the tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

STEPS = 50


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 4))
    return model.to(dtype)


def make_data(seed: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 16, generator=g)
    y = torch.sin(x[:, :4] * 2.0) + 0.1 * x[:, 4:8]
    return x.to(dtype), y.to(dtype)


def scaled_step(model: torch.nn.Module, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor,
                poison: bool = False) -> float:
    """One GradScaler step of make_model's model; `poison` makes the second
    Linear's weight gradient inf (the scaler skips the step and backs off).
    Returns the loss."""
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    handle = None
    if poison:
        handle = model[2].weight.register_hook(lambda g: g * float("inf"))
    scaler.scale(loss).backward()
    if handle is not None:
        handle.remove()
    scaler.step(opt)
    scaler.update()
    return loss.item()


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = STEPS,
          after_step: Callable[[int], None] | None = None) -> list[float]:
    """Full-batch MSE training; returns each step's loss (before its update)."""
    x, y = make_data(dtype=next(model.parameters()).dtype)
    losses = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(i)
    return losses


def assert_losses_close(got: list[float], want: list[float], rel: float = 1e-5) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= rel * abs(b), f"step {i}: loss {a} vs reference {b}"


def assert_params_close(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-5) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.float(), q.float(), rtol=1e-4, atol=atol, msg=name)


class ReferenceLion(torch.optim.Optimizer):
    """Lion as Chen et al. 2023 (Algorithm 2) with decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = m * beta1 + p.grad * (1 - beta1)
                p.add_(torch.sign(update), alpha=-group["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)

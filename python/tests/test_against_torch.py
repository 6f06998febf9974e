"""Each strata optimizer trains a several-layer fp32 model like its torch
counterpart: per-step losses within 1e-5 relative over 50 steps, and close
params at the end."""

from __future__ import annotations

import pytest
import torch

import strata.torch as st
from helpers import ReferenceLion, assert_losses_close, assert_params_close, make_model, train

CASES = {
    "adamw": (lambda p: st.CPUAdam(p, lr=5e-3, weight_decay=0.05),
              lambda p: torch.optim.AdamW(p, lr=5e-3, weight_decay=0.05)),
    "adam_l2": (lambda p: st.CPUAdam(p, lr=5e-3, weight_decay=0.01, adamw_mode=False),
                lambda p: torch.optim.Adam(p, lr=5e-3, weight_decay=0.01)),
    "adamw_betas_eps": (lambda p: st.CPUAdam(p, lr=3e-3, betas=(0.8, 0.95), eps=1e-6),
                        lambda p: torch.optim.AdamW(p, lr=3e-3, betas=(0.8, 0.95), eps=1e-6,
                                                    weight_decay=0)),
    "adagrad": (lambda p: st.CPUAdagrad(p, lr=1e-1, weight_decay=0.01, lr_decay=0.01,
                                        initial_accumulator_value=0.1),
                lambda p: torch.optim.Adagrad(p, lr=1e-1, weight_decay=0.01, lr_decay=0.01,
                                              initial_accumulator_value=0.1)),
    "lion": (lambda p: st.CPULion(p, lr=1e-3, weight_decay=0.1),
             lambda p: ReferenceLion(p, lr=1e-3, weight_decay=0.1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name: str) -> None:
    make_strata, make_ref = CASES[name]
    model, ref_model = make_model(), make_model()
    losses = train(model, make_strata(model.parameters()))
    ref_losses = train(ref_model, make_ref(ref_model.parameters()))
    # The rates are high enough to train but low enough that torch's and
    # strata's last-bit rounding differences are not amplified past 1e-5.
    assert ref_losses[-1] < 0.8 * ref_losses[0], "the reference did not train: a weak test"
    assert_losses_close(losses, ref_losses)
    assert_params_close(model, ref_model)


def test_without_bias_correction_matches_deepspeed_formula() -> None:
    # DeepSpeedCPUAdam with bias_correction=False: p -= lr * m / (sqrt(v) + eps).
    torch.manual_seed(3)
    p = torch.nn.Parameter(torch.randn(1000))
    p.grad = torch.randn(1000)
    want = p.detach().clone()
    st.CPUAdam([p], lr=0.1, bias_correction=False, weight_decay=0.0).step()
    m = 0.1 * p.grad
    v = 0.001 * p.grad * p.grad
    want -= 0.1 * m / (v.sqrt() + 1e-8)
    torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-6)


def test_param_groups_each_use_their_own_hyperparameters() -> None:
    def groups(model: torch.nn.Module) -> list[dict]:
        layers = [m for m in model if isinstance(m, torch.nn.Linear)]
        return [{"params": layers[0].parameters(), "lr": 3e-2, "weight_decay": 0.1},
                {"params": [p for m in layers[1:] for p in m.parameters()]}]

    model, ref_model = make_model(), make_model()
    losses = train(model, st.CPUAdam(groups(model), lr=1e-2))
    ref = train(ref_model, torch.optim.AdamW(groups(ref_model), lr=1e-2, weight_decay=0))
    assert_losses_close(losses, ref)


def test_closure_returns_the_loss() -> None:
    model = make_model()
    opt = st.CPUAdam(model.parameters())
    x = torch.randn(8, 16)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)

"""16-bit params: an fp32 master in the state, the 16-bit param written by the
same fused pass, and training that works."""

from __future__ import annotations

import pytest
import torch

import strata.torch as st
from helpers import make_model, train


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [lambda p: st.CPUAdam(p, lr=1e-2, weight_decay=0.01),
                                  lambda p: st.CPUAdagrad(p, lr=5e-2),
                                  lambda p: st.CPULion(p, lr=1e-3)], ids=["adam", "adagrad", "lion"])
def test_16bit_params_train_with_an_fp32_master(dtype: torch.dtype, make) -> None:
    model = make_model(dtype=dtype)
    opt = make(model.parameters())
    losses = train(model, opt)
    assert losses[-1] < 0.7 * losses[0], losses
    for p in model.parameters():
        assert p.dtype == dtype
        state = opt.state[p]
        assert state["param_fp32"].dtype == torch.float32
        assert torch.equal(state["param_fp32"].to(dtype), p.detach())
        for key, value in state.items():
            if key != "step":
                assert value.dtype == torch.float32, key


def test_bf16_follows_the_fp32_run() -> None:
    # Same start, bf16 weights and grads: the loss curve stays near fp32's.
    fp32_model = make_model()
    fp32 = train(fp32_model, st.CPUAdam(fp32_model.parameters(), lr=1e-2))
    model = make_model(dtype=torch.bfloat16)
    bf16 = train(model, st.CPUAdam(model.parameters(), lr=1e-2))
    assert abs(bf16[-1] - fp32[-1]) < 0.1 * fp32[0]


def test_master_keeps_updates_too_small_for_bf16() -> None:
    # lr far below bf16's resolution at 1.0: the bf16 param cannot move in one
    # step, but the master accumulates and the param follows it.
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    opt = st.CPUAdam([p], lr=1e-4)
    for _ in range(100):
        p.grad = torch.ones(64, dtype=torch.bfloat16)
        opt.step()
    master = opt.state[p]["param_fp32"]
    torch.testing.assert_close(master, torch.full((64,), 1 - 100e-4), rtol=0, atol=1e-5)
    assert torch.equal(p.detach(), master.to(torch.bfloat16))

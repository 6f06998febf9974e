"""Misuse raises an exception that says what to do."""

from __future__ import annotations

import pytest
import torch

import strata.torch as st


def test_amsgrad_is_refused() -> None:
    with pytest.raises(ValueError, match="amsgrad"):
        st.CPUAdam([torch.nn.Parameter(torch.zeros(2))], amsgrad=True)


def test_fp16_optimizer_states_are_refused() -> None:
    with pytest.raises(ValueError, match="fp32_optimizer_states=True"):
        st.CPUAdam([torch.nn.Parameter(torch.zeros(2))], fp32_optimizer_states=False)


def test_a_param_off_the_cpu_points_to_offload() -> None:
    p = torch.nn.Parameter(torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="move the param to CPU or use strata.torch.OffloadOptimizer"):
        st.CPUAdam([p])


def test_a_param_put_off_the_cpu_after_construction_is_caught_at_step() -> None:
    opt = st.CPUAdam([torch.nn.Parameter(torch.zeros(4))])
    p = torch.nn.Parameter(torch.zeros(4, device="meta"))
    p.grad = torch.zeros(4, device="meta")
    opt.param_groups[0]["params"] = [p]  # bypasses add_param_group's check
    with pytest.raises(ValueError, match="param 0 of group 0 is on meta"):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_unsupported_param_dtype(dtype: torch.dtype) -> None:
    p = torch.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        st.CPULion([p])


def test_sparse_gradients_are_refused() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = st.CPUAdagrad(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradient.*nn.Embedding\\(sparse=False\\)"):
        opt.step()


def test_non_contiguous_param_is_refused() -> None:
    p = torch.nn.Parameter(torch.zeros(4, 3).t())
    with pytest.raises(ValueError, match="not contiguous"):
        st.CPUAdam([p])


def test_bad_hyperparameters() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="betas\\[1\\]"):
        st.CPUAdam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        st.CPULion(p, lr=-1.0)


def test_kernel_errors_become_value_errors() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = st.CPUAdam([p])
    opt.param_groups[0]["betas"] = (0.9, 1.5)  # edited past the constructor's check
    p.grad = torch.zeros(4)
    with pytest.raises(ValueError, match="betas must be in"):
        opt.step()

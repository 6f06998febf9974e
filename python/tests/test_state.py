"""State dict round trips, schedulers and param_groups edited between steps."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import strata.torch as st
from helpers import assert_losses_close, make_model, train

MAKERS = {
    "adam": lambda p: st.CPUAdam(p, lr=1e-2, weight_decay=0.01),
    "adagrad": lambda p: st.CPUAdagrad(p, lr=5e-2, lr_decay=0.01),
    "lion": lambda p: st.CPULion(p, lr=1e-3, weight_decay=0.1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_save_at_k_load_into_fresh_optimizer_continues_bit_for_bit(name: str,
                                                                   dtype: torch.dtype) -> None:
    make = MAKERS[name]
    model = make_model(dtype=dtype)
    opt = make(model.parameters())
    saved: dict = {}

    def save_at_20(i: int) -> None:
        if i == 19:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
            saved["bytes"] = buf.getvalue()

    losses = train(model, opt, after_step=save_at_20)
    ckpt = torch.load(io.BytesIO(saved["bytes"]))
    fresh = make_model(seed=7, dtype=dtype)  # other weights: the load must overwrite them
    fresh.load_state_dict(ckpt["model"])
    fresh_opt = make(fresh.parameters())
    fresh_opt.load_state_dict(ckpt["opt"])
    resumed = train(fresh, fresh_opt, steps=30)
    assert resumed == losses[20:]
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), fresh.parameters()):
        for key, value in opt.state[p].items():
            assert torch.equal(value, fresh_opt.state[q][key]), key
            assert fresh_opt.state[q][key].dtype == value.dtype


def test_state_is_named_as_torch_names_it_and_loads_into_torch_adamw() -> None:
    model, ref_model = make_model(), make_model()
    opt = st.CPUAdam(model.parameters(), lr=1e-2, weight_decay=0.01)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.01)
    train(model, opt, steps=10)
    train(ref_model, ref, steps=10)
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert float(sd["state"][0]["step"]) == 10
    # Both ways: torch's AdamW continues from strata's state and vice versa.
    a_model, b_model = copy.deepcopy(model), copy.deepcopy(ref_model)
    a = torch.optim.AdamW(a_model.parameters(), lr=1e-2, weight_decay=0.01)
    a.load_state_dict(copy.deepcopy(sd))
    b = st.CPUAdam(b_model.parameters(), lr=1e-2, weight_decay=0.01)
    b.load_state_dict(copy.deepcopy(ref.state_dict()))
    assert_losses_close(train(a_model, a, steps=10), train(model, opt, steps=10))
    assert_losses_close(train(b_model, b, steps=10), train(ref_model, ref, steps=10))


def test_lr_scheduler_changes_take_effect() -> None:
    model, ref_model = make_model(), make_model()
    opt = st.CPUAdam(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.3)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=10, gamma=0.3)
    losses = train(model, opt, after_step=lambda i: sched.step())
    ref_losses = train(ref_model, ref, after_step=lambda i: ref_sched.step())
    assert_losses_close(losses, ref_losses)
    # And it matters: without the schedule the losses differ.
    plain_model = make_model()
    plain = train(plain_model, st.CPUAdam(plain_model.parameters(), lr=1e-2))
    assert plain != losses
    # lr 0 from a scheduler freezes the params.
    frozen = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, steps=3, after_step=lambda i: frozen.step())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_param_groups_edited_between_steps_take_effect() -> None:
    model, ref_model = make_model(), make_model()
    opt = st.CPUAdam(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0)

    def edit(o: torch.optim.Optimizer):
        def at(i: int) -> None:
            if i == 9:
                o.param_groups[0].update(lr=3e-3, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.2)
            if i == 19:  # a rewritten list of groups, as some trainers do
                o.param_groups = [dict(o.param_groups[0], lr=1e-3)]
        return at

    assert_losses_close(train(model, opt, after_step=edit(opt)),
                        train(ref_model, ref, after_step=edit(ref)))


def test_add_param_group_steps_the_new_params() -> None:
    model = make_model()
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    opt = st.CPUAdam(layers[0].parameters(), lr=1e-2)
    frozen = [p.detach().clone() for p in layers[1].parameters()]
    train(model, opt, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(frozen, layers[1].parameters()))
    opt.add_param_group({"params": layers[1].parameters(), "lr": 1e-2})
    train(model, opt, steps=2)
    assert not any(torch.equal(a, b) for a, b in zip(frozen, layers[1].parameters()))
    assert len(opt.state) == 4


def test_a_bf16_state_without_master_from_torch_adamw_continues() -> None:
    model = make_model(dtype=torch.bfloat16)
    ref = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = train(model, ref, steps=5)
    opt = st.CPUAdam(model.parameters(), lr=1e-2, weight_decay=0.01)
    opt.load_state_dict(ref.state_dict())
    rest = train(model, opt, steps=20)
    assert rest[-1] < first[0]
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert float(opt.state[p]["step"]) == 25
        assert torch.equal(opt.state[p]["param_fp32"].to(torch.bfloat16), p.detach())

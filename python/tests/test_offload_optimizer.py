"""strata.torch.OffloadOptimizer: the seam (engine::OffloadOptimizer) under a
torch model, gradients handed over by per-parameter hooks during backward.

Against torch.optim.AdamW on a several-layer fp32 model; NVMe equal to CPU
bit for bit; accumulation; clipping; GradScaler overflow; state_dict and
strata checkpoints; LR schedulers; misuse; CUDA params when a GPU is there."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import strata.torch as st
from helpers import (STEPS, assert_losses_close, assert_params_close, make_data, make_model,
                     scaled_step, train)

LR, WD = 5e-3, 0.05


def offload(model: torch.nn.Module, **kw) -> st.OffloadOptimizer:
    kw.setdefault("lr", LR)
    kw.setdefault("weight_decay", WD)
    return st.OffloadOptimizer(model.parameters(), **kw)


def nvme(tmp_path, **kw) -> dict:
    d = tmp_path / "swap"
    d.mkdir(exist_ok=True)
    # tmp_path may sit on a filesystem without O_DIRECT (tmpfs).
    return dict(offload="nvme", nvme_path=str(d), allow_buffered_io=True, **kw)


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("overlap", [True, False])
def test_matches_torch_adamw(overlap: bool) -> None:
    model, ref_model = make_model(), make_model()
    opt = offload(model, overlap=overlap)
    losses = train(model, opt)
    ref_losses = train(ref_model, torch.optim.AdamW(ref_model.parameters(), lr=LR,
                                                     weight_decay=WD))
    assert ref_losses[-1] < 0.8 * ref_losses[0], "the reference did not train: a weak test"
    assert_losses_close(losses, ref_losses)
    assert_params_close(model, ref_model)
    assert opt.last_step is not None and opt.last_step["step"] == STEPS
    # The hooks took the gradients: nothing is left in .grad.
    assert all(p.grad is None for p in model.parameters())


def test_small_buckets_and_param_groups_match_torch() -> None:
    def groups(model: torch.nn.Module) -> list[dict]:
        layers = [m for m in model if isinstance(m, torch.nn.Linear)]
        return [{"params": list(layers[0].parameters()), "lr": 1e-2, "weight_decay": 0.1},
                {"params": [p for m in layers[1:] for p in m.parameters()]}]

    model, ref_model = make_model(), make_model()
    # 4 KiB buckets: every param its own bucket or a few together.
    opt = st.OffloadOptimizer(groups(model), lr=LR, weight_decay=WD, bucket_bytes=4096)
    assert opt.num_buckets > 3
    losses = train(model, opt)
    ref_losses = train(ref_model, torch.optim.AdamW(groups(ref_model), lr=LR, weight_decay=WD))
    assert_losses_close(losses, ref_losses)


def test_adam_with_l2_matches_torch_adam() -> None:
    model, ref_model = make_model(), make_model()
    losses = train(model, offload(model, optimizer="adam", weight_decay=0.01))
    ref_losses = train(ref_model, torch.optim.Adam(ref_model.parameters(), lr=LR,
                                                   weight_decay=0.01))
    assert_losses_close(losses, ref_losses)


def test_nvme_equals_cpu_bit_for_bit(tmp_path) -> None:
    a, b = make_model(), make_model()
    opt_a = offload(a, gradient_clipping=0.5)
    opt_b = offload(b, gradient_clipping=0.5, **nvme(tmp_path))
    losses_a = train(a, opt_a, steps=20)
    losses_b = train(b, opt_b, steps=20)
    assert losses_a == losses_b
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert any((tmp_path / "swap").iterdir()), "offload='nvme' wrote no swap file"
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "master"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def test_accumulation_over_four_backwards_equals_one_batch() -> None:
    x, y = make_data()
    whole, parts = make_model(), make_model()
    opt_whole, opt_parts = offload(whole), offload(parts, gradient_accumulation_steps=4)
    for _ in range(10):
        opt_whole.zero_grad()
        torch.nn.functional.mse_loss(whole(x), y).backward()
        opt_whole.step()
        opt_parts.zero_grad()
        for xs, ys in zip(x.chunk(4), y.chunk(4)):
            (torch.nn.functional.mse_loss(parts(xs), ys) / 4).backward()
        opt_parts.step()
    assert_params_close(parts, whole, atol=1e-6)


def test_more_backwards_than_announced_still_sum() -> None:
    # gradient_accumulation_steps is a hint: 3 backward calls with 1 announced
    # (speculative steps rolled back) give the same params as 3 announced.
    x, y = make_data()
    a, b = make_model(), make_model()
    opt_a = offload(a, gradient_accumulation_steps=1)
    opt_b = offload(b, gradient_accumulation_steps=3)
    for model, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(6):
            opt.zero_grad()
            for xs, ys in zip(x.chunk(3), y.chunk(3)):
                torch.nn.functional.mse_loss(model(xs), ys).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_zero_grad_between_backwards_discards_what_was_handed_over() -> None:
    x, y = make_data()
    a, b = make_model(), make_model()
    opt_a, opt_b = offload(a), offload(b)
    for step in range(4):
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        torch.nn.functional.mse_loss(b(x * 3), y).backward()  # discarded below
        opt_b.zero_grad()
        torch.nn.functional.mse_loss(b(x), y).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_clipping_matches_clip_grad_norm_and_adamw() -> None:
    model, ref_model = make_model(), make_model()
    opt = offload(model, gradient_clipping=0.05)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    x, y = make_data()
    losses, ref_losses, coefs = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        coefs.append(opt.last_step["clip_coef"])
        ref_opt.zero_grad()
        ref_loss = torch.nn.functional.mse_loss(ref_model(x), y)
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.05)
        ref_opt.step()
        ref_losses.append(ref_loss.item())
    assert max(coefs) > 2, "the gradient was never clipped: a weak test"
    assert_losses_close(losses, ref_losses, rel=1e-5)


def test_grad_scaler_overflow_skips_and_backs_off() -> None:
    model = make_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    opt = offload(model)
    x, y = make_data()

    def step(poison: bool) -> None:
        scaled_step(model, opt, scaler, x, y, poison)

    for _ in range(3):
        step(poison=False)
    assert opt.last_step["loss_scale"] == 1024.0 and not opt.last_step["skipped"]
    before_params = params_of(model)
    before_state = copy.deepcopy(opt.state_dict()["state"])
    step(poison=True)
    assert opt.last_step["skipped"] and opt.last_step["overflow"]
    assert scaler.get_scale() == 512.0
    for p, q in zip(model.parameters(), before_params):
        assert torch.equal(p, q)
    after_state = opt.state_dict()["state"]
    for i, st_before in before_state.items():
        for k, v in st_before.items():
            assert torch.equal(after_state[i][k], v), (i, k)
    step(poison=False)
    assert not opt.last_step["skipped"] and opt.last_step["loss_scale"] == 512.0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before_params))


def test_grad_scaler_run_matches_unscaled_run() -> None:
    # A power-of-two scale is exact: scaled and unscaled training agree.
    a, b = make_model(), make_model()
    opt_a, opt_b = offload(a), offload(b)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x, y = make_data()
    for _ in range(10):
        opt_a.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(b(x), y)).backward()
        scaler.step(opt_b)
        scaler.update()
    assert_params_close(b, a, atol=1e-6)


def _run(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    return train(model, opt, steps=steps)


@pytest.mark.parametrize("where", ["cpu", "nvme"])
def test_state_dict_save_load_continues_bit_for_bit(tmp_path, where: str) -> None:
    kw = nvme(tmp_path) if where == "nvme" else {}
    model = make_model()
    opt = offload(model, **kw)
    _run(model, opt, 5)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    want = _run(model, opt, 5)

    fresh = make_model(seed=7)
    fresh_opt = offload(fresh, lr=1.0, **kw)  # hyper-parameters come from the state dict
    fresh.load_state_dict(saved_model)
    fresh_opt.load_state_dict(saved_opt)
    assert fresh_opt.param_groups[0]["lr"] == LR
    got = _run(fresh, fresh_opt, 5)
    assert got == want
    for p, q in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_state_dict_has_torch_layout_and_loads_into_adamw() -> None:
    model, ref_model = make_model(), make_model()
    opt = offload(model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    train(model, opt, steps=10)
    train(ref_model, ref_opt, steps=10)
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    assert sorted(sd["state"]) == sorted(ref_sd["state"])
    for i, s in sd["state"].items():
        assert float(s["step"]) == 10
        assert s["exp_avg"].shape == ref_sd["state"][i]["exp_avg"].shape
        torch.testing.assert_close(s["exp_avg"], ref_sd["state"][i]["exp_avg"], rtol=1e-3,
                                   atol=1e-6)
        torch.testing.assert_close(s["exp_avg_sq"], ref_sd["state"][i]["exp_avg_sq"], rtol=1e-3,
                                   atol=1e-9)
    # And torch's AdamW takes it (the extra "master" is ignored).
    torch.optim.AdamW(make_model().parameters(), lr=LR).load_state_dict(sd)


@pytest.mark.parametrize("where", ["cpu", "nvme"])
def test_strata_checkpoint_save_load_continues_bit_for_bit(tmp_path, where: str) -> None:
    kw = nvme(tmp_path) if where == "nvme" else {}
    model = make_model()
    opt = offload(model, **kw)
    _run(model, opt, 4)
    opt.save_checkpoint(tmp_path / "ckpt")
    want = _run(model, opt, 4)

    fresh = make_model(seed=9)
    fresh_opt = offload(fresh, **kw)
    fresh_opt.load_checkpoint(tmp_path / "ckpt")
    got = _run(fresh, fresh_opt, 4)
    assert got == want
    for p, q in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_lr_schedulers_take_effect() -> None:
    model, ref_model = make_model(), make_model()
    opt = offload(model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.3)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.3)
    losses = train(model, opt, steps=20, after_step=lambda i: sched.step())
    ref_losses = train(ref_model, ref_opt, steps=20, after_step=lambda i: ref_sched.step())
    assert_losses_close(losses, ref_losses)

    # lr 0 from step 3 on (LambdaLR): AdamW moves nothing any more.
    frozen = make_model()
    opt = offload(frozen, weight_decay=0.0)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 3 else 0.0)
    snapshots = []
    train(frozen, opt, steps=6,
          after_step=lambda i: (lam.step(), snapshots.append(params_of(frozen))))
    assert any(not torch.equal(p, q) for p, q in zip(snapshots[0], snapshots[2]))
    for later in snapshots[3:]:
        for p, q in zip(snapshots[2], later):
            assert torch.equal(p, q)


def test_bf16_params_match_cpu_adam() -> None:
    model, ref_model = make_model(dtype=torch.bfloat16), make_model(dtype=torch.bfloat16)
    losses = train(model, offload(model), steps=20)
    ref_losses = train(ref_model, st.CPUAdam(ref_model.parameters(), lr=LR, weight_decay=WD),
                       steps=20)
    assert losses[-1] < losses[0]
    assert_losses_close(losses, ref_losses, rel=1e-2)


def test_from_ds_config(tmp_path) -> None:
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": WD}},
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
    }
    path = tmp_path / "ds_config.json"
    path.write_text(__import__("json").dumps(cfg))
    model, ref_model = make_model(), make_model()
    opt = st.OffloadOptimizer.from_ds_config(model.parameters(), path)
    assert opt.defaults["lr"] == LR and opt.defaults["weight_decay"] == WD
    losses = train(model, opt, steps=20)
    ref_losses = train(ref_model, torch.optim.AdamW(ref_model.parameters(), lr=LR,
                                                     weight_decay=WD), steps=20)
    assert_losses_close(losses, ref_losses)

    bad = dict(cfg, optimizer={"type": "AdamW", "params": {"lr": "fast"}})
    with pytest.raises(ValueError, match="optimizer.params.lr"):
        st.OffloadOptimizer.from_ds_config(make_model().parameters(), bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        st.OffloadOptimizer.from_ds_config(make_model().parameters(), tmp_path / "none.json")


# ---- misuse --------------------------------------------------------------

def test_non_leaf_param_is_refused() -> None:
    w = torch.randn(4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="not a leaf tensor"):
        st.OffloadOptimizer([w * 2])


def test_unsupported_or_mixed_dtypes_are_refused() -> None:
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        st.OffloadOptimizer([torch.zeros(4, dtype=torch.float64, requires_grad=True)])
    with pytest.raises(TypeError, match="one dtype"):
        st.OffloadOptimizer([torch.zeros(4, requires_grad=True),
                             torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)])


def test_nvme_path_missing_or_not_a_directory(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs nvme_path"):
        offload(make_model(), offload="nvme")
    with pytest.raises(FileNotFoundError, match="mkdir -p"):
        offload(make_model(), offload="nvme", nvme_path=str(tmp_path / "absent"))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        offload(make_model(), offload="nvme", nvme_path=str(f))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any directory")
def test_nvme_path_not_writable(tmp_path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    with pytest.raises(PermissionError, match="not writable"):
        offload(make_model(), offload="nvme", nvme_path=str(d))


def test_step_before_any_backward() -> None:
    model = make_model()
    opt = offload(model)
    with pytest.raises(RuntimeError, match="before any backward"):
        opt.step()
    train(model, opt, steps=2)
    with pytest.raises(RuntimeError, match="no backward ran since the last step"):
        opt.step()


def test_other_misuse() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="pass 'cpu'"):
        offload(model, offload="gpu")
    with pytest.raises(ValueError, match="optimizer="):
        offload(model, optimizer="sgd")
    opt = offload(model)
    with pytest.raises(NotImplementedError, match="constructor"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})


# ---- CUDA ----------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA params need a GPU; none here")
def test_cuda_params_match_cpu() -> None:
    cpu_model, gpu_model = make_model(), make_model().cuda()
    try:
        gpu_opt = offload(gpu_model)
    except RuntimeError as e:
        if "strata cannot use" in str(e):
            pytest.skip(f"this strata build has no CUDA: {e}")
        raise
    losses = train(cpu_model, offload(cpu_model), steps=10)
    x, y = make_data()
    x, y = x.cuda(), y.cuda()
    gpu_losses = []
    for _ in range(10):
        gpu_opt.zero_grad()
        loss = torch.nn.functional.mse_loss(gpu_model(x), y)
        loss.backward()
        gpu_opt.step()
        gpu_losses.append(loss.item())
    assert_losses_close(gpu_losses, losses, rel=1e-4)


def test_reload_params_takes_new_weights_and_keeps_states() -> None:
    model, ref_model = make_model(), make_model()
    opt = offload(model)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=LR, weight_decay=WD)
    train(model, opt, steps=3)
    train(ref_model, ref_opt, steps=3)
    with torch.no_grad():  # the same edit to both models' weights
        for p, q in zip(model.parameters(), ref_model.parameters()):
            p.mul_(0.5)
            q.mul_(0.5)
    opt.reload_params()
    assert_losses_close(train(model, opt, steps=5), train(ref_model, ref_opt, steps=5))


def test_fp16_params_use_stratas_loss_scaler() -> None:
    model = make_model(dtype=torch.float16)
    opt = offload(model, lr=1e-2)
    x, y = make_data(dtype=torch.float16)
    losses, scales = [], []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scales.append(opt.loss_scale)
        (loss * opt.loss_scale).backward()
        opt.step()
        losses.append(loss.item())
    assert scales[0] == 2.0 ** 16  # ds_config fp16 defaults: initial_scale_power 16
    assert losses[-1] < 0.8 * losses[0], losses
    with pytest.raises(RuntimeError, match="strata's own loss scaler"):
        scaler = torch.amp.GradScaler("cpu")
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)

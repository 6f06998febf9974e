"""strata.torch.OffloadOptimizer(daemon=..., session=...): the steps run in
stratad (docs/daemon.md), the one shipped in the package (strata/bin/stratad).

Each test starts its own stratad on a temporary socket. Through stratad a run
equals the same run in-process bit for bit (overlap and sync, several
buckets); a second optimizer attaching to the same session resumes it (the
program run again after a crash) and continues as an uninterrupted run; CUDA
params through stratad equal CUDA params in-process (skipped without a GPU:
the Python package has no simulated device; tests/daemon_device_client_test
covers the same client on SimDevice). What a program does besides stepping
goes through stratad with the in-process results bit for bit: an LR scheduler
(set_group), load_state_dict (write_state, set_optimizer_steps), a
GradScaler, and the framework's own overflow check (report_overflow, fp16)."""

from __future__ import annotations

import gc
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

import strata
import strata.torch as st
from helpers import make_data, make_model, scaled_step, train

STRATAD = Path(strata.__file__).parent / "bin" / "stratad"


@pytest.fixture
def stratad():
    if not STRATAD.is_file():
        pytest.skip(f"no stratad at {STRATAD}: the package was built without it "
                    "(pyproject.toml's build.targets)")
    # A short path: a Unix socket's path is limited to 107 bytes.
    d = tempfile.mkdtemp(prefix="strata-py-")
    sock = os.path.join(d, "s", "stratad.sock")
    proc = subprocess.Popen([str(STRATAD), "--socket", sock, "--threads", "2",
                             "--host-mem", "1G"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if proc.poll() is not None:
            raise RuntimeError(f"stratad exited: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("stratad did not create its socket within 20 s")
        time.sleep(0.02)
    yield sock
    proc.terminate()
    assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()


def params_of(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("overlap", [True, False])
def test_daemon_equals_in_process(stratad: str, overlap: bool) -> None:
    kw = dict(lr=5e-3, weight_decay=0.05, overlap=overlap, gradient_clipping=1.0,
              bucket_bytes=8 << 10)
    local, remote = make_model(), make_model()
    local_losses = train(local, st.OffloadOptimizer(local.parameters(), **kw), steps=12)
    opt = st.OffloadOptimizer(remote.parameters(), daemon=stratad, session="py-eq", **kw)
    assert opt.num_buckets > 1
    remote_losses = train(remote, opt, steps=12)
    assert remote_losses == local_losses
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)
    # The states live in stratad and read back equal too.
    assert opt.state_dict()["state"][0]["exp_avg"].shape == next(remote.parameters()).shape


def test_reattach_resumes_the_session(stratad: str) -> None:
    kw = dict(lr=5e-3, overlap=True)
    whole = make_model()
    train(whole, st.OffloadOptimizer(whole.parameters(), **kw), steps=10)

    first = make_model()
    opt = st.OffloadOptimizer(first.parameters(), daemon=stratad, session="py-resume", **kw)
    train(first, opt, steps=6)
    del opt  # the program ends (its connection closes); the session stays

    again = make_model()  # fresh initial values: the session's replace them
    opt = st.OffloadOptimizer(again.parameters(), daemon=stratad, session="py-resume", **kw)
    for a, b in zip(params_of(again), params_of(first)):
        assert torch.equal(a, b)
    train(again, opt, steps=4)
    for a, b in zip(params_of(again), params_of(whole)):
        assert torch.equal(a, b)


def test_daemon_misuse_is_explained(stratad: str) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="session"):
        st.OffloadOptimizer(model.parameters(), daemon=stratad)
    with pytest.raises(ValueError, match="without daemon"):
        st.OffloadOptimizer(model.parameters(), session="x")
    with pytest.raises(RuntimeError, match="stratad"):
        st.OffloadOptimizer(model.parameters(), daemon=stratad + ".missing", session="x")


def test_scheduler_and_load_state_dict_through_daemon(stratad: str) -> None:
    kw = dict(lr=5e-3, weight_decay=0.05, overlap=True, bucket_bytes=8 << 10)

    def with_scheduler(model: torch.nn.Module, opt: torch.optim.Optimizer,
                       steps: int) -> list[float]:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.7 ** i)
        return train(model, opt, steps=steps, after_step=lambda i: sched.step())

    # A run whose state_dict both sides load (torch's layout, master included).
    source = make_model(seed=3)
    source_opt = st.OffloadOptimizer(source.parameters(), **kw)
    with_scheduler(source, source_opt, 4)
    sd = source_opt.state_dict()
    sd["param_groups"][0]["lr"] = 2e-3  # a changed group goes in too

    local, remote = make_model(), make_model()
    local_opt = st.OffloadOptimizer(local.parameters(), **kw)
    remote_opt = st.OffloadOptimizer(remote.parameters(), daemon=stratad, session="py-sd", **kw)
    for o in (local_opt, remote_opt):
        o.load_state_dict(sd)
    del o
    assert remote_opt._native.optimizer_steps == local_opt._native.optimizer_steps == 4
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)
    assert with_scheduler(remote, remote_opt, 6) == with_scheduler(local, local_opt, 6)
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)
    rs, ls = remote_opt.state_dict()["state"], local_opt.state_dict()["state"]
    for i in ls:
        for k in ("exp_avg", "exp_avg_sq", "master"):
            assert torch.equal(rs[i][k], ls[i][k]), (i, k)
    # The session keeps the groups in force, as the in-process optimizer
    # has them (the scheduler's next lr goes in with the next step): a
    # program attaching again sees them.
    lr_now = local_opt._native.group(0)["lr"]
    assert remote_opt._native.group(0)["lr"] == lr_now < 1e-3
    del remote_opt
    gc.collect()  # the scheduler's reference cycle: the program's optimizer is gone
    again = make_model()
    again_opt = st.OffloadOptimizer(again.parameters(), daemon=stratad, session="py-sd", **kw)
    assert again_opt._native.group(0)["lr"] == lr_now


def test_reported_overflow_skips_the_step_as_in_process(stratad: str) -> None:
    """fp16 params (strata's loss scaler): the framework's own overflow check
    (the native seam's report_overflow, between backward and step) skips the
    step through stratad as in-process, the scale backing off the same."""
    kw = dict(lr=1e-2, overlap=True, bucket_bytes=8 << 10)
    x, y = make_data(dtype=torch.float16)

    def run(model: torch.nn.Module, opt: st.OffloadOptimizer) -> list[tuple]:
        out = []
        for i in range(8):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            (loss * opt.loss_scale).backward()
            if i in (2, 5):
                opt._native.report_overflow()
            opt.step()
            out.append((loss.item(), opt.last_step["skipped"], opt.loss_scale))
        return out

    local, remote = make_model(dtype=torch.float16), make_model(dtype=torch.float16)
    local_run = run(local, st.OffloadOptimizer(local.parameters(), **kw))
    remote_run = run(remote, st.OffloadOptimizer(remote.parameters(), daemon=stratad,
                                                 session="py-overflow", **kw))
    assert remote_run == local_run
    assert [r[1] for r in local_run].count(True) >= 2
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)


def test_grad_scaler_through_daemon_equals_in_process(stratad: str) -> None:
    """A GradScaler (fp32 params) with an inf gradient at two steps: skipped
    and backed off through stratad exactly as in-process."""
    x, y = make_data()

    def run(model: torch.nn.Module, opt: st.OffloadOptimizer) -> list[tuple]:
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
        out = []
        for i in range(8):
            loss = scaled_step(model, opt, scaler, x, y, poison=i in (2, 5))
            out.append((loss, opt.last_step["skipped"], scaler.get_scale()))
        return out

    local, remote = make_model(), make_model()
    local_run = run(local, st.OffloadOptimizer(local.parameters(), lr=5e-3))
    remote_run = run(remote, st.OffloadOptimizer(remote.parameters(), lr=5e-3, daemon=stratad,
                                                 session="py-scaler"))
    assert remote_run == local_run
    assert [r[1] for r in local_run].count(True) == 2
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)


# ---- CUDA ----------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA params need a GPU; none here")
@pytest.mark.parametrize("overlap", [True, False])
def test_cuda_params_through_daemon_equal_in_process(stratad: str, overlap: bool) -> None:
    kw = dict(lr=5e-3, weight_decay=0.05, overlap=overlap, gradient_clipping=1.0,
              bucket_bytes=8 << 10)
    x, y = (t.cuda() for t in make_data())

    def run(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[float]:
        losses = []
        for _ in range(8):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    local, remote = make_model().cuda(), make_model().cuda()
    try:
        local_opt = st.OffloadOptimizer(local.parameters(), **kw)
    except RuntimeError as e:
        if "strata cannot use" in str(e):
            pytest.skip(f"this strata build has no CUDA: {e}")
        raise
    local_losses = run(local, local_opt)
    opt = st.OffloadOptimizer(remote.parameters(), daemon=stratad, session="py-cuda", **kw)
    assert run(remote, opt) == local_losses
    for a, b in zip(params_of(remote), params_of(local)):
        assert torch.equal(a, b)

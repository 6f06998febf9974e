"""strata._strata directly: arrays are used in place (no copies), bad arrays are
refused rather than converted, and the GIL is released during the step."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import strata
from strata import _strata

ADAMW = dict(optimizer="adamw", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             bias_correction=True, grad_scale=1.0)


def test_numpy_and_torch_arrays_are_updated_in_place() -> None:
    p = np.ones(1000, dtype=np.float32)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    g = np.full_like(p, 0.5)
    _strata.step(**ADAMW, step=1, param=p, exp_avg=m, exp_avg_sq=v, grad=g, param_out=None)
    np.testing.assert_allclose(p, 1 - 1e-2, rtol=1e-6)
    np.testing.assert_allclose(m, 0.05, rtol=1e-6)

    t = torch.ones(1000)
    out = torch.empty(1000, dtype=torch.bfloat16)
    ptr = out.data_ptr()
    _strata.step(**ADAMW, step=1, param=t, exp_avg=torch.zeros(1000), exp_avg_sq=torch.zeros(1000),
                 grad=torch.full((1000,), 0.5, dtype=torch.float16), param_out=out)
    assert out.data_ptr() == ptr
    assert torch.equal(out, t.to(torch.bfloat16))
    torch.testing.assert_close(t, torch.full((1000,), 1 - 1e-2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA; no GPU here")
def test_pinned_cpu_tensors_are_stepped_in_place() -> None:
    p = torch.ones(1000).pin_memory()
    out = torch.empty(1000, dtype=torch.float16).pin_memory()
    _strata.step(**ADAMW, step=1, param=p, exp_avg=torch.zeros(1000).pin_memory(),
                 exp_avg_sq=torch.zeros(1000).pin_memory(),
                 grad=torch.full((1000,), 0.5, dtype=torch.float16).pin_memory(), param_out=out)
    torch.testing.assert_close(p, torch.full((1000,), 1 - 1e-2))
    assert torch.equal(out, p.half())


def test_a_strided_array_is_refused_not_copied() -> None:
    p = torch.ones(10, 10).t()
    with pytest.raises(TypeError):
        _strata.step(**ADAMW, step=1, param=p, exp_avg=torch.zeros(100), exp_avg_sq=torch.zeros(100),
                     grad=torch.zeros(100), param_out=None)


def test_a_float64_state_is_refused() -> None:
    with pytest.raises(ValueError, match="exp_avg must be float32"):
        _strata.step(**ADAMW, step=1, param=torch.ones(4), exp_avg=torch.zeros(4, dtype=torch.float64),
                     exp_avg_sq=torch.zeros(4), grad=torch.zeros(4), param_out=None)


def test_size_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="grad has 3 elements but param has 4"):
        _strata.step(**ADAMW, step=1, param=torch.ones(4), exp_avg=torch.zeros(4),
                     exp_avg_sq=torch.zeros(4), grad=torch.zeros(3), param_out=None)


def test_best_isa_names_an_isa() -> None:
    assert strata.best_isa() in {"scalar", "sse2", "avx2", "avx512", "neon"}


def test_the_gil_is_released_during_the_step() -> None:
    # While one long native step runs in a thread, the main thread keeps
    # running Python. With the GIL held it would stall for the whole call.
    n = 1 << 26
    bufs = [np.ones(n, dtype=np.float32) for _ in range(3)] + [np.full(n, 0.5, dtype=np.float32)]

    def one_step() -> None:
        _strata.step(**ADAMW, step=1, param=bufs[0], exp_avg=bufs[1], exp_avg_sq=bufs[2],
                     grad=bufs[3], param_out=None)

    t0 = time.perf_counter()
    one_step()
    call = time.perf_counter() - t0
    worker = threading.Thread(target=lambda: [one_step() for _ in range(2)])
    worst = 0.0
    last = time.perf_counter()
    worker.start()
    while worker.is_alive():
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
        time.sleep(0.001)  # leave the cores to the step
    worker.join()
    assert worst < 0.5 * call, f"main thread stalled {worst:.3f} s during a {call:.3f} s step"

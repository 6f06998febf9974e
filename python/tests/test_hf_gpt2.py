"""A small Hugging Face GPT-2 (built from a config, no download) trains with
OffloadOptimizer: its loss falls clearly; the example program runs, plain
and through transformers.Trainer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is in "
                                   "python/requirements-test.txt; scripts/python-tests.sh installs it")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "python", "hf_gpt2_offload.py")


def load_example():
    spec = importlib.util.spec_from_file_location("hf_gpt2_offload", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpt2_loss_falls_with_offload_optimizer() -> None:
    ex = load_example()
    from strata.torch import OffloadOptimizer

    model = ex.make_model()
    opt = OffloadOptimizer(model.parameters(), lr=3e-3, weight_decay=0.01, gradient_clipping=1.0)
    losses = ex.train(model, opt, ex.make_batch(), steps=30, scheduler=ex.warmup(opt))
    print(f"HF GPT-2 with OffloadOptimizer: first loss {losses[0]:.4f}, last {losses[-1]:.4f}")
    assert losses[0] > 5.0  # about ln(256) at the start
    assert losses[-1] < losses[0] - 2.0, losses
    assert all(p.grad is None for p in model.parameters())


def test_gpt2_matches_torch_adamw() -> None:
    ex = load_example()
    from strata.torch import OffloadOptimizer

    model, ref = ex.make_model(), ex.make_model()
    batch = ex.make_batch()
    losses = ex.train(model, OffloadOptimizer(model.parameters(), lr=1e-3), batch, steps=8)
    ref_losses = ex.train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0),
                          batch, steps=8)
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 1e-4 * abs(b), (losses, ref_losses)


def _run_example(*args: str) -> str:
    r = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_example_runs() -> None:
    out = _run_example("--steps", "3")
    assert out.count("loss") >= 3 and "first loss" in out, out


def test_example_runs_on_nvme(tmp_path) -> None:
    out = _run_example("--steps", "2", "--offload", "nvme", "--nvme-path", str(tmp_path))
    assert "first loss" in out, out


def test_example_runs_through_hf_trainer(tmp_path) -> None:
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    out = _run_example("--steps", "4", "--trainer", "--out-dir", str(tmp_path))
    assert "first loss" in out, out

#!/usr/bin/env python3
"""OffloadOptimizer's step overhead against in-memory torch.optim.AdamW on the
Hugging Face GPT-2 of examples/python/hf_gpt2_offload.py.

Each optimizer trains its own copy of the same model on the same fixed byte
batch; a step is forward + backward + optimizer.step() + zero_grad, timed
after warm-up steps (median of --steps; the optimizers' steps interleaved so
that other load on the box falls on each alike). torch.optim.AdamW keeps its states
in the process (fp32, foreach); strata.torch.OffloadOptimizer hands each
gradient to strata during backward (hooks, buckets) and keeps master weights
and states in its store (host, or NVMe with --nvme-path). The figures: ms per
step of each, the ratio, and the difference (the overhead per step). Both
run on the CPU, so strata's optimizer threads and torch's backward share the
cores: on a box with few cores overlap gains little.

Needs: the strata package (pip install .), torch, transformers. Usage:
  python3 bench/offload_optimizer_overhead.py [--layers 2 --embd 64 --seq 64 --batch 8]
      [--steps 20] [--nvme-path DIR] [--json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example():
    path = os.path.join(ROOT, "examples", "python", "hf_gpt2_offload.py")
    spec = importlib.util.spec_from_file_location("hf_gpt2_offload", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Run:
    """One optimizer training its own copy of the model, one step at a time."""

    def __init__(self, model, opt, batch) -> None:
        self.model, self.opt, self.batch = model, opt, batch
        self.step_times, self.opt_times, self.losses = [], [], []
        model.train()

    def step(self, record: bool) -> None:
        t0 = time.perf_counter()
        loss = self.model(input_ids=self.batch, labels=self.batch).loss
        loss.backward()  # OffloadOptimizer's hooks hand the gradients over in here
        t1 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        self.losses.append(loss.item())
        if record:
            self.step_times.append(t2 - t0)
            self.opt_times.append(t2 - t1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Defaults: the example's model and batch.
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--nvme-path", default=None, help="also time offload='nvme' here")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = ap.parse_args()

    from strata.torch import OffloadOptimizer

    ex = load_example()

    def model():
        return ex.make_model(n_layer=a.layers, n_embd=a.embd, n_head=a.heads, n_positions=a.seq)

    batch = ex.make_batch(batch=a.batch, seq=a.seq)
    n_params = sum(p.numel() for p in model().parameters())
    runs = {}
    m = model()
    runs["torch_adamw"] = Run(m, torch.optim.AdamW(m.parameters(), lr=1e-3), batch)
    m = model()
    runs["strata_cpu"] = Run(m, OffloadOptimizer(m.parameters(), lr=1e-3), batch)
    if a.nvme_path:
        m = model()
        runs["strata_nvme"] = Run(m, OffloadOptimizer(m.parameters(), lr=1e-3, offload="nvme",
                                                      nvme_path=a.nvme_path), batch)
    # Steps interleaved across the optimizers, so load from other processes
    # falls on all of them alike.
    for i in range(a.warmup + a.steps):
        for r in runs.values():
            r.step(record=i >= a.warmup)

    base = statistics.median(runs["torch_adamw"].step_times)
    result = {"params": n_params, "layers": a.layers, "embd": a.embd, "seq": a.seq,
              "batch": a.batch, "steps": a.steps, "threads": torch.get_num_threads(),
              "rows": {}}
    for name, r in runs.items():
        ms = 1e3 * statistics.median(r.step_times)
        result["rows"][name] = {"ms_per_step": round(ms, 3),
                                "ratio_vs_torch": round(ms / (1e3 * base), 4),
                                "overhead_ms": round(ms - 1e3 * base, 3),
                                "best_ms_per_step": round(1e3 * min(r.step_times), 3),
                                "step_call_ms": round(1e3 * statistics.median(r.opt_times), 3),
                                "first_loss": round(r.losses[0], 4),
                                "last_loss": round(r.losses[-1], 4)}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"HF GPT-2 {a.layers}x{a.embd}, {n_params / 1e6:.2f}M params, batch {a.batch}x"
              f"{a.seq}, {result['threads']} threads, median of {a.steps} steps", file=sys.stderr)
        for name, row in result["rows"].items():
            print(f"  {name:12s} {row['ms_per_step']:9.2f} ms/step  x{row['ratio_vs_torch']:.3f}"
                  f"  ({row['overhead_ms']:+.2f} ms; best {row['best_ms_per_step']:.2f} ms; "
                  f"step()+zero_grad {row['step_call_ms']:.2f} ms)"
                  f"  loss {row['first_loss']:.3f} -> {row['last_loss']:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Writes the golden vectors tests/cpu_adam_test.cc checks cpu_adam against.

Runs a few steps of torch.optim.Adam / AdamW / Adagrad (single-tensor path,
foreach=False) on small deterministic float32 tensors, plus Lion (Chen et al.
2023) and Adam without bias correction (DeepSpeed's bias_correction=False),
which torch lacks, written here with float32 torch ops. Gradients may be
fp16/bf16; each step uses grad.float() * grad_scale, as the fused kernel does.

Output: tests/golden/cpu_adam/cases.json (hyperparameters) and one <name>.bin
per case, little-endian, in this order:
  param0 [n] f32, grads [steps][n] (f32, or u16 bits for fp16/bf16),
  param [n] f32, then exp_avg [n] f32 if has_m, then exp_avg_sq [n] f32 if has_v.
States start at zero. Usage: pip install torch; python3 make_cpu_adam_golden.py
"""
import json
import os

import torch

N = 301  # not a multiple of any SIMD width
STEPS = 5
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_adam")

CASES = [
    dict(name="adam_l2_fp32", optimizer="adam", grad_dtype="fp32", grad_scale=0.37,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, bias_correction=True),
    dict(name="adamw_fp32", optimizer="adamw", grad_dtype="fp32", grad_scale=1.0,
         beta1=0.9, beta2=0.95, eps=1e-6, weight_decay=0.1, bias_correction=True),
    dict(name="adamw_fp16_scaled", optimizer="adamw", grad_dtype="fp16", grad_scale=1.0 / 1024,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, bias_correction=True),
    dict(name="adamw_bf16", optimizer="adamw", grad_dtype="bf16", grad_scale=0.5,
         beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.0, bias_correction=True),
    dict(name="adam_no_bias_correction", optimizer="adam", grad_dtype="fp32", grad_scale=1.0,
         beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, bias_correction=False),
    dict(name="adagrad_fp32", optimizer="adagrad", grad_dtype="fp32", grad_scale=1.0,
         beta1=0.0, beta2=0.0, eps=1e-10, weight_decay=0.01, bias_correction=True),
    dict(name="adagrad_fp16", optimizer="adagrad", grad_dtype="fp16", grad_scale=1.0 / 256,
         beta1=0.0, beta2=0.0, eps=1e-10, weight_decay=0.0, bias_correction=True),
    dict(name="lion_fp32", optimizer="lion", grad_dtype="fp32", grad_scale=1.0,
         beta1=0.9, beta2=0.99, eps=0.0, weight_decay=0.1, bias_correction=True),
]
LRS = [1e-3, 2e-3, 5e-4, 1e-3, 3e-4]
LOWP = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_grads(case, gen):
    grads = []
    inv = 1.0 / case["grad_scale"]
    for t in range(STEPS):
        g = torch.randn(N, generator=gen) * (0.05 * (t + 1)) * inv
        g[::17] = 0.0  # exact zeros
        if case["grad_dtype"] in LOWP:
            g = g.to(LOWP[case["grad_dtype"]])
        grads.append(g)
    return grads


def run_torch(case, p, grads):
    """Returns (param, exp_avg or None, exp_avg_sq or None)."""
    p = p.clone().requires_grad_(True)
    kind = case["optimizer"]
    wd = case["weight_decay"]
    if kind in ("adam", "adamw") and case["bias_correction"]:
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        opt = cls([p], lr=LRS[0], betas=(case["beta1"], case["beta2"]), eps=case["eps"],
                  weight_decay=wd, foreach=False)
    elif kind == "adagrad":
        opt = torch.optim.Adagrad([p], lr=LRS[0], eps=case["eps"], weight_decay=wd,
                                  foreach=False)
    else:
        opt = None
    m = torch.zeros(N)
    v = torch.zeros(N)
    for t in range(STEPS):
        g = grads[t].float() * case["grad_scale"]
        lr = LRS[t]
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr
            p.grad = g
            opt.step()
            continue
        with torch.no_grad():
            if kind == "lion":
                p.mul_(1 - lr * wd)
                update = (m * case["beta1"]).add(g, alpha=1 - case["beta1"]).sign_()
                p.add_(update, alpha=-lr)
                m.mul_(case["beta2"]).add_(g, alpha=1 - case["beta2"])
            else:  # adam without bias correction (DeepSpeed's bias_correction=False)
                g = g.add(p, alpha=wd) if wd else g
                m.lerp_(g, 1 - case["beta1"])
                v.mul_(case["beta2"]).addcmul_(g, g, value=1 - case["beta2"])
                denom = v.sqrt().add_(case["eps"])
                p.addcdiv_(m, denom, value=-lr)
    if opt is not None:
        st = opt.state[p]
        if kind == "adagrad":
            return p.detach(), None, st["sum"]
        return p.detach(), st["exp_avg"], st["exp_avg_sq"]
    if kind == "lion":
        return p.detach(), m, None
    return p.detach(), m, v


def raw(t):
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().astype("<u2").tobytes()
    return t.numpy().astype("<f4").tobytes()


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {"n": N, "steps": STEPS, "lrs": LRS, "torch": torch.__version__, "cases": []}
    for i, case in enumerate(CASES):
        gen = torch.Generator().manual_seed(1234 + i)
        p0 = torch.randn(N, generator=gen)
        grads = make_grads(case, gen)
        p, m, v = run_torch(case, p0, grads)
        blob = raw(p0) + b"".join(raw(g) for g in grads) + raw(p)
        blob += raw(m) if m is not None else b""
        blob += raw(v) if v is not None else b""
        with open(os.path.join(OUT, case["name"] + ".bin"), "wb") as f:
            f.write(blob)
        manifest["cases"].append(dict(case, has_m=m is not None, has_v=v is not None))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Times DeepSpeed's DeepSpeedCPUAdam and torch.optim.AdamW (foreach and fused)
against `strata bench cpu-adam` at the same parameter count and thread count,
and prints how many times faster strata's step is (their time / strata's).

Two comparisons. Step only: DeepSpeed and torch step fp32 params with fp32
grads and write no 16-bit copy; strata is timed the same way (--grad-dtype
fp32 --out-dtype none, 28 B/param). Pipeline: the ZeRO-Offload host step,
fp16 grads in and an fp16 param copy out; DeepSpeed and torch need separate
passes for the grad conversion and the copy (the *_pipeline rows), strata
does it in its one fused pass (28 B/param).

With --python the rows are strata.torch.CPUAdam (the Python package, `pip
install .`) against DeepSpeedCPUAdam and torch.optim.AdamW(fused=True), all
timed in this one process: step only (fp32 params and grads) and the offload
pass (fp16 grads in, fp16 params out: CPUAdam over an fp16 param keeps the
fp32 master in its state and writes the fp16 param in its fused pass).

Needs: pip install torch deepspeed (DeepSpeed JIT-builds its CPU Adam on
first use; that build is not timed; if it fails its rows say why). Usage:
  python3 bench/compare_cpu_adam.py --strata build/tools/strata --params 268435456 [--json]
  python3 bench/compare_cpu_adam.py --python [--params 134217728] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import time


def best_step_seconds(opt, steps):
    opt.step()  # warm-up: state allocation, first touch, JIT
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


def make_param(torch, n):
    p = torch.nn.Parameter(torch.empty(n, dtype=torch.float32).uniform_(-1, 1))
    p.grad = torch.empty(n, dtype=torch.float32).uniform_(-1e-3, 1e-3)
    return p


class Pipeline:
    """The ZeRO-Offload host step done with separate passes: fp16 grads
    unscaled into the fp32 grad, the optimizer step, the fp16 param copy."""

    def __init__(self, torch, opt, p):
        self.opt, self.p = opt, p
        self.g16 = p.grad.to(torch.float16)
        self.p16 = torch.empty_like(self.g16)

    def step(self):
        self.p.grad.copy_(self.g16).mul_(1.0 / 1024)
        self.opt.step()
        self.p16.copy_(self.p.detach())


def make_torch(torch, n, **kw):
    p = make_param(torch, n)
    return torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, **kw), p


def make_deepspeed(torch, n):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    p = make_param(torch, n)
    return DeepSpeedCPUAdam([p], lr=1e-4, weight_decay=0.01, adamw_mode=True), p


def timed(torch, make, steps, pipeline):
    opt, p = make()
    return best_step_seconds(Pipeline(torch, opt, p) if pipeline else opt, steps)


def time_strata(binary, n, threads, extra):
    cmd = [binary, "bench", "cpu-adam", "--params", str(n), "--threads", str(threads), "--json"]
    out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class Offload16:
    """strata.torch.CPUAdam's offload pass: fp16 param and fp16 grad, the fp32
    master in the optimizer state; one fused pass reads the fp16 grad and
    writes the fp16 param."""

    def __init__(self, torch, n):
        import strata.torch

        p = torch.nn.Parameter(torch.empty(n, dtype=torch.float32).uniform_(-1, 1).half())
        p.grad = torch.empty(n, dtype=torch.float16).uniform_(-1e-3, 1e-3)
        self.opt = strata.torch.CPUAdam([p], lr=1e-4, weight_decay=0.01)

    def step(self):
        self.opt.step()


def make_strata_torch(torch, n):
    import strata.torch

    p = make_param(torch, n)
    return strata.torch.CPUAdam([p], lr=1e-4, weight_decay=0.01), p


def python_rows(torch, n, steps):
    """Every row timed here, in one process; None where it could not run."""
    rows = {}

    def run(key, make):
        try:
            rows[key] = {"seconds": best_step_seconds(make(), steps)}
        except Exception as e:  # one missing package must not hide the rest
            rows[key] = {"error": f"{type(e).__name__}: {e}"}

    def with_pipeline(make_opt):
        def make():
            opt, p = make_opt()
            return Pipeline(torch, opt, p)
        return make

    run("strata_torch_cpu_adam", lambda: make_strata_torch(torch, n)[0])
    run("deepspeed_cpu_adam", lambda: make_deepspeed(torch, n)[0])
    run("torch_adamw_fused", lambda: make_torch(torch, n, fused=True)[0])
    run("strata_torch_cpu_adam_offload", lambda: Offload16(torch, n))
    run("deepspeed_cpu_adam_offload", with_pipeline(lambda: make_deepspeed(torch, n)))
    run("torch_adamw_fused_offload", with_pipeline(lambda: make_torch(torch, n, fused=True)))
    return rows


def print_python(res, file):
    rows = res["rows"]
    print(f"{res['params']} params, {res['threads']} threads, AdamW, strata ISA {res['isa']}",
          file=file)
    for suffix, what in (("", "step only (fp32 params, fp32 grads)"),
                         ("_offload", "offload pass (fp16 grads in, fp16 params out)")):
        print(f"  {what}:", file=file)
        ours = rows["strata_torch_cpu_adam" + suffix]
        for name in ("strata_torch_cpu_adam", "deepspeed_cpu_adam", "torch_adamw_fused"):
            r = rows[name + suffix]
            if "error" in r:
                print(f"    {name:24s} skipped: {r['error']}", file=file)
                continue
            line = f"    {name:24s} {r['seconds'] * 1e3:9.1f} ms"
            if name != "strata_torch_cpu_adam" and "seconds" in ours:
                line += f"   strata.torch.CPUAdam is {r['seconds'] / ours['seconds']:.2f}x faster"
            print(line, file=file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strata", default="build/tools/strata", help="path of the strata binary")
    ap.add_argument("--python", action="store_true",
                    help="time strata.torch.CPUAdam (the Python package) instead of the binary")
    ap.add_argument("--params", type=int, default=1 << 27)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    n = args.params
    if args.python:
        import strata

        res = {"params": n, "threads": args.threads, "isa": strata.best_isa(),
               "rows": python_rows(torch, n, args.steps)}
        for r in res["rows"].values():
            if "seconds" in r:
                r["gb_per_s_at_28_b_per_param"] = 28 * n / r["seconds"] / 1e9
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print_python(res, sys.stderr)
        return
    same = time_strata(args.strata, n, args.threads,
                       ["--optimizer", "adamw", "--grad-dtype", "fp32", "--out-dtype", "none"])
    fused = time_strata(args.strata, n, args.threads, ["--optimizer", "adamw", "--grad-dtype", "fp16"])
    strata_s = same["best_seconds"]
    res = {"params": n, "threads": args.threads,
           "strata_fp32_grads_s": strata_s, "strata_fp32_grads_gb_per_s": same["gb_per_s"],
           "strata_fused_fp16_s": fused["best_seconds"], "strata_fused_gb_per_s": fused["gb_per_s"],
           "stream_gb_per_s": same["stream"]["gb_per_s"], "others": {}}
    # speedups: step-only rows against strata_fp32_grads_s, *_pipeline rows
    # against strata_fused_fp16_s.
    makers = [("torch_adamw_foreach", lambda: make_torch(torch, n, foreach=True)),
              ("torch_adamw_fused", lambda: make_torch(torch, n, fused=True)),
              ("deepspeed_cpu_adam", lambda: make_deepspeed(torch, n))]
    for name, make in makers:
        for pipeline in (False, True):
            key = name + ("_pipeline" if pipeline else "")
            ref = fused["best_seconds"] if pipeline else strata_s
            try:
                s = timed(torch, make, args.steps, pipeline)
                res["others"][key] = {"seconds": s, "strata_speedup": s / ref}
            except Exception as e:  # report and go on: one missing package must not hide the rest
                res["others"][key] = {"error": f"{type(e).__name__}: {e}"}
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{n} params, {args.threads} threads, AdamW; Adam-like stream "
          f"{same['stream']['gb_per_s']:.2f} GB/s", file=sys.stderr)
    print(f"  strata, fp32 grads, no copy:        {strata_s * 1e3:8.1f} ms", file=sys.stderr)
    print(f"  strata, fused fp16 grads + fp16 copy: {fused['best_seconds'] * 1e3:8.1f} ms",
          file=sys.stderr)
    for name, r in res["others"].items():
        what = "fp16 grads + copy, separate passes" if name.endswith("_pipeline") else \
            "fp32 grads, no copy"
        if "error" in r:
            print(f"  {name}: failed: {r['error']}", file=sys.stderr)
        else:
            print(f"  {name:28s} {r['seconds'] * 1e3:8.1f} ms  ({what}): strata "
                  f"{r['strata_speedup']:.2f}x faster", file=sys.stderr)

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes tests/golden/lr_schedule/*.json: the learning rate (and, for
OneCycle, the Adam betas) that DeepSpeed's own schedulers hand the optimizer
at each step, for tests/lr_schedule_test.cc.

Each case builds the scheduler the way DeepSpeed's engine does
(scheduler_class(optimizer, **ds_config["scheduler"]["params"])), then for
each step records the optimizer's lr before the step and calls
scheduler.step(), as the engine does after every applied optimizer step.

Run from the repository root with deepspeed and torch installed:
  python3 tests/golden/make_lr_schedule_golden.py
"""

import json
import os
import sys

import torch
from deepspeed.runtime import lr_schedules

STEPS = 60

# name: (scheduler type, optimizer lr, params as a user writes them)
CASES = {
    "warmup_lr_log": ("WarmupLR", 1e-3, {
        "warmup_min_lr": 0.0, "warmup_max_lr": 0.001, "warmup_num_steps": 20, "warmup_type": "log"}),
    "warmup_lr_linear": ("WarmupLR", 1e-3, {
        "warmup_min_lr": 1e-5, "warmup_max_lr": 3e-4, "warmup_num_steps": 25, "warmup_type": "linear"}),
    # warmup_max_lr absent: WarmupLR warms up to the optimizer's lr.
    "warmup_lr_defaults": ("WarmupLR", 5e-4, {"warmup_num_steps": 30}),
    # warmup_num_steps 1 runs as 2 (DeepSpeed's max(2, n)).
    "warmup_lr_one_step": ("WarmupLR", 1e-3, {
        "warmup_max_lr": 2e-3, "warmup_num_steps": 1, "warmup_type": "linear"}),
    "warmup_decay_lr_log": ("WarmupDecayLR", 1e-3, {
        "total_num_steps": 50, "warmup_min_lr": 0, "warmup_max_lr": 0.002, "warmup_num_steps": 10}),
    # warmup_max_lr absent: WarmupDecayLR's own default 0.001, not the optimizer's lr.
    "warmup_decay_lr_linear": ("WarmupDecayLR", 3e-4, {
        "total_num_steps": 45, "warmup_min_lr": 1e-6, "warmup_num_steps": 15,
        "warmup_type": "linear"}),
    "warmup_cosine_lr_linear": ("WarmupCosineLR", 6e-4, {
        "total_num_steps": 50, "warmup_min_ratio": 0.1, "warmup_num_steps": 10,
        "cos_min_ratio": 0.01, "warmup_type": "linear"}),
    "warmup_cosine_lr_log": ("WarmupCosineLR", 1e-3, {
        "total_num_steps": 40, "warmup_num_steps": 8}),
    "one_cycle_decay": ("OneCycle", 1e-3, {
        "cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10,
        "cycle_second_step_size": 15, "decay_lr_rate": 0.5, "decay_step_size": 4,
        "cycle_min_mom": 0.85, "cycle_max_mom": 0.95, "decay_mom_rate": 0.01}),
    "one_cycle_stairs": ("OneCycle", 1e-3, {
        "cycle_min_lr": 2e-4, "cycle_max_lr": 8e-4, "cycle_first_step_size": 12,
        "cycle_second_step_size": 8, "cycle_first_stair_count": 4}),
    "one_cycle_no_momentum": ("OneCycle", 1e-3, {
        "cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4, "cycle_first_step_size": 20,
        "cycle_momentum": False, "decay_lr_rate": 0.1, "decay_step_size": 5}),
    "lr_range_test_continuous": ("LRRangeTest", 1e-3, {
        "lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 5,
        "lr_range_test_step_rate": 0.5}),
    "lr_range_test_staircase": ("LRRangeTest", 1e-3, {
        "lr_range_test_min_lr": 2e-5, "lr_range_test_step_size": 7,
        "lr_range_test_step_rate": 2.0, "lr_range_test_staircase": True}),
}


def run_case(kind, optimizer_lr, params):
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.Adam([param], lr=optimizer_lr)
    scheduler = getattr(lr_schedules, kind)(optimizer, **params)
    lrs, betas = [], []
    for _ in range(STEPS):
        group = optimizer.param_groups[0]
        lrs.append(float(group["lr"]))
        betas.append([float(b) for b in group["betas"]])
        scheduler.step()
    record = {"scheduler": kind, "optimizer_lr": optimizer_lr, "params": params, "lr": lrs}
    if kind == "OneCycle":
        record["betas"] = betas
    return record


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lr_schedule")
    os.makedirs(out_dir, exist_ok=True)
    for name, (kind, optimizer_lr, params) in CASES.items():
        record = run_case(kind, optimizer_lr, params)
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    print(f"wrote {len(CASES)} cases to {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""CPUAdagrad: torch.optim.Adagrad's arguments on strata's kernel."""

from __future__ import annotations

from typing import Any

import torch

from strata.torch._fused import FusedCPUOptimizer, ParamsT, check_non_negative


class CPUAdagrad(FusedCPUOptimizer):
    """Adagrad as ``torch.optim.Adagrad``: L2 weight decay added to the
    gradient, ``clr = lr / (1 + (step - 1) * lr_decay)``, ``sum`` of squared
    gradients starting at ``initial_accumulator_value``. States: ``step``,
    ``sum`` (fp32), and ``param_fp32`` for float16/bfloat16 params.
    """

    second_moment = "sum"

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10) -> None:
        check_non_negative(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                           initial_accumulator_value=initial_accumulator_value, eps=eps)
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps)
        super().__init__(params, defaults)

    def _initial_state(self, group: dict[str, Any], name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.full(param.shape, float(group["initial_accumulator_value"]),
                          dtype=torch.float32)

    def _native_args(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        lr = float(group["lr"]) / (1 + (step - 1) * float(group["lr_decay"]))
        return dict(optimizer="adagrad", lr=lr, step=step, beta1=0.0, beta2=0.0,
                    eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                    bias_correction=False, grad_scale=1.0)

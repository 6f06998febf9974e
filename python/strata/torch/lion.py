"""CPULion: the Lion optimizer (Chen et al. 2023) on strata's kernel."""

from __future__ import annotations

from typing import Any

from strata.torch._fused import FusedCPUOptimizer, ParamsT, check_betas, check_non_negative


class CPULion(FusedCPUOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization
    Algorithms") with decoupled weight decay::

        p *= 1 - lr * weight_decay
        p -= lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g

    Defaults are the paper's (lr 1e-4, betas (0.9, 0.99)). States: ``step``,
    ``exp_avg`` (fp32), and ``param_fp32`` for float16/bfloat16 params.
    """

    first_moment = "exp_avg"

    def __init__(self, params: ParamsT, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0) -> None:
        check_betas(betas)
        check_non_negative(lr=lr, weight_decay=weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _native_args(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(optimizer="lion", lr=float(group["lr"]), step=step, beta1=float(beta1),
                    beta2=float(beta2), eps=0.0, weight_decay=float(group["weight_decay"]),
                    bias_correction=False, grad_scale=1.0)

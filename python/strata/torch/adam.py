"""CPUAdam: DeepSpeedCPUAdam's signature and semantics on strata's kernel."""

from __future__ import annotations

from typing import Any

from strata.torch._fused import FusedCPUOptimizer, ParamsT, check_betas, check_non_negative


class CPUAdam(FusedCPUOptimizer):
    """Adam (``adamw_mode=False``, L2 added to the gradient) or AdamW
    (``adamw_mode=True``, decoupled decay) over CPU params, as
    ``deepspeed.ops.adam.DeepSpeedCPUAdam``: eps is added after
    ``sqrt(v) / sqrt(1 - beta2^t)`` and ``bias_correction=False`` drops both
    corrections. lr, betas, eps, weight_decay and bias_correction are read
    from each param group at every step, so schedulers and edits apply.

    States (per param): ``step``, ``exp_avg``, ``exp_avg_sq`` (fp32), and for
    float16/bfloat16 params ``param_fp32``, the fp32 master the step updates
    before writing the 16-bit param in the same pass.

    amsgrad is not supported (as in DeepSpeed); ``fp32_optimizer_states``
    must stay True: strata's states are always fp32.
    """

    first_moment = "exp_avg"
    second_moment = "exp_avg_sq"

    def __init__(self, model_params: ParamsT, lr: float = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, adamw_mode: bool = True,
                 fp32_optimizer_states: bool = True) -> None:
        if amsgrad:
            raise ValueError("CPUAdam does not support amsgrad (nor does DeepSpeedCPUAdam); "
                             "pass amsgrad=False or use torch.optim.AdamW(amsgrad=True)")
        if not fp32_optimizer_states:
            raise ValueError("CPUAdam keeps optimizer states in fp32 only; pass "
                             "fp32_optimizer_states=True")
        check_betas(betas)
        check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
        self.adamw_mode = adamw_mode
        self.fp32_optimizer_states = fp32_optimizer_states
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, amsgrad=amsgrad)
        super().__init__(model_params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("bias_correction", True)

    def _native_args(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        if group.get("amsgrad", False):
            raise ValueError("CPUAdam does not support amsgrad; set the group's amsgrad to False")
        beta1, beta2 = group["betas"]
        return dict(optimizer="adamw" if self.adamw_mode else "adam", lr=float(group["lr"]),
                    step=step, beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]),
                    bias_correction=bool(group["bias_correction"]), grad_scale=1.0)

"""The base of strata's torch optimizers: checks, state, and the native call.

Each step hands every parameter to ``strata._strata.step`` once. fp32 params
are updated in place; a float16/bfloat16 param gets an fp32 master copy in
its state (``param_fp32``) and the fused kernel writes the 16-bit param in
the same pass. States are fp32 and named as torch names them, with ``step``
a float32 scalar tensor as in torch.optim.Adam, so an fp32 model's state
dict loads into torch.optim.AdamW and back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, Optional, Union

import torch

from strata import _strata

ParamsT = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]]]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OFFLOAD_HINT = "move the param to CPU or use strata.torch.OffloadOptimizer"


class FusedCPUOptimizer(torch.optim.Optimizer):
    """Subclasses name their fp32 states and map a group to native arguments."""

    # torch's names of the states the kernel calls exp_avg (m) and exp_avg_sq
    # (v, or Adagrad's sum); None where the optimizer has no such state.
    first_moment: Optional[str] = None
    second_moment: Optional[str] = None

    def _native_args(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        raise NotImplementedError

    def _initial_state(self, group: dict[str, Any], name: str, param: torch.Tensor) -> torch.Tensor:
        return torch.zeros(param.shape, dtype=torch.float32)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            self._check_param(p, f"param {i} of group {len(self.param_groups) - 1}")

    def _check_param(self, p: torch.Tensor, where: str) -> None:
        name = type(self).__name__
        if p.device.type != "cpu":
            raise ValueError(f"{name}: {where} is on {p.device}; {_OFFLOAD_HINT}")
        if p.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name}: {where} has dtype {p.dtype}; strata steps float32, float16 "
                            "and bfloat16 params: convert it (e.g. model.float())")
        if not p.is_contiguous():
            raise ValueError(f"{name}: {where} is not contiguous; make it so before the optimizer "
                             "sees it (param.data = param.data.contiguous())")

    def _grad_of(self, p: torch.Tensor, where: str) -> torch.Tensor:
        name = type(self).__name__
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError(f"{name}: {where} has a sparse gradient, which strata does not "
                               "step; use torch.optim.SparseAdam for it or a dense layer "
                               "(e.g. nn.Embedding(sparse=False))")
        if grad.device.type != "cpu":
            raise ValueError(f"{name}: the gradient of {where} is on {grad.device}; {_OFFLOAD_HINT}")
        if grad.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{name}: the gradient of {where} has dtype {grad.dtype}; strata reads "
                            "float32, float16 and bfloat16 gradients")
        # A strided grad is rare (it needs a custom autograd function); stepping
        # it costs one copy of the gradient, never of the param or states.
        return grad.detach().contiguous()

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        for name in (self.first_moment, self.second_moment):
            if name is not None:
                state[name] = self._initial_state(group, name, p)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Performs one optimization step over every param that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param {pi} of group {gi}"
                self._check_param(p, where)
                grad = self._grad_of(p, where)
                state = self.state[p]
                if len(state) == 0:
                    self._init_state(group, p, state)
                sixteen_bit = p.dtype != torch.float32
                if sixteen_bit and "param_fp32" not in state:
                    # The first step, or a state loaded from torch's or DeepSpeed's
                    # optimizer, which keep no fp32 master.
                    state["param_fp32"] = p.detach().to(torch.float32, copy=True)
                if not isinstance(state["step"], torch.Tensor):
                    state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
                state["step"] += 1
                step = int(state["step"].item())
                _strata.step(**self._native_args(group, step),
                             param=state["param_fp32"] if sixteen_bit else p.detach(),
                             exp_avg=state[self.first_moment] if self.first_moment else None,
                             exp_avg_sq=state[self.second_moment] if self.second_moment else None,
                             grad=grad,
                             param_out=p.detach() if sixteen_bit else None)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict; states stay fp32 whatever the param dtype.

        torch's own loader casts every state tensor to its param's dtype,
        which would round an fp32 master copy or moment to bf16; here torch
        checks and loads the groups and the states are loaded as fp32.
        """
        saved_groups = state_dict["param_groups"]
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        ids = chain.from_iterable(g["params"] for g in saved_groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        id_map = dict(zip(ids, params))
        for key, saved in state_dict["state"].items():
            if key not in id_map:
                continue
            self.state[id_map[key]] = {name: _loaded(name, value) for name, value in saved.items()}


def _loaded(name: str, value: Any) -> Any:
    if name == "step":
        return torch.tensor(float(value), dtype=torch.float32)
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
    return copy.deepcopy(value)


def check_betas(betas: tuple[float, float]) -> None:
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}] is {b}; it must be in [0, 1)")


def check_non_negative(**values: float) -> None:
    for name, v in values.items():
        if v < 0.0:
            raise ValueError(f"{name} is {v}; it must be >= 0")

"""OffloadOptimizer: strata's offload runtime behind ``torch.optim.Optimizer``.

strata (``engine::OffloadOptimizer`` through ``strata._strata``) owns the
fp32 master weights and the optimizer states, in host memory or on
NVMe, and runs the fused SIMD CPU optimizer. torch keeps the model, forward
and backward.

How a step flows:

* Each param gets a ``register_post_accumulate_grad_hook``. During backward
  the hook copies the param's gradient into its slot of a bucket buffer
  (consecutive params up to ``bucket_bytes``), sets ``param.grad = None`` so
  the gradient's memory is freed at once, and when every param of the
  bucket has reported, hands the bucket to strata (``grad_ready``, GIL
  released). strata accumulates it in fp32 and, on the last micro-batch it
  expects, may step it speculatively while backward goes on.
* ``step()`` reports what is left (partial buckets, buckets whose params
  got no gradient: a zero gradient), then ``finish_step`` decides: global
  norm, overflow, clipping; it rolls back or redoes speculative work as
  needed and writes the updated params into the torch tensors in place.
* Any number of backward calls may come before ``step()``: gradients sum, as
  they do in torch. ``zero_grad()`` between them discards what was reported.

The first ``step()`` runs without hooks (torch accumulates ``.grad`` as
usual and the step reads it): it is where the optimizer learns whether a
``torch.amp.GradScaler`` drives it and which loss scale the gradients carry,
which strata must know before the first gradient of a streamed step arrives.

Hyper-parameters (lr, betas, eps, weight_decay, bias_correction) are read
from ``param_groups`` when a step's first gradient arrives, so LR schedulers
stepped after ``optimizer.step()`` (the usual order) take effect.

After the first step, strata's fp32 master is the truth: writing into the
params from outside (``model.load_state_dict``) must go with
``optimizer.load_state_dict`` (which writes the master) or
``optimizer.reload_params()``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Optional, Union

import torch

from strata import _strata

ParamsT = Union[Iterable[torch.Tensor], Iterable[dict[str, Any]]]

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_DS_TYPES = {"adamw": "AdamW", "adam": "Adam", "adagrad": "Adagrad", "lion": "Lion"}
# torch's names of each optimizer's fp32 states -> strata's StateKind names.
_STATES = {
    "adamw": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    "adam": {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    "adagrad": {"sum": "exp_avg_sq"},
    "lion": {"exp_avg": "exp_avg"},
}

# OffloadOptimizer keeps the gradients (param.grad is None at step time), so it
# takes GradScaler's documented grad_scaler= hand-off to report overflows; the
# FutureWarning GradScaler prints for that route on every step says nothing the
# user can act on.
warnings.filterwarnings("ignore", message="GradScaler is going to stop passing itself",
                        category=FutureWarning)


class _Entry:
    __slots__ = ("param", "handle", "bucket", "slot", "name")

    def __init__(self, param: torch.Tensor, handle: int, bucket: int, slot: torch.Tensor,
                 name: str) -> None:
        self.param = param
        self.handle = handle
        self.bucket = bucket
        self.slot = slot  # the param's view of its bucket's gradient buffer
        self.name = name


class _Bucket:
    __slots__ = ("index", "members", "buffer", "filled", "reported")

    def __init__(self, index: int) -> None:
        self.index = index
        self.members: list[int] = []  # entry indices
        self.buffer: Optional[torch.Tensor] = None
        self.filled: set[int] = set()  # entries whose gradient is in the buffer this round
        self.reported = 0  # grad_ready calls this step


class OffloadOptimizer(torch.optim.Optimizer):
    """An optimizer for any torch model whose states live in strata.

    Args:
        params: the model's parameters or param groups (torch style). Every
            param is a leaf, float32, float16 or bfloat16 (one dtype for all),
            contiguous, on the CPU (or one CUDA device, with a CUDA build).
        optimizer: "adamw", "adam" (L2 added to the gradient), "adagrad" or
            "lion".
        lr, betas, eps, weight_decay, bias_correction: the defaults of every
            group; each group may override them, and they are re-read at
            every step.
        offload: "cpu" (states in host memory) or "nvme" (states in
            swap files under ``nvme_path``, streamed through host buffers).
        nvme_path: an existing writable directory (or a list of them) for
            offload="nvme".
        gradient_clipping: clip the global L2 norm of the gradient to this
            (0: off), as ``torch.nn.utils.clip_grad_norm_`` would.
        overlap: step buckets while backward runs (True) or only in step().
        gradient_accumulation_steps: how many backward calls usually come
            before step(); only a hint for the overlap (more or fewer still
            give the exact result).
        bucket_bytes: the size of a gradient bucket.
        grad_scaler: the ``torch.amp.GradScaler`` that will drive this
            optimizer; optional (the first step finds it).
        allow_buffered_io: accept an nvme_path whose filesystem has no
            O_DIRECT (tmpfs, some overlay filesystems), at some speed cost.
        daemon: run the optimizer in stratad (docs/daemon.md) instead of in
            this process: a socket path, or True for the default socket
            ($XDG_RUNTIME_DIR/strata/stratad.sock). CPU or CUDA params: CUDA
            gradients and params cross through the session's shared memory,
            which strata pins for DMA, and give the same values as in-process.
        session: the stratad session's name (required with ``daemon``). A
            new name starts a session from the params' values; an existing
            one (this program run again after a crash) is resumed where its
            last completed step left it, and its values are copied into the
            params.
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: ParamsT, optimizer: str = "adamw", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True, offload: str = "cpu",
                 nvme_path: Union[None, str, os.PathLike, list] = None,
                 gradient_clipping: float = 0.0, overlap: bool = True,
                 gradient_accumulation_steps: int = 1, bucket_bytes: int = 32 << 20,
                 grad_scaler: Optional[torch.amp.GradScaler] = None,
                 allow_buffered_io: bool = False,
                 daemon: Union[None, bool, str, os.PathLike] = None,
                 session: Optional[str] = None) -> None:
        optimizer = str(optimizer).lower()
        if optimizer not in _DS_TYPES:
            raise ValueError(f"OffloadOptimizer: optimizer={optimizer!r}; strata runs "
                             f"{', '.join(_DS_TYPES)}")
        if offload not in ("cpu", "nvme"):
            raise ValueError(f"OffloadOptimizer: offload={offload!r}; pass 'cpu' (host "
                             "memory) or 'nvme' (with nvme_path)")
        if gradient_accumulation_steps < 1:
            raise ValueError("OffloadOptimizer: gradient_accumulation_steps must be >= 1")
        offload_cfg: dict[str, Any] = {"device": offload}
        if offload == "nvme":
            offload_cfg["nvme_path"] = _check_nvme_paths(nvme_path)
        elif nvme_path is not None:
            raise ValueError("OffloadOptimizer: nvme_path is set but offload='cpu'; pass "
                             "offload='nvme' to keep the states on NVMe, or drop nvme_path")
        params_cfg: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
        if optimizer in ("adamw", "adam"):
            params_cfg.update(betas=list(betas), eps=eps, bias_correction=bias_correction,
                              adam_w_mode=optimizer == "adamw")
        elif optimizer == "adagrad":
            params_cfg.update(eps=eps)
        else:
            params_cfg.update(betas=list(betas))
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": int(gradient_accumulation_steps),
            "optimizer": {"type": _DS_TYPES[optimizer], "params": params_cfg},
            "zero_optimization": {"stage": 2, "offload_optimizer": offload_cfg},
            "gradient_clipping": float(gradient_clipping),
            "strata": {"overlap": "overlap" if overlap else "sync"},
        }
        self._setup(params, config, "OffloadOptimizer(...)", use_schedule=False,
                    bucket_bytes=bucket_bytes, grad_scaler=grad_scaler,
                    allow_buffered_io=allow_buffered_io, daemon=daemon, session=session)

    @classmethod
    def from_ds_config(cls, params: ParamsT, path_or_dict: Union[str, os.PathLike, dict],
                       bucket_bytes: int = 32 << 20,
                       grad_scaler: Optional[torch.amp.GradScaler] = None,
                       allow_buffered_io: bool = False,
                       daemon: Union[None, bool, str, os.PathLike] = None,
                       session: Optional[str] = None) -> "OffloadOptimizer":
        """An OffloadOptimizer configured by a DeepSpeed ds_config (a file or a dict).

        The optimizer section gives the defaults of the param groups;
        zero_optimization.offload_optimizer where the states live; fp16 /
        bf16 the params' dtype; gradient_clipping, gradient_accumulation_steps
        and strata.overlap as in the constructor. A "scheduler" section drives
        the learning rate (then torch LR schedulers must not be used).
        """
        if isinstance(path_or_dict, dict):
            config, source = path_or_dict, "ds_config"
        else:
            source = os.fspath(path_or_dict)
            try:
                with open(source, encoding="utf-8") as f:
                    config = json.load(f)
            except FileNotFoundError:
                raise FileNotFoundError(f"OffloadOptimizer.from_ds_config: {source} does not "
                                        "exist; pass the path of your ds_config JSON or a dict")
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}: not valid JSON ({e})") from None
        self = cls.__new__(cls)
        self._setup(params, config, source, use_schedule=None, bucket_bytes=bucket_bytes,
                    grad_scaler=grad_scaler, allow_buffered_io=allow_buffered_io,
                    daemon=daemon, session=session)
        return self

    # ---- construction -------------------------------------------------

    def _setup(self, params: ParamsT, config: dict, source: str, use_schedule: Optional[bool],
               bucket_bytes: int, grad_scaler: Optional[torch.amp.GradScaler],
               allow_buffered_io: bool, daemon: Union[None, bool, str, os.PathLike] = None,
               session: Optional[str] = None) -> None:
        name = type(self).__name__
        daemon_socket = _daemon_socket(name, daemon, session)
        if isinstance(params, torch.Tensor):
            params = [params]
        # Groups' params as lists (a generator would be consumed by the look below).
        params = [dict(g, params=[g["params"]] if isinstance(g["params"], torch.Tensor)
                       else list(g["params"])) if isinstance(g, dict) else g for g in params]
        tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
        if not tensors:
            raise ValueError(f"{name}: got an empty parameter list")
        dtype = tensors[0].dtype
        if dtype not in _DTYPES:
            raise TypeError(f"{name}: params have dtype {dtype}; strata steps float32, float16 "
                            "and bfloat16 params: convert the model (e.g. model.float())")
        config = dict(config)
        # The params' dtype is the compute dtype: say it in the config unless
        # the user's ds_config already does (then the two are checked below).
        if dtype != torch.float32 and not _enabled(config, "fp16") and not _enabled(config, "bf16"):
            config["bf16" if dtype == torch.bfloat16 else "fp16"] = {"enabled": True}
        resolved_text, config_warnings = _strata.resolve_ds_config(json.dumps(config), source)
        resolved = json.loads(resolved_text)
        for w in config_warnings:
            warnings.warn(f"strata: {w}", stacklevel=3)
        opt_cfg = resolved.get("optimizer")
        if not opt_cfg:
            raise ValueError(f"{source}: no \"optimizer\" section; add one (e.g. "
                             '{"type": "AdamW", "params": {"lr": 1e-4}})')
        kind = opt_cfg["type"].lower()
        hp = opt_cfg["params"]
        self._kind = "adamw" if kind == "adam" and hp.get("adam_w_mode", True) else kind
        want_dtype = (torch.bfloat16 if resolved["bf16"]["enabled"] else
                      torch.float16 if resolved["fp16"]["enabled"] else torch.float32)
        if dtype != want_dtype:
            raise TypeError(f"{source}: the config's compute dtype is {_DTYPES[want_dtype]} "
                            f"(fp16/bf16 sections) but the params are {dtype}; convert the "
                            "model or change the config")
        defaults = dict(lr=hp["lr"], betas=tuple(hp.get("betas", (0.9, 0.999))),
                        eps=hp.get("eps", 1e-8), weight_decay=hp["weight_decay"],
                        bias_correction=hp.get("bias_correction", True))
        self._dtype = dtype
        self._finalized = False
        super().__init__(params, defaults)

        if use_schedule is None:
            use_schedule = resolved.get("scheduler") not in (None, {}) and \
                resolved["scheduler"].get("type", "none") != "none"
        self._use_schedule = use_schedule
        self._config_scaler = bool(resolved["fp16"]["enabled"])
        all_params = [p for g in self.param_groups for p in g["params"]]
        dev = all_params[0].device
        for p in all_params:
            if p.device != dev:
                raise ValueError(f"{name}: params are on {dev} and {p.device}; one optimizer "
                                 "takes params of one device (make one optimizer per device)")
        device = "cpu" if dev.type == "cpu" else f"{dev.type}:{dev.index or 0}"
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: params are on {dev}; strata takes CPU or CUDA params")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{name}: CUDA params but torch sees no GPU")
        self._device = dev
        try:
            self._native = _strata.OffloadOptimizer(json.dumps(config), source, device,
                                                    use_schedule, allow_buffered_io, "auto",
                                                    daemon_socket or "",
                                                    session if daemon_socket is not None else "")
        except RuntimeError as e:
            if dev.type != "cuda":
                raise
            raise RuntimeError(
                f"{name}: strata cannot use {dev} ({e}); keep the params on the CPU, or install "
                "strata built with CUDA: pip install . -Ccmake.define.STRATA_CUDA=ON") from None
        for w in self._native.warnings:
            if w not in config_warnings:
                warnings.warn(f"strata: {w}", stacklevel=3)

        # Registration: groups, then params in order, bucketed by bytes.
        self._entries: list[_Entry] = []
        self._index: dict[int, int] = {}
        self._buckets: list[_Bucket] = []
        elem = torch.tensor([], dtype=dtype).element_size()
        pending: list[tuple[torch.Tensor, int, str]] = []
        for gi, group in enumerate(self.param_groups):
            self._native.add_group(**self._group_args(group))
            for pi, p in enumerate(group["params"]):
                if id(p) in self._index:
                    raise ValueError(f"{name}: a param appears twice (param {pi} of group {gi})")
                pending.append((p, gi, f"group{gi}.param{pi}"))
                self._index[id(p)] = len(pending) - 1
        bucket, used = _Bucket(0), 0
        layout: list[tuple[int, int]] = []  # (bucket, offset) per entry
        for i, (p, _, _) in enumerate(pending):
            nbytes = p.numel() * elem
            if bucket.members and used + nbytes > bucket_bytes:
                self._buckets.append(bucket)
                bucket, used = _Bucket(len(self._buckets)), 0
            layout.append((bucket.index, used // elem))
            bucket.members.append(i)
            used += nbytes
        self._buckets.append(bucket)
        for b in self._buckets:
            numel = sum(pending[i][0].numel() for i in b.members)
            b.buffer = torch.zeros(numel, dtype=dtype, device=dev)
        for i, (p, gi, pname) in enumerate(pending):
            bi, off = layout[i]
            slot = self._buckets[bi].buffer[off:off + p.numel()]
            handle = self._native.add_param(pname, bi, gi, p.detach().view(-1), slot)
            self._entries.append(_Entry(p, handle, bi, slot.view(p.shape), pname))
        self._native.finalize()
        self._finalized = True

        self._lock = threading.Lock()
        self._grad_scaler = grad_scaler
        # strata's master holds the params' values (a resumed stratad session
        # already does, and finalize copied them into the params).
        self._values_set = not self._native.needs_values
        self._streaming = False  # hooks hand gradients over (after the first step)
        self._in_step = False  # begin_step called, finish_step not yet
        self._step_scale = 1.0
        self.last_step: Optional[dict[str, Any]] = None
        ref = weakref.ref(self)

        def hook(p: torch.Tensor) -> None:
            opt = ref()
            if opt is not None:
                opt._on_grad(p)

        self._hooks = [e.param.register_post_accumulate_grad_hook(hook) for e in self._entries]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_finalized", False):
            raise NotImplementedError(
                f"{type(self).__name__}: params are placed in strata when the optimizer is "
                "built; put every group in the constructor's params")
        name = type(self).__name__
        gi = len(self.param_groups)
        ps = param_group["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        for pi, p in enumerate(ps):
            where = f"param {pi} of group {gi}"
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{name}: {where} is a {type(p).__name__}, not a tensor")
            if not p.is_leaf:
                raise ValueError(f"{name}: {where} is not a leaf tensor (it was computed from "
                                 "other tensors, so backward gives it no .grad); pass "
                                 "model.parameters() or tensors made with requires_grad=True")
            if p.dtype not in _DTYPES:
                raise TypeError(f"{name}: {where} has dtype {p.dtype}; strata steps float32, "
                                "float16 and bfloat16 params: convert it (e.g. model.float())")
            if p.dtype != self._dtype:
                raise TypeError(f"{name}: {where} is {p.dtype} but other params are "
                                f"{self._dtype}; one OffloadOptimizer takes one dtype (make one "
                                "per dtype, or convert the model)")
            if not p.is_contiguous():
                raise ValueError(f"{name}: {where} is not contiguous; make it so first "
                                 "(param.data = param.data.contiguous())")
        param_group = dict(param_group, params=ps)
        super().add_param_group(param_group)

    def __del__(self) -> None:
        for h in getattr(self, "_hooks", []):
            h.remove()

    # ---- the step -----------------------------------------------------

    @staticmethod
    def _group_args(group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                    eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                    bias_correction=bool(group.get("bias_correction", True)))

    def _scale_now(self) -> Optional[float]:
        """The scale this step's gradients carry; None: strata's fp16 scaler's."""
        if self._config_scaler:
            return None
        s = self._grad_scaler
        if s is None or not s.is_enabled():
            return 1.0
        return float(s.get_scale())

    @property
    def loss_scale(self) -> float:
        """The scale the next backward's loss must carry. With fp16 params it
        is strata's dynamic loss scaler's (ds_config "fp16"): backward
        ``loss * optimizer.loss_scale``. Otherwise the GradScaler's, or 1."""
        if self._config_scaler:
            return float(self._native.config_loss_scale)
        s = self._grad_scaler
        return float(s.get_scale()) if s is not None and s.is_enabled() else 1.0

    def _ensure_values(self) -> None:
        """strata's master = the params' current values (the first time only)."""
        if self._values_set:
            return
        with torch.no_grad():
            for e in self._entries:
                value = e.param.detach().reshape(-1).to(device="cpu", dtype=torch.float32,
                                                         copy=True)
                self._native.set_value(e.handle, value)
        self._values_set = True

    def _begin(self) -> None:
        self._ensure_values()
        for gi, group in enumerate(self.param_groups):
            self._native.set_group(gi, **self._group_args(group))
        self._step_scale = self._native.begin_step(self._scale_now())
        self._in_step = True
        for b in self._buckets:
            b.filled.clear()
            b.reported = 0

    def _ready(self, b: _Bucket) -> None:
        if self._device.type == "cuda":
            # The copies into the bucket ran on torch's stream; strata's side
            # stream reads the buffer after this.
            torch.cuda.current_stream(self._device).synchronize()
        self._native.grad_ready(b.index)
        b.filled.clear()
        b.reported += 1

    def _flush(self, b: _Bucket) -> None:
        """Reports a bucket some of whose params got no gradient: theirs is zero."""
        for i in b.members:
            if i not in b.filled:
                self._entries[i].slot.zero_()
        self._ready(b)

    @torch.no_grad()
    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._streaming or p.grad is None:
            return  # the first step reads .grad in step()
        with self._lock:
            if not self._in_step:
                self._begin()
            i = self._index[id(p)]
            e = self._entries[i]
            b = self._buckets[e.bucket]
            if i in b.filled:
                # A second backward reached this param before the rest of its
                # bucket reported: the first round had params without gradients.
                self._flush(b)
            if not b.filled and b.reported > 0:
                # strata may still be reading the buffer's previous round.
                self._native.wait_grads()
            e.slot.copy_(p.grad)
            p.grad = None
            b.filled.add(i)
            if len(b.filled) == len(b.members):
                self._ready(b)

    def step(self, closure: Optional[Callable[[], float]] = None,
             grad_scaler: Optional[torch.amp.GradScaler] = None) -> Optional[float]:
        """Finishes the step: the params hold the update when it returns.

        With a ``torch.amp.GradScaler`` (``scaler.step(optimizer)``): a
        gradient with inf or NaN skips the step (params, states and the step
        count untouched) and the scaler backs off at ``scaler.update()``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scaler is not None and grad_scaler.is_enabled():
            if self._config_scaler:
                self._abort("a GradScaler drives an fp16 optimizer")
                raise RuntimeError(
                    f"{type(self).__name__}: the params are float16, so strata's own loss scaler "
                    "(ds_config fp16) scales this optimizer: drop the GradScaler and backward "
                    "loss * optimizer.loss_scale, or keep fp32 params under torch.autocast with "
                    "the GradScaler, or use bfloat16 params")
            if self._grad_scaler is None:
                if self._in_step and self._step_scale != grad_scaler.get_scale():
                    self._abort("a GradScaler appeared mid-step")
                    raise RuntimeError(
                        f"{type(self).__name__}: this step's gradients were handed to strata "
                        "before a GradScaler was known, with another loss scale; pass "
                        "grad_scaler=scaler to the constructor")
                self._grad_scaler = grad_scaler
        with torch.no_grad(), self._lock:
            if not self._streaming:
                self._take_grads_now()
            elif not self._in_step:
                raise RuntimeError(
                    f"{type(self).__name__}: step() was called but no backward ran since the "
                    "last step(); call loss.backward() first")
            for b in self._buckets:
                if b.filled:
                    self._flush(b)
            try:
                result = self._native.finish_step()
            except Exception:
                self._reset_step()
                raise
            self._reset_step()
            if self._device.type == "cuda":
                for b in self._buckets:
                    self._native.wait_params_ready(b.index)
        self.last_step = result
        if self._use_schedule:
            for g in self.param_groups:
                g["lr"] = result["lr"]
        if grad_scaler is not None and grad_scaler.is_enabled():
            _report_found_inf(grad_scaler, self, result["overflow"])
        self._streaming = True
        return loss

    def _take_grads_now(self) -> None:
        """The first step: copies the accumulated .grad of every param."""
        if all(e.param.grad is None for e in self._entries):
            raise RuntimeError(f"{type(self).__name__}: step() was called before any backward; "
                               "call loss.backward() first")
        self._begin()
        for b in self._buckets:
            for i in b.members:
                e = self._entries[i]
                if e.param.grad is not None:
                    if e.param.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__}: {e.name} has a sparse "
                                           "gradient, which strata does not step; use a dense "
                                           "layer (e.g. nn.Embedding(sparse=False))")
                    e.slot.copy_(e.param.grad)
                    e.param.grad = None
                    b.filled.add(i)

    def _reset_step(self) -> None:
        self._in_step = False
        for b in self._buckets:
            b.filled.clear()
            b.reported = 0

    def _abort(self, why: str) -> None:
        if self._in_step:
            self._native.abort_step(why)
        self._reset_step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drops the gradients of this step, also those already handed to strata."""
        super().zero_grad(set_to_none=set_to_none)
        with self._lock:
            self._abort("zero_grad() discarded the step's gradients")

    def reload_params(self) -> None:
        """Takes the params' current values as strata's fp32 masters, keeping
        the optimizer states (after writing weights into the model)."""
        self._check_between_steps("reload_params")
        if not self._values_set:
            self._ensure_values()
            return
        for e in self._entries:
            self._write(e, "master", e.param.detach(), "value")

    # ---- state --------------------------------------------------------

    def _check_between_steps(self, what: str) -> None:
        if self._in_step:
            raise RuntimeError(f"{type(self).__name__}.{what}: a step is in progress (backward "
                               "ran since the last step()); call step() or zero_grad() first")

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: per param index, ``step``, the fp32 states under
        torch's names and ``master`` (fp32), read from strata one tensor at a
        time (NVMe-homed states stream through one host buffer)."""
        self._check_between_steps("state_dict")
        sd = super().state_dict()
        if not self._values_set:
            return sd
        steps = torch.tensor(float(self._native.optimizer_steps), dtype=torch.float32)
        for i, e in enumerate(self._entries):
            st: dict[str, Any] = {"step": steps.clone()}
            for torch_name, kind in _STATES[self._kind].items():
                st[torch_name] = self._native.read_state(e.handle, kind).view(e.param.shape)
            st["master"] = self._native.read_state(e.handle, "master").view(e.param.shape)
            sd["state"][i] = st
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads ``param_groups`` (hyper-parameters) and writes every state
        (and the fp32 master, which also sets the param) into strata."""
        self._check_between_steps("load_state_dict")
        saved_groups = state_dict["param_groups"]
        super().load_state_dict({"state": {}, "param_groups": saved_groups})
        self.state.clear()
        self._ensure_values()
        states = state_dict["state"]
        step_counts = set()
        for i, e in enumerate(self._entries):
            st = states.get(i, states.get(str(i)))
            if st is None:
                continue
            for torch_name, kind in _STATES[self._kind].items():
                if torch_name in st:
                    self._write(e, kind, st[torch_name], torch_name)
            if "master" in st:
                self._write(e, "master", st["master"], "master")
                with torch.no_grad():
                    e.param.copy_(st["master"].view(e.param.shape))
            if "step" in st:
                step_counts.add(int(float(st["step"])))
        if len(step_counts) > 1:
            raise ValueError(f"{type(self).__name__}.load_state_dict: params have different step "
                             f"counts {sorted(step_counts)}; strata keeps one step count")
        if step_counts:
            self._native.set_optimizer_steps(step_counts.pop())

    def _write(self, e: _Entry, kind: str, value: torch.Tensor, what: str) -> None:
        if value.numel() != e.param.numel():
            raise ValueError(f"{type(self).__name__}.load_state_dict: {e.name} {what} has "
                             f"{value.numel()} elements, the param {e.param.numel()}; the state "
                             "dict is from another model")
        v = value.detach().reshape(-1).to(device="cpu", dtype=torch.float32, copy=True)
        self._native.write_state(e.handle, kind, v)

    def save_checkpoint(self, directory: Union[str, os.PathLike], meta: Optional[dict] = None) -> None:
        """Saves strata's whole state in its own checkpoint format (streamed,
        every placement, NVMe included) under ``directory``."""
        self._check_between_steps("save_checkpoint")
        self._ensure_values()
        self._native.save_state(os.fspath(directory), json.dumps(meta or {}))

    def load_checkpoint(self, directory: Union[str, os.PathLike], weights_only: bool = False) -> None:
        """Loads a save_checkpoint() directory; the params get its values."""
        self._check_between_steps("load_checkpoint")
        self._ensure_values()
        self._native.load_state(os.fspath(directory), weights_only)
        self._copy_params_from_strata()

    def _copy_params_from_strata(self) -> None:
        with torch.no_grad():
            for e in self._entries:
                e.param.copy_(self._native.read_param(e.handle).view(e.param.shape))

    @property
    def optimizer_tier(self) -> str:
        """Where the optimizer states live: "device", "host" or "nvme"."""
        return self._native.optimizer_tier

    @property
    def num_buckets(self) -> int:
        return len(self._buckets)


def _daemon_socket(name: str, daemon: Any, session: Optional[str]) -> Optional[str]:
    """The stratad socket ("" for the default one), or None: in-process."""
    if daemon is None or daemon is False:
        if session is not None:
            raise ValueError(f"{name}: session={session!r} without daemon; pass daemon=True "
                             "(the default socket) or daemon=SOCKET_PATH to use stratad")
        return None
    if not session:
        raise ValueError(f"{name}: daemon is set but session is not; name the stratad session "
                         "(session='my-run'): running the program again with the same name "
                         "resumes it")
    return "" if daemon is True else os.fspath(daemon)


def _enabled(config: dict, key: str) -> bool:
    section = config.get(key)
    if key == "bf16" and section is None:
        section = config.get("bfloat16")
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _check_nvme_paths(nvme_path: Any) -> Union[str, list[str]]:
    if nvme_path is None:
        raise ValueError("OffloadOptimizer: offload='nvme' needs nvme_path, a directory on the "
                         "NVMe drive for the swap files (e.g. nvme_path='/mnt/nvme/strata')")
    paths = [nvme_path] if isinstance(nvme_path, (str, os.PathLike)) else list(nvme_path)
    out = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isdir(p):
            raise FileNotFoundError(f"OffloadOptimizer: nvme_path {p} is not a directory; create "
                                    f"it (mkdir -p {p}) or pass another")
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(f"OffloadOptimizer: nvme_path {p} is not writable by this "
                                  "process; fix its permissions or pass another directory")
        out.append(p)
    return out[0] if len(out) == 1 else out


def _report_found_inf(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer,
                      overflow: bool) -> None:
    """Tells the scaler what this step found, for its update(): GradScaler
    reads the per-optimizer found_inf tensors it would have recorded while
    unscaling the gradients that strata holds instead."""
    scale = scaler._get_scale_async()
    device = scale.device if scale is not None else torch.device("cpu")
    found = torch.full((), 1.0 if overflow else 0.0, dtype=torch.float32, device=device)
    scaler._per_optimizer_states[id(opt)]["found_inf_per_device"] = {device: found}

"""PyTorch optimizers that run strata's fused SIMD CPU step.

``CPUAdam`` is a drop-in for DeepSpeed's ``DeepSpeedCPUAdam`` (same
signature and semantics, no JIT build); ``CPUAdagrad`` and ``CPULion`` take
torch-style arguments. All three are ``torch.optim.Optimizer`` subclasses over
CPU params in float32, float16 or bfloat16.

``OffloadOptimizer`` is the offload runtime behind the same interface: for any
torch model, gradients are handed to strata by per-parameter hooks during
backward, and strata keeps the fp32 master weights and optimizer states in
host memory or on NVMe.
"""

from strata.torch.adagrad import CPUAdagrad
from strata.torch.adam import CPUAdam
from strata.torch.lion import CPULion
from strata.torch.offload import OffloadOptimizer

__all__ = ["CPUAdam", "CPUAdagrad", "CPULion", "OffloadOptimizer"]

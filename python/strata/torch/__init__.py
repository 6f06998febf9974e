"""PyTorch optimizers that run strata's fused SIMD CPU step.

``CPUAdam`` is a drop-in for DeepSpeed's ``DeepSpeedCPUAdam`` (same
signature and semantics, no JIT build); ``CPUAdagrad`` and ``CPULion`` take
torch-style arguments. All three are ``torch.optim.Optimizer`` subclasses over
CPU params in float32, float16 or bfloat16.
"""

from strata.torch.adagrad import CPUAdagrad
from strata.torch.adam import CPUAdam
from strata.torch.lion import CPULion

__all__ = ["CPUAdam", "CPUAdagrad", "CPULion"]

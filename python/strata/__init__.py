"""strata: a memory-hierarchy offload runtime, from Python.

``strata.torch`` holds the PyTorch optimizers (``CPUAdam``, ``CPUAdagrad``,
``CPULion``). The native step lives in ``strata._strata`` (nanobind over the
C++ library ``cpu_adam``); it takes arrays through DLPack without copies.
"""

from strata._strata import best_isa

__version__ = "0.1.0"

__all__ = ["__version__", "best_isa"]

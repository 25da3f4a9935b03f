"""Which CuPy the backend talks to: the real one, or the CUDA simulator's stand-in for it.

With GPUQUANT_CUDA_SIM=1 (a debugging mode, as Numba's NUMBA_ENABLE_CUDASIM) every `cupy` the
backend uses is gpuquant.cudasim.cupy: the same launchers and the same kernels/*.cu, built for the
CPU and run block by block, thread by thread, with no GPU and no CuPy installed.
"""

from __future__ import annotations

import os
from types import ModuleType

SIMULATOR_ENV = "GPUQUANT_CUDA_SIM"


def env_flag(name: str) -> bool:
    """Whether the environment variable `name` is set to something other than empty, 0, false, no, off."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def simulator_enabled() -> bool:
    return env_flag(SIMULATOR_ENV)


def cupy_module() -> ModuleType:
    """`cupy`, or the simulator's module of the same surface when GPUQUANT_CUDA_SIM is set."""
    if simulator_enabled():
        from ...cudasim import cupy as simulated

        return simulated
    import cupy

    return cupy


_sim_functions: dict[tuple[str, str], object] = {}


def get_kernel(source_name: str, kernel_name: str):
    """The kernel `kernel_name` of kernels/<source_name> as a cupy.cuda.function.Function, called as
    fn(grid, block, args, stream=stream): compiled by NVRTC for the GPU (compile.py), or the
    simulator's build of the same source."""
    if simulator_enabled():
        key = (source_name, kernel_name)
        fn = _sim_functions.get(key)
        if fn is None:
            from ...cudasim import cupy as simulated

            fn = _sim_functions[key] = simulated.load_module(source_name).get_function(kernel_name)
        return fn
    from .compile import get_kernel as compiled

    return compiled(source_name, kernel_name)

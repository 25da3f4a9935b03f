"""Compile and load the CUDA kernels of kernels/*.cu with NVRTC, once per process and device.

Why not `cupy.RawModule(code=...)`: CuPy appends `-ftz=true` to every RawModule/RawKernel
compilation, after the caller's options, and for NVRTC the last `-ftz` wins. Flushing subnormals
to zero changes bytes wherever a block's values, squares or products are subnormal, so the
kernels are compiled here with CuPy's NVRTC front end (which adds no -ftz), and the binary is
loaded as a module. The options below are the whole contract: IEEE division and square root,
no fused multiply-add, subnormals kept, never fast math.

cupy is imported inside functions only, so this module (and its option list) imports without it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from ...hostkernels import cache_dir, kernel_sources_digest, kernels_dir

NVRTC_OPTIONS: tuple[str, ...] = (
    "--fmad=false",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-std=c++17",
)

_lock = threading.Lock()
_modules: dict[tuple[int, str], object] = {}
_functions: dict[tuple[int, str, str], object] = {}


def module_options(directory: Path | None = None) -> tuple[str, ...]:
    """The NVRTC options for a kernels/*.cu file: NVRTC_OPTIONS plus the include path."""
    return NVRTC_OPTIONS + (f"-I{directory or kernels_dir()}",)


def module_source(source_name: str, directory: Path | None = None) -> str:
    """The .cu file's text, headed by a hash of all kernel sources: its #included headers are part
    of what the binary depends on, and a cache keyed on this text must see their edits."""
    directory = directory or kernels_dir()
    text = (directory / source_name).read_text()
    return f"// gpuquant kernel sources {kernel_sources_digest(directory)}\n{text}"


def _cache_path(code: str, options: tuple[str, ...]) -> Path:
    import cupy

    device = cupy.cuda.Device()
    key = "\0".join(
        [
            code,
            *options,
            str(device.compute_capability),
            repr(cupy.cuda.nvrtc.getVersion()),
            cupy.__version__,
        ]
    )
    return cache_dir() / "cuda" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.bin"


def _compile(code: str, options: tuple[str, ...]) -> bytes:
    from cupy.cuda import compiler

    result = compiler.compile_using_nvrtc(code, options)
    # CuPy returns (cubin or ptx, name mapping); very old versions returned the binary alone.
    return result[0] if isinstance(result, tuple) else result


def load_module(source_name: str):
    """The loaded cupy.cuda.function.Module for kernels/<source_name> on the current device."""
    import cupy
    from cupy.cuda import function

    device_id = cupy.cuda.Device().id
    with _lock:
        module = _modules.get((device_id, source_name))
        if module is not None:
            return module
        options = module_options()
        code = module_source(source_name)
        path = _cache_path(code, options)
        binary = path.read_bytes() if path.is_file() else None
        if binary is None:
            binary = _compile(code, options)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, partial = tempfile.mkstemp(dir=path.parent)
                with os.fdopen(fd, "wb") as f:
                    f.write(binary)
                os.replace(partial, path)
            except OSError:
                pass  # an unwritable cache only costs a recompilation next time
        module = function.Module()
        module.load(binary)
        _modules[(device_id, source_name)] = module
        return module


def get_kernel(source_name: str, kernel_name: str):
    """A cupy.cuda.function.Function, called as fn(grid, block, args, stream=stream)."""
    import cupy

    key = (cupy.cuda.Device().id, source_name, kernel_name)
    fn = _functions.get(key)
    if fn is None:
        fn = load_module(source_name).get_function(kernel_name)
        _functions[key] = fn
    return fn

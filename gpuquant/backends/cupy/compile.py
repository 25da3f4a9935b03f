"""How a kernels/*.cu file is compiled, for the GPU at run time and for the tests alike.

Why not `cupy.RawModule(code=...)`: CuPy appends `-ftz=true` to every RawModule/RawKernel
compilation, after the caller's options, and for NVRTC the last `-ftz` wins. Flushing subnormals
to zero changes bytes wherever a block's values, squares or products are subnormal. So the kernels
are compiled here by our own NVRTC front end (nvrtc.py, ctypes over libnvrtc: no CuPy, no GPU, no
driver needed), and the binary is loaded as a module. That also lets CI, which has no GPU, compile
exactly what the runtime compiles and check the machine code (tests/test_kernels_nvrtc.py). The
options below are the whole contract: IEEE division and square root, no fused multiply-add,
subnormals kept, never fast math.

Compiled binaries are cached under hostkernels.cache_dir()/nvrtc, keyed by the source text (headed
by a digest of every kernel source), the options and the NVRTC build.

cupy is imported inside functions only, so this module (and its option list) imports without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path

from ...hostkernels import cache_dir, kernel_sources_digest, kernels_dir
from . import nvrtc

NVRTC_OPTIONS: tuple[str, ...] = (
    "--fmad=false",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-std=c++17",
)

_CACHE_MAGIC = b"gpuquant-nvrtc-1\n"
_ARCH = re.compile(r"^(sm|compute)_(\d+)$")

_lock = threading.Lock()
_modules: dict[tuple[int, str], object] = {}
_functions: dict[tuple[int, str, str], object] = {}


def module_options(arch: str, directory: Path | None = None) -> tuple[str, ...]:
    """The NVRTC options for a kernels/*.cu file: NVRTC_OPTIONS, the include path and the target
    (sm_XY for a CUBIN, compute_XY for PTX)."""
    if not _ARCH.match(arch):
        raise ValueError(f"not a CUDA architecture: {arch!r} (sm_90, compute_90, ...)")
    return NVRTC_OPTIONS + (f"-I{directory or kernels_dir()}", f"-arch={arch}")


def module_source(source_name: str, directory: Path | None = None) -> str:
    """The .cu file's text, headed by a hash of all kernel sources: its #included headers are part
    of what the binary depends on, and a cache keyed on this text must see their edits."""
    directory = directory or kernels_dir()
    text = (directory / source_name).read_text()
    return f"// gpuquant kernel sources {kernel_sources_digest(directory)}\n{text}"


def target_arch(compute_capability: int, supported: tuple[int, ...]) -> str:
    """What to compile for a device: its own CUBIN (sm_XY) when NVRTC knows the architecture, else
    PTX of the newest one NVRTC knows that the device can run (compute_XY), which the driver compiles
    for a GPU newer than this NVRTC."""
    if compute_capability in supported:
        return f"sm_{compute_capability}"
    older = [cc for cc in supported if cc <= compute_capability]
    if not older:
        raise nvrtc.NVRTCError(
            f"this NVRTC compiles for compute capabilities {min(supported)} to {max(supported)}; "
            f"the GPU has {compute_capability}"
        )
    return f"compute_{max(older)}"


def _cache_path(code: str, options: tuple[str, ...], include_dir: Path, lib: nvrtc.Library, cache: Path) -> Path:
    # The include folder's contents are in the code's digest header; its path is not part of the key,
    # so a checkout moved elsewhere (CI's fresh clone) finds the same entries.
    include = f"-I{include_dir}"
    key_options = ["-I<kernels>" if o == include else o for o in options]
    key = "\0".join([code, *key_options, nvrtc.identity(lib)])
    return cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"


def _read_cache(path: Path) -> bytes | None:
    """The entry's payload, or None when it is missing, truncated or corrupt."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header = len(_CACHE_MAGIC) + 32
    if len(data) < header or not data.startswith(_CACHE_MAGIC):
        return None
    digest, payload = data[len(_CACHE_MAGIC) : header], data[header:]
    return payload if hashlib.sha256(payload).digest() == digest else None


def _write_cache(path: Path, payload: bytes) -> None:
    """Written to a temporary file and renamed over the entry: a reader sees all of it or none."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
    except OSError:
        pass  # an unwritable cache only costs a recompilation next time


def compile_cached(code: str, name: str, options: tuple[str, ...], include_dir: Path,
                   lib: nvrtc.Library | None = None, cache: Path | None = None) -> bytes:
    """NVRTC's CUBIN (-arch=sm_XY) or PTX (-arch=compute_XY) of code, from the cache (the folder
    cache, default hostkernels.cache_dir()/nvrtc) when an intact entry is there, else compiled and
    cached. include_dir: the -I folder of the options, whose sources code's header digests."""
    lib = lib or nvrtc.library()
    cache = cache or cache_dir() / "nvrtc"
    path = _cache_path(code, options, include_dir, lib, cache)
    binary = _read_cache(path)
    if binary is not None:
        return binary
    binary, ptx = nvrtc.compile_outputs(code, name, options, lib)
    if binary is None:
        binary = ptx
    elif ptx is not None:
        # The PTX that NVRTC made on the way to sm_XY's CUBIN is what -arch=compute_XY gives (same
        # source and options; a test checks it): cached as that, it saves a compilation.
        ptx_options = tuple("-arch=compute_" + o[len("-arch=sm_"):] if o.startswith("-arch=sm_") else o
                            for o in options)
        _write_cache(_cache_path(code, ptx_options, include_dir, lib, cache), ptx)
    _write_cache(path, binary)
    return binary


def compile_module(source_name: str, arch: str, directory: Path | None = None,
                   lib: nvrtc.Library | None = None, cache: Path | None = None) -> bytes:
    """kernels/<source_name> (or directory/<source_name>) compiled with module_options(arch): a CUBIN
    for sm_XY, PTX for compute_XY; cached (see compile_cached)."""
    directory = directory or kernels_dir()
    return compile_cached(module_source(source_name, directory), source_name, module_options(arch, directory),
                          directory, lib, cache)


def _runtime_library(cupy) -> nvrtc.Library:
    """The NVRTC for this process's GPU: of the driver's CUDA major version where there is one, as
    code from a newer major's NVRTC may not load on an older driver."""
    try:
        major = cupy.cuda.runtime.driverGetVersion() // 1000
    except Exception:  # a runtime that cannot say: the first NVRTC found
        major = None
    return nvrtc.library(prefer_major=major)


def load_module(source_name: str):
    """The loaded cupy.cuda.function.Module for kernels/<source_name> on the current device."""
    import cupy
    from cupy.cuda import function

    device = cupy.cuda.Device()
    with _lock:
        module = _modules.get((device.id, source_name))
        if module is not None:
            return module
        lib = _runtime_library(cupy)
        arch = target_arch(int(device.compute_capability), nvrtc.supported_archs(lib))
        binary = compile_module(source_name, arch, lib=lib)
        module = function.Module()
        module.load(binary)  # a CUBIN, or PTX that the driver compiles for this GPU
        _modules[(device.id, source_name)] = module
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

"""A small NVRTC front end over ctypes: compile CUDA C++ to CUBIN or PTX without CuPy, a GPU or a driver.

The CuPy backend compiles kernels/*.cu through this module (compile.py), and so does the test suite:
CI, which has no GPU, compiles exactly what the runtime compiles. NVRTC comes from, in order:
$GPUQUANT_NVRTC_LIBRARY; the PyPI wheel `nvidia-cuda-nvrtc` (CUDA 13: nvidia/cu13/lib/libnvrtc.so.13,
CUDA 12: nvidia/cuda_nvrtc/lib/libnvrtc.so.12); $CUDA_PATH, $CUDA_HOME or /usr/local/cuda lib64; the
plain sonames, which also find one that CuPy has already loaded; and, when none of these loads, the
same sonames again after CuPy has been asked to load its own. A library that fails to load is passed over (but
$GPUQUANT_NVRTC_LIBRARY, which is the only candidate when set).

ctypes releases the GIL around every foreign call, and NVRTC allows concurrent calls on different
programs, so compiles run in parallel from threads.
"""

from __future__ import annotations

import ctypes
import os
import re
import site
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

LIBRARY_ENV = "GPUQUANT_NVRTC_LIBRARY"
_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so")
# Inside a site-packages folder: where the PyPI wheels of each CUDA major version put the library.
_WHEEL_PATHS = ("nvidia/cu13/lib/libnvrtc.so.13", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12")


class NVRTCError(RuntimeError):
    """NVRTC is missing or a call failed; `log` holds NVRTC's program log where there is one."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(f"{message}\n{log}".rstrip() if log else message)
        self.log = log


class CompileException(NVRTCError):
    """The source did not compile. Named as CuPy's cupy.cuda.compiler.CompileException, which the
    backend's fault handling (stream.gpu_error) recognizes by class name."""


class Library:
    """One loaded libnvrtc with the prototypes this module calls."""

    def __init__(self, path: str):
        self.path = path
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            raise NVRTCError(f"cannot load NVRTC from {path}: {e}") from e
        c_int_p = ctypes.POINTER(ctypes.c_int)
        c_size_p = ctypes.POINTER(ctypes.c_size_t)
        prog = ctypes.c_void_p
        for name, args in {
            "nvrtcVersion": [c_int_p, c_int_p],
            "nvrtcGetNumSupportedArchs": [c_int_p],
            "nvrtcGetSupportedArchs": [c_int_p],
            "nvrtcCreateProgram": [ctypes.POINTER(prog), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
            "nvrtcCompileProgram": [prog, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
            "nvrtcDestroyProgram": [ctypes.POINTER(prog)],
            "nvrtcGetProgramLogSize": [prog, c_size_p],
            "nvrtcGetProgramLog": [prog, ctypes.c_char_p],
            "nvrtcGetPTXSize": [prog, c_size_p],
            "nvrtcGetPTX": [prog, ctypes.c_char_p],
            "nvrtcGetCUBINSize": [prog, c_size_p],
            "nvrtcGetCUBIN": [prog, ctypes.c_char_p],
        }.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        self.lib = lib

    def error_string(self, result: int) -> str:
        reason = self.lib.nvrtcGetErrorString(result)
        return reason.decode() if reason else f"NVRTC error {result}"

    def check(self, result: int, what: str) -> None:
        if result != 0:
            raise NVRTCError(f"{what}: {self.error_string(result)}")


def candidates(prefer_major: int | None = None) -> list[str]:
    """Where libnvrtc is looked for, in order ($GPUQUANT_NVRTC_LIBRARY alone when it is set). With
    prefer_major (the CUDA major version of the driver that will load the code) that major's
    candidates come first."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return [override]
    found: list[str] = []
    dirs = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    for relative in _WHEEL_PATHS:
        for d in dirs:
            path = Path(d) / relative
            if path.is_file() and str(path) not in found:
                found.append(str(path))
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root:
            for soname in _SONAMES:
                path = Path(root) / "lib64" / soname
                if path.is_file() and str(path) not in found:
                    found.append(str(path))
    found += _SONAMES
    if prefer_major is not None:
        # A stable sort: the preferred major's files first, each group in the order above.
        found.sort(key=lambda p: not p.endswith(f".so.{prefer_major}"))
    return found


_lock = threading.Lock()
_loaded: dict[tuple[str, int | None], Library] = {}


def library(prefer_major: int | None = None) -> Library:
    """The first libnvrtc of candidates() that loads (once per process); NVRTCError when none does."""
    key = (os.environ.get(LIBRARY_ENV, ""), prefer_major)
    with _lock:
        lib = _loaded.get(key)
        if lib is not None:
            return lib
        errors = []
        for attempt in range(2):
            if attempt == 1 and (os.environ.get(LIBRARY_ENV) or not _let_cupy_load_its_nvrtc()):
                break
            for path in candidates(prefer_major):
                try:
                    lib = Library(path)
                except (NVRTCError, AttributeError) as e:  # AttributeError: a library without NVRTC's API
                    errors.append(str(e))
                    continue
                _loaded[key] = lib
                return lib
    raise NVRTCError(
        f"NVRTC not found: pip install nvidia-cuda-nvrtc, or set {LIBRARY_ENV} to a libnvrtc.so "
        f"({'; '.join(errors[-3:])})"
    )


def _let_cupy_load_its_nvrtc() -> bool:
    """Where none of the candidates loads but CuPy is installed: CuPy finds its own libnvrtc (its wheels
    know where, e.g. through cuda-pathfinder); once loaded, the sonames above resolve to it. True when
    CuPy loaded one."""
    try:
        from cupy.cuda import nvrtc as cupy_nvrtc

        cupy_nvrtc.getVersion()
    except Exception:  # no CuPy, or CuPy without NVRTC: nothing more to try
        return False
    return True


def is_available() -> bool:
    try:
        library()
    except NVRTCError:
        return False
    return True


def version(lib: Library | None = None) -> tuple[int, int]:
    """NVRTC's (major, minor), e.g. (13, 0)."""
    lib = lib or library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.check(lib.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def identity(lib: Library | None = None) -> str:
    """What compiled code depends on besides source and options: the version, and the library file's
    size, which tells apart two builds of one major.minor (a patch release may generate other code)."""
    lib = lib or library()
    try:
        size = os.path.getsize(lib.path)
    except OSError:  # a bare soname, resolved by the dynamic loader
        size = -1
    return f"nvrtc {'.'.join(map(str, version(lib)))} {Path(lib.path).name} {size}"


def supported_archs(lib: Library | None = None) -> tuple[int, ...]:
    """The compute capabilities NVRTC can compile for, as integers (80 for sm_80), ascending."""
    lib = lib or library()
    count = ctypes.c_int()
    lib.check(lib.lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * count.value)()
    lib.check(lib.lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return tuple(sorted(archs))


_ARCH = re.compile(r"^(?:-arch|--gpu-architecture)[= ]?(sm|compute|lto)_(\w+)$")


def emits_cubin(options: Sequence[str]) -> bool:
    """Whether these options make NVRTC generate a CUBIN (-arch=sm_XX) rather than PTX only."""
    kinds = [m.group(1) for m in map(_ARCH.match, options) if m]
    return bool(kinds) and kinds[-1] == "sm"


class Outputs(NamedTuple):
    """What one compilation gives: the CUBIN (None without -arch=sm_XX), the PTX (may be None beside
    a CUBIN) and NVRTC's program log (warnings; with --ptxas-options=-v, ptxas's report of each
    function's registers, stack frame and spills)."""

    binary: bytes | None
    ptx: bytes | None
    log: str


def compile(code: str, name: str = "program.cu", options: Sequence[str] = (), lib: Library | None = None) -> bytes:
    """Compile one CUDA C++ translation unit: the CUBIN with -arch=sm_XX, else the PTX (without its
    terminating NUL). Raises CompileException, carrying NVRTC's program log, when it does not compile."""
    binary, ptx, _ = compile_outputs(code, name, options, lib)
    result = binary if binary is not None else ptx
    assert result is not None  # compile_outputs raises when there is neither
    return result


def compile_outputs(code: str, name: str = "program.cu", options: Sequence[str] = (),
                    lib: Library | None = None) -> Outputs:
    """(CUBIN, PTX, log) of one compilation: with -arch=sm_XX NVRTC generates the PTX of compute_XX on
    the way to the CUBIN and keeps both, so one compilation yields the two (the CUBIN is None without
    -arch=sm_XX; the PTX may be None beside a CUBIN)."""
    lib = lib or library()
    nv = lib.lib
    prog = ctypes.c_void_p()
    lib.check(nv.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None),
              "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        argv = (ctypes.c_char_p * len(encoded))(*encoded)
        result = nv.nvrtcCompileProgram(prog, len(encoded), argv)
        log = _read(lib, prog, "ProgramLog").rstrip(b"\0").decode(errors="replace")
        if result != 0:
            raise CompileException(f"NVRTC could not compile {name}: {lib.error_string(result)}\n"
                                   f"options: {' '.join(options)}", log)
        binary = _read(lib, prog, "CUBIN") if emits_cubin(options) else None
        try:
            ptx = _read(lib, prog, "PTX").rstrip(b"\0")
        except NVRTCError:
            if binary is None:
                raise
            ptx = None  # an NVRTC that keeps no PTX beside the CUBIN
        return Outputs(binary, ptx, log)
    finally:
        nv.nvrtcDestroyProgram(ctypes.byref(prog))


def _read(lib: Library, prog: ctypes.c_void_p, what: str) -> bytes:
    size = ctypes.c_size_t()
    lib.check(getattr(lib.lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size)), f"nvrtcGet{what}Size")
    buffer = ctypes.create_string_buffer(size.value)
    lib.check(getattr(lib.lib, f"nvrtcGet{what}")(prog, buffer), f"nvrtcGet{what}")
    return buffer.raw

"""The CUDA kernels' per-block code built for the CPU: the `native` backend's engine, and how CI (no
GPU) tests the kernels' arithmetic.

`kernels/host_<family>.cpp`, one per family of gpuquant.qtypes.FAMILIES, loop the same
`kernels/<family>.cuh` block functions that the CUDA kernels (`kernels/<family>.cu`) call; this
module compiles them with the system C++ compiler (CXX_FLAGS: no FMA contraction, no fast math, like
ggml's reference build) into a cache directory keyed by a hash of the kernel sources, loads the
library with ctypes, and offers `quantize(x, qtype, imatrix)` / `dequantize(q, qtype, n_per_row)`
with the numpy backend's array semantics. The native backend (backends/native.py) runs it on every
core.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .backends.numpy.lattice import LatticeTables

from .qtypes import FAMILIES, QTYPES, QType, resolve

KERNELS_DIR_ENV = "GPUQUANT_KERNELS_DIR"
CACHE_DIR_ENV = "GPUQUANT_CACHE_DIR"

# -march=native lets the compiler use this CPU's vector instructions; with -ffp-contract=off and no
# fast math it can neither fuse a*b+c nor reorder a sum, so the bytes stay ggml's (the tests check).
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-ffp-contract=off", "-fPIC", "-shared")


def _cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU is not loaded on another."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
    except OSError:
        import platform

        lines = [platform.machine(), platform.processor()]
    return "".join(lines)

_library: ctypes.CDLL | None = None


def kernels_dir() -> Path:
    """The folder of CUDA/C++ kernel sources: $GPUQUANT_KERNELS_DIR, else the repository's kernels/,
    else the copy an installed wheel carries as gpuquant/kernels."""
    override = os.environ.get(KERNELS_DIR_ENV)
    path = Path(override) if override else Path(__file__).resolve().parents[1] / "kernels"
    if not override and not path.is_dir():
        path = Path(__file__).resolve().parent / "kernels"
    if not (path / "common.cuh").is_file():
        raise FileNotFoundError(f"no kernel sources (common.cuh) in {path}; set {KERNELS_DIR_ENV}")
    return path


def _host_families() -> dict[str, tuple[str, ...]]:
    """Each family that has a kernels/host_<family>.cpp, with its types that have kernels (the type
    table's order; F32 is a plain copy and has none); {} where there are no kernel sources."""
    try:
        directory = kernels_dir()
    except FileNotFoundError:
        return {}
    return {
        family: tuple(t.name for t in QTYPES.values() if t.family == family and t.kernel)
        for family in FAMILIES
        if (directory / f"host_{family}.cpp").is_file()
    }


# The host build's types, per family, from the type table: what its library dispatches (host_api.cpp
# sends each type of family F to host_F.cpp's gq_F_quantize / gq_F_dequantize).
HOST_FAMILIES: dict[str, tuple[str, ...]] = _host_families()
HOST_TYPES: tuple[str, ...] = tuple(name for names in HOST_FAMILIES.values() for name in names)


ALL_SOURCES = (".cuh", ".cu", ".cpp", ".h")
DEVICE_SOURCES = (".cuh", ".cu")  # what NVRTC and the CUDA simulator compile (no host_*.cpp, no .h)


def kernel_sources_digest(directory: Path | None = None, suffixes: tuple[str, ...] = ALL_SOURCES) -> str:
    """A hash of the kernel source files with these suffixes, so that any edit of them invalidates
    the caches built from them (the device builds hash the device sources only: a host-only edit
    leaves their minute of NVRTC cached)."""
    directory = directory or kernels_dir()
    h = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.suffix in suffixes:
            h.update(path.name.encode())
            h.update(b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:20]


def find_compiler() -> str | None:
    """$CXX, else g++, else c++, else clang++; None when there is no C++ compiler."""
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def cache_dir() -> Path:
    """Where compiled kernels are kept: $GPUQUANT_CACHE_DIR, else a per-user temporary folder."""
    base = os.environ.get(CACHE_DIR_ENV)
    if base:
        return Path(base)
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"gpuquant-{user}"


def _library_path(compiler: str | None) -> Path:
    """The cached library for these sources, flags and compiler ("any" without one: the newest
    build of these sources by any compiler)."""
    digest = hashlib.sha256(
        (kernel_sources_digest(kernels_dir()) + (compiler or "") + " ".join(CXX_FLAGS) + _cpu_signature()).encode()
    ).hexdigest()[:20]
    return cache_dir() / f"libgqhost-{digest}.so"


def _marker_path() -> Path:
    """Names the library built from these sources for this CPU, for processes without a compiler."""
    key = hashlib.sha256((kernel_sources_digest(kernels_dir()) + _cpu_signature()).encode()).hexdigest()[:20]
    return cache_dir() / f"libgqhost-built-{key}.path"


def is_built() -> bool:
    """Whether a library for the current sources exists already (usable without a compiler)."""
    return any(_built_candidates())


def _built_candidates() -> list[Path]:
    compiler = find_compiler()
    if compiler is not None:
        return [p for p in [_library_path(compiler)] if p.is_file()]
    marker = _marker_path()
    if marker.is_file():
        path = Path(marker.read_text().strip())
        return [path] if path.is_file() else []
    return []


def build_library() -> Path:
    """Compile kernels/host_*.cpp (once per source version) and return the shared library's path."""
    built = _built_candidates()
    if built:
        _remember(built[0])
        return built[0]
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    source_dir = kernels_dir()
    target = _library_path(compiler)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a unique name and rename: concurrent test processes never load a partial file.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    sources = [str(source_dir / "host_api.cpp"), *(str(p) for p in sorted(source_dir.glob("host_*.cpp"))
                                                   if p.name != "host_api.cpp")]
    command = [compiler, *CXX_FLAGS, "-I", str(source_dir), *sources, "-o", partial]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(partial)
        raise RuntimeError(f"host kernel build failed: {' '.join(command)}\n{result.stderr}")
    os.replace(partial, target)
    _remember(target)
    return target


def _remember(target: Path) -> None:
    """Lets a later process without a compiler find this build of the same sources."""
    marker = _marker_path()
    if not marker.is_file() or marker.read_text() != str(target):
        marker.write_text(str(target))


def library() -> ctypes.CDLL:
    global _library
    if _library is None:
        lib = ctypes.CDLL(str(build_library()))
        for fn in (lib.gq_quantize, lib.gq_dequantize):
            fn.restype = ctypes.c_int
        lib.gq_quantize.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ]
        lib.gq_dequantize.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ]
        lib.gq_error_sums.restype = ctypes.c_int
        lib.gq_error_sums.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
            ctypes.c_int64, ctypes.c_void_p,
        ]
        lib.gq_set_lattice.restype = ctypes.c_int
        lib.gq_set_lattice.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 7 + [ctypes.c_int, ctypes.c_int]
        _library = lib
    return _library


# The lattice tables handed to the library: kept here, alive as long as the library is loaded.
_lattice_arrays: list[np.ndarray] = []


def lattice_tables(type_name: str) -> LatticeTables:
    """A lattice IQ type's tables as the kernels take them, in their order (GqLattice's fields): the
    NumPy backend's lattice module builds them, once per type."""
    from .backends.numpy.lattice import kernel_tables

    return kernel_tables(type_name)


_lattice_lock = threading.Lock()
_lattices_set: set[str] = set()


def _ensure_lattice(t: QType) -> None:
    """Hands a lattice type's tables to the library on its first use (building them costs ~0.3 s)."""
    if t.name in _lattices_set or t.name not in HOST_FAMILIES["lattice"]:
        return
    with _lattice_lock:
        if t.name in _lattices_set:
            return
        tables = lattice_tables(t.name)
        arrays = tables[:7]  # the pointers, then dims and bits: gq_set_lattice's order is the tuple's
        _lattice_arrays.extend(arrays)
        status = library().gq_set_lattice(t.ggml_id, *(a.ctypes.data for a in arrays), int(tables.dims),
                                          int(tables.bits))
        if status != 0:
            raise RuntimeError(f"gq_set_lattice({t.name}) failed with status {status}")
        _lattices_set.add(t.name)


def _host_type(qtype: str | int | QType) -> QType:
    t = resolve(qtype)
    if t.name not in HOST_TYPES:
        raise ValueError(f"the host kernel build has no {t.name}; it has {', '.join(HOST_TYPES)}")
    return t


def quantize_into(x: np.ndarray, qtype: QType, imatrix: np.ndarray | None, out: np.ndarray) -> None:
    """float32 [rows, n_per_row] (C-contiguous) into uint8 out [rows, row_bytes] (C-contiguous)."""
    rows, n_per_row = x.shape
    _ensure_lattice(qtype)
    status = library().gq_quantize(
        qtype.ggml_id, x.ctypes.data, None if imatrix is None else imatrix.ctypes.data,
        out.ctypes.data, rows, n_per_row,
    )
    if status != 0:
        raise RuntimeError(f"gq_quantize({qtype.name}) failed with status {status}")


def dequantize_into(q: np.ndarray, qtype: QType, n_per_row: int, out: np.ndarray) -> None:
    """uint8 [rows, row_bytes] (C-contiguous) into float32 out [rows, n_per_row] (C-contiguous)."""
    _ensure_lattice(qtype)
    status = library().gq_dequantize(qtype.ggml_id, q.ctypes.data, out.ctypes.data, q.shape[0], n_per_row)
    if status != 0:
        raise RuntimeError(f"gq_dequantize({qtype.name}) failed with status {status}")


def error_sums(x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> np.ndarray:
    """float64 [sum x^2, sum (x-y)^2, sum w x^2, sum w (x-y)^2, max |x-y|] of float32 rows x
    (C-contiguous) against y, the dequantized rows q (uint8, one row per row of x, rows may be a
    strided view), with column weights w [n_per_row] or None."""
    _ensure_lattice(qtype)
    out = np.zeros(5, dtype=np.float64)
    if x.shape[0] == 0:
        return out
    if q.strides[1] != 1:
        q = np.ascontiguousarray(q)
    status = library().gq_error_sums(
        qtype.ggml_id, q.ctypes.data, q.strides[0], x.ctypes.data,
        None if weights is None else weights.ctypes.data, x.shape[0], x.shape[1], out.ctypes.data,
    )
    if status != 0:
        raise RuntimeError(f"gq_error_sums({qtype.name}) failed with status {status}")
    return out


def quantize(x: np.ndarray, qtype: str | int | QType, imatrix: np.ndarray | None = None) -> np.ndarray:
    """float32 [rows, n_per_row] -> uint8 [rows, row_bytes], through the kernels' block code."""
    t = _host_type(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    rows, n_per_row = x.shape
    out = np.empty((rows, t.row_bytes(n_per_row)), dtype=np.uint8)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if imatrix.shape[0] != n_per_row:
            raise ValueError(f"imatrix has {imatrix.shape[0]} values but rows have {n_per_row}")
    quantize_into(x, t, imatrix, out)
    return out


def dequantize(q: np.ndarray, qtype: str | int | QType, n_per_row: int) -> np.ndarray:
    """uint8 [rows, row_bytes] -> float32 [rows, n_per_row], through the kernels' block code."""
    t = _host_type(qtype)
    q = np.ascontiguousarray(q, dtype=np.uint8)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    rows = q.shape[0]
    if q.shape[1] != t.row_bytes(n_per_row):
        raise ValueError(f"rows of {q.shape[1]} bytes do not hold {n_per_row} {t.name} weights")
    out = np.empty((rows, n_per_row), dtype=np.float32)
    dequantize_into(q, t, n_per_row, out)
    return out

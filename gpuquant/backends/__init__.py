"""The Backend interface and its registry: `numpy` (CPU, always there), `native` (the kernels built for
this CPU) and `cupy` (NVIDIA GPU, or the CUDA simulator with GPUQUANT_CUDA_SIM=1)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from ..qtypes import QType
from ..quant_error import ErrorSums, chunk_sums, error_parts, sum_in_order

# One piece of work for the file pipeline: float32 rows [rows, n_per_row], the type, the imatrix.
Chunk = tuple[np.ndarray, QType, "np.ndarray | None"]


class NonFiniteError(ValueError):
    """A chunk holds NaN or Inf; `row` is the first such row, counted within the chunk."""

    def __init__(self, row: int) -> None:
        super().__init__(f"NaN or Inf weight in row {row}")
        self.row = row


def check_finite_rows(x: np.ndarray, first_row: int, enabled: bool) -> None:
    """NonFiniteError naming the first row of x (counted from first_row) that holds NaN or Inf."""
    # max/min propagate NaN and expose +-Inf without allocating a mask the size of x
    if not enabled or x.size == 0 or (np.isfinite(x.max()) and np.isfinite(x.min())):
        return
    raise NonFiniteError(first_row + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0]))


class Backend(Protocol):
    """Everything the pipeline, the error meter and the API use of a backend (BackendBase gives the
    defaults)."""

    name: str  # "numpy", "native", "cupy"
    description: str  # the summary's words for it, e.g. "CuPy (CUDA simulator)"
    reason: str  # why it was picked (get_backend sets it)
    notes: list[str]  # what it found out while running, told to the user once a run ends
    outputs_owned: bool  # quantize_chunks yields arrays it never reuses: a writer may keep them
    runs_on_device: bool  # computes on a GPU (its inputs stay on the host too)

    def supports(self, qtype: QType) -> bool: ...

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 [rows, n_per_row] (validated) -> uint8 [rows, row_bytes], on the host."""
        ...

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        """uint8 [rows, row_bytes] -> float32 [rows, n_per_row], on the host."""
        ...

    def dequantize_rows(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        """A quantized source's stored rows as ggml's to_float gives them (requantizing)."""
        ...

    def quantize_chunks(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[np.ndarray]:
        """The file pipeline's entry: quantize each chunk, yielding host uint8 outputs in order.

        A backend may work ahead (read the next chunks while earlier ones compute); a yielded
        array may be a buffer that is reused once the next output is asked for. With
        check_finite, a chunk bound for a block type (not F32/F16/BF16, which carry NaN and Inf
        as values) that holds NaN or Inf raises NonFiniteError when its output is due.
        """
        ...

    def error_sums(self, x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> ErrorSums:
        """The error sums of float32 rows x against q, their quantized rows (quant_error.py)."""
        ...


class BackendBase:
    """The defaults of the Backend protocol; each backend overrides what it does its own way."""

    name = ""
    reason = ""
    outputs_owned = False
    runs_on_device = False

    def __init__(self) -> None:
        self.notes: list[str] = []

    @property
    def description(self) -> str:
        return self.name

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        raise NotImplementedError

    def dequantize_rows(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        return self.dequantize(np.ascontiguousarray(q), qtype, n_per_row)

    def error_sums(self, x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> ErrorSums:
        """Through the backend's own dequantize: parts of fixed row ranges, added in order."""
        y = self.dequantize(np.ascontiguousarray(q), qtype, x.shape[1])
        parts = (chunk_sums(x[a:b], y[a:b], weights) for a, b in error_parts(*x.shape))
        return sum_in_order(parts, weights is not None)


BACKEND_NAMES = ("auto", "native", "numpy", "cupy")


def cupy_available() -> bool:
    """True when cupy imports and sees a CUDA device, or the CUDA simulator is on (GPUQUANT_CUDA_SIM);
    never imports cupy unless asked."""
    from .cupy.device import simulator_enabled

    if simulator_enabled():
        return True
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_backend(name: str = "auto", n_threads: int = 1, needed: Iterable[QType] = ()) -> Backend:
    """The backend called `name`; `auto` picks CuPy with a CUDA device (never the slow CUDA simulator,
    which runs only when asked for by name), else native (the kernels
    built for this CPU) when a compiler is there or the library is already built, else NumPy, each
    only if it has every type in `needed`. The backend's `reason` says why it was picked."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    from .cupy.device import simulator_enabled

    needed = list(needed)
    if name == "cupy" or (name == "auto" and cupy_available() and not simulator_enabled()):
        if not cupy_available():
            raise ValueError("backend 'cupy' needs CuPy and a CUDA device; neither was found "
                             "(GPUQUANT_CUDA_SIM=1 runs it on the CUDA simulator, slowly)")
        from .cupy import CupyBackend

        be = CupyBackend()
        if name == "cupy" or all(be.supports(t) for t in needed):
            be.reason = "requested" if name == "cupy" else "a CUDA device is there"
            return be
    if name in ("native", "auto"):
        be, why_not = native_backend(n_threads)
        if be is not None:
            missing = [t.name for t in needed if not be.supports(t)]
            if name == "native" or not missing:
                be.reason = "requested" if name == "native" else "the kernels built for this CPU"
                return be
            why_not = f"the native backend has no {', '.join(sorted(set(missing)))} yet"
        elif name == "native":
            raise ValueError(f"backend 'native' is not available: {why_not}")
    from .numpy_backend import NumpyBackend

    be = NumpyBackend(n_threads=n_threads)
    be.reason = "requested" if name == "numpy" else why_not
    return be


def native_backend(n_threads: int):
    """(NativeBackend, None), or (None, why not): the kernels built for this CPU, if they can be."""
    from .. import hostkernels

    if hostkernels.find_compiler() is None and not hostkernels.is_built():
        return None, "no C++ compiler to build the native backend (install g++, or set CXX)"
    try:
        from .native import NativeBackend

        return NativeBackend(n_threads=n_threads), None
    except (RuntimeError, OSError) as e:
        return None, f"the native backend did not build: {str(e).splitlines()[0]}"

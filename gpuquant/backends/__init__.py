"""The Backend interface and its registry: `numpy` (CPU, always there), `native` (the kernels built for
this CPU) and `cupy` (NVIDIA GPU, or the CUDA simulator with GPUQUANT_CUDA_SIM=1)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from ..qtypes import QTYPES, QType
from ..quant_error import ErrorSums, chunk_sums, error_parts, sum_in_order


class Chunk(NamedTuple):
    """One piece of work for the file pipeline: rows of one tensor as the file stores them.

    `data` is float32 [rows, n_per_row] for an F32 source, else the stored bytes uint8 [rows, row_bytes]
    of `source` (F16/BF16 words, or a quantized type's blocks when requantizing): each backend makes
    float32 of them where it computes (the GPU engine on the device, at the file's 2 bytes a weight for
    F16/BF16). Consecutive chunks may share one `data` array (the same rows, another output type):
    a backend may then reuse its float32 of them. With `measure`, the backend also measures the
    error of the rows `sample` (row indices within the chunk, sorted; None: every row) against their
    round trip.
    """

    data: np.ndarray
    qtype: QType
    imatrix: np.ndarray | None = None
    source: QType = QTYPES["F32"]
    measure: bool = False
    sample: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.data.shape[0]

    @property
    def n_per_row(self) -> int:
        if self.source.name == "F32":
            return self.data.shape[1]
        return self.data.shape[1] // self.source.type_size * self.source.block_size


def _nothing() -> None:
    pass


@dataclass
class Quantized:
    """A chunk's output: `q` uint8 [rows, row_bytes], its error sums when measured, and `release`,
    to be called once the consumer is done with q (a backend may then reuse its buffer: the GPU
    engine's pinned output, written behind straight from there)."""

    q: np.ndarray
    error: ErrorSums | None = None
    release: Callable[[], None] = _nothing


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
    runs_on_device: bool  # computes on a GPU

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

    def quantize_chunks(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
        """The file pipeline's entry: quantize each chunk, yielding its Quantized output in order.

        A backend may work ahead (read the next chunks while earlier ones compute); the consumer
        calls each output's release() once done with it. With check_finite, a chunk bound for a
        block type (not F32/F16/BF16, which carry NaN and Inf as values) that holds NaN or Inf
        raises NonFiniteError when its output is due.
        """
        ...

    def error_sums(self, x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> ErrorSums:
        """The error sums of float32 rows x against q, their quantized rows (quant_error.py)."""
        ...


class BackendBase:
    """The defaults of the Backend protocol; each backend overrides what it does its own way. A host
    backend provides quantize_checked, and its quantize_chunks is this one."""

    name = ""
    reason = ""
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

    def quantize_checked(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None,
                         check_finite: bool) -> np.ndarray:
        """quantize, raising NonFiniteError for a row with NaN or Inf when check_finite."""
        raise NotImplementedError

    def chunk_as_float32(self, chunk: Chunk) -> np.ndarray:
        """A chunk's stored rows as float32 [rows, n_per_row]: an F32 source as it is, F16/BF16 widened
        and quantized sources dequantized by this backend (ggml's to_float)."""
        if chunk.source.name == "F32":
            return chunk.data
        return self.dequantize_rows(chunk.data, chunk.source, chunk.n_per_row)

    def quantize_chunks(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
        last: tuple[np.ndarray, np.ndarray] | None = None  # (stored rows, their float32)
        for chunk in chunks:
            # consecutive chunks of the same rows (one per output type) are made float32 once
            if last is not None and last[0] is chunk.data:
                x = last[1]
            else:
                x = self.chunk_as_float32(chunk)
                last = (chunk.data, x)
            q = self.quantize_checked(x, chunk.qtype, chunk.imatrix, check_finite and not chunk.qtype.is_float)
            yield Quantized(q, self.measure_chunk(chunk, x, q) if chunk.measure else None)

    def measure_chunk(self, chunk: Chunk, x: np.ndarray, q: np.ndarray) -> ErrorSums:
        """The error sums of a chunk's measured rows (its sample, or all)."""
        if chunk.sample is not None:
            x, q = x[chunk.sample], q[chunk.sample]
        if x.shape[0] == 0:
            return ErrorSums(weighted=chunk.imatrix is not None)
        return self.error_sums(x, q, chunk.qtype, chunk.imatrix)

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

        be = CupyBackend(n_threads=n_threads)
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

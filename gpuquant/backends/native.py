"""The native backend: the kernels' per-block code (kernels/*.cuh) built for the host CPU.

The same C++ that the CUDA kernels run, compiled once with the system C++ compiler (no FMA
contraction, no fast math; gpuquant/hostkernels.py caches it by a hash of the sources) and called
through ctypes, which releases the GIL: rows are split over threads, each thread a contiguous
range, so the bytes never depend on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import hostkernels
from ..qtypes import QType
from ..quant_error import ErrorSums, error_parts, sum_in_order
from . import BackendBase, check_finite_rows

# Rows per task: small enough to balance the threads, big enough to amortize a ctypes call.
_MIN_WEIGHTS_PER_TASK = 1 << 16
# F16/BF16 widening is elementwise and memory-bound (several G weights/s a thread): it is split by
# weights, not rows (one row may be a whole chunk), in spans of at least this many (~0.1 ms each),
# starting at multiples of _WIDEN_ALIGN weights (whole cache lines of input and output).
_MIN_WIDEN_PER_TASK = 1 << 18
_WIDEN_ALIGN = 64


class NativeBackend(BackendBase):
    name = "native"

    def __init__(self, n_threads: int = 1) -> None:
        super().__init__()
        self.n_threads = max(1, int(n_threads))
        hostkernels.library()  # compiles on first use; RuntimeError without a compiler
        self._pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None

    def supports(self, qtype: QType) -> bool:
        return qtype.name == "F32" or qtype.name in hostkernels.HOST_TYPES

    def _split(self, rows: int, n_per_row: int) -> list[tuple[int, int]]:
        min_rows = max(1, _MIN_WEIGHTS_PER_TASK // max(1, n_per_row))
        n_tasks = 1 if self._pool is None else max(1, min(self.n_threads * 4, rows // min_rows))
        bounds = np.linspace(0, rows, n_tasks + 1).astype(int)
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def _run(self, fn, ranges: list[tuple[int, ...]]) -> None:
        if self._pool is None or len(ranges) == 1:
            for r in ranges:
                fn(*r)
        else:
            list(self._pool.map(lambda r: fn(*r), ranges))

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        return self.quantize_checked(x, qtype, imatrix, check_finite=False)

    def quantize_checked(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None,
                         check_finite: bool) -> np.ndarray:
        rows, n_per_row = x.shape
        if qtype.name == "F32":  # F32 carries NaN and Inf as values
            return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).reshape(rows, -1).copy()
        out = np.empty((rows, qtype.row_bytes(n_per_row)), dtype=np.uint8)
        check = check_finite and not qtype.is_float

        def run(a: int, b: int) -> None:
            check_finite_rows(x[a:b], a, check)  # in the workers: the check costs a pass over x
            hostkernels.quantize_into(x[a:b], qtype, imatrix, out[a:b])

        self._run(run, self._split(rows, n_per_row))
        return out

    def error_sums(self, x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> ErrorSums:
        """The error pass in one sweep (kernels/host_error.cpp): x against dequantize(q), rows over threads."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32).reshape(-1)
        ranges = error_parts(x.shape[0], x.shape[1])
        parts: list[ErrorSums | None] = [None] * len(ranges)

        def run(i: int) -> None:
            a, b = ranges[i]
            p = hostkernels.error_sums(x[a:b], q[a:b], qtype, w)
            parts[i] = ErrorSums(rows=b - a, sum_sq_x=float(p[0]), sum_sq_err=float(p[1]), w_sum_sq_x=float(p[2]),
                                 w_sum_sq_err=float(p[3]), max_abs=float(p[4]), weighted=w is not None)

        # Parts in row order whatever thread finished first: the figures never depend on the threads.
        self._run(run, [(i,) for i in range(len(ranges))])
        return sum_in_order(parts, w is not None)

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        rows = q.shape[0]
        if qtype.name == "F32":
            return np.ascontiguousarray(q).view(np.float32).reshape(rows, n_per_row).copy()
        out = np.empty((rows, n_per_row), dtype=np.float32)
        if qtype.is_float:  # F16, BF16: every F16/BF16 source the pipeline reads comes through here
            self._widen(np.ascontiguousarray(q), qtype, out)
            return out

        def run(a: int, b: int) -> None:
            hostkernels.dequantize_into(q[a:b], qtype, n_per_row, out[a:b])

        self._run(run, self._split(rows, n_per_row))
        return out

    def _widen(self, q: np.ndarray, qtype: QType, out: np.ndarray) -> None:
        """out (float32, C-contiguous) = the 16-bit words of q widened (host_floats.cpp: vcvtph2ps
        where the CPU has it), in spans of weights over the threads."""
        n = out.size
        words, values = q.reshape(-1), out.reshape(-1)
        if words.size != 2 * n:
            raise ValueError(f"{words.size} bytes are not {n} {qtype.name} weights")
        n_tasks = 1 if self._pool is None else max(1, min(self.n_threads * 4, n // _MIN_WIDEN_PER_TASK))
        bounds = [n * i // n_tasks // _WIDEN_ALIGN * _WIDEN_ALIGN for i in range(n_tasks)] + [n]

        def run(a: int, b: int) -> None:
            hostkernels.dequantize_into(words[2 * a : 2 * b].reshape(1, -1), qtype, b - a,
                                        values[a:b].reshape(1, -1))

        self._run(run, [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a])

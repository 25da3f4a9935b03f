"""The NumPy backend object: dispatches to the per-type quantizers and splits rows over threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..qtypes import QType
from ..quant_error import ErrorSums, chunk_sums, error_parts, sum_in_order
from . import BackendBase, check_finite_rows
from .numpy import DEQUANTIZERS, QUANTIZERS

# Weights per task: the K and IQ quantizers run many small numpy steps per call, and tasks
# smaller than this spend their time fighting over the GIL instead of computing.
_MIN_WEIGHTS_PER_TASK = 1 << 18


class NumpyBackend(BackendBase):
    name = "numpy"

    def __init__(self, n_threads: int = 1) -> None:
        super().__init__()
        self.n_threads = max(1, int(n_threads))
        self._pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None

    def supports(self, qtype: QType) -> bool:
        return qtype.name in QUANTIZERS

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        return self.quantize_checked(x, qtype, imatrix, check_finite=False)

    def quantize_checked(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None,
                         check_finite: bool) -> np.ndarray:
        # ggml's arithmetic on extreme inputs overflows and divides by zero by design: no warnings
        with np.errstate(all="ignore"):
            return self._quantize_rows(x, qtype, imatrix, check_finite)

    def _quantize_rows(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None, check_finite: bool):
        fn = QUANTIZERS[qtype.name]
        check_finite = check_finite and not qtype.is_float
        rows = x.shape[0]
        min_rows = max(1, _MIN_WEIGHTS_PER_TASK // max(1, x.shape[1]))
        if self._pool is None or rows < 2 * min_rows:
            check_finite_rows(x, 0, check_finite)
            return fn(x, imatrix)
        out = np.empty((rows, qtype.row_bytes(x.shape[1])), dtype=np.uint8)
        n_tasks = min(self.n_threads * 4, rows // min_rows)
        bounds = np.linspace(0, rows, n_tasks + 1).astype(int)

        def run(i: int) -> None:
            a, b = bounds[i], bounds[i + 1]
            check_finite_rows(x[a:b], a, check_finite)  # in the workers: the check costs a pass over x
            with np.errstate(all="ignore"):  # numpy's error state is per thread
                out[a:b] = fn(x[a:b], imatrix)

        list(self._pool.map(run, range(n_tasks)))
        return out

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        with np.errstate(all="ignore"):
            return DEQUANTIZERS[qtype.name](q, n_per_row)

    def error_sums(self, x: np.ndarray, q: np.ndarray, qtype: QType, weights: np.ndarray | None) -> ErrorSums:
        """Dequantize, then the sums of fixed row ranges over the threads, added in row order."""
        y = self.dequantize(np.ascontiguousarray(q), qtype, x.shape[1])

        def part(ab: tuple[int, int]) -> ErrorSums:
            a, b = ab
            return chunk_sums(x[a:b], y[a:b], weights)

        ranges = error_parts(*x.shape)
        parts = map(part, ranges) if self._pool is None else self._pool.map(part, ranges)  # map keeps order
        return sum_in_order(parts, weights is not None)

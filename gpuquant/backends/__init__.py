"""The Backend interface and its registry: `numpy` (CPU, always there) and `cupy` (NVIDIA GPU)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from ..qtypes import QType

# One piece of work for the file pipeline: float32 rows [rows, n_per_row], the type, the imatrix.
Chunk = tuple[np.ndarray, QType, "np.ndarray | None"]


class NonFiniteError(ValueError):
    """A chunk holds NaN or Inf; `row` is the first such row, counted within the chunk."""

    def __init__(self, row: int) -> None:
        super().__init__(f"NaN or Inf weight in row {row}")
        self.row = row


class Backend(Protocol):
    name: str

    def supports(self, qtype: QType) -> bool: ...

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 [rows, n_per_row] (validated) -> uint8 [rows, row_bytes], on the host."""
        ...

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        """uint8 [rows, row_bytes] -> float32 [rows, n_per_row], on the host."""
        ...

    def quantize_chunks(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[np.ndarray]:
        """The file pipeline's entry: quantize each chunk, yielding host uint8 outputs in order.

        A backend may work ahead (read the next chunks while earlier ones compute); a yielded
        array may be a buffer that is reused once the next output is asked for. With
        check_finite, a chunk bound for a block type (not F32/F16/BF16, which carry NaN and Inf
        as values) that holds NaN or Inf raises NonFiniteError when its output is due.
        """
        ...


BACKEND_NAMES = ("auto", "numpy", "cupy")


def cupy_available() -> bool:
    """True when cupy imports and sees a CUDA device; never imports cupy unless asked."""
    try:
        import cupy  # noqa: F401

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_backend(name: str = "auto", n_threads: int = 1) -> Backend:
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if name == "cupy" or (name == "auto" and cupy_available()):
        if not cupy_available():
            raise ValueError("backend 'cupy' needs CuPy and a CUDA device; neither was found")
        from .cupy import CupyBackend

        return CupyBackend()
    from .numpy_backend import NumpyBackend

    return NumpyBackend(n_threads=n_threads)

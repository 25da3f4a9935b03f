"""The Backend interface and its registry: `numpy` (CPU, always there) and `cupy` (NVIDIA GPU)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..qtypes import QType


class Backend(Protocol):
    name: str

    def supports(self, qtype: QType) -> bool: ...

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        """float32 [rows, n_per_row] (validated) -> uint8 [rows, row_bytes], on the host."""
        ...

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        """uint8 [rows, row_bytes] -> float32 [rows, n_per_row], on the host."""
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

"""Array-level API: validate, pick a backend, quantize or dequantize."""

from __future__ import annotations

import numpy as np

from .backends import get_backend
from .imatrix import check_importances
from .qtypes import QType, resolve

_backends: dict[tuple[str, str], object] = {}


def _backend(name: str, qtype: str | int | QType):
    """The backend for one type: `auto` picks the first that has it (CuPy, native, NumPy)."""
    t = resolve(qtype)
    key = (name, t.name if name == "auto" else "")
    if key not in _backends:
        _backends[key] = get_backend(name, needed=[t])
    be = _backends[key]
    if not be.supports(t):
        raise ValueError(f"type {t.name} is not supported yet by the {be.name} backend")
    return t, be


def check_input(x: np.ndarray, t: QType, imatrix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The validated float32 2-D input and imatrix, or a ValueError that says what is wrong."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"input must be floating point, got {x.dtype}")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"input must be 1-D or 2-D [rows, n_per_row], got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[1]
    if n_per_row % t.block_size:
        raise ValueError(
            f"row length {n_per_row} is not a multiple of {t.name}'s block size {t.block_size}"
        )
    if imatrix is not None:
        imatrix = np.asarray(imatrix)
        if not np.issubdtype(imatrix.dtype, np.floating):
            raise ValueError(f"imatrix must be floating point, got {imatrix.dtype}")
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if imatrix.shape[0] != n_per_row:
            raise ValueError(
                f"imatrix has {imatrix.shape[0]} values but rows have {n_per_row}"
            )
        check_importances(imatrix, "imatrix")
    elif t.requires_imatrix:
        raise ValueError(f"type {t.name} requires an importance matrix")
    if t.family == "lattice" and not np.all(np.isfinite(x)):
        # ggml's lattice searches have no defined result for NaN or Inf (they index out of tables)
        row = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{t.name} cannot quantize NaN or Inf (row {row})")
    return x, imatrix


def quantize(
    x: np.ndarray,
    qtype: str | int | QType,
    *,
    imatrix: np.ndarray | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Quantize float rows to ggml blocks: uint8 [rows, row_bytes], as ggml_quantize_chunk."""
    t, be = _backend(backend, qtype)
    x, imatrix = check_input(x, t, imatrix)
    return be.quantize(x, t, imatrix)


def dequantize(q: np.ndarray, qtype: str | int | QType, *, backend: str = "auto") -> np.ndarray:
    """ggml blocks back to float32 [rows, n_per_row], as ggml's to_float."""
    t, be = _backend(backend, qtype)
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ValueError(f"quantized data must be uint8, got {q.dtype}")
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] % t.type_size:
        raise ValueError(
            f"quantized rows of {q.shape[-1]} bytes are not whole {t.name} blocks of {t.type_size} bytes"
        )
    q = np.ascontiguousarray(q)
    n_per_row = q.shape[1] // t.type_size * t.block_size
    return be.dequantize(q, t, n_per_row)

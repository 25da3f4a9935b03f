"""The CuPy backend: ggml block formats computed by CUDA kernels, byte-identical to ggml's C code.

Two levels:
- `quantize` / `dequantize` take and return host numpy arrays (the Backend protocol);
- `quantize_device` / `dequantize_device` run the kernels on device arrays on a given stream and
  copy nothing to or from the host (for the streaming file pipeline).

cupy is imported lazily, so importing this package needs no GPU (tests read its options).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ...qtypes import QType, resolve
from .. import BackendBase, Chunk, Quantized
from . import launch
from . import stream as streaming  # the file pipeline's engine ("stream" names CUDA streams here)
from .device import cupy_module, simulator_enabled

TYPES = launch.TYPES  # every type the backend has: all of the table's


def _check_c_contiguous(name: str, a, dtype) -> None:
    cupy = cupy_module()

    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


class CupyBackend(BackendBase):
    """`device_memory_bytes` bounds the file pipeline's device memory (default: $GPUQUANT_GPU_MEMORY,
    else 2 GiB; strings such as "4G" work); `stream_slots` is how many pieces it keeps in flight;
    `n_threads` host threads copy the file's rows into pinned memory (default: the CPU count, at
    most 8)."""

    name = "cupy"
    runs_on_device = True

    def __init__(self, device_memory_bytes: int | str | None = None,
                 stream_slots: int = streaming.DEFAULT_SLOTS, n_threads: int | None = None) -> None:
        super().__init__()  # notes: said to the user once a run ends (e.g. a reduced memory bound)
        self.device_memory_bytes = streaming.device_memory_setting(device_memory_bytes)
        self.stream_slots = stream_slots
        self.n_threads = n_threads
        # The summary's words for it: the simulator is a debugging mode, never mistaken for a GPU run.
        self._description = "CuPy (CUDA simulator)" if simulator_enabled() else "CuPy"

    @property
    def description(self) -> str:
        return self._description

    def supports(self, qtype: QType) -> bool:
        return resolve(qtype).name in TYPES

    def _type(self, qtype: str | int | QType) -> QType:
        t = resolve(qtype)
        if t.name not in TYPES:
            raise ValueError(f"type {t.name} is not supported yet by the cupy backend")
        return t

    # ------------------------------------------------------------ device arrays

    def quantize_device(self, x, qtype: str | int | QType, imatrix, out, stream=None) -> None:
        """Quantize device float32 [rows, n_per_row] into the device uint8 buffer `out` (rows *
        row_bytes bytes), on `stream` (default: the current stream). Asynchronous: nothing is
        copied to the host and nothing waits for the kernels."""
        cupy = cupy_module()

        t = self._type(qtype)
        _check_c_contiguous("x", x, np.float32)
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D [rows, n_per_row], got shape {x.shape}")
        rows, n_per_row = x.shape
        _check_c_contiguous("out", out, np.uint8)
        if out.nbytes != rows * t.row_bytes(n_per_row):
            raise ValueError(f"out holds {out.nbytes} bytes; {rows} rows of {t.name} need "
                             f"{rows * t.row_bytes(n_per_row)}")
        if imatrix is not None:
            _check_c_contiguous("imatrix", imatrix, np.float32)
            if imatrix.size != n_per_row:
                raise ValueError(f"imatrix has {imatrix.size} values but rows have {n_per_row}")
        stream = stream if stream is not None else cupy.cuda.get_current_stream()
        launch.quantize(x, t, imatrix, out, stream)

    def dequantize_device(self, q, qtype: str | int | QType, n_per_row: int, out, stream=None) -> None:
        """Dequantize the device uint8 buffer `q` (whole rows) into device float32 `out` (rows *
        n_per_row values), on `stream` (default: the current stream). Asynchronous."""
        cupy = cupy_module()

        t = self._type(qtype)
        _check_c_contiguous("q", q, np.uint8)
        _check_c_contiguous("out", out, np.float32)
        row_bytes = t.row_bytes(n_per_row)
        if q.nbytes % row_bytes or out.size != q.nbytes // row_bytes * n_per_row:
            raise ValueError(f"q ({q.nbytes} bytes) and out ({out.size} values) are not the same "
                             f"whole rows of {n_per_row} {t.name} weights")
        stream = stream if stream is not None else cupy.cuda.get_current_stream()
        launch.dequantize(q, t, n_per_row, out, stream)

    # ------------------------------------------------------------ host arrays (Backend protocol)

    def quantize_chunks(self, chunks: Iterable[Chunk], check_finite: bool) -> Iterator[Quantized]:
        """The file pipeline's entry: pinned buffers and CUDA streams overlap reading, copies,
        kernels and writing; float32 rows, the finite check and the error sums are made on the
        device (stream.py). An output's pinned buffer is lent until its release()."""
        return streaming.quantize_chunks(self, chunks, check_finite)

    def quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        try:
            return self._quantize(x, qtype, imatrix)
        except Exception as e:
            error = streaming.gpu_error(e)
            if error is None:
                raise
            raise error from None

    def _quantize(self, x: np.ndarray, qtype: QType, imatrix: np.ndarray | None) -> np.ndarray:
        cupy = cupy_module()

        t = resolve(qtype)
        rows, n_per_row = x.shape
        if rows == 0:
            return np.empty((0, t.row_bytes(n_per_row)), dtype=np.uint8)
        stream = cupy.cuda.get_current_stream()
        x_dev = cupy.asarray(np.ascontiguousarray(x, dtype=np.float32))
        im_dev = None if imatrix is None else cupy.asarray(np.ascontiguousarray(imatrix, dtype=np.float32))
        out = cupy.empty((rows, t.row_bytes(n_per_row)), dtype=cupy.uint8)
        self.quantize_device(x_dev, t, im_dev, out, stream)
        return out.get(stream=stream)

    def dequantize(self, q: np.ndarray, qtype: QType, n_per_row: int) -> np.ndarray:
        cupy = cupy_module()

        t = resolve(qtype)
        rows = q.shape[0]
        if rows == 0:
            return np.empty((0, n_per_row), dtype=np.float32)
        stream = cupy.cuda.get_current_stream()
        q_dev = cupy.asarray(np.ascontiguousarray(q, dtype=np.uint8))
        out = cupy.empty((rows, n_per_row), dtype=cupy.float32)
        self.dequantize_device(q_dev, t, n_per_row, out, stream)
        return out.get(stream=stream)


__all__ = ["CupyBackend"]

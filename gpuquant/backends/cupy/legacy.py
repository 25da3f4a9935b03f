"""Device launchers for F32, F16, BF16 and ggml's legacy block formats (kernels/legacy.cu).

Arrays arrive validated by the backend: x float32 C-contiguous [rows, n_per_row], out uint8
C-contiguous holding rows * row_bytes bytes, imatrix float32 [n_per_row] or None.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .device import cupy_module, get_kernel

SOURCE = "legacy.cu"
THREADS = 128  # per CUDA block; the weighted kernels need ~200 registers a thread
BLOCK = 32  # weights per ggml block for every format here

_BLOCK_KERNELS = {"Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0"}
_ELEMENTWISE_KERNELS = {"F16": "f16", "BF16": "bf16"}
# Q8_0 has no importance-matrix variant in ggml: it ignores the matrix.
_WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")

TYPES = ("F32", *_ELEMENTWISE_KERNELS, *_BLOCK_KERNELS)


def _grid(n_threads: int) -> tuple[int]:
    return ((n_threads + THREADS - 1) // THREADS,)


def quantize_device(x, t: QType, imatrix, out, stream) -> None:
    cupy = cupy_module()

    n = x.size
    if n == 0:
        return
    if t.name == "F32":
        out.data.copy_from_device_async(x.data, x.nbytes, stream)
        return
    if t.name in _ELEMENTWISE_KERNELS:
        fn = get_kernel(SOURCE, f"gq_quantize_{_ELEMENTWISE_KERNELS[t.name]}")
        fn(_grid(n), (THREADS,), (x, out, np.int64(n)), stream=stream)
        return
    suffix = _BLOCK_KERNELS[t.name]
    n_blocks = n // BLOCK
    if imatrix is None or t.name not in _WEIGHTED:
        fn = get_kernel(SOURCE, f"gq_quantize_{suffix}")
        fn(_grid(n_blocks), (THREADS,), (x, out, np.int64(n_blocks)), stream=stream)
        return
    rows, n_per_row = x.shape
    # The scratch row statistics live and die on `stream`, so the pool never hands them to
    # another stream while these kernels may still read them.
    with stream:
        sigma2 = cupy.empty(rows, dtype=cupy.float32)
        get_kernel(SOURCE, "gq_row_sigma2")(
            ((rows + 31) // 32,), (32,), (x, sigma2, np.int64(rows), np.int64(n_per_row)), stream=stream
        )
        get_kernel(SOURCE, f"gq_quantize_{suffix}_imatrix")(
            _grid(n_blocks),
            (THREADS,),
            (x, imatrix, sigma2, out, np.int64(n_blocks), np.int64(n_per_row // BLOCK)),
            stream=stream,
        )
        del sigma2


def dequantize_device(q, t: QType, n_per_row: int, out, stream) -> None:
    n = out.size
    if n == 0:
        return
    if t.name == "F32":
        out.data.copy_from_device_async(q.data, out.nbytes, stream)
        return
    if t.name in _ELEMENTWISE_KERNELS:
        fn = get_kernel(SOURCE, f"gq_dequantize_{_ELEMENTWISE_KERNELS[t.name]}")
        fn(_grid(n), (THREADS,), (q, out, np.int64(n)), stream=stream)
        return
    n_blocks = n // BLOCK
    fn = get_kernel(SOURCE, f"gq_dequantize_{_BLOCK_KERNELS[t.name]}")
    fn(_grid(n_blocks), (THREADS,), (q, out, np.int64(n_blocks)), stream=stream)

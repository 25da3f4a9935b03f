"""Device launchers for ggml's K-quants Q2_K..Q6_K (kernels/kquants.cu).

Arrays arrive validated by the backend: x float32 C-contiguous [rows, n_per_row] (n_per_row a
multiple of 256), out uint8 C-contiguous holding rows * row_bytes bytes, imatrix float32
[n_per_row] or None. Quantizing runs one thread per super-block of 256 weights (ggml's per-row
statistics of the legacy types do not exist here: sigma2 is per super-block); dequantizing runs
one thread per 32 weights.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .device import get_kernel

SOURCE = "kquants.cu"
# Threads per CUDA block. The quantize kernels need 72 to 255 registers a thread; small blocks
# spread a small tensor's few super-blocks over more multiprocessors.
THREADS = 64
SUPERBLOCK = 256
PARTS_PER_SUPERBLOCK = 8  # dequantize: one thread per 32 weights

_KERNELS = {"Q2_K": "q2_k", "Q3_K": "q3_k", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k"}

TYPES = tuple(_KERNELS)


def _grid(n_threads: int) -> tuple[int]:
    return ((n_threads + THREADS - 1) // THREADS,)


def quantize_device(x, t: QType, imatrix, out, stream) -> None:
    n_superblocks = x.size // SUPERBLOCK
    if n_superblocks == 0:
        return
    suffix = _KERNELS[t.name]
    if imatrix is None:
        fn = get_kernel(SOURCE, f"gq_quantize_{suffix}")
        fn(_grid(n_superblocks), (THREADS,), (x, out, np.int64(n_superblocks)), stream=stream)
        return
    superblocks_per_row = x.shape[1] // SUPERBLOCK
    fn = get_kernel(SOURCE, f"gq_quantize_{suffix}_imatrix")
    fn(
        _grid(n_superblocks),
        (THREADS,),
        (x, imatrix, out, np.int64(n_superblocks), np.int64(superblocks_per_row)),
        stream=stream,
    )


def dequantize_device(q, t: QType, n_per_row: int, out, stream) -> None:
    n_parts = out.size // SUPERBLOCK * PARTS_PER_SUPERBLOCK
    if n_parts == 0:
        return
    fn = get_kernel(SOURCE, f"gq_dequantize_{_KERNELS[t.name]}")
    fn(_grid(n_parts), (THREADS,), (q, out, np.int64(n_parts)), stream=stream)

"""Device launchers for IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0 and Q2_0 (kernels/more_types.cu).

Arrays arrive validated by the backend: x float32 C-contiguous [rows, n_per_row], out uint8
C-contiguous holding rows * row_bytes bytes, imatrix float32 [n_per_row] or None. Only IQ4_NL and
IQ4_XS use an importance matrix; ggml ignores it for the others.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .device import get_kernel

SOURCE = "more_types.cu"
# Threads per CUDA block: the IQ4 searches need ~100-150 registers a thread, and IQ4_XS shuffles
# across whole warps, so this must stay a multiple of 32.
THREADS = 128

# type name -> (kernel suffix, weights per thread): most kernels give a thread one ggml block;
# IQ4_XS gives it one 32-weight sub-block and NVFP4 one 16-weight group.
_KERNELS = {
    "IQ4_NL": ("iq4_nl", 32),
    "IQ4_XS": ("iq4_xs", 32),
    "TQ1_0": ("tq1_0", 256),
    "TQ2_0": ("tq2_0", 256),
    "MXFP4": ("mxfp4", 32),
    "NVFP4": ("nvfp4", 16),
    "Q1_0": ("q1_0", 128),
    "Q2_0": ("q2_0", 64),
}
# Dequantization: IQ4_XS per 32-weight sub-block, every other type per block.
_DEQUANT_WEIGHTS_PER_THREAD = {"IQ4_XS": 32}
_WEIGHTED = ("IQ4_NL", "IQ4_XS")

TYPES = tuple(_KERNELS)


def _grid(n_threads: int) -> tuple[int]:
    return ((n_threads + THREADS - 1) // THREADS,)


def quantize_device(x, t: QType, imatrix, out, stream) -> None:
    if x.size == 0:
        return
    suffix, per_thread = _KERNELS[t.name]
    n_units = x.size // per_thread
    if imatrix is None or t.name not in _WEIGHTED:
        fn = get_kernel(SOURCE, f"gq_quantize_{suffix}")
        fn(_grid(n_units), (THREADS,), (x, out, np.int64(n_units)), stream=stream)
        return
    units_per_row = x.shape[1] // per_thread
    fn = get_kernel(SOURCE, f"gq_quantize_{suffix}_imatrix")
    fn(_grid(n_units), (THREADS,), (x, imatrix, out, np.int64(n_units), np.int64(units_per_row)), stream=stream)


def dequantize_device(q, t: QType, n_per_row: int, out, stream) -> None:
    if out.size == 0:
        return
    per_thread = _DEQUANT_WEIGHTS_PER_THREAD.get(t.name, t.block_size)
    n_units = out.size // per_thread
    fn = get_kernel(SOURCE, f"gq_dequantize_{_KERNELS[t.name][0]}")
    fn(_grid(n_units), (THREADS,), (q, out, np.int64(n_units)), stream=stream)

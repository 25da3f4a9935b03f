"""Device launchers for the lattice IQ types (kernels/lattice.cu): IQ3_XXS, IQ3_S, IQ2_S, IQ2_XS,
IQ2_XXS, IQ1_S and IQ1_M, one thread per super-block.

Their lattice tables (code map, neighbour lists, levels, signs) are the NumPy backend's, as
gpuquant.hostkernels.lattice_tables lays them out for the kernels; they are copied to each device
once and stay there. Arrays arrive validated by the backend (see more_types.py).
"""

from __future__ import annotations

import threading

import numpy as np

from ...hostkernels import lattice_tables
from ...qtypes import QType
from .device import cupy_module, get_kernel

SOURCE = "lattice.cu"
# Threads per CUDA block: each thread holds a super-block's weights and search state (~2 KB of
# local memory), so blocks stay small.
THREADS = 64

TYPES = ("IQ3_XXS", "IQ3_S", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_S", "IQ1_M")
_TABLE_ORDER = ("grid_of_code", "neighbour_start", "neighbour_count", "neighbours", "level_index", "values", "ksigns")

_lock = threading.Lock()
_device_tables: dict[tuple[int, str], tuple] = {}


def device_tables(type_name: str) -> tuple:
    """The kernel arguments that carry a type's lattice, on the current device (uploaded once)."""
    cupy = cupy_module()

    key = (cupy.cuda.Device().id, type_name)
    with _lock:
        args = _device_tables.get(key)
        if args is None:
            tables = lattice_tables(type_name)
            arrays = tuple(cupy.asarray(tables[name]) for name in _TABLE_ORDER)
            args = arrays + (np.int32(tables["dims"]), np.int32(tables["bits"]))
            _device_tables[key] = args
    return args


def _grid(n_threads: int) -> tuple[int]:
    return ((n_threads + THREADS - 1) // THREADS,)


def quantize_device(x, t: QType, imatrix, out, stream) -> None:
    if x.size == 0:
        return
    n_blocks = x.size // 256
    tables = device_tables(t.name)
    name = t.name.lower()
    if imatrix is None:
        fn = get_kernel(SOURCE, f"gq_quantize_{name}")
        fn(_grid(n_blocks), (THREADS,), (*tables, x, out, np.int64(n_blocks)), stream=stream)
        return
    fn = get_kernel(SOURCE, f"gq_quantize_{name}_imatrix")
    args = (*tables, x, imatrix, out, np.int64(n_blocks), np.int64(x.shape[1] // 256))
    fn(_grid(n_blocks), (THREADS,), args, stream=stream)


def dequantize_device(q, t: QType, n_per_row: int, out, stream) -> None:
    if out.size == 0:
        return
    n_blocks = out.size // 256
    fn = get_kernel(SOURCE, f"gq_dequantize_{t.name.lower()}")
    fn(_grid(n_blocks), (THREADS,), (*device_tables(t.name), q, out, np.int64(n_blocks)), stream=stream)

"""Every kernel launch of the CuPy backend, driven by one table.

A type's kernels are gq_quantize_<kernel>, gq_quantize_<kernel>_imatrix and gq_dequantize_<kernel>
of kernels/<family>.cu (qtypes.py names both). Each launch gives one thread a `unit` of weights (a
block for most types) and passes the arguments its family's kernels take, in their order:

    quantize             [lattice tables,] x, out, n_units
    quantize, imatrix    [lattice tables,] x, imatrix, [sigma2,] out, n_units, units_per_row
    dequantize           [lattice tables,] q, y, n_units

gq_i64 counts are numpy.int64, as the kernels declare them (the CUDA simulator checks every argument
against the kernel's C signature). F32 has no kernels: it is a device copy. The kernels come from
device.get_kernel: NVRTC for a GPU, or the CUDA simulator's build of the same source.

Arrays arrive validated by the backend: x float32 C-contiguous [rows, n_per_row], out uint8
C-contiguous holding rows * row_bytes bytes, imatrix float32 [n_per_row] or None, q whole rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ...qtypes import QTYPES, QType
from .device import cupy_module, get_kernel


@dataclass(frozen=True)
class FamilyLaunch:
    """How a family's kernels are launched."""

    threads: int  # per CUDA block
    dequantize_unit: int | None = None  # weights per dequantizing thread; None: a block
    row_sigma2: bool = False  # the weighted kernels take the rows' sigma2, from gq_row_sigma2 first
    lattice_tables: bool = False  # every kernel takes the type's lattice tables first


# Threads per CUDA block: the lattice searches hold a super-block's weights and search state a
# thread (up to 150 registers, ~2 KB of local memory), so their blocks stay small; the IQ4_XS and
# K-quant quantizers shuffle across whole warps, so iq4's and kquants' must stay a multiple of 32.
FAMILIES: dict[str, FamilyLaunch] = {
    "floats": FamilyLaunch(threads=128),
    "legacy": FamilyLaunch(threads=128, row_sigma2=True),
    "kquants": FamilyLaunch(threads=64, dequantize_unit=32),
    "lattice": FamilyLaunch(threads=64, lattice_tables=True),
    "iq4": FamilyLaunch(threads=128),
    "ternary": FamilyLaunch(threads=128),
    "fp4": FamilyLaunch(threads=128),
    "lowbit": FamilyLaunch(threads=128),
}
# Weights per quantizing thread where it is not a block: IQ4_XS, Q4_K and Q5_K give a thread one
# 32-weight sub-block and Q2_K, Q3_K and Q6_K one 16-weight sub-block (the 8 or 16 threads of a
# super-block exchange scales by shuffles); IQ4_XS dequantizes the same way; NVFP4 gives a thread
# one 16-weight group.
_QUANTIZE_UNIT = {"IQ4_XS": 32, "Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16, "NVFP4": 16}
_DEQUANTIZE_UNIT = {"IQ4_XS": 32}

TYPES: tuple[str, ...] = tuple(name for name, t in QTYPES.items() if t.family in FAMILIES)

_tables_lock = threading.Lock()
_device_tables: dict[tuple[int, str], tuple] = {}


def quantize_unit(t: QType) -> int:
    return _QUANTIZE_UNIT.get(t.name, t.block_size)


def dequantize_unit(t: QType) -> int:
    return _DEQUANTIZE_UNIT.get(t.name) or FAMILIES[t.family].dequantize_unit or t.block_size


def _grid(n_threads: int, threads: int) -> tuple[int]:
    return ((n_threads + threads - 1) // threads,)


def _source(t: QType) -> str:
    return f"{t.family}.cu"


def lattice_arguments(t: QType) -> tuple:
    """The type's lattice tables as kernel arguments, on the current device (uploaded once): the
    arrays in LatticeTables' field order (the kernels'), then dims and bits as int32."""
    from ...hostkernels import lattice_tables

    cupy = cupy_module()
    key = (cupy.cuda.Device().id, t.name)
    with _tables_lock:
        args = _device_tables.get(key)
        if args is None:
            tables = lattice_tables(t.name)
            *arrays, dims, bits = tables
            args = tuple(cupy.asarray(a) for a in arrays) + (np.int32(dims), np.int32(bits))
            _device_tables[key] = args
    return args


def quantize(x, t: QType, imatrix, out, stream) -> None:
    """out = the type's blocks of x, on `stream` (asynchronous)."""
    if x.size == 0:
        return
    if t.name == "F32":
        out.data.copy_from_device_async(x.data, x.nbytes, stream)
        return
    family = FAMILIES[t.family]
    unit = quantize_unit(t)
    n_units = x.size // unit
    head = lattice_arguments(t) if family.lattice_tables else ()
    grid, block = _grid(n_units, family.threads), (family.threads,)
    if imatrix is None or t.imatrix_use == "ignored":
        get_kernel(_source(t), f"gq_quantize_{t.kernel}")(grid, block, (*head, x, out, np.int64(n_units)),
                                                         stream=stream)
        return
    rows, n_per_row = x.shape
    weighted = get_kernel(_source(t), f"gq_quantize_{t.kernel}_imatrix")
    tail = (out, np.int64(n_units), np.int64(n_per_row // unit))
    if not family.row_sigma2:
        weighted(grid, block, (*head, x, imatrix, *tail), stream=stream)
        return
    # The scratch row statistics live and die on `stream`, so the pool never hands them to another
    # stream while these kernels may still read them.
    cupy = cupy_module()
    with stream:
        sigma2 = cupy.empty(rows, dtype=cupy.float32)
        # one warp per 32 rows (see gq_row_sigma2)
        get_kernel(_source(t), "gq_row_sigma2")(((rows + 31) // 32,), (32,),
                                                (x, sigma2, np.int64(rows), np.int64(n_per_row)), stream=stream)
        weighted(grid, block, (*head, x, imatrix, sigma2, *tail), stream=stream)
        del sigma2


def dequantize(q, t: QType, n_per_row: int, out, stream) -> None:
    """out = the float32 values of the type's blocks q, on `stream` (asynchronous)."""
    if out.size == 0:
        return
    if t.name == "F32":
        out.data.copy_from_device_async(q.data, out.nbytes, stream)
        return
    family = FAMILIES[t.family]
    n_units = out.size // dequantize_unit(t)
    head = lattice_arguments(t) if family.lattice_tables else ()
    get_kernel(_source(t), f"gq_dequantize_{t.kernel}")(_grid(n_units, family.threads), (family.threads,),
                                                       (*head, q, out, np.int64(n_units)), stream=stream)

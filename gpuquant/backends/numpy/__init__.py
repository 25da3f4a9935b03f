"""The NumPy backend: block-vectorized float32 quantizers, byte-identical to ggml's C reference.

One module per family of gpuquant.qtypes.FAMILIES, named after it (floats.py, legacy.py, ...). Each
registers, in one idiom (registry.py), `QUANTIZERS[name](x, imatrix) -> uint8 [rows, row_bytes]` and
`DEQUANTIZERS[name](q, n_per_row) -> float32 [rows, n_per_row]` for every type of its family, with
block sizes and bytes from the type table; inputs arrive validated (float32, C-contiguous, 2-D, rows
a multiple of the block size, imatrix float32 or None). Shared pieces: rounding.py (ggml's float32
arithmetic and in-order reductions), search.py (ggml's scale searches), blocks.py (rows cut into
chunks of blocks).
"""

from __future__ import annotations

import importlib

from ...qtypes import FAMILIES
from .registry import Dequantizer, Quantizer

QUANTIZERS: dict[str, Quantizer] = {}
DEQUANTIZERS: dict[str, Dequantizer] = {}
for _family in FAMILIES:
    _module = importlib.import_module(f"{__name__}.{_family}")
    _module.FAMILY.check_complete()
    QUANTIZERS.update(_module.QUANTIZERS)
    DEQUANTIZERS.update(_module.DEQUANTIZERS)

"""The NumPy backend: block-vectorized float32 quantizers, byte-identical to ggml's C reference.

Each module registers `QUANTIZERS[name](x, imatrix) -> uint8 [rows, row_bytes]` and
`DEQUANTIZERS[name](q, n_per_row) -> float32 [rows, n_per_row]`; inputs arrive validated
(float32, C-contiguous, 2-D, rows a multiple of the block size, imatrix float32 or None).
"""

from __future__ import annotations

from . import floats, fp4, iq4, iq_grid, kquants, legacy, lowbit, ternary

QUANTIZERS: dict = {}
DEQUANTIZERS: dict = {}
for _module in (floats, legacy, kquants, iq4, iq_grid, ternary, fp4, lowbit):
    QUANTIZERS.update(_module.QUANTIZERS)
    DEQUANTIZERS.update(_module.DEQUANTIZERS)

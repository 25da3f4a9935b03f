"""Rows cut into ggml blocks and quantized a cache-sized slice of blocks at a time (shared by the
quantizers whose blocks are independent of each other: kquants, lattice, iq4, ternary, fp4, lowbit).

Blocks never straddle rows, so the blocks of the whole tensor are one [n, block_size] array; a slice
of it may start and end anywhere. With an importance matrix (one row of weights), block b of the
tensor takes the matrix's slice b % blocks_per_row. Weights and bytes per block are the type
table's (the QType a registered quantizer is called with).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...qtypes import QType

# Weights per vectorized step: keeps the temporaries of a slice in cache.
CHUNK_WEIGHTS = 1 << 18

# Fills out uint8 [n, type_size] from float32 blocks [n, block_size] and their weights (the
# imatrix's [n, block_size] slices, or None).
QuantizeBlocks = Callable[[np.ndarray, np.ndarray | None, np.ndarray], None]


def quantize_in_chunks(
    t: QType,
    x: np.ndarray,
    imatrix: np.ndarray | None,
    quantize_blocks: QuantizeBlocks,
    chunk_weights: int = CHUNK_WEIGHTS,
) -> np.ndarray:
    """x float32 [rows, n_per_row] -> uint8 [rows, row_bytes]: quantize_blocks(blocks, weights, out)
    on slices of at most chunk_weights weights (one block at least), out the slice's rows of the
    result; weights is None without an imatrix (pass None for the types that ignore it)."""
    rows, n_per_row = x.shape
    blocks_per_row = n_per_row // t.block_size
    blocks = x.reshape(-1, t.block_size)
    weights = None if imatrix is None else imatrix.reshape(blocks_per_row, t.block_size)
    out = np.empty((blocks.shape[0], t.type_size), dtype=np.uint8)
    step = max(1, chunk_weights // t.block_size)
    for start in range(0, blocks.shape[0], step):
        stop = min(start + step, blocks.shape[0])
        qw = None if weights is None else weights[np.arange(start, stop) % blocks_per_row]
        quantize_blocks(blocks[start:stop], qw, out[start:stop])
    return out.reshape(rows, blocks_per_row * t.type_size)


def split_blocks(t: QType, q: np.ndarray) -> np.ndarray:
    """Quantized rows uint8 [rows, row_bytes] -> their blocks [rows * blocks per row, type_size]."""
    return np.ascontiguousarray(q, dtype=np.uint8).reshape(-1, t.type_size)

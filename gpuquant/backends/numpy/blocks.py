"""Rows cut into ggml blocks and quantized a cache-sized slice of blocks at a time (shared by the
quantizers whose blocks are independent of each other: fp4, lowbit, ternary, iq4, kquants).

Blocks never straddle rows, so the blocks of the whole tensor are one [n, block_size] array; a slice
of it may start and end anywhere. With an importance matrix (one row of weights), block b of the
tensor takes the matrix's slice b % blocks_per_row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Weights per vectorized step: keeps the temporaries of a slice in cache.
CHUNK_WEIGHTS = 1 << 18

# [n, block_size] float32 blocks (and their [n, block_size] weights, or None) -> uint8 [n, type_size]
QuantizeBlocks = Callable[[np.ndarray], np.ndarray]
QuantizeWeightedBlocks = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def quantize_weighted_in_chunks(
    x: np.ndarray,
    imatrix: np.ndarray | None,
    block_size: int,
    type_size: int,
    quantize_blocks: QuantizeWeightedBlocks,
    chunk_weights: int = CHUNK_WEIGHTS,
) -> np.ndarray:
    """x float32 [rows, n_per_row] -> uint8 [rows, row_bytes]: quantize_blocks(blocks, weights) on
    slices of at most chunk_weights weights (one block at least); weights is None without an imatrix."""
    rows, n_per_row = x.shape
    blocks_per_row = n_per_row // block_size
    blocks = x.reshape(-1, block_size)
    weights = None if imatrix is None else imatrix.reshape(blocks_per_row, block_size)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    step = max(1, chunk_weights // block_size)
    for start in range(0, blocks.shape[0], step):
        stop = min(start + step, blocks.shape[0])
        qw = None if weights is None else weights[np.arange(start, stop) % blocks_per_row]
        out[start:stop] = quantize_blocks(blocks[start:stop], qw)
    return out.reshape(rows, blocks_per_row * type_size)


def quantize_in_chunks(
    x: np.ndarray,
    block_size: int,
    type_size: int,
    quantize_blocks: QuantizeBlocks,
    chunk_weights: int = CHUNK_WEIGHTS,
) -> np.ndarray:
    """quantize_weighted_in_chunks for the types that ignore the importance matrix."""
    return quantize_weighted_in_chunks(
        x, None, block_size, type_size, lambda blocks, _: quantize_blocks(blocks), chunk_weights
    )

"""Q1_0 (128-weight blocks, sign bits) and Q2_0 (64-weight blocks, levels -1, 0, 1, 2).

Q1_0 keeps each weight's sign (x >= 0 is +d) with d the block's mean |x|; Q2_0 stores
clamp(roundf(x / amax), -1, 2) + 1 as 2-bit fields with d = amax. Both scales are fp16 and
ggml ignores the importance matrix for both (it only switches to a row-by-row loop).
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .blocks import quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import fp16_bits, fp16_bits_to_f32, in_order_sum, max_abs_skipping_nan, roundf

FAMILY = Family("lowbit")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
# Block layouts: Q1_0 fp16 d, qs[16] (one bit per weight, weight j in bit j % 8 of byte j / 8);
# Q2_0 fp16 d, qs[16] (two bits per weight, weight j in bits 2 (j % 4) of byte j / 4).


def _q1_0_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    # mean |x| summed in weight order, as ggml's loop does
    d = in_order_sum(np.ascontiguousarray(np.abs(blocks).T)) / np.float32(blocks.shape[1])
    out[:, 0:2] = fp16_bits(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = np.packbits(blocks >= 0, axis=1, bitorder="little")


def _q2_0_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    amax = max_abs_skipping_nan(blocks)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv_d = np.where(amax > 0, np.float32(1) / amax, np.float32(0))  # inf for denormal amax
        # `(int)roundf(v) + 1` clamped to [0, 3]: |v| <= 1 unless a NaN or inf is in the block
        # (fmax sends the quiet NaN of a NaN weight to level 0, as INT_MIN + 1 clamps in C)
        shifted = roundf(blocks * inv_d[:, None]) + np.float32(1)
        levels = np.minimum(np.fmax(shifted, np.float32(0)), np.float32(3))
        # 1/d = inf (denormal amax): every v is +-inf or NaN, and the cast gives INT_MIN (x86)
        # for each of them, +inf included: level 0 throughout
        levels[np.isinf(inv_d)] = 0
    fields = levels.astype(np.uint8).reshape(blocks.shape[0], -1, 4)
    out[:, 0:2] = fp16_bits(amax).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = fields[..., 0] | (fields[..., 1] << 2) | (fields[..., 2] << 4) | (fields[..., 3] << 6)


@FAMILY.quantizer("Q1_0")
def quantize_q1_0(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _q1_0_blocks)  # ggml ignores the imatrix


@FAMILY.quantizer("Q2_0")
def quantize_q2_0(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _q2_0_blocks)  # ggml ignores the imatrix


@FAMILY.dequantizer("Q1_0")
def dequantize_q1_0(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    d = fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2"))  # [n, 1]
    signs = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little").astype(bool)
    return np.where(signs, d, -d).reshape(q.shape[0], n_per_row)


@FAMILY.dequantizer("Q2_0")
def dequantize_q2_0(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    d = fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2"))  # [n, 1]
    qs = blocks[:, 2:, None]
    fields = (qs >> (2 * np.arange(4, dtype=np.uint8))) & np.uint8(3)  # [n, 16, 4]
    levels = fields.reshape(blocks.shape[0], t.block_size).astype(np.int32) - 1
    with np.errstate(invalid="ignore"):  # inf scale times a zero level
        return (levels.astype(np.float32) * d).reshape(q.shape[0], n_per_row)

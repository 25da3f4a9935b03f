"""Q1_0 (128-weight blocks, sign bits) and Q2_0 (64-weight blocks, levels -1, 0, 1, 2).

Q1_0 keeps each weight's sign (x >= 0 is +d) with d the block's mean |x|; Q2_0 stores
clamp(roundf(x / amax), -1, 2) + 1 as 2-bit fields with d = amax. Both scales are fp16 and
ggml ignores the importance matrix for both (it only switches to a row-by-row loop).
"""

from __future__ import annotations

import numpy as np

from .blocks import quantize_in_chunks
from .rounding import fp16_bits, fp16_bits_to_f32, in_order_sum, max_abs_skipping_nan, roundf

QK1_0 = 128
QK2_0 = 64
_Q1_0_BYTES = 18  # fp16 d, qs[16] (one bit per weight, weight j in bit j % 8 of byte j / 8)
_Q2_0_BYTES = 18  # fp16 d, qs[16] (two bits per weight, weight j in bits 2 (j % 4) of byte j / 4)

def _q1_0_blocks(blocks: np.ndarray) -> np.ndarray:
    # mean |x| summed in weight order, as ggml's loop does
    d = in_order_sum(np.ascontiguousarray(np.abs(blocks).T)) / np.float32(QK1_0)
    out = np.empty((blocks.shape[0], _Q1_0_BYTES), dtype=np.uint8)
    out[:, 0:2] = fp16_bits(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = np.packbits(blocks >= 0, axis=1, bitorder="little")
    return out


def _q2_0_blocks(blocks: np.ndarray) -> np.ndarray:
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
    fields = levels.astype(np.uint8).reshape(-1, QK2_0 // 4, 4)
    out = np.empty((blocks.shape[0], _Q2_0_BYTES), dtype=np.uint8)
    out[:, 0:2] = fp16_bits(amax).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = fields[..., 0] | (fields[..., 1] << 2) | (fields[..., 2] << 4) | (fields[..., 3] << 6)
    return out


def quantize_q1_0(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(x, QK1_0, _Q1_0_BYTES, _q1_0_blocks)


def quantize_q2_0(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(x, QK2_0, _Q2_0_BYTES, _q2_0_blocks)


def dequantize_q1_0(q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = q.reshape(-1, _Q1_0_BYTES)
    d = fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2"))  # [n, 1]
    signs = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little").astype(bool)
    return np.where(signs, d, -d).reshape(q.shape[0], n_per_row)


def dequantize_q2_0(q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = q.reshape(-1, _Q2_0_BYTES)
    d = fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2"))  # [n, 1]
    qs = blocks[:, 2:, None]
    fields = (qs >> (2 * np.arange(4, dtype=np.uint8))) & np.uint8(3)  # [n, 16, 4]
    levels = fields.reshape(blocks.shape[0], QK2_0).astype(np.int32) - 1
    with np.errstate(invalid="ignore"):  # inf scale times a zero level
        return (levels.astype(np.float32) * d).reshape(q.shape[0], n_per_row)


QUANTIZERS = {"Q1_0": quantize_q1_0, "Q2_0": quantize_q2_0}
DEQUANTIZERS = {"Q1_0": dequantize_q1_0, "Q2_0": dequantize_q2_0}

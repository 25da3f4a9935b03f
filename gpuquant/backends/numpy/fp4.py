"""MXFP4 (32-weight blocks, E8M0 power-of-two scale) and NVFP4 (64-weight blocks, one UE4M3 scale
per 16 weights): E2M1 4-bit floats.

ggml stores the E2M1 levels doubled (kvalues_fp4: 0, 1, 2, 3, 4, 6, 8, 12 and their negatives)
and halves the scale to match. Each weight takes the first level of least |level * d - x|.
ggml ignores the importance matrix for both types.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .blocks import quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import max_abs_skipping_nan

FAMILY = Family("fp4")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
NVFP4_SUB = 16  # weights per UE4M3 scale
# Block layouts: MXFP4 e (E8M0), qs[16]; NVFP4 d[4] (UE4M3, one per NVFP4_SUB weights), qs[32].

KVALUES_FP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
_KVALUES_F32 = KVALUES_FP4.astype(np.float32)


def _e8m0_half_table() -> np.ndarray:
    """ggml_e8m0_to_fp32_half for every byte: 2^(e - 128), denormal for e < 2."""
    e = np.arange(256, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _ue4m3_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 for every byte (already halved, like the doubled levels)."""
    b = np.arange(256)
    exp = (b >> 3) & 0xF
    man = b & 7
    raw = np.where(exp == 0, man * 2.0**-9, (1 + man / 8) * np.exp2(exp - 7.0))
    raw[(b == 0) | (b == 0x7F)] = 0
    return (raw * 0.5).astype(np.float32)  # every entry is exact in float32


_E8M0_HALF = _e8m0_half_table()
_UE4M3 = _ue4m3_table()
_MAGNITUDES = _KVALUES_F32[:8]  # 0, 1, 2, 3, 4, 6, 8, 12
# Midpoints between neighbouring magnitudes, in units of d.
_MIDPOINTS = np.array([0.5, 1.5, 2.5, 3.5, 5, 7, 10], dtype=np.float32)
_FLT_MIN = np.float32(2.0**-126)
_RATIO_LIMIT = np.float32(2.0**20)  # |x| / d below this: rounding never merges two errors
_LEVEL_OVERFLOW = np.float32(2.0**125)  # d from here on: level 8 * d overflows to inf


@np.errstate(over="ignore")  # level * d for the largest E8M0 scales overflows to inf, as in C
def _search_fp4(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """best_index_mxfp4 itself: index (uint8) of the first level with the least |level * d - x|
    (strict comparison, levels in table order), for x [..., m] and d [..., 1], d >= 0.

    Folded on the sign: for x >= 0 a negative level's error (kd + x) is never below index 0's
    error x, and for x < 0 neither is a positive level's (kd + |x|); the negative levels then
    give exactly the errors of the positive ones on |x|, in the same order. So the search runs
    over the 8 magnitudes on |x| and negative x moves a nonzero index to the negative half."""
    ax = np.abs(x)
    index = np.zeros(x.shape, dtype=np.uint8)
    best_err = ax.copy()  # magnitude 0
    err = np.empty_like(ax)
    for i in range(1, 8):
        np.subtract(_MAGNITUDES[i] * d, ax, out=err)
        np.abs(err, out=err)
        better = err < best_err
        np.copyto(index, np.uint8(i), where=better)
        np.copyto(best_err, err, where=better)
    np.add(index, np.uint8(8), out=index, where=(x < 0) & (index > 0))
    return index


@np.errstate(over="ignore")  # midpoint * d and 2^20 * d for the largest E8M0 scales
def _nearest_fp4(x: np.ndarray, d: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """_search_fp4's result, mostly by counting midpoints: for normal d with at most 4
    significant bits (every level * d and midpoint * d exact and finite) and |x| < 2^20 d, both
    errors are exact near each midpoint (Sterbenz) and clearly apart elsewhere, and ties keep the
    smaller magnitude, so the magnitude index is the number of midpoints strictly below |x| / d.
    Blocks outside those bounds (d = 0 among them, and MXFP4's e = 253 whose top levels overflow
    to an infinite error) take the literal search."""
    ax = np.abs(x)
    index = np.zeros(x.shape, dtype=np.uint8)
    for midpoint in _MIDPOINTS:
        np.add(index, ax > midpoint * d, out=index)
    np.add(index, np.uint8(8), out=index, where=(x < 0) & (index > 0))
    unproven = (d[..., 0] < _FLT_MIN) | (d[..., 0] >= _LEVEL_OVERFLOW) | (amax >= _RATIO_LIMIT * d[..., 0])
    if unproven.any():
        index[unproven] = _search_fp4(x[unproven], d[unproven])
    return index


def _pack_halves(index: np.ndarray) -> np.ndarray:
    """[..., 2h] level indices -> [..., h] bytes: first half in low nibbles, second half high."""
    h = index.shape[-1] // 2
    return index[..., :h] | (index[..., h:] << np.uint8(4))


def _floor_log2f(amax: np.ndarray) -> np.ndarray:
    """floorf(log2f(amax)) with log2f rounded to float32 (so values just under 2^k give k, as
    in C), computed through float64."""
    return np.floor(np.log2(amax.astype(np.float64)).astype(np.float32))


def _mxfp4_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    amax = max_abs_skipping_nan(blocks)
    exponent = _floor_log2f(np.where(amax > 0, amax, np.float32(1))) + np.float32(125)  # -2 + 127
    # (uint8_t) of the float, compiled as a cast to int (x86: INT_MIN for inf, low byte 0) that
    # keeps the low byte: in range for any normal amax, wrapping for subnormal ones
    exponent = np.where(np.isfinite(exponent), exponent, np.float32(0))
    e = np.where(amax > 0, exponent.astype(np.int32) & 0xFF, 0).astype(np.uint8)
    d = _E8M0_HALF[e][:, None]
    out[:, 0] = e
    out[:, 1:] = _pack_halves(_nearest_fp4(blocks, d, amax))


def fp32_to_ue4m3(v: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_ue4m3: 0 for v <= 0 or NaN, saturates at 0x7E, rounds half up on the
    mantissa, subnormals via (int)(v * 512 + 0.5) in float32."""
    v = np.asarray(v, dtype=np.float32)
    positive = v > 0
    v = np.where(v > np.float32(448), np.float32(448), np.where(positive, v, np.float32(0)))
    bits = v.view(np.uint32).astype(np.int64)
    exp = ((bits >> 23) & 0xFF) - 127 + 7
    man = ((bits >> 20) & 7) + ((bits >> 19) & 1)
    carry = man > 7
    man = np.where(carry, 0, man)
    exp = np.where(carry, exp + 1, exp)
    normal = np.where(exp >= 15, 0x7E, (exp << 3) | man)
    sub_man = np.minimum((v * np.float32(512) + np.float32(0.5)).astype(np.int64), 7)
    subnormal = np.where(sub_man < 1, 0, sub_man)
    # the subnormal branch is taken on the exponent before any mantissa carry
    taken_subnormal = ((bits >> 23) & 0xFF) - 127 + 7 <= 0
    code = np.where(taken_subnormal, subnormal, normal)
    return np.where(positive, code, 0).astype(np.uint8)


def _nvfp4_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    subs = blocks.reshape(-1, NVFP4_SUB)
    amax = max_abs_skipping_nan(subs)
    ue = fp32_to_ue4m3(amax / np.float32(6))
    d = _UE4M3[ue][:, None]
    packed = _pack_halves(_nearest_fp4(subs, d, amax))  # [n_sub_total, 8]
    n = blocks.shape[0]
    out[:, 0:4] = ue.reshape(n, 4)
    out[:, 4:] = packed.reshape(n, 32)


@FAMILY.quantizer("MXFP4")
def quantize_mxfp4(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _mxfp4_blocks)  # ggml ignores the imatrix


@FAMILY.quantizer("NVFP4")
def quantize_nvfp4(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _nvfp4_blocks)  # ggml ignores the imatrix


def _unpack_halves(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1)


@FAMILY.dequantizer("MXFP4")
@np.errstate(over="ignore")  # the largest E8M0 scales overflow, as in C
def dequantize_mxfp4(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    d = _E8M0_HALF[blocks[:, 0]][:, None]
    return (_KVALUES_F32[_unpack_halves(blocks[:, 1:])] * d).reshape(q.shape[0], n_per_row)


@FAMILY.dequantizer("NVFP4")
def dequantize_nvfp4(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    d = _UE4M3[blocks[:, 0:4]][:, :, None]  # [n, 4, 1]
    qs = blocks[:, 4:].reshape(-1, 4, 8)
    return (_KVALUES_F32[_unpack_halves(qs)] * d).reshape(q.shape[0], n_per_row)

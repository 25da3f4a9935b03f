"""K-quants Q2_K..Q6_K (super-blocks of 256): quantizers and dequantizers, byte-identical to ggml.

ggml's quantize_qN_K runs quantize_row_qN_K_ref without an importance matrix and
quantize_row_qN_K_impl with one; each has its own way to find the sub-block scales (the
`_plain_scales` and `_imatrix_scales` functions below). Both are reproduced for whole arrays of
super-blocks at once: the scale searches (search.py) are vectorized across
sub-blocks, and the super-block steps (quantizing the sub-block scales to 4, 6 or 8 bits,
storing fp16 super-scales, requantizing with the stored scales, packing) across super-blocks.

Byte layouts (ggml-common.h), per super-block:
  Q2_K  scales[16] (4-bit scale | 4-bit min << 4), qs[64] (2 bits), d fp16, dmin fp16   = 84
  Q3_K  hmask[32] (3rd bit), qs[64] (2 bits), scales[12] (16 x 6 bits), d fp16         = 110
  Q4_K  d fp16, dmin fp16, scales[12] (8 scales + 8 mins, 6 bits), qs[128] (4 bits)     = 144
  Q5_K  d fp16, dmin fp16, scales[12], qh[32] (5th bit), qs[128] (low 4 bits)           = 176
  Q6_K  ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d fp16             = 210
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...qtypes import QType
from .blocks import quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import GROUP_MAX_EPS, first_max_abs, fp16_bits, fp16_bits_to_f32, in_order_sum, nearest_int_exact
from .search import make_q3_quants, make_qkx3_quants, make_qp_quants, make_qx_quants, transposed

FAMILY = Family("kquants")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
QK_K = 256  # ggml's super-block (every K-quant's block size): its formulas divide by it
F32 = np.float32
_ZERO = F32(0.0)

# Super-blocks per chunk: bounds the temporaries (a few MiB each) whatever the tensor size.
_CHUNK_SUPERBLOCKS = 4096
# ggml computes through inf and NaN silently (e.g. scales that overflow fp16): so do we.
_QUIET = {"divide": "ignore", "invalid": "ignore", "over": "ignore", "under": "ignore"}


# ---------------------------------------------------------------------------------------------
# Shared steps
# ---------------------------------------------------------------------------------------------


# (blocks [n, 256], imatrix slices or None) -> the byte fields [n, k] of the layout, in its order
SuperBlocks = Callable[[np.ndarray, np.ndarray | None], list[np.ndarray]]


def _quantize_rows(t: QType, x: np.ndarray, imatrix: np.ndarray | None, superblocks_fn: SuperBlocks) -> np.ndarray:
    """Split rows into super-blocks, quantize them chunk by chunk, return uint8 [rows, row_bytes].
    superblocks_fn(blocks, qw) gives the byte fields of the block layout, in its order."""
    x = np.ascontiguousarray(x, dtype=F32)
    imatrix = None if imatrix is None else np.asarray(imatrix, dtype=F32)

    def fill(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
        np.concatenate(superblocks_fn(blocks, qw), axis=1, out=out)

    with np.errstate(**_QUIET):
        return quantize_in_chunks(t, x, imatrix, fill, _CHUNK_SUPERBLOCKS * QK_K)


def _dequantize_rows(t: QType, q: np.ndarray, n_per_row: int, values_fn: Callable) -> np.ndarray:
    """uint8 [rows, row_bytes] -> float32 [rows, n_per_row], super-block by super-block."""
    blocks = split_blocks(t, q)
    with np.errstate(**_QUIET):
        y = values_fn(blocks)
    return y.astype(F32, copy=False).reshape(q.shape[0], n_per_row)


def _running_max(values: np.ndarray) -> np.ndarray:
    """C's `m = 0; for j: if (v[j] > m) m = v[j];` over the last axis."""
    result = np.zeros(values.shape[0], dtype=F32)
    for j in range(values.shape[1]):
        result = np.where(values[:, j] > result, values[:, j], result)
    return result


def _fp16_bytes(bits: np.ndarray) -> np.ndarray:
    """fp16 bit patterns [nb] -> little-endian uint8 [nb, 2]."""
    return np.ascontiguousarray(bits.astype("<u2")).view(np.uint8).reshape(-1, 2)


def _fp16_from_bytes(two_bytes: np.ndarray) -> np.ndarray:
    return fp16_bits_to_f32(np.ascontiguousarray(two_bytes).view("<u2").reshape(-1))


def _imatrix_weights(sub: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """ggml's imatrix weights qw * sqrtf(sigma2 + x*x), sigma2 given per super-block."""
    per_superblock = sub.shape[0] // sigma2.shape[0]
    return qw.reshape(sub.shape) * np.sqrt(np.repeat(sigma2, per_superblock)[:, None] + sub * sub)


def _requantize(sub, d, offset, levels, lo: int, hi: int, bias: int) -> np.ndarray:
    """L = clamp(nearest_int((x + offset)/d), lo, hi) + bias, per sub-block row with its stored d.

    Rows whose d is 0 keep the search's levels, as ggml's `if (!d) continue;` does.
    sub: float32 [nsub, n]; d, offset: float32 [nsub] (offset None: x/d); levels: uint8 [nsub, n].
    """
    value = sub / d[:, None] if offset is None else (sub + offset[:, None]) / d[:, None]
    fresh = nearest_int_exact(value)
    np.clip(fresh, lo, hi, out=fresh)
    fresh += bias
    fresh = fresh.astype(np.uint8)
    keep = d == _ZERO
    if keep.any():
        fresh[keep] = levels[keep]
    return fresh


def _pack_2bit(levels: np.ndarray) -> np.ndarray:
    """[nb, 256] values 0..3 -> qs [nb, 64]: byte 32h+l holds L[128h + 32k + l] at bits 2k..2k+1."""
    quads = levels.reshape(-1, 2, 4, 32)
    packed = quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)
    return packed.reshape(-1, 64)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """qs [nb, 64] -> [nb, 256] values 0..3 (inverse of _pack_2bit)."""
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _as_byte(values: np.ndarray) -> np.ndarray:
    """C's store of an int into uint8_t (keeps the low 8 bits)."""
    return (values.astype(np.int32) & 0xFF).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Q2_K: 16 sub-blocks of 16, 4-bit scale and min each
# ---------------------------------------------------------------------------------------------


def _q2_k_plain_scales(sub: np.ndarray, nb: int):
    """quantize_row_q2_K_ref: (scale bytes, d bits, dmin bits, levels)."""
    scales, mins, levels = make_qkx3_quants(sub, 3, np.abs(sub), -0.5, 0.1, 15, True)  # ggml: make_qkx2_quants
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale, max_min = _running_max(scales), _running_max(mins)
    q4scale = F32(15.0)
    ls = np.where((max_scale > _ZERO)[:, None], nearest_int_exact((q4scale / max_scale)[:, None] * scales), 0)
    lm = np.where((max_min > _ZERO)[:, None], nearest_int_exact((q4scale / max_min)[:, None] * mins), 0)
    scale_bytes = _as_byte((ls & 0xFF) | (lm << 4))
    d_bits = np.where(max_scale > _ZERO, fp16_bits(max_scale / q4scale), 0)
    dmin_bits = np.where(max_min > _ZERO, fp16_bits(max_min / q4scale), 0)
    return scale_bytes, d_bits, dmin_bits, levels


def _q2_k_imatrix_scales(blocks: np.ndarray, sub: np.ndarray, qw: np.ndarray, nb: int):
    """quantize_row_q2_K_impl: (scale bytes, d bits, dmin bits, levels)."""
    sigma2 = in_order_sum(transposed(blocks * blocks)) / F32(QK_K)
    weights = _imatrix_weights(sub, qw, sigma2)
    sw = in_order_sum(transposed(weights)).reshape(nb, 16)
    scales, mins, levels = make_qkx3_quants(sub, 3, weights, -0.9, 0.05, 36, False)
    d_block, ls = make_qp_quants(scales.reshape(nb, 16), 15, sw)
    m_block, lm = make_qp_quants(mins.reshape(nb, 16), 15, sw)
    scale_bytes = _as_byte(ls.astype(np.int32) | (lm.astype(np.int32) << 4))
    return scale_bytes, fp16_bits(d_block), fp16_bits(m_block), levels


def _q2_k_superblocks(blocks: np.ndarray, qw: np.ndarray | None) -> list[np.ndarray]:
    nb = blocks.shape[0]
    sub = blocks.reshape(nb * 16, 16)
    if qw is None:
        scale_bytes, d_bits, dmin_bits, levels = _q2_k_plain_scales(sub, nb)
    else:
        scale_bytes, d_bits, dmin_bits, levels = _q2_k_imatrix_scales(blocks, sub, qw, nb)
    d_bits, dmin_bits = d_bits.astype(np.uint16), dmin_bits.astype(np.uint16)
    sub_d = (fp16_bits_to_f32(d_bits)[:, None] * (scale_bytes & 0xF).astype(F32)).reshape(-1)
    sub_m = (fp16_bits_to_f32(dmin_bits)[:, None] * (scale_bytes >> 4).astype(F32)).reshape(-1)
    levels = _requantize(sub, sub_d, sub_m, levels, 0, 3, 0).reshape(nb, QK_K)
    return [scale_bytes, _pack_2bit(levels), _fp16_bytes(d_bits), _fp16_bytes(dmin_bits)]


def _q2_k_values(blocks: np.ndarray) -> np.ndarray:
    scale_bytes, qs = blocks[:, 0:16], blocks[:, 16:80]
    d, dmin = _fp16_from_bytes(blocks[:, 80:82]), _fp16_from_bytes(blocks[:, 82:84])
    dl = d[:, None] * (scale_bytes & 0xF).astype(F32)
    ml = dmin[:, None] * (scale_bytes >> 4).astype(F32)
    levels = _unpack_2bit(qs).reshape(-1, 16, 16).astype(F32)
    return dl[:, :, None] * levels - ml[:, :, None]


@FAMILY.quantizer("Q2_K")
def quantize_q2_k(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_rows(t, x, imatrix, _q2_k_superblocks)


@FAMILY.dequantizer("Q2_K")
def dequantize_q2_k(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_rows(t, q, n_per_row, _q2_k_values)


# ---------------------------------------------------------------------------------------------
# Q3_K: 16 sub-blocks of 16, signed 6-bit scales, levels -4..3
# ---------------------------------------------------------------------------------------------


def _pack_scales_q3(values: np.ndarray) -> np.ndarray:
    """16 values 0..63 -> 12 bytes: low nibbles of j and j+8 in byte j%8, top 2 bits in 8 + j%4."""
    values = values.astype(np.int32)
    packed = (values[:, 0:8] & 0xF) | ((values[:, 8:16] & 0xF) << 4)
    top = values >> 4
    high = top[:, 0:4] | (top[:, 4:8] << 2) | (top[:, 8:12] << 4) | (top[:, 12:16] << 6)
    return _as_byte(np.concatenate([packed, high], axis=1))


def _unpack_scales_q3(packed: np.ndarray) -> np.ndarray:
    """12 bytes -> the 16 signed scales (stored value - 32) as int32 [nb, 16]."""
    low = np.concatenate([packed[:, 0:8] & 0xF, packed[:, 0:8] >> 4], axis=1).astype(np.int32)
    high = np.concatenate([(packed[:, 8:12] >> (2 * g)) & 3 for g in range(4)], axis=1).astype(np.int32)
    return (low | (high << 4)) - 32


def _q3_k_plain_scales(sub: np.ndarray, nb: int):
    """quantize_row_q3_K_ref: (packed scales, d bits, levels 0..7)."""
    scales, levels = make_q3_quants(sub, 4)
    scales = scales.reshape(nb, 16)
    _, max_scale = first_max_abs(scales.T)
    iscale = F32(-32.0) / max_scale
    stored = nearest_int_exact(iscale[:, None] * scales)
    stored = ((stored + 128) & 0xFF) - 128  # the int8_t store
    packed = _pack_scales_q3(np.clip(stored, -32, 31) + 32)
    nonzero = max_scale != _ZERO
    packed[~nonzero] = 0
    d_bits = np.where(nonzero, fp16_bits(F32(1.0) / iscale), 0)
    return packed, d_bits, levels


def _q3_k_imatrix_scales(blocks: np.ndarray, sub: np.ndarray, qw: np.ndarray, nb: int):
    """quantize_row_q3_K_impl: (packed scales, d bits, levels 0..7)."""
    sigma2 = (F32(2.0) * in_order_sum(transposed(blocks * blocks))) / F32(QK_K)
    weights = _imatrix_weights(sub, qw, sigma2)
    sw = in_order_sum(transposed(weights)).reshape(nb, 16)
    scales, levels = make_qx_quants(sub, 4, 1, weights)
    d_block, scale_levels = make_qx_quants(scales.reshape(nb, 16), 32, 1, sw)
    return _pack_scales_q3(scale_levels), fp16_bits(d_block), levels


def _q3_k_superblocks(blocks: np.ndarray, qw: np.ndarray | None) -> list[np.ndarray]:
    nb = blocks.shape[0]
    sub = blocks.reshape(nb * 16, 16)
    if qw is None:
        packed_scales, d_bits, levels = _q3_k_plain_scales(sub, nb)
    else:
        packed_scales, d_bits, levels = _q3_k_imatrix_scales(blocks, sub, qw, nb)
    d_bits = d_bits.astype(np.uint16)
    sub_d = (fp16_bits_to_f32(d_bits)[:, None] * _unpack_scales_q3(packed_scales).astype(F32)).reshape(-1)
    levels = _requantize(sub, sub_d, None, levels, -4, 3, 4).reshape(nb, QK_K)
    # bit 2 of L[32k + m] goes to bit k of hmask[m]; the low 2 bits to qs
    high = (levels >> 2).reshape(nb, 8, 32)
    hmask = np.zeros((nb, 32), dtype=np.uint8)
    for k in range(8):
        hmask |= high[:, k] << k
    return [hmask, _pack_2bit(levels & 3), packed_scales, _fp16_bytes(d_bits)]


def _q3_k_values(blocks: np.ndarray) -> np.ndarray:
    hmask, qs, packed_scales = blocks[:, 0:32], blocks[:, 32:96], blocks[:, 96:108]
    d = _fp16_from_bytes(blocks[:, 108:110])
    dl = d[:, None] * _unpack_scales_q3(packed_scales).astype(F32)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((hmask[:, None, :] >> shifts) & 1).reshape(-1, QK_K)
    levels = _unpack_2bit(qs).astype(np.int32) - np.where(high != 0, 0, 4)
    return dl[:, :, None] * levels.reshape(-1, 16, 16).astype(F32)


@FAMILY.quantizer("Q3_K")
def quantize_q3_k(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_rows(t, x, imatrix, _q3_k_superblocks)


@FAMILY.dequantizer("Q3_K")
def dequantize_q3_k(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_rows(t, q, n_per_row, _q3_k_values)


# ---------------------------------------------------------------------------------------------
# Q4_K and Q5_K: 8 sub-blocks of 32, 6-bit scale and min each (K_SCALE_SIZE = 12 bytes)
# ---------------------------------------------------------------------------------------------


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """ggml's packing of 8 scales and 8 mins (6 bits meant) into 12 bytes, with C's uint8 truncation.

    Bytes 0-3: scale j, bytes 4-7: min j (j < 4), each with the top 2 bits of scale/min j+4 in
    bits 6-7; bytes 8-11: low nibble of scale j+4 | low nibble of min j+4 << 4.
    """
    ls, lm = ls.astype(np.int32), lm.astype(np.int32)
    scales_low = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    mins_low = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    nibbles_high = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return _as_byte(np.concatenate([scales_low, mins_low, nibbles_high], axis=1))


def _unpack_scales_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's get_scale_min_k4 for j = 0..7: (scales, mins) uint8 [nb, 8]."""
    low, mid, high = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([low & 63, (high & 0xF) | ((low >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (high >> 4) | ((mid >> 6) << 4)], axis=1)
    return scales, mins


def _k4_plain_scales(sub: np.ndarray, nb: int, nmax: int, search: tuple[float, float, int]):
    """quantize_row_q4_K_ref / q5_K_ref: (ls, lm, d bits, dmin bits, levels)."""
    subt = np.ascontiguousarray(sub.T)
    av_x = np.sqrt(in_order_sum(subt * subt) / F32(32.0))
    weights_t = np.abs(subt) + av_x
    rmin, rdelta, nstep = search
    # ggml: make_qkx2_quants
    scales, mins, levels = make_qkx3_quants(subt.T, nmax, weights_t.T, rmin, rdelta, nstep, False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale, max_min = _running_max(scales), _running_max(mins)
    inv_scale = np.where(max_scale > _ZERO, F32(63.0) / max_scale, _ZERO)
    inv_min = np.where(max_min > _ZERO, F32(63.0) / max_min, _ZERO)
    ls = np.minimum(nearest_int_exact(inv_scale[:, None] * scales) & 0xFF, 63)
    lm = np.minimum(nearest_int_exact(inv_min[:, None] * mins) & 0xFF, 63)
    return ls, lm, fp16_bits(max_scale / F32(63.0)), fp16_bits(max_min / F32(63.0)), levels


def _k4_imatrix_scales(blocks: np.ndarray, sub: np.ndarray, qw: np.ndarray, nb: int, nmax: int):
    """quantize_row_q4_K_impl / q5_K_impl: (ls, lm, d bits, dmin bits, levels)."""
    sigma2 = (F32(2.0) * in_order_sum(transposed(blocks * blocks))) / F32(QK_K)
    weights = _imatrix_weights(sub, qw, sigma2)
    sw = in_order_sum(transposed(weights)).reshape(nb, 8)
    scales, mins, levels = make_qkx3_quants(sub, nmax, weights, -0.9, 0.05, 36, False)
    d_block, ls = make_qp_quants(scales.reshape(nb, 8), 63, sw)
    m_block, lm = make_qp_quants(mins.reshape(nb, 8), 63, sw)
    return ls, lm, fp16_bits(d_block), fp16_bits(m_block), levels


def _k4_scales_and_levels(blocks: np.ndarray, qw: np.ndarray | None, nmax: int, search, clamp_imatrix: bool):
    """The part Q4_K and Q5_K share: (d bits, dmin bits, packed scales [nb, 12], L [nb, 256])."""
    nb = blocks.shape[0]
    sub = blocks.reshape(nb * 8, 32)
    if qw is None:
        ls, lm, d_bits, dmin_bits, levels = _k4_plain_scales(sub, nb, nmax, search)
    else:
        ls, lm, d_bits, dmin_bits, levels = _k4_imatrix_scales(blocks, sub, qw, nb, nmax)
        if clamp_imatrix:  # Q5_K's impl clamps the stored 6-bit values to 63, Q4_K's does not
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    packed_scales = _pack_scales_k4(ls, lm)
    sc, m = _unpack_scales_k4(packed_scales)
    sub_d = (fp16_bits_to_f32(d_bits)[:, None] * sc.astype(F32)).reshape(-1)
    sub_m = (fp16_bits_to_f32(dmin_bits)[:, None] * m.astype(F32)).reshape(-1)
    levels = _requantize(sub, sub_d, sub_m, levels, 0, nmax, 0).reshape(nb, QK_K)
    return d_bits, dmin_bits, packed_scales, levels


def _k4_values(blocks: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """d*sc*L - dmin*m per 32-element sub-block, levels float32 [nb, 256]."""
    d, dmin = _fp16_from_bytes(blocks[:, 0:2]), _fp16_from_bytes(blocks[:, 2:4])
    sc, m = _unpack_scales_k4(blocks[:, 4:16])
    d1 = d[:, None] * sc.astype(F32)
    m1 = dmin[:, None] * m.astype(F32)
    return d1[:, :, None] * levels.reshape(-1, 8, 32) - m1[:, :, None]


def _q4_k_superblocks(blocks: np.ndarray, qw: np.ndarray | None) -> list[np.ndarray]:
    d_bits, dmin_bits, packed_scales, levels = _k4_scales_and_levels(
        blocks, qw, 15, (-1.0, 0.1, 20), clamp_imatrix=False
    )
    # L[64g + 32h + l] is nibble h of qs[32g + l]
    pairs = levels.reshape(-1, 4, 2, 32)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    return [_fp16_bytes(d_bits), _fp16_bytes(dmin_bits), packed_scales, qs]


def _q4_k_values(blocks: np.ndarray) -> np.ndarray:
    qs = blocks[:, 16:144].reshape(-1, 4, 1, 32)
    nibbles = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0xF
    return _k4_values(blocks, nibbles.reshape(-1, QK_K).astype(F32))


@FAMILY.quantizer("Q4_K")
def quantize_q4_k(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_rows(t, x, imatrix, _q4_k_superblocks)


@FAMILY.dequantizer("Q4_K")
def dequantize_q4_k(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_rows(t, q, n_per_row, _q4_k_values)


def _q5_k_superblocks(blocks: np.ndarray, qw: np.ndarray | None) -> list[np.ndarray]:
    d_bits, dmin_bits, packed_scales, levels = _k4_scales_and_levels(
        blocks, qw, 31, (-0.5, 0.1, 15), clamp_imatrix=True
    )
    # L[64g + 32h + l]: low 4 bits in nibble h of qs[32g + l], 5th bit at bit 2g+h of qh[l]
    parts = levels.reshape(-1, 4, 2, 32)
    qs = ((parts[:, :, 0] & 0xF) | ((parts[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    qh = np.zeros((levels.shape[0], 32), dtype=np.uint8)
    for g in range(4):
        for h in range(2):
            qh |= (parts[:, g, h] >> 4) << (2 * g + h)
    return [_fp16_bytes(d_bits), _fp16_bytes(dmin_bits), packed_scales, qh, qs]


def _q5_k_values(blocks: np.ndarray) -> np.ndarray:
    qh, qs = blocks[:, 16:48], blocks[:, 48:176]
    low = (qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0xF
    high = (qh.reshape(-1, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)) & 1
    return _k4_values(blocks, (low + (high << 4)).reshape(-1, QK_K).astype(F32))


@FAMILY.quantizer("Q5_K")
def quantize_q5_k(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_rows(t, x, imatrix, _q5_k_superblocks)


@FAMILY.dequantizer("Q5_K")
def dequantize_q5_k(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_rows(t, q, n_per_row, _q5_k_values)


# ---------------------------------------------------------------------------------------------
# Q6_K: 16 sub-blocks of 16, int8 scales, levels -32..31
# ---------------------------------------------------------------------------------------------


def _q6_k_superblocks(blocks: np.ndarray, qw: np.ndarray | None) -> list[np.ndarray]:
    nb = blocks.shape[0]
    sub = blocks.reshape(nb * 16, 16)
    # ref and impl differ only here: with an imatrix its raw values weigh make_qx_quants' search
    scales, levels = make_qx_quants(sub, 32, 1, None if qw is None else qw.reshape(sub.shape))
    scales = scales.reshape(nb, 16)
    amax_scale, max_scale = first_max_abs(scales.T)
    empty = amax_scale < GROUP_MAX_EPS  # ggml writes an all-zero block
    iscale = F32(-128.0) / max_scale
    d_bits = np.where(empty, 0, fp16_bits(F32(1.0) / iscale)).astype(np.uint16)
    stored = np.minimum(nearest_int_exact(iscale[:, None] * scales), 127)
    sc = np.where(empty[:, None], 0, ((stored + 128) & 0xFF) - 128).astype(np.int8)  # the int8_t store
    sub_d = (fp16_bits_to_f32(d_bits)[:, None] * sc.astype(F32)).reshape(-1)
    levels = _requantize(sub, sub_d, None, levels, -32, 31, 32).reshape(nb, QK_K)
    levels[empty] = 0

    # per half h, L[128h + 32k + l]: low nibble in ql[64h + 32(k%2) + l] (bits 4(k//2)),
    # top 2 bits in qh[32h + l] (bits 2k)
    quads = levels.reshape(nb, 2, 4, 32)
    low = quads & 0xF
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    top = quads >> 4
    qh = top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)
    return [ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8), _fp16_bytes(d_bits)]


def _q6_k_values(blocks: np.ndarray) -> np.ndarray:
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # [half, first/second 32 bytes, l]
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(F32)
    d = _fp16_from_bytes(blocks[:, 208:210])
    nibbles = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    tops = (qh >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    levels = (nibbles | (tops << 4)).astype(np.int32) - 32
    scale = (d[:, None] * sc)[:, :, None]  # C: d * sc[is] * q is (d*sc)*q
    return scale * levels.reshape(-1, 16, 16).astype(F32)


@FAMILY.quantizer("Q6_K")
def quantize_q6_k(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _quantize_rows(t, x, imatrix, _q6_k_superblocks)


@FAMILY.dequantizer("Q6_K")
def dequantize_q6_k(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return _dequantize_rows(t, q, n_per_row, _q6_k_values)


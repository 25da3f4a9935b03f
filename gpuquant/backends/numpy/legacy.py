"""Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: ggml's 32-weight block formats, byte-identical to ggml.

Without an importance matrix each type follows ggml's quantize_row_*_ref; with one, Q4_0..Q5_1
follow quantize_row_*_impl (a weighted scale search) and Q8_0 ignores it, as ggml does.

The reference paths run two ways that give the same bytes:
- a fast path for ordinary blocks. It moves each chunk of blocks into a transposed layout,
  [16, 2*nblocks] (row r holds weights 2r and 2r+1 of every block, moved as one 8-byte unit), so
  that every step is an operation on long contiguous vectors, and moves only the packed words
  back. Block statistics come from np.maximum/np.minimum, which agree with ggml's sequential
  comparisons whenever the winning value is unique up to sign of zero and there is no NaN.
- an exact path, a plain loop over the 32 weights vectorized across blocks, which reproduces
  ggml's comparison order and its C casts of NaN and infinities. The fast path hands it every
  block where np.maximum could disagree with C (ties in magnitude, zero extremes, NaN or
  infinite values, scales whose reciprocal overflows).

Block layouts (ggml-common.h), little-endian: Q4_0 = d fp16, qs[16]; Q4_1 = d, m fp16, qs[16];
Q5_0 = d fp16, qh u32, qs[16]; Q5_1 = d, m fp16, qh u32, qs[16]; Q8_0 = d fp16, qs int8[32].
qs[j] holds weight j in its low nibble and weight j+16 in its high nibble; bit j of qh is bit 4
of weight j's 5-bit level.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .blocks import split_blocks
from .registry import Family
from .rounding import first_max_abs, fp16_bits, fp16_bits_to_f32, in_order_sum, max_abs_taking_nan, roundf
from .search import make_qkx3_quants, make_qx_quants

FAMILY = Family("legacy")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers

# Blocks per chunk on the fast path: large enough to amortize numpy call overhead, small
# enough that a chunk's temporaries stay near the cache.
_CHUNK_BLOCKS = 8192
# Rows per chunk on the imatrix paths (the search functions chunk their blocks themselves).
_IMATRIX_CHUNK_WEIGHTS = 1 << 20

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
# The float just below 0.5: x + copysign(it, x), truncated, is C's roundf for every float32.
_BELOW_HALF_BITS = np.uint32(0x3EFFFFFF)
_SIGN_BIT = np.uint32(0x80000000)


# --------------------------------------------------------------------------------------------
# C semantics shared by both paths
# --------------------------------------------------------------------------------------------


def _reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """C: `id = d ? 1.0f/d : 0.0f`."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, _F1 / d, _F0).astype(np.float32, copy=False)


def _c_cast_to_byte(f: np.ndarray) -> np.ndarray:
    """The low byte of a C cast of float to int8_t/uint8_t as x86 compilers emit it.

    cvttss2si truncates toward zero to int32 and gives INT32_MIN (low byte 0) for NaN and
    out-of-range values; the narrow cast then keeps the low byte.
    """
    with np.errstate(invalid="ignore"):
        t = np.trunc(f)
        in_range = (t >= np.float32(-2147483648.0)) & (t < np.float32(2147483648.0))
        wide = np.where(in_range, t, np.float32(-2147483648.0)).astype(np.int64)
    return (wide & 0xFF).astype(np.uint8)


def _sequential_min_max(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C: min = FLT_MAX, max = -FLT_MAX; `if (v < min) min = v; if (v > max) max = v;`."""
    big = np.finfo(np.float32).max
    vmin = np.full(blocks.shape[0], big, dtype=np.float32)
    vmax = np.full(blocks.shape[0], -big, dtype=np.float32)
    for j in range(blocks.shape[1]):
        v = blocks[:, j]
        np.copyto(vmin, v, where=v < vmin)
        np.copyto(vmax, v, where=v > vmax)
    return vmin, vmax


# --------------------------------------------------------------------------------------------
# Packing levels into bytes, original block layout
# --------------------------------------------------------------------------------------------


def _pack_nibbles(levels: np.ndarray) -> np.ndarray:
    """[nb, 32] levels -> [nb, 16] bytes: low nibble weight j, high nibble weight j+16."""
    return (levels[:, :16] & np.uint8(0x0F)) | (levels[:, 16:] << np.uint8(4))


def _pack_high_bits(levels: np.ndarray) -> np.ndarray:
    """[nb, 32] 5-bit levels -> [nb, 4] bytes of qh: bit j is bit 4 of weight j."""
    return np.packbits((levels >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _assemble(scales: list[np.ndarray], qh: np.ndarray | None, qs: np.ndarray) -> np.ndarray:
    """Block bytes: fp16 scales, then qh when present, then qs."""
    parts = [fp16_bits(s).reshape(-1, 1).view(np.uint8) for s in scales]
    if qh is not None:
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------------------------
# Exact reference path (any block; used for the blocks the fast path hands over)
# --------------------------------------------------------------------------------------------


def _exact_symmetric(blocks: np.ndarray, half: int, with_qh: bool) -> np.ndarray:
    """Q4_0/Q5_0: d = max / -half (max: the first weight of largest magnitude), levels
    MIN(2 half - 1, (int8_t)(x / d + half + 0.5))."""
    d = first_max_abs(blocks.T)[1] / np.float32(-half)  # C: `if (amax < fabsf(v))`, the same test
    inv = _reciprocal_or_zero(d)
    with np.errstate(invalid="ignore", over="ignore"):
        levels = _c_cast_to_byte(blocks * inv[:, None] + np.float32(half + 0.5))  # 8.5 or 16.5, exact
    levels = np.minimum(levels.view(np.int8), np.int8(2 * half - 1)).view(np.uint8)
    return _assemble([d], _pack_high_bits(levels) if with_qh else None, _pack_nibbles(levels))


def _exact_q4_0(blocks: np.ndarray) -> np.ndarray:
    return _exact_symmetric(blocks, 8, with_qh=False)


def _exact_q5_0(blocks: np.ndarray) -> np.ndarray:
    return _exact_symmetric(blocks, 16, with_qh=True)


def _exact_min_levels(blocks: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vmin, vmax = _sequential_min_max(blocks)
    with np.errstate(invalid="ignore", over="ignore"):
        d = (vmax - vmin) / np.float32(nmax)
        inv = _reciprocal_or_zero(d)
        levels = _c_cast_to_byte((blocks - vmin[:, None]) * inv[:, None] + np.float32(0.5))
    return d, vmin, levels


def _exact_q4_1(blocks: np.ndarray) -> np.ndarray:
    d, vmin, levels = _exact_min_levels(blocks, 15)
    levels = np.minimum(levels.view(np.int8), np.int8(15)).view(np.uint8)
    return _assemble([d, vmin], None, _pack_nibbles(levels))


def _exact_q5_1(blocks: np.ndarray) -> np.ndarray:
    d, vmin, levels = _exact_min_levels(blocks, 31)  # (uint8_t) cast, no MIN in ggml
    return _assemble([d, vmin], _pack_high_bits(levels), _pack_nibbles(levels))


def _exact_q8_0(blocks: np.ndarray) -> np.ndarray:
    amax, _ = max_abs_taking_nan(blocks)  # C: `amax = MAX(amax, fabsf(v))` from 0
    d = amax / np.float32(127)
    inv = _reciprocal_or_zero(d)
    with np.errstate(invalid="ignore", over="ignore"):
        levels = _c_cast_to_byte(roundf(blocks * inv[:, None]))
    return _assemble([d], None, levels)


# --------------------------------------------------------------------------------------------
# Fast reference path
# --------------------------------------------------------------------------------------------


def _to_pair_rows(blocks: np.ndarray) -> np.ndarray:
    """[nb, 32] -> [16, 2*nb]: row r, columns 2i and 2i+1 hold weights 2r and 2r+1 of block i."""
    rows = np.empty((16, blocks.shape[0]), dtype=np.uint64)
    np.copyto(rows, blocks.view(np.uint64).T)
    return rows.view(np.float32)


def _per_block_max(t: np.ndarray) -> np.ndarray:
    m = np.maximum(t[:8], t[8:])
    np.maximum(m[:4], m[4:], out=m[:4])
    np.maximum(m[:2], m[2:4], out=m[:2])
    np.maximum(m[0], m[1], out=m[0])
    return np.maximum(m[0, 0::2], m[0, 1::2])


def _per_block_min(t: np.ndarray) -> np.ndarray:
    m = np.minimum(t[:8], t[8:])
    np.minimum(m[:4], m[4:], out=m[:4])
    np.minimum(m[:2], m[2:4], out=m[:2])
    np.minimum(m[0], m[1], out=m[0])
    return np.minimum(m[0, 0::2], m[0, 1::2])


def _scaled(t: np.ndarray, inv: np.ndarray, offset: np.ndarray | None, bias: np.float32) -> np.ndarray:
    """(t - offset) * inv + bias per block, in t's pair-row layout, as float32."""
    inv2 = np.repeat(inv, 2)
    with np.errstate(invalid="ignore", over="ignore"):
        if offset is None:
            f = np.multiply(t, inv2)
        else:
            f = np.subtract(t, np.repeat(offset, 2))
            f *= inv2
        f += bias
    return f


def _truncate_to_levels(f: np.ndarray, top_bits: int | None) -> np.ndarray:
    """C `MIN(2**top_bits - 1, (int8_t)f)` for f in [0, 2**top_bits + 1): a truncating cast.

    The only value above the top there is 2**top_bits itself, so the MIN subtracts that bit
    (byte-wise on uint16 words: numpy's uint8 minimum is slow).
    """
    with np.errstate(invalid="ignore"):
        levels = f.astype(np.uint8)
    if top_bits is not None:
        words = levels.view(np.uint16)
        words -= (words >> np.uint16(top_bits)) & np.uint16(0x0101)
    return levels


def _nibble_words(levels: np.ndarray) -> np.ndarray:
    """Pair-row levels [16, 2nb] -> qs as [nb, 8] little-endian uint16 words (a transposed view).

    Byte-wise nibble packing done on uint16 words (two weights at once), for speed.
    """
    words = levels.view(np.uint16)  # [16, nb]: (weight 2r, weight 2r+1) of each block
    packed = words[8:] & np.uint16(0x0F0F)
    packed <<= np.uint16(4)
    packed |= words[:8] & np.uint16(0x0F0F)
    return packed.T


def _high_bit_words(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair-row 5-bit levels [16, 2nb] -> qh as two [nb] uint16 words (bits 0-15, 16-31).

    qh byte k holds weights 8k..8k+7, i.e. rows 4k..4k+3 (even weights in the low byte of a
    row's word, odd ones in the high byte). Spread each row's bit 4 to bit 2u (u = row - 4k)
    of its byte, then merge the odd weights' byte into the odd bit positions of the even one.
    """
    bits = (levels.view(np.uint16) >> np.uint16(4)) & np.uint16(0x0101)
    bits = bits.reshape(4, 4, -1)  # [k, u, block]
    spread = bits[:, 3] << np.uint16(6)
    spread |= bits[:, 2] << np.uint16(4)
    spread |= bits[:, 1] << np.uint16(2)
    spread |= bits[:, 0]
    qh_bytes = spread | (spread >> np.uint16(7))  # low byte: the merged qh byte k
    low = (qh_bytes[0] & np.uint16(0xFF)) | (qh_bytes[1] << np.uint16(8))
    high = (qh_bytes[2] & np.uint16(0xFF)) | (qh_bytes[3] << np.uint16(8))
    return low, high


def _pair_rows_min_max(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks in pair-row layout, and each block's max and min (np.maximum/np.minimum)."""
    t = _to_pair_rows(blocks)
    return t, _per_block_max(t), _per_block_min(t)


def _store_levels(words: np.ndarray, levels: np.ndarray, word_qh: int | None, word_qs: int) -> None:
    """Pair-row levels into a block's uint16 words: qh (5-bit levels) at word_qh, qs from word_qs."""
    if word_qh is not None:
        low, high = _high_bit_words(levels)
        words[:, word_qh] = low
        words[:, word_qh + 1] = high
    words[:, word_qs:] = _nibble_words(levels)


def _fast_q4_0(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    return _fast_symmetric(blocks, out, 8, 4, word_qh=None, word_qs=1)


def _fast_q5_0(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    return _fast_symmetric(blocks, out, 16, 5, word_qh=1, word_qs=3)


def _fast_symmetric(blocks, out, half, top_bits, word_qh, word_qs) -> np.ndarray:
    """Q4_0/Q5_0: d = max / -half where max is the weight of largest magnitude."""
    t, vmax, vmin = _pair_rows_min_max(blocks)
    # np.maximum/minimum give the right value but not ggml's first-found one on a tie in
    # magnitude (this includes all-zero blocks, where ggml keeps max = +0).
    with np.errstate(invalid="ignore"):
        neg_min = -vmin
        signed_max = np.where(neg_min > vmax, vmin, vmax)
        d = signed_max / np.float32(-half)
    inv = _reciprocal_or_zero(d)
    levels = _truncate_to_levels(_scaled(t, inv, None, np.float32(half) + np.float32(0.5)), top_bits)
    words = out.view(np.uint16)
    words[:, 0] = fp16_bits(d)
    _store_levels(words, levels, word_qh, word_qs)
    # NaN reaches d through np.maximum; an infinite weight makes d infinite.
    with np.errstate(invalid="ignore"):
        return (neg_min == vmax) | ~np.isfinite(d) | ~np.isfinite(inv)


def _fast_q4_1(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    return _fast_with_min(blocks, out, 15, 4, word_qh=None, word_qs=2)


def _fast_q5_1(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    return _fast_with_min(blocks, out, 31, None, word_qh=2, word_qs=4)


def _fast_with_min(blocks, out, nmax, top_bits, word_qh, word_qs) -> np.ndarray:
    """Q4_1/Q5_1: d = (max - min) / nmax, m = min."""
    t, vmax, vmin = _pair_rows_min_max(blocks)
    with np.errstate(invalid="ignore", over="ignore"):
        d = (vmax - vmin) / np.float32(nmax)
    inv = _reciprocal_or_zero(d)
    levels = _truncate_to_levels(_scaled(t, inv, vmin, np.float32(0.5)), top_bits)
    words = out.view(np.uint16)
    words[:, 0] = fp16_bits(d)
    words[:, 1] = fp16_bits(vmin)
    _store_levels(words, levels, word_qh, word_qs)
    # A zero min or max may be -0 in ggml (first found) and either sign here.
    with np.errstate(invalid="ignore"):
        return (vmin == 0) | (vmax == 0) | ~np.isfinite(d) | ~np.isfinite(inv)


def _fast_q8_0(blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    t, vmax, vmin = _pair_rows_min_max(blocks)
    with np.errstate(invalid="ignore"):
        amax = np.maximum(vmax, -vmin)
        amax += _F0  # ggml's amax starts at +0: never -0
        d = amax / np.float32(127)
    inv = _reciprocal_or_zero(d)
    with np.errstate(invalid="ignore", over="ignore"):
        f = np.multiply(t, np.repeat(inv, 2))
        # roundf: add the float below 0.5 with f's sign, then truncate (exact in float32).
        bias = f.view(np.uint32) & _SIGN_BIT
        bias |= _BELOW_HALF_BITS
        f += bias.view(np.float32)
        levels = f.astype(np.int8)
    words = out.view(np.uint16)
    words[:, 0] = fp16_bits(d)
    words[:, 1:] = levels.view(np.uint16).T
    return ~np.isfinite(amax) | ~np.isfinite(inv)


_FAST = {
    "Q4_0": _fast_q4_0,
    "Q4_1": _fast_q4_1,
    "Q5_0": _fast_q5_0,
    "Q5_1": _fast_q5_1,
    "Q8_0": _fast_q8_0,
}
_EXACT = {
    "Q4_0": _exact_q4_0,
    "Q4_1": _exact_q4_1,
    "Q5_0": _exact_q5_0,
    "Q5_1": _exact_q5_1,
    "Q8_0": _exact_q8_0,
}


def quantize_reference(t: QType, x: np.ndarray, fast: bool = True) -> np.ndarray:
    """ggml's quantize_row_<type>_ref over all rows: uint8 [rows, row_bytes].

    fast=False runs the exact path on every block (the fast path's cross-check in tests).
    """
    blocks = x.reshape(-1, t.block_size)
    nb = blocks.shape[0]
    row_bytes = t.row_bytes(x.shape[1])
    if not fast:
        return _EXACT[t.name](blocks).reshape(x.shape[0], row_bytes)
    encode = _FAST[t.name]
    exact = _EXACT[t.name]
    out = np.empty((nb, t.type_size), dtype=np.uint8)
    for start in range(0, nb, _CHUNK_BLOCKS):
        stop = min(start + _CHUNK_BLOCKS, nb)
        handed_over = encode(blocks[start:stop], out[start:stop])
        if handed_over.any():
            (which,) = np.nonzero(handed_over)
            which += start
            out[which] = exact(blocks[which])
    return out.reshape(x.shape[0], row_bytes)


# --------------------------------------------------------------------------------------------
# Importance-matrix paths (quantize_row_*_impl)
# --------------------------------------------------------------------------------------------


def _row_sigma2(x: np.ndarray) -> np.ndarray:
    """sum_x2/n_per_row with sum_x2 accumulated over the row in order, as one float32."""
    return in_order_sum((x * x).T) / np.float32(x.shape[1])


def _block_weights(x: np.ndarray, imatrix: np.ndarray, block_size: int) -> np.ndarray:
    """weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j]) for every weight, as [rows*nb, block_size]."""
    sigma2 = _row_sigma2(x)
    w = x * x
    w += sigma2[:, None]
    np.sqrt(w, out=w)
    w *= imatrix[None, :]
    return w.reshape(-1, block_size)


def _impl_rows(t: QType, x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    blocks = x.reshape(-1, t.block_size)
    weights = _block_weights(x, imatrix, t.block_size)
    if t.name in ("Q4_0", "Q5_0"):
        nmax = 8 if t.name == "Q4_0" else 16
        d, levels = make_qx_quants(blocks, nmax, 1, weights)
        scales = [d]
    else:
        nmax = 15 if t.name == "Q4_1" else 31
        d, the_min, levels = make_qkx3_quants(blocks, nmax, weights, -0.9, 0.05, 36, False)
        scales = [d, -the_min]
    qh = _pack_high_bits(levels) if t.name in ("Q5_0", "Q5_1") else None
    return _assemble(scales, qh, _pack_nibbles(levels)).reshape(x.shape[0], -1)


def quantize_weighted(t: QType, x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """ggml's quantize_<type> with quant_weights (Q4_0, Q4_1, Q5_0, Q5_1): [rows, row_bytes]."""
    out = np.empty((x.shape[0], t.row_bytes(x.shape[1])), dtype=np.uint8)
    rows_per_chunk = max(1, _IMATRIX_CHUNK_WEIGHTS // x.shape[1])
    for start in range(0, x.shape[0], rows_per_chunk):
        stop = start + rows_per_chunk
        out[start:stop] = _impl_rows(t, x[start:stop], imatrix)
    return out


# --------------------------------------------------------------------------------------------
# Dequantization (dequantize_row_*)
# --------------------------------------------------------------------------------------------


def _fp16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    bits = np.ascontiguousarray(blocks[:, offset : offset + 2]).view(np.uint16)
    return fp16_bits_to_f32(bits)  # [nb, 1]


def _nibble_levels(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def _high_bit_levels(qh: np.ndarray) -> np.ndarray:
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


@FAMILY.dequantizer(*FAMILY.type_names)  # Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
@np.errstate(all="ignore")  # an inf scale times level 0 is NaN, as in C
def dequantize(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    """ggml's dequantize_row_<type>: float32 [rows, n_per_row]."""
    blocks = split_blocks(t, q)
    d = _fp16_field(blocks, 0)
    if t.name == "Q8_0":
        y = blocks[:, 2:].view(np.int8).astype(np.float32) * d
        return y.reshape(q.shape[0], n_per_row)
    with_min = t.name in ("Q4_1", "Q5_1")
    start = 4 if with_min else 2
    levels = _nibble_levels(blocks[:, -16:])
    if t.name in ("Q5_0", "Q5_1"):
        levels |= _high_bit_levels(blocks[:, start : start + 4])
    if with_min:
        y = levels.astype(np.float32) * d
        y += _fp16_field(blocks, 2)
    else:
        offset = 8 if t.name == "Q4_0" else 16
        y = (levels.astype(np.int16) - np.int16(offset)).astype(np.float32) * d
    return y.reshape(q.shape[0], n_per_row)


@FAMILY.quantizer(*FAMILY.type_names)
@np.errstate(all="ignore")  # inf and NaN inputs follow IEEE rules, as in C
def quantize(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """ggml's quantize_<type>: the reference rows without an imatrix, quantize_row_<type>_impl with
    one (Q8_0 ignores it, as ggml's quantize_q8_0 does)."""
    if imatrix is None or t.name == "Q8_0":
        return quantize_reference(t, x)
    return quantize_weighted(t, x, imatrix)

"""IQ4_NL (32-weight blocks) and IQ4_XS (256-weight super-blocks): 4-bit non-linear quants.

Both share ggml's quantize_row_iq4_nl_impl: per 32-weight block a weighted least-squares scale
search over 15 trial scales, each weight snapped to the nearest of 16 fixed levels. IQ4_NL keeps
that scale as fp16; IQ4_XS stores a super-block fp16 scale plus a 6-bit multiplier per block.
ggml_quantize_chunk always takes the searching path (ntry = 7), with or without an imatrix.

Layout inside the search: [32, n_blocks] (in-block index first) so that each of ggml's in-order
sums is a loop of contiguous vector adds over blocks.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .blocks import quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import GROUP_MAX_EPS, first_max_abs, fp16_bits, fp16_bits_to_f32, in_order_sum, nearest_int_exact

FAMILY = Family("iq4")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
BLOCK = 32  # weights that share one searched scale (IQ4_NL's block, an eighth of IQ4_XS's)
SEARCH_STEPS = 7  # ggml's ntry: trial scales (-127 + itry) / max for itry in [-7, 7]
_CHUNK_BLOCKS = 4096  # 32-weight blocks per vectorized step: keeps the working set in cache

KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)
_KVALUES_F32 = KVALUES_IQ4NL.astype(np.float32)

# best_index_int8 picks the upper of two neighbouring levels when x - lo >= hi - x. Near every
# midpoint both differences are exact in float32, so the choice is "x >= (lo + hi) / 2": the
# index is the number of doubled midpoints (odd integers) at or below floor(2 x). Tables are
# indexed by floor(2 x) in [-256, 255], negative values wrapping from the end.
_DOUBLED_MIDPOINTS = KVALUES_IQ4NL[:-1].astype(np.int32) + KVALUES_IQ4NL[1:]
_HALF_STEPS = np.concatenate([np.arange(0, 256), np.arange(-256, 0)])
_INDEX_BY_HALF_STEP = np.searchsorted(_DOUBLED_MIDPOINTS, _HALF_STEPS, side="right").astype(np.uint8)
_LEVEL_BY_HALF_STEP = _KVALUES_F32[_INDEX_BY_HALF_STEP]


def _half_steps(doubled: np.ndarray) -> np.ndarray:
    """floor(2 x) as table indices, given 2 x (float32, overwritten). NaN lands on the top level
    as in ggml's binary search; +-inf clamp to the ends."""
    np.floor(doubled, out=doubled)
    np.fmin(doubled, np.float32(255), out=doubled)
    np.maximum(doubled, np.float32(-256), out=doubled)
    return doubled.astype(np.intp)


def _weighted_sums(x: np.ndarray, weight: np.ndarray, inv_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum w q x and sum w q q over each block, q the levels nearest inv_scale * x.
    (2 inv_scale) x is exactly 2 (inv_scale x) unless it over- or underflows, and then the
    level is the same (an end level, or the one nearest 0)."""
    level = _LEVEL_BY_HALF_STEP[_half_steps((inv_scale + inv_scale) * x)]
    wq = weight * level
    return in_order_sum(wq * x), in_order_sum(wq * level)


def _search_block_scales(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The least-squares scale of each 32-weight block (x, weight: [32, n]); 0 for empty blocks."""
    amax, signed_max = first_max_abs(x)
    empty = amax < GROUP_MAX_EPS
    signed_max = np.where(empty, np.float32(1), signed_max)  # placeholder, result forced to 0 below

    d = signed_max / np.float32(127)  # -max / values[0]
    sumqx, sumq2 = _weighted_sums(x, weight, np.float32(1) / d)
    d = np.where(sumq2 > 0, sumqx / sumq2, np.float32(0))
    best = d * sumqx
    for itry in range(-SEARCH_STEPS, SEARCH_STEPS + 1):
        inv_scale = np.float32(itry + int(KVALUES_IQ4NL[0])) / signed_max
        sumqx, sumq2 = _weighted_sums(x, weight, inv_scale)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    return np.where(empty, np.float32(0), d)


def _nearest_levels(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Level indices (uint8, like x [32, n]) of x / scale, where inverse scale is 0 for scale 0."""
    inv_scale = np.where(scale != 0, np.float32(1) / scale, np.float32(0))
    return _INDEX_BY_HALF_STEP[_half_steps((inv_scale + inv_scale) * x)]


def _pack_nibbles(levels: np.ndarray) -> np.ndarray:
    """[32, n] level indices -> [n, 16] bytes: low nibbles weights 0..15, high nibbles 16..31."""
    return (levels[:16] | (levels[16:] << np.uint8(4))).T


def _superblock_weights(xs: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """ggml's per-weight importance for super-blocks xs [n_super, S]: x^2, or
    qw * sqrt(sigma2 + x^2) with sigma2 = 2/S * sum x^2 (summed in order)."""
    squares = xs * xs
    if qw is None:
        return squares
    size = xs.shape[1]
    sigma2 = in_order_sum(np.ascontiguousarray(squares.T)) * np.float32(2.0 / size)
    return qw * np.sqrt(sigma2[:, None] + squares)


def _to_block_columns(a: np.ndarray) -> np.ndarray:
    """[n_super, S] -> [32, n_blocks] (contiguous), block b = super * S/32 + sub."""
    return np.ascontiguousarray(a.reshape(-1, BLOCK).T)


@np.errstate(all="ignore")  # squares that overflow carry inf/NaN through the search, as in C
def _iq4_nl_chunk(xs: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    """Blocks xs [n, 32] (and their imatrix rows) -> IQ4_NL bytes out [n, 18]."""
    xt = _to_block_columns(xs)
    weight = _to_block_columns(_superblock_weights(xs, qw))
    scale = _search_block_scales(xt, weight)
    out[:, 0:2] = fp16_bits(scale).view(np.uint8).reshape(-1, 2)
    out[:, 2:18] = _pack_nibbles(_nearest_levels(xt, scale))


@np.errstate(all="ignore")  # squares that overflow carry inf/NaN through the search, as in C
def _iq4_xs_chunk(xs: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    """Super-blocks xs [n, 256] (and their imatrix rows) -> IQ4_XS bytes out [n, 136]."""
    n = xs.shape[0]
    n_sub = xs.shape[1] // BLOCK
    xt = _to_block_columns(xs)
    weight = _to_block_columns(_superblock_weights(xs, qw))
    scales = _search_block_scales(xt, weight).reshape(n, n_sub)

    # the super-block scale comes from the first block scale of largest magnitude (+0 if none;
    # NaN scales never win the `>` comparison)
    _, max_scale = first_max_abs(scales.T)
    d = -max_scale / np.float32(32)  # -0 for an empty super-block, as in ggml
    inv_d = np.where(d != 0, np.float32(1) / d, np.float32(0))
    mult = np.clip(nearest_int_exact(inv_d[:, None] * scales), -32, 31)
    block_scale = d[:, None] * mult.astype(np.float32)
    levels = _nearest_levels(xt, block_scale.reshape(-1))

    biased = (mult + 32).astype(np.uint16)  # 6 bits: low nibble in scales_l, top 2 in scales_h
    scales_h = np.zeros(n, dtype=np.uint16)
    for ib in range(n_sub):
        scales_h |= (biased[:, ib] >> np.uint16(4)) << np.uint16(2 * ib)
    low = (biased & np.uint16(0xF)).astype(np.uint8)

    out[:, 0:2] = fp16_bits(d).view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = scales_h.astype("<u2").view(np.uint8).reshape(-1, 2)
    out[:, 4:8] = low[:, 0::2] | (low[:, 1::2] << np.uint8(4))
    out[:, 8:136] = _pack_nibbles(levels).reshape(n, -1)


@FAMILY.quantizer("IQ4_NL")
def quantize_iq4_nl(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, imatrix, _iq4_nl_chunk, _CHUNK_BLOCKS * BLOCK)


@FAMILY.quantizer("IQ4_XS")
def quantize_iq4_xs(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, imatrix, _iq4_xs_chunk, _CHUNK_BLOCKS * BLOCK)


@FAMILY.dequantizer("IQ4_NL")
def dequantize_iq4_nl(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    d = fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2"))  # [n, 1]
    qs = blocks[:, 2:]
    levels = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=1)
    return (d * _KVALUES_F32[levels]).reshape(q.shape[0], n_per_row)


@FAMILY.dequantizer("IQ4_XS")
@np.errstate(invalid="ignore")  # an fp16-overflowed scale times multiplier 0, as in C
def dequantize_iq4_xs(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    n_sub = t.block_size // BLOCK
    supers = split_blocks(t, q)
    d = fp16_bits_to_f32(supers[:, 0:2].copy().view("<u2"))  # [n, 1]
    scales_h = supers[:, 2:4].copy().view("<u2").astype(np.int32)  # [n, 1]
    scales_l = supers[:, 4:8].astype(np.int32)
    ib = np.arange(n_sub)
    low = (scales_l[:, ib // 2] >> (4 * (ib % 2))) & 0xF
    high = (scales_h >> (2 * ib)) & 3
    block_scale = d * ((low | (high << 4)) - 32).astype(np.float32)  # [n, 8]
    qs = supers[:, 8:].reshape(-1, n_sub, 16)
    levels = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=2)
    return (block_scale[:, :, None] * _KVALUES_F32[levels]).reshape(q.shape[0], n_per_row)

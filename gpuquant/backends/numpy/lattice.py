"""ggml's lattice ("grid") IQ types: IQ3_XXS, IQ3_S, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_S, IQ1_M.

Each sub-block (32 or 16 weights) is coded as sign bits plus points of a fixed lattice (the grid)
in the magnitudes: groups of 4 (IQ3) or 8 (IQ2, IQ1) levels must form one of the grid's points.
The scale search tries a range of scales; a group that rounds to a point off the grid takes the
best grid point of a precomputed neighbour list (weighted distance, first minimum in list order).
IQ1_S and IQ1_M instead split the sorted weights exhaustively into three levels. The super-block
stores one fp16 scale and a small multiplier per sub-block. Grid tables: lattice_grids.py.

Layout inside the search: [sub, n_sub_blocks] (in-block index first) so that each of ggml's
in-order sums is a loop of contiguous vector adds over sub-blocks; groups are [groups, dims, n].
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ...qtypes import QType
from . import lattice_grids as grids
from .blocks import QuantizeBlocks, quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import fp16_bits, fp16_bits_to_f32, in_order_sum, nearest_int
from .search import make_qp_quants

FAMILY = Family("lattice")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
QK_K = 256  # ggml's super-block (every lattice type's block size): its formulas divide by it
SUB = 32  # weights per sub-block (one searched scale)
_CHUNK_WEIGHTS = 1 << 16  # weights per vectorized step

_F0 = np.float32(0)
_F1 = np.float32(1)
_HALF = np.float32(0.5)
_ALL_SIGN_BITS = np.uint8(255)
_SEVEN_SIGN_BITS = np.uint8(127)  # even-parity types store 7 of each 8 signs


class Lattice:
    """A quantizer grid of `dims`-level points, each level an odd number 2 l + 1 (l < 2**bits),
    with ggml's map from level codes (l_i << bits i) to grid indices and, for each code off the
    grid, its neighbour list: grid points by increasing integer distance, ties by index, up to
    `nwant` distinct distances (as ggml's qsort with its total-order comparator leaves them)."""

    def __init__(self, kgrid: np.ndarray, dims: int, bits: int, kmap_size: int, nwant: int) -> None:
        shifts = bits * np.arange(dims)
        level_index = (kgrid.astype(np.int64)[:, None] >> shifts) & ((1 << bits) - 1)
        odd_levels = 2 * level_index + 1
        self.dims = dims
        self.bits = bits
        self.levels = odd_levels.astype(np.float32)  # [grid, dims]
        self.level_index = level_index  # [grid, dims]
        self.n_levels = int(level_index.max()) + 1  # levels the grid uses (3 of the 4 2-bit ones)
        self.odd_level_values = (2 * np.arange(self.n_levels) + 1).astype(np.float32)
        # Distances share the running sums of their first prefix_dims terms (n_levels**prefix_dims
        # of them per query): worth it for IQ1/IQ2's 27 sums against 10-90 candidates a query, not
        # for IQ3's 64 against about 8.
        self.prefix_dims = 3 if dims == 8 else 1
        self.grid_of_code = np.full(kmap_size, -1, dtype=np.int32)
        self.grid_of_code[(level_index << shifts).sum(axis=1)] = np.arange(len(kgrid), dtype=np.int32)

        off_codes = np.flatnonzero(self.grid_of_code < 0)
        # In pieces of codes, so that the distance matrix stays small (IQ1's is 43k x 2048).
        lists = [self._neighbour_lists(off_codes[a : a + 2048], odd_levels, shifts, nwant)
                 for a in range(0, off_codes.size, 2048)]
        counts = np.zeros(kmap_size, dtype=np.int64)
        counts[off_codes] = np.concatenate([c for c, _ in lists]) if lists else 0
        self.neighbour_count = counts
        self.neighbour_start = np.cumsum(counts) - counts
        self.neighbours = np.concatenate([p for _, p in lists]).astype(np.int32) if lists else np.zeros(0, np.int32)

    def _neighbour_lists(self, codes: np.ndarray, odd_levels: np.ndarray, shifts: np.ndarray, nwant: int):
        """(list length per code, the lists concatenated) for the codes off the grid."""
        code_levels = 2 * ((codes[:, None] >> shifts) & ((1 << self.bits) - 1)) + 1
        # Squared distances are small integers: exact through a float32 matrix product.
        dist2 = (
            (code_levels * code_levels).sum(axis=1)[:, None]
            + (odd_levels * odd_levels).sum(axis=1)[None, :]
            - 2 * (code_levels.astype(np.float32) @ odd_levels.T.astype(np.float32)).astype(np.int64)
        )
        # Keep the points within the nwant smallest distinct distances of each code.
        present = np.zeros((codes.size, int(dist2.max()) + 1), dtype=bool)
        present[np.arange(codes.size)[:, None], dist2] = True
        distinct_seen = np.cumsum(present, axis=1)
        limit = np.argmax(distinct_seen >= nwant, axis=1)
        limit = np.where(distinct_seen[:, -1] >= nwant, limit, present.shape[1])
        row, point = np.nonzero(dist2 <= limit[:, None])  # by row, then increasing point index
        order = np.lexsort((dist2[row, point], row))  # stable: ties keep increasing index
        return np.bincount(row, minlength=codes.size), point[order]

    def codes(self, levels: np.ndarray) -> np.ndarray:
        """Codes of level indices [..., dims, n] -> [..., n]."""
        code = np.zeros(levels.shape[:-2] + levels.shape[-1:], dtype=np.int64)
        for i in range(self.dims):
            code |= levels[..., i, :].astype(np.int64) << (self.bits * i)
        return code

    @functools.cached_property
    def _term_offsets(self) -> np.ndarray:
        """For each neighbour-list entry, where its distance terms lie in a query's term row
        (see best_neighbours): [1 + dims - prefix_dims, list entries], uint8."""
        n_levels, pre = self.n_levels, self.prefix_dims
        levels = self.level_index[self.neighbours]  # [entries, dims]
        prefix = np.zeros(self.neighbours.size, dtype=np.int64)
        for i in range(pre):
            prefix = prefix * n_levels + levels[:, i]
        rest = [n_levels**pre + (i - pre) * n_levels + levels[:, i] for i in range(pre, self.dims)]
        return np.stack([prefix] + rest).astype(np.uint8)

    def best_neighbours(
        self,
        codes: np.ndarray,
        xval: np.ndarray,
        weight: np.ndarray,
        scale: np.ndarray,
        level_values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Grid index minimizing sum_i weight_i (scale q_i - xval_i)^2 over each code's neighbour
        list, the first such in list order. codes [m]; xval, weight [m, dims]; scale [m]; q the
        odd levels, or level_values[query, level index] where given ([m, n_levels]).

        Each term weight_i (scale q - xval_i)^2 depends on the query, i and q's level only, so
        each query gets a row of the running sums of its first prefix_dims terms over all their
        level combinations, then its remaining terms (a level each); a candidate's distance is then its
        prefix sum plus its remaining terms, added in ggml's order: the same floats, bit for bit."""
        m = codes.size
        if m == 0:
            return np.zeros(0, dtype=np.int32)
        pre = self.prefix_dims
        if level_values is None:
            level_values = self.odd_level_values[None, :]
        diff = scale[:, None, None] * level_values[:, None, :] - xval[:, :, None]  # [m, dims, levels]
        terms = weight[:, :, None] * diff * diff
        if pre == 1:  # the first term is its own running sum: the row is the terms as they are
            rows = terms.reshape(m, -1)
        else:
            prefix = terms[:, 0, :]
            for i in range(1, pre):
                prefix = (prefix[:, :, None] + terms[:, i, None, :]).reshape(m, -1)
            rows = np.concatenate([prefix, terms[:, pre:, :].reshape(m, -1)], axis=1)  # [m, row]

        count = self.neighbour_count[codes]
        seg_start = np.cumsum(count) - count
        total = int(seg_start[-1] + count[-1])
        entry = np.arange(total) + np.repeat(self.neighbour_start[codes] - seg_start, count)
        row_base = np.repeat(np.arange(0, m * rows.shape[1], rows.shape[1]), count)
        at = np.take(self._term_offsets, entry, axis=1) + row_base[None, :]
        parts = np.take(rows, at)  # [1 + dims - pre, total]
        dist2 = parts[0]
        for part in parts[1:]:
            dist2 += part
        best = np.minimum.reduceat(dist2, seg_start)
        hits = np.flatnonzero(dist2 == np.repeat(best, count))
        first = hits[np.searchsorted(hits, seg_start)]  # each query's first hit
        return self.neighbours[entry[first]]


@functools.cache
def _iq3_lattice(grid_size: int) -> Lattice:
    if grid_size == 256:
        return Lattice(grids.KGRID_3BIT_256, dims=4, bits=3, kmap_size=4096, nwant=2)
    return Lattice(grids.KGRID_3BIT_512, dims=4, bits=3, kmap_size=4096, nwant=3)


def _block_weights(
    blocks: np.ndarray, qw: np.ndarray | None, sigma2_share: np.float32 | None = None, doubled: bool = True
) -> np.ndarray:
    """ggml's per-weight importance, [QK_K, n_blocks]: qw sqrt(sigma2 + x^2) with
    sigma2 = 2 sum(x^2) / QK_K over the super-block (sum(x^2) / QK_K unless doubled); without
    an imatrix x^2, or sigma2_share sigma2 + x^2 where given."""
    xt = blocks.T
    x2 = xt * xt
    if qw is None and sigma2_share is None:
        return x2
    sumx2 = in_order_sum(x2)
    sigma2 = (np.float32(2) * sumx2 if doubled else sumx2) / np.float32(QK_K)
    if qw is None:
        return sigma2_share * sigma2 + x2
    return qw.T * np.sqrt(sigma2 + x2)


def _to_sub_blocks(a: np.ndarray, sub: int = SUB) -> np.ndarray:
    """[QK_K, n_blocks] -> [sub, n_blocks * QK_K / sub], sub-block s = QK_K / sub * block + ib."""
    return np.ascontiguousarray(a.reshape(QK_K // sub, sub, -1).transpose(1, 2, 0).reshape(sub, -1))


def _beats_best_fit(sumqx: np.ndarray, sumq2: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Where the fit (sumqx, sumq2) beats ggml's running best: sumq2 > 0 and sumqx^2 > best sumq2."""
    return (sumq2 > 0) & (sumqx * sumqx > best * sumq2)


def _take_better_fit(
    better: np.ndarray, sumqx: np.ndarray, sumq2: np.ndarray, best: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where better: scale = sumqx / sumq2 and best = scale sumqx. Returns (best, scale)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(better, sumqx / sumq2, scale)
    return np.where(better, scale * sumqx, best), scale


def _weighted_fit(weight: np.ndarray, xval: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's sumqx = sum w x q and sumq2 = sum w q q, in index order."""
    wq = weight * q
    return in_order_sum(weight * xval * q), in_order_sum(wq * q)


def _weighted_fit_wq_first(weight: np.ndarray, xval: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As _weighted_fit, with the IQ1 refits' rounding order: sumqx = sum (w q) x."""
    wq = weight * q
    return in_order_sum(wq * xval), in_order_sum(wq * q)


def _snap_to_grid(
    lattice: Lattice, xval: np.ndarray, waux: np.ndarray, inv_scale: np.ndarray, scale: np.ndarray, kmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """Round each group of `dims` weights to levels l = nearest(0.5 (inv_scale x - 1)) in
    [0, kmax - 1]; a group off the grid takes its best neighbour at `scale`.
    xval, waux [sub, n]. Returns (grid index, on grid), both [sub / dims, n]."""
    dims = lattice.dims
    groups = xval.shape[0] // dims
    n = xval.shape[1]
    levels = np.clip(nearest_int(_HALF * (inv_scale * xval - _F1)), 0, kmax - 1)
    codes = lattice.codes(levels.reshape(groups, dims, n))
    grid = lattice.grid_of_code[codes]
    on_grid = grid >= 0
    group, col = np.nonzero(~on_grid)
    if group.size:
        xg = xval.reshape(groups, dims, n)[group, :, col]
        wg = waux.reshape(groups, dims, n)[group, :, col]
        grid[group, col] = lattice.best_neighbours(codes[group, col], xg, wg, scale[col])
    return grid, on_grid


def _grid_levels(lattice: Lattice, grid: np.ndarray) -> np.ndarray:
    """Odd levels (float32) of grid indices [groups, n] -> [groups * dims, n]."""
    return lattice.levels[grid].transpose(0, 2, 1).reshape(grid.shape[0] * lattice.dims, -1)


# How the search snaps groups again at the fitted scale: only the groups left off the grid
# (IQ3_XXS, IQ2_XS, IQ2_S), every group once one is off (IQ3_S), every group always (IQ2_XXS).
REFINE_OFF_GRID = "off_grid"
REFINE_ALL_IF_ANY_OFF = "all_if_any_off"
REFINE_ALWAYS_ALL = "always_all"


@np.errstate(over="ignore")  # tiny sub-blocks overflow the trial inverse scales
def _search_grid(
    lattice: Lattice,
    xval: np.ndarray,
    weight: np.ndarray,
    base: np.ndarray,
    active: np.ndarray,
    kmax: int,
    trial_steps: int,
    step_size: np.float32,
    refine: str,
    initial_scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The scale search shared by the IQ3 and IQ2 quantizers, for sub-blocks [sub, n] with
    base > 0 where active (base 1 elsewhere, a result the caller discards): trial inverse scales
    (2 kmax - 1 + step step_size) / base, the best least-squares fit kept (from initial_scale,
    default base / (2 kmax - 1)); then groups are snapped again at the fitted scale as `refine`
    says and the scale refitted. Returns (scale [n], grid [groups, n])."""
    base = np.where(active, base, _F1)
    groups = xval.shape[0] // lattice.dims
    n = xval.shape[1]
    waux = np.sqrt(weight)
    best = np.zeros(n, dtype=np.float32)
    top = np.float32(2 * kmax - 1)
    scale = base / top if initial_scale is None else initial_scale.copy()
    grid = np.full((groups, n), lattice.grid_of_code[0], dtype=np.int32)  # all levels 0
    on_grid = np.full((groups, n), refine != REFINE_ALL_IF_ANY_OFF)
    for step in range(-trial_steps, trial_steps + 1):
        inv_scale = (top + np.float32(step) * step_size) / base
        trial_grid, trial_on_grid = _snap_to_grid(lattice, xval, waux, inv_scale, _F1 / inv_scale, kmax)
        sumqx, sumq2 = _weighted_fit(weight, xval, _grid_levels(lattice, trial_grid))
        better = _beats_best_fit(sumqx, sumq2, best)
        best, scale = _take_better_fit(better, sumqx, sumq2, best, scale)
        grid = np.where(better, trial_grid, grid)
        on_grid = np.where(better, trial_on_grid, on_grid)

    again = scale > 0
    if refine != REFINE_ALWAYS_ALL:
        again &= (~on_grid).any(axis=0)
    if again.any():
        cols = np.flatnonzero(again)
        sub_x, sub_waux = xval[:, cols], waux[:, cols]
        sub_scale = scale[cols]
        new_grid, _ = _snap_to_grid(lattice, sub_x, sub_waux, _F1 / sub_scale, sub_scale, kmax)
        old_grid = grid[:, cols]
        sub_grid = new_grid if refine != REFINE_OFF_GRID else np.where(on_grid[:, cols], old_grid, new_grid)
        grid[:, cols] = sub_grid
        sumqx, sumq2 = _weighted_fit(weight[:, cols], sub_x, _grid_levels(lattice, sub_grid))
        with np.errstate(divide="ignore", invalid="ignore"):
            scale[cols] = np.where(sumq2 > 0, sumqx / sumq2, sub_scale)
    return scale, grid


def _magnitudes_and_signs(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x| (x kept where x >= 0) and the sign bits of each 8 weights, [sub / 8, n] uint8."""
    negative = ~(xs >= 0)
    xval = np.where(negative, -xs, xs)
    bits = (negative.reshape(-1, 8, xs.shape[1]) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1)
    return xval, bits.astype(np.uint8)


def _even_parity_signs(xs: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like _magnitudes_and_signs, for the types that store 7 sign bits per 8 weights (the 8th
    makes the parity even): where the parity is odd, the weight of least w x^2 (the first such)
    keeps its sign instead, so its magnitude goes negative. Returns (xval, 7-bit signs)."""
    xval, signs = _magnitudes_and_signs(xs)
    odd = (np.bitwise_count(signs) & 1).astype(bool)
    cost = (weight * xs * xs).reshape(-1, 8, xs.shape[1])
    cheapest = np.argmin(cost, axis=1)  # first minimum, as ggml's strict `<`
    k_idx, col = np.nonzero(odd)
    flip_row = 8 * k_idx + cheapest[k_idx, col]
    xval[flip_row, col] = -xval[flip_row, col]
    signs[k_idx, col] ^= np.uint8(1) << cheapest[k_idx, col].astype(np.uint8)
    return xval, signs & _SEVEN_SIGN_BITS


# Bit packing of the block layouts.
def _unpack_fields(words: np.ndarray, width: int, count: int) -> np.ndarray:
    """The `count` bit fields of `width` bits packed from bit 0 up in each word: [...] -> [..., count]."""
    shifts = width * np.arange(count, dtype=words.dtype)
    return (words[..., None] >> shifts) & ((1 << width) - 1)


def _pack_fields(fields: np.ndarray, width: int) -> np.ndarray:
    """Inverse of _unpack_fields: fields [..., count] of `width` bits each -> words [...]."""
    shifts = width * np.arange(fields.shape[-1], dtype=fields.dtype)
    return (fields << shifts).sum(axis=-1, dtype=fields.dtype)


def _blocks_and_scale(t: QType, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantized rows -> (blocks [n_blocks, type_size], their leading fp16 scale as float32)."""
    blocks = split_blocks(t, q)
    return blocks, fp16_bits_to_f32(blocks[:, 0:2].copy().view("<u2")[:, 0])


def _unpack_nibble_pairs(packed: np.ndarray) -> np.ndarray:
    """Bytes [n, k] each holding two 4-bit values (low nibble first) -> [n, 2 k]."""
    return np.stack([packed & 15, packed >> 4], axis=2).reshape(packed.shape[0], -1)


def _pack_nibble_pairs(values: np.ndarray) -> np.ndarray:
    """Inverse of _unpack_nibble_pairs: 4-bit values [n, 2 k] -> bytes [n, k]."""
    return (values[:, 0::2] | values[:, 1::2] << 4).astype(np.uint8)


def _unpack_sign_words(words: np.ndarray) -> np.ndarray:
    """The 8-bit signs (even parity restored) of the four 7-bit sign codes in bits 0-27 of each word."""
    return grids.KSIGNS_IQ2XS[_unpack_fields(words, 7, 4)]


def _pack_sign_words(signs: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """Words [n_blocks, 8] holding a sub-block's four 7-bit sign codes (signs [4, sub-blocks]) and
    its 4-bit scale multiplier in the top bits, as IQ3_XXS and IQ2_XXS store them."""
    n_blocks = multipliers.shape[0]
    return _pack_fields(signs.T.astype(np.uint32), 7).reshape(n_blocks, 8) | multipliers << 28


def _super_block_multipliers(scales: np.ndarray, max_multiplier: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scales [n_blocks, sub-blocks] -> (d, multipliers m in [0, max_multiplier], nonzero) with
    d = max_scale / (2 max_multiplier + 1), so that a sub-block's scale is about d (2 m + 1)."""
    max_scale = np.max(scales, axis=1)
    nonzero = max_scale != 0
    d = np.where(nonzero, max_scale, _F1) / np.float32(2 * max_multiplier + 1)
    multipliers = np.clip(nearest_int(_HALF * ((_F1 / d)[:, None] * scales - _F1)), 0, max_multiplier)
    return d, multipliers, nonzero


def _super_block_scale(
    scales: np.ndarray, fudge: np.float32, max_multiplier: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scales [n_blocks, sub-blocks] -> (fp16 bits of d * fudge, multipliers as uint32, nonzero),
    as _super_block_multipliers (4-bit multipliers unless told)."""
    d, multipliers, nonzero = _super_block_multipliers(scales, max_multiplier)
    d_bits = np.where(nonzero, fp16_bits(d * fudge), np.uint16(0))
    return d_bits, multipliers.astype(np.uint32), nonzero


def _start_blocks(out: np.ndarray, d_bits: np.ndarray) -> None:
    """Output blocks out [n_blocks, type_size] zeroed, with the fp16 scale bits in bytes 0-1."""
    out[...] = 0
    out[:, 0:2] = d_bits.reshape(-1, 1).view(np.uint8)


def _fold_negative_scales(
    scale: np.ndarray, grid: np.ndarray, signs: np.ndarray, active: np.ndarray, sign_mask: np.uint8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A negative fitted scale becomes positive with every stored sign bit (sign_mask) inverted;
    inactive sub-blocks get scale 0, grid index 0 and no signs. Returns (scale, grid, signs)."""
    negative = scale < 0
    scale = np.where(negative, -scale, scale)
    signs = np.where(negative[None, :], ~signs & sign_mask, signs)
    scale = np.where(active, scale, _F0)
    grid = np.where(active[None, :], grid, 0)
    signs = np.where(active[None, :], signs, 0)
    return scale, grid, signs


def _quantize_rows(t: QType, x: np.ndarray, imatrix: np.ndarray | None, quantize_blocks: QuantizeBlocks) -> np.ndarray:
    """x [rows, n_per_row] -> uint8 [rows, row_bytes], super-blocks a cache-sized slice at a time."""
    if imatrix is None and t.requires_imatrix:
        raise ValueError(f"{t.name} requires an importance matrix (ggml asserts one)")
    return quantize_in_chunks(t, x, imatrix, quantize_blocks, _CHUNK_WEIGHTS)


def _quantize_iq3_xxs_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq3_lattice(256)
    xs = _to_sub_blocks(blocks.T)
    weight = _to_sub_blocks(_block_weights(blocks, qw))
    xval, signs = _even_parity_signs(xs, weight)

    max_val = np.max(xval, axis=0)
    active = ~(max_val < np.float32(1e-8))
    scale, grid = _search_grid(lattice, xval, weight, max_val, active, 8, 15, np.float32(0.2), REFINE_OFF_GRID)
    scale, grid, signs = _fold_negative_scales(scale, grid, signs, active, _SEVEN_SIGN_BITS)

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 8), np.float32(1.0125))
    packed = _pack_sign_words(signs, multipliers)
    _start_blocks(out, d_bits)
    out[:, 2:66] = grid.T.reshape(nb, 64)
    out[:, 66:98] = packed.astype("<u4").view(np.uint8)
    out[~nonzero] = 0


@FAMILY.quantizer("IQ3_XXS")
def quantize_iq3_xxs(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ3_XXS: 256 grid points of 4 3-bit levels, even-parity signs, 3.0625 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq3_xxs_blocks)


def _apply_signs(values: np.ndarray, sign_bytes: np.ndarray) -> np.ndarray:
    """values [..., 8 k] times -1 where bit j of sign byte k is set (sign_bytes [..., k])."""
    bits = _unpack_fields(sign_bytes, 1, 8).reshape(values.shape)
    return np.where(bits.astype(bool), -values, values)


def _signed_grid_values(
    grid_table: np.ndarray, grid_idx: np.ndarray, sub_scale: np.ndarray, signs: np.ndarray, shape: tuple
) -> np.ndarray:
    """Dequantized weights: the grid points' byte levels times their sub-block's scale
    (sub_scale [n_blocks, sub-blocks]), signed by the sign bytes, reshaped to `shape`."""
    levels = grid_table[grid_idx].view(np.uint8).reshape(sub_scale.shape + (-1,)).astype(np.float32)
    return _apply_signs(sub_scale[:, :, None] * levels, signs).reshape(shape)


@FAMILY.dequantizer("IQ3_XXS")
def dequantize_iq3_xxs(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    grid_idx = blocks[:, 2:66]
    packed = blocks[:, 66:98].copy().view("<u4")  # [nb, 8]
    db = d[:, None] * (_HALF + (packed >> 28).astype(np.float32)) * _HALF
    return _signed_grid_values(grids.IQ3XXS_GRID, grid_idx, db, _unpack_sign_words(packed), q.shape[:1] + (n_per_row,))


def _quantize_iq3_s_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq3_lattice(512)
    xs = _to_sub_blocks(blocks.T)
    weight = _to_sub_blocks(_block_weights(blocks, qw))
    xval, signs = _magnitudes_and_signs(xs)  # all 8 sign bits stored
    max_val = np.max(xval, axis=0)
    active = max_val != 0
    scale, grid = _search_grid(lattice, xval, weight, max_val, active, 8, 9, np.float32(0.2), REFINE_ALL_IF_ANY_OFF)
    scale, grid, signs = _fold_negative_scales(scale, grid, signs, active, _ALL_SIGN_BITS)

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 8), np.float32(1.033))
    high_bits = _pack_fields((grid >> 8).astype(np.uint8).T, 1)  # bit 8 of a sub-block's 8 points
    _start_blocks(out, d_bits)
    # ggml advances its qs and signs pointers only past non-empty sub-blocks (an empty one
    # `continue`s first), so those are packed to the front; qh bits keep their positions.
    block, sub = np.nonzero(active.reshape(nb, 8))
    slot = (np.cumsum(active.reshape(nb, 8), axis=1) - 1)[block, sub]
    packed_qs = np.zeros((nb, 8, 8), dtype=np.uint8)
    packed_signs = np.zeros((nb, 8, 4), dtype=np.uint8)
    packed_qs[block, slot] = (grid.T & 255).reshape(nb, 8, 8)[block, sub]
    packed_signs[block, slot] = signs.T.reshape(nb, 8, 4)[block, sub]
    out[:, 2:66] = packed_qs.reshape(nb, 64)
    out[:, 66:74] = high_bits.reshape(nb, 8)
    out[:, 74:106] = packed_signs.reshape(nb, 32)
    out[:, 106:110] = _pack_nibble_pairs(multipliers)
    out[~nonzero, 0:2] = 0
    out[~nonzero, 106:110] = 0


@FAMILY.quantizer("IQ3_S")
def quantize_iq3_s(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ3_S: 512 grid points of 4 3-bit levels, free signs, 3.4375 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq3_s_blocks)


@FAMILY.dequantizer("IQ3_S")
def dequantize_iq3_s(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    high = _unpack_fields(blocks[:, 66:74], 1, 8)  # [nb, 8 sub-blocks, 8 points]
    grid_idx = blocks[:, 2:66].reshape(-1, 8, 8).astype(np.int32) | high.astype(np.int32) << 8
    multipliers = _unpack_nibble_pairs(blocks[:, 106:110])
    db = d[:, None] * (1 + 2 * multipliers.astype(np.int32)).astype(np.float32)
    signs = blocks[:, 74:106].reshape(-1, 8, 4)
    return _signed_grid_values(grids.IQ3S_GRID, grid_idx, db, signs, q.shape[:1] + (n_per_row,))


@functools.cache
def _iq2_lattice(grid_size: int) -> Lattice:
    kgrid, nwant = {
        256: (grids.KGRID_2BIT_256, 2),
        512: (grids.KGRID_2BIT_512, 2),
        1024: (grids.KGRID_2BIT_1024, 1),
    }[grid_size]
    return Lattice(kgrid, dims=8, bits=2, kmap_size=43692, nwant=nwant)


def _quantize_iq2_s_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq2_lattice(1024)
    xs = _to_sub_blocks(blocks.T, 16)
    weight = _to_sub_blocks(_block_weights(blocks, qw, sigma2_share=np.float32(0.25)), 16)
    xval, signs = _magnitudes_and_signs(xs)  # [2, n]
    max_val = np.max(xval, axis=0)
    active = ~(max_val < np.float32(1e-8))
    scale, grid = _search_grid(lattice, xval, weight, max_val, active, 3, 9, np.float32(0.1), REFINE_OFF_GRID)
    scale, grid, signs = _fold_negative_scales(scale, grid, signs, active, _ALL_SIGN_BITS)

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 16), np.float32(0.9875))
    points = grid.T.reshape(nb, 32)  # point i8 = 2 ib + k
    high = _pack_fields((points >> 8).astype(np.uint8).reshape(nb, 8, 4), 2)  # bits 8-9 of 4 points
    _start_blocks(out, d_bits)
    out[:, 2:34] = points & 255
    out[:, 34:66] = signs.T.reshape(nb, 32)
    out[:, 66:74] = high
    out[:, 74:82] = _pack_nibble_pairs(multipliers)
    out[~nonzero, 0:2] = 0
    out[~nonzero, 74:82] = 0


@FAMILY.quantizer("IQ2_S")
def quantize_iq2_s(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ2_S: 1024 grid points of 8 2-bit levels, free signs, 2.5625 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq2_s_blocks)


@FAMILY.dequantizer("IQ2_S")
def dequantize_iq2_s(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    high = _unpack_fields(blocks[:, 66:74], 2, 4)  # [nb, 8, 4]
    grid_idx = blocks[:, 2:34].reshape(-1, 8, 4).astype(np.int32) | high.astype(np.int32) << 8
    multipliers = _unpack_nibble_pairs(blocks[:, 74:82])
    db = d[:, None] * (_HALF + multipliers.astype(np.float32)) * np.float32(0.25)
    signs = blocks[:, 34:66].reshape(-1, 16, 2)
    return _signed_grid_values(grids.IQ2S_GRID, grid_idx.reshape(-1, 16, 2), db, signs, q.shape[:1] + (n_per_row,))


def _quantize_iq2_xs_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq2_lattice(512)
    xs = _to_sub_blocks(blocks.T, 16)
    weight = _to_sub_blocks(_block_weights(blocks, qw, doubled=False), 16)
    xval, signs = _even_parity_signs(xs, weight)  # [2, n]
    max_val = np.max(xval, axis=0)
    active = ~(max_val < np.float32(1e-15))
    scale, grid = _search_grid(lattice, xval, weight, max_val, active, 3, 9, np.float32(0.1), REFINE_OFF_GRID)
    scale, grid, signs = _fold_negative_scales(scale, grid, signs, active, _SEVEN_SIGN_BITS)
    points = grid | signs.astype(np.int32) << 9

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 16), _F1)
    _start_blocks(out, d_bits)
    out[:, 2:66] = points.T.reshape(nb, 32).astype("<u2").view(np.uint8)
    out[:, 66:74] = _pack_nibble_pairs(multipliers)
    out[~nonzero] = 0


@FAMILY.quantizer("IQ2_XS")
def quantize_iq2_xs(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ2_XS: 512 grid points of 8 2-bit levels, even-parity signs, 2.3125 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq2_xs_blocks)


@FAMILY.dequantizer("IQ2_XS")
def dequantize_iq2_xs(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    points = blocks[:, 2:66].copy().view("<u2").reshape(-1, 16, 2)
    multipliers = _unpack_nibble_pairs(blocks[:, 66:74])
    db = d[:, None] * (_HALF + multipliers.astype(np.float32)) * np.float32(0.25)
    signs = grids.KSIGNS_IQ2XS[points >> 9]
    return _signed_grid_values(grids.IQ2XS_GRID, points & 511, db, signs, q.shape[:1] + (n_per_row,))


def _quantize_iq2_xxs_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq2_lattice(256)
    xs = _to_sub_blocks(blocks.T)
    weight = _to_sub_blocks(_block_weights(blocks, qw, doubled=False))
    xval, signs = _even_parity_signs(xs, weight)  # [4, n]
    max_val = np.max(xval, axis=0)
    active = ~(max_val < np.float32(1e-15))
    with np.errstate(all="ignore"):
        start_scale, _ = make_qp_quants(xval.T, 4, weight.T)  # kMaxQ + 1 levels
        eff_max = start_scale * np.float32(3)
        active &= eff_max > 0
        scale, grid = _search_grid(
            lattice, xval, weight, eff_max, active, 3, 6, np.float32(0.1), REFINE_ALWAYS_ALL, start_scale
        )
    scale, grid, signs = _fold_negative_scales(scale, grid, signs, active, _SEVEN_SIGN_BITS)

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 8), _F1)
    packed = _pack_sign_words(signs, multipliers)
    _start_blocks(out, d_bits)
    words = out[:, 2:66].reshape(nb, 8, 8)  # per sub-block: 4 grid bytes, then signs and scale
    words[:, :, 0:4] = grid.T.reshape(nb, 8, 4)
    words[:, :, 4:8] = packed.astype("<u4").reshape(nb, 8, 1).view(np.uint8)
    out[~nonzero] = 0


@FAMILY.quantizer("IQ2_XXS")
def quantize_iq2_xxs(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ2_XXS: 256 grid points of 8 2-bit levels, even-parity signs, 2.0625 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq2_xxs_blocks)


@FAMILY.dequantizer("IQ2_XXS")
def dequantize_iq2_xxs(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    words = blocks[:, 2:66].copy().view("<u4").reshape(-1, 8, 2)
    grid_idx = blocks[:, 2:66].reshape(-1, 8, 8)[:, :, 0:4]
    packed = words[:, :, 1]
    db = d[:, None] * (_HALF + (packed >> 28).astype(np.float32)) * np.float32(0.25)
    return _signed_grid_values(grids.IQ2XXS_GRID, grid_idx, db, _unpack_sign_words(packed), q.shape[:1] + (n_per_row,))


_IQ1_DELTA = np.float32(0.125)
# Level values of the two IQ1 shifts: -1, 0, 1 moved up (shift +1) or down (shift -1) by delta.
_IQ1_UP = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=np.float32)
_IQ1_DOWN = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=np.float32)


@functools.cache
def _iq1_lattice() -> Lattice:
    return Lattice(grids.KGRID_1BIT_2048, dims=8, bits=2, kmap_size=43692, nwant=3)


def _iq1_best_split(sumx: np.ndarray, sumw: np.ndarray) -> tuple[np.ndarray, ...]:
    """ggml's exhaustive split of sorted weights into levels (-1, 0, 1) + shift delta: every
    (i1 <= i2) boundary pair, shift up then down, in ggml's order with its running best.
    sumx, sumw: prefix sums [sub + 1, n]. Returns (scale, i1, i2, shift) per sub-block."""
    sub = sumx.shape[0] - 1
    n = sumx.shape[1]
    best = np.full(n, -np.finfo(np.float32).max, dtype=np.float32)
    scale = np.zeros(n, dtype=np.float32)
    best_i1 = np.full(n, -1)
    best_i2 = np.full(n, -1)
    best_shift = np.zeros(n, dtype=np.int8)
    top_x, top_w = sumx[sub], sumw[sub]
    for i1 in range(sub + 1):
        low_x, low_w = sumx[i1] - sumx[0], sumw[i1] - sumw[0]
        for i2 in range(i1, sub + 1):
            mid_x, mid_w = sumx[i2] - sumx[i1], sumw[i2] - sumw[i1]
            high_x, high_w = top_x - sumx[i2], top_w - sumw[i2]
            for shift, v in ((1, _IQ1_UP), (-1, _IQ1_DOWN)):
                sumqx = low_x * v[0] + mid_x * v[1] + high_x * v[2]
                sumq2 = low_w * v[0] * v[0] + mid_w * v[1] * v[1] + high_w * v[2] * v[2]
                better = _beats_best_fit(sumqx, sumq2, best)
                if better.any():
                    best, scale = _take_better_fit(better, sumqx, sumq2, best, scale)
                    best_i1 = np.where(better, i1, best_i1)
                    best_i2 = np.where(better, i2, best_i2)
                    best_shift = np.where(better, shift, best_shift)
    return scale, best_i1, best_i2, best_shift


def _iq1_sort(xs: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's qsort of each sub-block's weights by value (ties keep index order, as glibc's
    merge sort does). Returns (order, sorted x, sorted weight), all [sub, n]."""
    cols = np.arange(xs.shape[1])
    order = np.argsort(xs, axis=0, kind="stable")
    return order, xs[order, cols], weight[order, cols]


def _iq1_split_levels(order: np.ndarray, i1: np.ndarray, i2: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Levels 0, 1, 2 of the weights below sorted position i1, below i2, and above; mirrored
    (2 - level) where flip (the fitted scale came out negative)."""
    rank = np.empty_like(order)
    rank[order, np.arange(order.shape[1])] = np.arange(order.shape[0])[:, None]
    levels = (rank >= i1).astype(np.int64) + (rank >= i2)
    return np.where(flip, 2 - levels, levels)


def _iq1_group_levels(lattice: Lattice, grid: np.ndarray, group_down: np.ndarray) -> np.ndarray:
    """Level values of grid indices [groups, n], each group shifted down where group_down
    [groups, n], else up -> [groups * 8, n]."""
    level_idx = lattice.level_index[grid]  # [groups, n, 8]
    q = np.where(group_down[:, :, None], _IQ1_DOWN[level_idx], _IQ1_UP[level_idx])
    return q.transpose(0, 2, 1).reshape(grid.shape[0] * 8, -1)


def _iq1_snap(
    lattice: Lattice,
    levels: np.ndarray,
    xs: np.ndarray,
    weight: np.ndarray,
    scale: np.ndarray,
    group_down: np.ndarray,
    active: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices of the level groups (8 levels each) of levels [sub, n]; a group off the grid
    takes its best neighbour at `scale`; then the scale is refitted to the grid points where a
    group was off the grid and the fit stays positive. Inactive sub-blocks get grid index 0 and
    keep their scale. group_down [groups, n]: the group's shift. Returns (grid, scale)."""
    groups = levels.shape[0] // 8
    n = levels.shape[1]
    codes = lattice.codes(levels.reshape(groups, 8, n))
    grid = lattice.grid_of_code[codes]
    off = grid < 0
    group, col = np.nonzero(off & active[None, :])
    if group.size:
        values = np.where(group_down[group, col][:, None], _IQ1_DOWN, _IQ1_UP)
        xg = xs.reshape(groups, 8, n)[group, :, col]
        wg = weight.reshape(groups, 8, n)[group, :, col]
        safe_scale = np.where(active, scale, _F1)
        grid[group, col] = lattice.best_neighbours(codes[group, col], xg, wg, safe_scale[col], values)
    grid = np.where(active[None, :], grid, 0)

    scale = scale.copy()
    refit = active & off.any(axis=0)
    if refit.any():
        rc = np.flatnonzero(refit)
        q = _iq1_group_levels(lattice, grid[:, rc], group_down[:, rc])
        sumqx, sumq2 = _weighted_fit_wq_first(weight[:, rc], xs[:, rc], q)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale[rc] = np.where((sumqx > 0) & (sumq2 > 0), sumqx / sumq2, scale[rc])
    return grid, scale


def _quantize_iq1_s_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq1_lattice()
    xs = _to_sub_blocks(blocks.T)
    weight = _to_sub_blocks(_block_weights(blocks, qw))
    n = xs.shape[1]
    max_abs = np.max(np.abs(xs), axis=0)
    active = ~(max_abs < np.float32(1e-12))

    order, sorted_x, sorted_w = _iq1_sort(xs, weight)
    sumx = np.zeros((SUB + 1, n), dtype=np.float32)
    sumw = np.zeros((SUB + 1, n), dtype=np.float32)
    for j in range(SUB):
        sumx[j + 1] = sumx[j] + sorted_w[j] * sorted_x[j]
        sumw[j + 1] = sumw[j] + sorted_w[j]
    with np.errstate(over="ignore", invalid="ignore"):
        scale, i1, i2, shift = _iq1_best_split(sumx, sumw)
    active &= (i1 >= 0) & (i2 >= 0) & (shift != 0)

    flip = scale < 0
    levels = _iq1_split_levels(order, i1, i2, flip)
    scale = np.where(flip, -scale, scale)
    shift = np.where(flip, -shift, shift)
    group_down = np.broadcast_to(shift == -1, (4, n))
    grid, scale = _iq1_snap(lattice, levels, xs, weight, scale, group_down, active)
    scale = np.where(active, scale, _F0)
    shift = np.where(active, shift, 1)

    d_bits, multipliers, nonzero = _super_block_scale(scale.reshape(nb, 8), np.float32(1.125), max_multiplier=7)
    multipliers = np.where(nonzero[:, None], multipliers | np.where(shift.reshape(nb, 8) == -1, 8, 0), 0)
    points = grid.T.reshape(nb, 8, 4)
    high = _pack_fields(points >> 8, 3)
    _start_blocks(out, d_bits)
    out[:, 2:34] = (points & 255).reshape(nb, 32)
    out[:, 34:50] = (high | multipliers << 12).astype("<u2").view(np.uint8)


@FAMILY.quantizer("IQ1_S")
def quantize_iq1_s(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ1_S: 2048 grid points of 8 ternary levels, shifted by +-1/8, 1.5625 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq1_s_blocks)


@FAMILY.dequantizer("IQ1_S")
def dequantize_iq1_s(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks, d = _blocks_and_scale(t, q)
    qh = blocks[:, 34:50].copy().view("<u2").astype(np.int32)  # [nb, 8]
    high = _unpack_fields(qh, 3, 4)
    grid_idx = blocks[:, 2:34].reshape(-1, 8, 4).astype(np.int32) | high << 8
    dl = d[:, None] * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    delta = np.where(qh & 0x8000, -_IQ1_DELTA, _IQ1_DELTA)
    levels = grids.IQ1S_GRID[grid_idx].view(np.int8).reshape(-1, 8, 32).astype(np.float32)
    values = dl[:, :, None] * (levels + delta[:, :, None])
    return values.reshape(q.shape[0], n_per_row)


IQ1M_SUB = 16  # weights per IQ1_M sub-block: two groups of 8, each with its own shift


def _iq1m_best_split(
    sorted_x: np.ndarray, sorted_w: np.ndarray, in_first_group: np.ndarray
) -> tuple[np.ndarray, ...]:
    """IQ1_M's exhaustive split (ggml as in llama.cpp 3aa0ce9): every (i1 <= i2) boundary pair of
    the sorted weights, each with the 4 shift choices k, scored from prefix sums kept per group of
    8 (each group has its own shift). Since v0 - v1 = v1 - v2 = -1 for both shifts, a group's
    sum(w x q) is T v2 - S(i1) - S(i2) and its sum(w q^2) is W v2^2 + W(i1) c1 + W(i2) c2. The
    running best is kept in ggml's order (i1, i2, k). sorted_*, in_first_group [16, n].
    Returns (scale, i1, i2, k) per sub-block.

    ggml v0.21.0 summed every candidate from scratch instead; the roundings differ, and so do
    some choices: llama.cpp's quantizer is the reference here.
    """
    sub, n = sorted_x.shape
    px = np.zeros((2, sub + 1, n), dtype=np.float32)  # [group, sorted position, n]
    pw = np.zeros((2, sub + 1, n), dtype=np.float32)
    for j in range(sub):
        first = in_first_group[j]
        wx = sorted_w[j] * sorted_x[j]
        for h, mine in ((0, first), (1, ~first)):
            px[h, j + 1] = np.where(mine, px[h, j] + wx, px[h, j])
            pw[h, j + 1] = np.where(mine, pw[h, j] + sorted_w[j], pw[h, j])
    txs, tws = px[:, sub], pw[:, sub]
    up, down = _IQ1_UP, _IQ1_DOWN
    p2, m2 = up[2], down[2]
    cp1, cp2 = up[0] * up[0] - up[1] * up[1], up[1] * up[1] - up[2] * up[2]
    cm1, cm2 = down[0] * down[0] - down[1] * down[1], down[1] * down[1] - down[2] * down[2]
    pair_i1, pair_i2 = np.triu_indices(sub + 1)  # i1 <= i2, i1-major as ggml loops
    sx = px[:, pair_i1] + px[:, pair_i2]  # [group, pairs, n]
    qx_p = txs[:, None] * p2 - sx
    qx_m = txs[:, None] * m2 - sx
    q2_p = (tws * p2 * p2)[:, None] + pw[:, pair_i1] * cp1 + pw[:, pair_i2] * cp2
    q2_m = (tws * m2 * m2)[:, None] + pw[:, pair_i1] * cm1 + pw[:, pair_i2] * cm2
    # k: bit 1 shifts the first group down, bit 0 the second
    sumqx = (qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1])
    sumq2 = (q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1])

    best = np.full(n, -np.finfo(np.float32).max, dtype=np.float32)
    scale = np.zeros(n, dtype=np.float32)
    best_pair = np.full(n, -1)
    best_k = np.full(n, -1)
    for p in range(pair_i1.size):
        for k in range(4):
            sx_k, sq_k = sumqx[k][p], sumq2[k][p]
            better = _beats_best_fit(sx_k, sq_k, best)
            if better.any():
                best, scale = _take_better_fit(better, sx_k, sq_k, best, scale)
                best_pair = np.where(better, p, best_pair)
                best_k = np.where(better, k, best_k)
    found = best_pair >= 0
    i1 = np.where(found, pair_i1[best_pair], -1)
    i2 = np.where(found, pair_i2[best_pair], -1)
    return scale, i1, i2, best_k


def _from_sub_blocks(a: np.ndarray, sub: int) -> np.ndarray:
    """Inverse of _to_sub_blocks: [sub, n_blocks * QK_K / sub] -> [QK_K, n_blocks]."""
    return a.reshape(sub, -1, QK_K // sub).transpose(2, 0, 1).reshape(QK_K, -1)


def _quantize_iq1_m_blocks(blocks: np.ndarray, qw: np.ndarray | None, out: np.ndarray) -> None:
    nb = blocks.shape[0]
    lattice = _iq1_lattice()
    xs = _to_sub_blocks(blocks.T, IQ1M_SUB)
    weight = _to_sub_blocks(_block_weights(blocks, qw), IQ1M_SUB)
    n = xs.shape[1]
    max_abs = np.max(np.abs(xs), axis=0)
    active = ~(max_abs < np.float32(1e-7))

    order, sorted_x, sorted_w = _iq1_sort(xs, weight)
    with np.errstate(over="ignore", invalid="ignore"):
        scale, i1, i2, shift = _iq1m_best_split(sorted_x, sorted_w, order < IQ1M_SUB // 2)
    active &= shift >= 0

    flip = scale < 0
    levels = _iq1_split_levels(order, i1, i2, flip)
    scale = np.where(flip, -scale, scale)
    shift = np.where(flip, 3 - shift, shift)
    group_down = np.stack([shift >= 2, shift % 2 == 1])
    grid, scale = _iq1_snap(lattice, levels, xs, weight, scale, group_down, active)
    scale = np.where(active, scale, _F0)
    shift = np.where(active, shift, 0)
    group_down &= active[None, :]

    d, multipliers, nonzero = _super_block_multipliers(scale.reshape(nb, 16), 7)  # [nb, 16]

    # ggml refits the super-block scale to every weight at its stored level, in weight order.
    odd = (2 * multipliers + 1).astype(np.float32).reshape(n)
    q = _from_sub_blocks(_iq1_group_levels(lattice, grid, group_down) * odd, IQ1M_SUB)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        sumqx, sumq2 = _weighted_fit_wq_first(_from_sub_blocks(weight, IQ1M_SUB), blocks.T, q)
        d = np.where(sumq2 > 0, sumqx / sumq2, d)
        d_bits = fp16_bits(d * np.float32(1.1125)).astype(np.uint32)

    points = grid.T.reshape(nb, 16, 2).astype(np.uint32)
    shift_bits = np.where(group_down.T.reshape(nb, 16, 2) & nonzero[:, None, None], 8, 0)
    qh = (points[:, :, 0] >> 8) | shift_bits[:, :, 0] | ((points[:, :, 1] >> 8) | shift_bits[:, :, 1]) << 4
    packed_multipliers = _pack_fields(multipliers.reshape(nb, 4, 4), 3)
    d_nibbles = _unpack_fields(d_bits, 4, 4)
    sc = np.where(nonzero[:, None], packed_multipliers | d_nibbles << 12, 0)
    out[...] = 0
    out[:, 0:32] = (points & 255).reshape(nb, 32)
    out[:, 32:48] = qh
    out[:, 48:56] = sc.astype("<u2").view(np.uint8)


@FAMILY.quantizer("IQ1_M")
def quantize_iq1_m(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """IQ1_M: IQ1_S's grid in groups of 8 with a shift each, 3-bit scales per 16 weights, the
    fp16 super-block scale spread over their top nibbles; 1.75 bits per weight."""
    return _quantize_rows(t, x, imatrix, _quantize_iq1_m_blocks)


@FAMILY.dequantizer("IQ1_M")
def dequantize_iq1_m(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    sc = blocks[:, 48:56].copy().view("<u2").astype(np.uint32)  # [nb, 4]
    d = fp16_bits_to_f32(_pack_fields(sc >> 12, 4).astype(np.uint16))
    multipliers = _unpack_fields(sc, 3, 4)  # [nb, 4, 4]
    dl = d[:, None] * (2 * multipliers.reshape(-1, 16) + 1).astype(np.float32)
    nibbles = _unpack_nibble_pairs(blocks[:, 32:48].astype(np.int32))  # per group of 8
    grid_idx = blocks[:, 0:32].astype(np.int32) | (nibbles & 7) << 8
    delta = np.where(nibbles & 8, -_IQ1_DELTA, _IQ1_DELTA)
    levels = grids.IQ1S_GRID[grid_idx].view(np.int8).reshape(-1, 32, 8).astype(np.float32)
    values = np.repeat(dl, 2, axis=1)[:, :, None] * (levels + delta[:, :, None])
    return values.reshape(q.shape[0], n_per_row)


# ---------------------------------------------------------------------------------------------
# The tables as the kernels take them
# ---------------------------------------------------------------------------------------------


class LatticeTables(NamedTuple):
    """A lattice type's tables in the kernels' order: the fields of GqLattice (kernels/lattice.cuh),
    GQ_LATTICE_PARAMS (kernels/lattice.cu) and gq_set_lattice (kernels/host_lattice.cpp). Both hosts of
    the kernels pass them in this order: the seven arrays (`tables[:7]`), then dims and bits."""

    grid_of_code: np.ndarray  # int32 [kmap size]: grid index of a level code, -1 off the lattice
    neighbour_start: np.ndarray  # int32 [kmap size]: first entry of a code's list in `neighbours`
    neighbour_count: np.ndarray  # int32 [kmap size]
    neighbours: np.ndarray  # int32: grid indices, by increasing distance, ties by index
    level_index: np.ndarray  # uint8 [grid size, dims]: l of each level (the level is 2 l + 1)
    values: np.ndarray  # uint8 [grid size * dims]: the levels as the dequantizer reads them
    ksigns: np.ndarray  # uint8 [128]: 7 stored sign bits -> 8 with even parity
    dims: np.int32  # 4 (IQ3) or 8 (IQ2, IQ1)
    bits: np.int32  # bits per level index: 3 (IQ3) or 2 (IQ2, IQ1)


def _lattice_and_grid(type_name: str) -> tuple[Lattice, np.ndarray]:
    """The quantizer's lattice and the dequantization grid of a lattice type."""
    if type_name == "IQ2_XXS":
        return _iq2_lattice(256), grids.IQ2XXS_GRID
    if type_name == "IQ2_XS":
        return _iq2_lattice(512), grids.IQ2XS_GRID
    if type_name == "IQ2_S":
        return _iq2_lattice(1024), grids.IQ2S_GRID
    if type_name == "IQ3_XXS":
        return _iq3_lattice(256), grids.IQ3XXS_GRID
    if type_name == "IQ3_S":
        return _iq3_lattice(512), grids.IQ3S_GRID
    if type_name in ("IQ1_S", "IQ1_M"):
        return _iq1_lattice(), grids.IQ1S_GRID
    raise ValueError(f"{type_name} is not a lattice type")


def _kernel_array(a: np.ndarray, dtype: type) -> np.ndarray:
    """A C-contiguous copy that nobody can change: the kernels read it for the process's lifetime."""
    out = np.array(a, dtype=dtype, order="C")
    out.flags.writeable = False
    return out


@functools.cache  # built once per type (~0.3 s for the IQ2 and IQ1 lattices); kept alive for the kernels
def kernel_tables(type_name: str) -> LatticeTables:
    """The tables of a lattice type as the kernels take them: this module's own lattice (so the host
    build, the CUDA kernels and this backend search the very same neighbour lists), read-only."""
    lattice, grid = _lattice_and_grid(type_name)
    return LatticeTables(
        grid_of_code=_kernel_array(lattice.grid_of_code, np.int32),
        neighbour_start=_kernel_array(lattice.neighbour_start, np.int32),
        neighbour_count=_kernel_array(lattice.neighbour_count, np.int32),
        neighbours=_kernel_array(lattice.neighbours, np.int32),
        level_index=_kernel_array(lattice.level_index, np.uint8),
        values=_kernel_array(np.ascontiguousarray(grid).view(np.uint8), np.uint8),
        ksigns=_kernel_array(grids.KSIGNS_IQ2XS, np.uint8),
        dims=np.int32(lattice.dims),
        bits=np.int32(lattice.bits),
    )

"""ggml's shared scale searches, make_qx_quants and make_qkx3_quants, vectorized across blocks.

Each block is searched on its own, exactly as ggml's C code does one block per call: the same
float32 operations in the same order. Work is vectorized across blocks; every sum that ggml
accumulates element by element is accumulated here element by element too (a loop over the
in-block index adding whole vectors of blocks), never with np.sum, whose pairwise order rounds
differently. Internally blocks are laid out transposed, [n, nblocks], so that each in-block index
is one contiguous vector; large inputs are processed in chunks of blocks that stay in cache.
"""

from __future__ import annotations

import numpy as np

from .rounding import NEAREST_INT_PLAIN_LIMIT, nearest_int_exact

# ggml's GROUP_MAX_EPS: a block whose largest magnitude is below this quantizes to zeros.
GROUP_MAX_EPS = np.float32(1e-15)

# Blocks per chunk: the transposed temporaries of one chunk stay in a 2 MiB L2 cache.
_CHUNK_BLOCKS = 4096

_F0 = np.float32(0.0)
_F_HALF = np.float32(0.5)
_F_ONE = np.float32(1.0)


def _accumulate(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = ((0 + rows[0]) + rows[1]) + ...: ggml's `sum += term` loop, one vector per index."""
    out.fill(_F0)
    for row in rows:
        out += row
    return out


def _clipped_levels(scaled: np.ndarray, lo: int, hi: int, exact: bool) -> np.ndarray:
    """MAX(lo, MIN(hi, nearest_int(scaled))) in place, kept as float32 (small integers).

    exact=False assumes every |scaled| <= NEAREST_INT_PLAIN_LIMIT (np.rint is then ggml's
    nearest_int); exact=True reproduces ggml's bit trick for any float32, at some cost.
    """
    if exact:
        bits = nearest_int_exact(scaled)
        np.clip(bits, lo, hi, out=bits)
        scaled[...] = bits
    else:
        np.rint(scaled, out=scaled)
        np.clip(scaled, np.float32(lo), np.float32(hi), out=scaled)  # faster than np.minimum
    return scaled


def _checked_blocks(
    x: np.ndarray, weights: np.ndarray | None, weights_name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """x and weights as float32, x [nblocks, n] and weights (if any) of the same shape."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be [nblocks, n], got shape {x.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != x.shape:
            raise ValueError(f"{weights_name} shape {weights.shape} differs from x shape {x.shape}")
    return x, weights


def _search_in_chunks(x: np.ndarray, weights: np.ndarray | None, n_results: int, search_t) -> tuple:
    """Runs search_t(xt, wt) -> (n_results float32 [nb] arrays..., L [n, nb]) on transposed chunks of
    blocks (wt None without weights); returns those per-block results for all blocks, then L as
    uint8 [nblocks, n]."""
    nblocks, n = x.shape
    results = [np.empty(nblocks, dtype=np.float32) for _ in range(n_results)]
    levels = np.empty((nblocks, n), dtype=np.uint8)
    for start in range(0, nblocks, _CHUNK_BLOCKS):
        part = slice(start, min(start + _CHUNK_BLOCKS, nblocks))
        xt = np.ascontiguousarray(x[part].T)
        wt = None if weights is None else np.ascontiguousarray(weights[part].T)
        with np.errstate(all="ignore"):  # inf and NaN follow IEEE rules, as in C
            *values, lt = search_t(xt, wt)
        for result, value in zip(results, values, strict=True):
            result[part] = value
        levels[part] = lt.T
    return (*results, levels)


# --------------------------------------------------------------------------------------------
# make_qx_quants
# --------------------------------------------------------------------------------------------


def make_qx_quants(
    x: np.ndarray, nmax: int, rmse_type: int, qw: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type, qw) for many blocks at once.

    x: float32 [nblocks, n] (one ggml call per row; any n); nmax: the C `nmax` (levels
    -nmax..nmax-1); rmse_type: as in ggml (0: plain rounding; 1..4: search 18 extra scales with
    weights x*x, 1, |x|, sqrt|x|; negative: the weighted least-squares scale averaged with the
    first guess, no search); qw: float32 [nblocks, n] weights, or None (then rmse_type picks them).

    Returns (scale float32 [nblocks], L uint8 [nblocks, n]) where L = level + nmax, i.e. the
    C function's return value and its L array. Blocks with max |x| < GROUP_MAX_EPS give 0 and 0s.
    """
    x, qw = _checked_blocks(x, qw, "qw")
    return _search_in_chunks(x, qw, 1, lambda xt, qwt: _make_qx_quants_t(xt, nmax, rmse_type, qwt))


def _make_qx_quants_t(xt: np.ndarray, nmax: int, rmse_type: int, qwt: np.ndarray | None):
    """make_qx_quants on transposed blocks xt [n, nb]; returns (scale [nb], L [n, nb] uint8)."""
    n, nb = xt.shape
    # The first element of largest magnitude (strict `>`, so ties keep the first) and its sign.
    amax = np.zeros(nb, dtype=np.float32)
    vmax = np.zeros(nb, dtype=np.float32)
    ax = np.empty(nb, dtype=np.float32)
    for row in xt:
        np.abs(row, out=ax)
        larger = ax > amax
        np.copyto(amax, ax, where=larger)
        np.copyto(vmax, row, where=larger)
    all_zero = amax < GROUP_MAX_EPS
    vmax[all_zero] = _F_ONE  # any finite value: these blocks are overwritten at the end
    # With finite x, |iscale*x| <= nmax + 1 for every candidate scale; only inf/NaN need the
    # exact nearest_int.
    exact = not bool(np.isfinite(xt).all())

    fnmax = np.float32(nmax)
    lo, hi = -nmax, nmax - 1
    scaled = np.empty_like(xt)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        iscale = -fnmax / vmax
        np.multiply(iscale, xt, out=scaled)
        lvl = _clipped_levels(scaled, lo, hi, exact)
        if rmse_type == 0:
            scale = _F_ONE / iscale
            return _zero_blocks(scale, lvl, all_zero, nmax)

        return_early = rmse_type < 0
        rmse_type = abs(rmse_type)
        if qwt is not None:
            w = qwt
        elif rmse_type == 1:
            w = xt * xt
        elif rmse_type == 2:
            w = np.ones_like(xt)
        elif rmse_type == 3:
            w = np.abs(xt)
        else:
            w = np.sqrt(np.abs(xt))
        wx = w * xt  # C: w*x[i]*l evaluates (w*x[i])*l
        sumlx = np.empty(nb, dtype=np.float32)
        suml2 = np.empty(nb, dtype=np.float32)
        prod = np.empty_like(xt)
        _qx_sums(wx, w, lvl, prod, sumlx, suml2)
        scale = np.where(suml2 != 0, sumlx / suml2, _F0)  # C: suml2 ? sumlx/suml2 : 0
        if return_early:
            first_guess = _F_ONE / iscale
            scale = np.where(suml2 > 0, _F_HALF * (scale + first_guess), first_guess)
            return _zero_blocks(scale, lvl, all_zero, nmax)

        best_lvl = lvl.copy()
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(fnmax + np.float32(0.1) * np.float32(step)) / vmax
            np.multiply(iscale, xt, out=scaled)
            lvl = _clipped_levels(scaled, lo, hi, exact)
            _qx_sums(wx, w, lvl, prod, sumlx, suml2)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                np.copyto(best_lvl, lvl, where=better)
                new_scale = sumlx / suml2
                np.copyto(scale, new_scale, where=better)
                np.copyto(best, new_scale * sumlx, where=better)
    return _zero_blocks(scale, best_lvl, all_zero, nmax)


def _qx_sums(wx, w, lvl, prod, sumlx, suml2) -> None:
    """sumlx += w*x[i]*l and suml2 += w*l*l, evaluated left to right as C does."""
    np.multiply(wx, lvl, out=prod)
    _accumulate(prod, sumlx)
    np.multiply(w, lvl, out=prod)
    np.multiply(prod, lvl, out=prod)
    _accumulate(prod, suml2)


def _zero_blocks(scale: np.ndarray, lvl: np.ndarray, all_zero: np.ndarray, nmax: int):
    """Shift levels to 0..2*nmax-1 as uint8, and zero the blocks ggml treats as all zero."""
    lvl += np.float32(nmax)
    levels = lvl.astype(np.uint8)
    scale = scale.astype(np.float32, copy=False)
    if all_zero.any():
        scale[all_zero] = _F0
        levels[:, all_zero] = 0
    return scale, levels


# --------------------------------------------------------------------------------------------
# make_qkx3_quants
# --------------------------------------------------------------------------------------------


def make_qkx3_quants(
    x: np.ndarray,
    nmax: int,
    weights: np.ndarray | None,
    rmin: float = -0.9,
    rdelta: float = 0.05,
    nstep: int = 36,
    use_mad: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad) for many blocks at once.

    x: float32 [nblocks, n] (one ggml call per row; any n); nmax: the top level (levels 0..nmax);
    weights: float32 [nblocks, n], or None for ggml's default weights x*x; rmin, rdelta, nstep:
    the scale search iscale = (rmin + rdelta*is + nmax) / (max - min) for is = 0..nstep (nstep < 1:
    no search); use_mad: weigh |error| instead of error^2. rmin and rdelta are rounded to
    float32 (as the C float parameters are), so pass -0.9 and 0.05 for ggml's -0.9f and 0.05f.

    Returns (scale float32 [nblocks], the_min float32 [nblocks], L uint8 [nblocks, n]): the C
    return value, *the_min (the negated block minimum, as ggml stores it), and L.
    """
    x, weights = _checked_blocks(x, weights, "weights")
    rmin, rdelta = np.float32(rmin), np.float32(rdelta)
    return _search_in_chunks(
        x, weights, 2, lambda xt, wt: _make_qkx3_quants_t(xt, nmax, wt, rmin, rdelta, int(nstep), bool(use_mad))
    )


def _weighted_error(xt, w, lvl, scale, the_min, use_mad, diff, out) -> np.ndarray:
    """sum of w * err, err = (scale*L + min - x)^2 or |.|, accumulated in index order as C does."""
    np.multiply(scale, lvl, out=diff)
    np.add(diff, the_min, out=diff)
    np.subtract(diff, xt, out=diff)
    if use_mad:
        np.abs(diff, out=diff)
    else:
        np.multiply(diff, diff, out=diff)
    np.multiply(w, diff, out=diff)
    return _accumulate(diff, out)


def _may_exceed_nearest_int(iscale, data_min, data_max, cur_min) -> bool:
    """Whether iscale*(x - cur_min) can leave nearest_int's plain range for some x of a block.

    Once ggml has moved `min` above the data minimum, a span (max - min) that is tiny next to
    (min - data minimum) makes huge values; a subnormal span makes iscale infinite (its NaN and
    inf products fail the test too). The products are monotone in x, so the ends of the data
    range bound them.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        low_end = np.abs(iscale * (data_min - cur_min))
        high_end = np.abs(iscale * (data_max - cur_min))
        return not bool(((low_end <= NEAREST_INT_PLAIN_LIMIT) & (high_end <= NEAREST_INT_PLAIN_LIMIT)).all())


def _make_qkx3_quants_t(xt, nmax, wt, rmin, rdelta, nstep, use_mad):
    """make_qkx3_quants on transposed blocks xt [n, nb]: (scale, the_min, L [n, nb] uint8)."""
    n, nb = xt.shape
    w = xt * xt if wt is None else wt

    # min/max start at x[0] and move on strict comparisons (this fixes the sign of a zero min);
    # sum_w and sum_x start from the first element, not from 0.
    vmin = xt[0].copy()
    vmax = xt[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * xt[0]
    term = np.empty(nb, dtype=np.float32)
    for i in range(1, n):
        row = xt[i]
        np.copyto(vmin, row, where=row < vmin)
        np.copyto(vmax, row, where=row > vmax)
        sum_w += w[i]
        np.multiply(w[i], row, out=term)
        sum_x += term
    np.copyto(vmin, _F0, where=vmin > 0)
    flat = vmax <= vmin  # ggml returns scale 0, L 0, the_min -min for these
    nonfinite = not bool(np.isfinite(xt).all())  # then nearest_int must be exact
    data_min = vmin.copy()

    fnmax = np.float32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        # ggml moves `min` to each better candidate's min inside the search loop, so later
        # candidates measure their span and shift from it: keep that current min per block.
        cur_min = vmin.copy()
        span = np.empty(nb, dtype=np.float32)
        shifted = np.empty_like(xt)

        def shift_by_current_min() -> None:
            np.subtract(vmax, cur_min, out=span)
            np.copyto(span, _F_ONE, where=flat)  # keeps the discarded flat blocks finite
            np.subtract(xt, cur_min, out=shifted)

        shift_by_current_min()
        iscale = fnmax / span
        scale = _F_ONE / iscale
        scaled = np.empty_like(xt)
        np.multiply(iscale, shifted, out=scaled)
        # A subnormal span makes iscale infinite (nmax / span overflows): ggml's nearest_int
        # then turns inf*0 = NaN and inf into level 0, where np.rint would give nmax.
        exact = nonfinite or _may_exceed_nearest_int(iscale, data_min, vmax, cur_min)
        best_lvl = _clipped_levels(scaled, 0, nmax, exact).copy()

        diff = np.empty_like(xt)
        best_mad = np.empty(nb, dtype=np.float32)
        _weighted_error(xt, w, best_lvl, scale, cur_min, use_mad, diff, best_mad)
        if nstep >= 1:
            sum_l = np.empty(nb, dtype=np.float32)
            sum_l2 = np.empty(nb, dtype=np.float32)
            sum_xl = np.empty(nb, dtype=np.float32)
            mad = np.empty(nb, dtype=np.float32)
            wl = np.empty_like(xt)
            prod = np.empty_like(xt)
            live = ~flat
            for step in range(nstep + 1):
                iscale = (rmin + rdelta * np.float32(step) + fnmax) / span
                np.multiply(iscale, shifted, out=scaled)
                exact = nonfinite or _may_exceed_nearest_int(iscale, data_min, vmax, cur_min)
                lvl = _clipped_levels(scaled, 0, nmax, exact)
                np.multiply(w, lvl, out=wl)
                _accumulate(wl, sum_l)
                np.multiply(wl, lvl, out=prod)  # C: w*l*l is (w*l)*l
                _accumulate(prod, sum_l2)
                np.multiply(wl, xt, out=prod)  # C: w*l*x[i] is (w*l)*x[i]
                _accumulate(prod, sum_xl)
                det = sum_w * sum_l2 - sum_l * sum_l
                solvable = live & (det > 0)
                if not solvable.any():
                    continue
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
                positive_min = this_min > 0
                np.copyto(this_min, _F0, where=positive_min)
                np.copyto(this_scale, sum_xl / sum_l2, where=positive_min)
                _weighted_error(xt, w, lvl, this_scale, this_min, use_mad, diff, mad)
                better = solvable & (mad < best_mad)
                if better.any():
                    np.copyto(best_lvl, lvl, where=better)
                    np.copyto(best_mad, mad, where=better)
                    np.copyto(scale, this_scale, where=better)
                    np.copyto(cur_min, this_min, where=better)
                    shift_by_current_min()

    levels = best_lvl.astype(np.uint8)
    if flat.any():
        scale[flat] = _F0
        levels[:, flat] = 0
    return scale, -cur_min, levels

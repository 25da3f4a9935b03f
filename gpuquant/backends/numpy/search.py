"""ggml's scale searches (make_qx_quants, make_qkx3_quants, make_q3_quants, make_qp_quants), vectorized
across blocks, for the legacy, kquants and lattice families.

Each block is searched on its own, exactly as ggml's C code does one block per call: the same float32
operations in the same order. Every function takes `[nblocks, n]` float32 arrays (one ggml call per
row) and returns per-block results for all blocks at once. Internally blocks are laid out transposed,
`[n, nblocks]`, so that each step of ggml's loop over the in-block index is one contiguous vector
operation; every sum ggml accumulates element by element is accumulated here element by element too
(rounding.in_order_sum), never with np.sum, whose pairwise order rounds differently. Large inputs are
searched in chunks of blocks whose temporaries stay near the CPU caches. Passing the `.T` view of an
`[n, nblocks]` C-contiguous array avoids the transposing copy.

ggml's make_qkx2_quants (the K-quants' reference path) is make_qkx3_quants with explicit weights and
`max == min` for `max <= min`, the same test (after `if (min > 0) min = 0`, max < min is impossible, and
NaN fails both): make_qkx3_quants serves both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .rounding import GROUP_MAX_EPS, NEAREST_INT_PLAIN_LIMIT, first_max_abs, in_order_sum, nearest_int_exact

F32 = np.float32
_F0 = F32(0.0)
_F_HALF = F32(0.5)
_F1 = F32(1.0)
# Elements searched at once: large enough to amortize numpy's per-call cost, small enough that the
# [n, blocks] float32 temporaries of a search stay near the CPU caches.
SEARCH_CHUNK_ELEMENTS = 1 << 18


def transposed(a: np.ndarray) -> np.ndarray:
    """`[nblocks, n]` -> C-contiguous float32 `[n, nblocks]` (free for the `.T` of such an array)."""
    return np.ascontiguousarray(a.T, dtype=F32)


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
        np.clip(scaled, F32(lo), F32(hi), out=scaled)  # faster than np.minimum
    return scaled


def _checked_blocks(
    x: np.ndarray, weights: np.ndarray | None, weights_name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """x and weights as float32, x [nblocks, n] and weights (if any) of the same shape."""
    x = np.asarray(x, dtype=F32)
    if x.ndim != 2:
        raise ValueError(f"x must be [nblocks, n], got shape {x.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=F32)
        if weights.shape != x.shape:
            raise ValueError(f"{weights_name} shape {weights.shape} differs from x shape {x.shape}")
    return x, weights


def _search_in_chunks(
    x: np.ndarray, weights: np.ndarray | None, n_results: int, search_t: Callable[..., tuple]
) -> tuple:
    """Runs search_t(xt, wt) -> (n_results float32 [nb] arrays..., L [n, nb]) on transposed chunks of
    blocks (wt None without weights); returns those per-block results for all blocks, then L as
    uint8 [nblocks, n]."""
    nblocks, n = x.shape
    results = [np.empty(nblocks, dtype=F32) for _ in range(n_results)]
    levels = np.empty((nblocks, n), dtype=np.uint8)
    step = max(1, SEARCH_CHUNK_ELEMENTS // max(1, n))
    for start in range(0, nblocks, step):
        part = slice(start, min(start + step, nblocks))
        xt = transposed(x[part])
        wt = None if weights is None else transposed(weights[part])
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
    amax, vmax = first_max_abs(xt)
    all_zero = amax < GROUP_MAX_EPS
    vmax[all_zero] = _F1  # any finite value: these blocks are overwritten at the end
    # With finite x, |iscale*x| <= nmax + 1 for every candidate scale; only inf/NaN need the
    # exact nearest_int.
    exact = not bool(np.isfinite(xt).all())

    fnmax = F32(nmax)
    lo, hi = -nmax, nmax - 1
    scaled = np.empty_like(xt)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        iscale = -fnmax / vmax
        np.multiply(iscale, xt, out=scaled)
        lvl = _clipped_levels(scaled, lo, hi, exact)
        if rmse_type == 0:
            scale = _F1 / iscale
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
        sums = np.empty((xt.shape[0], 2, xt.shape[1]), dtype=F32)  # per element: w*x*l, w*l*l
        sumlx, suml2 = _qx_sums(wx, w, lvl, sums)
        scale = np.where(suml2 != 0, sumlx / suml2, _F0)  # C: suml2 ? sumlx/suml2 : 0
        if return_early:
            first_guess = _F1 / iscale
            scale = np.where(suml2 > 0, _F_HALF * (scale + first_guess), first_guess)
            return _zero_blocks(scale, lvl, all_zero, nmax)

        best_lvl = lvl.copy()
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(fnmax + F32(0.1) * F32(step)) / vmax
            np.multiply(iscale, xt, out=scaled)
            lvl = _clipped_levels(scaled, lo, hi, exact)
            sumlx, suml2 = _qx_sums(wx, w, lvl, sums)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                np.copyto(best_lvl, lvl, where=better)
                new_scale = sumlx / suml2
                np.copyto(scale, new_scale, where=better)
                np.copyto(best, new_scale * sumlx, where=better)
    return _zero_blocks(scale, best_lvl, all_zero, nmax)


def _qx_sums(wx, w, lvl, sums) -> np.ndarray:
    """(sumlx, suml2): the sums of w*x[i]*l and w*l*l, each term evaluated left to right as C does."""
    np.multiply(wx, lvl, out=sums[:, 0])
    np.multiply(w, lvl, out=sums[:, 1])
    sums[:, 1] *= lvl
    return in_order_sum(sums)


def _zero_blocks(scale: np.ndarray, lvl: np.ndarray, all_zero: np.ndarray, nmax: int):
    """Shift levels to 0..2*nmax-1 as uint8, and zero the blocks ggml treats as all zero."""
    lvl += F32(nmax)
    levels = lvl.astype(np.uint8)
    scale = scale.astype(F32, copy=False)
    if all_zero.any():
        scale[all_zero] = _F0
        levels[:, all_zero] = 0
    return scale, levels


# --------------------------------------------------------------------------------------------
# make_qkx3_quants (and so make_qkx2_quants)
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
    use_mad) for many blocks at once; with weights, also ggml's make_qkx2_quants.

    x: float32 [nblocks, n] (one ggml call per row; any n); nmax: the top level (levels 0..nmax);
    weights: float32 [nblocks, n], or None for ggml's default weights x*x; rmin, rdelta, nstep:
    the scale search iscale = (rmin + rdelta*is + nmax) / (max - min) for is = 0..nstep (nstep < 1:
    no search); use_mad: weigh |error| instead of error^2. rmin and rdelta are rounded to
    float32 (as the C float parameters are), so pass -0.9 and 0.05 for ggml's -0.9f and 0.05f.

    Returns (scale float32 [nblocks], the_min float32 [nblocks], L uint8 [nblocks, n]): the C
    return value, *the_min (the negated block minimum, as ggml stores it), and L.
    """
    x, weights = _checked_blocks(x, weights, "weights")
    rmin, rdelta = F32(rmin), F32(rdelta)
    return _search_in_chunks(
        x, weights, 2, lambda xt, wt: _make_qkx3_quants_t(xt, nmax, wt, rmin, rdelta, int(nstep), bool(use_mad))
    )


def _c_min_max_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = max = x[0]; for i >= 1: if (x[i] < min) min = x[i]; if (x[i] > max) max = x[i];`
    per column of `[n, nb]`: NaN is skipped, except a NaN x[0], which stays."""
    vmin = xt[0].copy()
    vmax = xt[0].copy()
    for row in xt[1:]:
        np.copyto(vmin, row, where=row < vmin)
        np.copyto(vmax, row, where=row > vmax)
    return vmin, vmax


def _data_min_max_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """C's min and max from x[0] (_c_min_max_t) per column of `[n, nb]`, and whether any x is inf or NaN.

    np.min/np.max do not round, so they give C's values, except where NaN propagates through them,
    and for the sign of a zero min: C keeps the first zero it meets (none is below another), and
    the min may be stored (legacy Q4_1/Q5_1 with an imatrix)."""
    data_min = np.min(xt, axis=0)
    data_max = np.max(xt, axis=0)
    nonfinite = not bool(np.isfinite(data_min).all() and np.isfinite(data_max).all())
    nan_columns = np.flatnonzero(np.isnan(data_min))  # NaN in data_min iff NaN in data_max
    if nan_columns.size:
        data_min[nan_columns], data_max[nan_columns] = _c_min_max_t(xt[:, nan_columns])
    zero_min = np.flatnonzero(data_min == _F0)
    if zero_min.size:
        columns = xt[:, zero_min]
        data_min[zero_min] = columns[np.argmax(columns == _F0, axis=0), np.arange(zero_min.size)]
    return data_min, data_max, nonfinite


def _qkx_levels(xt, data_min, data_max, group_min, iscale, nmax: np.float32, out=None, exact=False) -> np.ndarray:
    """MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) as float32 `[n, nblocks]`.

    np.rint is ggml's nearest_int while |iscale*(x - min)| <= 2**22 - 1. That is bounded from the
    data range (rounding is monotonic, so a bound from the endpoints holds for every element);
    only a search whose min moved far from the data, or a subnormal span (an infinite iscale),
    could exceed it, and then ggml's bit trick is reproduced instead. So is it where the data has
    inf or NaN (exact=True), which the range does not bound.
    """
    t = np.subtract(xt, group_min, out=out)
    t *= iscale
    reach = np.maximum(data_max - group_min, group_min - data_min)
    reach *= np.abs(iscale)
    if not exact and np.all(reach <= NEAREST_INT_PLAIN_LIMIT):
        np.rint(t, out=t)
        np.clip(t, _F0, nmax, out=t)
    else:
        t[...] = np.clip(nearest_int_exact(t), 0, int(nmax))
    return t


def _qkx_error(xt, wt, levels, scale, group_min, use_mad: bool, diff: np.ndarray) -> np.ndarray:
    """sum_i w*err(scale*L + min - x), err = |.| or square, accumulated in ggml's order."""
    np.multiply(levels, scale, out=diff)
    diff += group_min
    diff -= xt
    if use_mad:
        np.abs(diff, out=diff)
    else:
        diff *= diff
    diff *= wt
    return in_order_sum(diff)


def _make_qkx3_quants_t(xt, nmax, wt, rmin, rdelta, nstep, use_mad):
    """make_qkx3_quants on transposed blocks xt, wt `[n, nb]`: (scale, the_min, L `[n, nb]` uint8).

    A weighted search for scale and min (x ~ scale*L - the_min, L in 0..nmax) over nstep+1
    candidate inverse scales; each accepted candidate moves the min that later candidates use.
    The winner's levels are recomputed at the end from its (iscale, min) pair."""
    n, nb = xt.shape
    w = xt * xt if wt is None else wt
    f_nmax = F32(nmax)
    data_min, data_max, nonfinite = _data_min_max_t(xt)
    group_min = np.where(data_min > _F0, _F0, data_min)  # C: if (min > 0) min = 0
    flat = data_max <= group_min  # ggml returns scale 0, L 0, the_min -min for these
    live = ~flat
    # per element: w, w*x (then w*l, w*l*l, w*l*x); sum_w and sum_x start from element 0, as in C
    sums = np.empty((n, 3, nb), dtype=F32)
    sums[:, 0] = w
    np.multiply(w, xt, out=sums[:, 1])
    sum_w, sum_x = in_order_sum(sums[:, :2], from_first=True)

    any_flat = bool(flat.any())

    def span() -> np.ndarray:
        width = data_max - group_min
        if any_flat:  # flat groups (returned as zeros at the end) get 1 to keep numbers finite
            width[flat] = _F1
        return width

    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        iscale = f_nmax / span()
        scale = _F1 / iscale
        levels = _qkx_levels(xt, data_min, data_max, group_min, iscale, f_nmax, exact=nonfinite)
        diff = np.empty_like(xt)
        best_error = _qkx_error(xt, w, levels, scale, group_min, use_mad, diff)
        best_iscale = iscale
        best_levels_min = group_min

        if nstep >= 1:
            wl, wl2, wlx = sums[:, 0], sums[:, 1], sums[:, 2]
            for step in range(nstep + 1):
                iscale = (rmin + rdelta * F32(step) + f_nmax) / span()
                _qkx_levels(xt, data_min, data_max, group_min, iscale, f_nmax, out=levels, exact=nonfinite)
                np.multiply(w, levels, out=wl)
                np.multiply(wl, levels, out=wl2)  # C: w*l*l is (w*l)*l
                np.multiply(wl, xt, out=wlx)  # C: w*l*x[i] is (w*l)*x[i]
                sum_l, sum_l2, sum_xl = in_order_sum(sums)
                det = sum_w * sum_l2 - sum_l * sum_l
                solvable = live & (det > _F0)
                if not solvable.any():
                    continue
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
                clipped = this_min > _F0
                if clipped.any():
                    this_min[clipped] = _F0
                    this_scale[clipped] = sum_xl[clipped] / sum_l2[clipped]
                error = _qkx_error(xt, w, levels, this_scale, this_min, use_mad, diff)
                better = solvable & (error < best_error)
                if better.any():
                    best_error = np.where(better, error, best_error)
                    scale = np.where(better, this_scale, scale)
                    best_iscale = np.where(better, iscale, best_iscale)
                    best_levels_min = np.where(better, group_min, best_levels_min)
                    group_min = np.where(better, this_min, group_min)
            levels = _qkx_levels(
                xt, data_min, data_max, best_levels_min, best_iscale, f_nmax, out=levels, exact=nonfinite
            )
    levels[:, flat] = 0
    scale[flat] = _F0
    return scale, -group_min, levels.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# make_q3_quants
# --------------------------------------------------------------------------------------------


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants(do_rmse=true) for every row of x `[nblocks, n]`: (scale, L uint8 in 0..2*nmax-1).

    Weights are x*x; after rounding with -nmax/max, up to 5 passes of coordinate descent move one
    level at a time while that raises sumlx^2/suml2. The first pass visits every group, in
    cache-sized chunks; a group whose pass changes nothing is final, so later passes visit only
    the groups that changed in the pass before.
    """
    nblocks, n = x.shape
    lo, hi = F32(-nmax), F32(nmax - 1)
    levels = np.empty((n, nblocks), dtype=F32)
    sumlx = np.empty(nblocks, dtype=F32)
    suml2 = np.empty(nblocks, dtype=F32)
    changed = np.empty(nblocks, dtype=bool)
    empty = np.empty(nblocks, dtype=bool)
    chunk = max(1, SEARCH_CHUNK_ELEMENTS // n)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, nblocks, chunk):
            part = slice(start, min(start + chunk, nblocks))
            xt = transposed(x[part])
            amax, vmax = first_max_abs(xt)
            empty[part] = amax < GROUP_MAX_EPS
            lv = np.multiply(xt, F32(-nmax) / vmax)
            if np.isfinite(xt).all():
                np.rint(lv, out=lv)  # |iscale*x| <= nmax: rint is ggml's nearest_int here
                np.clip(lv, lo, hi, out=lv)
            else:  # inf*0 and NaN: ggml's nearest_int gives 0 where np.rint keeps NaN
                lv[...] = np.clip(nearest_int_exact(lv), int(lo), int(hi))
            changed[part] = _q3_descent_pass(xt, lv, sumlx[part], suml2[part], lo, hi, first=True)
            levels[:, part] = lv
        for _ in range(4):
            active = np.flatnonzero(changed)
            if active.size == 0:
                break
            lv, slx, sl2 = levels[:, active], sumlx[active], suml2[active]
            changed_now = _q3_descent_pass(transposed(x[active]), lv, slx, sl2, lo, hi, first=False)
            levels[:, active], sumlx[active], suml2[active] = lv, slx, sl2
            changed[:] = False
            changed[active] = changed_now
        scale = np.where(suml2 > _F0, sumlx / suml2, _F0)

    levels += F32(nmax)
    levels[:, empty] = 0
    scale[empty] = _F0
    return scale, np.ascontiguousarray(levels.astype(np.uint8).T)


def _q3_descent_pass(xt, levels, sumlx, suml2, lo, hi, first: bool) -> np.ndarray:
    """One pass of make_q3_quants' coordinate descent over i, updating levels and sums in place.

    first: the sums are not known yet; compute them from levels before the pass.
    Returns which groups changed.
    """
    wt = xt * xt
    wx = wt * xt  # C's w*x[i]*L[i] is (w*x[i])*L[i]
    # level i is only moved at step i, so its terms before the move can be computed up front
    terms = np.empty((xt.shape[0], 2, xt.shape[1]), dtype=F32)
    term_lx, term_l2 = terms[:, 0], terms[:, 1]
    np.multiply(wx, levels, out=term_lx)
    np.multiply(wt, levels, out=term_l2)
    term_l2 *= levels
    if first:
        sumlx[...], suml2[...] = in_order_sum(terms)
    changed = np.zeros(xt.shape[1], dtype=bool)
    for i in range(xt.shape[0]):
        slx = sumlx - term_lx[i]
        sl2 = suml2 - term_l2[i]
        new_l = nearest_int_exact((xt[i] * sl2) / slx).astype(F32)
        np.clip(new_l, lo, hi, out=new_l)
        moved_slx = slx + wx[i] * new_l
        moved_sl2 = sl2 + (wt[i] * new_l) * new_l
        accept = (moved_slx * moved_slx) * suml2 > (sumlx * sumlx) * moved_sl2
        accept &= slx > _F0
        accept &= new_l != levels[i]
        accept &= moved_sl2 > _F0
        if accept.any():
            np.copyto(levels[i], new_l, where=accept)
            np.copyto(sumlx, moved_slx, where=accept)
            np.copyto(suml2, moved_sl2, where=accept)
            changed |= accept
    return changed


# --------------------------------------------------------------------------------------------
# make_qp_quants
# --------------------------------------------------------------------------------------------


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qp_quants for every row of x `[nblocks, n]` (x >= 0 expected): (scale, L uint8).

    Picks the best of 9 inverse scales around nmax/max by weighted squared error, then refines
    levels by coordinate descent as make_q3_quants does. Levels are stored in uint8 as in C
    (a negative level wraps around and the wrapped value is what later steps read).
    """
    xt = transposed(x)
    wt = transposed(quant_weights)
    n = xt.shape[0]
    f_nmax = F32(nmax)
    vmax = np.zeros(xt.shape[1], dtype=F32)
    for xi in xt:  # C: max = MAX(max, x[i]) from 0, MAX(a, b) being a > b ? a : b
        vmax = np.where(vmax > xi, vmax, xi)
    empty = vmax < GROUP_MAX_EPS

    def squared_error(scale, levels):
        diff = xt - scale * levels
        return in_order_sum((wt * diff) * diff)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f_nmax / vmax
        stored = (nearest_int_exact(iscale * xt) & 0xFF).astype(F32)
        best_mse = squared_error(_F1 / iscale, stored)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_step = (F32(F32(0.1) * F32(step)) + f_nmax) / vmax
            levels = np.minimum(nearest_int_exact(iscale_step * xt), nmax).astype(F32)
            mse = squared_error(_F1 / iscale_step, levels)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, iscale_step, iscale)

        levels = np.minimum(nearest_int_exact(iscale * xt), nmax)
        wx = wt * xt
        sumlx = in_order_sum(wx * levels.astype(F32))
        suml2 = in_order_sum((wt * levels.astype(F32)) * levels.astype(F32))
        stored = (levels & 0xFF).astype(F32)

        for _ in range(5):
            any_changed = False
            for i in range(n):
                li = stored[i]
                slx = sumlx - wx[i] * li
                sl2 = suml2 - (wt[i] * li) * li
                new_l = np.minimum(nearest_int_exact((xt[i] * sl2) / slx), nmax)
                new_f = new_l.astype(F32)
                moved_slx = slx + wx[i] * new_f
                moved_sl2 = sl2 + (wt[i] * new_f) * new_f
                accept = (
                    (slx > _F0)
                    & (sl2 > _F0)
                    & (new_f != li)
                    & ((moved_slx * moved_slx) * suml2 > (sumlx * sumlx) * moved_sl2)
                )
                if accept.any():
                    any_changed = True
                    stored[i] = np.where(accept, (new_l & 0xFF).astype(F32), li)
                    sumlx = np.where(accept, moved_slx, sumlx)
                    suml2 = np.where(accept, moved_sl2, suml2)
            if not any_changed:
                break
        scale = np.where(suml2 > _F0, sumlx / suml2, _F0)

    stored[:, empty] = 0
    scale = np.where(empty, _F0, scale)
    return scale, stored.astype(np.uint8).T

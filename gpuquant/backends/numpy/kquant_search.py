"""Scale searches used only by the K-quants (ggml's make_qkx2_quants, make_q3_quants, make_qp_quants).

Every function takes `[nblocks, n]` float32 arrays (one ggml group per row) and returns per-group
results for all groups at once. Internally the arrays are transposed to `[n, nblocks]` so that
each step of ggml's sequential loop over the in-group index is one contiguous vector operation:
sums are accumulated in ggml's order, never with numpy's pairwise reductions. Passing the `.T`
view of an `[n, nblocks]` C-contiguous array avoids the transposing copy.
"""

from __future__ import annotations

import numpy as np

from .rounding import NEAREST_INT_PLAIN_LIMIT, nearest_int_exact

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
GROUP_MAX_EPS = F32(1e-15)
# Elements searched at once: large enough to amortize numpy's per-call cost, small enough that the
# [n, groups] float32 temporaries of a search stay near the CPU caches.
SEARCH_CHUNK_ELEMENTS = 1 << 18


def transposed(a: np.ndarray) -> np.ndarray:
    """`[nblocks, n]` -> C-contiguous float32 `[n, nblocks]` (free for the `.T` of such an array)."""
    return np.ascontiguousarray(a.T, dtype=F32)


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """sum = 0; for i: sum += terms[i], over axis 0 of `[n, ...]`, in float32 and in that order."""
    acc = terms[0] + _ZERO  # 0 + t, as C starts from 0 (turns -0 into +0)
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def _levels(xt, data_min, data_max, group_min, iscale, nmax: np.float32, out=None, has_nan=False) -> np.ndarray:
    """MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) as float32 `[n, nblocks]`.

    np.rint is ggml's nearest_int while |iscale*(x - min)| <= 2**22 - 1. That is bounded from the
    data range (rounding is monotonic, so a bound from the endpoints holds for every element);
    only a search whose min moved far from the data could exceed it, and then ggml's bit trick
    is reproduced instead. So is it where the data has NaN (which the range does not bound).
    """
    t = np.subtract(xt, group_min, out=out)
    t *= iscale
    reach = np.maximum(data_max - group_min, group_min - data_min)
    reach *= np.abs(iscale)
    if not has_nan and np.all(reach <= NEAREST_INT_PLAIN_LIMIT):
        np.rint(t, out=t)
        np.clip(t, _ZERO, nmax, out=t)
    else:
        t[...] = np.clip(nearest_int_exact(t), 0, int(nmax))
    return t


def _weighted_error(xt, wt, levels, scale, group_min, use_mad: bool, diff: np.ndarray) -> np.ndarray:
    """sum_i w*err(scale*L + min - x), err = |.| or square, accumulated in ggml's order."""
    np.multiply(levels, scale, out=diff)
    diff += group_min
    diff -= xt
    if use_mad:
        np.abs(diff, out=diff)
    else:
        diff *= diff
    diff *= wt
    return sequential_sum(diff)


def make_qkx2_quants(
    x: np.ndarray,
    weights: np.ndarray,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants for every row of x `[nblocks, n]`: (scale, the_min, L uint8 `[nblocks, n]`).

    A weighted search for scale and min (x ~ scale*L - the_min, L in 0..nmax) over nstep+1
    candidate inverse scales; each accepted candidate moves the min that later candidates use.
    """
    nblocks, n = x.shape
    scale = np.empty(nblocks, dtype=F32)
    the_min = np.empty(nblocks, dtype=F32)
    levels = np.empty((nblocks, n), dtype=np.uint8)
    chunk = max(1, SEARCH_CHUNK_ELEMENTS // n)
    for start in range(0, nblocks, chunk):
        part = slice(start, min(start + chunk, nblocks))
        scale[part], the_min[part], levels_t = _make_qkx2_quants_t(
            transposed(x[part]), transposed(weights[part]), nmax, rmin, rdelta, nstep, use_mad
        )
        levels[part] = levels_t.T
    return scale, the_min, levels


def _make_qkx2_quants_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad):
    """make_qkx2_quants on transposed groups xt, wt `[n, nb]`: (scale, the_min, L `[n, nb]` uint8)."""
    n, nb = xt.shape
    f_nmax = F32(nmax)
    # min and max carry no rounding, so any order gives ggml's values (up to the sign of a zero,
    # which cannot change any output here), except where NaN propagates through np.min/np.max
    data_min = np.min(xt, axis=0)
    group_max = np.max(xt, axis=0)
    nan_groups = np.flatnonzero(np.isnan(data_min))  # NaN in data_min iff NaN in group_max
    has_nan = nan_groups.size > 0
    if has_nan:
        data_min[nan_groups], group_max[nan_groups] = _c_min_max_t(xt[:, nan_groups])
    group_min = np.minimum(data_min, _ZERO)
    flat = group_max == group_min
    sums = np.empty((n, 3, nb), dtype=F32)  # per element: w*l, w*l*l, w*l*x (then w, w*x)
    sums[:, 0] = wt
    np.multiply(wt, xt, out=sums[:, 1])
    sum_w, sum_x = sequential_sum(sums[:, :2])

    any_flat = bool(flat.any())

    def span() -> np.ndarray:
        width = group_max - group_min
        if any_flat:  # flat groups (returned as zeros at the end) get 1 to keep numbers finite
            width[flat] = _ONE
        return width

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f_nmax / span()
        scale = _ONE / iscale
        levels = _levels(xt, data_min, group_max, group_min, iscale, f_nmax, has_nan=has_nan)
        diff = np.empty_like(xt)
        best_error = _weighted_error(xt, wt, levels, scale, group_min, use_mad, diff)
        # L is recomputed at the end from the (iscale, min) pair that produced the winner
        best_iscale = iscale
        best_levels_min = group_min

        wl, wl2, wlx = sums[:, 0], sums[:, 1], sums[:, 2]
        for step in range(nstep + 1):
            factor = F32(F32(rmin) + F32(rdelta) * F32(step)) + f_nmax
            iscale = factor / span()
            _levels(xt, data_min, group_max, group_min, iscale, f_nmax, out=levels, has_nan=has_nan)
            np.multiply(wt, levels, out=wl)
            np.multiply(wl, levels, out=wl2)
            np.multiply(wl, xt, out=wlx)
            sum_l, sum_l2, sum_xl = sequential_sum(sums)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clipped = this_min > _ZERO
            if clipped.any():
                this_min[clipped] = _ZERO
                this_scale[clipped] = sum_xl[clipped] / sum_l2[clipped]
            error = _weighted_error(xt, wt, levels, this_scale, this_min, use_mad, diff)
            better = (det > _ZERO) & (error < best_error)
            best_error = np.where(better, error, best_error)
            scale = np.where(better, this_scale, scale)
            best_iscale = np.where(better, iscale, best_iscale)
            best_levels_min = np.where(better, group_min, best_levels_min)
            group_min = np.where(better, this_min, group_min)

        levels = _levels(xt, data_min, group_max, best_levels_min, best_iscale, f_nmax, out=levels, has_nan=has_nan)
    levels[:, flat] = 0
    scale[flat] = _ZERO
    return scale, -group_min, levels.astype(np.uint8)


def _c_min_max_t(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `min = max = x[0]; for i >= 1: if (x[i] < min) min = x[i]; if (x[i] > max) max = x[i];`
    per column of `[n, nb]`: NaN is skipped, except a NaN x[0], which stays."""
    vmin = xt[0].copy()
    vmax = xt[0].copy()
    for row in xt[1:]:
        np.copyto(vmin, row, where=row < vmin)
        np.copyto(vmax, row, where=row > vmax)
    return vmin, vmax


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
            vmax, finite = _first_max_abs_t(xt)
            empty[part] = np.abs(vmax) < GROUP_MAX_EPS
            lv = np.multiply(xt, F32(-nmax) / vmax)
            if finite:
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
        scale = np.where(suml2 > _ZERO, sumlx / suml2, _ZERO)

    levels += F32(nmax)
    levels[:, empty] = 0
    scale[empty] = _ZERO
    return scale, np.ascontiguousarray(levels.astype(np.uint8).T)


def _first_max_abs_t(xt: np.ndarray) -> tuple[np.ndarray, bool]:
    """Per column of `[n, nb]`, the first value of largest magnitude (C's `if (fabsf(x) > amax)` scan
    from amax = 0, which skips NaN), and whether every value is finite."""
    top = np.max(xt, axis=0)  # no rounding: any order gives the same values
    bottom = np.min(xt, axis=0)
    vmax = np.where(top >= -bottom, top, bottom)
    # +a and -a both present: the first one seen wins (rare, so only those columns are searched)
    tied = np.flatnonzero((top == -bottom) & (top != _ZERO))
    if tied.size:
        cols = xt[:, tied]
        first = np.argmax(np.abs(cols) == top[tied], axis=0)
        vmax[tied] = cols[first, np.arange(tied.size)]
    finite = bool(np.isfinite(top).all() and np.isfinite(bottom).all())
    if not finite:  # NaN propagated through np.max/np.min: scan those columns as C does
        nan_cols = np.flatnonzero(np.isnan(top))
        if nan_cols.size:
            vmax[nan_cols] = _c_first_max_abs_t(xt[:, nan_cols])
    return vmax, finite


def _c_first_max_abs_t(xt: np.ndarray) -> np.ndarray:
    """C's scan itself, element by element: `if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`."""
    amax = np.zeros(xt.shape[1], dtype=F32)
    vmax = np.zeros(xt.shape[1], dtype=F32)
    for row in xt:
        magnitude = np.abs(row)
        larger = magnitude > amax
        np.copyto(amax, magnitude, where=larger)
        np.copyto(vmax, row, where=larger)
    return vmax


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
        sumlx[...], suml2[...] = sequential_sum(terms)
    changed = np.zeros(xt.shape[1], dtype=bool)
    for i in range(xt.shape[0]):
        slx = sumlx - term_lx[i]
        sl2 = suml2 - term_l2[i]
        new_l = nearest_int_exact((xt[i] * sl2) / slx).astype(F32)
        np.clip(new_l, lo, hi, out=new_l)
        moved_slx = slx + wx[i] * new_l
        moved_sl2 = sl2 + (wt[i] * new_l) * new_l
        accept = (moved_slx * moved_slx) * suml2 > (sumlx * sumlx) * moved_sl2
        accept &= slx > _ZERO
        accept &= new_l != levels[i]
        accept &= moved_sl2 > _ZERO
        if accept.any():
            np.copyto(levels[i], new_l, where=accept)
            np.copyto(sumlx, moved_slx, where=accept)
            np.copyto(suml2, moved_sl2, where=accept)
            changed |= accept
    return changed


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
    for xi in xt:
        vmax = np.where(vmax > xi, vmax, xi)
    empty = vmax < GROUP_MAX_EPS

    def squared_error(scale, levels):
        diff = xt - scale * levels
        return sequential_sum((wt * diff) * diff)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f_nmax / vmax
        stored = (nearest_int_exact(iscale * xt) & 0xFF).astype(F32)
        best_mse = squared_error(_ONE / iscale, stored)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            iscale_step = (F32(F32(0.1) * F32(step)) + f_nmax) / vmax
            levels = np.minimum(nearest_int_exact(iscale_step * xt), nmax).astype(F32)
            mse = squared_error(_ONE / iscale_step, levels)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, iscale_step, iscale)

        levels = np.minimum(nearest_int_exact(iscale * xt), nmax)
        wx = wt * xt
        sumlx = sequential_sum(wx * levels.astype(F32))
        suml2 = sequential_sum((wt * levels.astype(F32)) * levels.astype(F32))
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
                    (slx > _ZERO)
                    & (sl2 > _ZERO)
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
        scale = np.where(suml2 > _ZERO, sumlx / suml2, _ZERO)

    stored[:, empty] = 0
    scale = np.where(empty, _ZERO, scale)
    return scale, stored.astype(np.uint8).T

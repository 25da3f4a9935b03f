"""Scale searches used only by the K-quants (ggml's make_qkx2_quants, make_q3_quants, make_qp_quants).

Every function takes `[nblocks, n]` float32 arrays (one ggml group per row) and returns per-group
results for all groups at once. Internally the arrays are transposed to `[n, nblocks]` so that
each step of ggml's sequential loop over the in-group index is one contiguous vector operation:
sums are accumulated in ggml's order, never with numpy's pairwise reductions. Passing the `.T`
view of an `[n, nblocks]` C-contiguous array avoids the transposing copy.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
_ZERO = F32(0.0)
_ONE = F32(1.0)
GROUP_MAX_EPS = F32(1e-15)
# Elements searched at once: large enough to amortize numpy's per-call cost, small enough that the
# [n, groups] float32 temporaries of a search stay near the CPU caches.
SEARCH_CHUNK_ELEMENTS = 1 << 18
_MAGIC = F32(12582912.0)  # 1.5 * 2**23: ggml's nearest_int adds it and reads the low mantissa bits


def nearest_int_exact(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int bit for bit, also outside |x| <= 2**22 (where np.rint would differ), as int32."""
    bits = np.add(x, _MAGIC, dtype=F32).view(np.int32)
    bits &= 0x7FFFFF
    bits -= 0x400000
    return bits


def transposed(a: np.ndarray) -> np.ndarray:
    """`[nblocks, n]` -> C-contiguous float32 `[n, nblocks]` (free for the `.T` of such an array)."""
    return np.ascontiguousarray(a.T, dtype=F32)


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """sum = 0; for i: sum += terms[i], over axis 0 of `[n, ...]`, in float32 and in that order."""
    acc = terms[0] + _ZERO  # 0 + t, as C starts from 0 (turns -0 into +0)
    for i in range(1, terms.shape[0]):
        acc += terms[i]
    return acc


def _first_max_abs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (fabsf(v) > amax) { amax = fabsf(v); max = v; }` over axis 0, starting from 0."""
    amax = np.zeros(values.shape[1:], dtype=F32)
    vmax = np.zeros(values.shape[1:], dtype=F32)
    for v in values:
        av = np.abs(v)
        bigger = av > amax
        amax = np.where(bigger, av, amax)
        vmax = np.where(bigger, v, vmax)
    return amax, vmax


def _levels(xt, group_min, iscale, nmax: np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) as float32 `[n, nblocks]`."""
    t = np.subtract(xt, group_min, out=out)
    t *= iscale
    np.rint(t, out=t)  # the argument is within [-1, nmax + 1] here, where rint equals nearest_int
    np.clip(t, _ZERO, nmax, out=t)
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
    (NaN inputs are not reproduced: ggml skips a NaN in its min/max scan, numpy propagates it.)
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
    # which cannot change any output here)
    group_min = np.minimum(np.min(xt, axis=0), _ZERO)
    group_max = np.max(xt, axis=0)
    flat = group_max == group_min
    sums = np.empty((n, 3, nb), dtype=F32)  # per element: w*l, w*l*l, w*l*x (then w, w*x)
    sums[:, 0] = wt
    np.multiply(wt, xt, out=sums[:, 1])
    sum_w, sum_x = sequential_sum(sums[:, :2])

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f_nmax / (group_max - group_min)
        scale = _ONE / iscale
        levels = _levels(xt, group_min, iscale, f_nmax)
        diff = np.empty_like(xt)
        best_error = _weighted_error(xt, wt, levels, scale, group_min, use_mad, diff)
        # L is recomputed at the end from the (iscale, min) pair that produced the winner
        best_iscale = iscale
        best_levels_min = group_min

        wl, wl2, wlx = sums[:, 0], sums[:, 1], sums[:, 2]
        for step in range(nstep + 1):
            factor = F32(F32(rmin) + F32(rdelta) * F32(step)) + f_nmax
            iscale = factor / (group_max - group_min)
            _levels(xt, group_min, iscale, f_nmax, out=levels)
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

        levels = _levels(xt, best_levels_min, best_iscale, f_nmax, out=levels)
    levels[:, flat] = 0
    scale[flat] = _ZERO
    return scale, -group_min, levels.astype(np.uint8)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants(do_rmse=true) for every row of x `[nblocks, n]`: (scale, L uint8 in 0..2*nmax-1).

    Weights are x*x; after rounding with -nmax/max, up to 5 passes of coordinate descent move one
    level at a time while that raises sumlx^2/suml2. The first pass visits every group (in
    cache-sized column chunks); a group whose pass changes nothing is final, so later passes
    visit only the groups that changed in the pass before.
    """
    nblocks, n = x.shape
    xt = transposed(x)
    vmax = _first_max_abs_t(xt)
    empty = np.abs(vmax) < GROUP_MAX_EPS
    lo, hi = F32(-nmax), F32(nmax - 1)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / vmax
        levels = np.multiply(xt, iscale)
        np.rint(levels, out=levels)  # |iscale*x| <= nmax: rint is ggml's nearest_int here
        np.clip(levels, lo, hi, out=levels)
        wt = xt * xt
        wx = wt * xt  # C's w*x[i]*l is (w*x[i])*l
        terms = np.empty((n, 2, nblocks), dtype=F32)
        np.multiply(wx, levels, out=terms[:, 0])
        np.multiply(wt, levels, out=terms[:, 1])
        terms[:, 1] *= levels
        sumlx, suml2 = sequential_sum(terms)
        del terms

        changed = np.empty(nblocks, dtype=bool)
        chunk = max(1, SEARCH_CHUNK_ELEMENTS // n)
        for start in range(0, nblocks, chunk):
            part = slice(start, min(start + chunk, nblocks))
            changed[part] = _q3_descent_pass(
                xt[:, part], wt[:, part], wx[:, part], levels[:, part], sumlx[part], suml2[part], lo, hi
            )
        for _ in range(4):
            active = np.flatnonzero(changed)
            if active.size == 0:
                break
            sub_levels, sub_sumlx, sub_suml2 = levels[:, active], sumlx[active], suml2[active]
            changed_sub = _q3_descent_pass(
                xt[:, active], wt[:, active], wx[:, active], sub_levels, sub_sumlx, sub_suml2, lo, hi
            )
            levels[:, active], sumlx[active], suml2[active] = sub_levels, sub_sumlx, sub_suml2
            changed[:] = False
            changed[active] = changed_sub
        scale = np.where(suml2 > _ZERO, sumlx / suml2, _ZERO)

    levels += F32(nmax)
    levels[:, empty] = 0
    scale[empty] = _ZERO
    return scale, np.ascontiguousarray(levels.astype(np.uint8).T)


def _first_max_abs_t(xt: np.ndarray) -> np.ndarray:
    """Per column of `[n, nb]`, the first value of largest magnitude (C's `if (fabsf(x) > amax)` scan)."""
    top = np.max(xt, axis=0)  # no rounding: any order gives the same values
    bottom = np.min(xt, axis=0)
    vmax = np.where(top >= -bottom, top, bottom)
    # +a and -a both present: the first one seen wins (rare, so loop over those columns only)
    tied = np.flatnonzero((top == -bottom) & (top != _ZERO))
    if tied.size:
        cols = xt[:, tied]
        first = np.argmax(np.abs(cols) == top[tied], axis=0)
        vmax[tied] = cols[first, np.arange(tied.size)]
    return vmax


def _q3_descent_pass(xt, wt, wx, levels, sumlx, suml2, lo, hi) -> np.ndarray:
    """One pass of make_q3_quants' coordinate descent over i, in place; returns which groups changed."""
    changed = np.zeros(xt.shape[1], dtype=bool)
    for i in range(xt.shape[0]):
        li = levels[i]
        slx = sumlx - wx[i] * li
        sl2 = suml2 - (wt[i] * li) * li
        new_l = nearest_int_exact((xt[i] * sl2) / slx).astype(F32)
        np.clip(new_l, lo, hi, out=new_l)
        moved_slx = slx + wx[i] * new_l
        moved_sl2 = sl2 + (wt[i] * new_l) * new_l
        accept = (moved_slx * moved_slx) * suml2 > (sumlx * sumlx) * moved_sl2
        accept &= slx > _ZERO
        accept &= new_l != li
        accept &= moved_sl2 > _ZERO
        if accept.any():
            np.copyto(li, new_l, where=accept)
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

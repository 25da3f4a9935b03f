"""Float32 primitives that reproduce ggml's C arithmetic exactly, shared by every NumPy family module:
nearest_int and roundf, fp16 conversions, and the reductions that ggml's loops do in index order
(sums, the first largest magnitude, maxima with NaN) over whole arrays of blocks at once.

in_order_sum and first_max_abs run over axis 0 of `[n, ...]` arrays (the in-block index first), so
that each step of ggml's loop is one contiguous vector operation across blocks; the max_abs_*
functions take blocks as rows, `[nblocks, n]`.
"""

from __future__ import annotations

import numpy as np

# ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it quantizes to zeros.
GROUP_MAX_EPS = np.float32(1e-15)
_F0 = np.float32(0.0)
# Terms per sum beyond which in_order_sum adds with np.add.accumulate: a Python loop over thousands
# of short vectors (a whole row's terms) costs more than accumulate's one pass.
_LOOP_TERMS = 256

# ggml's nearest_int adds 1.5 * 2**23 and reads the low 23 bits of the sum: that is plain
# round-half-even only while |x| <= NEAREST_INT_PLAIN_LIMIT. Beyond it (huge values, +-inf, NaN)
# the result is whatever those bits say, e.g. 0 for NaN and -4194304 for +-inf.
NEAREST_INT_PLAIN_LIMIT = np.float32(4194303.0)
_NEAREST_INT_MAGIC = np.float32(12582912.0)


def nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int for |x| <= NEAREST_INT_PLAIN_LIMIT: float32 rounded half to even, as int32."""
    return np.rint(np.asarray(x, dtype=np.float32)).astype(np.int32)


def nearest_int_exact(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int bit for bit for every float32 (inf, NaN and huge values included), as int32."""
    bits = np.add(x, _NEAREST_INT_MAGIC, dtype=np.float32).view(np.int32)
    bits &= np.int32(0x007FFFFF)
    bits -= np.int32(0x00400000)
    return bits


def roundf(x: np.ndarray) -> np.ndarray:
    """C roundf: half away from zero, exact in float32 (no x + 0.5 double rounding)."""
    x = np.asarray(x, dtype=np.float32)
    t = np.trunc(x)
    frac = np.abs(x - t)  # exact for float32
    return np.where(frac >= np.float32(0.5), t + np.sign(x), t).astype(np.float32)


_FP16_SIGN = np.uint16(0x8000)
_FP16_QUIET_NAN = np.uint16(0x7E00)
_CONVERT_CHUNK = 1 << 17  # floats per fp32 -> fp16 step


def _fp16_to_f32_table() -> np.ndarray:
    """GGML_FP16_TO_FP32 of every fp16 bit pattern: numpy's exact cast, with NaNs made quiet."""
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    bits = values.view(np.uint32)
    bits[np.isnan(values)] |= np.uint32(0x00400000)
    return values


_FP16_TO_F32 = _fp16_to_f32_table()


def fp16_bits(x: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 as uint16 bits: round to nearest even, overflow to inf, and every NaN
    written as the quiet NaN 0x7E00 with its sign kept (numpy's cast keeps the payload instead).
    Converted a cache-sized slice at a time, so that the NaN check reads cached data."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.float16)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    with np.errstate(over="ignore"):
        for start in range(0, flat_x.size, _CONVERT_CHUNK):
            part = flat_x[start : start + _CONVERT_CHUNK]
            flat_out[start : start + _CONVERT_CHUNK] = part
            if np.isnan(np.max(part)):  # one quick pass; NaN inputs are rare
                bits = flat_out[start : start + _CONVERT_CHUNK].view(np.uint16)
                is_nan = np.isnan(part)
                bits[is_nan] = (bits[is_nan] & _FP16_SIGN) | _FP16_QUIET_NAN
    return out.view(np.uint16)


def fp16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32 of uint16 bits: exact, except that a signaling NaN comes out quiet (ggml's
    conversion goes through a multiply; numpy's cast keeps it signaling). A table lookup, as fast
    as the cast."""
    return _FP16_TO_F32[np.asarray(bits, dtype=np.uint16)]


def max_abs_taking_nan(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`amax = MAX(amax, |v|)` over each block in order, from 0, and which blocks hold a NaN.
    Without NaN that is the plain maximum; ggml's MAX (a > b ? a : b) takes a NaN and drops it
    at the next value, so blocks holding a NaN replay the loop."""
    ax = np.abs(blocks)
    amax = np.max(ax, axis=1)
    has_nan = np.isnan(amax)
    if has_nan.any():
        running = np.zeros(int(has_nan.sum()), dtype=np.float32)
        for column in ax[has_nan].T:
            running = np.where(running > column, running, column)
        amax[has_nan] = running
    return amax, has_nan


def max_abs_skipping_nan(blocks: np.ndarray) -> np.ndarray:
    """`if (amax < |v|) amax = |v|` (or `if (|v| > amax)`) from 0: the maximum, NaN never taken.
    np.fmax.reduce skips quiet NaNs only: a signaling NaN turns the running max into NaN, which
    the next fmax then drops with everything before it. So NaNs are zeroed first, in the rare
    slices that hold any (found by one flat np.max, which propagates every NaN)."""
    ax = np.abs(blocks)
    if np.isnan(np.max(ax)):
        ax = np.where(np.isnan(ax), np.float32(0), ax)
    return np.fmax.reduce(ax, axis=1)


def in_order_sum(terms: np.ndarray, out: np.ndarray | None = None, from_first: bool = False) -> np.ndarray:
    """ggml's `float sum = 0; for (i...) sum += terms[i];` over axis 0 of `[n, ...]`, in float32 and in
    index order (np.sum adds pairwise and rounds differently), into `out` where given.

    from_first: C's `sum = terms[0]; for (i = 1...)` instead; the two differ only in the sign of a sum
    of -0 terms (from +0 it is +0)."""
    if terms.shape[0] > _LOOP_TERMS and out is None:
        total = np.add.accumulate(terms, axis=0)[-1]  # strictly sequential, from terms[0]
        return total if from_first else total + _F0
    if out is None:
        out = terms[0].copy() if from_first else terms[0] + _F0
    elif from_first:
        np.copyto(out, terms[0])
    else:
        np.add(terms[0], _F0, out=out)
    for term in terms[1:]:
        out += term
    return out


def first_max_abs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `amax = 0, max = 0; for (i...) if (fabsf(v[i]) > amax) { amax = fabsf(v[i]); max = v[i]; }`
    per column of `[n, m]`: (amax, max), the first value of largest magnitude (NaN never taken, +0
    where no value beats 0).

    np.max/np.min do not round, so they give ggml's values; only a tie in magnitude (+a and -a, the
    first seen wins) and NaN (np.max propagates it) need the loop's order, and only those columns
    (rare) are searched."""
    top = np.max(values, axis=0)
    bottom = np.min(values, axis=0)
    neg_bottom = -bottom
    vmax = np.where(top >= neg_bottom, top, bottom)
    tied = np.flatnonzero((top == neg_bottom) & (top != 0))
    if tied.size:
        columns = values[:, tied]
        first = np.argmax(np.abs(columns) == top[tied], axis=0)
        vmax[tied] = columns[first, np.arange(tied.size)]
    with_nan = np.flatnonzero(np.isnan(top))
    if with_nan.size:
        vmax[with_nan] = _first_max_abs_by_loop(values[:, with_nan])
    vmax += _F0  # a zero max is ggml's +0 (it never takes a zero)
    return np.abs(vmax), vmax


def _first_max_abs_by_loop(values: np.ndarray) -> np.ndarray:
    """first_max_abs's max by ggml's loop itself, element by element."""
    amax = np.zeros(values.shape[1:], dtype=np.float32)
    vmax = np.zeros(values.shape[1:], dtype=np.float32)
    for row in values:
        magnitude = np.abs(row)
        larger = magnitude > amax
        np.copyto(amax, magnitude, where=larger)
        np.copyto(vmax, row, where=larger)
    return vmax

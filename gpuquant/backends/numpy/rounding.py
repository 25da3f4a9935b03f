"""Float32 primitives that reproduce ggml's C rounding exactly (shared by every numpy quantizer)."""

from __future__ import annotations

import numpy as np

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

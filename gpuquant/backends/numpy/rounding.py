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


def fp16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits, round to nearest even, overflow to inf (GGML_FP32_TO_FP16)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_round_trip(x: np.ndarray) -> np.ndarray:
    """The float32 value that a stored fp16 scale reads back as."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def fp16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)

"""F32, F16 and BF16: elementwise conversions, as ggml_quantize_chunk and to_float do them."""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .registry import Family
from .rounding import fp16_bits, fp16_bits_to_f32

FAMILY = Family("floats")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers


@FAMILY.quantizer("F32")
def quantize_f32(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


@FAMILY.dequantizer("F32")
def dequantize_f32(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    return np.ascontiguousarray(q).view(np.float32).reshape(q.shape[0], n_per_row).copy()


@FAMILY.quantizer("F16")
def quantize_f16(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(fp16_bits(x)).view(np.uint8)


@FAMILY.dequantizer("F16")
def dequantize_f16(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    bits = np.ascontiguousarray(q).view(np.uint16)
    return fp16_bits_to_f32(bits).reshape(q.shape[0], n_per_row)


_BF16_CHUNK = 1 << 14  # values per step: the in-place steps below stay in cache (3x faster than whole arrays)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN kept quiet (not rounded into inf)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    u = flat.view(np.uint32)
    out = np.empty(u.size, dtype=np.uint16)
    scratch = np.empty(min(u.size, _BF16_CHUNK), dtype=np.uint32)
    for start in range(0, u.size, _BF16_CHUNK):
        part = u[start : start + _BF16_CHUNK]
        t = scratch[: part.size]
        np.right_shift(part, np.uint32(16), out=t)  # (u + 0x7fff + ((u >> 16) & 1)) >> 16
        t &= np.uint32(1)
        t += np.uint32(0x7FFF)
        t += part
        t >>= np.uint32(16)
        piece = out[start : start + _BF16_CHUNK]
        np.copyto(piece, t, casting="unsafe")
        if np.isnan(np.max(flat[start : start + _BF16_CHUNK])):  # NaN inputs are rare
            nan = (part & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
            piece[nan] = ((part[nan] >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
    return out.reshape(x.shape)


@FAMILY.quantizer("BF16")
def quantize_bf16(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(bf16_bits(x)).view(np.uint8)


@FAMILY.dequantizer("BF16")
def dequantize_bf16(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    bits = np.ascontiguousarray(q).view(np.uint16).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32).reshape(q.shape[0], n_per_row)

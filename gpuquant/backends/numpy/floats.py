"""F32, F16 and BF16: elementwise conversions, as ggml_quantize_chunk and to_float do them."""

from __future__ import annotations

import numpy as np

from .rounding import fp16_bits, fp16_bits_to_f32


def _quantize_f32(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


def _dequantize_f32(q: np.ndarray, n_per_row: int) -> np.ndarray:
    return np.ascontiguousarray(q).view(np.float32).reshape(q.shape[0], n_per_row).copy()


def _quantize_f16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(fp16_bits(x)).view(np.uint8)


def _dequantize_f16(q: np.ndarray, n_per_row: int) -> np.ndarray:
    bits = np.ascontiguousarray(q).view(np.uint16)
    return fp16_bits_to_f32(bits).reshape(q.shape[0], n_per_row)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN kept quiet (not rounded into inf)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u >> np.uint32(16)) | np.uint32(64)
    return np.where(is_nan, quiet, rounded).astype(np.uint16)


def _quantize_bf16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(bf16_bits(x)).view(np.uint8)


def _dequantize_bf16(q: np.ndarray, n_per_row: int) -> np.ndarray:
    bits = np.ascontiguousarray(q).view(np.uint16).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32).reshape(q.shape[0], n_per_row)


QUANTIZERS = {"F32": _quantize_f32, "F16": _quantize_f16, "BF16": _quantize_bf16}
DEQUANTIZERS = {"F32": _dequantize_f32, "F16": _dequantize_f16, "BF16": _dequantize_bf16}

"""TQ1_0 and TQ2_0: ternary weights {-1, 0, 1} times the block's absolute max (BitNet b1.58).

One 256-weight block, one fp16 scale d = max |x|; each weight becomes lroundf(x / d) + 1 in
{0, 1, 2}. TQ2_0 stores the trits as 2-bit fields; TQ1_0 packs five trits per byte as a base-3
number scaled to the byte range (ceil(q * 256 / 243)), so that trit n is recovered as the top
digit of (byte * 3^n mod 256) * 3. ggml ignores the importance matrix for both.
"""

from __future__ import annotations

import numpy as np

from ...qtypes import QType
from .blocks import quantize_in_chunks, split_blocks
from .registry import Family
from .rounding import fp16_bits, fp16_bits_to_f32, max_abs_taking_nan, roundf

FAMILY = Family("ternary")
QUANTIZERS, DEQUANTIZERS = FAMILY.quantizers, FAMILY.dequantizers
# Block layouts: TQ1_0 qs[48] (five trits each), qh[4] (four trits each), fp16 d;
# TQ2_0 qs[64] (four 2-bit trits each), fp16 d.

_INT32_LIMIT = np.float32(2.0**31)


def _scaled_trits(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 256-block: the fp16 bits of d = max |x| and the low byte of each
    xi = lroundf(x / d) + 1 as uint8 (ggml packs xi into uint8_t arithmetic, so only that byte
    counts). Normally xi is a trit in {0, 1, 2}; a NaN that drops the true max, an inf, or a
    denormal max (1/d = inf) give other values."""
    amax, has_nan = max_abs_taking_nan(blocks)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv_d = np.where(amax != 0, np.float32(1) / amax, np.float32(0))  # inf for denormal amax
        rounded = roundf(blocks * inv_d[:, None])
        xi = (rounded + np.float32(1)).astype(np.uint8)  # exact where |x / d| <= 1
        unusual = has_nan | ~np.isfinite(amax) | ~np.isfinite(inv_d)
        if unusual.any():
            # lroundf beyond 2^31 (and of inf/NaN: LONG_MIN on x86-64) has 8 zero low bits, like 0
            r = rounded[unusual]
            r = np.where(np.abs(r) < _INT32_LIMIT, r, np.float32(0))
            xi[unusual] = (r.astype(np.int32) + 1).astype(np.uint8)  # keeps the low byte
    return fp16_bits(amax), xi


def _ceiling_bytes() -> np.ndarray:
    """`(uint16_t)q * 256 + 242) / 243` stored back into a uint8_t, for every q."""
    q = np.arange(256, dtype=np.int32)
    return ((q * 256 + 242) // 243).astype(np.uint8)


_CEILING_BYTES = _ceiling_bytes()


def _base3_bytes(trits: np.ndarray) -> np.ndarray:
    """trits [..., digits, m] (uint8, most significant digit first) -> ggml's packed byte
    [..., m]: the base-3 number in uint8 arithmetic (wrapping like `q = q * 3 + xi` in a
    uint8_t), scaled to the byte range with ceiling division."""
    value = np.zeros(trits.shape[:-2] + trits.shape[-1:], dtype=np.uint8)
    for digit in range(trits.shape[-2]):
        value = value * np.uint8(3) + trits[..., digit, :]
    return _CEILING_BYTES[value]


def _tq1_0_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    d_bits, trits = _scaled_trits(blocks)
    n = trits.shape[0]
    # bytes 0..31 hold weights m + 32 n (n = 0..4); bytes 32..47 weights 160 + m + 16 n
    out[:, 0:32] = _base3_bytes(trits[:, 0:160].reshape(n, 5, 32))
    out[:, 32:48] = _base3_bytes(trits[:, 160:240].reshape(n, 5, 16))
    # qh: four trits 240 + j + 4 m, shifted up one digit so that they decode like the others
    last = trits[:, 240:256].reshape(n, 4, 4)
    out[:, 48:52] = _base3_bytes(np.concatenate([last, np.zeros_like(last[:, :1])], axis=1))
    out[:, 52:54] = d_bits.view(np.uint8).reshape(n, 2)


def _tq2_0_blocks(blocks: np.ndarray, _: None, out: np.ndarray) -> None:
    d_bits, trits = _scaled_trits(blocks)
    n = trits.shape[0]
    # byte 32 g + m holds weights 128 g + 32 l + m in bits 2 l
    fields = (trits & np.uint8(3)).reshape(n, 2, 4, 32)
    qs = fields[:, :, 0] | (fields[:, :, 1] << 2) | (fields[:, :, 2] << 4) | (fields[:, :, 3] << 6)
    out[:, 0:64] = qs.reshape(n, 64)
    out[:, 64:66] = d_bits.view(np.uint8).reshape(n, 2)


@FAMILY.quantizer("TQ1_0")
def quantize_tq1_0(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _tq1_0_blocks)  # ggml ignores the imatrix


@FAMILY.quantizer("TQ2_0")
def quantize_tq2_0(t: QType, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return quantize_in_chunks(t, x, None, _tq2_0_blocks)  # ggml ignores the imatrix


_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint16)


def _unpack_base3(packed: np.ndarray, digits: int) -> np.ndarray:
    """uint8 [..., m] -> trits [..., digits, m] in {0, 1, 2} (int32), most significant first."""
    shifted = (packed[..., None, :].astype(np.uint16) * _POW3[:digits, None]) & np.uint16(0xFF)
    return ((shifted * np.uint16(3)) >> np.uint16(8)).astype(np.int32)


@FAMILY.dequantizer("TQ1_0")
def dequantize_tq1_0(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    n = blocks.shape[0]
    d = fp16_bits_to_f32(blocks[:, 52:54].copy().view("<u2"))  # [n, 1]
    trits = np.concatenate(
        [
            _unpack_base3(blocks[:, 0:32], 5).reshape(n, 160),
            _unpack_base3(blocks[:, 32:48], 5).reshape(n, 80),
            _unpack_base3(blocks[:, 48:52], 4).reshape(n, 16),
        ],
        axis=1,
    )
    with np.errstate(invalid="ignore"):  # inf scale times a zero trit
        return ((trits - 1).astype(np.float32) * d).reshape(q.shape[0], n_per_row)


@FAMILY.dequantizer("TQ2_0")
def dequantize_tq2_0(t: QType, q: np.ndarray, n_per_row: int) -> np.ndarray:
    blocks = split_blocks(t, q)
    n = blocks.shape[0]
    d = fp16_bits_to_f32(blocks[:, 64:66].copy().view("<u2"))  # [n, 1]
    qs = blocks[:, 0:64].reshape(n, 2, 1, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    fields = ((qs >> shifts) & np.uint8(3)).astype(np.int32)
    with np.errstate(invalid="ignore"):  # inf scale times a zero trit
        return ((fields - 1).astype(np.float32).reshape(n, t.block_size) * d).reshape(q.shape[0], n_per_row)

"""C semantics at the edges of the iq4, ternary, fp4 and lowbit families' per-block code (kernels/
iq4.cuh, ternary.cuh, fp4.cuh, lowbit.cuh), built for the CPU: ggml's exact bytes for NaN weights,
every trit pattern, log2 rounding. test_kernels_host.py checks every host type against ggml's golden
bytes and the NumPy backend.

The CUDA kernels (kernels/<family>.cu) call exactly these functions, so this is how a machine
without a GPU checks their arithmetic. Skipped only without a C++ compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_bytes

from gpuquant import hostkernels

FP16_NAN = (0x00, 0x7E)  # ggml writes every NaN scale as this quiet NaN (little-endian bytes)


pytestmark = pytest.mark.usefixtures("host_library")  # skips without a C++ compiler


def _tq1_0_trits(patterns: np.ndarray) -> np.ndarray:
    """A 256-weight block's trits such that TQ1_0's 48 five-trit bytes hold patterns[0:48] and its
    4 four-trit bytes patterns[48:52] (base-3 numbers, most significant trit first)."""
    trits = np.empty(256, dtype=np.int64)
    for n in range(5):
        trits[32 * n : 32 * n + 32] = patterns[0:32] // 3 ** (4 - n) % 3  # byte m: weights m + 32 n
        trits[160 + 16 * n : 176 + 16 * n] = patterns[32:48] // 3 ** (4 - n) % 3  # weights 160 + m + 16 n
    for m in range(4):
        trits[240 + 4 * m : 244 + 4 * m] = patterns[48:52] // 3 ** (3 - m) % 3  # qh[j]: weights 240 + j + 4 m
    return trits


@pytest.mark.parametrize("type_name", ["TQ1_0", "TQ2_0"])
def test_ternary_round_trips_every_trit_pattern(type_name):
    # Weights -1, 0, 1 (so d = 1) decode to themselves. Over the blocks, TQ1_0's bytes run through
    # all 243 five-trit and all 81 four-trit numbers: a wrong byte scaling or trit order breaks some.
    blocks = 21  # 21 * 48 >= 243 and 21 * 4 >= 81
    x = np.empty((blocks, 256), dtype=np.float32)
    covered = set(), set()
    for block in range(blocks):
        patterns = np.concatenate([(block * 48 + np.arange(48)) % 243, (block * 4 + np.arange(4)) % 81])
        covered[0].update(patterns[:48].tolist())
        covered[1].update(patterns[48:].tolist())
        x[block] = (_tq1_0_trits(patterns) - 1).astype(np.float32)
    assert len(covered[0]) == 243 and len(covered[1]) == 81
    back = hostkernels.dequantize(hostkernels.quantize(x, type_name), type_name, 256)
    np.testing.assert_array_equal(back, x)


def test_mxfp4_exponent_rounds_log2_like_ggml():
    # e = floor(log2f(max |x|)) - 2 + 127 with log2f rounded to float32: the 100 floats just below
    # each power of two (some of which round up to it), the power itself, and subnormal maxima
    # (whose e wraps through the uint8 cast).
    maxima = []
    for exponent in range(-148, 129):
        top = np.float32(2.0**exponent) if exponent < 128 else np.float32(np.inf)
        below = np.nextafter(top, np.float32(0)) if exponent < 128 else np.finfo(np.float32).max
        for _ in range(100):
            maxima.append(below)
            below = np.nextafter(below, np.float32(0))
        if exponent < 128:
            maxima.append(top)
    maxima = np.unique(np.array(maxima, dtype=np.float32))
    maxima = maxima[maxima > 0]  # the steps below the smallest powers run out at 0
    x = np.zeros((maxima.size, 32), dtype=np.float32)
    x[:, 5] = -maxima
    x[:, 9] = maxima * np.float32(0.5)
    got = hostkernels.quantize(x, "MXFP4")[:, 0]  # one block a row
    # the float64 log2 rounded to float32 is the correctly rounded log2f at every one of these
    log2 = np.floor(np.log2(maxima.astype(np.float64)).astype(np.float32))
    expected = (log2.astype(np.int64) - 2 + 127) & 0xFF  # the float -> uint8 cast goes through int
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


def _block_with_nans(n: int) -> np.ndarray:
    x = (np.random.default_rng(90).standard_normal((1, n)) * 0.1).astype(np.float32)
    x[0, 3] = np.nan
    x[0, n - 1] = np.nan  # the last value: C's MAX keeps a NaN only when nothing follows it
    return x


def test_ternary_nan_maximum_gives_nan_scale_and_zero_trits():
    # MAX(amax, NaN) takes the trailing NaN: d is NaN, x * (1/d) is NaN, lroundf(NaN) is LONG_MIN and
    # the trit LONG_MIN + 1 narrowed to int is 1, the zero trit.
    x = _block_with_nans(256)
    tq2 = hostkernels.quantize(x, "TQ2_0")[0]
    assert (tq2[:64] == 0x55).all() and tuple(tq2[64:]) == FP16_NAN
    tq1 = hostkernels.quantize(x, "TQ1_0")[0]
    assert (tq1[:48] == 128).all()  # 11111 in base 3, scaled: (121 * 256 + 242) // 243
    assert (tq1[48:52] == 127).all()  # 1111 then a 0 trit: (120 * 256 + 242) // 243
    assert tuple(tq1[52:]) == FP16_NAN


def test_iq4_nl_nan_block_has_zero_scale():
    # NaN weights make every least-squares sum NaN, so no trial scale is ever taken: d = 0, and the
    # levels of 0 * x are level 8 (the value 1) for numbers and the top level 15 for NaN.
    x = _block_with_nans(32)
    q = hostkernels.quantize(x, "IQ4_NL")[0]
    levels = np.concatenate([q[2:] & 0x0F, q[2:] >> 4])
    assert tuple(q[:2]) == (0, 0)
    np.testing.assert_array_equal(levels, np.where(np.isnan(x[0]), 15, 8))


@pytest.mark.parametrize("type_name", ["MXFP4", "NVFP4"])
def test_fp4_nan_is_level_zero(type_name):
    # `amax < fabsf(NaN)` is false, and every |level * d - NaN| is NaN: index 0, as for 0.
    x = _block_with_nans(64)
    assert_same_bytes(
        hostkernels.quantize(x, type_name), hostkernels.quantize(np.nan_to_num(x, nan=0.0), type_name), type_name
    )


def test_q1_0_nan_gives_nan_scale_and_clear_bit():
    x = _block_with_nans(128)
    q = hostkernels.quantize(x, "Q1_0")[0]
    assert tuple(q[:2]) == FP16_NAN
    np.testing.assert_array_equal(np.unpackbits(q[2:], bitorder="little"), x[0] >= 0)


def test_q2_0_nan_is_level_zero():
    # `a > amax` never takes a NaN; (int)roundf(NaN) is INT_MIN on x86, clamped to level 0.
    x = _block_with_nans(64)
    q = hostkernels.quantize(x, "Q2_0")[0]
    reference = hostkernels.quantize(np.nan_to_num(x, nan=0.0), "Q2_0")[0]
    assert tuple(q[:2]) == tuple(reference[:2])
    fields = (q[2:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    expected = (reference[2:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    np.testing.assert_array_equal(fields.reshape(-1), np.where(np.isnan(x[0]), 0, expected.reshape(-1)))

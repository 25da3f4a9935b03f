"""The NumPy backend against the kernels' host build (which matches ggml's C bytes on these inputs) on
crafted rows: NaNs (quiet, signaling, negative, with payloads) at the first, middle and last weight
of every block size, +-inf, values within a factor of 16 of FLT_MAX (MXFP4's e = 253 included),
subnormals and signed zeros; and the dequantizers on raw bytes whose scales are NaN, inf, subnormal.

ggml's rules that these rows exercise: every NaN stored as fp16 becomes 0x7E00 with its sign kept;
an fp16 NaN read back comes out quiet; C's `MAX(a, b)` (a > b ? a : b) takes a trailing NaN and
drops it at the next value, while `if (amax < |v|)` never takes one (signaling NaNs included).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuquant
from gpuquant import hostkernels
from gpuquant.backends.numpy.rounding import fp16_bits, fp16_bits_to_f32

F32 = np.float32
FLT_MAX = np.finfo(F32).max
N_PER_ROW = 256  # one block or more of every type below
MORE_TYPES = ("IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0")
FLOAT_TYPES = ("F16", "BF16")
# Byte offset of the fp16 scale in each block (MXFP4 and NVFP4 have 8-bit scales).
FP16_SCALE_OFFSET = {"IQ4_NL": 0, "IQ4_XS": 0, "TQ1_0": 52, "TQ2_0": 64, "Q1_0": 0, "Q2_0": 0}


def f32_from_bits(bits: int) -> F32:
    return np.array([bits], dtype=np.uint32).view(F32)[0]


NANS = {
    "qnan": F32(np.nan),
    "neg-qnan": -F32(np.nan),
    "snan": f32_from_bits(0x7F800001),  # np.fmax returns NaN for these
    "neg-qnan-payload": f32_from_bits(0xFFC00123),
    "snan-payload": f32_from_bits(0x7FBFFFFF),  # payload survives numpy's fp16 cast
}
# first / middle / last weight of 32-, 64-, 128- and 256-weight blocks (and NVFP4's 16-weight scales)
POSITIONS = (0, 1, 15, 16, 31, 32, 63, 64, 100, 127, 128, 200, 255)


pytestmark = pytest.mark.usefixtures("host_library")  # skips without a C++ compiler


def background(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(N_PER_ROW) * 0.5).astype(F32)


def with_values(seed: int, **at: float) -> np.ndarray:
    """background(seed) with value v at index i for each i_<i>=v keyword."""
    row = background(seed)
    for key, value in at.items():
        row[int(key.removeprefix("i_"))] = value
    return row


def crafted_rows() -> tuple[list[str], np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for k, (name, nan) in enumerate(NANS.items()):
        for p in POSITIONS:
            rows[f"{name}@{p}"] = with_values(p + 100 * k, **{f"i_{p}": nan})
    # a NaN just before or after the block's largest value (MAX keeps or loses that max)
    for p in (0, 15, 31, 62, 126, 254):
        rows[f"nan-then-max@{p}"] = with_values(p, **{f"i_{p}": np.nan, f"i_{p + 1}": 9.0})
        rows[f"max-then-nan@{p}"] = with_values(p, **{f"i_{p}": 9.0, f"i_{p + 1}": np.nan})
        rows[f"snan-then-max@{p}"] = with_values(p, **{f"i_{p}": NANS["snan"], f"i_{p + 1}": 9.0})
    for sign in (1, -1):
        for p in (0, 31, 63, 127, 255):
            rows[f"inf{sign:+d}@{p}"] = with_values(p, **{f"i_{p}": sign * np.inf})
        rows[f"inf{sign:+d}-then-nan"] = with_values(7, i_3=sign * np.inf, i_5=np.nan)
        rows[f"nan-then-inf{sign:+d}"] = with_values(8, i_3=np.nan, i_5=sign * np.inf)
    rows["all-nan"] = np.full(N_PER_ROW, np.nan, F32)
    rows["all-snan"] = np.full(N_PER_ROW, NANS["snan"], F32)
    rows["all-inf"] = np.full(N_PER_ROW, np.inf, F32)
    rows["all-neg-inf"] = np.full(N_PER_ROW, -np.inf, F32)
    alternating = np.full(N_PER_ROW, np.inf, F32)
    alternating[1::2] = -np.inf
    rows["alternating-inf"] = alternating
    # near FLT_MAX: log2f(max) rounds to 128 for the top few values (MXFP4 e = 253, where levels
    # 8 and 12 times the scale overflow to inf)
    for factor in (1.0, 1.0000001, 1.1, 1.2, 1.4, 1.5, 2.0, 2.01, 4.0, 16.0):
        for sign in (1, -1):
            v = F32(FLT_MAX / factor)
            row = background(int(factor * 100)) * (v / F32(4))
            row[5] = sign * v
            rows[f"max/{factor}{sign:+d}"] = row
            full = np.full(N_PER_ROW, sign * v, F32)
            full[1::3] *= F32(-0.75)
            full[2::3] *= F32(0.3)
            rows[f"full-max/{factor}{sign:+d}"] = full
    top = np.full(N_PER_ROW, FLT_MAX, F32)
    top[1::2] = -FLT_MAX
    rows["alternating-max"] = top
    rows["linear-max"] = (np.linspace(-1.0, 1.0, N_PER_ROW) * float(FLT_MAX)).astype(F32)
    # subnormal and tiny rows (1/d overflows; fp16 scales underflow)
    for e in (-126, -130, -140, -149, -24, -25, -14, -15):
        rows[f"scaled-2^{e}"] = np.ldexp(background(e + 300), e).astype(F32)
    rows["smallest-subnormals"] = ((np.arange(N_PER_ROW) % 7 - 3) * f32_from_bits(1)).astype(F32)
    # signed zeros
    rows["neg-zero"] = np.full(N_PER_ROW, -0.0, F32)
    rows["pos-zero"] = np.zeros(N_PER_ROW, F32)
    mixed = np.zeros(N_PER_ROW, F32)
    mixed[::2] = -0.0
    rows["mixed-zero"] = mixed
    rows["zeros-one-subnormal"] = mixed.copy()
    rows["zeros-one-subnormal"][7] = f32_from_bits(1)
    rows["neg-zeros-nan"] = np.full(N_PER_ROW, -0.0, F32)
    rows["neg-zeros-nan"][7] = np.nan
    # fp16 and UE4M3 edges
    for v in (65504.0, 65520.0, 65519.99, 1e5, 6.1e-5, 5.96e-8, 2.98e-8, 448.0, 2688.0, 2689.0):
        row = background(int(v) % 97) * F32(v / 3)
        row[9] = v
        rows[f"edge-{v}"] = row
    return list(rows), np.stack([np.asarray(r, dtype=F32) for r in rows.values()])


def imatrices() -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(5)
    plain = (rng.random(N_PER_ROW) + 0.1).astype(F32)
    with_zeros = plain.copy()
    with_zeros[::5] = 0
    huge = np.full(N_PER_ROW, 1e30, F32)
    huge[3] = 0
    return {"none": None, "random": plain, "zeros": with_zeros, "huge": huge}


NAMES, ROWS = crafted_rows()
IMATRICES = imatrices()


def numpy_quantize(x: np.ndarray, type_name: str, imatrix: np.ndarray | None) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gpuquant.quantize(x, type_name, imatrix=imatrix, backend="numpy")


def numpy_dequantize(q: np.ndarray, type_name: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gpuquant.dequantize(q, type_name, backend="numpy")


def assert_same_rows(got: np.ndarray, expected: np.ndarray, what: str, names: list[str] | None = None) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    differ = np.flatnonzero((got != expected).reshape(got.shape[0], -1).any(axis=1))
    labels = [names[i] for i in differ] if names else differ.tolist()
    assert differ.size == 0, f"{what}: rows {labels} differ"


@pytest.mark.parametrize("imatrix_name", list(IMATRICES))
@pytest.mark.parametrize("type_name", MORE_TYPES + FLOAT_TYPES)
def test_crafted_rows_match_host_build(type_name, imatrix_name):
    imatrix = IMATRICES[imatrix_name]
    expected = hostkernels.quantize(ROWS, type_name, imatrix)
    got = numpy_quantize(ROWS, type_name, imatrix)
    assert_same_rows(got, expected, f"{type_name} imatrix={imatrix_name}", NAMES)


def test_the_crafted_rows_are_awkward():
    # the rows reach what they are meant to: NaN and inf fp16 scales, and MXFP4's top exponent
    q1 = hostkernels.quantize(ROWS, "Q1_0").reshape(-1, 18)
    scales = q1[:, 0:2].copy().view("<u2").ravel()
    assert {0x7E00, 0x7C00} <= set(scales.tolist())
    mxfp4 = hostkernels.quantize(ROWS, "MXFP4").reshape(-1, 17)
    assert 253 in set(mxfp4[:, 0].tolist())


def test_fp16_nan_is_ggml_quiet_nan():
    # GGML_FP32_TO_FP16 writes every NaN as 0x7E00 with its sign; numpy's cast keeps the payload
    x = np.array([f32_from_bits(b) for b in (0x7F800001, 0x7FBFFFFF, 0xFFC00123, 0x7FC00000, 0xFFFFFFFF)])
    expected = np.array([0x7E00, 0x7E00, 0xFE00, 0x7E00, 0xFE00], dtype=np.uint16)
    np.testing.assert_array_equal(fp16_bits(x), expected)
    np.testing.assert_array_equal(hostkernels.quantize(np.tile(x, 32)[None, :], "F16").view(np.uint16)[0, :5], expected)


def test_fp16_signaling_nan_reads_back_quiet():
    # GGML_FP16_TO_FP32 multiplies, which sets the quiet bit and keeps sign and payload
    bits = np.array([0x7C01, 0xFD55, 0x7E01, 0x7C00, 0x0001], dtype=np.uint16)
    expected = np.array([0x7FC02000, 0xFFEAA000, 0x7FC02000, 0x7F800000, 0x33800000], dtype=np.uint32)
    np.testing.assert_array_equal(fp16_bits_to_f32(bits).view(np.uint32), expected)


# ---------------------------------------------------------------- dequantizing crafted bytes

FP16_SCALES = (
    0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7D55, 0x7FFF, 0xFDFF,  # quiet, signaling, payload NaNs
    0x7C00, 0xFC00, 0x7BFF, 0xFBFF,  # +-inf, +-max
    0x0001, 0x8001, 0x03FF, 0x0400,  # subnormals, smallest normal
    0x0000, 0x8000, 0x3C00,  # signed zeros, one
)  # fmt: skip


def crafted_bytes(type_name: str) -> tuple[np.ndarray, int]:
    """One row of random blocks whose scales run through FP16_SCALES, every E8M0 byte (MXFP4) or
    every UE4M3 byte in each of the four slots (NVFP4); returns (bytes [1, row_bytes], n_per_row)."""
    t = gpuquant.resolve(type_name)
    rng = np.random.default_rng(11)
    if type_name in FP16_SCALE_OFFSET:
        q = rng.integers(0, 256, size=(len(FP16_SCALES), t.type_size), dtype=np.uint8)
        offset = FP16_SCALE_OFFSET[type_name]
        q[:, offset : offset + 2] = np.array(FP16_SCALES, dtype="<u2").view(np.uint8).reshape(-1, 2)
    else:
        q = rng.integers(0, 256, size=(256, t.type_size), dtype=np.uint8)
        if type_name == "MXFP4":
            q[:, 0] = np.arange(256)
        else:
            q[:, 0:4] = np.arange(256)[:, None] ^ np.array([0x00, 0x7F, 0x80, 0xFF])
    return q.reshape(1, -1), q.shape[0] * t.block_size


@pytest.mark.parametrize("type_name", MORE_TYPES)
def test_dequantize_crafted_scales_match_host_build(type_name):
    q, n_per_row = crafted_bytes(type_name)
    expected = hostkernels.dequantize(q, type_name, n_per_row)
    got = numpy_dequantize(q, type_name)
    block = gpuquant.resolve(type_name).block_size
    assert_same_rows(got.reshape(-1, block).view(np.uint32), expected.reshape(-1, block).view(np.uint32), type_name)


@pytest.mark.parametrize("type_name", FLOAT_TYPES)
def test_dequantize_every_half_pattern_matches_host_build(type_name):
    q = np.arange(1 << 16, dtype=np.uint32).astype("<u2").view(np.uint8).reshape(1, -1)
    expected = hostkernels.dequantize(q, type_name, 1 << 16)
    got = numpy_dequantize(q, type_name)
    assert_same_rows(got.reshape(-1, 1024).view(np.uint32), expected.reshape(-1, 1024).view(np.uint32), type_name)

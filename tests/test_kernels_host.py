"""The CUDA kernels' block code built for the CPU (the `native` backend's engine), every type of the
host build, against ggml's own bytes and the numpy backend.

The CUDA kernels call exactly these .cuh functions, so this is how a machine without a GPU checks
their arithmetic. Skipped only when no C++ compiler is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    assert_golden_dequantize,
    assert_golden_quantize,
    assert_matches_numpy_backend,
    assert_same_bytes,
    host_functions,
)
from kernel_inputs import KINDS, random_imatrix, random_rows

from gpuquant import hostkernels
from gpuquant.backends.numpy.floats import bf16_bits
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.qtypes import QTYPES

TYPES = hostkernels.HOST_TYPES


pytestmark = pytest.mark.usefixtures("host_library")  # skips without a C++ compiler


@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name):
    quantize, _ = host_functions(type_name)
    keys = assert_golden_quantize(quantize, type_name)
    if QTYPES[type_name].requires_imatrix:  # ggml has no result without one
        assert len(keys) >= 6 and all(k.endswith("__imatrix") for k in keys)
        return
    # every golden case, each without and with an imatrix
    assert len(keys) >= 12
    assert {k.removesuffix("__imatrix") for k in keys if k.endswith("__imatrix")} == {
        k for k in keys if not k.endswith("__imatrix")
    }


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_ggml(type_name):
    _, dequantize = host_functions(type_name)
    assert_golden_dequantize(dequantize, type_name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("type_name", TYPES)
def test_random_rows_match_numpy_backend(type_name, with_imatrix, kind):
    if QTYPES[type_name].requires_imatrix and not with_imatrix:
        pytest.skip(f"{type_name} requires an importance matrix")
    x = random_rows(seed=11, kinds=(kind,))
    imatrix = random_imatrix(seed=12, n_per_row=x.shape[1]) if with_imatrix else None
    assert_matches_numpy_backend(*host_functions(type_name), type_name, x, imatrix, f"{type_name} {kind}")


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("type_name", TYPES)
def test_mixed_rows_of_several_blocks_match_numpy_backend(type_name, with_imatrix):
    if QTYPES[type_name].requires_imatrix and not with_imatrix:
        pytest.skip(f"{type_name} requires an importance matrix")
    # Every awkward kind of input at once; rows of 1024 (4 super-blocks, 32 small blocks), so
    # that each block must take its own slice of the imatrix.
    x = random_rows(seed=71, kinds=KINDS, rows_per_kind=3, n_per_row=1024)
    imatrix = random_imatrix(seed=72, n_per_row=1024) if with_imatrix else None
    assert_matches_numpy_backend(*host_functions(type_name), type_name, x, imatrix, type_name)


def _special_floats() -> np.ndarray:
    """Rounding boundaries of fp16 and bf16, subnormals, overflow, infinities and NaNs."""
    values = np.array(
        [0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 65519.996, 65520.0, 1e6, -1e6, np.inf, -np.inf,
         2.0**-14, 2.0**-24, 2.0**-25, 3 * 2.0**-26, 2.0**-26, 1e-40, -1e-45, 1.0 + 2.0**-11,
         1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4028235e38],
        dtype=np.float32,
    )
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0xFFFFFFFF], dtype=np.uint32)
    rng = np.random.default_rng(5)
    random_bits = rng.integers(0, 2**32, size=4096 - values.size - bits.size, dtype=np.uint64)
    return np.concatenate([values, bits.view(np.float32), random_bits.astype(np.uint32).view(np.float32)])


def test_f16_conversion_rounds_like_ggml():
    x = _special_floats().reshape(2, -1)
    got = hostkernels.quantize(x, "F16").view(np.uint16)
    with np.errstate(all="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    # ggml writes every NaN as a payload-free quiet NaN that keeps the sign.
    expected = np.where(np.isnan(x), (expected & 0x8000) | 0x7E00, expected).astype(np.uint16)
    np.testing.assert_array_equal(got, expected)
    back = hostkernels.dequantize(got.view(np.uint8), "F16", x.shape[1])
    np.testing.assert_array_equal(back.view(np.uint32), got.view(np.float16).astype(np.float32).view(np.uint32))


def test_bf16_conversion_rounds_like_ggml():
    x = _special_floats().reshape(2, -1)
    got = hostkernels.quantize(x, "BF16").view(np.uint16)
    np.testing.assert_array_equal(got, bf16_bits(x))
    back = hostkernels.dequantize(got.view(np.uint8), "BF16", x.shape[1])
    np.testing.assert_array_equal(back.view(np.uint32), got.astype(np.uint32) << 16)


# ---------------------------------------------------------------- every type, by the type table's facts


@pytest.mark.parametrize("type_name", [n for n in TYPES if QTYPES[n].imatrix_use == "ignored"])
def test_types_that_ignore_the_imatrix_ignore_it(type_name):
    x = random_rows(seed=3, kinds=("weights", "heavy_tail"), rows_per_kind=2, n_per_row=512)
    plain = hostkernels.quantize(x, type_name)
    assert_same_bytes(hostkernels.quantize(x, type_name, random_imatrix(4, x.shape[1])), plain, type_name)


@pytest.mark.parametrize("type_name", [n for n in TYPES if QTYPES[n].imatrix_use != "ignored"])
def test_imatrix_changes_the_bytes(type_name):
    # Guards against an imatrix silently ignored: the weighted search must pick other levels (two
    # imatrices, as the types that require one have no result without).
    x = random_rows(seed=7, kinds=("weights", "heavy_tail"), rows_per_kind=2, n_per_row=512)
    first = hostkernels.quantize(x, type_name, random_imatrix(8, x.shape[1]))
    assert (hostkernels.quantize(x, type_name, random_imatrix(9, x.shape[1])) != first).any()
    if not QTYPES[type_name].requires_imatrix:
        assert (hostkernels.quantize(x, type_name) != first).any()


# The lattice searches are left out: the NumPy backend refuses NaN and Inf for them (ggml asserts).
@pytest.mark.parametrize("type_name", [n for n in TYPES if QTYPES[n].family != "lattice"])
def test_infinities_and_extreme_scales_match_numpy_backend(type_name):
    # Infinite weights (infinite block maxima, 0 * inf in the searches), weights of 1e36 (fp16 scales
    # overflow) and subnormal weights (infinite inverse scales), mixed within rows.
    rng = np.random.default_rng(83)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[0, rng.random(512) < 0.05] = np.inf
    x[1, rng.random(512) < 0.05] = -np.inf
    x[2] *= np.float32(1e36)
    x[3] *= np.float32(1e-40)
    x[4, :256] *= np.float32(1e-30)
    x[5, ::7] = 0.0
    imatrix = random_imatrix(seed=84, n_per_row=512)
    with np.errstate(all="ignore"):
        expected = NumpyBackend(1).quantize(x, QTYPES[type_name], imatrix)
    assert_same_bytes(hostkernels.quantize(x, type_name, imatrix), expected, type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_arbitrary_bytes_like_numpy(type_name):
    # Every bit of every field set somewhere: nibbles, trits, sign bits, split 6-bit multipliers,
    # lattice codes, every E8M0 and UE4M3 scale byte, fp16 scales of every size (NaN and Inf too).
    t = QTYPES[type_name]
    rng = np.random.default_rng(85)
    rows, n_per_row = 4, 1024
    q = rng.integers(0, 256, size=(rows, t.row_bytes(n_per_row)), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = NumpyBackend(1).dequantize(q, t, n_per_row)
    got = hostkernels.dequantize(q, type_name, n_per_row)
    assert_same_bytes(got.view(np.uint32), expected.view(np.uint32), type_name)


def test_rejects_types_it_does_not_build():
    # Any block type without a host_<family>.cpp yet (the list shrinks as families are added).
    missing = next((name for name, t in QTYPES.items() if name not in TYPES and not t.is_float), None)
    if missing is None:
        pytest.skip("the host build has every block type")
    with pytest.raises(ValueError, match=f"host kernel build has no {missing}"):
        hostkernels.quantize(np.zeros((1, 256), np.float32), missing)


@pytest.mark.parametrize("type_name", ["Q4_1", "Q5_1"])
def test_zero_minimum_keeps_the_sign_of_the_first_zero(type_name):
    """ggml's chain `if (x < min) min = x` keeps the first of -0 and +0; the kernels find the
    minimum in lanes and must still store that zero's sign in the block's fp16 min (bytes 2-3)."""
    first_negative = np.full(32, 0.25, np.float32)
    first_negative[[3, 9]] = [-0.0, 0.0]
    first_positive = first_negative.copy()
    first_positive[[3, 9]] = [0.0, -0.0]
    x = np.stack([first_negative, first_positive])
    q = hostkernels.quantize(x, type_name)
    assert q[:, 2:4].copy().view("<u2")[:, 0].tolist() == [0x8000, 0x0000]
    assert_same_bytes(q, NumpyBackend(1).quantize(x, QTYPES[type_name], None), type_name)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q5_0"])
def test_largest_magnitude_tie_takes_the_first(type_name):
    """The first value of largest magnitude sets the scale's sign (ggml's strict `>` chain); the
    kernels find the magnitude in lanes and then the first value that has it."""
    x = np.tile(np.linspace(-0.4, 0.4, 32, dtype=np.float32), (2, 1))
    x[0, [5, 20]] = [0.5, -0.5]
    x[1, [5, 20]] = [-0.5, 0.5]
    q = hostkernels.quantize(x, type_name)
    sign_bits = q[:, 0:2].copy().view("<u2")[:, 0] >> 15
    assert sign_bits.tolist() == [1, 0]  # d = max / -8 (Q5_0: / -16)
    assert_same_bytes(q, NumpyBackend(1).quantize(x, QTYPES[type_name], None), type_name)

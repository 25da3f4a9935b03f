"""The K-quant kernels' super-block code (kernels/kquants.cuh), built for the CPU, against the numpy
backend: Q2_K, Q3_K, Q4_K, Q5_K and Q6_K, with and without an importance matrix (test_kernels_host.py
checks every host type against ggml's golden bytes).

The CUDA kernels (kernels/kquants.cu) call exactly these functions, one thread per super-block, so
this is how a machine without a GPU checks their arithmetic. Skipped only without a C++ compiler.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_bytes
from kernel_inputs import random_imatrix, random_rows

import gpuquant
from gpuquant import hostkernels
from gpuquant.backends.numpy.rounding import fp16_bits
from gpuquant.backends.numpy_backend import NumpyBackend

K_TYPES = hostkernels.HOST_FAMILIES["kquants"]
# Byte offsets of each super-block's fp16 fields (d, and dmin where there is one).
FP16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


pytestmark = pytest.mark.usefixtures("host_library")  # skips without a C++ compiler


def test_the_family_is_the_k_quants():
    assert set(K_TYPES) == {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}


@pytest.mark.parametrize("type_name", K_TYPES)
def test_signed_imatrix_matches_numpy_backend(type_name):
    # Negative importances (no real imatrix has them) give negative sub-block scales: ggml's
    # make_qp_quants then wraps levels through uint8, which Q4_K stores unclamped and Q5_K clamps.
    x = random_rows(seed=79, kinds=("weights", "heavy_tail", "skewed"), rows_per_kind=4, n_per_row=1024)
    imatrix = np.random.default_rng(80).standard_normal(1024).astype(np.float32)
    # the public API refuses negative importances; the backend itself still computes what ggml would
    expected = NumpyBackend().quantize(x, gpuquant.resolve(type_name), imatrix)
    assert_same_bytes(hostkernels.quantize(x, type_name, imatrix), expected, type_name)


@pytest.mark.parametrize("type_name", K_TYPES)
def test_dequantize_arbitrary_bytes_like_numpy(type_name):
    # Every bit of every field set somewhere: the unpacking of scales, mins, high bits and signs.
    t = gpuquant.resolve(type_name)
    rng = np.random.default_rng(73)
    rows, n_per_row = 6, 1024
    q = rng.integers(0, 256, size=(rows * n_per_row // 256, t.type_size), dtype=np.uint8)
    # finite fp16 super-block scales, so that both sides compute with numbers, not NaN payloads
    for offset in FP16_FIELDS[type_name]:
        scale = fp16_bits(rng.standard_normal(q.shape[0]).astype(np.float32)).astype("<u2")
        q[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    q = q.reshape(rows, -1)
    got = hostkernels.dequantize(q, type_name, n_per_row)
    expected = gpuquant.dequantize(q, type_name, backend="numpy")
    assert_same_bytes(got.view(np.uint32), expected.view(np.uint32), type_name)


@pytest.mark.parametrize("type_name", K_TYPES)
def test_imatrix_changes_the_bytes(type_name):
    # Guards against an imatrix silently ignored: the weighted searches must pick other levels.
    x = random_rows(seed=74, kinds=("weights", "heavy_tail"), rows_per_kind=2, n_per_row=512)
    plain = hostkernels.quantize(x, type_name)
    weighted = hostkernels.quantize(x, type_name, random_imatrix(75, x.shape[1]))
    assert (plain != weighted).any()


@pytest.mark.parametrize("type_name", K_TYPES)
def test_super_blocks_are_independent(type_name):
    # Without an imatrix a super-block's bytes depend on its own 256 values only (no row statistic).
    x = random_rows(seed=76, kinds=("weights", "sparse", "skewed"), rows_per_kind=2, n_per_row=768)
    whole = hostkernels.quantize(x, type_name)
    one_per_row = hostkernels.quantize(x.reshape(-1, 256), type_name)
    assert_same_bytes(one_per_row.reshape(whole.shape), whole, type_name)

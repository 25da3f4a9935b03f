"""NumPy backend against ggml's own bytes: every golden case of every type the backend claims."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CASES, MANIFEST, golden, golden_cases

import gpuquant
from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS

CLAIMED = [t for t in MANIFEST["types"] if t in QUANTIZERS]


def test_claims_cover_the_foundation_types():
    for t in ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        assert t in QUANTIZERS and t in DEQUANTIZERS


@pytest.mark.parametrize("type_name", CLAIMED)
def test_quantize_matches_ggml(type_name):
    n = 0
    for key, x, imatrix, expected in golden_cases(type_name):
        got = gpuquant.quantize(x, type_name, imatrix=imatrix, backend="numpy")
        assert got.dtype == np.uint8 and got.shape == expected.shape, key
        mismatched_rows = np.flatnonzero((got != expected).any(axis=1))
        assert mismatched_rows.size == 0, f"{type_name} {key}: rows {mismatched_rows.tolist()} differ"
        n += 1
    assert n >= 6


@pytest.mark.parametrize("type_name", CLAIMED)
def test_dequantize_matches_ggml(type_name):
    ref = golden(type_name)
    keys = [k for k in ref if k.endswith("__dequant")]
    assert keys
    for key in keys:
        case = key.removesuffix("__dequant")
        q = ref[case] if case in ref else ref[f"{case}__imatrix"]
        got = gpuquant.dequantize(q, type_name, backend="numpy")
        np.testing.assert_array_equal(got.view(np.uint32), ref[key].view(np.uint32), err_msg=key)


def test_cases_loaded():
    assert set(CASES) >= {"normal", "unit", "heavy_tail", "edge", "wide", "skewed"}

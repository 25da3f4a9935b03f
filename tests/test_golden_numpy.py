"""NumPy backend against ggml's own bytes: every golden case of every type the backend claims."""

from __future__ import annotations

import pytest
from conftest import CASES, MANIFEST, assert_golden_dequantize, assert_golden_quantize

import gpuquant
from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS

CLAIMED = [t for t in MANIFEST["types"] if t in QUANTIZERS]


def test_claims_cover_the_foundation_types():
    for t in ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        assert t in QUANTIZERS and t in DEQUANTIZERS


@pytest.mark.parametrize("type_name", CLAIMED)
def test_quantize_matches_ggml(type_name):
    keys = assert_golden_quantize(
        lambda x, imatrix: gpuquant.quantize(x, type_name, imatrix=imatrix, backend="numpy"), type_name
    )
    assert len(keys) >= 6


@pytest.mark.parametrize("type_name", CLAIMED)
def test_dequantize_matches_ggml(type_name):
    assert_golden_dequantize(lambda q, n_per_row: gpuquant.dequantize(q, type_name, backend="numpy"), type_name)


def test_cases_loaded():
    assert set(CASES) >= {"normal", "unit", "heavy_tail", "edge", "wide", "skewed"}

"""The lattice IQ types of gpuquant/backends/numpy/iq_grid.py against ggml's golden vectors, run
directly on the module (it is wired into the backend separately)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_golden_dequantize, assert_golden_quantize

from gpuquant.backends.numpy import iq_grid

# Every type the module registers must reproduce every golden case, with and without imatrix.
REGISTERED = sorted(iq_grid.QUANTIZERS)


@pytest.mark.parametrize("type_name", REGISTERED)
def test_golden_quantize(type_name: str) -> None:
    with np.errstate(all="ignore"):
        assert_golden_quantize(iq_grid.QUANTIZERS[type_name], type_name)


@pytest.mark.parametrize("type_name", REGISTERED)
def test_golden_dequantize(type_name: str) -> None:
    assert_golden_dequantize(iq_grid.DEQUANTIZERS[type_name], type_name)


def test_every_type_registered_both_ways() -> None:
    assert set(iq_grid.QUANTIZERS) == set(iq_grid.DEQUANTIZERS)

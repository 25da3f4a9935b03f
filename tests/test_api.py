"""The array API: names, ids and aliases, shapes, and clear ValueErrors."""

from __future__ import annotations

import numpy as np
import pytest

import gpuquant
from gpuquant.qtypes import QTYPES, resolve


def test_resolve_names_ids_aliases():
    assert resolve("q4_0") is QTYPES["Q4_0"]
    assert resolve(2) is QTYPES["Q4_0"] and resolve("2") is QTYPES["Q4_0"]
    assert resolve("Q4") is QTYPES["Q4_0"] and resolve("Q5") is QTYPES["Q5_0"] and resolve("q8") is QTYPES["Q8_0"]
    assert resolve("FP16") is QTYPES["F16"] and resolve("bf16") is QTYPES["BF16"]
    with pytest.raises(ValueError, match="unknown"):
        resolve("Q7_0")
    with pytest.raises(ValueError, match="unknown ggml type id"):
        resolve(5)


def test_one_dimensional_input_is_one_row():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    q = gpuquant.quantize(x, "Q8_0", backend="numpy")
    assert q.shape == (1, 68) and q.dtype == np.uint8
    assert np.array_equal(q, gpuquant.quantize(x.reshape(1, 64), 8, backend="numpy"))
    back = gpuquant.dequantize(q, "Q8_0", backend="numpy")
    assert back.shape == (1, 64) and np.abs(back - x).max() < 0.01


def test_float64_input_is_rounded_to_float32_first():
    x = np.random.default_rng(0).standard_normal((3, 64))
    assert np.array_equal(gpuquant.quantize(x, "Q4_0", backend="numpy"),
                          gpuquant.quantize(x.astype(np.float32), "Q4_0", backend="numpy"))


@pytest.mark.parametrize("call,match", [
    (lambda: gpuquant.quantize(np.zeros((2, 40), np.float32), "Q4_0"), "not a multiple of Q4_0's block size 32"),
    (lambda: gpuquant.quantize(np.zeros((2, 64), np.float32), "Q4_0", imatrix=np.ones(32, np.float32)),
     "imatrix has 32 values but rows have 64"),
    (lambda: gpuquant.quantize(np.zeros((2, 64), np.int32), "Q4_0"), "floating point"),
    (lambda: gpuquant.quantize(np.zeros((2, 64), np.float32), "Q9_K"), "unknown quantization type"),
    (lambda: gpuquant.quantize(np.zeros((2, 2, 64), np.float32), "Q4_0"), "1-D or 2-D"),
    (lambda: gpuquant.quantize(np.zeros(64, np.float32), "Q4_0", backend="tpu"), "unknown backend"),
    (lambda: gpuquant.dequantize(np.zeros((1, 19), np.uint8), "Q4_0"), "not whole Q4_0 blocks"),
])
def test_clear_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_types_requiring_an_imatrix_say_so():
    t = QTYPES["IQ2_XXS"]
    from gpuquant.api import check_input

    with pytest.raises(ValueError, match="requires an importance matrix"):
        check_input(np.zeros((1, 256), np.float32), t, None)

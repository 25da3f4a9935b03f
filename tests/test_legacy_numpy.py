"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 on the NumPy backend: parity with gguf-py's numpy quantizers
(which follow ggml's reference rounding), round trips, edge cases, and the fast path against
the exact per-weight path. ggml's own bytes (with and without imatrix) are in test_golden_numpy.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from conftest import assert_same_bytes
from gguf import GGMLQuantizationType

from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS, legacy
from gpuquant.backends.numpy.search import make_qkx3_quants, make_qx_quants
from gpuquant.qtypes import QTYPES

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
SHAPES = [(1, 32), (1, 4096), (7, 96), (64, 512), (40, 8192)]  # the last spans several chunks
SCALES = [1e-3, 1.0, 1e3]


def _random(shape: tuple[int, int], scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _gguf_quantize(x: np.ndarray, type_name: str) -> np.ndarray:
    return gguf.quants.quantize(x, GGMLQuantizationType[type_name])


@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_py_on_random_arrays(type_name):
    for i, shape in enumerate(SHAPES):
        for scale in SCALES:
            x = _random(shape, scale, seed=i)
            got = QUANTIZERS[type_name](x, None)
            assert_same_bytes(got, _gguf_quantize(x, type_name), f"{type_name} {shape} x{scale}")


@pytest.mark.parametrize("type_name", TYPES)
def test_round_trip_matches_gguf_py_dequantize(type_name):
    x = _random((16, 1024), 0.02, seed=7)
    q = QUANTIZERS[type_name](x, None)
    got = DEQUANTIZERS[type_name](q, x.shape[1])
    expected = gguf.quants.dequantize(q, GGMLQuantizationType[type_name])
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    # and, for the symmetric types, close to the input: half a step, or one step on the side
    # of Q4_0/Q5_0 that has one level fewer (plus the fp16 rounding of d)
    levels_per_side = {"Q4_0": (8, 1.1), "Q5_0": (16, 1.1), "Q8_0": (127, 0.6)}
    if type_name in levels_per_side:
        levels, tolerance = levels_per_side[type_name]
        blocks = x.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / levels
        assert (np.abs(got.reshape(-1, 32) - blocks) <= tolerance * step).all()


def _edge_rows() -> np.ndarray:
    """Blocks that exercise ties, zeros and extremes (no -0: gguf-py's zero signs differ)."""
    n = 256
    rows = np.zeros((10, n), dtype=np.float32)
    rows[1] = 0.75  # constant positive
    rows[2] = -3.0  # constant negative
    rows[3] = _random((1, n), 0.01, seed=3)
    rows[3, 5] = 1e4  # one huge outlier
    rows[4] = np.tile([1.0, -1.0], n // 2)  # alternating signs: ties in magnitude
    rows[5] = np.arange(n, dtype=np.float32) / 8 - 16  # ramp with half-integer steps
    rows[6] = _random((1, n), 1e-30, seed=6)
    rows[7] = _random((1, n), 6e4, seed=7)  # scales near and above fp16's range
    rows[8, ::7] = 2.5  # sparse, half-integer
    rows[9] = np.abs(_random((1, n), 1.0, seed=9))
    return rows


@pytest.mark.parametrize("type_name", TYPES)
def test_edge_cases_match_gguf_py(type_name):
    x = _edge_rows()
    with np.errstate(all="ignore"):  # gguf-py warns on overflowing fp16 scales
        expected = _gguf_quantize(x, type_name)
    assert_same_bytes(QUANTIZERS[type_name](x, None), expected, type_name)
    for row in range(x.shape[0]):  # one row at a time gives the same bytes
        got = QUANTIZERS[type_name](np.ascontiguousarray(x[row : row + 1]), None)
        assert_same_bytes(got, expected[row : row + 1], f"{type_name} row {row}")


@pytest.mark.parametrize("type_name", TYPES)
def test_all_zero_input(type_name):
    x = np.zeros((3, 64), dtype=np.float32)
    q = QUANTIZERS[type_name](x, None)
    assert_same_bytes(q, _gguf_quantize(x, type_name), type_name)
    assert not DEQUANTIZERS[type_name](q, 64).any()
    imatrix = np.ones(64, dtype=np.float32)
    assert not DEQUANTIZERS[type_name](QUANTIZERS[type_name](x, imatrix), 64).any()


def _awkward_blocks(seed: int) -> np.ndarray:
    """Random blocks with signed zeros, ties, constants, NaN, infinities and tiny values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((24, 512)) * 10.0 ** rng.integers(-3, 3, (24, 1))).astype(np.float32)
    blocks = x.reshape(-1, 32)
    pick = rng.random(blocks.shape[0])
    blocks[pick < 0.05] = 0.0
    blocks[(pick >= 0.05) & (pick < 0.10)] = -0.0
    blocks[(pick >= 0.10) & (pick < 0.12), ::3] = -0.0
    tie = (pick >= 0.12) & (pick < 0.20)
    blocks[tie, 9] = -blocks[tie, 2]
    const = (pick >= 0.20) & (pick < 0.25)
    blocks[const] = blocks[const, :1]
    blocks[(pick >= 0.25) & (pick < 0.28), 4] = np.nan
    blocks[(pick >= 0.28) & (pick < 0.30), 6] = np.inf
    blocks[(pick >= 0.30) & (pick < 0.32), 1] = -np.inf
    blocks[(pick >= 0.32) & (pick < 0.36)] *= np.float32(1e-38)  # scales whose 1/d overflows
    return x


@pytest.mark.parametrize("type_name", TYPES)
def test_fast_path_equals_exact_path(type_name):
    for seed in range(3):
        x = _awkward_blocks(seed)
        with np.errstate(all="ignore"):
            fast = legacy.quantize_reference(QTYPES[type_name], x, fast=True)
            exact = legacy.quantize_reference(QTYPES[type_name], x, fast=False)
        assert fast.dtype == np.uint8
        assert_same_bytes(fast, exact, f"{type_name} seed {seed}")


def test_signed_zero_scales_follow_ggml():
    # ggml's Q4_0 keeps max = +0 for an all-zero block, so d = +0 / -8 = -0 (bits 0x8000) even
    # when the first weight is -0; Q8_0's amax starts at +0 and stays +0.
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, 0] = -0.0
    assert QUANTIZERS["Q4_0"](x, None)[0, :2].view(np.uint16)[0] == 0x8000
    assert QUANTIZERS["Q8_0"](x, None)[0, :2].view(np.uint16)[0] == 0x0000
    # Q4_1 stores the first-found minimum: -0 here, +0 when +0 comes first
    assert QUANTIZERS["Q4_1"](x, None)[0, 2:4].view(np.uint16)[0] == 0x8000
    x[0, 0] = 0.0
    x[0, 1] = -0.0
    assert QUANTIZERS["Q4_1"](x, None)[0, 2:4].view(np.uint16)[0] == 0x0000


def test_q8_0_ignores_the_imatrix():
    x = _random((4, 256), 1.0, seed=11)
    imatrix = np.random.default_rng(0).random(256).astype(np.float32)
    assert_same_bytes(QUANTIZERS["Q8_0"](x, imatrix), QUANTIZERS["Q8_0"](x, None), "Q8_0")


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_imatrix_changes_the_result_and_rows_are_independent(type_name):
    x = _random((6, 512), 0.02, seed=12)
    imatrix = np.random.default_rng(1).random(512).astype(np.float32)
    weighted = QUANTIZERS[type_name](x, imatrix)
    assert weighted.shape == QUANTIZERS[type_name](x, None).shape
    assert (weighted != QUANTIZERS[type_name](x, None)).any()
    for row in (0, 5):
        one = QUANTIZERS[type_name](np.ascontiguousarray(x[row : row + 1]), imatrix)
        assert_same_bytes(one, weighted[row : row + 1], f"{type_name} row {row}")


def test_search_default_weights_are_ggmls():
    x = _random((300, 16), 1.0, seed=13)
    scale, levels = make_qx_quants(x, 32, 1, None)
    scale_w, levels_w = make_qx_quants(x, 32, 1, x * x)  # rmse_type 1 weighs by x*x
    np.testing.assert_array_equal(scale.view(np.uint32), scale_w.view(np.uint32))
    np.testing.assert_array_equal(levels, levels_w)
    assert levels.dtype == np.uint8 and levels.max() <= 63
    s, m, lv = make_qkx3_quants(x, 3, None, -0.9, 0.05, 36, False)
    s_w, m_w, lv_w = make_qkx3_quants(x, 3, x * x, -0.9, 0.05, 36, False)
    np.testing.assert_array_equal(s.view(np.uint32), s_w.view(np.uint32))
    np.testing.assert_array_equal(m.view(np.uint32), m_w.view(np.uint32))
    np.testing.assert_array_equal(lv, lv_w)
    assert lv.max() <= 3


def test_search_zero_blocks_and_chunking():
    x = _random((9000, 16), 1.0, seed=14)  # more blocks than one internal chunk
    x[17] = 0.0
    scale, levels = make_qx_quants(x, 4, 1, None)
    assert scale[17] == 0 and not levels[17].any()
    head, head_levels = make_qx_quants(x[:100], 4, 1, None)
    np.testing.assert_array_equal(head.view(np.uint32), scale[:100].view(np.uint32))
    np.testing.assert_array_equal(head_levels, levels[:100])
    s, m, lv = make_qkx3_quants(x, 15, None)
    s_tail, m_tail, lv_tail = make_qkx3_quants(x[-50:], 15, None)
    np.testing.assert_array_equal(s_tail.view(np.uint32), s[-50:].view(np.uint32))
    np.testing.assert_array_equal(m_tail.view(np.uint32), m[-50:].view(np.uint32))
    np.testing.assert_array_equal(lv_tail, lv[-50:])


def test_q8_0_rounds_half_away_from_zero():
    # amax 127 gives d = 1 and 1/d = 1, so each weight is its own level before rounding
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    x = np.zeros((1, 32), dtype=np.float32)
    x[0, :9] = [127, 0.5, -0.5, 2.5, -2.5, below_half, -below_half, 1.5, 126.5]
    q = QUANTIZERS["Q8_0"](x, None)
    assert q[0, :2].view(np.float16)[0] == 1
    np.testing.assert_array_equal(q[0, 2:11].view(np.int8), [127, 1, -1, 3, -3, 0, 0, 2, 127])
    assert_same_bytes(q, _gguf_quantize(x, "Q8_0"), "Q8_0")

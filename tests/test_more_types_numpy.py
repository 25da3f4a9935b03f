"""IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0 in the NumPy backend, beyond the golden
vectors: gguf-py's numpy codecs as a second reference, chunk and row independence, edge rows,
hand-derived bytes, and the shortcuts the quantizers take against the literal ggml rules."""

from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest
from conftest import CASES, golden

import gpuquant
from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS, fp4, iq4
from gpuquant.backends.numpy.rounding import nearest_int_exact
from gpuquant.qtypes import QTYPES

TYPES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]
GGUF_QUANTIZES = ["TQ1_0", "TQ2_0", "MXFP4"]  # gguf 0.19 quantizes these like ggml
GGUF_DEQUANTIZES = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"]
IMATRIX_IGNORED = ["TQ1_0", "TQ2_0", "MXFP4", "NVFP4", "Q1_0", "Q2_0"]


def random_rows(rows: int, n_per_row: int, seed: int) -> np.ndarray:
    """Rows of mixed character: weight-like, unit, heavy-tailed, positive-only, sparse."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n_per_row)).astype(np.float32)
    scales = np.float32(10.0) ** rng.uniform(-4, 3, size=(rows, 1)).astype(np.float32)
    x *= scales
    x[0::4] = rng.standard_t(3, size=x[0::4].shape).astype(np.float32)
    x[1::4] = np.abs(x[1::4])
    x[2::4] *= rng.random(x[2::4].shape) < 0.1
    return np.ascontiguousarray(x)


def edge_rows(n_per_row: int) -> np.ndarray:
    ramp = np.linspace(-1, 1, n_per_row, dtype=np.float32)
    rows = [
        np.zeros(n_per_row, np.float32),
        np.full(n_per_row, -0.0, np.float32),
        np.full(n_per_row, 3.5, np.float32),
        np.full(n_per_row, -3.5, np.float32),
        ramp * np.float32(1e-40),  # denormals
        ramp * np.float32(1e-20),
        ramp * np.float32(7e4),  # fp16 scale overflows
        ramp * np.float32(3e30),
        np.where(np.arange(n_per_row) % 7 == 0, np.float32(50), np.float32(1e-3)),
        np.tile(np.float32([0.5, -0.5, 1.5, -1.5]), n_per_row // 4),
    ]
    return np.stack(rows)


def quantize(x, type_name, imatrix=None):
    return gpuquant.quantize(x, type_name, imatrix=imatrix, backend="numpy")


def dequantize(q, type_name):
    return gpuquant.dequantize(q, type_name, backend="numpy")


def assert_same_floats(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_types_are_registered():
    for t in TYPES:
        assert t in QUANTIZERS and t in DEQUANTIZERS


@pytest.mark.parametrize("type_name", GGUF_QUANTIZES)
def test_quantize_matches_gguf_py(type_name):
    qt = gguf.GGMLQuantizationType[type_name]
    for x in (random_rows(12, 1024, seed=1), CASES["normal"], CASES["heavy_tail"]):
        ours = quantize(x, type_name)
        np.testing.assert_array_equal(ours, gguf.quants.quantize(x, qt))


@pytest.mark.parametrize("type_name", GGUF_DEQUANTIZES)
def test_dequantize_matches_gguf_py(type_name):
    qt = gguf.GGMLQuantizationType[type_name]
    x = random_rows(12, 1024, seed=2)
    quantized = [quantize(x, type_name), quantize(edge_rows(512), type_name)]
    quantized += [v for k, v in golden(type_name).items() if not k.endswith("__dequant")]
    for q in quantized:
        with np.errstate(invalid="ignore"):  # fp16-overflowed scales times zero levels
            reference = gguf.quants.dequantize(q, qt)
        assert_same_floats(dequantize(q, type_name), reference)


@pytest.mark.parametrize("type_name", TYPES)
def test_rows_are_independent(type_name):
    x = random_rows(6, 768 if QTYPES[type_name].block_size < 256 else 1024, seed=3)
    imatrix = np.random.default_rng(4).random(x.shape[1]).astype(np.float32)
    imatrix[::17] = 0
    for im in (None, imatrix):
        whole = quantize(x, type_name, im)
        by_row = np.concatenate([quantize(x[r : r + 1], type_name, im) for r in range(x.shape[0])])
        np.testing.assert_array_equal(whole, by_row)
        flat = quantize(x.reshape(1, -1), type_name, None if im is None else np.tile(im, x.shape[0]))
        np.testing.assert_array_equal(whole.reshape(1, -1), flat)


@pytest.mark.parametrize("type_name", ["IQ4_NL", "IQ4_XS"])
def test_iq4_chunking_does_not_change_bytes(type_name, monkeypatch):
    x = random_rows(5, 1024, seed=5)
    imatrix = np.random.default_rng(6).random(1024).astype(np.float32)
    expected = [quantize(x, type_name), quantize(x, type_name, imatrix)]
    monkeypatch.setattr(iq4, "_CHUNK_BLOCKS", 3)  # chunks that straddle rows
    np.testing.assert_array_equal(quantize(x, type_name), expected[0])
    np.testing.assert_array_equal(quantize(x, type_name, imatrix), expected[1])


@pytest.mark.parametrize("type_name", TYPES)
def test_edge_rows_round_trip(type_name):
    x = edge_rows(512)
    q = quantize(x, type_name)
    assert q.shape == (x.shape[0], QTYPES[type_name].row_bytes(512))
    y = dequantize(q, type_name)
    assert y.shape == x.shape
    assert np.all(np.abs(y[:2]) == 0)  # all-zero rows (either sign) come back as zeros
    # constant rows come back close (MXFP4's power-of-two scale is the coarsest: 3.5 -> 3)
    np.testing.assert_allclose(y[2:4], x[2:4], rtol=0.15)
    assert np.all(np.isfinite(y[4:6]))


@pytest.mark.parametrize("type_name", IMATRIX_IGNORED)
def test_imatrix_is_ignored_like_ggml(type_name):
    x = random_rows(4, 1024, seed=7)
    imatrix = np.random.default_rng(8).random(1024).astype(np.float32)
    np.testing.assert_array_equal(quantize(x, type_name, imatrix), quantize(x, type_name))


@pytest.mark.parametrize("type_name", ["IQ4_NL", "IQ4_XS"])
def test_imatrix_changes_iq4(type_name):
    x = random_rows(4, 1024, seed=9)
    imatrix = np.random.default_rng(10).random(1024).astype(np.float32) ** 4
    assert not np.array_equal(quantize(x, type_name, imatrix), quantize(x, type_name))


def _best_index_int8(values: np.ndarray, x: float) -> int:
    """ggml's best_index_int8, scalar and literal (float32 differences)."""
    x = np.float32(x)
    if x <= values[0]:
        return 0
    if x >= values[-1]:
        return len(values) - 1
    lo, hi = 0, len(values) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < values[mid]:
            hi = mid
        else:
            lo = mid
    return lo if x - np.float32(values[lo]) < np.float32(values[hi]) - x else hi


def test_iq4_level_table_matches_best_index_int8():
    values = iq4.KVALUES_IQ4NL.astype(np.float32)
    mids = (values[:-1] + values[1:]) / np.float32(2)
    probes = [
        values,
        mids,
        np.nextafter(mids, -np.inf),
        np.nextafter(mids, np.inf),
        np.float32([-1e9, -200, -0.0, 0.0, 1e-30, 200, 1e9]),
        np.random.default_rng(11).uniform(-140, 140, 2000).astype(np.float32),
    ]
    x = np.concatenate(probes).astype(np.float32)
    doubled = x + x
    got = iq4._INDEX_BY_HALF_STEP[iq4._half_steps(doubled)]
    expected = np.array([_best_index_int8(values, v) for v in x], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)


def test_nearest_int_exact_is_ggml_nearest_int():
    v = np.float32([0.5, 1.5, 2.5, -0.5, -2.5, 31.49, -32.6, np.nan, np.inf, -np.inf])
    # half to even like np.rint; NaN -> 0 and +-inf -> -2^22 (the magic-number trick)
    expected = np.int32([0, 2, 2, 0, -2, 31, -33, 0, -(1 << 22), -(1 << 22)])
    np.testing.assert_array_equal(nearest_int_exact(v), expected)


def _best_index_fp4_literal(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ggml's best_index_mxfp4 over all 16 table entries, first strict minimum."""
    errs = np.abs(fp4.KVALUES_FP4.astype(np.float32) * d[..., None] - x[..., None])  # d [n, 1]
    return np.argmin(errs, axis=-1).astype(np.uint8)


def test_fp4_level_choice_matches_the_literal_search():
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((400, 16)) * 3).astype(np.float32)
    ue = rng.integers(0, 0x7F, size=400).astype(np.uint8)
    ue[:20] = 0  # d = 0
    d = fp4._UE4M3[ue][:, None]
    d[20:40] *= np.float32(2.0**-30)  # extreme |x| / d ratios
    x[40:60] = np.float32(1e9)
    # exact ties at every midpoint, and their float neighbours
    mids = np.float32([0.5, 1.5, 2.5, 3.5, 5, 7, 10])
    x[60:67, :7] = mids[None, :] * d[60:67]
    x[67:74, :7] = np.nextafter(mids[None, :] * d[67:74], np.float32(np.inf))
    x[74:81, :7] = -mids[None, :] * d[74:81]
    amax = np.max(np.abs(x), axis=1)
    expected = _best_index_fp4_literal(x, d)
    np.testing.assert_array_equal(fp4._search_fp4(x, d), expected)
    np.testing.assert_array_equal(fp4._nearest_fp4(x, d, amax), expected)


def test_fp32_to_ue4m3_hand_values():
    v = np.float32([1.0, 448.0, 1e6, 1e-4, 3e-3, 0.0, -1.0, np.nan, 1.9375, 255.0, 2.0**-7])
    # 1 = 2^0 -> exp 7; >= 256 saturates to 0x7E; 1e-4*512+0.5 < 1 -> 0; 3e-3*512+0.5 -> 2;
    # 1.9375 = 1.1111b: mantissa 7 plus round bit carries into exp 8; 255 rounds to 256 -> 0x7E;
    # 2^-7 is subnormal: (int)(4 + 0.5) = 4
    expected = np.uint8([0x38, 0x7E, 0x7E, 0x00, 0x02, 0, 0, 0, 0x40, 0x7E, 0x04])
    np.testing.assert_array_equal(fp4.fp32_to_ue4m3(v), expected)


def test_q2_0_hand_block():
    x = np.tile(np.float32([-1, 0, 1, 2]), 16).reshape(1, 64)
    # d = 2 (fp16 0x4000); x/d = -0.5, 0, 0.5, 1 -> roundf (half away) -1, 0, 1, 1 -> +1 -> 0, 1, 2, 2
    expected = np.concatenate([np.uint8([0x00, 0x40]), np.full(16, 0b10100100, np.uint8)])[None, :]
    np.testing.assert_array_equal(quantize(x, "Q2_0"), expected)
    y = np.tile(np.float32([-2, 0, 2, 2]), 16).reshape(1, 64)
    assert_same_floats(dequantize(expected, "Q2_0"), y)


def test_q1_0_hand_block():
    x = np.tile(np.float32([1, -1, 0.0, -0.0]), 32).reshape(1, 128)
    # sum |x| = 64 -> d = 0.5 (fp16 0x3800); x >= 0 holds for 1, 0 and -0: bits 1,0,1,1 -> 0xDD
    expected = np.concatenate([np.uint8([0x00, 0x38]), np.full(16, 0xDD, np.uint8)])[None, :]
    np.testing.assert_array_equal(quantize(x, "Q1_0"), expected)
    y = np.tile(np.float32([0.5, -0.5, 0.5, 0.5]), 32).reshape(1, 128)
    assert_same_floats(dequantize(expected, "Q1_0"), y)


def test_iq4_xs_empty_superblock_scale_is_negative_zero():
    # ggml computes d = -max_scale / 32 with max_scale = +0, storing fp16 -0 (0x8000)
    q = quantize(np.zeros((1, 256), np.float32), "IQ4_XS")
    assert q[0, 0] == 0x00 and q[0, 1] == 0x80
    assert np.all(q[0, 8:] == 0x88)  # every weight at level 8 (the value 1), like ggml

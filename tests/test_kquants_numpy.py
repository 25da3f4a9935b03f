"""K-quants (Q2_K..Q6_K) of the NumPy backend, beyond the golden vectors.

- edge rows (zeros, constants, outliers, tiny and fp16-overflowing scales, ties, sparse,
  one-signed rows) with no imatrix, an imatrix with zeros, and an all-zero imatrix, against
  digests of ggml's own bytes (ggml d99724f2 ggml-quants.c built with -ffp-contract=off);
- our dequantizers against gguf-py's (gguf.quants.dequantize), whole arrays;
- rows, chunks and imatrix slices: splitting the work differently never changes a byte.
"""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest

from gpuquant.backends.numpy import kquants, search
from gpuquant.backends.numpy.rounding import nearest_int_exact
from gpuquant.qtypes import QTYPES

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
F = np.float32


def uniform(n: int, seed: int) -> np.ndarray:
    """Reproducible float32 in [-1, 1) from integer hashing only (no RNG streams, no libm)."""
    h = (np.arange(n, dtype=np.uint64) + np.uint64(seed * 7919 + 1)) * np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    k = (h >> np.uint64(40)).astype(F)  # 24-bit integers: exact in float32
    return k * F(2.0**-23) - F(1.0)


def edge_rows(n: int = 1024) -> np.ndarray:
    """One edge condition per row (float32 [14, n]); only exact IEEE operations build them."""
    u = uniform(n, 1)
    heavy = uniform(n, 2) / (F(1.0) - np.abs(uniform(n, 3)) * F(0.96875))  # tails up to 32x
    spikes = u * F(0.01)
    spikes[::97] = F(40.0)
    spikes[5::131] = F(-25.0)
    magnitudes = np.arange(-30, 14, 44 / (n // 16)).astype(np.int32).astype(F)
    per_group = (u.reshape(-1, 16) * (F(2.0) ** magnitudes)[:, None]).reshape(-1)
    sparse = heavy.copy()
    sparse[uniform(n, 4) < F(0.8)] = F(0.0)
    half_empty = heavy.copy()
    half_empty[: n // 2] = F(0.0)
    alternating = np.where(np.arange(n) % 2 == 0, F(1.0), F(-1.0)).astype(F)
    alternating[::7] *= F(3.0)
    rows = [
        np.zeros(n, F),  # all zero
        np.full(n, F(0.75)),  # constant positive
        np.full(n, F(-0.3)),  # constant negative
        spikes,  # small values with outliers
        heavy * F(2.0**-100),  # below GROUP_MAX_EPS
        heavy * F(2.0**-20),  # fp16-subnormal scales
        heavy * F(2.0**26),  # scales that overflow fp16
        per_group,  # every 16 values their own magnitude, 2^-30 .. 2^13
        np.round(u * F(8.0)) / F(4.0),  # a grid of quarters: rounding ties
        sparse,  # 80% zeros
        np.abs(heavy) + F(0.5),  # positive only (min > 0)
        -np.abs(heavy) - F(0.25),  # negative only
        half_empty,  # first half zero
        alternating,
    ]
    return np.stack(rows).astype(F)


def edge_imatrix(n: int = 1024) -> np.ndarray:
    u = uniform(n, 9)
    w = (u * u) * F(12.0) + F(0.001)
    w[uniform(n, 10) < F(-0.4)] = F(0.0)  # about 30% zeros
    w[256:512] = F(0.0)  # a whole super-block without weight
    w[512:528] = F(1.0)  # a flat stretch
    return w.astype(F)


IMATRICES = {"none": None, "imatrix": edge_imatrix(), "zero_imatrix": np.zeros(1024, F)}

# First 8 hex digits of the SHA-256 of each row of ggml's bytes for edge_rows(), by imatrix.
GGML_ROW_DIGESTS = {
    ("Q2_K", "none"): (
        "52a3e080 09b4f936 f27ab61f d688cd0c 495a42bc cf080612 c0ed189c "
        "36c80835 caeb3175 803267f5 d9acbd90 97c0c725 6202b35b d9c18ecf"
    ),
    ("Q2_K", "imatrix"): (
        "52a3e080 5c176b13 608cb538 e0fded47 97d11b14 b0ccbc03 4473081e "
        "379b4655 2c4acace 7de2a7f5 d809bdf0 7fc20f6b 44a8c041 c4ea311d"
    ),
    ("Q2_K", "zero_imatrix"): (
        "52a3e080 c18f1e62 302eba25 f434f690 97d11b14 495a42bc 495a42bc "
        "5c525014 e6b16c21 b79d7701 33d41190 3900dcf3 2f257450 120009b2"
    ),
    ("Q3_K", "none"): (
        "360d579d 271f2bf8 2e888520 3e4c1c30 360d579d 81e41845 444a4ce8 "
        "47d5b67c 9a9df631 6321933b bb1e79c0 e7e01168 f3427a94 67d2f0ca"
    ),
    ("Q3_K", "imatrix"): (
        "360d579d a063ff93 caf71d03 b592489f 360d579d ed214786 4b2ab2fe "
        "fc7ab740 dc6ff742 87f3ed70 b1e7110e 0a296ac4 1061c864 af30bed0"
    ),
    ("Q3_K", "zero_imatrix"): (
        "360d579d 360d579d 360d579d 5d15047e 360d579d 8f11e813 8f11e813 "
        "079c3b2e 2cf2bed5 25ed80b0 ee333b45 59058cdc c1370931 43c0b562"
    ),
    ("Q4_K", "none"): (
        "1a0295f4 165158bb 66290761 b63395f2 22664292 49e28dc6 7878c4e7 "
        "5e70edc5 178b88c2 3d58c3f8 2ade3362 39ae2c30 fb9079d5 d0ea8e1d"
    ),
    ("Q4_K", "imatrix"): (
        "1a0295f4 8f97852c 0ef75843 68c3b124 cc3b2e94 d625856e 6b9a2567 "
        "24257b3e 4a627bc5 13dd24c5 03608c4c 5026a093 8c23d340 0e2835af"
    ),
    ("Q4_K", "zero_imatrix"): (
        "1a0295f4 870282f6 8e7afd77 10834152 cc3b2e94 22664292 22664292 "
        "ee1e0749 ea15456d 838b3ba8 f9d70268 21a16fcc 95f3df38 4091c1db"
    ),
    ("Q5_K", "none"): (
        "2dd23156 c9b3d0a4 a72cc997 3a835d16 1687b213 7b535f02 5b00069b "
        "68ff405f c8cc0e39 8d755534 90440190 136bed2c 2ab2a745 3ed9f6e9"
    ),
    ("Q5_K", "imatrix"): (
        "2dd23156 e2b2c4f5 a8bd11e0 0189e35f 72bae472 8840c50e c2822769 "
        "3c310a80 afcc1912 66974449 89dd2e58 1734fb16 f13af5d9 e914c6f9"
    ),
    ("Q5_K", "zero_imatrix"): (
        "2dd23156 e1737823 3cbb8ce7 48466607 72bae472 1687b213 1687b213 "
        "65d52c3c 8e9bea90 7ca4c259 0726980e 9932f1d2 70f87ad9 dade428a"
    ),
    ("Q6_K", "none"): (
        "16d0edc8 a581ddef 3b6e2aa1 c426e189 16d0edc8 4a4bbb4f ecefd952 "
        "14539122 15626d03 4422beaa 63ed439d 2445ad78 0fd1c459 a80fc429"
    ),
    ("Q6_K", "imatrix"): (
        "16d0edc8 9c745722 bbcec6d8 213509ca 16d0edc8 ab337d78 d145ff19 "
        "02a28d73 8bfb968f 7683474f 4408f6d7 6597c729 f280f8b4 577ea574"
    ),
    ("Q6_K", "zero_imatrix"): (
        "16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8 "
        "16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8 16d0edc8"
    ),
}


def row_digests(q: np.ndarray) -> list[str]:
    return [hashlib.sha256(row.tobytes()).hexdigest()[:8] for row in q]


@pytest.mark.parametrize("imatrix_name", list(IMATRICES))
@pytest.mark.parametrize("type_name", K_TYPES)
def test_edge_rows_match_ggml(type_name, imatrix_name):
    x = edge_rows()
    q = kquants.QUANTIZERS[type_name](x, IMATRICES[imatrix_name])
    assert q.dtype == np.uint8 and q.shape == (x.shape[0], QTYPES[type_name].row_bytes(x.shape[1]))
    expected = GGML_ROW_DIGESTS[(type_name, imatrix_name)].split()
    got = row_digests(q)
    differing = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    assert differing == [], f"{type_name} ({imatrix_name}): rows {differing} differ from ggml's bytes"


@pytest.mark.parametrize("type_name", K_TYPES)
def test_zero_rows_quantize_to_zero_bytes(type_name):
    x = np.zeros((3, 512), F)
    for imatrix in (None, np.ones(512, F)):
        q = kquants.QUANTIZERS[type_name](x, imatrix)
        np.testing.assert_array_equal(q, np.zeros_like(q))
        np.testing.assert_array_equal(kquants.DEQUANTIZERS[type_name](q, 512), x)


@pytest.mark.parametrize("type_name", K_TYPES)
def test_dequantize_matches_gguf(type_name):
    x = np.concatenate([edge_rows(), uniform(4 * 1024, 11).reshape(4, 1024) * F(0.05)])
    qtype = getattr(gguf.GGMLQuantizationType, type_name)
    for imatrix in (None, edge_imatrix()):
        q = kquants.QUANTIZERS[type_name](x, imatrix)
        ours = kquants.DEQUANTIZERS[type_name](q, x.shape[1])
        with np.errstate(invalid="ignore", over="ignore"):  # the fp16-overflow row gives inf and NaN
            theirs = gguf.quants.dequantize(q, qtype).astype(F)
        assert ours.dtype == F and ours.shape == x.shape
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("type_name", K_TYPES)
def test_round_trip_is_close_on_ordinary_rows(type_name):
    """A sanity bound that catches scrambled packing even where the bytes are self-consistent."""
    x = uniform(8 * 512, 12).reshape(8, 512) * F(0.1)
    y = kquants.DEQUANTIZERS[type_name](kquants.QUANTIZERS[type_name](x, None), 512)
    rel_rmse = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    bound = {"Q2_K": 0.35, "Q3_K": 0.2, "Q4_K": 0.1, "Q5_K": 0.05, "Q6_K": 0.025}[type_name]
    assert rel_rmse < bound


@pytest.mark.parametrize("type_name", K_TYPES)
def test_rows_and_chunks_do_not_change_bytes(type_name, monkeypatch):
    """Super-blocks are independent: splitting rows, or chunks that cut rows, changes nothing."""
    x = np.concatenate([uniform(5 * 768, 13).reshape(5, 768), edge_rows(768)[[0, 3, 6, 8]]])
    imatrix = edge_imatrix(768)
    quantize = kquants.QUANTIZERS[type_name]
    whole = {name: quantize(x, m) for name, m in (("none", None), ("imatrix", imatrix))}
    for name, m in (("none", None), ("imatrix", imatrix)):
        one_by_one = np.concatenate([quantize(x[i : i + 1], m) for i in range(x.shape[0])])
        np.testing.assert_array_equal(one_by_one, whole[name])
    # chunks of 2 super-blocks (rows have 3) and searches over a few groups at a time
    monkeypatch.setattr(kquants, "_CHUNK_SUPERBLOCKS", 2)
    monkeypatch.setattr(search, "SEARCH_CHUNK_ELEMENTS", 80)
    for name, m in (("none", None), ("imatrix", imatrix)):
        np.testing.assert_array_equal(quantize(x, m), whole[name])


def test_nearest_int_exact_follows_ggml_outside_rints_range():
    # within |x| <= 2**22 ggml's nearest_int rounds half to even ...
    values = np.array([0.5, 1.5, 2.5, -2.5, 3.49, -0.5, 4194303.0], dtype=F)
    np.testing.assert_array_equal(nearest_int_exact(values), [0, 2, 2, -2, 3, 0, 4194303])
    # ... beyond it returns the low mantissa bits of x + 1.5*2**23: 1e8 + 12582912 = 112582912
    # has mantissa (112582912 - 2**26) / 8 = 5684256, so ggml gives 5684256 - 2**22 = 1489952
    np.testing.assert_array_equal(nearest_int_exact(np.array([1e8], dtype=F)), [1489952])

"""The NumPy backend on extreme inputs, against ggml's own bytes.

Each row is one super-block (256 weights: 8 blocks of 32) built from exact float32 constants:
subnormal ranges (where nmax/(max - min) or 1/d overflows to inf), tiny normal ranges, maxima
around GROUP_MAX_EPS, scales that round to 0 or overflow in fp16, values at and near FLT_MAX,
signed zeros, constant blocks, one-ulp spans, outliers that the imatrix ignores, and inf/NaN.
The expected values are SHA-256 digests (first 16 hex digits) of each quantized row as written by
ggml v0.21.0's C quantizers (`quantize_<type>` from src/ggml-quants.c, built with gcc -O2
-DNDEBUG -ffp-contract=off on x86-64), so they do not depend on this project's code. A digest
covers the whole row of bytes. Each row is quantized on its own (so that one row's extremes do
not switch another row's code path) and all rows together.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gpuquant.backends.numpy import QUANTIZERS
from gpuquant.qtypes import resolve

F32 = np.float32
FLT_MAX = np.finfo(F32).max
QK = 32
N_PER_ROW = 256


def _pattern(salt: int) -> np.ndarray:
    """32 small signed integers in -11..11 (exact in float32), different for each salt."""
    return ((np.arange(QK) * (7 + 2 * salt) + 3 * salt) % 23 - 11).astype(F32)


def signed(exponent: int, salt: int = 0) -> np.ndarray:
    """A block of integers -11..11 times 2**exponent (exact, subnormal included)."""
    return np.ldexp(_pattern(salt), exponent).astype(F32)


def positive(exponent: int, salt: int = 0) -> np.ndarray:
    """A block of integers 1..23 times 2**exponent."""
    return np.ldexp(_pattern(salt) + F32(12), exponent).astype(F32)


def negative(exponent: int, salt: int = 0) -> np.ndarray:
    return -positive(exponent, salt)


def constant(value: float) -> np.ndarray:
    return np.full(QK, value, dtype=F32)


def one_of(background: float, value: float, at: int) -> np.ndarray:
    """A block of `background` with `value` at index `at`."""
    return replaced(constant(background), at, value)


def replaced(block: np.ndarray, at: int, value: float) -> np.ndarray:
    """A copy of `block` with `value` at index `at`."""
    block = block.copy()
    block[at] = value
    return block


def alternating(first: float, second: float) -> np.ndarray:
    block = constant(first)
    block[1::2] = second
    return block


def ulp_span(value: float) -> np.ndarray:
    """A block of `value` and the next float32 away from zero, mixed: a one-ulp range."""
    step = np.nextafter(F32(value), F32(np.copysign(np.inf, value)))
    block = constant(value)
    block[(np.arange(QK) * 5) % 7 < 3] = step
    return block


def zero_weight_outliers(exponent: int, block_index: int) -> np.ndarray:
    """positive(exponent) with -1.0 at every other weight to which the ordinary imatrix gives 0.

    The weighted fits ignore those outliers and move the min up to 0, so that later scale
    candidates put the outliers far beyond nearest_int's plain rounding range.
    """
    block = positive(exponent, block_index)
    first = (-QK * block_index) % 5  # imatrix("ordinary") is 0 where the row index is a multiple of 5
    block[first::10] = -1.0
    return block


TINY = 2.0**-149  # the smallest subnormal
MIN_NORMAL = 2.0**-126

ROWS = {
    # ranges that are subnormal: nmax/(max - min), max/-8 and 1/d overflow to inf
    "subnormal": [
        signed(-149),
        signed(-149, 1),
        positive(-149),
        negative(-149),
        signed(-145),
        signed(-140),
        signed(-135),
        signed(-128),
    ],
    # normal but tiny: 15/range is finite where 31/range is not
    "tiny_normal": [
        signed(-126),
        signed(-127),
        signed(-128),
        signed(-129),
        positive(-126),
        positive(-124),
        signed(-120, 2),
        signed(-110),
    ],
    # maxima around GROUP_MAX_EPS (1e-15): some blocks count as all zero, some do not
    "group_max_eps": [
        signed(-50),
        signed(-51),
        signed(-52),
        signed(-53),
        signed(-54),
        signed(-55),
        positive(-53),
        signed(-60),
    ],
    # block scales that round to 0 or to subnormals in fp16
    "fp16_underflow": [
        signed(-40),
        signed(-36),
        signed(-30),
        signed(-28),
        signed(-26),
        signed(-24),
        signed(-20),
        signed(-16),
    ],
    # block scales that overflow fp16
    "fp16_overflow": [
        signed(12),
        signed(14),
        signed(16),
        signed(17),
        positive(16),
        signed(20),
        signed(30),
        signed(0),
    ],
    # at and near FLT_MAX: sums, squares and max - min overflow to inf
    "near_flt_max": [
        signed(123),
        positive(123),
        negative(123),
        alternating(FLT_MAX, -FLT_MAX),
        signed(120, 3),
        signed(100),
        constant(FLT_MAX),
        constant(-FLT_MAX),
    ],
    "signed_zeros": [
        constant(0.0),
        constant(-0.0),
        alternating(-0.0, 0.0),
        alternating(0.0, -0.0),
        one_of(-0.0, TINY, 5),
        one_of(0.0, -TINY, 17),
        one_of(-0.0, 1.0, 0),
        one_of(0.0, -FLT_MAX, 31),
    ],
    # wildly different sub-block magnitudes in one super-block
    "mixed_magnitudes": [
        signed(-149),
        signed(0),
        signed(-140, 4),
        signed(100),
        signed(-60),
        constant(-0.0),
        signed(-126, 5),
        signed(120),
    ],
    "constant_blocks": [
        constant(TINY),
        constant(-TINY),
        constant(-(2.0**-130)),
        constant(1.5),
        constant(-(2.0**-60)),
        constant(2.0**-60),
        one_of(MIN_NORMAL, MIN_NORMAL + TINY, 9),
        one_of(-MIN_NORMAL, -MIN_NORMAL - TINY, 30),
    ],
    "one_ulp_spans": [
        ulp_span(2.0**-100),
        ulp_span(1.0),
        ulp_span(2.0**60),
        ulp_span(2.0**127),
        ulp_span(-(2.0**-100)),
        ulp_span(-1.0),
        ulp_span(-(2.0**127)),
        ulp_span(MIN_NORMAL),
    ],
    "zero_weight_outliers": [
        zero_weight_outliers(exponent, block_index)
        for block_index, exponent in enumerate([-40, -30, -20, -12, -36, -25, -16, -8])
    ],
    # not finite: ggml's min/max scans skip NaN, and its nearest_int turns inf*0 and NaN into 0
    "nan_among_finite": [
        replaced(signed(0), 5, np.nan),
        signed(0, 1),
        replaced(signed(-20), 17, np.nan),
        signed(-3, 2),
        replaced(positive(-4), 10, np.nan),
        signed(-3, 3),
        replaced(signed(0, 4), 0, np.nan),
        replaced(negative(-6, 5), 31, np.nan),
    ],
    "non_finite": [
        replaced(signed(0), 3, np.inf),
        replaced(signed(0, 1), 0, np.nan),
        replaced(signed(-20), 7, -np.inf),
        replaced(positive(-4), 10, np.nan),
        constant(np.inf),
        constant(np.nan),
        alternating(np.inf, -np.inf),
        replaced(signed(-149), 31, np.nan),
    ],
}


def rows() -> np.ndarray:
    """float32 [len(ROWS), 256], one row per entry of ROWS, in order."""
    return np.stack([np.concatenate(blocks) for blocks in ROWS.values()]).astype(F32)


def imatrix(kind: str) -> np.ndarray | None:
    """None, an ordinary importance matrix with zeros, or one with extreme entries."""
    if kind == "none":
        return None
    i = np.arange(N_PER_ROW)
    if kind == "ordinary":
        return ((i * 7) % 5 * 0.5).astype(F32)  # 0, 0.5, 1, 1.5, 2
    extremes = np.array([TINY, 1.0, 2.0**100, 0.0, 2.0**-60, 3.0, 2.0**126, 0.25], dtype=F32)
    return extremes[(i * 3) % 8]


def digests(q: np.ndarray) -> dict[str, str]:
    """{row name: the first 16 hex digits of the SHA-256 of that row's bytes}."""
    return {name: hashlib.sha256(row.tobytes()).hexdigest()[:16] for name, row in zip(ROWS, q, strict=True)}


INPUT_DIGEST = "e4f4b712f1579be1"

# {(type, imatrix kind): digests of ggml's bytes for each row of ROWS, in order}
EXPECTED = {
    ("Q4_0", "none"): (
        "2bce0501d2e4443b 98ddbbecb52c75bd 00fa5997fed0cd57 40d98c4723ca1c53 71c160a2af6d053d "
        "6ca921193131f601 49eaf746d151f71c 179da5227f0db416 6a96321dc5c94c6c 349dbead6605613d "
        "92e0e22b3a9033bf 8852d9a6714ad8ee c3038b5a741931ce"
    ),
    ("Q4_0", "ordinary"): (
        "81c611f35bff7949 81c611f35bff7949 f050919382c9d030 effa3ee9805f0c98 8e289f825e49b9f2 "
        "f54aab2b520cec8c ca17363081f42497 872bf6b51971f583 f27c78ab359bc8d0 030d85a9fd56a832 "
        "440ce8b54096ab92 6a6026136d963000 961ee46b55da68de"
    ),
    ("Q4_0", "extreme"): (
        "81c611f35bff7949 81c611f35bff7949 9b72c6e8fde2f302 ab9444a337dc6597 54a2ad73e0a8f8b8 "
        "f54aab2b520cec8c ca17363081f42497 872bf6b51971f583 3406e0b04fa0d31c 030d85a9fd56a832 "
        "3368006aacac1239 6a6026136d963000 961ee46b55da68de"
    ),
    ("Q4_1", "none"): (
        "57492a84108593e2 de8bf77364952a2b fc644b7cf2c3f62f dab61ae49a65bacb 9f38bb8318dfcfbb "
        "3f7f11770ce565f6 44c4f247b841a240 87be9398b88fcb76 0c33d76835a81f8a fecd5d61ff43fc98 "
        "5d98ef578c352aee c136071cc054ba21 70e53b979ae2fa80"
    ),
    ("Q4_1", "ordinary"): (
        "57492a84108593e2 928774b6e03d29c5 26eca68aa92d1535 53dd43b6698f45e0 202e0f067c7f9b54 "
        "59d54c776a1c2ced 44c4f247b841a240 87be9398b88fcb76 3d0f978ff519534a 051ac2cc01b3f261 "
        "0bad6ec334e57b97 88d279891a85f76a aa96ffe318bfa86f"
    ),
    ("Q4_1", "extreme"): (
        "57492a84108593e2 928774b6e03d29c5 499dc1895f59298c dab61ae49a65bacb ddf751bb5f86c033 "
        "59d54c776a1c2ced 44c4f247b841a240 87be9398b88fcb76 3d0f978ff519534a 051ac2cc01b3f261 "
        "5d98ef578c352aee 88d279891a85f76a aa96ffe318bfa86f"
    ),
    ("Q5_0", "none"): (
        "f23fc68028f686ee 29cac4c160e35da8 b49b0bde5daba8b4 c1d7c92b86c237c0 0ab6da90a7a7b91c "
        "341a605350543a6b 0f37bcd02f46288d 3c71cd12db33d5f8 4b43f0443acdf936 320dc8826e1087ae "
        "b504ca254315fdfa 40f07ba6038994f7 03e94b9072eea412"
    ),
    ("Q5_0", "ordinary"): (
        "86d2cf5b090f43ee 86d2cf5b090f43ee 2ba8d06b345a7391 f42a087fdda514c5 c0c7e1a34005ff5e "
        "d6e76aaa86c246ec 6deea914f0e58742 5d0a070f96812789 e42ec3ab7cff4c47 97b721316ff723ac "
        "e338fb05a3afedad c422ba71887672b5 972e16ecc361524f"
    ),
    ("Q5_0", "extreme"): (
        "86d2cf5b090f43ee 86d2cf5b090f43ee 6000330393b64960 d381286758124be3 ce8a895f4fc07983 "
        "d6e76aaa86c246ec 6deea914f0e58742 5d0a070f96812789 88de01f11480d13e 97b721316ff723ac "
        "d028b27727f593c2 c422ba71887672b5 972e16ecc361524f"
    ),
    ("Q5_1", "none"): (
        "4e620a5c4db7e1ec 20c5e8f1552b9c80 0ed665761e4a6869 236c04dd0aa67f19 3f25bbe4e1a941b0 "
        "f16a40aaad5b304c 6d7cb1d3608316f8 f887cf5f465d43cd ca6304a8f9b2566e 36ebf3cb605d9e9f "
        "33e98cb466e0d080 1a9bd0f868cf98ee 126d4d622bf70308"
    ),
    ("Q5_1", "ordinary"): (
        "4e620a5c4db7e1ec 71b5f7688ff65f1d 32fb5d84532c204c 4585543a081dfdba 97b594af9cdd0129 "
        "137aa6069108c0d6 6d7cb1d3608316f8 f887cf5f465d43cd 9ddfe89d70d8455f cb375dc3ddf3d899 "
        "f210a8c9da52420b e54fd0ea509e9e05 e6a13e8b0e4b8762"
    ),
    ("Q5_1", "extreme"): (
        "4e620a5c4db7e1ec 71b5f7688ff65f1d a089483a519be979 236c04dd0aa67f19 47c5d95df90089b4 "
        "137aa6069108c0d6 6d7cb1d3608316f8 f887cf5f465d43cd 9ddfe89d70d8455f cb375dc3ddf3d899 "
        "33e98cb466e0d080 e54fd0ea509e9e05 e6a13e8b0e4b8762"
    ),
    ("Q8_0", "none"): (
        "e4d879a3407de578 c42d179b3a5d9df0 44bb3a17785ef7f8 ebda33b025bfde3c c07ceee4413a89fd "
        "454405a0ae9f4bb4 ef3545dc667fe5e0 ed9dabb9d25f927a 45e4d7627a8139fa f503e4611ea8d766 "
        "e65338b8c42ea4b2 80cb2a21a97294ac 673820730795f9c1"
    ),
    ("Q8_0", "ordinary"): (
        "e4d879a3407de578 c42d179b3a5d9df0 44bb3a17785ef7f8 ebda33b025bfde3c c07ceee4413a89fd "
        "454405a0ae9f4bb4 ef3545dc667fe5e0 ed9dabb9d25f927a 45e4d7627a8139fa f503e4611ea8d766 "
        "e65338b8c42ea4b2 80cb2a21a97294ac 673820730795f9c1"
    ),
    ("Q8_0", "extreme"): (
        "e4d879a3407de578 c42d179b3a5d9df0 44bb3a17785ef7f8 ebda33b025bfde3c c07ceee4413a89fd "
        "454405a0ae9f4bb4 ef3545dc667fe5e0 ed9dabb9d25f927a 45e4d7627a8139fa f503e4611ea8d766 "
        "e65338b8c42ea4b2 80cb2a21a97294ac 673820730795f9c1"
    ),
    ("Q2_K", "none"): (
        "2a009eb8b394162a 345e8870f73a629e 46214693b5d216d7 a61094ac613c6459 f6afaf017cbad488 "
        "36e4cb982aca7e55 3917345b1109d822 2d683af5ac7db8d5 fd69ca6e13292d67 54bca89643f506ba "
        "d6acbd9b390a0f1e 665439c8d7514edb c8cdc69b52815903"
    ),
    ("Q2_K", "ordinary"): (
        "2a009eb8b394162a 4cc674112c1891f2 b2f647297ce9f473 58b60e2ee1455805 2e4c74653b30636b "
        "bee33f21079f1ebc 09fb3d719083bf0e 2f5906b78ed5377f 35935d0129027467 46130f0f5b78e1d8 "
        "e55ac482f4c99743 6c2b0959fc28bab0 a24bcb7c165d819b"
    ),
    ("Q2_K", "extreme"): (
        "2a009eb8b394162a 4cc674112c1891f2 8c0f35740180273c 24b45d3f4adf48ef 546518e0cdc6abbd "
        "bee33f21079f1ebc 09fb3d719083bf0e 2f5906b78ed5377f 7752c5bf1a57a2d4 46130f0f5b78e1d8 "
        "0db80ca85d568f39 6c2b0959fc28bab0 a24bcb7c165d819b"
    ),
    ("Q3_K", "none"): (
        "f23391587f1c9fc4 f23391587f1c9fc4 61c6da9c970fa629 114a305f42d60c82 c034783f800f75f0 "
        "3f074a7ecc9e28f7 c0b51b6cc7cecb8f 1edee15ac1882795 3cc851ca195c5816 f49fc3b67d80ecbc "
        "847a49b3abdadf08 b1c7741bd4a63482 4a74bab1bbaa1bd9"
    ),
    ("Q3_K", "ordinary"): (
        "f23391587f1c9fc4 f23391587f1c9fc4 146ded2ac2dc199b bdd3dd1c7add0a3f ffa1d4df226b1295 "
        "3f074a7ecc9e28f7 bd80ae77b55892d2 22555788bd933f09 3cc851ca195c5816 f23391587f1c9fc4 "
        "8c73dc17fc697e2d ac252ae55e31d51a 7df22ec8d52c6222"
    ),
    ("Q3_K", "extreme"): (
        "f23391587f1c9fc4 f23391587f1c9fc4 cf5fc0a0c0ad9f23 5cca95b5ad55ec5e bb20d97251f583a0 "
        "3f074a7ecc9e28f7 bd80ae77b55892d2 22555788bd933f09 f23391587f1c9fc4 f23391587f1c9fc4 "
        "5aa946f88a8715ff ac252ae55e31d51a 7df22ec8d52c6222"
    ),
    ("Q4_K", "none"): (
        "f7d783d2973800b4 9c0ca5395fc26e64 062419f46d6a7de6 bd49e6a939f2c1cd 4ab9c09dafd2f2bb "
        "3fb9331c43d5623c 4e644124c909c1bd 4e644124c909c1bd 184c767d57d0cff7 b433f543cebbdedd "
        "d8dd9c51fffb12e7 e21391efc520a833 761733ae4d63ffe8"
    ),
    ("Q4_K", "ordinary"): (
        "f7d783d2973800b4 4de01496c77667fe fb652cbee360216b 3051d4769272f93d 4ab9c09dafd2f2bb "
        "5df5d324a6584619 0b4baa0b9a8ed48e 052e5b733dcda485 29fe981843aa3bc3 9d570bf8c3378406 "
        "dae0596288f206e3 7c1091b6b73dbf7c 25b9084339523492"
    ),
    ("Q4_K", "extreme"): (
        "f7d783d2973800b4 4de01496c77667fe 17bd814284b4b409 95a810207fcee8a3 579052dd23484dd5 "
        "5df5d324a6584619 0b4baa0b9a8ed48e 052e5b733dcda485 9a77873d62de109f 9d570bf8c3378406 "
        "d4214d404b5536ca 7c1091b6b73dbf7c 25b9084339523492"
    ),
    ("Q5_K", "none"): (
        "86d2cf5b090f43ee 3620b411c1cf8968 9dadea9a0de9fa2e 98b341632ac7932f 2e252772bf2f57e4 "
        "c4900aab87cb1b28 8452fe8ad3d1b859 8452fe8ad3d1b859 53479af9ab8360a4 e11b553382cfbde1 "
        "6341b51a4aaf1d94 5f7499bb7366e0eb 791b150534af486c"
    ),
    ("Q5_K", "ordinary"): (
        "86d2cf5b090f43ee c9e95e1c94ed6088 f57d4e2372f12a08 aadc0a197ad5ea1f 2e252772bf2f57e4 "
        "961a51bcf5487068 044d800c1419bfd1 3cb7a15dda6854ea 6986b87250a2ed4a c5b7e5c3fb82d13d "
        "8d34aea3126424ec 6d61c46487746acf 8e70cf5160ffd334"
    ),
    ("Q5_K", "extreme"): (
        "86d2cf5b090f43ee c9e95e1c94ed6088 e281f762bbe79783 8b54d5c2a5eb8176 08c899cbd4ec3aa9 "
        "961a51bcf5487068 044d800c1419bfd1 3cb7a15dda6854ea f06af9649070530c c5b7e5c3fb82d13d "
        "b83601be2bc678ef 6d61c46487746acf 8e70cf5160ffd334"
    ),
    ("Q6_K", "none"): (
        "9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a 55afe817d5451d24 e527561c57b53cae "
        "9e33403d6e41598a 87353ea7459b67ac 2e4c215359fb4901 1eac4ca0c2912d88 5d4500b4c9588d11 "
        "6aaace31f8c410f7 81fe571b8d92f2e1 ad9ecb7603461228"
    ),
    ("Q6_K", "ordinary"): (
        "9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a aabc053e18633621 c0cc51fd62a394bb "
        "2757a3da1cb5ff61 87353ea7459b67ac 2757a3da1cb5ff61 1eac4ca0c2912d88 da5c1d80d4b27b4e "
        "3b0421de22a416b4 778f5603ea7c4147 9c90f9316495cd76"
    ),
    ("Q6_K", "extreme"): (
        "9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a "
        "9e33403d6e41598a 2757a3da1cb5ff61 9e33403d6e41598a 9e33403d6e41598a 9e33403d6e41598a "
        "3ae666ec96dc81c8 9e33403d6e41598a 9e33403d6e41598a"
    ),
}

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def test_rows_are_the_ones_the_digests_were_made_from():
    # EXPECTED is only meaningful for these exact inputs: a changed row builder must fail here
    data = rows().tobytes() + b"".join(imatrix(kind).tobytes() for kind in ("ordinary", "extreme"))
    assert hashlib.sha256(data).hexdigest()[:16] == INPUT_DIGEST


@pytest.mark.parametrize("imatrix_kind", ["none", "ordinary", "extreme"])
@pytest.mark.parametrize("type_name", TYPES)
def test_extreme_rows_match_ggml(type_name, imatrix_kind):
    x, weights = rows(), imatrix(imatrix_kind)
    expected = dict(zip(ROWS, EXPECTED[(type_name, imatrix_kind)].split(), strict=True))
    together = QUANTIZERS[type_name](x, weights)
    alone = np.concatenate([QUANTIZERS[type_name](x[r : r + 1], weights) for r in range(len(ROWS))])
    for how, q in (("together", together), ("one by one", alone)):
        assert q.dtype == np.uint8 and q.shape == (len(ROWS), resolve(type_name).row_bytes(N_PER_ROW))
        got = digests(q)
        differing = [name for name in ROWS if got[name] != expected[name]]
        assert not differing, f"{type_name} imatrix={imatrix_kind}, rows {how}: {differing} differ from ggml"

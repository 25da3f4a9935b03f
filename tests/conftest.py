"""Shared fixtures: the golden vectors (ggml v0.21.0 reference outputs, copied from shared/golden)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import gpuquant

GOLDEN_DIR = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())
CASES = dict(np.load(GOLDEN_DIR / "cases.npz"))


def golden(type_name: str) -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN_DIR / f"{type_name}.npz"))


def golden_cases(type_name: str):
    """(case, x, imatrix-or-None, expected bytes) for every golden entry of a type."""
    ref = golden(type_name)
    for key, expected in sorted(ref.items()):
        if key.endswith("__dequant"):
            continue
        case = key.removesuffix("__imatrix")
        imatrix = CASES[f"imatrix__{case}"] if key.endswith("__imatrix") else None
        yield key, CASES[case], imatrix, expected


# The test modules whose tests read the kernels' NVRTC builds (test_kernels_nvrtc.build).
_BUILD_MODULES = ("test_kernels_nvrtc", "test_kernel_resources")


def pytest_collection_finish(session):
    """Starts the NVRTC compilations of test_kernels_nvrtc.py and test_kernel_resources.py in worker
    threads as soon as the tests are collected, so that they overlap the tests that run before those
    modules' (see test_kernels_nvrtc's docstring). One compilation serves both: its CUBIN, PTX and
    ptxas report."""
    items = [item for item in session.items if getattr(getattr(item, "module", None), "__name__", "") in
             _BUILD_MODULES]
    module = sys.modules.get("test_kernels_nvrtc")  # imported by either module
    if items and module is not None:
        module.start_background(items, others=len(items) < len(session.items))


def pytest_sessionfinish(session):
    module = sys.modules.get("test_kernels_nvrtc")
    if module is not None:
        module.stop_background()


@pytest.fixture(scope="session")
def manifest():
    return MANIFEST


# ---------------------------------------------------------------- byte comparisons


def assert_same_bytes(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Same dtype, shape and bytes; a failure names `what` and the differing rows."""
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    rows = np.flatnonzero((got != expected).reshape(got.shape[0], -1).any(axis=1))
    assert rows.size == 0, f"{what}: rows {rows.tolist()} differ"


# quantize(x, imatrix_or_None) -> uint8 [rows, row_bytes]; dequantize(q, n_per_row) -> float32 [rows, n_per_row]
QuantizeFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
DequantizeFn = Callable[[np.ndarray, int], np.ndarray]


def assert_golden_quantize(quantize: QuantizeFn, type_name: str) -> list[str]:
    """quantize(x, imatrix_or_None) gives ggml's bytes for every golden case of the type (with and
    without an imatrix, as the vectors hold them). Returns the case keys checked."""
    keys = []
    for key, x, imatrix, expected in golden_cases(type_name):
        assert_same_bytes(quantize(x, imatrix), expected, f"{type_name} {key}")
        keys.append(key)
    assert keys, f"no golden cases for {type_name}"
    return keys


def assert_golden_dequantize(dequantize: DequantizeFn, type_name: str) -> list[str]:
    """dequantize(q, n_per_row) gives ggml's floats, bit for bit, for every golden __dequant array of
    the type. Returns the keys checked."""
    ref = golden(type_name)
    keys = [k for k in ref if k.endswith("__dequant")]
    assert keys, f"no golden dequantized arrays for {type_name}"
    for key in keys:
        case = key.removesuffix("__dequant")
        q = ref[case] if case in ref else ref[f"{case}__imatrix"]
        got = dequantize(q, ref[key].shape[1])
        assert_same_bytes(got.view(np.uint32), ref[key].view(np.uint32), f"{type_name} {key}")
    return keys


def assert_matches_numpy_backend(
    quantize: QuantizeFn, dequantize: DequantizeFn, type_name: str, x: np.ndarray, imatrix: np.ndarray | None,
    what: str,
) -> None:
    """quantize(x, imatrix) gives the numpy backend's bytes (which are ggml's), and dequantize of them
    its floats, bit for bit."""
    with np.errstate(all="ignore"):  # the numpy backend's own float warnings on extreme inputs
        expected = gpuquant.quantize(x, type_name, imatrix=imatrix, backend="numpy")
        expected_back = gpuquant.dequantize(expected, type_name, backend="numpy")
    got = quantize(x, imatrix)
    assert_same_bytes(got, expected, what)
    back = dequantize(got, x.shape[1])
    assert_same_bytes(back.view(np.uint32), expected_back.view(np.uint32), f"{what} dequantize")


# ---------------------------------------------------------------- the host build of the kernels


@pytest.fixture(scope="session")
def host_library():
    """The kernels' block code built for the CPU; skips the test where no C++ compiler is installed.
    Test modules of the host build use it for every test: pytestmark = usefixtures("host_library")."""
    from gpuquant import hostkernels

    if hostkernels.find_compiler() is None:
        pytest.skip("no C++ compiler found (set CXX or install g++)")
    return hostkernels.library()


def host_functions(type_name: str) -> tuple[QuantizeFn, DequantizeFn]:
    """The host build's quantize and dequantize of one type, as the assert_* helpers above call them."""
    from gpuquant import hostkernels

    return (
        lambda x, imatrix: hostkernels.quantize(x, type_name, imatrix),
        lambda q, n_per_row: hostkernels.dequantize(q, type_name, n_per_row),
    )

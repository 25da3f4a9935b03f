"""The native backend (the kernels built for this CPU, threaded) against the NumPy backend, and
`auto`'s choice between the backends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from kernel_inputs import random_imatrix, random_rows

import gpuquant
from gpuquant import hostkernels
from gpuquant.backends import get_backend
from gpuquant.backends.native import NativeBackend
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import QTYPES

pytestmark = pytest.mark.usefixtures("host_library")

NATIVE_TYPES = [QTYPES[n] for n in hostkernels.HOST_TYPES]
RECORD = json.loads((Path(__file__).parent / "data" / "llama_reference.json").read_text())


@pytest.fixture(scope="module")
def backends():
    return NumpyBackend(1), {n: NativeBackend(n) for n in (1, 2, 3)}


@pytest.mark.parametrize("qtype", NATIVE_TYPES, ids=[t.name for t in NATIVE_TYPES])
def test_native_equals_numpy_at_every_thread_count(qtype, backends):
    numpy_be, natives = backends
    x = random_rows(11, rows_per_kind=24, n_per_row=512)  # 216 rows: several tasks per thread
    if qtype.is_float or qtype.ignores_imatrix:
        weights = [None]
    else:
        weights = [random_imatrix(12)] + ([] if qtype.requires_imatrix else [None])
    for w in weights:
        expected = numpy_be.quantize(x, qtype, w)
        for n, be in natives.items():
            got = be.quantize(x, qtype, w)
            assert np.array_equal(got, expected), (qtype.name, n, w is None)
        back = numpy_be.dequantize(expected, qtype, 512)
        for be in natives.values():
            assert np.array_equal(be.dequantize(expected, qtype, 512), back, equal_nan=True)


def test_auto_prefers_native_and_says_why(tmp_path):
    be = get_backend("auto", n_threads=2, needed=[QTYPES["Q4_K"]])
    assert be.name == "native" and be.reason == "the kernels built for this CPU"
    # a type the kernels lack: NumPy, saying which type
    lattice = [t for t in QTYPES.values() if not NativeBackend(1).supports(t)]
    if lattice:
        be = get_backend("auto", needed=[lattice[0]])
        assert be.name == "numpy" and lattice[0].name in be.reason


def test_no_compiler_means_numpy_with_one_line(monkeypatch):
    monkeypatch.setattr(hostkernels, "find_compiler", lambda: None)
    monkeypatch.setattr(hostkernels, "is_built", lambda: False)
    be = get_backend("auto", needed=[QTYPES["Q4_0"]])
    assert be.name == "numpy" and "no C++ compiler" in be.reason and "\n" not in be.reason
    with pytest.raises(ValueError, match="backend 'native' is not available: no C\\+\\+ compiler"):
        get_backend("native")


def test_a_built_library_serves_without_a_compiler(monkeypatch):
    hostkernels.build_library()
    monkeypatch.setattr(hostkernels, "find_compiler", lambda: None)
    assert hostkernels.is_built()
    assert get_backend("auto", needed=[QTYPES["Q4_0"]]).name == "native"


def test_native_file_equals_llama_quantize(tmp_path):
    from gpuquant.synthetic_llama import write_llama_model

    src = write_llama_model("qwen3moe", tmp_path / "m.gguf")
    expected = next(r["expected"] for r in RECORD["runs"] if r["name"] == "qwen3moe/F32: Q4_K_M 2")
    out = tmp_path / "o.gguf"
    summary = gpuquant.quantize_file(src, out, "Q4_K_M", options=RunOptions(backend="native", n_threads=2))
    assert summary.backend == "native"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected["sha256"][0]

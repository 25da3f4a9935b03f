"""gpuquant/qtypes.py is the one place that states a type's facts; every layer reads them there (the
C++ side through kernels/types.h, generated from it)."""

from __future__ import annotations

import pytest

from gpuquant import hostkernels
from gpuquant.qtypes import FAMILIES, IMATRIX_USES, QTYPES, c_header


def test_kernels_types_h_is_generated_from_the_table():
    written = (hostkernels.kernels_dir() / "types.h").read_text()
    assert written == c_header(), "kernels/types.h is stale: run `python -m gpuquant.qtypes`"


def test_every_row_is_consistent():
    for name, t in QTYPES.items():
        assert t.family in FAMILIES and t.imatrix_use in IMATRIX_USES, name
        assert (t.kernel == "") == (name == "F32"), name  # F32 is a copy; every other type has kernels
        assert t.kernel in ("", name.lower()), name
        for rules in ("tts.cpp", "llama.cpp"):
            fallback = t.fallback(rules)
            if fallback is not None:
                f = QTYPES[fallback]
                assert f.block_size == 32 and f.bits_per_weight >= t.bits_per_weight, (name, rules)
        assert t.is_float == (name in ("F32", "F16", "BF16"))


def _places_that_miss(name: str) -> list[str]:
    """Every place besides the table row that must know a type, and which of them do not."""
    from conftest import MANIFEST

    from gpuquant.backends.cupy import launch
    from gpuquant.backends.numpy import DEQUANTIZERS, QUANTIZERS
    from gpuquant.cudasim import build

    t = QTYPES[name]
    kernels = hostkernels.kernels_dir()
    missing = []
    numpy_module = f"gpuquant.backends.numpy.{t.family}"
    for table, what in ((QUANTIZERS, "quantizer"), (DEQUANTIZERS, "dequantizer")):
        fn = table.get(name)
        if fn is None or not getattr(fn, "__module__", "").startswith(numpy_module):
            missing.append(f"a NumPy {what} in {numpy_module}")
    if name not in launch.TYPES:
        missing.append("the CuPy launcher's family table (gpuquant/backends/cupy/launch.py)")
    if not t.kernel:
        return missing  # F32: a copy everywhere
    if name not in MANIFEST["types"]:
        missing.append("ggml's golden vectors (tests/golden, benchmarks/regolden.py)")
    if t.family not in ("floats",) and not (kernels / f"{t.family}.cuh").is_file():
        missing.append(f"its block code in kernels/{t.family}.cuh")
    if not (kernels / f"host_{t.family}.cpp").is_file() or name not in hostkernels.HOST_TYPES:
        missing.append(f"the host build (kernels/host_{t.family}.cpp, hostkernels.HOST_TYPES)")
    if hostkernels.find_compiler() is not None:
        defined = {k.name for k in build.kernel_signatures(f"{t.family}.cu")} \
            if (kernels / f"{t.family}.cu").is_file() else set()
        wanted = {f"gq_quantize_{t.kernel}", f"gq_dequantize_{t.kernel}"}
        if t.imatrix_use != "ignored":
            wanted.add(f"gq_quantize_{t.kernel}_imatrix")
        missing += [f"kernel {k} in kernels/{t.family}.cu" for k in sorted(wanted - defined)]
    return missing


@pytest.mark.parametrize("name", list(QTYPES))
def test_every_layer_knows_every_type(name):
    # Adding a type is its table row, its block code in NumPy and in kernels/, and these places.
    assert _places_that_miss(name) == []


def test_a_type_only_in_the_table_is_reported_missing_everywhere(monkeypatch):
    import gpuquant.qtypes as qtypes

    monkeypatch.setitem(qtypes.QTYPES, "Q3_0", qtypes.QType("Q3_0", 99, 32, 14, "legacy", "used", "q3_0"))
    missing = _places_that_miss("Q3_0")
    assert any("NumPy quantizer" in m for m in missing) and any("golden" in m for m in missing)
    assert any("CuPy launcher" in m for m in missing) and any("host build" in m for m in missing)
    if hostkernels.find_compiler() is not None:
        assert "kernel gq_quantize_q3_0_imatrix in kernels/legacy.cu" in missing

"""One name per family in the kernels: for each family of the type table (gpuquant.qtypes.FAMILIES),
kernels/<family>.cu holds exactly that family's CUDA kernels, named from each type's kernel stem as
the CuPy launcher loads them, kernels/<family>.cuh its per-block code and kernels/host_<family>.cpp
its host build, and the host build's type list is the table's.

The kernels' names and parameters are read from the preprocessed sources, as the CUDA simulator
reads them (needs a C++ compiler's preprocessor, no GPU).
"""

from __future__ import annotations

from functools import cache

import pytest

from gpuquant import hostkernels
from gpuquant.qtypes import FAMILIES, QTYPES, QType

KERNELS = hostkernels.kernels_dir()
KERNEL_TYPES = [t for t in QTYPES.values() if t.kernel]  # all but F32, a plain copy
KERNEL_FAMILIES = [f for f in FAMILIES if any(t.family == f for t in KERNEL_TYPES)]
# Kernels a family's .cu has besides its types' own: the row statistic of the legacy imatrix kernels.
HELPER_KERNELS = {"legacy": {"gq_row_sigma2"}}
# Scalar parameters that are not element, block or row counts: the lattice's shape.
LATTICE_SHAPE = {"dims", "bits"}

needs_compiler = pytest.mark.skipif(hostkernels.find_compiler() is None, reason="no C++ compiler found")


@cache
def _signatures(source: str) -> dict:
    from gpuquant.cudasim import build

    return {k.name: k for k in build.kernel_signatures(source)}


def test_every_family_has_its_files_and_no_other_files_exist():
    assert KERNEL_FAMILIES == list(FAMILIES)
    # besides the families: the streaming engine's row kernels (finite check, error sums), GPU only
    assert {p.name for p in KERNELS.glob("*.cu")} == {f"{f}.cu" for f in FAMILIES} | {"stream.cu"}
    # floats has no .cuh: its conversions are in common.cuh, as every family's fp16 scales use them
    assert {p.name for p in KERNELS.glob("*.cuh")} == {"common.cuh"} | {f"{f}.cuh" for f in FAMILIES if f != "floats"}
    assert {p.name for p in KERNELS.glob("host_*.cpp")} == {"host_api.cpp", "host_error.cpp"} | {
        f"host_{f}.cpp" for f in FAMILIES
    }


def test_host_types_are_the_tables():
    assert hostkernels.HOST_FAMILIES == {f: tuple(t.name for t in KERNEL_TYPES if t.family == f) for f in FAMILIES}
    assert sorted(hostkernels.HOST_TYPES) == sorted(t.name for t in KERNEL_TYPES)


@needs_compiler
@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_file_has_its_types_kernels_only(family):
    names = set(_signatures(f"{family}.cu"))
    expected = set(HELPER_KERNELS.get(family, ()))
    for t in KERNEL_TYPES:
        if t.family == family:
            expected |= {f"gq_quantize_{t.kernel}", f"gq_dequantize_{t.kernel}"}
            if t.imatrix_use != "ignored":
                expected.add(f"gq_quantize_{t.kernel}_imatrix")
    assert names == expected


def _kernel_parameters(t: QType, name: str) -> list:
    return list(_signatures(f"{t.family}.cu")[name].parameters)


@needs_compiler
@pytest.mark.parametrize("t", KERNEL_TYPES, ids=lambda t: t.name)
def test_kernel_parameters(t):
    # quantize (..., const float* x, gq_u8* out, gq_i64 n) and dequantize (..., const gq_u8* q,
    # float* y, gq_i64 n), after the lattice's tables for the lattice types; the imatrix kernel takes
    # the quantize kernel's parameters with the importance matrix (and legacy's sigma2) after x and
    # a per-row count at the end. Every count is 64-bit.
    quantize = _kernel_parameters(t, f"gq_quantize_{t.kernel}")
    dequantize = _kernel_parameters(t, f"gq_dequantize_{t.kernel}")
    assert [(p.name, p.c_type) for p in quantize[-3:-1]] == [("x", "const float*"), ("out", "gq_u8*")]
    assert (dequantize[-3].name, dequantize[-3].c_type, dequantize[-2].c_type) == ("q", "const gq_u8*", "float*")
    lead = quantize[:-3]
    assert dequantize[:-3] == lead and {p.name for p in lead if p.kind == "scalar"} <= LATTICE_SHAPE
    assert all(p.kind == "pointer" and p.const for p in lead if p.kind == "pointer")
    counts = [quantize[-1], dequantize[-1]]
    if t.imatrix_use != "ignored":
        weighted = _kernel_parameters(t, f"gq_quantize_{t.kernel}_imatrix")
        names = [p.name for p in weighted]
        assert names[: len(lead) + 2] == [p.name for p in lead] + ["x", "imatrix"]
        assert [n for n in names if n not in ("imatrix", "sigma2")][:-1] == [p.name for p in quantize]
        assert weighted[len(lead) + 1].c_type == "const float*"
        counts += weighted[-2:]
    assert all(p.kind == "scalar" and p.c_type == "gq_i64" for p in counts), [(p.c_type, p.name) for p in counts]

"""The CuPy backend compiles the kernels with the options that keep them byte-exact, through its own
NVRTC front end (never CuPy's compilers, which append -ftz=true), from a source text that changes
with any kernel file. The compilations themselves, their PTX and SASS are test_kernels_nvrtc.py's
(with the backend's NVRTC and options: what nvcc compiled here before was a different compiler)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from gpuquant import hostkernels
from gpuquant.backends.cupy import compile as cupy_compile

KERNELS = hostkernels.kernels_dir()
CU_FILES = sorted(KERNELS.glob("*.cu"))


def test_there_are_kernel_sources():
    assert [p.name for p in CU_FILES] and (KERNELS / "legacy.cu") in CU_FILES


def test_cupy_options_keep_ieee_float32():
    options = cupy_compile.module_options("sm_90")
    assert "--fmad=false" in options
    assert "-ftz=false" in options
    assert "-prec-div=true" in options and "-prec-sqrt=true" in options
    assert not any("fast" in o for o in options)
    assert f"-I{KERNELS}" in options


def test_cupy_loader_bypasses_rawmodule():
    # CuPy appends -ftz=true to every RawModule/RawKernel compilation after the caller's options,
    # and NVRTC keeps the last -ftz; CuPy's compiler functions are not what the tests compile
    # either. The loader compiles through our NVRTC front end (nvrtc.py), with CuPy's nowhere.
    source = Path(cupy_compile.__file__).read_text()
    tree = ast.parse(source)
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not names & {"RawModule", "RawKernel", "compile_using_nvrtc", "compile_with_cache", "compiler"}
    assert "compile_outputs" in names  # nvrtc.compile_outputs: ours


def test_cupy_source_changes_with_any_header(tmp_path):
    copy = tmp_path / "kernels"
    shutil.copytree(KERNELS, copy)
    before = cupy_compile.module_source("legacy.cu", copy)
    assert before.endswith((KERNELS / "legacy.cu").read_text())
    with open(copy / "common.cuh", "a") as f:
        f.write("\n// edited\n")
    assert cupy_compile.module_source("legacy.cu", copy) != before

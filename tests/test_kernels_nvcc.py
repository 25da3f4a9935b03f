"""The CUDA sources compile with nvcc, without fused multiply-adds or flushed subnormals, and the
CuPy backend compiles them with the options that keep them byte-exact. Needs no GPU; the nvcc
checks skip where nvcc is absent."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuquant import hostkernels
from gpuquant.backends.cupy import compile as cupy_compile

KERNELS = hostkernels.kernels_dir()
CU_FILES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _nvcc(*args: str) -> None:
    result = subprocess.run([NVCC, "-std=c++17", "-I", str(KERNELS), "--fmad=false", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_there_are_kernel_sources():
    assert [p.name for p in CU_FILES] and (KERNELS / "legacy.cu") in CU_FILES


@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_compiles_with_nvcc(source, tmp_path):
    _nvcc("-c", str(source), "-o", str(tmp_path / "kernel.o"))


@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_ptx_has_no_fma_and_no_ftz(source, tmp_path):
    # --fmad=false stops the compiler from contracting; an explicit fmaf() or __fmaf_rn() in the
    # source would still produce fma.rn and differ from ggml's uncontracted arithmetic.
    ptx_path = tmp_path / "kernel.ptx"
    _nvcc("-ptx", "-ftz=false", str(source), "-o", str(ptx_path))
    ptx = ptx_path.read_text()
    assert ".entry" in ptx
    assert not re.search(r"\bfma\.rn\.f32\b", ptx)
    assert ".ftz" not in ptx


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

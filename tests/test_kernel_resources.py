"""Every kernel's registers and local memory, as ptxas reports them for the very compilation that
test_kernels_nvrtc.py checks (compile.REPORT_OPTIONS puts the report in NVRTC's log, and the cache
keeps the log with the binary: an unchanged tree compiles nothing, and the builds that conftest.py
starts in the background serve both modules).

No kernel may spill registers to local memory, on any architecture the README claims: a spilled
search runs out of memory instead of registers. The K-quant quantizers, which give each sub-block a
thread (kquants.cu), stay within 128 registers a thread and use no local memory at all. A change
that starts spilling fails here with ptxas's numbers; `python tests/test_kernel_resources.py` prints
the table of every kernel."""

from __future__ import annotations

import sys

import pytest
from test_kernels_nvrtc import ARCHS, CU_FILES, build, needs_nvrtc

from gpuquant.backends.cupy import compile as cupy_compile
from gpuquant.backends.cupy import nvrtc

KQUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
KQUANT_QUANTIZERS = {f"gq_quantize_{t}{imatrix}" for t in KQUANTS for imatrix in ("", "_imatrix")}
MAX_KQUANT_REGISTERS = 128


def table(resources: dict[str, cupy_compile.Resources]) -> str:
    lines = [f"{'function':<32} {'registers':>9} {'stack':>6} {'spill st':>8} {'spill ld':>8}"]
    for name, r in sorted(resources.items()):
        registers = "-" if r.registers is None else str(r.registers)
        lines.append(f"{name:<32} {registers:>9} {r.stack_frame:>6} {r.spill_stores:>8} {r.spill_loads:>8}")
    return "\n".join(lines)


def resources(source: str, arch: str) -> dict[str, cupy_compile.Resources]:
    """ptxas's report of kernels/<source> for arch, every kernel of the module in it."""
    result = build(source, arch)
    found = cupy_compile.ptxas_resources(result.log)
    kernels = set(cupy_compile.kernel_names(result.ptx))
    assert kernels and kernels <= set(found), f"{source} {arch}: no report for {sorted(kernels - set(found))}"
    return found


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_no_kernel_spills(source, arch):
    found = resources(source, arch)
    spilling = {name: r for name, r in found.items() if r.spill_stores or r.spill_loads}
    assert not spilling, f"{source} {arch}: registers spilled to local memory\n{table(spilling)}"


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", ["kquants.cu"])
def test_kquant_quantizers_fit_in_128_registers(source, arch):
    found = resources(source, arch)
    assert KQUANT_QUANTIZERS <= set(found)
    quantizers = {name: found[name] for name in KQUANT_QUANTIZERS}
    over = {name: r for name, r in quantizers.items() if r.registers is None or r.registers > MAX_KQUANT_REGISTERS}
    assert not over, f"{arch}: over {MAX_KQUANT_REGISTERS} registers a thread\n{table(over)}"
    # One thread per sub-block: its values, weights and search state all in registers.
    local = {name: r for name, r in quantizers.items() if r.stack_frame}
    assert not local, f"{arch}: the K-quant quantizers use local memory\n{table(local)}"


# ---------------------------------------------------------------- the report itself

_HEAVY = """extern "C" __global__ void heavy(const float* x, float* y) {
    float v[48];
#pragma unroll
    for (int i = 0; i < 48; ++i) v[i] = x[i * 7];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 48; ++i) s += v[i] / v[47 - i];
    y[0] = s;
}
__device__ __noinline__ float kept_apart(const float* x, int i) {
    float t[40];
    for (int k = 0; k < 40; ++k) t[k] = x[k];
    return t[i];
}
extern "C" __global__ void light(const float* x, float* y) { y[0] = kept_apart(x, (int)x[0]); }
"""


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_the_report_sees_a_spill(arch):
    # 48 live values held to 16 registers (-maxrregcount) must spill; without the cap they do not.
    options = cupy_compile.module_options(arch)
    capped = cupy_compile.ptxas_resources(nvrtc.compile_outputs(_HEAVY, "heavy.cu", (*options, "-maxrregcount=16")).log)
    assert capped["heavy"].spill_stores > 0 and capped["heavy"].spill_loads > 0, table(capped)
    assert capped["heavy"].registers is not None and capped["heavy"].registers <= 24
    free = cupy_compile.ptxas_resources(nvrtc.compile_outputs(_HEAVY, "heavy.cu", options).log)
    assert free["heavy"].spill_stores == free["heavy"].spill_loads == 0, table(free)
    # A device function that is not inlined is reported too (its spills count; no register count).
    assert any("kept_apart" in name and r.registers is None for name, r in free.items()), table(free)
    assert free["light"].registers is not None


@needs_nvrtc
def test_the_report_is_cached_with_the_binary(tmp_path):
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "heavy.cu").write_text(_HEAVY)
    cache = tmp_path / "cache"
    first = cupy_compile.build_module("heavy.cu", "sm_90", kernels, cache=cache)
    again = cupy_compile.build_module("heavy.cu", "sm_90", kernels, cache=cache)
    assert not first.cached and again.cached
    assert again.binary == first.binary and again.log == first.log
    assert set(cupy_compile.ptxas_resources(again.log)) >= {"heavy", "light"}
    # compile_all reads it from the cache too; the PTX beside the CUBIN has no ptxas lines.
    [listed] = cupy_compile.compile_all("sm_90", directory=kernels, cache=cache)
    assert listed.cached and listed.log == first.log
    ptx = cupy_compile.build_module("heavy.cu", "compute_90", kernels, cache=cache)
    assert ptx.cached and "ptxas" not in ptx.log and ptx.binary.startswith(b"//")


def main() -> None:
    """Prints ptxas's table for every module and architecture (from the cache where it has them)."""
    for arch in ARCHS:
        for source in CU_FILES:
            build_ = cupy_compile.build_module(source, arch)
            print(f"== {source} {arch}")
            print(table(cupy_compile.ptxas_resources(build_.log)))


if __name__ == "__main__":
    sys.exit(main())

"""The CUDA kernels compiled exactly as the CuPy backend compiles them at run time, without a GPU.

Every kernels/*.cu goes through compile.compile_module (our ctypes front end over the libnvrtc of the
PyPI wheel nvidia-cuda-nvrtc; no CuPy, no driver) for each architecture the README claims, and the
result is checked where the bytes are decided, in the machine code: the SASS of each CUBIN (nvdisasm,
wheel nvidia-cuda-nvdisasm) must hold no fused multiply-add outside the compiler's IEEE division and
square-root expansions (tests/sass_check.py says how they are told apart, and the probes below show
that the check fails where it should), and its kernels must be the source's __global__ functions
under their extern "C" names, which CuPy's get_function looks up. The same compilations' ptxas
reports (registers, stack frame, spills per kernel) are test_kernel_resources.py's.

The compilations take 5-16 s each: conftest.py starts them in worker threads as soon as the tests
are collected, so they overlap the tests before these, and compile_module caches them (an
unchanged tree compiles nothing). `python tests/sass_check.py` prints the per-kernel counts.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sass_check

from gpuquant import hostkernels
from gpuquant.backends.cupy import compile as cupy_compile
from gpuquant.backends.cupy import nvrtc

KERNELS = hostkernels.kernels_dir()
CU_FILES = sorted(p.name for p in KERNELS.glob("*.cu"))
# The architectures the README claims (its table of what is tested where; a test keeps them equal).
ARCHS = ("sm_80", "sm_90")
PTX_ARCH = "compute_90"

HAVE_NVRTC = nvrtc.is_available()
NVDISASM = sass_check.find_nvdisasm()
needs_nvrtc = pytest.mark.skipif(not HAVE_NVRTC, reason="libnvrtc not found (pip install nvidia-cuda-nvrtc)")
needs_nvdisasm = pytest.mark.skipif(
    not HAVE_NVRTC or NVDISASM is None, reason="libnvrtc or nvdisasm not found (pip install nvidia-cuda-nvdisasm)"
)


# ---------------------------------------------------------------- the modules, built in the background


@dataclass
class Build:
    cubin: bytes
    ptx: str  # the PTX of the same compilation (compute_XY)
    sass: sass_check.CubinReport | None  # None without nvdisasm
    log: str  # NVRTC's log of the compilation: ptxas's resource report (test_kernel_resources.py)


@dataclass(frozen=True)
class Where:
    """What a build reads from the environment, read once in the main thread: tests that change the
    environment (monkeypatch) must not redirect a build running meanwhile in a worker thread."""

    kernels: Path
    cache: Path
    lib: nvrtc.Library

    @classmethod
    def now(cls) -> Where:
        return cls(KERNELS, hostkernels.cache_dir(), nvrtc.library())


def _build(source: str, arch: str, where: Where) -> Build:
    module = cupy_compile.build_module(source, arch, where.kernels, where.lib, where.cache / "nvrtc")
    cubin = module.binary
    # Cached by the compilation above: NVRTC keeps the compute_XY PTX beside an sm_XY CUBIN.
    ptx_arch = "compute_" + arch.split("_")[1]
    ptx = cupy_compile.compile_module(source, ptx_arch, where.kernels, where.lib, where.cache / "nvrtc").decode()
    sass = sass_check.analyze_cubin(cubin, NVDISASM, where.cache / "nvrtc-sass") if NVDISASM else None
    return Build(cubin, ptx, sass, module.log)


_jobs: dict[tuple[str, str], Future] = {}
_jobs_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def start_background(items=None, others: bool = False) -> None:
    """Starts the builds that the selected tests (items; all when None) need, in worker threads: NVRTC
    runs with the GIL released (ctypes), so they overlap whatever runs meanwhile. others: other
    modules' tests run too, and keep a core (CI has two: the builds are done long before these run)."""
    global _pool
    if not HAVE_NVRTC:
        return
    wanted = set()
    for item in items if items is not None else []:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "source" in params:
            wanted.add((params["source"], params.get("arch", "sm_90")))
    if items is None:
        wanted = {(s, a) for s in CU_FILES for a in ARCHS}
    where = Where.now()
    with _jobs_lock:
        if _pool is None:
            cores = os.cpu_count() or 2
            _pool = ThreadPoolExecutor(max_workers=max(1, cores - 1) if others else cores, thread_name_prefix="nvrtc")
        # The slowest first (kquants.cu and lattice.cu take 15 s, the others 2-7 s).
        for key in sorted(wanted - _jobs.keys(), key=lambda k: (k[0] not in ("kquants.cu", "lattice.cu"), k)):
            _jobs[key] = _pool.submit(_build, *key, where)


def stop_background() -> None:
    """Drops the builds not started yet (an interrupted or narrowed run need not wait for them)."""
    with _jobs_lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)


def build(source: str, arch: str) -> Build:
    with _jobs_lock:
        job = _jobs.get((source, arch))
    if job is None or job.cancelled():
        return _build(source, arch, Where.now())
    return job.result()


# ---------------------------------------------------------------- NVRTC and the options


def test_archs_are_the_readmes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|") and "NVRTC compile" in line]
    assert len(rows) == 1 and set(re.findall(r"\bsm_\d+\b", rows[0])) == set(ARCHS), rows


@needs_nvrtc
def test_nvrtc_compiles_for_the_readme_archs():
    assert nvrtc.version() >= (12, 0)
    supported = nvrtc.supported_archs()
    assert {int(a.split("_")[1]) for a in ARCHS} <= set(supported), supported


def test_module_options_are_the_runtime_contract():
    options = cupy_compile.module_options("sm_90")
    assert options == cupy_compile.NVRTC_OPTIONS + cupy_compile.REPORT_OPTIONS + (f"-I{KERNELS}", "-arch=sm_90")
    assert cupy_compile.REPORT_OPTIONS == ("--ptxas-options=-v",)  # a report only: the code is the same
    assert cupy_compile.NVRTC_OPTIONS == ("--fmad=false", "-ftz=false", "-prec-div=true", "-prec-sqrt=true",
                                          "-std=c++17")
    assert cupy_compile.module_options("compute_80", Path("/k"))[-2:] == ("-I/k", "-arch=compute_80")
    with pytest.raises(ValueError):
        cupy_compile.module_options("90")


@pytest.mark.parametrize("cc, supported, expected", [
    (90, (75, 80, 86, 89, 90, 100, 120), "sm_90"),
    (80, (75, 80, 90), "sm_80"),
    (86, (75, 80, 90), "compute_80"),  # NVRTC without sm_86: PTX the driver compiles
    (121, (75, 80, 90, 100, 120), "compute_120"),  # a GPU newer than NVRTC
])
def test_target_arch(cc, supported, expected):
    assert cupy_compile.target_arch(cc, supported) == expected


def test_target_arch_older_than_nvrtc_supports():
    with pytest.raises(nvrtc.NVRTCError, match="70"):
        cupy_compile.target_arch(70, (75, 80, 90))


def test_nvrtc_candidates(monkeypatch):
    monkeypatch.delenv(nvrtc.LIBRARY_ENV, raising=False)
    found = nvrtc.candidates()
    assert found[-3:] == ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    assert nvrtc.candidates(prefer_major=12)[0].endswith(".so.12")
    monkeypatch.setenv(nvrtc.LIBRARY_ENV, "/nowhere/libnvrtc.so")
    assert nvrtc.candidates() == ["/nowhere/libnvrtc.so"]
    with pytest.raises(nvrtc.NVRTCError, match="/nowhere/libnvrtc.so"):
        nvrtc.library()


_FALLBACK_SCRIPT = """
import ctypes, sys, types
from gpuquant.backends.cupy import nvrtc
real = nvrtc.candidates()[0]  # the wheel's library, found before the wheel paths are hidden below
nvrtc._WHEEL_PATHS = ()
loaded = []
if sys.argv[1] == "with-cupy":  # a CuPy that loads its NVRTC from where only it knows
    nv = types.ModuleType("cupy.cuda.nvrtc")
    nv.getVersion = lambda: loaded.append(ctypes.CDLL(real)) or (13, 0)
    cuda = types.ModuleType("cupy.cuda")
    cuda.nvrtc = nv
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nvrtc": nv})
try:
    print(nvrtc.library().path, len(loaded), nvrtc.version())
except nvrtc.NVRTCError as e:
    print("not found:", str(e).splitlines()[0])
"""


@needs_nvrtc
@pytest.mark.parametrize("cupy", ["with-cupy", "without"])
def test_nvrtc_that_only_cupy_can_find(monkeypatch, cupy):
    # A GPU machine whose NVRTC is neither a wheel nor in the loader's path, but CuPy's: once CuPy
    # has loaded it, the soname resolves to it.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (nvrtc.LIBRARY_ENV, "CUDA_PATH", "CUDA_HOME",
                                                             "LD_LIBRARY_PATH")}
    if any(Path(c).is_file() for c in nvrtc.candidates() if c.startswith("/usr/local/cuda")):
        pytest.skip("this machine has a CUDA toolkit's libnvrtc in /usr/local/cuda")
    done = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, cupy], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    if cupy == "with-cupy":
        assert done.stdout.startswith("libnvrtc.so.13 1 (13,"), done.stdout
    else:
        assert done.stdout.startswith("not found: NVRTC not found"), done.stdout


@needs_nvrtc
def test_nvrtc_error_carries_the_log():
    with pytest.raises(nvrtc.CompileException) as raised:
        nvrtc.compile('extern "C" __global__ void k(float* y) { y[0] = undefined_name; }', "broken.cu",
                      cupy_compile.module_options("sm_90"))
    assert "broken.cu" in str(raised.value) and "undefined_name" in raised.value.log
    # The backend's fault handling knows it by CuPy's class name.
    from gpuquant.backends.cupy.stream import gpu_error

    assert str(gpu_error(raised.value)).startswith("the CUDA kernels did not compile with NVRTC (")


@needs_nvrtc
def test_concurrent_compiles_of_different_programs():
    options = cupy_compile.module_options("sm_90")
    programs = [f'extern "C" __global__ void k{i}(const float* x, float* y) {{\n#pragma unroll\n'
                f"    for (int j = 0; j < {24 + 8 * i}; ++j) y[j] = sqrtf(x[j]) / (x[j + 1] + {i}.5f);\n}}"
                for i in range(4)]
    serial = [nvrtc.compile(p, f"k{i}.cu", options) for i, p in enumerate(programs)]
    spans = []

    def timed(i: int) -> bytes:
        start = time.perf_counter()
        binary = nvrtc.compile(programs[i], f"k{i}.cu", options)
        spans.append((start, time.perf_counter()))
        return binary

    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(timed, range(4)))
    assert parallel == serial
    assert len(set(serial)) == len(programs)
    # They ran at the same time: ctypes let go of the GIL during the compilations.
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


@needs_nvrtc
def test_ptx_beside_the_cubin_is_the_compute_ptx():
    # compile_module caches the PTX of an sm_XY compilation as compute_XY's: the same bytes.
    code = 'extern "C" __global__ void k(const float* x, float* y) { y[0] = sqrtf(x[0]) / x[1]; }'
    for arch in ARCHS:
        number = arch.split("_")[1]
        cubin, ptx, _ = nvrtc.compile_outputs(code, "k.cu", cupy_compile.module_options(arch))
        assert cubin is not None and cubin.startswith(b"\x7fELF")
        assert ptx == nvrtc.compile(code, "k.cu", cupy_compile.module_options(f"compute_{number}"))
        assert f".target sm_{number}" in ptx.decode()


class _StubCupy:
    """The little of CuPy that compile.load_module touches, for a GPU of a given compute capability."""

    def __init__(self, compute_capability: str, driver: int):
        device = type("Device", (), {"id": 0, "compute_capability": compute_capability})
        runtime = type("runtime", (), {"driverGetVersion": staticmethod(lambda: driver)})
        self.loaded: list[bytes] = []
        loaded = self.loaded
        module = type("Module", (), {"load": lambda _self, binary: loaded.append(binary)})
        self.function = type("function", (), {"Module": module})
        self.cuda = type("cuda", (), {"Device": device, "runtime": runtime, "function": self.function})


@needs_nvrtc
@pytest.mark.parametrize("cc, arch", [("90", "sm_90"), ("80", "sm_80"), ("190", None)])
def test_load_module_picks_the_target_and_loads_the_binary(monkeypatch, cc, arch):
    stub = _StubCupy(cc, driver=13000)
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.setitem(sys.modules, "cupy.cuda", stub.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.function", stub.function)
    monkeypatch.setattr(cupy_compile, "_modules", {})
    monkeypatch.setattr(cupy_compile, "warm_all", False)  # this module only: no background builds for compute_121
    source = min(CU_FILES, key=lambda name: (KERNELS / name).stat().st_size)
    cupy_compile.load_module(source)
    assert cupy_compile.load_module(source) is not None and len(stub.loaded) == 1  # loaded once
    if arch is None:  # newer than this NVRTC knows: its newest PTX, for the driver to compile
        arch = f"compute_{max(nvrtc.supported_archs())}"
        assert stub.loaded[0].startswith(b"//")
    assert stub.loaded[0] == cupy_compile.compile_module(source, arch)


# ---------------------------------------------------------------- the cache


def _probe_tree(tmp_path: Path, body: str = "y[0] = x[0] / x[1];") -> Path:
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "probe.cuh").write_text("#pragma once\n")
    (kernels / "probe.cu").write_text(
        f'#include "probe.cuh"\nextern "C" __global__ void probe(const float* x, float* y) {{ {body} }}\n')
    return kernels


def _entry_state(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns  # a compilation writes a new file over the entry


@needs_nvrtc
def test_compile_module_cache(tmp_path):
    cache = tmp_path / "cache"
    kernels = _probe_tree(tmp_path)
    first = cupy_compile.compile_module("probe.cu", "sm_90", kernels, cache=cache)
    assert first.startswith(b"\x7fELF")
    entries = sorted(cache.iterdir())
    assert len(entries) == 2 and all(p.suffix == ".bin" for p in entries)  # the CUBIN, the PTX; no partial files
    entry = next(p for p in entries if p.read_bytes().endswith(first))
    ptx_entry = next(p for p in entries if p != entry)
    data, state, ptx_state = entry.read_bytes(), _entry_state(entry), _entry_state(ptx_entry)

    assert cupy_compile.compile_module("probe.cu", "sm_90", kernels, cache=cache) == first
    ptx = cupy_compile.compile_module("probe.cu", "compute_90", kernels, cache=cache)  # cached beside the CUBIN
    assert b".entry probe" in ptx
    # The same tree elsewhere (a fresh clone) finds the entries: the include path is not in the key.
    moved = shutil.copytree(kernels, tmp_path / "elsewhere")
    assert cupy_compile.compile_module("probe.cu", "sm_90", moved, cache=cache) == first
    assert (_entry_state(entry), _entry_state(ptx_entry)) == (state, ptx_state)  # nothing compiled
    assert len(list(cache.iterdir())) == 2

    # A truncated or corrupt entry is compiled again, and replaced.
    for damaged in (data[: len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b""):
        entry.write_bytes(damaged)
        state = _entry_state(entry)
        assert cupy_compile.compile_module("probe.cu", "sm_90", kernels, cache=cache) == first
        assert _entry_state(entry) != state and entry.read_bytes() == data

    # An edit of any kernel source (here an included header) is a new entry.
    (kernels / "probe.cuh").write_text("#pragma once\n// edited\n")
    cupy_compile.compile_module("probe.cu", "sm_90", kernels, cache=cache)
    assert len(list(cache.iterdir())) == 4


# ---------------------------------------------------------------- the SASS check can fail

_FLAGGED = [  # (expression, compiled with --fmad=true, the opcode flagged)
    ("a * b + c", True, "FFMA"),  # contracted by the compiler
    ("fmaf(a, b, c)", False, "FFMA"),  # explicit, whatever the options
    ("__fmaf_rn(a, b, c)", False, "FFMA"),
    ("fmaf(a / b, c, d)", False, "FFMA"),  # a quotient's later use is not part of its expansion
    ("a / b * c + d", True, "FFMA"),
    ("fmaf(sqrtf(a), 127.0f, 0.5f)", False, "FFMA"),
    ("(float)fma((double)a, (double)b, (double)c)", False, "DFMA"),
    ("fused(a, b, c)", False, "FFMA"),  # in a function the compiler did not inline (which divides)
]
_PASSING = ["a / b", "1.0f / b", "sqrtf(a)", "a / 127.0f", "-31.2f / b", "sqrtf(a + b) / (c * d)", "a * b + c"]
_EXPRESSIONS = sorted({e for e, _, _ in _FLAGGED} | set(_PASSING))


def _probe_source() -> str:
    """One kernel probe_<i> per expression, in one translation unit: one compilation and one
    disassembly serve them all."""
    parts = ["__device__ __noinline__ float fused(float a, float b, float c) { return fmaf(a, b, c) / c; }\n"]
    for i, expression in enumerate(_EXPRESSIONS):
        parts.append(f'extern "C" __global__ void probe_{i}(const float* x, float* y) {{\n'
                     "    const float a = x[0], b = x[1], c = x[2], d = x[3];\n"
                     "    (void)a; (void)b; (void)c; (void)d;\n"
                     f"    y[0] = {expression};\n}}\n")
    return "".join(parts)


@pytest.fixture(scope="module")
def probe_reports(tmp_path_factory):
    """(arch, fmad) -> {probe kernel: report}, the probes compiled (and cached) as compile_module
    compiles the kernels; with fmad, the one option changed to --fmad=true."""
    folder = tmp_path_factory.mktemp("probes")
    (folder / "probes.cu").write_text(_probe_source())
    reports = {}

    def get(arch: str, fmad: bool) -> dict[str, sass_check.FunctionReport]:
        if (arch, fmad) not in reports:
            options = cupy_compile.module_options(arch, folder)
            if fmad:
                options = tuple("--fmad=true" if o == "--fmad=false" else o for o in options)
            code = cupy_compile.module_source("probes.cu", folder)
            cubin = cupy_compile.compile_cached(code, "probes.cu", options, folder)
            reports[arch, fmad] = sass_check.analyze_cubin(cubin, NVDISASM).functions
        return reports[arch, fmad]

    return get


def _probe(reports: dict[str, sass_check.FunctionReport], expression: str) -> sass_check.FunctionReport:
    return reports[f"probe_{_EXPRESSIONS.index(expression)}"]


@needs_nvdisasm
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("expression, fmad, opcode", _FLAGGED)
def test_sass_check_flags_fused_multiply_adds(probe_reports, arch, expression, fmad, opcode):
    report = _probe(probe_reports(arch, fmad), expression)
    assert report.flagged, sass_check.summary({expression: report})
    assert all(f" {opcode}" in text for text in report.flagged), report.flagged


@needs_nvdisasm
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("expression", _PASSING)
def test_sass_check_passes_ieee_expansions(probe_reports, arch, expression):
    report = _probe(probe_reports(arch, False), expression)
    assert not report.flagged, sass_check.summary({expression: report})
    if expression != "a * b + c":  # with --fmad=false: FMUL, FADD
        assert report.sanctioned["refinement"] + report.sanctioned["constant divisor"] > 0  # checked, not absent
        assert report.sanctioned["slow path"] > 0


def test_source_names():
    assert sass_check.source_name("gq_quantize_q4_0") == "gq_quantize_q4_0"
    assert sass_check.source_name("_Z16gq_quantize_q4_0PKfPhx") == "gq_quantize_q4_0"
    assert sass_check.source_name("_ZN2ns6kernelEPf") == "kernel"


@needs_nvdisasm
def test_kernel_names_catch_a_lost_extern_c(tmp_path):
    (tmp_path / "probe.cu").write_text('extern "C" __global__ void kept(float* y) { y[0] = 1.0f; }\n'
                                       "__global__ void lost(float* y) { y[0] = 2.0f; }\n")
    cubin = cupy_compile.compile_module("probe.cu", "sm_90", tmp_path)
    ptx = cupy_compile.compile_module("probe.cu", "compute_90", tmp_path).decode()
    functions = set(sass_check.analyze_cubin(cubin, NVDISASM).functions)
    assert _kernel_names(ptx) == {"kept", "lost"}
    assert functions != _kernel_names(ptx) and "kept" in functions


# ---------------------------------------------------------------- the kernels


def _kernel_names(ptx: str) -> set[str]:
    """The __global__ functions the source defines, by their source names."""
    return {sass_check.source_name(e) for e in sass_check.ptx_entries(ptx)}


@needs_nvdisasm
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_kernels_have_no_fused_multiply_add(source, arch):
    result = build(source, arch).sass
    assert result.target == arch
    assert result.functions and all(r.instructions > 0 for r in result.functions.values())
    flagged = {name: r for name, r in result.functions.items() if r.flagged}
    assert not flagged, f"{source} {arch}: fused multiply-adds of the source\n{sass_check.summary(flagged)}"


@needs_nvdisasm
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CU_FILES)
def test_kernels_are_the_sources_extern_c_globals(source, arch):
    result = build(source, arch)
    expected = _kernel_names(result.ptx)
    assert expected and all(name.startswith("gq_") for name in expected), expected
    # Unmangled: the names that get_kernel(source, name) asks the module for.
    assert set(result.sass.functions) == expected


@needs_nvrtc
@pytest.mark.parametrize("source", CU_FILES)
def test_ptx_has_no_fma_and_no_ftz(source):
    ptx = build(source, "sm_90").ptx
    assert f".target sm_{PTX_ARCH.split('_')[1]}" in ptx and ".entry" in ptx
    assert ptx == cupy_compile.compile_module(source, PTX_ARCH).decode()
    assert not re.search(r"\bfma\.rn\.f32\b", ptx)
    assert not re.search(r"\b(fma|mad)(\.\w+)*\.f(16|32|64)\b", ptx)
    assert ".ftz" not in ptx

"""`gpuquant kernels` and compile.compile_all: every kernels/*.cu compiled at once (in threads) ahead
of a run, and the run-time note on the first cache miss. No GPU: CuPy is a stub where it is needed.

The command's tests use the default cache, which test_kernels_nvrtc.py's sm_90 builds fill: warm,
they take well under a second; alone on a cold cache the first compiles every module (~40 s on two
cores)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuquant.backends.cupy import compile as cupy_compile
from gpuquant.backends.cupy import nvrtc
from gpuquant.cli import main

needs_nvrtc = pytest.mark.skipif(not nvrtc.is_available(), reason="libnvrtc not found (pip install nvidia-cuda-nvrtc)")
MODULES = cupy_compile.module_names()


def table(output: str) -> dict[str, list[str]]:
    """`kernels --compile`'s rows by module: [arch, bytes, seconds, cached]."""
    return {cells[0]: cells[1:] for cells in map(str.split, output.splitlines())
            if len(cells) == 5 and cells[0].endswith(".cu")}


@pytest.fixture(scope="module")
def shared_cache():
    """In a whole-suite run conftest.py has started test_kernels_nvrtc.py's builds of these very
    modules in background threads: wait for its sm_90 ones rather than compile them twice at once."""
    other = sys.modules.get("test_kernels_nvrtc")
    jobs = getattr(other, "_jobs", {})
    wait([job for (_, arch), job in list(jobs.items()) if arch == "sm_90"])


@needs_nvrtc
def test_compile_lists_every_module_and_then_finds_them_cached(shared_cache):
    first = CliRunner().invoke(main, ["kernels", "--compile", "--arch", "sm_90"])
    assert first.exit_code == 0, first.output
    rows = table(first.stdout)
    assert sorted(rows) == MODULES and len(MODULES) == 9  # 8 type families and the row kernels (stream.cu)
    assert all(arch == "sm_90" and int(size) > 0 for arch, size, _, _ in rows.values())
    assert "total: 9 modules for sm_90" in first.stdout

    start = time.perf_counter()
    second = CliRunner().invoke(main, ["kernels", "--compile", "--arch", "sm_90"])
    elapsed = time.perf_counter() - start
    assert second.exit_code == 0, second.output
    rows = table(second.stdout)
    assert sorted(rows) == MODULES and all(cached == "yes" for *_, cached in rows.values())
    assert sum(float(seconds) for _, _, seconds, _ in rows.values()) < 0.5 and elapsed < 2, second.stdout
    assert "(0 compiled, 9 cached)" in second.stdout

    quiet = CliRunner().invoke(main, ["kernels", "--compile", "--arch", "sm_90", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


@needs_nvrtc
def test_list_names_the_kernels_and_the_default_arch(shared_cache, monkeypatch):
    monkeypatch.setattr(cupy_compile, "local_target", lambda: None)  # as on a machine without a GPU
    result = CliRunner().invoke(main, ["kernels", "--list"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "gpuquant: no CUDA GPU found; the kernels are for sm_90 (--arch to choose)\n"
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == MODULES
    kernels = [line.strip() for line in lines if line.startswith("  ")]
    assert kernels and all(name.startswith("gq_") for name in kernels)
    assert "gq_quantize_q4_0" in kernels and "gq_dequantize_q4_0" in kernels

    status = CliRunner().invoke(main, ["kernels", "--arch", "sm_90"])  # neither flag: what the cache holds
    assert status.exit_code == 0 and status.stdout.startswith("NVRTC ")
    assert [line.split()[-1] for line in status.stdout.splitlines()[2:]] == ["yes"] * 9


@pytest.mark.parametrize("env, args, expected", [
    ({nvrtc.LIBRARY_ENV: "/nonexistent"}, ["--compile", "--arch", "sm_90"], "pip install nvidia-cuda-nvrtc"),
    ({}, ["--compile", "--arch", "sm_90,gfx90a"], "not a CUDA architecture: 'gfx90a'"),
    ({}, ["--list", "--arch", "sm_20"], "does not compile for sm_20"),
])
def test_errors_are_one_line(monkeypatch, env, args, expected):
    if not env and not nvrtc.is_available():
        pytest.skip("libnvrtc not found")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["kernels", *args])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("gpuquant: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


# ---------------------------------------------------------------- compile_all and the runtime


def _probe_tree(folder: Path, count: int = 2) -> Path:
    kernels = folder / "kernels"
    kernels.mkdir()
    (kernels / "common.cuh").write_text("#pragma once\n")  # what hostkernels.kernels_dir() looks for
    for i in range(count):
        (kernels / f"probe{i}.cu").write_text(
            f'#include "common.cuh"\nextern "C" __global__ void probe{i}(const float* x, float* y) '
            f"{{ y[0] = x[0] / x[{i + 1}]; }}\n")
    return kernels


@needs_nvrtc
def test_compile_all_compiles_the_modules_concurrently(tmp_path, monkeypatch):
    kernels, cache = _probe_tree(tmp_path), tmp_path / "cache"
    # Both compilations must be inside NVRTC at once to pass the barrier: a serial compile_all
    # breaks it (after the timeout) instead of passing.
    barrier = threading.Barrier(2, timeout=30)
    real = nvrtc.compile_outputs
    threads = set()

    def meeting(*args, **kwargs):
        threads.add(threading.current_thread().name)
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(nvrtc, "compile_outputs", meeting)
    seen: list[cupy_compile.ModuleBuild] = []
    builds = cupy_compile.compile_all("sm_90", progress=seen.append, directory=kernels, cache=cache)
    assert [b.source for b in builds] == ["probe0.cu", "probe1.cu"] and sorted(seen, key=lambda b: b.source) == builds
    assert all(b.binary.startswith(b"\x7fELF") and not b.cached and b.arch == "sm_90" for b in builds)
    assert len(threads) == 2 and threading.current_thread().name not in threads
    for build in builds:
        assert cupy_compile.kernel_names(cupy_compile.compile_module(build.source, "compute_90", kernels,
                                                                     cache=cache)) == [build.source[:-3]]

    # Again: all from the cache, and NVRTC is not called (the barrier would wait for a second call).
    again = cupy_compile.compile_all("sm_90", ["probe1.cu"], directory=kernels, cache=cache)
    assert again[0].cached and again[0].binary == builds[1].binary and len(threads) == 2


class _StubCupy:
    """What compile.load_module touches of CuPy, for an sm_90 GPU."""

    def __init__(self):
        device = type("Device", (), {"id": 0, "compute_capability": "90"})
        runtime = type("runtime", (), {"driverGetVersion": staticmethod(lambda: 13000)})
        self.loaded: list[bytes] = []
        loaded = self.loaded
        module = type("Module", (), {"load": lambda _self, binary: loaded.append(binary)})
        self.function = type("function", (), {"Module": module})
        self.cuda = type("cuda", (), {"Device": device, "runtime": runtime, "function": self.function})


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """load_module on a stub sm_90 GPU, over two probe modules and an empty cache; a fresh process's
    state (no modules loaded, no note printed yet)."""
    stub = _StubCupy()
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.setitem(sys.modules, "cupy.cuda", stub.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.function", stub.function)
    monkeypatch.setenv("GPUQUANT_KERNELS_DIR", str(_probe_tree(tmp_path)))
    monkeypatch.setenv("GPUQUANT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(cupy_compile.QUIET_ENV, raising=False)

    def fresh_process() -> None:
        for name, value in (("_modules", {}), ("_warming", {}), ("_noted", False), ("quiet", False)):
            monkeypatch.setattr(cupy_compile, name, value)

    fresh_process()
    return stub, fresh_process


NOTE = "gpuquant: compiling the CUDA kernels for sm_90 with NVRTC "


@needs_nvrtc
def test_runtime_note_once_on_a_miss_and_all_modules_warmed(runtime, capsys):
    stub, fresh_process = runtime
    cupy_compile.load_module("probe0.cu")
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1 and err.count("\n") == 1 and "gpuquant kernels --compile" in err
    # The first miss started every module's compilation: probe1.cu comes from it, with no note.
    (jobs,) = cupy_compile._warming.values()
    assert sorted(jobs) == ["probe0.cu", "probe1.cu"]
    cupy_compile.load_module("probe1.cu")
    assert jobs["probe1.cu"].result().binary == stub.loaded[1]
    assert capsys.readouterr().err == ""

    # The next process finds both in the cache: no note, and nothing is started.
    fresh_process()
    cupy_compile.load_module("probe1.cu")
    assert capsys.readouterr().err == "" and cupy_compile._warming == {} and stub.loaded[2] == stub.loaded[1]


@needs_nvrtc
@pytest.mark.parametrize("how", ["env", "switch"])
def test_runtime_note_can_be_silenced(runtime, capsys, monkeypatch, how):
    stub, _ = runtime
    if how == "env":
        monkeypatch.setenv(cupy_compile.QUIET_ENV, "1")
    else:
        cupy_compile.quiet = True  # what `gpuquant quantize --quiet` sets
    cupy_compile.load_module("probe0.cu")
    assert capsys.readouterr().err == "" and stub.loaded[0].startswith(b"\x7fELF")

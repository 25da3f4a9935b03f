"""`make gpu-test` rehearsed: benchmarks/gpu_test.py --simulator end to end, the CUDA simulator in place
of the device (parity tests, kernel table, file benchmark against the native backend, one summary),
so that only the hardware can make the real run fail. Also the summary's parsing of its inputs on
made-up results (a failed type, the numpy fallback) that the rehearsal does not produce."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpuquant import hostkernels
from gpuquant.backends.cupy import TYPES as CUPY_TYPES
from gpuquant.qtypes import resolve

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_test.py"
TYPES = [name for name in CUPY_TYPES if name != "F32"]
WEIGHTED = [name for name in TYPES if resolve(name).imatrix_use != "ignored"]


def _load_gpu_test():
    spec = importlib.util.spec_from_file_location("gpu_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_test"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


gpu_test = _load_gpu_test()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[str]]:
    if hostkernels.find_compiler() is None:
        pytest.skip("no C++ compiler: the CUDA simulator builds kernels/*.cu with one")
    data = tmp_path_factory.mktemp("gpu-test-sim")
    env = {k: v for k, v in os.environ.items() if k != "GPUQUANT_CUDA_SIM"}  # the script must switch it on
    # 300 s: a hang fails here instead of stalling CI; the run takes about 20 s on 2 cores
    done = subprocess.run([sys.executable, str(SCRIPT), "--simulator", "--data-dir", str(data)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert "===== gpu-test summary" in out, out[-3000:] + done.stderr[-3000:]
    return done, out[out.rindex("===== gpu-test summary"):].splitlines()


def test_rehearsal_exits_0_on_the_simulator(rehearsal):
    done, summary = rehearsal
    assert done.returncode == 0, "\n".join(summary) + done.stderr[-3000:]
    assert summary[0].startswith("===== gpu-test summary (CUDA simulator)")
    steps = next(line for line in summary if line.startswith("steps"))
    assert re.fullmatch(r"steps +: parity tests ok in \d+ s, kernel benchmark ok in \d+ s, "
                        r"file benchmark ok in \d+ s", steps), steps
    assert not any(line.startswith("not covered") for line in summary)


def test_rehearsal_parity_and_kernels_for_every_type(rehearsal):
    _, summary = rehearsal
    parity = next(line for line in summary if line.startswith("parity tests"))
    m = re.match(r"parity tests : (\d+) passed, 0 failed, 0 errors, 0 skipped", parity)
    assert m and int(m.group(1)) >= 2 * len(TYPES), parity
    assert 'a subset on the simulator: -k "matches_ggml or whole_file"' in parity
    assert len(TYPES) == 27
    for name in TYPES:
        line = next((x for x in summary if re.match(rf"  {name} +parity ", x)), None)
        assert line is not None, f"no line for {name}"
        m = re.match(rf"  {name} +parity (\d+) passed, 0 failed \| kernel GB/s quantize ([\d.]+)"
                     rf"(?:, \+imatrix ([\d.]+))?, dequantize ([\d.]+)$", line)
        assert m, line
        assert int(m.group(1)) >= 2, line  # golden quantize and dequantize
        assert float(m.group(2)) > 0 and float(m.group(4)) > 0, line
        assert (m.group(3) is not None) == (name in WEIGHTED), line
        if name in WEIGHTED:
            assert float(m.group(3)) > 0, line


def test_rehearsal_file_results_identical_to_native(rehearsal):
    _, summary = rehearsal
    files = [line for line in summary if line.startswith("file")]
    assert re.fullmatch(r"file +: cupy against native \(\d+ threads\), same machine", files[0]), files
    for name in ("Q4_0", "Q8_0"):
        line = next((x for x in files if f" {name}: " in x), None)
        assert line is not None, files
        assert re.fullmatch(rf"file +: llama-gqa {name}: cupy [\d.]+ GB/s \([\d.]+ s\), native [\d.]+ GB/s "
                            rf"\([\d.]+ s\); outputs identical", line), line
    assert any("not judged on the simulator" in line for line in summary)


# ---------------------------------------------------------------- the summary on made-up results

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="5">
<testcase classname="tests.test_cupy_backend" name="test_quantize_matches_ggml[Q4_K]"/>
<testcase classname="tests.test_cupy_backend" name="test_random_rows_match_host_build[Q4_K-imatrix]">
<failure message="bytes differ">AssertionError</failure></testcase>
<testcase classname="tests.test_cupy_backend" name="test_random_rows_match_numpy_backend[IQ2_XS-plain-normal]">
<skipped message="requires an importance matrix"/></testcase>
<testcase classname="tests.test_cupy_backend" name="test_whole_file_matches_numpy_backend[Q4_0-8M-slots]"/>
<testcase classname="tests.test_cupy_backend" name="test_empty_input"/>
</testsuite></testsuites>
"""


def test_junit_counts_per_type(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = gpu_test._junit_counts(path)
    assert (counts["passed"], counts["failures"], counts["skipped"]) == (3, 1, 1)
    assert counts["failed_names"] == ["tests.test_cupy_backend::test_random_rows_match_host_build[Q4_K-imatrix]"]
    assert counts["by_type"] == {"Q4_K": {"passed": 1, "failed": 1, "skipped": 0},
                                 "IQ2_XS": {"passed": 0, "failed": 0, "skipped": 1},
                                 "Q4_0": {"passed": 1, "failed": 0, "skipped": 0},
                                 "(no type)": {"passed": 1, "failed": 0, "skipped": 0}}


def test_summary_of_a_failed_type_and_the_numpy_fallback(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = {"files": ["tests/test_cupy_backend.py"], "subset": None, **gpu_test._junit_counts(path)}
    tests = (gpu_test.Step("parity tests", returncode=1), counts)
    kernel_step = gpu_test.Step("kernel benchmark", returncode=0,
                                output=["NVIDIA H100 80GB HBM3: 16384 x 8192 float32 (512 MiB), mean of up to 10 runs"])
    kernels = (kernel_step, [{"type": "Q4_K", "imatrix": False, "gb_per_s": 812.0, "dequant_gb_per_s": 1500.0},
                             {"type": "Q4_K", "imatrix": True, "gb_per_s": 640.0, "dequant_gb_per_s": 1500.0}])
    file = (gpu_test.Step("file benchmark", returncode=0), {
        "device": "NVIDIA H100 80GB HBM3", "compared_with": "numpy", "cpu_threads": 16,
        "cpu_note": "no C++ compiler to build the native backend (install g++, or set CXX)",
        "results": [{"model": "parler-tts-mini", "type": "Q4_0", "backend": "cupy", "seconds": 0.6, "gb_per_s": 3.45},
                    {"model": "parler-tts-mini", "type": "Q4_0", "backend": "numpy", "seconds": 9.0,
                     "gb_per_s": 0.23}],
        "identical": {"parler-tts-mini Q4_0": True}})
    lines = gpu_test.summary(tests, kernels, file, ["Q4_0", "Q4_K", "IQ2_XS"])
    assert lines[0] == "===== gpu-test summary (NVIDIA H100 80GB HBM3)"
    assert "  Q4_K      parity 1 passed, 1 failed | kernel GB/s quantize 812, +imatrix 640, dequantize 1500" in lines
    assert "  Q4_0      parity 1 passed, 0 failed | kernel GB/s NO RESULTS" in lines
    assert "  IQ2_XS    parity 0 passed, 0 failed, 1 skipped | kernel GB/s NO RESULTS" in lines
    assert "  (no type) parity 1 passed, 0 failed" in lines
    assert ("file         : the native backend is not available (no C++ compiler to build the native backend "
            "(install g++, or set CXX)): compared with numpy, 16 threads") in lines
    assert ("file         : parler-tts-mini Q4_0: cupy 3.450 GB/s (0.60 s), numpy 0.230 GB/s (9.00 s); "
            "outputs identical") in lines
    assert "target       : Q4_0 file to file >= 3.0 GB/s: met (3.45)" in lines
    assert "not covered  : Q4_0, IQ2_XS (no passed parity test or no kernel timing)" in lines
    assert gpu_test.missing_types(["Q4_0", "Q4_K", "IQ2_XS"], tests, kernels) == ["Q4_0", "IQ2_XS"]

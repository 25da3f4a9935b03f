"""`make gpu-test`: everything that needs a CUDA device, in one go, with one summary at the end.

1. pytest -q on tests/test_cupy*.py: the kernels against ggml's golden bytes, the host build and the
   numpy backend, and the streaming file pipeline against the numpy backend;
2. benchmarks/gpu_kernels.py: kernel-only GB/s per type, data already on the device;
3. benchmarks/gpu_file.py: file-to-file GB/s, cupy next to the native backend (all cores; numpy
   where native cannot be built here), outputs compared byte for byte, on a full-size synthetic
   parler-tts-mini (2.07 GB); with --dia also dia (6.7 GB, written once into the data folder).

    PYTHONPATH=. python3 benchmarks/gpu_test.py [--dia] [--data-dir build/bench] [--skip-file] [--simulator]

The summary gives parity per type (passed and failed parity tests for each ggml type), kernel GB/s
per type and the file results. With --simulator (`make gpu-test-sim`, and a CI test) the same
script runs end to end on the CUDA simulator (GPUQUANT_CUDA_SIM=1 for every step: the same
launchers and kernels/*.cu built for the CPU), with no GPU and no CuPy: a subset of the parity
tests that still covers every type, a small kernel table and a small model, so that only the
hardware can make the real run fail. Its speeds are the simulator's, and say so.

Each step runs in its own process under a time limit, so a failure (or a broken CUDA context) in
one does not hide the others. Needs CuPy (not with --simulator, which needs a C++ compiler), NumPy,
click, gguf (a wheel on PYTHONPATH will do) and pytest; nothing is downloaded. Exit status 0 only
when every test passed, every step finished and every type has parity results and kernel timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One device command may run 10 minutes: the steps' limits add up to 8 minutes, and TOTAL_SECONDS
# caps them together (a step gets what is left), so the summary always prints in time.
TESTS_SECONDS = 180
KERNELS_SECONDS = 120
FILE_SECONDS = 180
FILE_SECONDS_WITH_DIA = 420  # --dia needs a longer command than one device call allows
TOTAL_SECONDS = 510
RESULT_PREFIX = "GPU_FILE_RESULT "  # benchmarks/gpu_file.py's last line
TARGET_Q4_0_GB_PER_S = 3.0
SIMULATOR_ENV = "GPUQUANT_CUDA_SIM"  # gpuquant.backends.cupy.device.SIMULATOR_ENV (not imported before the checks)
SIMULATOR_DEVICE = "CUDA simulator"

# The simulator runs some MB/s and CI has 2 cores: the rehearsal keeps every step and every type,
# at sizes that take seconds. The parity subset still touches all 27 types (golden quantize and
# dequantize for each) and the whole-file pipeline.
SIMULATOR_TESTS_FILTER = "matches_ggml or whole_file"
SIMULATOR_KERNEL_ARGS = ("--rows", "16", "--cols", "4096", "--repeats", "1", "--seconds", "0")
SIMULATOR_FILE_ARGS = ("--models", "llama-gqa", "--rows-scale", "2")  # 4 MB of llama.cpp layout

# a row of gpu_kernels.py's table: type, imatrix, quantize ms, GB/s in, dequantize ms, GB/s out
# (GB/s are whole numbers on a GPU, decimals on the simulator)
_KERNEL_ROW = re.compile(r"^(\w+)\s+(yes|no)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$")
_KERNEL_HEADER = re.compile(r"^(.+): \d+ x \d+ float32 ")  # gpu_kernels.py's first line names the device


@dataclass
class Step:
    name: str
    returncode: int | None = None  # None: did not run
    seconds: float = 0.0
    timed_out: bool = False
    output: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def status(self) -> str:
        if self.returncode is None:
            return "not run"
        if self.timed_out:
            return f"TIMED OUT after {self.seconds:.0f} s"
        return f"{'ok' if self.returncode == 0 else f'FAILED (exit {self.returncode})'} in {self.seconds:.0f} s"


_deadline = time.monotonic() + TOTAL_SECONDS


def _run(step: Step, command: list[str], timeout: float) -> Step:
    """Run a command with its output shown as it comes and kept; kill it past `timeout` seconds (or
    past what is left of TOTAL_SECONDS)."""
    timeout = max(1.0, min(timeout, _deadline - time.monotonic()))
    print(f"\n===== {step.name} (at most {timeout:.0f} s): {' '.join(command)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # carries GPUQUANT_CUDA_SIM under --simulator
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)

    def kill() -> None:
        step.timed_out = True
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            step.output.append(line.rstrip("\n"))
        step.returncode = process.wait()
    finally:
        timer.cancel()
        step.seconds = time.perf_counter() - start
    return step


# ---------------------------------------------------------------- the three steps


def run_tests(junit: Path, simulator: bool) -> tuple[Step, dict]:
    step = Step("parity tests")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cupy*.py"))
    subset = ["-k", SIMULATOR_TESTS_FILTER] if simulator else []
    counts: dict = {"files": files, "subset": SIMULATOR_TESTS_FILTER if simulator else None}
    if importlib.util.find_spec("pytest") is None:
        step.output.append("pytest is not installed here: the parity tests did not run")
        print(step.output[-1])
        return step, counts
    # its own basetemp: pytest's numbered temp folders (and their clean-up) stay those of whoever runs this
    _run(step, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                f"--basetemp={junit.parent / 'pytest'}", *subset, *files], TESTS_SECONDS)
    if junit.is_file():
        counts.update(_junit_counts(junit))
    return step, counts


def _case_types(name: str, type_names: set[str]) -> list[str]:
    """The ggml types a test id names among its parameters: test_x[Q4_K-imatrix] -> [Q4_K]."""
    params = re.search(r"\[(.*)\]$", name)
    return [p for p in params.group(1).split("-") if p in type_names] if params else []


def _junit_counts(path: Path) -> dict:
    from gpuquant.qtypes import QTYPES

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    failed, by_type = [], {}
    for case in (c for s in suites for c in s.iter("testcase")):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
            failed.append(f"{case.get('classname', '')}::{name}")
        else:
            outcome = "skipped" if case.find("skipped") is not None else "passed"
        for type_name in _case_types(name, set(QTYPES)) or ["(no type)"]:
            by_type.setdefault(type_name, {"passed": 0, "failed": 0, "skipped": 0})[outcome] += 1
    total["failed_names"] = failed
    total["by_type"] = by_type
    return total


def run_kernels(simulator: bool) -> tuple[Step, list[dict]]:
    extra = list(SIMULATOR_KERNEL_ARGS) if simulator else []
    step = _run(Step("kernel benchmark"), [sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py"), *extra],
                KERNELS_SECONDS)
    rows = []
    for line in step.output:
        m = _KERNEL_ROW.match(line.strip())
        if m:
            rows.append({"type": m.group(1), "imatrix": m.group(2) == "yes", "gb_per_s": float(m.group(4)),
                         "dequant_gb_per_s": float(m.group(6))})
    return step, rows


def run_file(data_dir: Path, with_dia: bool, simulator: bool) -> tuple[Step, dict]:
    models = "parler-tts-mini,dia" if with_dia else "parler-tts-mini"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_file.py"), "--data-dir", str(data_dir)]
    command += list(SIMULATOR_FILE_ARGS) if simulator else ["--models", models]
    step = _run(Step("file benchmark"), command, FILE_SECONDS_WITH_DIA if with_dia else FILE_SECONDS)
    for line in reversed(step.output):
        if line.startswith(RESULT_PREFIX):
            return step, json.loads(line[len(RESULT_PREFIX):])
    return step, {}


# ---------------------------------------------------------------- the summary


def _speed(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.4f}"


def _device(kernels: tuple[Step, list[dict]] | None, file: tuple[Step, dict] | None, simulator: bool) -> str:
    if file is not None and file[1].get("device"):
        return file[1]["device"]
    for line in kernels[0].output if kernels is not None else []:
        m = _KERNEL_HEADER.match(line)
        if m:
            return m.group(1)
    return SIMULATOR_DEVICE if simulator else "unknown device"


def missing_types(expected: list[str], tests: tuple[Step, dict], kernels: tuple[Step, list[dict]] | None) -> \
        list[str]:
    """Types without a passed parity test or without a kernel timing: the run did not cover them."""
    by_type = tests[1].get("by_type", {})
    timed = {r["type"] for r in kernels[1]} if kernels is not None else set(expected)
    return [t for t in expected if by_type.get(t, {}).get("passed", 0) == 0 or t not in timed]


def summary(tests: tuple[Step, dict], kernels: tuple[Step, list[dict]] | None,
            file: tuple[Step, dict] | None, expected: list[str], simulator: bool = False) -> list[str]:
    device = _device(kernels, file, simulator)
    note = ", a rehearsal: the speeds are the simulator's, not a GPU's" if simulator else ""
    lines = [f"===== gpu-test summary ({device}){note}"]
    step, counts = tests
    subset = f"; a subset on the simulator: -k \"{counts['subset']}\"" if counts.get("subset") else ""
    if "tests" in counts:
        lines.append(f"parity tests : {counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
                     f"errors, {counts['skipped']} skipped ({', '.join(counts['files'])}{subset})")
        lines += [f"  FAILED {name}" for name in counts["failed_names"][:20]]
    else:
        lines.append(f"parity tests : no results ({step.output[-1] if step.output else step.status()})")

    # One line per type: its parity tests, then its kernel GB/s (quantize, with an imatrix, dequantize).
    by_type = counts.get("by_type", {})
    rows = kernels[1] if kernels is not None else []
    lines.append(f"per type     : parity tests, then kernel GB/s of float32 in (quantize, +imatrix) and out "
                 f"(dequantize){' on the simulator' if simulator else ''}")
    for name in expected + sorted(set(by_type) - set(expected)):
        c = by_type.get(name)
        if c is None:
            parity = "parity NO RESULTS"
        else:
            skipped = f", {c['skipped']} skipped" if c["skipped"] else ""
            parity = f"parity {c['passed']} passed, {c['failed']} failed{skipped}"
        speeds = ""
        if kernels is not None and name in expected:
            plain = next((r for r in rows if r["type"] == name and not r["imatrix"]), None)
            weighted = next((r for r in rows if r["type"] == name and r["imatrix"]), None)
            speeds = " | kernel GB/s NO RESULTS" if plain is None else (
                f" | kernel GB/s quantize {_speed(plain['gb_per_s'])}"
                + (f", +imatrix {_speed(weighted['gb_per_s'])}" if weighted else "")
                + f", dequantize {_speed(plain['dequant_gb_per_s'])}")
        lines.append(f"  {name:<9} {parity}{speeds}")

    if file is not None:
        info = file[1]
        results, identical = info.get("results", []), info.get("identical", {})
        cpu = info.get("compared_with")
        if info.get("cpu_note"):
            lines.append(f"file         : the native backend is not available ({info['cpu_note']}): compared with "
                         f"numpy, {info.get('cpu_threads')} threads")
        elif cpu:
            lines.append(f"file         : cupy against {cpu} ({info.get('cpu_threads')} threads), same machine")
        by_run = {(r["model"], r["type"], r["backend"]): r for r in results}
        for model, name in dict.fromkeys((r["model"], r["type"]) for r in results):
            parts = [f"{b} {r['gb_per_s']:.3f} GB/s ({r['seconds']:.2f} s)" for (m, t, b), r in by_run.items()
                     if (m, t) == (model, name)]
            same = identical.get(f"{model} {name}")
            verdict = "" if same is None else ("; outputs identical" if same else "; outputs DIFFER")
            lines.append(f"file         : {model} {name}: {', '.join(parts)}{verdict}")
        if not results:
            lines.append(f"file         : no results ({file[0].status()})")
        q4 = [r["gb_per_s"] for r in results if r["type"] == "Q4_0" and r["backend"] == "cupy"]
        if q4 and simulator:
            lines.append(f"target       : Q4_0 file to file >= {TARGET_Q4_0_GB_PER_S} GB/s: not judged on the "
                         "simulator")
        elif q4:
            met = "met" if min(q4) >= TARGET_Q4_0_GB_PER_S else "NOT met"
            lines.append(f"target       : Q4_0 file to file >= {TARGET_Q4_0_GB_PER_S} GB/s: {met} "
                         f"({', '.join(f'{v:.2f}' for v in q4)})")
    missing = missing_types(expected, tests, kernels)
    if missing:
        lines.append(f"not covered  : {', '.join(missing)} (no passed parity test or no kernel timing)")
    steps = [tests[0]] + [s[0] for s in (kernels, file) if s is not None]
    lines.append("steps        : " + ", ".join(f"{s.name} {s.status()}" for s in steps))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dia", action="store_true", help="also the 6.7 GB dia model in the file benchmark")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--skip-file", action="store_true", help="no file benchmark")
    parser.add_argument("--simulator", action="store_true",
                        help="rehearse on the CUDA simulator (no GPU, no CuPy; small sizes)")
    args = parser.parse_args(argv)
    if args.simulator:
        os.environ[SIMULATOR_ENV] = "1"  # this process and, through _run's environment, every step

    needed = ("numpy", "click", "gguf") if args.simulator else ("numpy", "click", "gguf", "cupy")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu-test: cannot run without {', '.join(missing)} (gguf may come as a wheel on PYTHONPATH)")
        return 1
    from gpuquant import hostkernels
    from gpuquant.backends import cupy_available
    from gpuquant.backends.cupy import TYPES as CUPY_TYPES

    if args.simulator and hostkernels.find_compiler() is None:
        print("gpu-test --simulator: the CUDA simulator builds kernels/*.cu with a C++ compiler; none was found")
        return 1
    if not cupy_available():
        print("gpu-test: cupy sees no CUDA device; nothing was run")
        return 1
    expected = [name for name in CUPY_TYPES if name != "F32"]  # F32 is a copy: neither timed nor golden

    global _deadline
    extra = FILE_SECONDS_WITH_DIA - FILE_SECONDS if args.dia else 0
    _deadline = time.monotonic() + TOTAL_SECONDS + extra
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tests = run_tests(Path(tmp) / "junit.xml", args.simulator)
    kernels = run_kernels(args.simulator)
    file = None if args.skip_file else run_file(args.data_dir, args.dia, args.simulator)
    lines = summary(tests, kernels, file, expected, args.simulator)
    lines.append(f"total        : {time.perf_counter() - start:.0f} s")
    print("\n" + "\n".join(lines))

    counts = tests[1]
    tests_ok = tests[0].ok and counts.get("failures", 1) == 0 and counts.get("errors", 1) == 0
    steps_ok = kernels[0].ok and (file is None or (file[0].ok and bool(file[1].get("results"))))
    return 0 if tests_ok and steps_ok and not missing_types(expected, tests, kernels) else 1


if __name__ == "__main__":
    sys.exit(main())

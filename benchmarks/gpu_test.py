"""`make gpu-test`: everything that needs a CUDA device, in one go, with one summary at the end.

1. pytest -q on tests/test_cupy*.py: the kernels against ggml's golden bytes, the host build and the
   numpy backend, and the streaming file pipeline against the numpy backend;
2. benchmarks/gpu_kernels.py: kernel-only GB/s per type, data already on the device;
3. benchmarks/gpu_file.py: file-to-file GB/s, cupy next to numpy, on a full-size synthetic
   parler-tts-mini (2.07 GB); with --dia also dia (6.7 GB, written once into the data folder).

    PYTHONPATH=. python3 benchmarks/gpu_test.py [--dia] [--data-dir build/bench] [--skip-file]

Each step runs in its own process under a time limit, so a failure (or a broken CUDA context) in
one does not hide the others. Needs CuPy, NumPy, click, gguf (a wheel on PYTHONPATH will do) and
pytest; nothing is downloaded. Exit status 0 only when every test passed and every step finished.
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
# a row of gpu_kernels.py's table: type, imatrix, quantize ms, GB/s in, dequantize ms, GB/s out
_KERNEL_ROW = re.compile(r"^(\w+)\s+(yes|no)\s+([\d.]+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s*$")


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
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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


def run_tests(junit: Path) -> tuple[Step, dict]:
    step = Step("parity tests")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cupy*.py"))
    if importlib.util.find_spec("pytest") is None:
        step.output.append("pytest is not installed here: the parity tests did not run")
        print(step.output[-1])
        return step, {"files": files}
    _run(step, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files],
         TESTS_SECONDS)
    counts = {"files": files}
    if junit.is_file():
        counts.update(_junit_counts(junit))
    return step, counts


def _junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname', '')}::{case.get('name', '')}" for s in suites for case in s.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["failed_names"] = failed
    return total


def run_kernels() -> tuple[Step, list[dict]]:
    step = _run(Step("kernel benchmark"), [sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py")],
                KERNELS_SECONDS)
    rows = []
    for line in step.output:
        m = _KERNEL_ROW.match(line.strip())
        if m:
            rows.append({"type": m.group(1), "imatrix": m.group(2) == "yes", "gb_per_s": int(m.group(4)),
                         "dequant_gb_per_s": int(m.group(6))})
    return step, rows


def run_file(data_dir: Path, with_dia: bool) -> tuple[Step, dict]:
    models = "parler-tts-mini,dia" if with_dia else "parler-tts-mini"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_file.py"), "--models", models,
               "--data-dir", str(data_dir)]
    step = _run(Step("file benchmark"), command, FILE_SECONDS_WITH_DIA if with_dia else FILE_SECONDS)
    for line in reversed(step.output):
        if line.startswith(RESULT_PREFIX):
            return step, json.loads(line[len(RESULT_PREFIX):])
    return step, {}


# ---------------------------------------------------------------- the summary


def summary(tests: tuple[Step, dict], kernels: tuple[Step, list[dict]] | None,
            file: tuple[Step, dict] | None) -> list[str]:
    device = (file[1].get("device") if file else None) or "unknown device"
    lines = [f"===== gpu-test summary ({device})"]
    step, counts = tests
    if "tests" in counts:
        lines.append(f"parity tests : {counts['passed']} passed, {counts['failures']} failed, {counts['errors']} "
                     f"errors, {counts['skipped']} skipped ({', '.join(counts['files'])})")
        lines += [f"  FAILED {name}" for name in counts["failed_names"][:20]]
    else:
        lines.append(f"parity tests : no results ({step.output[-1] if step.output else step.status()})")
    if kernels is not None:
        parts = [f"{r['type']}{' +imatrix' if r['imatrix'] else ''} {r['gb_per_s']}" for r in kernels[1]]
        lines.append("kernels GB/s : " + (" | ".join(parts) if parts else "no results"))
    if file is not None:
        results, identical = file[1].get("results", []), file[1].get("identical", {})
        by_run = {(r["model"], r["type"], r["backend"]): r for r in results}
        for model, name in dict.fromkeys((r["model"], r["type"]) for r in results):
            parts = [f"{b} {r['gb_per_s']:.2f} GB/s ({r['seconds']:.2f} s)" for (m, t, b), r in by_run.items()
                     if (m, t) == (model, name)]
            same = identical.get(f"{model} {name}")
            verdict = "" if same is None else ("; outputs identical" if same else "; outputs DIFFER")
            lines.append(f"file         : {model} {name}: {', '.join(parts)}{verdict}")
        q4 = [r["gb_per_s"] for r in results if r["type"] == "Q4_0" and r["backend"] == "cupy"]
        if q4:
            met = "met" if min(q4) >= TARGET_Q4_0_GB_PER_S else "NOT met"
            lines.append(f"target       : Q4_0 file to file >= {TARGET_Q4_0_GB_PER_S} GB/s: {met} "
                         f"({', '.join(f'{v:.2f}' for v in q4)})")
    steps = [tests[0]] + [s[0] for s in (kernels, file) if s is not None]
    lines.append("steps        : " + ", ".join(f"{s.name} {s.status()}" for s in steps))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dia", action="store_true", help="also the 6.7 GB dia model in the file benchmark")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--skip-file", action="store_true", help="no file benchmark")
    args = parser.parse_args(argv)

    missing = [m for m in ("numpy", "click", "gguf", "cupy") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu-test: cannot run without {', '.join(missing)} (gguf may come as a wheel on PYTHONPATH)")
        return 1
    from gpuquant.backends import cupy_available

    if not cupy_available():
        print("gpu-test: cupy sees no CUDA device; nothing was run")
        return 1

    global _deadline
    extra = FILE_SECONDS_WITH_DIA - FILE_SECONDS if args.dia else 0
    _deadline = time.monotonic() + TOTAL_SECONDS + extra
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tests = run_tests(Path(tmp) / "junit.xml")
    kernels = run_kernels()
    file = None if args.skip_file else run_file(args.data_dir, args.dia)
    lines = summary(tests, kernels, file)
    lines.append(f"total        : {time.perf_counter() - start:.0f} s")
    print("\n" + "\n".join(lines))

    counts = tests[1]
    tests_ok = tests[0].ok and counts.get("failures", 1) == 0 and counts.get("errors", 1) == 0
    steps_ok = kernels[0].ok and (file is None or file[0].ok)
    return 0 if tests_ok and steps_ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Rewrite tests/golden/<TYPE>.npz from a ggml build (benchmarks/ggml_harness.c linked to its ggml-base).

    python benchmarks/regolden.py HARNESS TYPE [TYPE ...]

Used where llama.cpp's ggml and ggml v0.21.0 disagree: IQ1_M, whose split search llama.cpp
3aa0ce9 computes from prefix sums (different roundings, some different choices). The inputs are
the golden cases (tests/golden/cases.npz); every array of the type is recomputed: quantized with
and without the case's imatrix, and the `__dequant` arrays.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def run(harness: str, args: list[str]) -> bytes:
    return subprocess.run([harness, *args], capture_output=True, check=True).stdout


def main() -> None:
    harness, names = sys.argv[1], sys.argv[2:]
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    cases = dict(np.load(GOLDEN / "cases.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        x_path, w_path, q_path = (str(Path(tmp) / n) for n in ("x.f32", "w.f32", "q.bin"))
        for name in names:
            info = manifest["types"][name]
            old = dict(np.load(GOLDEN / f"{name}.npz"))
            new = {}
            for key, expected in old.items():
                if key.endswith("__dequant"):
                    continue
                case = key.removesuffix("__imatrix")
                x = cases[case]
                x.astype(np.float32).tofile(x_path)
                args = [str(info["id"]), str(x.shape[0]), str(x.shape[1]), x_path]
                if key.endswith("__imatrix"):
                    cases[f"imatrix__{case}"].astype(np.float32).tofile(w_path)
                    args.append(w_path)
                new[key] = np.frombuffer(run(harness, args), np.uint8).reshape(expected.shape).copy()
            for key, expected in old.items():
                if not key.endswith("__dequant"):
                    continue
                case = key.removesuffix("__dequant")
                source = new.get(case, new.get(f"{case}__imatrix"))
                source.tofile(q_path)
                raw = run(harness, ["-d", str(info["id"]), str(expected.shape[0]), str(expected.shape[1]), q_path])
                new[key] = np.frombuffer(raw, np.float32).reshape(expected.shape).copy()
            changed = sum(not np.array_equal(old[k], new[k], equal_nan=True) for k in old)
            np.savez_compressed(GOLDEN / f"{name}.npz", **new)
            print(f"{name}: {changed} of {len(old)} arrays changed")


if __name__ == "__main__":
    main()

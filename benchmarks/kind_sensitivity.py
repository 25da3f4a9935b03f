"""How much each kind of matrix's error costs in llama.cpp's KL divergence: size_search.KIND_WEIGHTS.

    .venv/bin/python benchmarks/kind_sensitivity.py [--data-dir build/quality] [--chunks 10]

Needs what benchmarks/target_quality.py made in the data dir (the dithered gemma-3-270m and the
calibration text) and the tools `make reference` builds. Against the calibration text (the quality
table is measured on the evaluation text, so the weights are not fitted to it):
1. the KLD base of the dithered F32 model;
2. a reference file, every weight at Q8_0 (`--pure Q8_0`), and one file per kind with that kind's
   tensors at Q4_0 (`--tensor-type KIND=q4_0`), each with gpuquant's per-tensor error report;
3. each kind's sensitivity: the rise in mean KLD over the rise in the kind's summed relative squared
   error (the relative objective's terms), printed raw and scaled so that the layers' kinds average 1.
Files go to DATA_DIR/sensitivity and are reused when present.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "token_embd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "build" / "quality")
    ap.add_argument("--tools", type=Path, default=ROOT / "build" / "reference")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model = args.data_dir / "gemma-3-270m-f32-dithered.gguf"
    calib = args.data_dir / "texts" / "calib.txt"
    perplexity = args.tools / "llama-perplexity"
    for need in (model, calib, perplexity):
        if not need.exists():
            print(f"missing {need}: run benchmarks/target_quality.py (and make reference) first", file=sys.stderr)
            return 2
    work = args.data_dir / "sensitivity"
    work.mkdir(parents=True, exist_ok=True)
    base = work / "calib-base.kld"
    threads = ["-t", str(args.threads)]
    if not base.exists():
        with open(work / "base.log", "w") as log:
            subprocess.run([str(perplexity), "-m", str(model), "-f", str(calib), "-c", "512", "--chunks",
                            str(args.chunks), "--kl-divergence-base", str(base), *threads],
                           stdout=log, stderr=subprocess.STDOUT, check=True)

    def measured(name: str, options: list[str]) -> tuple[float, dict]:
        out, report, log_path = work / f"{name}.gguf", work / f"{name}.json", work / f"{name}.kld.log"
        if not out.exists() or not report.exists():
            subprocess.run([sys.executable, "-m", "gpuquant", "quantize", "--backend", "native", "-q", *options,
                            "--report", str(report), str(model), str(out), "Q8_0", str(args.threads)], check=True)
        if not log_path.exists():
            with open(log_path, "w") as log:
                subprocess.run([str(perplexity), "-m", str(out), "--kl-divergence-base", str(base),
                                "--kl-divergence", *threads], stdout=log, stderr=subprocess.STDOUT, check=True)
        kld = float(re.search(r"Mean\s+KLD:\s+([-\d.]+)", log_path.read_text()).group(1))
        tensors = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
        return kld, tensors

    ref_kld, ref = measured("ref", ["--pure"])
    raw = {}
    print(f"{'kind':<12} {'tensors':>7} {'d sq err':>9} {'d KLD':>8} {'KLD per unit':>12}")
    for kind in KINDS:
        kld, tensors = measured(f"q4-{kind}", ["--pure", "--tensor-type", f"{kind}=q4_0"])
        moved = [n for n, t in tensors.items() if kind in n and t["output_type"] == "Q4_0"]
        d_err = sum(tensors[n]["error"]["rel_rmse"] ** 2 - ref[n]["error"]["rel_rmse"] ** 2 for n in moved)
        raw[kind] = (kld - ref_kld) / d_err
        print(f"{kind:<12} {len(moved):>7} {d_err:>9.5f} {kld - ref_kld:>8.5f} {raw[kind]:>12.4f}")
    layers = [k for k in KINDS if k != "token_embd"]
    scale = sum(raw[k] for k in layers) / len(layers)
    print("scaled (layers' kinds average 1):",
          ", ".join(f"{k} {raw[k] / scale:.2f}" for k in KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

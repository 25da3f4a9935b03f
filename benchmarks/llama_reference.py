"""Record (or freshly compare) llama-quantize's choices on the synthetic llama.cpp models.

    python benchmarks/llama_reference.py record  --llama-quantize PATH   # writes tests/data/llama_reference.json
    python benchmarks/llama_reference.py compare --llama-quantize PATH   # runs both tools now, compares files

For every run (a model, a mix, llama-quantize's options) the record holds the per-tensor types
llama-quantize chose (from its output file) and the sha256 of each output file. The tests replay
every run through gpuquant's CLI and compare both; they never need the reference binary.
`make reference` builds llama-quantize from llama-cpp-python 0.3.36's vendor/llama.cpp (llama.cpp
3aa0ce9) and runs `compare`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))

from llama_runs import build_inputs, describe_outputs, output_files  # noqa: E402

from gpuquant.synthetic_llama import LAYOUTS  # noqa: E402

RECORD = ROOT / "tests" / "data" / "llama_reference.json"
REFERENCE = "llama.cpp 3aa0ce9 (llama-cpp-python 0.3.36 vendor/llama.cpp), llama-quantize"

MIXES = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q3_K_M", "Q3_K_L", "Q2_K", "Q6_K", "IQ4_XS", "Q4_0", "Q8_0"]
IMATRIX_MIXES = ["IQ2_XXS", "IQ2_M", "IQ3_XXS", "IQ3_M", "Q2_K_S"]
# every other mix llama-quantize lists, on the GQA llama model
OTHER_MIXES = ["Q1_0", "Q2_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "IQ3_S", "IQ3_XS",
               "IQ4_NL", "Q5_K_S", "F16", "BF16", "F32", "COPY", "Q3_K_S", "Q3_K", "Q4_K", "Q5_K", "15"]
OTHER_IMATRIX_MIXES = ["IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "Q4_0", "Q4_K_M", "IQ4_XS"]


def runs() -> list[dict]:
    """Every recorded run: model file, extra inputs, llama-quantize's arguments (with placeholders)."""
    out = []

    def add(model: str, args: list[str], *, imatrix: bool = False, source: str = "F32", files: int = 1,
            name: str | None = None) -> None:
        label = name or " ".join(a for a in args if not a.startswith("{"))
        out.append({"model": model, "source": source, "imatrix": imatrix, "args": args, "files": files,
                    "name": f"{model}/{source}: {label}" + (" +imatrix" if imatrix else "")})

    for model in LAYOUTS:
        if model == "llama-70b-depth":
            continue
        arch = LAYOUTS[model].arch
        for mix in MIXES:
            add(model, ["{model}", "{out}", mix, "2"])
        for mix in IMATRIX_MIXES:
            add(model, ["--imatrix", "{imatrix}", "{model}", "{out}", mix, "2"], imatrix=True)
        add(model, ["--pure", "{model}", "{out}", "Q4_K_M", "2"])
        add(model, ["--leave-output-tensor", "{model}", "{out}", "Q4_K_M", "2"])
        # llama-quantize aborts on a token embedding type whose block does not divide the rows (gemma3's 640)
        embd_type = "q5_0" if model == "gemma3" else "q4_k"
        add(model, ["--output-tensor-type", "q8_0", "--token-embedding-type", embd_type, "{model}", "{out}",
                    "Q4_K_M", "2"])
        add(model, ["--tensor-type", "attn_v=q8_0", "--tensor-type", "ffn_.*=q5_k",
                    "--tensor-type", "blk\\.1\\.=iq4_nl", "{model}", "{out}", "Q4_K_M", "2"])
        add(model, ["--prune-layers", "1,3", "{model}", "{out}", "Q4_K_M", "2"])
        add(model, ["--override-kv", "general.name=str:renamed", "--override-kv", f"{arch}.context_length=int:-4096",
                    "--override-kv", "custom.flag=bool:true", "--override-kv", "custom.scale=float:0.5",
                    "{model}", "{out}", "Q4_K_M", "2"])
    for mix in OTHER_MIXES:
        add("llama-gqa", ["{model}", "{out}", mix, "2"])
    for mix in OTHER_IMATRIX_MIXES:
        add("llama-gqa", ["--imatrix", "{imatrix}", "{model}", "{out}", mix, "2"], imatrix=True)
    add("llama-gqa", ["--imatrix", "{imatrix}", "--include-weights", "ffn_", "{model}", "{out}", "Q4_K_M", "2"],
        imatrix=True)
    add("llama-gqa", ["--imatrix", "{imatrix}", "--exclude-weights", "attn", "{model}", "{out}", "IQ4_XS", "2"],
        imatrix=True)
    add("llama-gqa", ["--imatrix", "{imatrix}", "--exclude-weights", "blk", "{model}", "{out}", "Q4_K_M", "2"],
        imatrix=True)
    add("llama-gqa", ["--tensor-type-file", "{tt_file}", "{model}", "{out}", "Q4_K_M", "2"])
    add("llama-gqa", ["--pure", "--tensor-type", "attn_q=nvfp4", "{model}", "{out}", "Q8_0", "2"])
    for mix in ("Q4_K_M", "Q3_K_M", "Q2_K", "Q4_K_S", "IQ4_XS"):
        add("llama-70b-depth", ["{model}", "{out}", mix, "2"])
    add("gpt-oss", ["{model}", "{out}", "MXFP4_MOE", "2"])
    add("qwen3moe", ["{model}", "{out}", "MXFP4_MOE", "2"])
    for source in ("F16", "BF16"):
        add("llama-gqa", ["{model}", "{out}", "Q4_K_M", "2"], source=source)
        add("llama-gqa", ["{model}", "{out}", "F16", "2"], source=source)
    add("llama-gqa", ["--allow-requantize", "{model}", "{out}", "Q4_K_M", "2"], source="Q8_0")
    add("llama-gqa", ["--allow-requantize", "{model}", "{out}", "Q6_K", "2"], source="Q4_K_M")
    add("llama-gqa", ["{model}", "{out}", "Q4_K_M", "2"], source="split")
    add("llama-gqa", ["--keep-split", "{model}", "{out}", "Q4_K_M", "2"], source="split", files=3)
    # --target-size: gpuquant chooses and writes its --recipe-out; llama-quantize is given that recipe
    # (TARGET_OPTIONS replaced by --tensor-type-file) with the same type, imatrix and other options
    for model, budget, extra, mix, imatrix in (
        ("llama-gqa", "300000B", [], "Q4_K_M", False),
        ("llama-gqa", "228128B", ["--output-tensor-type", "q8_0", "--tensor-type", "attn_v=q6_k"], "IQ2_M", True),
        ("qwen3moe", "600KiB", [], "Q3_K_M", True),
        ("gemma3", "700000B", [], "Q4_K_M", False),
        ("gemma3", "0.6MB", [], "IQ3_XXS", True),
    ):
        args = (["--imatrix", "{imatrix}"] if imatrix else []) + extra
        add(model, [*args, "--target-size", budget, "--recipe-out", "{recipe}", "{model}", "{out}", mix, "2"],
            imatrix=imatrix)
    return out


def reference_args(run: dict, values: dict[str, str]) -> list[str]:
    """llama-quantize's arguments for a run: a --target-size run's recipe in place of its choice."""
    args = [values.get(a, a) for a in run["args"]]
    if "--target-size" in args:
        i = args.index("--target-size")
        del args[i : i + 2]
        i = args.index("--recipe-out")
        args[i] = "--tensor-type-file"
    return args


def run_reference(binary: str, run: dict, work: Path, out: Path) -> dict:
    values = {**build_inputs(work, run), "{out}": out.name}
    recipe = None
    if "--target-size" in run["args"]:  # the choice is gpuquant's: its recipe, made now
        made = run_gpuquant(run, work, out)
        if "error" in made:
            raise RuntimeError(f"{run['name']}: gpuquant failed: {made['error']}")
        recipe = hashlib.sha256((work / values["{recipe}"]).read_bytes()).hexdigest()
        for f in output_files(out, run["files"]):
            f.unlink()
    args = reference_args(run, values)
    p = subprocess.run([binary, *args], capture_output=True, text=True, cwd=work)
    if p.returncode != 0:
        failed = [line for line in (p.stdout + p.stderr).splitlines() if "failed to quantize:" in line]
        if failed:  # a refusal: its reason, which gpuquant's error must give too
            return {"error": failed[0].split("failed to quantize:", 1)[1].strip()}
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        raise RuntimeError(f"{run['name']}: llama-quantize failed: {' | '.join(tail)}")
    described = describe_outputs(output_files(out, run["files"]))
    return described if recipe is None else {**described, "recipe_sha256": recipe}


def run_gpuquant(run: dict, work: Path, out: Path) -> dict:
    values = {**build_inputs(work, run), "{out}": out.name}
    args = [values.get(a, a) for a in run["args"]]
    p = subprocess.run([sys.executable, "-m", "gpuquant", "quantize", "--backend", "numpy", "-q", *args],
                       capture_output=True, text=True, cwd=work)
    if p.returncode != 0:
        return {"error": p.stderr.strip()}
    described = describe_outputs(output_files(out, run["files"]))
    if "--target-size" in run["args"]:
        described["recipe_sha256"] = hashlib.sha256((work / values["{recipe}"]).read_bytes()).hexdigest()
    return described


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("--llama-quantize", required=True)
    ap.add_argument("--only", help="substring of the run names to keep")
    a = ap.parse_args()
    binary = str(Path(a.llama_quantize).resolve())  # the runs work in their own folder
    selected = [r for r in runs() if not a.only or a.only in r["name"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.mode == "record":
            models = {}
            if a.only and RECORD.exists():  # the other runs stay as recorded
                kept = json.loads(RECORD.read_text())
                models = dict(kept["inputs"])
                old = {r["name"]: r for r in kept["runs"]}
                chosen = {r["name"] for r in selected}
                selected = [r if r["name"] in chosen else old[r["name"]] for r in runs()
                            if r["name"] in chosen or r["name"] in old]
            for r in selected:
                if "expected" in r:
                    continue
                r["expected"] = run_reference(binary, r, work, work / "out.gguf")
                src = work / build_inputs(work, r)["{model}"]
                models[f"{r['model']}/{r['source']}"] = hashlib.sha256(src.read_bytes()).hexdigest()
                print(f"recorded {r['name']}", file=sys.stderr)
            RECORD.parent.mkdir(parents=True, exist_ok=True)
            lines = ",\n".join(json.dumps(r, separators=(",", ":")) for r in selected)
            header = json.dumps({"reference": REFERENCE, "inputs": models})[:-1]
            RECORD.write_text(f'{header}, "runs": [\n{lines}\n]}}\n')
            print(f"wrote {RECORD} ({len(selected)} runs)", file=sys.stderr)
            return
        failures = 0
        start = time.perf_counter()
        for r in selected:
            try:
                ref = run_reference(binary, r, work, work / "ref.gguf")
            except RuntimeError as e:
                print(f"REFERENCE FAILED  {e}")
                failures += 1
                continue
            ours = run_gpuquant(r, work, work / "ours.gguf")
            if "error" in ref:  # the same refusal: a one-line error that gives llama-quantize's reason
                same = "error" in ours and ref["error"].rstrip("!.").lower() in ours["error"].lower()
            else:
                same = ours == ref
            failures += not same
            print(f"{'same' if same else 'DIFFERENT'}  {r['name']}" + ("" if same else f"  {ours.get('error', '')}"))
        print(f"{len(selected) - failures} passed, {failures} failed ({time.perf_counter() - start:.0f} s)")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

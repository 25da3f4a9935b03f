"""What a GGUF file holds (`gpuquant inspect`) and how two files differ (`gpuquant diff`).

Both read headers through SourceModel (split models included, long arrays left encoded) and touch
tensor data only to compare bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .gguf_io import RawArray, SourceModel
from .mixes import CANONICAL

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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def diff_files(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> dict:
    """Whether two GGUF files are identical; if not, their key, tensor-set and per-tensor differences."""
    a, b = Path(a), Path(b)
    identical = os.path.getsize(a) == os.path.getsize(b) and _sha256(a) == _sha256(b)
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
        for name in [t.name for t in ma.tensors if t.name in tb]:
            x, y = ta[name], tb[name]
            same_type = x.qtype.name == y.qtype.name and x.shape_gguf == y.shape_gguf
            same_bytes = same_type and np.array_equal(np.asarray(ma.raw_bytes(x)), np.asarray(mb.raw_bytes(y)))
            tensors.append({"name": name, "a": x.qtype.name, "b": y.qtype.name, "same_type": same_type,
                            "same_bytes": bool(same_bytes)})
        return {
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
        lines.append(f"  {t['name']}: {t['a']} -> {t['b']}" + ("" if not t["same_type"] else " (bytes differ)"))
    return "\n".join(lines)

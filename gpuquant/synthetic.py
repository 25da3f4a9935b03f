"""Synthetic GGUF models with the exact layout of TTS.cpp's files (from the specs in data/specs).

Real weights cannot be downloaded everywhere; these files have the real tensor names, shapes,
order and metadata, filled with random normal values of a plausible scale. Layers can be cut
for fast tests (the layer-count key is updated to match).
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from .gguf_io import AtomicGGUFWriter, MetadataEntry, PlannedTensor
from .qtypes import QTYPES

SPEC_NAMES = ("parler-tts-mini", "parler-tts-large", "dia", "kokoro", "orpheus")

# (layer-count key, pattern of the per-layer tensor names) for each stack that can be cut
_LAYER_STACKS = {
    "parler-tts": [("parler-tts.decoder.num_hidden_layers", r"^decoder\.layers\.(\d+)\.")],
    "dia": [
        ("dia.encoder.layers", r"^dia\.encoder\.layers\.(\d+)\."),
        ("dia.decoder.layers", r"^dia\.decoder\.layers\.(\d+)\."),
    ],
    "orpheus": [("orpheus.layers", r"^orpheus\.layers\.(\d+)\.")],
    "kokoro": [],
}


def load_spec(name: str) -> dict:
    if name not in SPEC_NAMES:
        raise ValueError(f"unknown model spec {name!r}: choose one of {', '.join(SPEC_NAMES)}")
    text = resources.files("gpuquant").joinpath(f"data/specs/{name}.json").read_text()
    return json.loads(text)


def _metadata_value(key: str, spec_value: dict):
    vtype_name = spec_value["type"]
    value = spec_value["value"]
    if vtype_name.startswith("ARRAY["):
        sub = GGUFValueType[vtype_name[6:-1]]
        if isinstance(value, dict):  # a placeholder for a huge tokenizer array
            n = int(value["length"])
            value = [f"<tok{i}>" for i in range(n)] if sub == GGUFValueType.STRING else [0.0] * n
        return MetadataEntry(key, value, GGUFValueType.ARRAY, sub)
    return MetadataEntry(key, value, GGUFValueType[vtype_name], None)


def _kept_tensors(spec: dict, max_layers: int | None) -> tuple[list[dict], dict[str, int]]:
    """The spec's tensors with layers >= max_layers dropped, and the new layer counts."""
    stacks = _LAYER_STACKS.get(spec["architecture"], [])
    if max_layers is None or not stacks:
        return spec["tensors"], {}
    compiled = [(key, re.compile(pat)) for key, pat in stacks]
    kept, new_counts = [], {}
    for key, _ in compiled:
        old = int(spec["metadata"][key]["value"])
        new_counts[key] = min(old, max_layers)
    for t in spec["tensors"]:
        drop = False
        for _, rx in compiled:
            m = rx.match(t["name"])
            if m and int(m.group(1)) >= max_layers:
                drop = True
        if not drop:
            kept.append(t)
    return kept, new_counts


def write_synthetic_model(
    spec_name: str,
    path: str | os.PathLike[str],
    *,
    max_layers: int | None = None,
    dtype: str = "F32",
    seed: int = 0,
    drop_architecture: bool = False,
) -> Path:
    """Write a synthetic GGUF of a TTS.cpp layout, streaming (one tensor in memory at a time)."""
    spec = load_spec(spec_name)
    qtype = QTYPES[dtype]
    if qtype.name not in ("F32", "F16", "BF16"):
        raise ValueError("synthetic models are written as F32, F16 or BF16")
    tensors, new_counts = _kept_tensors(spec, max_layers)
    metadata = []
    for key, v in spec["metadata"].items():
        if drop_architecture and key == "general.architecture":
            continue
        entry = _metadata_value(key, v)
        if key in new_counts:
            entry.value = new_counts[key]
        metadata.append(entry)
    planned = []
    for t in tensors:
        shape = tuple(reversed(t["shape_gguf"]))
        n = int(np.prod(shape, dtype=np.int64))
        planned.append(PlannedTensor(t["name"], shape, qtype, n * qtype.type_size))
    rng = np.random.default_rng(seed)
    with AtomicGGUFWriter(path, metadata, planned, alignment=int(spec.get("alignment", 32))) as writer:
        for t, p in zip(tensors, planned, strict=True):
            values = rng.standard_normal(p.shape_numpy, dtype=np.float32)
            values *= np.float32(t.get("std", 0.02))
            values += np.float32(t.get("mean", 0.0))
            writer.write(encode_floats(values, dtype))
        writer.commit()
    return Path(path)


def encode_floats(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as F32, F16 or BF16 tensor data (BF16 rounded to nearest even; finite values)."""
    if dtype == "F32":
        return values
    if dtype == "F16":
        return values.astype(np.float16)
    bits = values.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)

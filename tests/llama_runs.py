"""The inputs of the recorded llama-quantize runs (tests/data/llama_reference.json), built the same
way by the recorder (benchmarks/llama_reference.py) and by the tests that replay the runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np

from gpuquant.gguf_header import tensor_infos
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import BY_ID
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix

TENSOR_TYPE_FILE = "attn_k=q6_k\nffn_down=q8_0  output=q4_0\n"


def build_inputs(work: Path, run: dict) -> dict[str, str]:
    """The files a run needs, written once per work directory; returns the placeholder values
    (file names in `work`)."""
    model, source = run["model"], run["source"]
    f32 = work / f"{model}-F32.gguf"
    if not f32.exists():
        write_llama_model(model, f32)
    if source in ("F32",):
        path = f32
    elif source in ("F16", "BF16"):
        path = work / f"{model}-{source}.gguf"
        if not path.exists():
            write_llama_model(model, path, dtype=source)
    elif source == "split":
        path = work / f"{model}-split-00001-of-00003.gguf"
        if not path.exists():
            write_split(f32, work / f"{model}-split", 3)
    else:  # a quantized source: gpuquant's own output of that mix (equal to llama-quantize's, as tested)
        path = work / f"{model}-{source}.gguf"
        if not path.exists():
            from gpuquant.mixes import find_mix
            from gpuquant.pipeline import quantize_file

            quantize_file(f32, path, find_mix(source), options=RunOptions(backend="numpy"))
    imatrix = work / f"{model}.imatrix.gguf"
    if run["imatrix"] and not imatrix.exists():
        write_synthetic_imatrix(f32, imatrix)
    tt_file = work / "tensor-types.txt"
    tt_file.write_text(TENSOR_TYPE_FILE)
    # names relative to `work`, where both tools run: quantize.imatrix.file records the path as given
    return {"{model}": path.name, "{imatrix}": imatrix.name, "{tt_file}": tt_file.name, "{recipe}": "recipe.txt"}


def write_split(src: Path, prefix: Path, n_split: int) -> None:
    """Split a model into n_split files as llama-gguf-split does: the key/values in the first, split.* in all."""
    reader = gguf.GGUFReader(src)
    tensors = list(reader.tensors)
    per = -(-len(tensors) // n_split)
    for i in range(n_split):
        w = gguf.GGUFWriter(f"{prefix}-{i + 1:05d}-of-{n_split:05d}.gguf", arch="")
        w.kv_data[0].clear()
        if i == 0:
            for f in reader.fields.values():
                if f.name.startswith("GGUF."):
                    continue
                sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(f.name, f.contents(), f.types[0], sub)
        w.add_uint16("split.no", i)
        w.add_uint16("split.count", n_split)
        w.add_int32("split.tensors.count", len(tensors))
        for t in tensors[i * per:(i + 1) * per]:
            data = np.asarray(t.data)
            w.add_tensor(t.name, data, raw_shape=tuple(reversed([int(d) for d in t.shape])), raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def output_files(out: Path, files: int) -> list[Path]:
    if files == 1:
        return [out]
    prefix = str(out)[:-5]
    return [Path(f"{prefix}-{i + 1:05d}-of-{files:05d}.gguf") for i in range(files)]


def describe_outputs(paths: list[Path]) -> dict:
    """Each tensor's output type (in file order) and each file's sha256."""
    plan, hashes = [], []
    for p in paths:
        hashes.append(hashlib.sha256(p.read_bytes()).hexdigest())
        plan += [[name, BY_ID[type_id].name] for name, _, type_id in tensor_infos(p)]
    return {"plan": plan, "sha256": hashes}



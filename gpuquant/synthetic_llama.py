"""Synthetic llama.cpp models: real tensor names and the metadata llama-quantize needs to load them.

Each layout follows its architecture's tensor names (llama with grouped-query attention, llama
with tied embeddings, qwen3moe, phi3, falcon, deepseek2, gpt-oss, gemma3). Row lengths (ne0) are
realistic, multiples of 256 and some that are not; the other dimensions are kept small so that
tests quantize whole files quickly. `width` scales every dimension for benchmarks.

The weights come from integer hashing and exact float32 sums (an Irwin-Hall normal), so a file's
bytes are the same on every machine and every NumPy version: reference hashes recorded once stay
valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from .gguf_io import AtomicGGUFWriter, MetadataEntry, PlannedTensor
from .qtypes import QTYPES
from .synthetic import encode_floats

U32, F32, STR, BOOL = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.STRING, GGUFValueType.BOOL


@dataclass(frozen=True)
class Layout:
    arch: str
    n_layer: int
    metadata: dict[str, tuple[object, GGUFValueType]]  # keys without the "{arch}." prefix
    global_tensors: list[tuple[str, tuple[int, ...]]]  # ggml shapes, ne0 first
    layer_tensors: list[tuple[str, tuple[int, ...]]]  # per layer, names after "blk.N."
    dense_layers: int = 0  # deepseek2: leading layers with a dense FFN instead of experts
    dense_tensors: tuple[tuple[str, tuple[int, ...]], ...] = ()


def _attn(q_out: int, kv_out: int, o_in: int, embd: int = 256) -> list[tuple[str, tuple[int, ...]]]:
    return [
        ("attn_norm.weight", (embd,)),
        ("attn_q.weight", (embd, q_out)),
        ("attn_k.weight", (embd, kv_out)),
        ("attn_v.weight", (embd, kv_out)),
        ("attn_output.weight", (o_in, 32)),
    ]


def _ffn(n_ff: int, embd: int = 256) -> list[tuple[str, tuple[int, ...]]]:
    return [
        ("ffn_norm.weight", (embd,)),
        ("ffn_gate.weight", (embd, 32)),
        ("ffn_up.weight", (embd, 32)),
        ("ffn_down.weight", (n_ff, 32)),
    ]


def _llama_keys(n_head: int, n_head_kv: int) -> dict[str, tuple[object, GGUFValueType]]:
    return {
        "context_length": (2048, U32), "embedding_length": (256, U32), "feed_forward_length": (320, U32),
        "attention.head_count": (n_head, U32), "attention.head_count_kv": (n_head_kv, U32),
        "attention.layer_norm_rms_epsilon": (1e-5, F32), "rope.dimension_count": (256 // n_head, U32),
        "vocab_size": (64, U32),
    }


def _moe(n_ff_exp: int, n_expert: int, embd: int = 256) -> list[tuple[str, tuple[int, ...]]]:
    return [
        ("ffn_norm.weight", (embd,)),
        ("ffn_gate_inp.weight", (embd, n_expert)),
        ("ffn_gate_exps.weight", (embd, 16, n_expert)),
        ("ffn_up_exps.weight", (embd, 16, n_expert)),
        ("ffn_down_exps.weight", (n_ff_exp, 16, n_expert)),
    ]


LAYOUTS: dict[str, Layout] = {
    # Llama 3 style: 8 query heads sharing 2 K/V heads; ffn_down rows of 320 (not a multiple of 256)
    "llama-gqa": Layout(
        "llama", 8, _llama_keys(8, 2),
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64)),
         ("rope_freqs.weight", (16,))],
        _attn(64, 16, 256) + _ffn(320),
    ),
    # Llama 3.2 1B style: output.weight absent, token_embd stands in for it; no GQA
    "llama-tied": Layout(
        "llama", 8, {**_llama_keys(4, 4), "feed_forward_length": (512, U32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,))],
        _attn(64, 64, 256) + _ffn(512),
    ),
    # Qwen3-30B-A3B style: 3-D expert tensors, router, per-head q/k norms, 8 experts
    "qwen3moe": Layout(
        "qwen3moe", 8,
        {**_llama_keys(8, 2), "expert_count": (8, U32), "expert_used_count": (2, U32),
         "expert_feed_forward_length": (160, U32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64))],
        _attn(64, 16, 512)[:-1] + [("attn_output.weight", (512, 32)), ("attn_q_norm.weight", (32,)),
                                   ("attn_k_norm.weight", (32,))] + _moe(160, 8),
    ),
    # Phi-3 style: fused Q/K/V, fused gate/up in ffn_up, rope scaling factors
    "phi3": Layout(
        "phi3", 8, {**_llama_keys(8, 8), "feed_forward_length": (768, U32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64)),
         ("rope_factors_long.weight", (16,)), ("rope_factors_short.weight", (16,))],
        [("attn_norm.weight", (256,)), ("attn_qkv.weight", (256, 96)), ("attn_output.weight", (256, 32)),
         ("ffn_norm.weight", (256,)), ("ffn_up.weight", (256, 64)), ("ffn_down.weight", (768, 32))],
    ),
    # Falcon 7B style: fused QKV, no gate, layer norms with biases; output always Q8_0
    "falcon": Layout(
        "falcon", 8,
        {"context_length": (2048, U32), "embedding_length": (256, U32), "feed_forward_length": (1024, U32),
         "attention.head_count": (8, U32), "attention.head_count_kv": (1, U32),
         "attention.layer_norm_epsilon": (1e-5, F32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output_norm.bias", (256,)),
         ("output.weight", (256, 64))],
        [("attn_norm.weight", (256,)), ("attn_norm.bias", (256,)), ("attn_qkv.weight", (256, 80)),
         ("attn_output.weight", (256, 32)), ("ffn_up.weight", (256, 64)), ("ffn_down.weight", (1024, 32))],
    ),
    # DeepSeek-V2-Lite style: MLA (attn_kv_a_mqa, attn_kv_b with rows of 64, split k_b/v_b), a dense
    # first layer, then routed and shared experts
    "deepseek2": Layout(
        "deepseek2", 6,
        {**_llama_keys(16, 16), "expert_count": (16, U32), "expert_used_count": (4, U32),
         "expert_feed_forward_length": (96, U32), "expert_shared_count": (2, U32),
         "leading_dense_block_count": (1, U32), "attention.kv_lora_rank": (64, U32),
         "attention.q_lora_rank": (32, U32),
         "attention.key_length": (96, U32), "attention.value_length": (64, U32),
         "rope.dimension_count": (32, U32), "expert_weights_scale": (1.0, F32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64))],
        [("attn_norm.weight", (256,)), ("attn_q_a.weight", (256, 32)), ("attn_q_a_norm.weight", (32,)),
         ("attn_q_b.weight", (32, 48)), ("attn_kv_a_mqa.weight", (256, 48)),
         ("attn_kv_a_norm.weight", (64,)), ("attn_kv_b.weight", (64, 64)), ("attn_k_b.weight", (32, 64, 4)),
         ("attn_v_b.weight", (64, 32, 4)), ("attn_output.weight", (1024, 32))]
        + _moe(96, 16)
        + [("ffn_gate_shexp.weight", (256, 16)), ("ffn_up_shexp.weight", (256, 16)),
           ("ffn_down_shexp.weight", (192, 16)), ("exp_probs_b.bias", (16,))],
        dense_layers=1,
        dense_tensors=(("ffn_norm.weight", (256,)), ("ffn_gate.weight", (256, 32)), ("ffn_up.weight", (256, 32)),
                       ("ffn_down.weight", (512, 32))),
    ),
    # gpt-oss style: attention sinks, biases, 3-D experts that MXFP4_MOE stores as MXFP4
    "gpt-oss": Layout(
        "gpt-oss", 4,
        {**_llama_keys(8, 2), "expert_count": (16, U32), "expert_used_count": (4, U32),
         "expert_feed_forward_length": (256, U32), "attention.sliding_window": (128, U32),
         "attention.key_length": (32, U32), "attention.value_length": (32, U32)},
        [("token_embd.weight", (256, 64)), ("output_norm.weight", (256,)), ("output.weight", (256, 64))],
        [("attn_norm.weight", (256,)), ("attn_q.weight", (256, 64)), ("attn_q.bias", (64,)),
         ("attn_k.weight", (256, 16)), ("attn_k.bias", (16,)), ("attn_v.weight", (256, 16)),
         ("attn_v.bias", (16,)), ("attn_output.weight", (256, 32)), ("attn_sinks.weight", (8,)),
         ("post_attention_norm.weight", (256,)), ("ffn_gate_inp.weight", (256, 16)),
         ("ffn_gate_inp.bias", (16,)), ("ffn_gate_exps.weight", (256, 16, 16)),
         ("ffn_gate_exps.bias", (16, 16)), ("ffn_up_exps.weight", (256, 16, 16)),
         ("ffn_up_exps.bias", (16, 16)), ("ffn_down_exps.weight", (256, 16, 16)),
         ("ffn_down_exps.bias", (256, 16))],
    ),
    # gemma-3-270m style: 640-wide rows (not a multiple of 256), tied embeddings, q/k norms,
    # sandwich norms
    "gemma3": Layout(
        "gemma3", 6,
        {"context_length": (32768, U32), "embedding_length": (640, U32), "feed_forward_length": (2048, U32),
         "attention.head_count": (4, U32), "attention.head_count_kv": (1, U32),
         "attention.key_length": (256, U32), "attention.value_length": (256, U32),
         "attention.layer_norm_rms_epsilon": (1e-6, F32), "attention.sliding_window": (512, U32),
         "rope.freq_base": (1e6, F32)},
        [("token_embd.weight", (640, 64)), ("output_norm.weight", (640,))],
        [("attn_norm.weight", (640,)), ("attn_q.weight", (640, 32)), ("attn_k.weight", (640, 8)),
         ("attn_v.weight", (640, 8)), ("attn_q_norm.weight", (256,)), ("attn_k_norm.weight", (256,)),
         ("attn_output.weight", (1024, 32)), ("post_attention_norm.weight", (640,)),
         ("ffn_norm.weight", (640,)), ("ffn_gate.weight", (640, 32)), ("ffn_up.weight", (640, 32)),
         ("ffn_down.weight", (2048, 32)), ("post_ffw_norm.weight", (640,))],
    ),
    # Llama-2/3-70B's depth: 80 layers with grouped-query attention make llama.cpp's LLM_TYPE_70B,
    # whose attn_v gets more bits (Q3_K and Q4_K become Q5_K)
    "llama-70b-depth": Layout(
        "llama", 80, _llama_keys(8, 2),
        [("token_embd.weight", (256, 32)), ("output_norm.weight", (256,)), ("output.weight", (256, 32))],
        [(n, (s[0], min(s[1], 8)) if len(s) > 1 else s) for n, s in _attn(64, 16, 256) + _ffn(320)],
    ),
}

LAYOUT_NAMES = tuple(LAYOUTS)


def wide_llama_layout(n_layer: int = 2, vocab: int = 32000) -> Layout:
    """A full-width Llama-3-8B-style layout (4096 wide, 14336 FFN, GQA 32/8), for benchmarks:
    2 layers and a 32000-token vocabulary make 2.8 GB of F32."""
    keys = {**_llama_keys(32, 8), "embedding_length": (4096, U32), "feed_forward_length": (14336, U32),
            "rope.dimension_count": (128, U32), "vocab_size": (vocab, U32)}
    return Layout(
        "llama", n_layer, keys,
        [("token_embd.weight", (4096, vocab)), ("output_norm.weight", (4096,)), ("output.weight", (4096, vocab))],
        [("attn_norm.weight", (4096,)), ("attn_q.weight", (4096, 4096)), ("attn_k.weight", (4096, 1024)),
         ("attn_v.weight", (4096, 1024)), ("attn_output.weight", (4096, 4096)), ("ffn_norm.weight", (4096,)),
         ("ffn_gate.weight", (4096, 14336)), ("ffn_up.weight", (4096, 14336)), ("ffn_down.weight", (14336, 4096))],
    )


def layout_tensors(layout: Layout, rows_scale: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor (name, ggml shape), in the order the file stores them (converter order)."""
    def scaled(shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape if len(shape) == 1 else (shape[0], shape[1] * rows_scale, *shape[2:])

    out = [(n, scaled(s)) for n, s in layout.global_tensors if n.startswith("token_embd")]
    for i in range(layout.n_layer):
        tensors = layout.layer_tensors
        if i < layout.dense_layers:
            keep = [t for t in tensors if not (t[0].startswith("ffn_") or t[0].startswith("exp_probs"))]
            tensors = keep + list(layout.dense_tensors)
        out += [(f"blk.{i}.{n}", scaled(s)) for n, s in tensors]
    out += [(n, scaled(s)) for n, s in layout.global_tensors if not n.startswith("token_embd")]
    return out


def synthetic_values(seed: int, n: int) -> np.ndarray:
    """n float32 values, about normal with std 0.02: the same bits on every machine."""
    i = np.arange(n, dtype=np.uint64)
    acc = np.zeros(n, dtype=np.float32)
    offset = np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))
    for k in range(4):
        h = i * np.uint64(4) + np.uint64(k) + offset
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
        acc += (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))  # exact
    # Irwin-Hall of 4 uniforms: mean 2, variance 1/3
    return (acc - np.float32(2.0)) * np.float32(0.02 * 1.7320508)


def write_llama_model(
    name: str | Layout, path: str | os.PathLike[str], *, dtype: str = "F32", rows_scale: int = 1, seed: int = 0,
    n_layer: int | None = None,
) -> Path:
    """Write the synthetic model `name` (see LAYOUTS, or a Layout); rows_scale multiplies every
    matrix's row count."""
    if isinstance(name, Layout):
        layout, name = name, f"{name.arch}-{name.n_layer}-layers"
    elif name in LAYOUTS:
        layout = LAYOUTS[name]
    else:
        raise ValueError(f"unknown llama layout {name!r}: choose one of {', '.join(LAYOUT_NAMES)}")
    if n_layer is not None:
        layout = Layout(**{**layout.__dict__, "n_layer": n_layer})
    qtype = QTYPES[dtype]
    arch = layout.arch
    metadata = [
        MetadataEntry("general.architecture", arch, STR, None),
        MetadataEntry("general.name", f"synthetic {name}", STR, None),
        MetadataEntry(f"{arch}.block_count", layout.n_layer, U32, None),
    ]
    metadata += [MetadataEntry(f"{arch}.{k}", v, t, None) for k, (v, t) in layout.metadata.items()]
    tensors = layout_tensors(layout, rows_scale)
    planned = []
    for tname, shape in tensors:
        tt = qtype if len(shape) > 1 or dtype == "F32" else QTYPES["F32"]  # 1-D tensors stay F32
        n = int(np.prod(shape, dtype=np.int64))
        planned.append(PlannedTensor(tname, tuple(reversed(shape)), tt, n * tt.type_size))
    with AtomicGGUFWriter(path, metadata, planned, alignment=32) as writer:
        for index, p in enumerate(planned):
            n = int(np.prod(p.shape_numpy, dtype=np.int64))
            values = synthetic_values(seed * 100003 + index, n)
            if p.name.endswith("norm.weight"):
                values += np.float32(1.0)
            writer.write(encode_floats(values, p.qtype.name))
        writer.commit()
    return Path(path)


def write_synthetic_imatrix(model_path: str | os.PathLike[str], path: str | os.PathLike[str], seed: int = 7) -> Path:
    """A GGUF importance matrix (llama-imatrix's format) for every 2-D and 3-D weight of a model."""
    import gguf

    reader = gguf.GGUFReader(model_path)
    w = gguf.GGUFWriter(path, arch="imatrix")
    w.kv_data[0].clear()
    w.add_key_value("general.type", "imatrix", STR)
    w.add_key_value("imatrix.datasets", ["synthetic.txt"], GGUFValueType.ARRAY, STR)
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    for index, t in enumerate(reader.tensors):
        shape = [int(d) for d in t.shape]
        if len(shape) < 2 or not t.name.endswith(".weight"):
            continue
        n_mat = shape[2] if len(shape) == 3 else 1
        raw = synthetic_values(seed * 7919 + index, shape[0] * n_mat)
        sums = (raw * raw * np.float32(1e4) + np.float32(0.01)).reshape(n_mat, shape[0])
        w.add_tensor(f"{t.name}.in_sum2", sums)
        w.add_tensor(f"{t.name}.counts", np.full((n_mat, 1), 40.0, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)

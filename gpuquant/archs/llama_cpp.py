"""llama.cpp's per-tensor rules: which type each tensor of a llama.cpp model gets under a mix.

The facts come from llama.cpp 3aa0ce9 (src/llama-quant.cpp): which tensors may be quantized
(`tensor_allows_quantization`), the broad tensor categories, the mix rules
(`llama_tensor_get_type_impl`), the user's overrides and their precedence
(`llama_tensor_get_type`), the row-length fallbacks and the imatrix requirement. The rules are
stateful: the attn_v and ffn counters advance as tensors are visited, so a model is planned as a
whole, in llama-quantize's tensor order (`tensor_order`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from ..mixes import Mix
from ..qtypes import QTYPES, QType

KNOWN_ARCHITECTURES: frozenset[str] = frozenset(
    line.strip()
    for line in resources.files("gpuquant").joinpath("data/llama_archs.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)

# archs whose load_hparams calls an 80-layer (jais2: 68-layer) model LLM_TYPE_70B
_70B_LAYERS = {"qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}

T = QTYPES  # short for the rules below


class LlamaModelError(ValueError):
    """llama-quantize would refuse this model or this request; the message is one line."""


@dataclass(frozen=True)
class Hparams:
    """What llama.cpp's quantizer reads of a model's hyperparameters."""

    arch: str
    n_layer: int  # {arch}.block_count (n_layer_all)
    n_expert: int = 0  # {arch}.expert_count
    n_head: int = 0  # {arch}.attention.head_count of layer 0
    n_head_kv: int = 0  # {arch}.attention.head_count_kv of layer 0 (default: n_head)
    is_70b: bool = False  # LLM_TYPE_70B: attn_v gets more bits

    @property
    def n_gqa(self) -> int:
        return 0 if self.n_head_kv == 0 else self.n_head // self.n_head_kv


def read_hparams(arch: str, metadata: Mapping[str, object]) -> Hparams:
    """The hyperparameters from the (override-applied) key/values, as llama.cpp's loader reads them."""

    def key(name: str, default=None, required: bool = False):
        full = f"{arch}.{name}"
        if full not in metadata:
            if required:
                raise LlamaModelError(f"key not found in model: {full}")
            return default
        return metadata[full]

    def first(value) -> int:  # get_key_or_arr: a per-layer array gives layer 0's value here
        if isinstance(value, (list, tuple)):
            return int(value[0]) if value else 0
        return int(value)

    n_layer = first(key("block_count", required=True))
    if not 0 < n_layer <= 512:
        raise LlamaModelError(f"{arch}.block_count is {n_layer}: llama.cpp needs 1 to 512 layers")
    n_expert = first(key("expert_count", 0))
    if arch in ("hunyuan_vl", "hunyuan-dense") and n_expert <= 1:
        n_expert = 0
    n_head = first(key("attention.head_count", 0))
    n_head_kv = first(key("attention.head_count_kv", n_head))
    is_70b = (arch == "llama" and n_expert != 8 and n_layer == 80 and n_head != n_head_kv) or (
        _70B_LAYERS.get(arch) == n_layer
    )
    return Hparams(arch, n_layer, n_expert, n_head, n_head_kv, is_70b)


@dataclass(frozen=True)
class TensorView:
    """What the rules see of a tensor: its (possibly renamed) name, ggml shape and type."""

    name: str
    shape: tuple[int, ...]  # ggml order, ne0 first
    qtype: QType

    @property
    def n_dims(self) -> int:
        """ggml_n_dims: trailing dimensions of 1 do not count."""
        n = len(self.shape)
        while n > 1 and self.shape[n - 1] == 1:
            n -= 1
        return max(n, 1)

    def ne(self, i: int) -> int:
        return self.shape[i] if i < len(self.shape) else 1


@dataclass(frozen=True)
class LlamaOptions:
    """llama-quantize's parameters that change the per-tensor types."""

    mix: Mix
    pure: bool = False  # --pure
    quantize_output_tensor: bool = True  # not --leave-output-tensor
    output_tensor_type: QType | None = None  # --output-tensor-type
    token_embedding_type: QType | None = None  # --token-embedding-type
    tensor_types: tuple[tuple[str, QType], ...] = ()  # --tensor-type PATTERN=TYPE, in order
    has_imatrix: bool = False


@dataclass(frozen=True)
class Choice:
    qtype: QType
    reason: str
    fallback_from: QType | None = None
    requires_imatrix: bool = False


def tensor_order(names: Sequence[str]) -> list[int]:
    """llama-quantize's order (its weights map): tensors outside blk.N first, then by layer, then by name."""

    def layer_key(i: int):
        name = names[i]
        m = _LEADING_BLK.match(name)
        return (int(m.group(1)) if m else -1, name.encode())

    return sorted(range(len(names)), key=layer_key)


# sscanf("blk.%d."): an optional sign and digits right after "blk.", then a dot
_LEADING_BLK = re.compile(r"blk\.\s*([+-]?\d+)")
_BLK = re.compile(r"blk\.(\d+)\.")


def prune_names(names: Sequence[str], prune: Sequence[int]) -> tuple[list[str | None], dict[int, int], int]:
    """--prune-layers: each name renumbered (None: pruned), {new layer: old layer} for the imatrix,
    and the block count llama-quantize then writes (its running next layer id).

    Names are visited in the given order (llama-quantize's), which decides the new numbers.
    """
    if not prune:
        return list(names), {}, 0
    prune = sorted(set(prune))
    mapped: dict[int, int | None] = {}
    next_id = 0
    out: list[str | None] = []
    for name in names:
        m = _BLK.search(name)
        if not m:
            out.append(name)
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = None
            elif blk < prune[0]:
                mapped[blk] = blk
                next_id = blk + 1
            else:
                mapped[blk] = next_id
                next_id += 1
        new = mapped[blk]
        out.append(None if new is None else name[: m.start(1)] + str(new) + name[m.end(1) :])
    return out, {new: old for old, new in mapped.items() if new is not None}, next_id


def allows_quantization(t: TensorView, arch: str, options: LlamaOptions) -> bool:
    """tensor_allows_quantization: 2-D/3-D weights, minus norms, gates, small and positional tensors."""
    if options.mix.is_copy or t.n_dims < 2:
        return False
    name = t.name
    # C++: name.rfind("weight") == name.size() - 6, which a 5-character name also passes
    if not (name.endswith("weight") or len(name) == 5):
        return False
    if not options.quantize_output_tensor and name == "output.weight":
        return False
    if name in ("position_embd.weight", "token_types.weight"):
        return False
    if any(part in name for part in _NEVER_QUANTIZED):
        return False
    if arch == "glm5-next" and any(part in name for part in _GLM5_NEXT_KEPT):
        return False
    return True


_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_GLM5_NEXT_KEPT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)

# tensor categories (tensor_get_category), tested in this order
OUTPUT, TOKEN_EMBD, ATTN_QKV, ATTN_KV_B, ATTN_V, ATTN_K, ATTN_Q, ATTN_OUTPUT = (
    "output", "token_embd", "attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"
)
FFN_UP, FFN_GATE, FFN_DOWN, OTHER = "ffn_up", "ffn_gate", "ffn_down", "other"
_ATTN_V_LIKE = (ATTN_V, ATTN_QKV, ATTN_KV_B)


def category(name: str) -> str:
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for part, cat in (
        ("attn_qkv.weight", ATTN_QKV), ("attn_kv_b.weight", ATTN_KV_B), ("attn_v.weight", ATTN_V),
        ("attn_k.weight", ATTN_K), ("attn_q.weight", ATTN_Q), ("attn_output.weight", ATTN_OUTPUT),
        ("ffn_up", FFN_UP), ("ffn_gate", FFN_GATE), ("ffn_down", FFN_DOWN),
    ):
        if part in name:
            return cat
    return OTHER


def requires_imatrix(name: str, qtype: QType, mix: Mix) -> bool:
    """tensor_requires_imatrix: the very low-bit types, and Q2_K in a Q2_K_S file."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if qtype.name in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"):
        return True
    return qtype.name == "Q2_K" and mix.name == "Q2_K_S"


def row_fallback(t: TensorView, qtype: QType) -> QType:
    """The type llama-quantize stores when qtype's block does not divide the rows (F16 as a last resort)."""
    ncols = t.ne(0)
    if ncols % qtype.block_size == 0:
        return qtype
    name = qtype.fallback("llama.cpp")  # tensor_type_fallback
    if name is None:
        if qtype.block_size > 32:
            raise LlamaModelError(f"no tensor type fallback is defined for type {qtype.name} (tensor {t.name})")
        name = qtype.name
    fallback = T[name]
    return fallback if ncols % fallback.block_size == 0 else T["F16"]


@dataclass
class _State:
    """quantize_state_impl's counters."""

    hp: Hparams
    options: LlamaOptions
    n_attention_wv: int = 0
    n_ffn: int = 0  # n_ffn_down = n_ffn_gate = n_ffn_up = n_layer
    tied_embeddings: bool = True
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    patterns: list[tuple[re.Pattern, QType]] = field(default_factory=list)


def plan_llama(tensors: Sequence[TensorView], hp: Hparams, options: LlamaOptions) -> list[Choice]:
    """The type of every tensor, visited in the given order (llama-quantize's, after pruning)."""
    state = _State(hp, options)
    state.n_attention_wv = sum(1 for t in tensors if category(t.name) in _ATTN_V_LIKE)
    state.tied_embeddings = not any(category(t.name) == OUTPUT for t in tensors)
    state.n_ffn = hp.n_layer
    for pattern, qtype in options.tensor_types:
        try:
            state.patterns.append((re.compile(pattern), qtype))
        except re.error as e:
            raise LlamaModelError(f"--tensor-type {pattern!r} is not a valid regular expression ({e})") from None
    out = []
    for t in tensors:
        choice = _tensor_choice(state, t)
        required = (
            allows_quantization(t, hp.arch, options) and requires_imatrix(t.name, choice.qtype, options.mix)
        )
        out.append(Choice(choice.qtype, choice.reason, choice.fallback_from, required))
    return out


def _tensor_choice(s: _State, t: TensorView) -> Choice:
    """llama_tensor_get_type: the user's overrides first, then the mix rules, then the row fallback."""
    o = s.options
    if not allows_quantization(t, s.hp.arch, o):
        return Choice(t.qtype, "kept (llama.cpp does not quantize it)")
    cat = category(t.name)
    if o.token_embedding_type is not None and cat == TOKEN_EMBD:
        named = t.name == "per_layer_token_embd.weight" and any(p.search(t.name) for p, _ in s.patterns)
        if not named:
            return Choice(o.token_embedding_type, "--token-embedding-type")
    if o.output_tensor_type is not None and cat == OUTPUT:
        return Choice(o.output_tensor_type, "--output-tensor-type")
    base = o.mix.base
    if base.is_float:
        return Choice(base, o.mix.name)
    new_type, reason, manual = base, o.mix.name, False
    for pattern, qtype in s.patterns:
        if pattern.search(t.name):
            new_type, reason, manual = qtype, f"--tensor-type {pattern.pattern}", True
            break
    if not manual and not o.pure:
        ruled = _mix_rule(s, new_type, t, cat)
        if ruled != new_type:
            reason = f"{o.mix.name} rule for {cat}"
        new_type = ruled
    elif o.pure and not manual:
        reason = f"{o.mix.name} --pure"
    stored = row_fallback(t, new_type)
    if stored != new_type:
        return Choice(stored, f"row {t.ne(0)} not a multiple of {new_type.block_size}: fallback", new_type)
    return Choice(new_type, reason)


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _layer(s: _State, counter: int, name: str) -> tuple[int, int]:
    """layer_info: the counter, or with experts the layer number parsed from the name."""
    n_layer = s.n_ffn
    if max(1, s.hp.n_expert) > 1:
        m = _LEADING_BLK.match(name)
        if not m:
            raise LlamaModelError(f"Failed to determine layer for tensor {name}")
        i_layer = int(m.group(1))
        if not 0 <= i_layer < n_layer:
            raise LlamaModelError(f"Bad layer {i_layer} for tensor {name}. Must be in [0, {n_layer})")
        return i_layer, n_layer
    return counter, n_layer


_IQ_LOW = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")


def _mix_rule(s: _State, new_type: QType, t: TensorView, cat: str) -> QType:  # noqa: C901 - llama.cpp's shape
    """llama_tensor_get_type_impl, rule for rule."""
    hp, ftype = s.hp, s.options.mix.name
    ftype = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}.get(ftype, ftype)
    name, arch = t.name, hp.arch

    if arch == "glm5-next" and any(p in name for p in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        if new_type.name not in ("F32", "BF16", "F16"):
            return T["Q8_0"]

    if cat == OUTPUT or (s.tied_embeddings and cat == TOKEN_EMBD):
        if s.options.output_tensor_type is not None:
            return s.options.output_tensor_type
        if ftype == "MXFP4_MOE" or arch == "falcon" or t.ne(0) % new_type.block_size != 0:
            return T["Q8_0"]
        if ftype in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"):
            return T["Q5_K"]
        return new_type if new_type.name == "Q8_0" else T["Q6_K"]
    if ftype == "MXFP4_MOE":
        is_bailing_expert = arch == "bailingmoe3" and cat in (FFN_UP, FFN_GATE, FFN_DOWN)
        if t.ne(2) > 1 and (arch != "bailingmoe3" or is_bailing_expert):
            return T["MXFP4"]
        return T["Q8_0"]
    if cat == TOKEN_EMBD:
        if s.options.token_embedding_type is not None:
            return s.options.token_embedding_type
        if ftype in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return T["Q2_K"]
        if ftype in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return T["IQ3_S"]
        if ftype in ("TQ1_0", "TQ2_0", "Q2_0"):
            return T["Q4_K"]
        return new_type
    if ftype in _IQ_LOW:
        iq2_sm = ftype in ("IQ2_S", "IQ2_M")
        if cat in _ATTN_V_LIKE:
            if hp.n_gqa >= 4 or hp.n_expert >= 4:
                new_type = T["Q4_K"]
            else:
                new_type = T["IQ3_S"] if iq2_sm else T["Q2_K"]
            s.i_attention_wv += 1
        elif hp.n_expert == 8 and cat == ATTN_K:
            new_type = T["Q4_K"]
        elif cat == FFN_DOWN:
            if s.i_ffn_down < s.n_ffn // 8:
                new_type = T["IQ3_S"] if iq2_sm else T["Q2_K"]
            s.i_ffn_down += 1
        elif cat == ATTN_OUTPUT:
            if hp.n_expert == 8:
                new_type = T["Q5_K"]
            elif ftype in ("IQ1_S", "IQ1_M"):
                new_type = T["IQ2_XXS"]
            elif iq2_sm:
                new_type = T["IQ3_S"]
        return new_type
    if cat in _ATTN_V_LIKE:
        gqa4 = hp.n_gqa >= 4
        if ftype == "Q2_K":
            new_type = T["Q4_K"] if gqa4 else T["Q3_K"]
        elif ftype == "Q2_K_S" and gqa4:
            new_type = T["Q4_K"]
        elif ftype == "IQ3_XXS":
            new_type = T["Q4_K"] if gqa4 else (T["IQ3_S"] if not s.options.has_imatrix else T["IQ3_XXS"])
        elif ftype in ("IQ3_XS", "IQ3_S") and gqa4:
            new_type = T["Q4_K"]
        elif ftype == "IQ3_M":
            new_type = T["Q4_K"]
        elif ftype == "Q3_K_M":
            new_type = T["Q5_K"] if s.i_attention_wv < 2 else T["Q4_K"]
        elif ftype == "Q3_K_L":
            new_type = T["Q5_K"]
        elif ftype in ("IQ4_NL", "IQ4_XS") and gqa4:
            new_type = T["Q5_K"]
        elif ftype in ("Q4_K_M", "Q5_K_M") and _use_more_bits(s.i_attention_wv, s.n_attention_wv):
            new_type = T["Q6_K"]
        elif ftype == "Q4_K_S" and s.i_attention_wv < 4:
            new_type = T["Q5_K"]
        if hp.is_70b and new_type.name in ("Q3_K", "Q4_K"):
            new_type = T["Q5_K"]
        if hp.n_expert == 8:
            new_type = T["Q8_0"]
        s.i_attention_wv += 1
        return new_type
    if cat == ATTN_K:
        if hp.n_expert == 8:
            return T["Q8_0"]
        if ftype == "IQ3_XS":
            return T["IQ3_XXS"]
        if ftype == "IQ3_XXS":
            return T["IQ2_S"]
        return new_type
    if cat == ATTN_Q:
        if ftype == "IQ3_XS":
            return T["IQ3_XXS"]
        if ftype == "IQ3_XXS":
            return T["IQ2_S"]
        return new_type
    if cat == FFN_DOWN:
        i_layer, n_layer = _layer(s, s.i_ffn_down, name)
        falcon = arch == "falcon"
        if ftype == "Q2_K":
            new_type = T["Q3_K"]
        elif ftype == "Q2_K_S":
            if i_layer < n_layer // 8:
                new_type = T["Q4_K"]
        elif ftype == "IQ3_XXS" and not s.options.has_imatrix:
            new_type = T["Q4_K"] if i_layer < n_layer // 8 else T["Q3_K"]
        elif ftype == "Q3_K_M":
            if i_layer < n_layer // 16:
                new_type = T["Q5_K"]
            elif not falcon or _use_more_bits(i_layer, n_layer):
                new_type = T["Q4_K"]
            else:
                new_type = T["Q3_K"]
        elif ftype == "IQ3_M" and (
            i_layer < n_layer // 8 or (hp.n_expert == 8 and _use_more_bits(i_layer, n_layer))
        ):
            new_type = T["Q4_K"]
        elif ftype == "Q3_K_L":
            new_type = T["Q4_K"] if falcon else T["Q5_K"]
        elif ftype == "Q4_K_M":
            if falcon:
                if i_layer < n_layer // 16:
                    new_type = T["Q6_K"]
                elif _use_more_bits(i_layer, n_layer):
                    new_type = T["Q5_K"]
                else:
                    new_type = T["Q4_K"]
            elif _use_more_bits(i_layer, n_layer):
                new_type = T["Q6_K"]
        elif i_layer < n_layer // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not s.options.has_imatrix:
            new_type = T["Q5_K"]
        elif ftype == "Q5_K_M" and _use_more_bits(i_layer, n_layer):
            new_type = T["Q6_K"]
        elif ftype == "Q4_K_S" and not falcon and i_layer < n_layer // 8:
            new_type = T["Q5_K"]
        elif ftype in ("Q4_0", "Q5_0") and s.options.has_imatrix and i_layer < n_layer // 8:
            new_type = T["Q4_1"] if ftype == "Q4_0" else T["Q5_1"]
        s.i_ffn_down += 1
        return new_type
    if cat == ATTN_OUTPUT:
        if arch != "falcon":
            if hp.n_expert == 8:
                if ftype in ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                             "IQ3_S", "IQ3_M", "IQ4_XS"):
                    new_type = T["Q5_K"]
            else:
                new_type = {
                    "Q2_K": T["Q3_K"], "IQ3_XXS": T["IQ3_S"], "Q3_K_M": T["Q4_K"], "Q3_K_L": T["Q5_K"],
                    "IQ3_M": T["Q4_K"],
                }.get(ftype, new_type)
        elif ftype == "Q3_K_L":
            new_type = T["Q4_K"]
        return new_type
    if cat == ATTN_QKV:
        if ftype in ("Q3_K_M", "Q3_K_L", "IQ3_M"):
            return T["Q4_K"]
        if ftype == "Q4_K_M":
            return T["Q5_K"]
        if ftype == "Q5_K_M":
            return T["Q6_K"]
        return new_type
    if cat in (FFN_GATE, FFN_UP):
        counter = s.i_ffn_gate if cat == FFN_GATE else s.i_ffn_up
        i_layer, n_layer = _layer(s, counter, name)
        if ftype == "IQ3_XS" and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            new_type = T["IQ3_XXS"]
        if cat == FFN_GATE:
            s.i_ffn_gate += 1
        else:
            s.i_ffn_up += 1
        return new_type
    return new_type

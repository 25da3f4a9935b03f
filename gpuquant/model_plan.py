"""The plan of a whole output file: which rule family, the tensors in output order with their names
and types, and the output's key/values.

Two rule families exist, chosen by `general.architecture`:
- TTS.cpp's (parler-tts, also when the key is missing; dia; kokoro; orpheus): per-tensor name rules
  (plan.py, archs/), input tensor order, `general.quantization_type` recorded;
- llama.cpp's (every other architecture; one llama.cpp does not know gets the same rules with a
  warning): the mixes and their stateful rules (archs/llama_cpp.py), llama-quantize's tensor order
  and `general.file_type`, with llama-quantize's options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFValueType

from .archs import RULES
from .archs import llama_cpp as llama
from .gguf_io import MetadataEntry, SourceModel, SourceTensor
from .imatrix import Imatrix, metadata_entries
from .mixes import Mix, mix_for_type
from .plan import DEFAULT_ARCHITECTURE, Decision, PlanOptions, plan_tensor
from .qtypes import QTYPES, QType

QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, as TTS.cpp and llama.cpp record it
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")


@dataclass(frozen=True)
class KVOverride:
    """--override-kv KEY=TYPE:VALUE, as llama-quantize stores it (INT as the UINT32 of its magnitude)."""

    key: str
    value: Any
    vtype: GGUFValueType


@dataclass(frozen=True)
class LlamaRequest:
    """llama-quantize's options beyond the mix (all default to llama-quantize's defaults)."""

    pure: bool = False
    leave_output_tensor: bool = False
    output_tensor_type: QType | None = None
    token_embedding_type: QType | None = None
    tensor_types: tuple[tuple[str, QType], ...] = ()
    prune_layers: tuple[int, ...] = ()
    kv_overrides: tuple[KVOverride, ...] = ()
    keep_split: bool = False


@dataclass
class PlannedEntry:
    source: SourceTensor
    name: str  # in the output (renumbered by --prune-layers)
    decision: Decision
    imatrix_name: str  # the name its importance matrix entry has (the source's own name)
    requires_imatrix: bool = False


@dataclass
class ModelPlan:
    family: str  # "tts.cpp" or "llama.cpp"
    architecture: str
    requested: str  # what the summary calls the request: a type or a mix name
    entries: list[PlannedEntry]
    metadata: list[MetadataEntry]  # the output's key/values, in order (imatrix keys not yet added)
    notes: list[str] = field(default_factory=list)
    mix: Mix | None = None

    def add_keys(self, entries: list[tuple[str, Any, GGUFValueType]]) -> None:
        """gguf_set_val_*: each key removed where it was and appended."""
        for key, value, vtype in entries:
            self.metadata = [e for e in self.metadata if e.key != key]
            self.metadata.append(MetadataEntry(key, value, vtype, None))


def is_tts_model(architecture: str | None) -> bool:
    return architecture is None or architecture.strip().lower() in RULES


def plan_model(
    model: SourceModel,
    target: QType | Mix,
    tts_options: PlanOptions | None = None,
    llama_request: LlamaRequest | None = None,
    imatrix: Imatrix | None = None,
) -> ModelPlan:
    """Plan every tensor of `model` for `target` (a ggml type, TTS.cpp's form, or a llama-quantize mix).

    `imatrix` is the importance matrix as it will be used (after --include/--exclude-weights).
    """
    arch = model.architecture
    imatrix_keys = [(k, v, GGUFValueType[vt]) for k, v, vt in metadata_entries(imatrix)] if imatrix else []
    if is_tts_model(arch):
        plan = _plan_tts(model, target, tts_options or PlanOptions(qtype=QTYPES["Q4_0"]))
        plan.add_keys(imatrix_keys)
        plan.add_keys(_tts_quantization_keys(QTYPES[plan.requested]))
        return plan
    return _plan_llama(model, arch or "", target, llama_request or LlamaRequest(), imatrix_keys)


def _plan_tts(model: SourceModel, target: QType | Mix, options: PlanOptions) -> ModelPlan:
    notes = []
    if isinstance(target, Mix) and target.name != target.base.name:
        notes.append(
            f"{target.name} is a llama.cpp mix; on a TTS.cpp model its base type {target.base.name} "
            "goes through TTS.cpp's rules"
        )
    if isinstance(target, Mix):
        target = target.base
    options = PlanOptions(**{**options.__dict__, "qtype": target})
    arch = (model.architecture or DEFAULT_ARCHITECTURE).strip().lower()
    entries = []
    for t in model.tensors:
        # a quantized source goes through the rules as a float tensor would (requantized only when
        # the run allows it); integer tensors are copied
        as_float = t.qtype if t.qtype.is_float or t.qtype.family == "copy-only" else QTYPES["F32"]
        d = plan_tensor(t.name, t.shape_gguf, as_float, model.architecture, options)
        if d.qtype is as_float and as_float is not t.qtype:
            d = Decision(t.qtype, f"{t.qtype.name} kept as it is")
        entries.append(PlannedEntry(t, t.name, d, t.name, requires_imatrix=d.qtype.requires_imatrix))
    return ModelPlan("tts.cpp", arch, target.name, entries, list(model.metadata), notes)


def _tts_quantization_keys(target: QType) -> list[tuple[str, Any, GGUFValueType]]:
    return [
        ("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32),
        ("general.quantization_type", target.ggml_id, GGUFValueType.UINT32),
    ]


def _plan_llama(
    model: SourceModel, arch: str, target: QType | Mix, request: LlamaRequest,
    imatrix_keys: list[tuple[str, Any, GGUFValueType]],
) -> ModelPlan:
    notes = []
    mix = target if isinstance(target, Mix) else mix_for_type(target)
    if mix is None:
        raise ValueError(
            f"llama.cpp has no mix for type {target.name}: choose a mix (`gpuquant mixes`), "
            "or --pure with --tensor-type"
        )
    if arch not in llama.KNOWN_ARCHITECTURES:
        notes.append(f"architecture {arch!r} is unknown to llama.cpp: planned with llama.cpp's name rules")
    values = {e.key: e.value for e in model.metadata}
    values.update({o.key: o.value for o in request.kv_overrides})
    hp = llama.read_hparams(arch, values)

    order = llama.tensor_order([t.name for t in model.tensors])
    if request.keep_split:  # llama-quantize sorts by shard and offset: the input's own order
        order = sorted(order, key=lambda i: (model.tensors[i].split, model.tensors[i].data_offset))
    sources = [model.tensors[i] for i in order]
    names, new_to_old, block_count = llama.prune_names([t.name for t in sources], request.prune_layers)
    kept = [(t, n) for t, n in zip(sources, names, strict=True) if n is not None]

    options = llama.LlamaOptions(
        mix=mix,
        pure=request.pure,
        quantize_output_tensor=not request.leave_output_tensor,
        output_tensor_type=request.output_tensor_type,
        token_embedding_type=request.token_embedding_type,
        tensor_types=request.tensor_types,
        has_imatrix=bool(imatrix_keys),
    )
    views = [llama.TensorView(n, t.shape_gguf, t.qtype) for t, n in kept]
    choices = llama.plan_llama(views, hp, options)
    entries = []
    for (t, name), c in zip(kept, choices, strict=True):
        decision = Decision(c.qtype, c.reason, fallback_from=c.fallback_from)
        entries.append(PlannedEntry(t, name, decision, _imatrix_name(name, new_to_old), c.requires_imatrix))

    file_type = _file_type(model, mix)
    metadata = list(model.metadata)
    plan = ModelPlan("llama.cpp", arch, mix.name, entries, metadata, notes, mix)
    plan.add_keys([
        ("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32),
        ("general.file_type", file_type, GGUFValueType.UINT32),
    ])
    plan.metadata = [e for e in plan.metadata if e.key not in _SPLIT_KEYS]
    # llama-quantize passes the imatrix keys as overrides after the user's own
    plan.add_keys([(o.key, o.value, o.vtype) for o in request.kv_overrides] + imatrix_keys)
    if request.prune_layers:
        plan.add_keys([(f"{arch}.block_count", block_count, GGUFValueType.UINT32)])
    return plan


def _imatrix_name(name: str, new_to_old: dict[int, int]) -> str:
    """remap_imatrix: a renumbered layer's tensor finds its entry under the old layer number."""
    if not new_to_old:
        return name
    m = llama._BLK.search(name)
    if not m:
        return name
    old = new_to_old[int(m.group(1))]
    return name[: m.start(1)] + str(old) + name[m.end(1) :]


_FTYPE_GUESSED = 1024


def _file_type(model: SourceModel, mix: Mix) -> int:
    """general.file_type: the mix's number; for COPY the input's own (or the loader's guess)."""
    if not mix.is_copy:
        return mix.ftype
    for e in model.metadata:
        if e.key == "general.file_type":
            return int(e.value)
    counts: dict[str, int] = {}
    best, best_count = "F32", 0
    for i in llama.tensor_order([t.name for t in model.tensors]):
        name = model.tensors[i].qtype.name
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > best_count:
            best, best_count = name, counts[name]
    # llama_model_loader's guess of a file's type from its most common tensor type
    guessed = QTYPES[best].llama_ftype if best in QTYPES else None
    return (guessed or 0) | _FTYPE_GUESSED

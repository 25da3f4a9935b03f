"""llama-quantize's command-line grammar: the positional form, types, --tensor-type, --prune-layers,
--override-kv and --max-buffer-size, parsed as tools/quantize/quantize.cpp parses them."""

from __future__ import annotations

import re
from pathlib import Path

from gguf import GGUFValueType

from .mixes import Mix, find_mix
from .model_plan import KVOverride
from .qtypes import QTYPES, QType

_STOI = re.compile(r"^\s*([+-]?\d+)")


def stoi(text: str) -> int | None:
    """std::stoi: leading blanks, a sign and digits; the rest of the text is ignored; None if none."""
    m = _STOI.match(text)
    return int(m.group(1)) if m else None


def parse_positional(args: tuple[str, ...], dry_run: bool, keep_split: bool):
    """IN [OUT] TYPE [NTHREADS] -> (input, output or None, target, threads or None).

    As llama-quantize: the second argument is the type when it names one (the output is then
    ggml-model-TYPE.gguf beside the input); else it is the output and the type follows. TYPE is a
    mix name or LLAMA_FTYPE number; a ggml type name that is no mix (NVFP4) is taken as a type.
    """
    if len(args) < 2:
        raise ValueError("missing the type: gpuquant quantize IN.gguf [OUT.gguf] TYPE [NTHREADS]")
    src, rest = args[0], list(args[1:])
    mix = find_mix(rest[0])
    if mix is not None:
        out = None if dry_run else _default_output(src, mix, keep_split)
        target: QType | Mix = mix
        rest = rest[1:]
    else:
        out, rest = rest[0], rest[1:]
        if not rest:
            # an older gpuquant form, IN OUT alone, keeps its default type
            target = QTYPES["Q4_0"]
        else:
            target = parse_llama_type(rest[0])
            rest = rest[1:]
    threads = None
    if rest:
        threads = stoi(rest[0])
        if threads is None:
            raise ValueError(f"invalid nthread {rest[0]!r}")
        rest = rest[1:]
    if rest:
        raise ValueError("too many arguments: expected IN.gguf [OUT.gguf] TYPE [NTHREADS]")
    return src, out, target, threads


def _default_output(src: str, mix: Mix, keep_split: bool) -> str:
    """[input's folder]/ggml-model-TYPE.gguf (no .gguf with --keep-split: the shards add it)."""
    slash = max(src.rfind("/"), src.rfind("\\"))
    folder = src[: slash + 1] if slash >= 0 else ""
    return f"{folder}ggml-model-{mix.name}" + ("" if keep_split else ".gguf")


def parse_llama_type(text: str) -> QType | Mix:
    mix = find_mix(text)
    if mix is not None:
        return mix
    if text.strip().upper() in QTYPES:
        return QTYPES[text.strip().upper()]
    raise ValueError(f"unknown quantization type {text!r} (llama.cpp mixes: `gpuquant mixes`; types: `gpuquant types`)")


def parse_ggml_type(text: str) -> QType:
    """A ggml type by its name in any case (parse_ggml_type: no numbers, no aliases)."""
    key = text.strip().upper()
    if key not in QTYPES:
        raise ValueError(f"invalid ggml_type {text!r} (see `gpuquant types`)")
    return QTYPES[key]


def parse_tensor_type(text: str) -> tuple[str, QType]:
    """PATTERN=TYPE: the pattern lowercased, as llama-quantize stores it."""
    name, sep, qtype = text.partition("=")
    if not sep:
        raise ValueError(f"malformed tensor type {text!r}: expected PATTERN=TYPE")
    if not name:
        raise ValueError(f"missing tensor name in --tensor-type {text!r}")
    if not qtype:
        raise ValueError(f"missing quantization type in --tensor-type {text!r}")
    return name.lower(), parse_ggml_type(qtype)


def read_tensor_type_file(path: str) -> list[tuple[str, QType]]:
    try:
        words = Path(path).read_text().split()
    except OSError as e:
        raise ValueError(f"failed to open file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    return [parse_tensor_type(w) for w in words]


def parse_prune_layers(text: str) -> tuple[int, ...]:
    layers = []
    for part in text.split(","):
        layer = stoi(part)
        if layer is None or layer < 0:
            raise ValueError(f"invalid layer id {part!r} in --prune-layers")
        layers.append(layer)
    return tuple(sorted(set(layers)))


def parse_kv_override(text: str) -> KVOverride:
    """KEY=TYPE:VALUE as common's string_parse_kv_override reads it, stored as llama-quantize writes it."""
    key, sep, rest = text.partition("=")
    if not sep or len(key.encode()) >= 128:
        raise ValueError(f"malformed KV override {text!r}: expected KEY=TYPE:VALUE")
    kind, colon, value = rest.partition(":")
    if not colon or kind not in ("int", "float", "bool", "str"):
        raise ValueError(f"invalid type for KV override {text!r}: int, float, bool or str")
    if kind == "int":
        number = _atol(value)
        return KVOverride(key, abs(number) & 0xFFFFFFFF, GGUFValueType.UINT32)  # gguf_set_val_u32(abs)
    if kind == "float":
        return KVOverride(key, _atof(value), GGUFValueType.FLOAT32)
    if kind == "bool":
        if value not in ("true", "false"):
            raise ValueError(f"invalid boolean value for KV override {text!r}: true or false")
        return KVOverride(key, value == "true", GGUFValueType.BOOL)
    if len(value.encode()) > 127:
        raise ValueError(f"malformed KV override {text!r}: the value cannot exceed 127 characters")
    return KVOverride(key, value, GGUFValueType.STRING)


def _atol(text: str) -> int:
    m = _STOI.match(text)
    return int(m.group(1)) if m else 0


_FLOAT = re.compile(r"^\s*([+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan))", re.IGNORECASE)


def _atof(text: str) -> float:
    m = _FLOAT.match(text)
    return float(m.group(1)) if m else 0.0


def parse_max_buffer_size(text: str) -> int:
    mib = stoi(text)
    if mib is None or mib <= 0:
        raise ValueError(f"invalid --max-buffer-size {text!r}: a number of MiB, 1 or more")
    return mib * 1024 * 1024

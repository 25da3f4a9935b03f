"""Per-tensor decisions against the TTS.cpp ground truth that the spec files carry for every tensor."""

from __future__ import annotations

import itertools
import json
import math
from functools import cache
from pathlib import Path

import pytest

import gpuquant
from gpuquant.plan import (
    PlanOptions,
    UnknownArchitecture,
    model_architecture,
    plan_tensor,
    row_fallback,
)
from gpuquant.qtypes import QTYPES

SPECS = Path(gpuquant.__file__).parent / "data" / "specs"
TTS_CPP_MODELS = ["parler-tts-mini", "parler-tts-large", "dia", "kokoro"]
FLAG_FIELDS = {
    "-qh": "quantize_output_heads",
    "-qe": "quantize_text_embeddings",
    "-qkv": "quantize_cross_attn_kv",
    "-df": "convert_dac_to_f16",
    "-nqf": "convert_non_quantized_to_f16",
}
# every combination of flags: none, each alone, ..., all together
FLAG_SETS = [
    frozenset(combo) for n in range(len(FLAG_FIELDS) + 1) for combo in itertools.combinations(FLAG_FIELDS, n)
]
F16, F32 = QTYPES["F16"], QTYPES["F32"]


@cache
def spec(model: str) -> dict:
    return json.loads((SPECS / f"{model}.json").read_text())


def options(qtype_name: str, flags: frozenset[str] = frozenset()) -> PlanOptions:
    return PlanOptions(QTYPES[qtype_name], **{FLAG_FIELDS[flag]: True for flag in flags})


def flags_id(flags: frozenset[str]) -> str:
    return "+".join(sorted(flags)) or "default"


def tts_cpp_expected(tensor: dict, qtype_name: str, flags: frozenset[str]) -> str:
    """What TTS.cpp's quantize writes, read from the spec's `tts_cpp_quantize` fields alone."""
    truth = tensor["tts_cpp_quantize"]
    if truth["quantized_by_default"] or truth["quantized_only_with"] in flags:
        return qtype_name
    if "-nqf" in flags and truth["f16_with_nqf_if_not_quantized"]:
        return "F16"
    if "-df" in flags and truth["f16_with_df_if_not_quantized"]:
        return "F16"
    return tensor["dtype"]


def mismatches(model: str, arch: str | None, qtype_name: str, flags: frozenset[str]) -> list:
    found = []
    for tensor in spec(model)["tensors"]:
        decision = plan_tensor(
            tensor["name"],
            tuple(tensor["shape_gguf"]),
            QTYPES[tensor["dtype"]],
            arch,
            options(qtype_name, flags),
        )
        expected = tts_cpp_expected(tensor, qtype_name, flags)
        # no spec tensor that TTS.cpp quantizes needs a fallback for 32-blocks or floats
        if decision.qtype.name != expected or decision.fallback_from or decision.kept_unquantizable:
            found.append((tensor["name"], decision, expected))
    return found


@pytest.mark.parametrize("flags", FLAG_SETS, ids=flags_id)
@pytest.mark.parametrize("qtype_name", ["Q4_0", "F16"])
@pytest.mark.parametrize("model", TTS_CPP_MODELS)
def test_every_tensor_as_tts_cpp_decides(model, qtype_name, flags):
    assert mismatches(model, spec(model)["architecture"], qtype_name, flags) == []


@pytest.mark.parametrize("flags", [frozenset(), frozenset(FLAG_FIELDS)], ids=flags_id)
@pytest.mark.parametrize("model", ["parler-tts-mini", "parler-tts-large"])
def test_parler_without_architecture_key(model, flags):
    assert spec(model)["architecture"] == "parler-tts"
    assert mismatches(model, None, "Q8_0", flags) == []


def test_the_flags_change_something():
    # guards the ground-truth comparison against a spec where every flag would be a no-op
    tensors = spec("parler-tts-mini")["tensors"]
    for flag in FLAG_FIELDS:
        changed = [
            t
            for t in tensors
            if tts_cpp_expected(t, "Q4_0", frozenset({flag})) != tts_cpp_expected(t, "Q4_0", frozenset())
        ]
        assert changed, flag


def data_section_bytes(model: str, qtype_name: str) -> int:
    """GGUF aligns every tensor's data, the last one included, to 32 bytes."""
    total = 0
    for tensor in spec(model)["tensors"]:
        shape = tensor["shape_gguf"]
        arch = spec(model)["architecture"]
        decision = plan_tensor(
            tensor["name"], tuple(shape), QTYPES[tensor["dtype"]], arch, options(qtype_name)
        )
        nbytes = math.prod(shape[1:]) * decision.qtype.row_bytes(shape[0])
        total += (nbytes + 31) // 32 * 32
    return total


@pytest.mark.parametrize("qtype_name", ["Q4_0", "Q5_0", "Q8_0", "F16"])
@pytest.mark.parametrize("model", TTS_CPP_MODELS)
def test_predicted_data_section_size(model, qtype_name):
    summary = json.loads((SPECS / "summary.json").read_text())[model]
    expected = summary["data_section_bytes_after_tts_cpp_quantize_default_flags"][qtype_name]
    assert data_section_bytes(model, qtype_name) == expected


def test_f32_data_section_counts_padding_like_the_summary():
    summary = json.loads((SPECS / "summary.json").read_text())["parler-tts-mini"]
    assert data_section_bytes("parler-tts-mini", "F32") == summary["data_section_bytes_f32_padded32"]
    assert summary["data_section_bytes_f32_padded32"] != summary["tensor_bytes_f32"]


# --- Orpheus: gpuquant's own rule, checked through the spec's `kind` of each tensor


def orpheus_expected(tensor: dict, qtype_name: str, flags: frozenset[str]) -> str:
    kind = tensor["kind"]
    if kind in ("embd", "linear") or (kind == "head" and "-qh" in flags):
        return qtype_name
    f16_under_nqf = kind in ("head", "snac_conv", "snac_convT", "snac_vq_proj", "snac_codebook")
    if "-nqf" in flags and f16_under_nqf:
        return "F16"
    return tensor["dtype"]


ORPHEUS_KINDS = {
    "embd",
    "linear",
    "head",
    "rmsnorm",
    "rope_factors",
    "snac_conv",
    "snac_convT",
    "snac_vq_proj",
    "snac_codebook",
    "snac_bias",
    "snac_alpha",
}


@pytest.mark.parametrize("flags", FLAG_SETS, ids=flags_id)
@pytest.mark.parametrize("qtype_name", ["Q4_0", "Q4_K"])
def test_orpheus_rule(qtype_name, flags):
    tensors = spec("orpheus")["tensors"]
    assert {t["kind"] for t in tensors} == ORPHEUS_KINDS
    found = []
    for tensor in tensors:
        decision = plan_tensor(
            tensor["name"],
            tuple(tensor["shape_gguf"]),
            QTYPES[tensor["dtype"]],
            "orpheus",
            options(qtype_name, flags),
        )
        expected = orpheus_expected(tensor, qtype_name, flags)
        if decision.qtype.name != expected or decision.fallback_from or decision.kept_unquantizable:
            found.append((tensor["name"], decision, expected))
    assert found == []


def test_orpheus_counts():
    decisions = [
        plan_tensor(t["name"], tuple(t["shape_gguf"]), F32, "orpheus", options("Q8_0"))
        for t in spec("orpheus")["tensors"]
    ]
    assert sum(d.qtype.name == "Q8_0" for d in decisions) == 28 * 7 + 1


# --- row-length fallbacks


def kokoro_tensors_with_rows_not_div_256() -> list[dict]:
    return [
        t
        for t in spec("kokoro")["tensors"]
        if t["tts_cpp_quantize"]["quantized_by_default"] and t["shape_gguf"][0] % 256
    ]


def test_kokoro_lstm_rows_fall_back_from_k_quants():
    lstms = kokoro_tensors_with_rows_not_div_256()
    assert len(lstms) == 40
    for tensor in lstms:
        assert tensor["shape_gguf"][0] == 640
        shape = tuple(tensor["shape_gguf"])
        for requested, expected in [("Q4_K", "Q5_0"), ("Q5_K", "Q5_1"), ("Q6_K", "Q8_0"), ("Q2_K", "Q4_0")]:
            decision = plan_tensor(tensor["name"], shape, F32, "kokoro", options(requested))
            assert decision.qtype.name == expected
            assert decision.fallback_from == QTYPES[requested]
            assert not decision.kept_unquantizable
            assert "640" in decision.reason and "256" in decision.reason
        decision = plan_tensor(tensor["name"], shape, F32, "kokoro", options("Q4_0"))
        assert decision.qtype.name == "Q4_0" and decision.fallback_from is None


def test_kokoro_other_tensors_take_k_quants_as_they_are():
    lstm_names = {t["name"] for t in kokoro_tensors_with_rows_not_div_256()}
    quantized = [t for t in spec("kokoro")["tensors"] if t["tts_cpp_quantize"]["quantized_by_default"]]
    others = [t for t in quantized if t["name"] not in lstm_names]
    assert len(others) == len(quantized) - 40 > 0
    for tensor in others:
        decision = plan_tensor(tensor["name"], tuple(tensor["shape_gguf"]), F32, "kokoro", options("Q4_K"))
        assert (decision.qtype.name, decision.fallback_from) == ("Q4_K", None)


@pytest.mark.parametrize(
    "qtype_name, n_per_row, expected",
    [
        ("Q4_K", 640, "Q5_0"),
        ("Q4_K", 4096, "Q4_K"),
        ("Q5_K", 640, "Q5_1"),
        ("Q6_K", 640, "Q8_0"),
        ("Q2_K", 640, "Q4_0"),
        ("Q3_K", 640, "Q4_0"),
        ("IQ4_XS", 640, "IQ4_NL"),
        ("IQ2_XXS", 640, "IQ4_NL"),
        ("IQ2_XS", 640, "IQ4_NL"),
        ("IQ2_S", 640, "IQ4_NL"),
        ("IQ3_XXS", 640, "IQ4_NL"),
        ("IQ3_S", 640, "IQ4_NL"),
        ("IQ1_S", 640, "IQ4_NL"),
        ("IQ1_M", 640, "IQ4_NL"),
        ("TQ1_0", 640, "Q4_0"),
        ("TQ2_0", 640, "Q4_0"),
        ("Q2_0", 96, "Q4_0"),
        ("Q2_0", 640, "Q2_0"),
        ("Q1_0", 96, "Q4_0"),
        ("Q1_0", 640, "Q1_0"),
        ("NVFP4", 96, "Q4_0"),
        ("NVFP4", 640, "NVFP4"),
        ("Q4_K", 100, None),  # Q5_0's 32-block does not divide 100 either: kept as it is
        ("Q6_K", 48, None),
        ("Q4_0", 100, None),
        ("Q8_0", 20, None),
        ("IQ4_NL", 16, None),
        ("MXFP4", 48, None),
        ("Q4_0", 640, "Q4_0"),
        ("F16", 7, "F16"),
        ("BF16", 3, "BF16"),
        ("F32", 1, "F32"),
    ],
)
def test_row_fallback_table(qtype_name, n_per_row, expected):
    got = row_fallback(QTYPES[qtype_name], n_per_row)
    assert (got.name if got else None) == expected


@pytest.mark.parametrize("qtype", QTYPES.values(), ids=lambda t: t.name)
def test_row_fallback_covers_every_type(qtype):
    assert row_fallback(qtype, qtype.block_size * 5) == qtype
    for n_per_row in (1, 20, 32, 96, 160, 640, 1000):
        got = row_fallback(qtype, n_per_row)
        assert got is None or n_per_row % got.block_size == 0
        if n_per_row % qtype.block_size and n_per_row % 32 == 0:
            # every type of blocks larger than 32 has a 32-block fallback
            assert got is not None and got.block_size <= 32


def test_row_that_no_block_divides_is_kept():
    name, shape = "decoder.layers.0.fc1.weight", (100, 8)
    decision = plan_tensor(name, shape, F32, "parler-tts", options("Q4_K"))
    assert (decision.qtype, decision.kept_unquantizable, decision.fallback_from) == (F32, True, None)
    decision = plan_tensor(name, shape, F32, "parler-tts", options("Q4_K", frozenset({"-nqf"})))
    assert (decision.qtype, decision.kept_unquantizable) == (F16, True)
    decision = plan_tensor(name, (128, 8), F32, "parler-tts", options("Q4_K"))
    assert (decision.qtype.name, decision.fallback_from.name) == ("Q5_0", "Q4_K")


# --- source and requested float types


def test_float_sources_and_requests():
    matrix, norm = "dia.encoder.layers.0.q_proj", "dia.encoder.norm"
    bf16 = QTYPES["BF16"]
    assert plan_tensor(matrix, (1024, 1024), F16, "dia", options("Q5_0")).qtype.name == "Q5_0"
    assert plan_tensor(matrix, (1024, 1024), bf16, "dia", options("F16")).qtype == F16
    assert plan_tensor(matrix, (1024, 1024), bf16, "dia", options("BF16")).qtype == bf16
    assert plan_tensor(matrix, (1024, 1024), F16, "dia", options("F32")).qtype == F16
    assert plan_tensor(matrix, (1024, 1024), F32, "dia", options("F32")).qtype == F32
    head = "dia.decoder.heads.0"
    assert plan_tensor(head, (1024, 1028), bf16, "dia", options("Q4_0")).qtype == bf16
    assert plan_tensor(head, (1024, 1028), bf16, "dia", options("Q4_0", frozenset({"-nqf"}))).qtype == F16
    assert plan_tensor(head, (1024, 1028), F16, "dia", options("Q4_0", frozenset({"-nqf"}))).qtype == F16
    assert plan_tensor(norm, (1024,), bf16, "dia", options("Q4_0", frozenset({"-nqf"}))).qtype == bf16
    # an already quantized (or integer) source is kept as it is, whatever is asked
    kept = plan_tensor(matrix, (1024, 1024), QTYPES["Q8_0"], "dia", options("Q4_0", frozenset({"-nqf"})))
    assert kept.qtype == QTYPES["Q8_0"] and "kept" in kept.reason


def test_one_dimensional_tensors_are_never_quantized():
    # the name says "quantize", the shape says no
    decision = plan_tensor("dia.encoder.layers.0.q_proj", (1024,), F32, "dia", options("Q4_0"))
    assert decision.qtype == F32
    assert plan_tensor("orpheus.embed_tokens", (3072,), F32, "orpheus", options("Q4_0")).qtype == F32


def test_reasons_say_why():
    def reason(name, shape, arch="parler-tts", flags=frozenset()):
        return plan_tensor(name, shape, F32, arch, options("Q4_0", flags)).reason

    assert reason("decoder.layers.0.self_attn_layer_norm.weight", (1024,)) == "norm kept"
    assert reason("decoder.layers.0.fc1.weight", (1024, 4096)) == "quantized"
    assert "-qh" in reason("decoder.lm_heads.0.weight.head", (1024, 1088), flags=frozenset({"-qh"}))
    assert reason("audio_encoder.final.bias", (1,), flags=frozenset({"-df"})) == "-df"
    assert reason("audio_encoder.final.alpha", (1, 64, 1), flags=frozenset({"-df"})) == "DAC codec kept"


# --- architectures


def test_model_architecture():
    assert model_architecture(None) == "parler-tts"
    for name in ("parler-tts", "dia", "kokoro", "orpheus"):
        assert model_architecture(name) == name
    assert model_architecture(" Kokoro ") == "kokoro"


@pytest.mark.parametrize("arch", ["llama", "", "parler", "t5encoder"])
def test_unknown_architecture(arch):
    with pytest.raises(UnknownArchitecture) as excinfo:
        model_architecture(arch)
    message = str(excinfo.value)
    assert "\n" not in message
    for name in ("parler-tts", "dia", "kokoro", "orpheus"):
        assert name in message
    with pytest.raises(UnknownArchitecture):
        plan_tensor("token_embd.weight", (4096, 32000), F32, arch, options("Q4_0"))
    assert issubclass(UnknownArchitecture, ValueError)

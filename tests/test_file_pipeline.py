"""End to end: synthetic TTS.cpp models of the real layout through the file pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

import gpuquant
from gpuquant.gguf_io import SourceModel
from gpuquant.outputs import RunOptions, TtsRequest
from gpuquant.synthetic import load_spec, write_synthetic_model

FLAGS = {
    "-qh": "quantize_output_heads",
    "-qe": "quantize_text_embeddings",
    "-qkv": "quantize_cross_attn_kv",
    "-df": "convert_dac_to_f16",
    "-nqf": "convert_non_quantized_to_f16",
}


def expected_type(spec_tensor: dict, target: str, flags: set[str]) -> str:
    """What TTS.cpp's quantize makes of a tensor, from the spec's record alone."""
    rule = spec_tensor["tts_cpp_quantize"]
    if rule["quantized_by_default"] or (rule["quantized_only_with"] in flags):
        return target
    if "-nqf" in flags and rule["f16_with_nqf_if_not_quantized"]:
        return "F16"
    if "-df" in flags and rule["f16_with_df_if_not_quantized"]:
        return "F16"
    return spec_tensor["dtype"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "kokoro": write_synthetic_model("kokoro", d / "kokoro.gguf"),
        "parler-tts-mini": write_synthetic_model("parler-tts-mini", d / "parler.gguf", max_layers=1),
        "dia": write_synthetic_model("dia", d / "dia.gguf", max_layers=1),
    }


def _check_output(src, dst, spec_name, target, flags, summary):
    spec = {t["name"]: t for t in load_spec(spec_name)["tensors"]}
    reader = gguf.GGUFReader(dst)
    source = SourceModel(src)
    src_reader = gguf.GGUFReader(src)
    # metadata: every input key, unchanged, then the two quantization keys moved to the end (as
    # ggml's gguf_set_val does: it removes the key and appends it)
    own = ["general.quantization_version", "general.quantization_type"]
    out_keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    in_keys = [k for k in src_reader.fields if not k.startswith("GGUF.") and k not in own]
    assert out_keys == in_keys + own
    for k in in_keys:
        assert reader.fields[k].contents() == src_reader.fields[k].contents(), k
    assert reader.fields["general.quantization_version"].contents() == 2
    assert reader.fields["general.quantization_type"].contents() == gpuquant.resolve(target).ggml_id
    # tensors: input order, expected types, bytes equal to quantize() of the input
    assert [t.name for t in reader.tensors] == [t.name for t in source.tensors]
    for out, t in zip(reader.tensors, source.tensors, strict=True):
        want = expected_type(spec[t.name], target, flags)
        assert out.tensor_type.name == want, (t.name, flags)
        assert out.data_offset % reader.alignment == 0
        x = source.rows_as_float32(t, 0, t.n_rows)
        raw = np.asarray(out.data).reshape(-1).view(np.uint8)
        if want == t.qtype.name:
            expected = np.asarray(source.raw_bytes(t))
        else:
            expected = gpuquant.quantize(x, want, backend="numpy").reshape(-1)
        assert np.array_equal(raw, expected), t.name
    assert len(summary.records) == len(source.tensors)
    source.close()


@pytest.mark.parametrize("spec_name", ["kokoro", "parler-tts-mini", "dia"])
def test_default_flags_q4_0(models, tmp_path, spec_name):
    dst = tmp_path / "out.gguf"
    summary = gpuquant.quantize_file(models[spec_name], dst, "Q4_0", options=RunOptions(backend="numpy", n_threads=2))
    _check_output(models[spec_name], dst, spec_name, "Q4_0", set(), summary)
    assert summary.by_type()["Q4_0"]["tensors"] > 0


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_flag_parler(models, tmp_path, flag):
    dst = tmp_path / "out.gguf"
    summary = gpuquant.quantize_file(models["parler-tts-mini"], dst, "Q8_0", tts=TtsRequest(**{FLAGS[flag]: True}),
                                     options=RunOptions(backend="numpy"))
    _check_output(models["parler-tts-mini"], dst, "parler-tts-mini", "Q8_0", {flag}, summary)


def test_all_flags_dia_q5_1(models, tmp_path):
    dst = tmp_path / "out.gguf"
    summary = gpuquant.quantize_file(models["dia"], dst, "Q5_1", tts=TtsRequest(**{v: True for v in FLAGS.values()}),
                                     options=RunOptions(backend="numpy"))
    _check_output(models["dia"], dst, "dia", "Q5_1", set(FLAGS), summary)


def test_kokoro_nqf_f16_target(models, tmp_path):
    dst = tmp_path / "out.gguf"
    summary = gpuquant.quantize_file(models["kokoro"], dst, "F16",
                                     tts=TtsRequest(convert_non_quantized_to_f16=True),
                                         options=RunOptions(backend="numpy"))
    _check_output(models["kokoro"], dst, "kokoro", "F16", {"-nqf"}, summary)


def test_f16_and_bf16_sources_are_widened_exactly(tmp_path):
    for dtype in ("F16", "BF16"):
        src = write_synthetic_model("kokoro", tmp_path / f"k-{dtype}.gguf", dtype=dtype)
        dst = tmp_path / f"k-{dtype}-q8.gguf"
        gpuquant.quantize_file(src, dst, "Q8_0", options=RunOptions(backend="numpy"))
        source, reader = SourceModel(src), gguf.GGUFReader(dst)
        n_quantized = 0
        for out, t in zip(reader.tensors, source.tensors, strict=True):
            if out.tensor_type.name != "Q8_0":
                assert out.tensor_type.name == dtype
                continue
            x = source.rows_as_float32(t, 0, t.n_rows)
            expected = gpuquant.quantize(x, "Q8_0", backend="numpy").reshape(-1)
            assert np.array_equal(np.asarray(out.data).reshape(-1), expected), t.name
            n_quantized += 1
        assert n_quantized > 50
        source.close()


def test_kokoro_q4_k_lstm_fallback_counted_and_warned(models, tmp_path, capsys):
    spec = {t["name"]: t for t in load_spec("kokoro")["tensors"]}
    dst = tmp_path / "out.gguf"
    summary = gpuquant.quantize_file(models["kokoro"], dst, "Q4_K",
                                     options=RunOptions(backend="numpy", n_threads=2, progress=True))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Q4_K" in warnings[0] and "Q5_0" in warnings[0]
    source = SourceModel(models["kokoro"])
    out = {t.name: t for t in gguf.GGUFReader(dst).tensors}
    n_fallback = 0
    for t in source.tensors:
        want = expected_type(spec[t.name], "Q4_K", set())
        if want == "Q4_K" and t.n_per_row % 256:
            want = "Q5_0"  # llama.cpp's fallback for Q4_K
            n_fallback += 1
        assert out[t.name].tensor_type.name == want, t.name
        if want != t.qtype.name:
            x = source.rows_as_float32(t, 0, t.n_rows)
            assert np.array_equal(np.asarray(out[t.name].data).reshape(-1),
                                  gpuquant.quantize(x, want, backend="numpy").reshape(-1)), t.name
    assert n_fallback == 40 and summary.n_fallbacks == 40
    source.close()


def _ggml_dims(shape) -> list[int]:
    dims = [int(d) for d in shape]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return dims


@pytest.mark.parametrize("spec_name", ["kokoro", "parler-tts-mini", "dia"])
def test_whole_file_as_tts_cpp_writes_it(models, tmp_path, spec_name):
    """The whole output equals a file built independently with gguf's writer the way TTS.cpp's
    quantize lays it out: input keys, then quantization_version and quantization_type; tensors in
    input order with ggml's shapes (trailing dimensions of 1 dropped: Kokoro's [1, n, 1] kernels,
    Parler's and Dia's alphas) and quantize()'s bytes."""
    src = models[spec_name]
    dst = tmp_path / "out.gguf"
    gpuquant.quantize_file(src, dst, "Q4_0", options=RunOptions(backend="numpy"))
    spec = {t["name"]: t for t in load_spec(spec_name)["tensors"]}
    reader = gguf.GGUFReader(src)
    source = SourceModel(src)
    trimmed = [t.name for t in source.tensors if _ggml_dims(t.shape_gguf) != list(t.shape_gguf)]
    assert trimmed, "the layout has tensors with trailing dimensions of 1"
    expected = tmp_path / "expected.gguf"
    w = gguf.GGUFWriter(expected, arch="")
    w.kv_data[0].clear()
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.quantization_version", "general.quantization_type"):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub)
    w.add_uint32("general.quantization_version", 2)
    w.add_uint32("general.quantization_type", 2)
    for t in source.tensors:
        want = expected_type(spec[t.name], "Q4_0", set())
        dims = _ggml_dims(t.shape_gguf)
        if want == t.qtype.name:
            data = np.asarray(source.raw_bytes(t)).copy()
        else:
            data = gpuquant.quantize(source.rows_as_float32(t, 0, t.n_rows), want, backend="numpy")
        qtype = gguf.GGMLQuantizationType[want]
        row_bytes = data.size // int(np.prod(dims[1:], dtype=np.int64))
        byte_shape = (*reversed(dims[1:]), row_bytes)
        w.add_tensor(t.name, data.reshape(-1).view(np.uint8).reshape(byte_shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    source.close()
    assert dst.read_bytes() == expected.read_bytes()


TTS_RECORD = json.loads((Path(__file__).parent / "data" / "tts_cpp_reference.json").read_text())
_SPEC_OF = {"kokoro": "kokoro", "parler": "parler-tts-mini", "dia": "dia"}


@pytest.mark.parametrize("run", TTS_RECORD["runs"], ids=lambda r: f"{r['model']}-{r['type']}{''.join(r['flags'])}")
def test_whole_file_equals_tts_cpp_quantize(models, tmp_path, run):
    """sha256 of TTS.cpp's own `quantize` output (recorded once, tests/data/tts_cpp_reference.json)
    for the same synthetic input, type and flags."""
    from click.testing import CliRunner

    from gpuquant.cli import main

    src = models[_SPEC_OF[run["model"]]]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == TTS_RECORD["inputs"][run["model"]], "input changed"
    out = tmp_path / "out.gguf"
    args = ["quantize", "--model-path", str(src), "--quantized-model-path", str(out), "--quantized-type", run["type"],
            "--n-threads", "2", "-q", *run["flags"]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["sha256"]


@pytest.mark.parametrize("run", [r for r in TTS_RECORD["runs"] if r["model"] == "parler"],
                         ids=lambda r: f"{r['model']}-{r['type']}{''.join(r['flags'])}")
def test_gpu_engine_on_the_cuda_simulator_equals_tts_cpp_quantize(models, tmp_path, monkeypatch, run):
    """The CuPy backend's streaming engine, launchers and kernels/*.cu, run by the CUDA simulator,
    write TTS.cpp's own bytes."""
    from click.testing import CliRunner

    from gpuquant import hostkernels
    from gpuquant.cli import main

    if hostkernels.find_compiler() is None:
        pytest.skip("the CUDA simulator builds the kernels with the host C++ compiler")
    monkeypatch.setenv("GPUQUANT_CUDA_SIM", "1")
    out = tmp_path / "out.gguf"
    args = ["quantize", "-mp", str(models["parler-tts-mini"]), "-qp", str(out), "-qt", run["type"],
            "--backend", "cupy", *run["flags"]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "backend CuPy (CUDA simulator)" in result.output
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["sha256"]

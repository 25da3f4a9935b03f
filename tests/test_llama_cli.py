"""llama-quantize's command line on llama.cpp models: default output names, thread counts, dry
runs, options and their errors, unknown architectures, and bounded memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.cli import main
from gpuquant.gguf_header import tensor_infos
from gpuquant.gguf_io import SourceModel
from gpuquant.qtypes import BY_ID
from gpuquant.synthetic_llama import write_llama_model

RECORD = json.loads((Path(__file__).parent / "data" / "llama_reference.json").read_text())


def recorded(name: str) -> dict:
    return next(r["expected"] for r in RECORD["runs"] if r["name"] == name)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory) -> Path:
    return write_llama_model("llama-gqa", tmp_path_factory.mktemp("gqa") / "llama-gqa-F32.gguf")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(main, ["quantize", "--backend", "numpy", *args])


def test_type_only_writes_ggml_model_type_beside_the_input(gqa, tmp_path):
    src = tmp_path / "in.gguf"
    src.write_bytes(gqa.read_bytes())
    r = invoke("-q", str(src), "q4_k_m")
    assert r.exit_code == 0, r.output
    assert sha(tmp_path / "ggml-model-Q4_K_M.gguf") == recorded("llama-gqa/F32: Q4_K_M 2")["sha256"][0]
    # by LLAMA_FTYPE number: 15 is llama-quantize's first name for it, the alias Q4_K
    r = invoke("-q", str(src), "15", "1")
    assert r.exit_code == 0, r.output
    assert sha(tmp_path / "ggml-model-Q4_K.gguf") == recorded("llama-gqa/F32: 15 2")["sha256"][0]


def test_thread_count_never_changes_bytes(gqa, tmp_path):
    for threads in ("1", "2", "0"):  # 0: every core, as llama-quantize
        out = tmp_path / f"t{threads}.gguf"
        assert invoke("-q", str(gqa), str(out), "Q4_K_M", threads).exit_code == 0
        assert sha(out) == recorded("llama-gqa/F32: Q4_K_M 2")["sha256"][0]


def test_dry_run_lists_the_plan_and_reads_no_tensor_data(gqa, tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("a dry run read tensor data")

    monkeypatch.setattr(SourceModel, "raw_bytes", no_data)
    monkeypatch.setattr(SourceModel, "rows_as_float32", no_data)
    monkeypatch.chdir(tmp_path)
    r = invoke("--dry-run", str(gqa), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.iterdir())
    plan = recorded("llama-gqa/F32: Q4_K_M 2")["plan"]
    lines = r.stdout.splitlines()
    rows = {line.split()[0]: line.split()[2] for line in lines[2:2 + len(plan)]}
    assert rows == {name: qtype for name, qtype in plan}
    assert [line.split()[0] for line in lines[2:2 + len(plan)]] == [name for name, _ in plan]
    assert any(line.startswith("quant size = ") for line in lines)
    # a dry run of a mix that needs an imatrix says so and succeeds, as llama-quantize does
    r = invoke("--dry-run", str(gqa), "IQ2_XXS")
    assert r.exit_code == 0 and "will require an importance matrix" in r.stdout, r.output


def test_keep_split_of_a_single_file_names_one_shard(gqa, tmp_path):
    r = invoke("-q", "--keep-split", str(gqa), str(tmp_path / "out.gguf"), "Q4_K_M")
    assert r.exit_code == 0, r.output
    shard = tmp_path / "out-00001-of-00001.gguf"
    assert [p.name for p in tmp_path.iterdir()] == [shard.name]
    # without split.* keys: one shard is the model itself, in the input's own tensor order
    names = [n for n, _, _ in tensor_infos(shard)]
    assert names == [t.name for t in SourceModel(gqa).tensors]
    assert "split.count" not in gguf.GGUFReader(shard).fields


def test_max_buffer_size_bounds_the_chunks_and_never_changes_bytes(tmp_path, monkeypatch):
    src = write_llama_model("gemma3", tmp_path / "g.gguf", rows_scale=64)  # token_embd: 640 x 4096
    seen = []
    original = NumpyBackend.quantize_chunks

    def spy(self, chunks, check_finite):
        def watched():
            for chunk in chunks:
                seen.append(chunk.rows * chunk.n_per_row * 4)  # the float32 it makes
                yield chunk
        return original(self, watched(), check_finite)

    monkeypatch.setattr(NumpyBackend, "quantize_chunks", spy)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert invoke("-q", str(src), str(a), "Q8_0").exit_code == 0
    big = max(seen)
    seen.clear()
    assert invoke("-q", "--max-buffer-size", "1", str(src), str(b), "Q8_0").exit_code == 0
    assert big > 4 << 20 and max(seen) <= 1 << 20
    assert a.read_bytes() == b.read_bytes()


def write_gguf(path, arch: str, keys: list[tuple], tensors) -> None:
    """A GGUF with gguf's own writer: (key, value, type[, item type]) entries, then (name, array) tensors."""
    w = gguf.GGUFWriter(path, arch=arch)
    for key, value, *types in keys:
        w.add_key_value(key, value, *types)
    for name, data in tensors:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensors_of(path) -> list[tuple[str, np.ndarray]]:
    return [(t.name, np.asarray(t.data)) for t in gguf.GGUFReader(path).tensors]


U32 = gguf.GGUFValueType.UINT32


def test_unknown_architecture_gets_llama_rules_with_a_warning(gqa, tmp_path):
    keys = [("mystery.block_count", 8, U32), ("mystery.attention.head_count", 8, U32),
            ("mystery.attention.head_count_kv", 2, U32)]
    write_gguf(tmp_path / "m.gguf", "mystery", keys, tensors_of(gqa))
    r = invoke(str(tmp_path / "m.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert "unknown to llama.cpp" in r.stderr
    types = {n: BY_ID[t].name for n, _, t in tensor_infos(tmp_path / "o.gguf")}
    assert types == dict(recorded("llama-gqa/F32: Q4_K_M 2")["plan"])


def test_missing_block_count_is_one_line(tmp_path):
    write_gguf(tmp_path / "m.gguf", "llama", [], [("token_embd.weight", np.zeros((4, 256), np.float32))])
    r = invoke(str(tmp_path / "m.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M")
    assert r.exit_code == 1 and r.output.strip() == "gpuquant: error: key not found in model: llama.block_count"
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("args,message", [
    (["--include-weights", "a", "--exclude-weights", "b"], "cannot be used together"),
    (["--tensor-type", "attn_q"], "malformed tensor type"),
    (["--tensor-type", "=q4_0"], "missing tensor name"),
    (["--tensor-type", "attn_q="], "missing quantization type"),
    (["--tensor-type", "attn_q=q9_9"], "invalid ggml_type"),
    (["--tensor-type", "(=q4_0"], "not a valid regular expression"),
    (["--output-tensor-type", "q8"], "invalid ggml_type"),
    (["--override-kv", "general.name"], "malformed KV override"),
    (["--override-kv", "a=long:3"], "invalid type for KV override"),
    (["--override-kv", "a=bool:yes"], "invalid boolean value"),
    (["--prune-layers", "1,x"], "invalid layer id"),
    (["--max-buffer-size", "0"], "invalid --max-buffer-size"),
    (["--tensor-type-file", "missing.txt"], "failed to open file"),
])
def test_bad_llama_options_are_one_line(gqa, tmp_path, args, message):
    out = tmp_path / "o.gguf"
    r = invoke(*args, str(gqa), str(out), "Q4_K_M")
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not out.exists()


def test_type_without_a_mix_on_a_llama_model(gqa, tmp_path):
    r = invoke("-mp", str(gqa), "-qp", str(tmp_path / "o.gguf"), "-qt", "NVFP4")
    assert r.exit_code == 1 and "llama.cpp has no mix for type NVFP4" in r.output
    # -qt with a ggml type that names a mix is that mix: Q8_0
    r = invoke("-q", "-mp", str(gqa), "-qp", str(tmp_path / "o.gguf"), "-qt", "8")
    assert r.exit_code == 0, r.output
    assert sha(tmp_path / "o.gguf") == recorded("llama-gqa/F32: Q8_0 2")["sha256"][0]


def test_a_mix_on_a_tts_model_uses_its_base_type_with_a_note(tmp_path):
    from gpuquant.synthetic import write_synthetic_model

    src = write_synthetic_model("kokoro", tmp_path / "k.gguf")
    r = invoke(str(src), str(tmp_path / "mix.gguf"), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert "base type Q4_K goes through TTS.cpp's rules" in r.stderr
    assert invoke("-q", "-mp", str(src), "-qp", str(tmp_path / "type.gguf"), "-qt", "Q4_K").exit_code == 0
    assert (tmp_path / "mix.gguf").read_bytes() == (tmp_path / "type.gguf").read_bytes()


def test_tensor_infos_agrees_with_gguf_reader(gqa):
    infos = tensor_infos(gqa)
    reader = gguf.GGUFReader(gqa)
    assert infos == [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type)) for t in reader.tensors]


def test_split_models_are_read_from_their_first_file(gqa, tmp_path):
    from llama_runs import write_split

    write_split(gqa, tmp_path / "m", 3)
    r = invoke(str(tmp_path / "m-00002-of-00003.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M")
    assert r.exit_code == 1 and "read from its first file" in r.output and len(r.output.strip().splitlines()) == 1
    (tmp_path / "m-00003-of-00003.gguf").unlink()
    r = invoke(str(tmp_path / "m-00001-of-00003.gguf"), str(tmp_path / "o.gguf"), "Q4_K_M")
    assert r.exit_code == 1 and "m-00003-of-00003.gguf: no such file" in r.output
    assert not (tmp_path / "o.gguf").exists()


def test_long_metadata_arrays_are_copied_as_they_are(gqa, tmp_path):
    keys = [(f.name, f.contents(), f.types[0]) for f in gguf.GGUFReader(gqa).fields.values()
            if not f.name.startswith("GGUF.") and f.name != "general.architecture"]
    tokens = ["", "ä", "<s>", "a b"] * 2000  # 8000 strings: kept encoded, never decoded
    scores = np.linspace(-1, 1, 8000, dtype=np.float32)
    keys += [("tokenizer.ggml.tokens", tokens, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING),
             ("tokenizer.ggml.scores", scores.tolist(), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)]
    write_gguf(tmp_path / "m.gguf", "llama", keys, tensors_of(gqa))
    assert invoke("-q", str(tmp_path / "m.gguf"), str(tmp_path / "o.gguf"), "Q8_0").exit_code == 0
    out = gguf.GGUFReader(tmp_path / "o.gguf")
    assert out.fields["tokenizer.ggml.tokens"].contents() == tokens
    assert np.array_equal(np.asarray(out.fields["tokenizer.ggml.scores"].contents(), np.float32), scores)

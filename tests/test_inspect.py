"""`gpuquant inspect` and `gpuquant diff` against independent readings of the files (gguf's reader)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from gpuquant.cli import main
from gpuquant.synthetic_llama import write_llama_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    src = write_llama_model("llama-gqa", d / "f32.gguf")
    out = {"f32": src}
    for mix in ("Q4_K_M", "Q8_0"):
        out[mix] = d / f"{mix}.gguf"
        assert CliRunner().invoke(main, ["quantize", "-q", str(src), str(out[mix]), mix]).exit_code == 0
    return out


def test_inspect_json_agrees_with_gguf_reader(files):
    r = CliRunner().invoke(main, ["inspect", "--json", "--tensors", str(files["Q4_K_M"])])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    reader = gguf.GGUFReader(files["Q4_K_M"])
    assert info["architecture"] == "llama" and info["file_type"] == 15 and info["file_type_name"] == "Q4_K_M"
    assert info["tensor_count"] == len(reader.tensors)
    assert [t["name"] for t in info["tensors"]] == [t.name for t in reader.tensors]
    assert [t["type"] for t in info["tensors"]] == [t.tensor_type.name for t in reader.tensors]
    nbytes = sum(int(t.n_bytes) for t in reader.tensors)
    elements = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert info["bytes"] == nbytes and info["bits_per_weight"] == pytest.approx(nbytes * 8 / elements)
    per_type = {}
    for t in reader.tensors:
        per_type[t.tensor_type.name] = per_type.get(t.tensor_type.name, 0) + int(t.n_bytes)
    assert {k: v["bytes"] for k, v in info["types"].items()} == per_type
    layer0 = sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith("blk.0."))
    assert info["layers"]["0"]["bytes"] == layer0


def test_inspect_table(files):
    r = CliRunner().invoke(main, ["inspect", str(files["Q8_0"])])
    assert r.exit_code == 0 and "general.file_type 7 (Q8_0)" in r.output and "bits/weight" in r.output


def test_diff_identical_and_different(files, tmp_path):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(files["Q4_K_M"].read_bytes())
    r = CliRunner().invoke(main, ["diff", str(files["Q4_K_M"]), str(copy)])
    assert r.exit_code == 0 and "are identical" in r.output
    r = CliRunner().invoke(main, ["diff", "--json", str(files["Q4_K_M"]), str(files["Q8_0"])])
    assert r.exit_code == 1
    d = json.loads(r.output)
    assert not d["identical"] and d["keys_changed"] == [{"key": "general.file_type", "a": 15, "b": 7}]
    a = {t.name: t for t in gguf.GGUFReader(files["Q4_K_M"]).tensors}
    b = {t.name: t for t in gguf.GGUFReader(files["Q8_0"]).tensors}
    for t in d["tensors"]:
        assert t["same_type"] == (a[t["name"]].tensor_type == b[t["name"]].tensor_type)
        assert t["same_bytes"] == (t["same_type"] and np.array_equal(np.asarray(a[t["name"]].data),
                                                                      np.asarray(b[t["name"]].data)))
    assert any(t["same_bytes"] for t in d["tensors"]) and any(not t["same_type"] for t in d["tensors"])


def test_diff_one_damaged_byte(files, tmp_path):
    data = bytearray(files["Q8_0"].read_bytes())
    data[-40] ^= 1  # inside the last tensor's data
    other = tmp_path / "other.gguf"
    other.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["diff", "--json", str(files["Q8_0"]), str(other)])
    d = json.loads(r.output)
    assert r.exit_code == 1 and [t["name"] for t in d["tensors"] if not t["same_bytes"]] == [
        gguf.GGUFReader(files["Q8_0"]).tensors[-1].name]


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"nope")
    for args in (["inspect", str(tmp_path / "x.gguf")], ["diff", str(tmp_path / "x.gguf"), str(tmp_path / "y")]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "error" in r.output

"""--imatrix through the file pipeline: entries matched by name, bytes equal to quantize(..., imatrix=...)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from test_imatrix import write_gguf, write_legacy
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant.cli import main


def tensors_out(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(7)
    tensors = kokoro_like(rng, n_per_row=512, rows=4)
    # a 3-D tensor (3 "experts" of 4 rows): one importance row per expert
    tensors["kokoro.albert.layer.0.k"] = (rng.standard_normal((3, 4, 512)) * 0.02).astype(np.float32)
    return write_tiny(tmp_path / "m.gguf", tensors), tensors


@pytest.mark.parametrize("fmt", ["gguf", "legacy"])
def test_weighted_bytes_and_metadata(model, tmp_path, fmt):
    src, tensors = model
    rng = np.random.default_rng(8)
    q_imp = rng.random(512).astype(np.float32)
    k_imp = rng.random((3, 512)).astype(np.float32)
    path = tmp_path / f"imatrix.{fmt}"
    if fmt == "gguf":
        write_gguf(path, [("kokoro.albert.layer.0.q", q_imp, [1]), ("kokoro.albert.layer.0.k", k_imp, [1, 1, 1])],
                   datasets=("calib.txt",), chunk_count=9)
    else:
        write_legacy(path, [("kokoro.albert.layer.0.q", 1, q_imp), ("kokoro.albert.layer.0.k", 1, k_imp)],
                     trailer=(9, "calib.txt"))
    dst = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(dst), "Q4_K", "--imatrix", str(path)])
    assert r.exit_code == 0, r.output
    assert "2 tensors weighted, 1 quantized without an entry" in r.output
    out = tensors_out(dst)
    q = np.asarray(out["kokoro.albert.layer.0.q"].data).reshape(4, -1)
    assert np.array_equal(q, gpuquant.quantize(tensors["kokoro.albert.layer.0.q"], "Q4_K", imatrix=q_imp))
    k = np.asarray(out["kokoro.albert.layer.0.k"].data).reshape(3, 4, -1)
    for e in range(3):
        assert np.array_equal(k[e], gpuquant.quantize(tensors["kokoro.albert.layer.0.k"][e], "Q4_K", imatrix=k_imp[e]))
    ffn = np.asarray(out["kokoro.albert.layer.0.ffn"].data).reshape(8, -1)  # no entry: unweighted
    assert np.array_equal(ffn, gpuquant.quantize(tensors["kokoro.albert.layer.0.ffn"], "Q4_K"))
    fields = gguf.GGUFReader(dst).fields
    assert fields["quantize.imatrix.file"].contents() == str(path)
    assert fields["quantize.imatrix.entries_count"].contents() == 2
    assert fields["quantize.imatrix.dataset"].contents() == "calib.txt"
    assert fields["quantize.imatrix.chunks_count"].contents() == 9


def test_wrong_length_entry_fails_before_any_output(model, tmp_path):
    src, _ = model
    path = tmp_path / "bad.dat"
    write_legacy(path, [("kokoro.albert.layer.0.q", 1, np.ones(256, np.float32))])
    dst = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(dst), "Q4_K", "--imatrix", str(path)])
    assert r.exit_code == 1 and "kokoro.albert.layer.0.q" in r.output and len(r.output.strip().splitlines()) == 1
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_unreadable_and_non_finite_imatrix(model, tmp_path):
    src, _ = model
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x01\x00")
    r = CliRunner().invoke(main, ["quantize", str(src), str(tmp_path / "o.gguf"), "--imatrix", str(junk)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    nan = tmp_path / "nan.dat"
    values = np.ones(512, np.float32)
    values[3] = np.nan
    write_legacy(nan, [("kokoro.albert.layer.0.q", 1, values)])
    r = CliRunner().invoke(main, ["quantize", str(src), str(tmp_path / "o.gguf"), "--imatrix", str(nan)])
    assert r.exit_code == 1 and "kokoro.albert.layer.0.q" in r.output
    assert not (tmp_path / "o.gguf").exists()


def test_type_that_requires_an_imatrix(model, tmp_path):
    src, tensors = model
    dst = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(dst), "IQ2_XXS", "--backend", "numpy"])
    assert r.exit_code == 1 and "requires an imatrix" in r.output and not dst.exists()
    rng = np.random.default_rng(9)
    entries = [(name, 1, rng.random(a.shape[0] * a.shape[-1] if a.ndim == 3 else a.shape[-1]).astype(np.float32))
               for name, a in tensors.items() if a.ndim >= 2]
    path = tmp_path / "all.dat"
    write_legacy(path, entries)
    r = CliRunner().invoke(main, ["quantize", str(src), str(dst), "IQ2_XXS", "--imatrix", str(path), "-q"])
    assert r.exit_code == 0, r.output
    out = tensors_out(dst)
    q_imp = entries[0][2] if entries[0][0] == "kokoro.albert.layer.0.q" else None
    assert q_imp is not None
    q = np.asarray(out["kokoro.albert.layer.0.q"].data).reshape(4, -1)
    assert out["kokoro.albert.layer.0.q"].tensor_type.name == "IQ2_XXS"
    assert np.array_equal(q, gpuquant.quantize(tensors["kokoro.albert.layer.0.q"], "IQ2_XXS", imatrix=q_imp))

"""Every public entry (array API, quantize_file, CLI) validates the same things the same way, with
one-line errors, and no NumPy warning is ever printed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant.cli import main
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import QTYPES

LATTICE = [n for n, t in QTYPES.items() if t.family == "lattice"]


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny.gguf", kokoro_like(np.random.default_rng(1)))


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_thread_counts_below_one_are_refused_everywhere(tiny, tmp_path, threads):
    with pytest.raises(ValueError, match="n_threads must be an integer of 1 or more"):
        gpuquant.quantize_file(tiny, tmp_path / "o.gguf", "Q4_0", options=RunOptions(n_threads=threads))
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0], ids=["nan", "inf", "negative"])
def test_bad_importances_are_refused_by_the_array_api(bad):
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    imatrix = np.ones(256, np.float32)
    imatrix[7] = bad
    for name in ("Q4_0", "Q4_K", "IQ2_XXS", "IQ4_NL"):
        with pytest.raises(ValueError, match="imatrix has (non-finite|negative) values"):
            gpuquant.quantize(x, name, imatrix=imatrix, backend="numpy")


@pytest.mark.parametrize("name", LATTICE)
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_lattice_types_refuse_non_finite_weights(name, bad):
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    x[1, 5] = bad
    imatrix = np.ones(256, np.float32)
    for backend in ("numpy", "auto"):
        with pytest.raises(ValueError, match=f"{name} cannot quantize NaN or Inf \\(row 1\\)"):
            gpuquant.quantize(x, name, imatrix=imatrix, backend=backend)


def test_no_numpy_warnings_on_extreme_inputs():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 512)) * np.float32(1e-39)).astype(np.float32)  # subnormal
    x[1] = rng.standard_normal(512).astype(np.float32) * np.float32(1e37)  # squares overflow to inf
    x[2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, t in QTYPES.items():
            if t.family == "lattice" or not (512 % t.block_size == 0):
                continue
            gpuquant.quantize(x, name, backend="numpy")


def _write_gguf_imatrix(path, entries):
    import gguf

    w = gguf.GGUFWriter(path, arch="imatrix")
    w.kv_data[0].clear()
    w.add_key_value("imatrix.datasets", ["d.txt"], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    w.add_uint32("imatrix.chunk_count", 3)
    w.add_uint32("imatrix.chunk_size", 512)
    for name, values in entries.items():
        w.add_tensor(f"{name}.in_sum2", values.reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.ones((1, 1), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_negative_importances_stop_the_cli(tiny, tmp_path):
    path = tmp_path / "neg.gguf"
    _write_gguf_imatrix(path, {"kokoro.albert.layer.0.q": -np.ones(256, np.float32)})
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), "Q4_K", "--imatrix", str(path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "negative values" in r.output
    assert not (tmp_path / "o.gguf").exists()


def test_an_imatrix_of_another_model_is_an_error_naming_the_file(tiny, tmp_path):
    path = tmp_path / "other.gguf"
    _write_gguf_imatrix(path, {"blk.0.attn_q.weight": np.ones(256, np.float32)})
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), "Q4_K", "--imatrix", str(path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert f"importance matrix {path} has no entry for any of the 2 tensors to quantize" in r.output
    assert not (tmp_path / "o.gguf").exists()


def test_an_imatrix_missing_some_tensors_says_how_many_once(tiny, tmp_path):
    path = tmp_path / "part.gguf"
    _write_gguf_imatrix(path, {"kokoro.albert.layer.0.q": np.ones(256, np.float32)})
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), "Q4_K", "--imatrix", str(path)])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "has no entry for 1 of the 2 tensors" in line]
    assert len(notes) == 1


def test_a_type_that_needs_an_imatrix_says_so_before_reading_tensors(tiny, tmp_path, monkeypatch):
    from gpuquant.gguf_io import SourceModel

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(SourceModel, "rows_as_float32", no_data)
    monkeypatch.setattr(SourceModel, "raw_bytes", no_data)
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), "IQ2_XXS"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "requires an imatrix (--imatrix)" in r.output


def test_an_imatrix_object_gets_the_same_checks(tiny, tmp_path):
    from gpuquant.imatrix import Imatrix

    bad = Imatrix("mine", {"kokoro.albert.layer.0.q": np.full(256, -1.0, np.float32)}, [], None, "gguf")
    with pytest.raises(ValueError, match="imatrix entry kokoro.albert.layer.0.q has negative values"):
        gpuquant.quantize_file(tiny, tmp_path / "o.gguf", "Q4_K", imatrix=bad)
    assert not (tmp_path / "o.gguf").exists()

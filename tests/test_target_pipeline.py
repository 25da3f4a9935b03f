"""--target-size and --target-bpw through the whole pipeline (gpuquant/size_search.py): the file fits,
the recipe reproduces it through llama-quantize's own grammar, pins are kept and counted, the
measurements are cached, and bad values are refused with one line before any output exists."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant import size_search
from gpuquant.backends.numpy_backend import NumpyBackend
from gpuquant.cli import main
from gpuquant.llama_cli import read_tensor_type_file
from gpuquant.model_plan import LlamaRequest
from gpuquant.outputs import RunOptions
from gpuquant.qtypes import QTYPES
from gpuquant.size_search import TargetRequest
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_llama_model("llama-gqa", tmp_path_factory.mktemp("target") / "llama-gqa-F32.gguf")


@pytest.fixture(scope="module")
def q4_k_m(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mix") / "q4_k_m.gguf"
    gpuquant.quantize_file(model, out, "Q4_K_M", options=RunOptions(backend="native", measure_error=False))
    return out


def invoke(*args: str):
    return CliRunner().invoke(main, ["quantize", "--backend", "native", "-q", *args])


def types_of(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_fits_the_budget_and_its_recipe_makes_the_same_file(model, q4_k_m, tmp_path):
    budget = q4_k_m.stat().st_size
    out, recipe = tmp_path / "target.gguf", tmp_path / "recipe.txt"
    r = invoke("--target-size", f"{budget}B", "--recipe-out", str(recipe), str(model), str(out), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert out.stat().st_size <= budget
    chosen = types_of(out)
    assert chosen != types_of(q4_k_m)  # the search chose something of its own
    assert len(set(chosen.values()) - {"F32"}) >= 2
    # llama-quantize's grammar: PATTERN=TYPE words, a header of words whose patterns match nothing
    words = recipe.read_text().split()
    assert words[0].startswith(size_search.RECIPE_HEADER) and "q4_k_m" in words[0]
    assert len(read_tensor_type_file(str(recipe))) == len(words)
    again = tmp_path / "from-recipe.gguf"
    r = invoke("--tensor-type-file", str(recipe), str(model), str(again), "Q4_K_M")
    assert r.exit_code == 0, r.output
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("objective", ["relative", "absolute"])
def test_summary_and_report_say_what_was_chosen(model, q4_k_m, tmp_path, objective):
    budget = q4_k_m.stat().st_size - 20_000
    summary = gpuquant.quantize_file(model, tmp_path / "o.gguf", "Q4_K_M",
                                     target_size=TargetRequest(size=budget, cache_dir=tmp_path / "cache",
                                                               objective=objective), reports=(tmp_path / "r.json",),
                                     options=RunOptions(backend="native"))
    choice = summary.target
    assert summary.target_actual_bytes == (tmp_path / "o.gguf").stat().st_size == choice.predicted_bytes
    assert choice.predicted_bytes <= budget == choice.budget
    assert choice.allocation.optimal
    chosen = [r for r in summary.records if r.reason == size_search.TARGET_REASON]
    assert len(chosen) == choice.measured == len(choice.types)
    assert all(choice.types[r.name].name == r.dst_type for r in chosen)
    text = summary.table()
    assert "target: file" in text and f"actual {choice.predicted_bytes} bytes" in text
    import json

    report = json.loads((tmp_path / "r.json").read_text())["target"]
    assert report["predicted"] == report["actual"] == choice.predicted_bytes and report["budget"] == budget
    assert sum(report["chosen"].values()) == choice.measured
    assert report["objective"] == size_search.OBJECTIVES[objective]
    # the allocation's total is the objective's sum over the chosen candidates
    terms = {"relative": lambda e: e["weighted_sq"] / e["weighted_sq_x"], "absolute": lambda e: e["weighted_sq"]}
    from gpuquant.gguf_io import SourceModel
    from gpuquant.mixes import find_mix
    from gpuquant.model_plan import plan_model

    source = SourceModel(model)
    try:
        plan = plan_model(source, find_mix("Q4_K_M"), None, LlamaRequest(), None)
        free = {e.name: e for e in size_search.free_entries(plan, LlamaRequest())}
        # output.weight makes the logits: it counts DEFAULT_OUTPUT_WEIGHT times; a layer's matrix its kind's
        request = size_search.TargetRequest(size=budget, objective=objective)
        weight = {"blk.0.attn_v.weight": size_search.KIND_WEIGHTS["attn_v"] if objective == "relative" else 1.0,
                  "output.weight": size_search.DEFAULT_OUTPUT_WEIGHT, "token_embd.weight": 1.0}
        for name in weight:
            assert size_search.tensor_weight(name, "output.weight", request) == weight[name]
        total = sum(terms[objective](size_search.measure(source, free[name], [t], None, 64, NumpyBackend())
                                     [t.name]["errors"])
                    * size_search.tensor_weight(name, "output.weight", request)
                    for name, t in choice.types.items())
    finally:
        source.close()
    assert choice.allocation.total_error == pytest.approx(total, rel=1e-9)


def test_a_second_size_reuses_the_measurements(model, q4_k_m, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    real = size_search.measure

    def counted(*args, **kwargs):
        calls.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(size_search, "measure", counted)
    size = q4_k_m.stat().st_size
    first = gpuquant.quantize_file(model, tmp_path / "a.gguf", "Q4_K_M",
                                   target_size=TargetRequest(size=size, cache_dir=cache),
                                       options=RunOptions(backend="native", measure_error=False))
    assert not first.target.cache_hit and len(calls) == first.target.measured
    calls.clear()
    second = gpuquant.quantize_file(model, tmp_path / "b.gguf", "Q4_K_M",
                                    target_size=TargetRequest(size=size * 3 // 4, cache_dir=cache),
                                        options=RunOptions(backend="native", measure_error=False))
    assert second.target.cache_hit and calls == []
    assert (tmp_path / "b.gguf").stat().st_size <= size * 3 // 4 < (tmp_path / "a.gguf").stat().st_size
    # another sample size, or the input rewritten: measured again
    third = gpuquant.quantize_file(model, tmp_path / "c.gguf", "Q4_K_M",
                                   target_size=TargetRequest(size=size, sample_rows=16, cache_dir=cache),
                                       options=RunOptions(backend="native", measure_error=False))
    assert not third.target.cache_hit and calls
    calls.clear()
    os.utime(model, ns=(os.stat(model).st_atime_ns, os.stat(model).st_mtime_ns + 1_000_000))
    fourth = gpuquant.quantize_file(model, tmp_path / "d.gguf", "Q4_K_M",
                                    target_size=TargetRequest(size=size, cache_dir=cache),
                                        options=RunOptions(backend="native", measure_error=False))
    assert not fourth.target.cache_hit and calls
    assert (tmp_path / "d.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()


def test_pins_are_kept_and_counted(model, q4_k_m, tmp_path):
    budget = q4_k_m.stat().st_size
    out = tmp_path / "pinned.gguf"
    r = invoke("--target-size", f"{budget}B", "--output-tensor-type", "q8_0", "--token-embedding-type", "q8_0",
               "--tensor-type", "attn_v=q6_k", str(model), str(out), "Q4_K_M")
    assert r.exit_code == 0, r.output
    types = types_of(out)
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert all(t == "Q6_K" for name, t in types.items() if "attn_v" in name)
    assert out.stat().st_size <= budget
    # the budget counts them: the same budget without the pins lets the other tensors have more
    free = tmp_path / "free.gguf"
    assert invoke("--target-size", f"{budget}B", str(model), str(free), "Q4_K_M").exit_code == 0
    assert free.stat().st_size <= budget


def test_target_bpw_counts_every_tensors_bits(model, tmp_path):
    out = tmp_path / "bpw.gguf"
    summary = gpuquant.quantize_file(model, out, "Q4_K_M",
                                     target_size=TargetRequest(bpw=5.0, cache_dir=tmp_path / "cache"),
                                         options=RunOptions(backend="native", measure_error=False))
    assert summary.bits_per_weight <= 5.0
    assert summary.target_actual_bytes == summary.bytes_out == summary.target.predicted_bytes


def test_with_an_imatrix_the_iq_types_are_candidates(model, tmp_path):
    imatrix = write_synthetic_imatrix(model, tmp_path / "imatrix.gguf")
    small = tmp_path / "small.gguf"
    out, recipe = tmp_path / "iq.gguf", tmp_path / "iq-recipe.txt"
    r = invoke("--imatrix", str(imatrix), str(model), str(small), "IQ2_M")
    assert r.exit_code == 0, r.output
    r = invoke("--imatrix", str(imatrix), "--target-size", f"{small.stat().st_size}B", "--recipe-out", str(recipe),
               str(model), str(out), "IQ2_M")
    assert r.exit_code == 0, r.output
    assert out.stat().st_size <= small.stat().st_size
    assert any(t.startswith("IQ") for t in types_of(out).values())
    again = tmp_path / "again.gguf"
    r = invoke("--imatrix", str(imatrix), "--tensor-type-file", str(recipe), str(model), str(again), "IQ2_M")
    assert r.exit_code == 0, r.output
    assert again.read_bytes() == out.read_bytes()


def test_dry_run_chooses_and_writes_nothing(model, q4_k_m, tmp_path):
    r = CliRunner().invoke(main, ["quantize", "--backend", "native", "--dry-run", "--target-size",
                                  f"{q4_k_m.stat().st_size}B", str(model), "Q4_K_M"])
    assert r.exit_code == 0, r.output
    assert "target: file" in r.output and size_search.TARGET_REASON in r.output
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]


@pytest.mark.parametrize("value, words", [
    ("-5G", "positive"), ("0B", "at least 1 byte"), ("123456", "give a unit"), ("7.5", "give a unit"),
    ("abcM", "expected a number"), ("10B", "smallest"), ("900T", "largest"),
])
def test_bad_sizes_are_one_line_errors(model, tmp_path, value, words):
    out = tmp_path / "o.gguf"
    line = one_line_error(invoke("--target-size", value, str(model), str(out), "Q4_K_M"))
    assert words in line
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (("--target-bpw", "0"), "above 0"),
    (("--target-bpw", "-1"), "above 0"),
    (("--target-bpw", "40"), "at most 32"),
    (("--target-bpw", "0.5"), "smallest"),
    (("--target-size", "1G", "--target-bpw", "4"), "cannot be used together"),
    (("--target-types", "Q4_K"), "goes with --target-size"),
    (("--target-size", "1M", "--target-types", "Q4_K,Q9_X"), "invalid ggml_type"),
    (("--target-size", "1M", "--target-sample", "0"), "1 row or more"),
    (("--target-objective", "absolute"), "goes with --target-size"),
])
def test_bad_target_options_are_one_line_errors(model, tmp_path, args, words):
    out = tmp_path / "o.gguf"
    line = one_line_error(invoke(*args, str(model), str(out), "Q4_K_M"))
    assert words in line
    assert not out.exists()


def test_a_tts_model_is_refused(tmp_path):
    tts = write_tiny(tmp_path / "tts.gguf", kokoro_like(np.random.default_rng(1), n_per_row=256, rows=8))
    line = one_line_error(invoke("--target-size", "1M", str(tts), str(tmp_path / "o.gguf"), "Q4_K_M"))
    assert "llama.cpp models" in line


def test_the_measurement_is_the_backends_round_trip(model):
    """A free tensor's error for a type is the sampled rows' squared error through that type, scaled
    to all rows: here every row, against the numpy backend's own quantize/dequantize."""
    from gpuquant.gguf_io import SourceModel
    from gpuquant.mixes import find_mix
    from gpuquant.model_plan import plan_model

    source = SourceModel(model)
    try:
        plan = plan_model(source, find_mix("Q4_K_M"), None, LlamaRequest(), None)
        e = next(e for e in size_search.free_entries(plan, LlamaRequest()) if e.name == "blk.0.attn_q.weight")
        types = [QTYPES["Q4_0"], QTYPES["Q4_K"]]
        got = size_search.measure(source, e, types, None, e.source.n_rows, NumpyBackend())
        x = source.stored_rows(e.source, 0, e.source.n_rows)
        for t in types:
            y = NumpyBackend().dequantize(NumpyBackend().quantize(x, t, None), t, e.source.n_per_row)
            want = float(((x.astype("float64") - y) ** 2).sum())
            assert got[t.name]["errors"]["sq"] == pytest.approx(want, rel=1e-5)
            assert got[t.name]["bytes"] == e.source.n_rows * t.row_bytes(e.source.n_per_row)
    finally:
        source.close()


def test_a_non_finite_weight_is_refused_before_the_search(tmp_path):
    tensors = {"token_embd.weight": np.ones((64, 256), np.float32), "output.weight": np.ones((64, 256), np.float32)}
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        tensors[f"blk.0.{name}.weight"] = np.full((64, 256), 0.5, np.float32)
    tensors["blk.0.attn_v.weight"][:, 3] = np.nan  # every row: the sample cannot miss it
    src = write_tiny(tmp_path / "nan.gguf", tensors, arch="llama", extra={"llama.block_count": 1})
    out = tmp_path / "o.gguf"
    line = one_line_error(invoke("--target-size", "100K", str(src), str(out), "Q4_K_M"))
    assert "blk.0.attn_v.weight" in line and "NaN or Inf" in line
    assert not out.exists()

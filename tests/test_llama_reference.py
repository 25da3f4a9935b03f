"""Whole files against llama-quantize: every recorded run (tests/data/llama_reference.json, made by
`benchmarks/llama_reference.py record` with llama.cpp 3aa0ce9's llama-quantize) replayed through
gpuquant's CLI, in llama-quantize's own command-line form. Each run compares the per-tensor types
(in file order) and the sha256 of every output file; a run llama-quantize refused must be refused
with its reason, leaving no output. A --target-size run is recorded as llama-quantize's file given
the recipe gpuquant wrote (--recipe-out as its --tensor-type-file): the replay must write that file
and that recipe again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from llama_runs import build_inputs, describe_outputs, output_files

from gpuquant.cli import main

RECORD = json.loads((Path(__file__).parent / "data" / "llama_reference.json").read_text())
RUNS = RECORD["runs"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama-runs")


def test_the_record_covers_what_the_suite_claims():
    layouts = {"llama-gqa", "llama-tied", "qwen3moe", "phi3", "falcon", "deepseek2", "gpt-oss", "gemma3"}
    assert {r["model"] for r in RUNS} == layouts | {"llama-70b-depth"}
    for model in layouts:
        names = {r["name"].split(": ", 1)[1] for r in RUNS if r["model"] == model and r["source"] == "F32"}
        for mix in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q3_K_M", "Q3_K_L", "Q2_K", "Q6_K", "IQ4_XS"):
            assert f"{mix} 2" in names
        for mix in ("IQ2_XXS", "IQ2_M", "IQ3_XXS", "IQ3_M", "Q2_K_S"):
            assert f"--imatrix {mix} 2 +imatrix" in names
        for option in ("--pure", "--leave-output-tensor", "--output-tensor-type", "--tensor-type", "--prune-layers",
                       "--override-kv"):
            assert any(n.startswith(option) for n in names), (model, option)


def _native_or_skip() -> None:
    from gpuquant.backends import native_backend

    be, why_not = native_backend(1)
    if be is None:
        pytest.skip(why_not)


# The GPU engine on the CUDA simulator (the real launchers and kernels/*.cu, streamed): a sample of
# runs that covers K-quants, lattice and IQ4 types, the legacy, float and MXFP4 ones, MoE experts,
# importance matrices, F16, BF16 and quantized sources, and per-tensor overrides.
SIMULATOR_RUNS = (
    "llama-gqa/F32: Q4_K_M 2",
    "llama-gqa/F32: --tensor-type attn_v=q8_0 --tensor-type ffn_.*=q5_k --tensor-type blk\\.1\\.=iq4_nl Q4_K_M 2",
    "llama-gqa/F16: Q4_K_M 2",
    "llama-gqa/BF16: F16 2",
    "llama-gqa/Q8_0: --allow-requantize Q4_K_M 2",
    "llama-gqa/F32: Q5_1 2",
    "llama-gqa/F32: TQ1_0 2",
    "qwen3moe/F32: --imatrix IQ2_M 2 +imatrix",
    "qwen3moe/F32: MXFP4_MOE 2",
    "gemma3/F32: --imatrix Q2_K_S 2 +imatrix",
    "gemma3/F32: --imatrix IQ3_XXS 2 +imatrix",
    "deepseek2/F32: IQ4_XS 2",
)
# A --target-size run measures every candidate type on every free tensor before it writes: on NumPy
# that takes 10-20 s with the IQ candidates, and the bytes of each type are the mixes' runs' to test
# there, so those runs replay on the native backend alone.
CASES = [pytest.param(run, backend, id=f"{run['name']}-{backend}")
         for run in RUNS for backend in ("numpy", "native", "cupy-simulator")
         if (backend != "cupy-simulator" or run["name"] in SIMULATOR_RUNS)
         and (backend == "native" or "--target-size" not in run["args"])]


def test_the_simulator_sample_is_recorded():
    assert set(SIMULATOR_RUNS) <= {r["name"] for r in RUNS}


# NumPy is the independent implementation; the native backend is the kernels' host build, and the
# CuPy backend on the simulator the kernels' device build: all must write the same whole files.
@pytest.mark.parametrize("run, backend", CASES)
def test_run_equals_llama_quantize(run, backend, work, monkeypatch):
    if backend == "native":
        _native_or_skip()
    if backend == "cupy-simulator":
        _native_or_skip()  # the simulator builds the kernels with the same C++ compiler
        monkeypatch.setenv("GPUQUANT_CUDA_SIM", "1")
        backend = "cupy"
    monkeypatch.chdir(work)  # the recorded runs name their files relative to their folder
    values = build_inputs(work, run)
    src = work / values["{model}"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == RECORD["inputs"][f"{run['model']}/{run['source']}"]
    out = work / "out.gguf"
    values["{out}"] = out.name
    args = [values.get(a, a) for a in run["args"]]
    result = CliRunner().invoke(main, ["quantize", "--backend", backend, "-q", *args])
    expected = run["expected"]
    files = output_files(out, run["files"])
    if "error" in expected:
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected["error"].rstrip("!.").lower() in lines[0].lower(), result.output
        assert not any(f.exists() for f in files)
        return
    assert result.exit_code == 0, result.output
    got = describe_outputs(files)
    assert got["plan"] == expected["plan"]
    assert got["sha256"] == expected["sha256"]
    if "recipe_sha256" in expected:  # --target-size: the recipe llama-quantize was given, made again
        recipe = work / values["{recipe}"]
        assert hashlib.sha256(recipe.read_bytes()).hexdigest() == expected["recipe_sha256"]
        recipe.unlink()
    for f in files:
        f.unlink()

"""`gpuquant publish`: many mixes from one read, each file the one `gpuquant quantize` writes for that
mix alone; manifests make an interrupted publish resume; bad input is refused in one line before any
tensor is read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import kokoro_like, write_tiny

from gpuquant import pipeline
from gpuquant.cli import main, publish_job_from_args
from gpuquant.publish import manifest_path, model_name
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix

MIXES = ("Q2_K", "Q4_K_S", "Q4_K_M", "Q6_K", "Q8_0")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_llama_model("llama-gqa", tmp_path_factory.mktemp("pub") / "llama-F16.gguf", dtype="F16")


def gpuquant(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_each_output_is_the_single_quantize_file(source, tmp_path):
    out = tmp_path / "out"
    r = gpuquant("publish", source, out, "--mixes", ",".join(MIXES[:3]), "--mix", MIXES[3], "--mix", MIXES[4],
                 "--target-size", "300K", "--backend", "native", "-nt", "2", "--report", "json",
                 "--leave-output-tensor", "--override-kv", "general.name=str:published")
    assert r.exit_code == 0, r.output
    assert model_name(source) == "llama"
    for mix in MIXES:
        alone = tmp_path / f"alone-{mix}.gguf"
        q = gpuquant("quantize", "--backend", "native", "-q", "--leave-output-tensor", "--override-kv",
                     "general.name=str:published", source, alone, mix)
        assert q.exit_code == 0, q.output
        assert (out / f"llama-{mix}.gguf").read_bytes() == alone.read_bytes(), mix
        report = json.loads((out / f"llama-{mix}.json").read_text())
        assert report["requested_type"] == mix and report["outputs"] == [str(out / f"llama-{mix}.gguf")]
        assert report["totals"]["rel_rmse"] > 0
    alone = tmp_path / "alone-300K.gguf"
    q = gpuquant("quantize", "--backend", "native", "-q", "--leave-output-tensor", "--override-kv",
                 "general.name=str:published", "--target-size", "300K", source, alone)
    assert q.exit_code == 0, q.output
    assert (out / "llama-300K.gguf").read_bytes() == alone.read_bytes()
    assert (out / "llama-300K.gguf").stat().st_size <= 300_000
    # the table across outputs, the model card and the plot
    assert "Q4_K_M" in r.output and "llama-Q8_0.gguf" in r.output
    card = (out / "llama-mixes.md").read_text()
    assert all(f"llama-{m}.gguf" in card for m in (*MIXES, "300K"))
    assert (out / "llama-error-vs-size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads(manifest_path(out / "llama-Q4_K_M.gguf").read_text())
    import hashlib

    assert manifest["files"] == [{"name": "llama-Q4_K_M.gguf", "bytes": (out / "llama-Q4_K_M.gguf").stat().st_size,
                                  "sha256": hashlib.sha256((out / "llama-Q4_K_M.gguf").read_bytes()).hexdigest()}]


def test_resume_skips_what_matches_its_manifest(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ("publish", source, out, "--mixes", "Q4_K_M,Q8_0,Q6_K", "--backend", "native", "-q")
    assert gpuquant(*args).exit_code == 0
    before = {m: (out / f"llama-{m}.gguf").read_bytes() for m in ("Q4_K_M", "Q8_0", "Q6_K")}
    # an interrupted publish: one output lost, one damaged; the third matches its manifest
    (out / "llama-Q8_0.gguf").unlink()
    damaged = bytearray(before["Q6_K"])
    damaged[-1] ^= 1
    (out / "llama-Q6_K.gguf").write_bytes(bytes(damaged))
    read = []
    original = pipeline.quantize_model

    def recording(src, outputs, options, imatrix=None):
        read.append([spec.label for spec in outputs])
        return original(src, outputs, options, imatrix)

    monkeypatch.setattr(pipeline, "quantize_model", recording)
    mtime = (out / "llama-Q4_K_M.gguf").stat().st_mtime_ns
    r = gpuquant(*args[:-1])
    assert r.exit_code == 0, r.output
    assert read == [["Q8_0", "Q6_K"]]
    assert "skipped" in r.output
    assert (out / "llama-Q4_K_M.gguf").stat().st_mtime_ns == mtime
    assert {m: (out / f"llama-{m}.gguf").read_bytes() for m in before} == before
    # all up to date: nothing is read; --force writes everything again
    read.clear()
    assert gpuquant(*args).exit_code == 0 and read == []
    assert gpuquant(*args, "--force").exit_code == 0 and read == [["Q4_K_M", "Q8_0", "Q6_K"]]
    # other options make other files: not skipped
    read.clear()
    assert gpuquant(*args, "--pure").exit_code == 0 and read == [["Q4_K_M", "Q8_0", "Q6_K"]]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_imatrix_mixes_and_tts_models(tmp_path):
    src = write_llama_model("qwen3moe", tmp_path / "moe-f32.gguf")
    imatrix = write_synthetic_imatrix(src, tmp_path / "moe.imatrix.gguf")
    r = gpuquant("publish", src, tmp_path / "o", "--mixes", "IQ2_XS,Q3_K_M", "--imatrix", imatrix,
                 "--backend", "native", "-q")
    assert r.exit_code == 0, r.output
    for mix in ("IQ2_XS", "Q3_K_M"):
        q = gpuquant("quantize", "--backend", "native", "-q", "--imatrix", imatrix, src, tmp_path / "a.gguf", mix)
        assert q.exit_code == 0
        assert (tmp_path / "o" / f"moe-{mix}.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()
    # a TTS.cpp model: the mixes mean TTS.cpp's types, with a note
    tts = write_tiny(tmp_path / "kokoro.gguf", kokoro_like(np.random.default_rng(2), 512, 24))
    r = gpuquant("publish", tts, tmp_path / "k", "--mix", "Q4_0", "--mix", "Q8_0", "-qe", "--backend", "native")
    assert r.exit_code == 0, r.output
    q = gpuquant("quantize", "-mp", tts, "-qp", tmp_path / "k.gguf", "-qt", "Q8_0", "-qe", "--backend", "native",
                 "-q")
    assert q.exit_code == 0
    assert (tmp_path / "k" / "kokoro-Q8_0.gguf").read_bytes() == (tmp_path / "k.gguf").read_bytes()


def test_bad_input_is_one_line_before_any_tensor_is_read(source, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(pipeline.SourceModel, "stored_rows", never)
    monkeypatch.setattr(pipeline.SourceModel, "raw_bytes", never)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = {
        "given twice": ("--mix", "Q4_K_M", "--mixes", "Q8_0,q4_k_m"),
        "is a file": ("--mix", "Q4_K_M"),
        "unknown": ("--mix", "Q9_K"),
        "requires an imatrix": ("--mix", "IQ2_XXS", "--mix", "Q8_0"),
        "nothing to publish": (),
        "not enough disk space": ("--mix", "Q4_K_M", "--mix", "Q8_0"),
    }
    for words, extra in cases.items():
        out = a_file if words == "is a file" else tmp_path / "o"
        if words == "not enough disk space":
            class Tiny:
                free = 10_000

            monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: Tiny())
        line = one_line_error(gpuquant("publish", source, out, "--backend", "native", *extra))
        assert words in line, (words, line)
        assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.gguf"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_outdir(source, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = one_line_error(gpuquant("publish", source, locked / "o", "--mix", "Q8_0"))
        assert "not writable" in line
    finally:
        locked.chmod(0o700)


def test_args_parse_as_the_command(source, tmp_path):
    job, run = publish_job_from_args([str(source), str(tmp_path), "--mix", "15", "--mixes", "Q8_0,Q6_K",
                                      "--target-bpw", "4.5", "--imatrix", "x.gguf", "--leave-output-tensor",
                                      "-nt", "3", "--backend", "numpy", "--no-error"])
    assert [e.label for e in job.entries] == ["Q4_K", "Q8_0", "Q6_K", "4.5bpw"]  # 15: as llama-quantize names it
    assert job.llama.leave_output_tensor and job.imatrix == Path("x.gguf")
    assert (run.n_threads, run.backend, run.measure_error) == (3, "numpy", False)
    with pytest.raises(ValueError, match="No such option"):
        publish_job_from_args([str(source), str(tmp_path), "--mix", "Q4_K_M", "--bogus"])


def test_dry_run_plans_every_output(source, tmp_path):
    r = gpuquant("publish", source, tmp_path / "o", "--mixes", "Q4_K_M,Q8_0", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "== Q4_K_M" in r.output and "== Q8_0" in r.output
    assert not (tmp_path / "o").exists()


def test_keep_split_outputs_resume_by_their_shards(source, tmp_path):
    out = tmp_path / "out"
    args = ("publish", source, out, "--mixes", "Q4_0,Q8_0", "--keep-split", "--backend", "native", "-q")
    assert gpuquant(*args).exit_code == 0
    shard = out / "llama-Q4_0-00001-of-00001.gguf"
    manifest = json.loads(manifest_path(out / "llama-Q4_0.gguf").read_text())
    assert [f["name"] for f in manifest["files"]] == [shard.name]
    q = gpuquant("quantize", "--backend", "native", "-q", "--keep-split", source, tmp_path / "alone.gguf", "Q4_0")
    assert q.exit_code == 0
    assert shard.read_bytes() == (tmp_path / "alone-00001-of-00001.gguf").read_bytes()
    r = gpuquant(*args[:-1])
    assert r.exit_code == 0 and r.output.count("skipped (up to date)") == 2, r.output
    damaged = bytearray(shard.read_bytes())
    damaged[-1] ^= 1
    shard.write_bytes(bytes(damaged))
    r = gpuquant(*args[:-1])
    assert r.exit_code == 0 and r.output.count("skipped (up to date)") == 1, r.output
    assert shard.read_bytes() == (tmp_path / "alone-00001-of-00001.gguf").read_bytes()


def test_an_interrupted_publish_leaves_nothing_and_resumes(source, tmp_path):
    """Stopped mid-run (Ctrl-C reaches the pipeline as KeyboardInterrupt): no output, manifest or
    partial file stays; the next run writes everything."""
    from gpuquant.outputs import RunOptions
    from gpuquant.publish import PublishEntry, PublishJob, publish

    out = tmp_path / "out"
    job = PublishJob(source, out, (PublishEntry("Q4_K_M", mix="Q4_K_M"), PublishEntry("Q8_0", mix="Q8_0")))
    seen = []

    def stop_halfway(n: int) -> None:
        seen.append(n)
        if sum(seen) > source.stat().st_size // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(job, RunOptions(backend="native", on_progress=stop_halfway))
    assert sorted(p.name for p in out.iterdir()) == []
    result = publish(job, RunOptions(backend="native"))
    assert [o.skipped for o in result.outputs] == [False, False]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".gguf") == ["llama-Q4_K_M.gguf", "llama-Q8_0.gguf"]

"""One source, N outputs (pipeline.quantize_model): every output's file is the one a run for it alone
writes, each distinct (tensor, type) pair is quantized and measured once, the source is made float32
once per chunk, and memory stays bounded by a few chunks per output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import kokoro_like, write_tiny

from gpuquant import pipeline
from gpuquant.backends import get_backend
from gpuquant.model_plan import LlamaRequest
from gpuquant.outputs import OutputSpec, RunOptions, TtsRequest
from gpuquant.pipeline import prepare_imatrix, quantize_file, quantize_model
from gpuquant.qtypes import QTYPES
from gpuquant.synthetic_llama import write_llama_model, write_synthetic_imatrix

MIXES = ["Q4_K_M", "Q4_K_S", "Q3_K_M", "Q2_K", "Q6_K", "Q8_0", "Q5_K_M", "F16"]


@pytest.fixture(scope="module")
def llama_f16(tmp_path_factory) -> Path:
    return write_llama_model("llama-gqa", tmp_path_factory.mktemp("multi") / "llama-F16.gguf", dtype="F16")


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("moe")
    src = write_llama_model("qwen3moe", folder / "moe-F32.gguf")
    return src, write_synthetic_imatrix(src, folder / "moe.imatrix.gguf")


class CountingBackend:
    """The real backend, with what the pipeline hands it counted: (tensor rows' identity, type) pairs
    per chunk, float32 conversions, and output buffers not yet handed back."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.chunk_types: list[tuple[int, str]] = []
        self.kept: list = []
        self.conversions = 0
        self.live = 0
        self.most_live = 0
        original = inner.chunk_as_float32

        def counted(chunk):
            self.conversions += 1
            return original(chunk)

        inner.chunk_as_float32 = counted

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def quantize_chunks(self, chunks, check_finite):
        def seen(stream):
            for chunk in stream:
                self.kept.append(chunk.data)  # alive, so that no two chunks' arrays share an id
                self.chunk_types.append((id(chunk.data), chunk.qtype.name))
                yield chunk

        for out in self.inner.quantize_chunks(seen(chunks), check_finite):
            self.live += 1
            self.most_live = max(self.most_live, self.live)
            release = out.release

            def counted_release(release=release):
                self.live -= 1
                release()

            out.release = counted_release
            yield out


def _counting(monkeypatch) -> list[CountingBackend]:
    made: list[CountingBackend] = []

    def wrapped(name="auto", n_threads=1, needed=()):
        be = CountingBackend(get_backend(name, n_threads=n_threads, needed=needed))
        made.append(be)
        return be

    monkeypatch.setattr(pipeline, "get_backend", wrapped)
    return made


def _singles(src, specs, options, imatrix=None):
    return [quantize_model(src, [spec], options, imatrix)[0] for spec in specs]


def test_every_output_is_the_single_run_file_and_pairs_run_once(llama_f16, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 64 << 10)  # several chunks a tensor
    options = RunOptions(backend="native", n_threads=2)
    many = [OutputSpec.make(tmp_path / f"many-{m}.gguf", m) for m in MIXES]
    made = _counting(monkeypatch)
    summaries = quantize_model(llama_f16, many, options)
    be = made[-1]
    # each chunk of stored rows went to the backend once per distinct type the outputs give its tensor
    plans = [{r.name: r.dst_type for r in s.records if r.dst_type != r.src_type} for s in summaries]
    names = [r.name for r in summaries[0].records]
    pairs = {(n, p[n]) for p in plans for n in names if n in p}
    per_chunk = {}
    for data_id, qtype in be.chunk_types:
        per_chunk.setdefault(data_id, []).append(qtype)
    assert sum(len(v) for v in per_chunk.values()) == len(be.chunk_types)
    assert all(len(v) == len(set(v)) for v in per_chunk.values())  # no type twice on the same rows
    types_per_tensor = {n: {p[n] for p in plans if n in p} for n in names}
    assert {q for v in per_chunk.values() for q in v} == {q for _, q in pairs}
    # the F16 rows are widened once per chunk, not once per type
    assert be.conversions == len(per_chunk)
    assert len(be.chunk_types) == sum(len(v) for v in per_chunk.values())
    assert len(be.chunk_types) > be.conversions  # the mixes do share tensors' chunks
    assert max(len(v) for v in types_per_tensor.values()) > 1
    # bounded: a few chunks per output waiting to be written, never the whole tensor stream
    assert be.live == 0 and 0 < be.most_live <= 4 * len(MIXES)

    singles = _singles(llama_f16, [OutputSpec.make(tmp_path / f"one-{m}.gguf", m) for m in MIXES], options)
    for m, a, b in zip(MIXES, summaries, singles, strict=True):
        assert (tmp_path / f"many-{m}.gguf").read_bytes() == (tmp_path / f"one-{m}.gguf").read_bytes(), m
        assert [r.error for r in a.records] == [r.error for r in b.records], m
        assert [r.dst_type for r in a.records] == [r.dst_type for r in b.records]
        assert a.outputs == [str(tmp_path / f"many-{m}.gguf")]


def test_per_expert_imatrix_and_options_apply_to_every_output(moe, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 32 << 10)
    src, imatrix_path = moe
    imatrix = prepare_imatrix(imatrix_path)
    request = LlamaRequest(leave_output_tensor=True, tensor_types=(("ffn_down", QTYPES["Q5_K"]),))
    options = RunOptions(backend="native", n_threads=2, report_sample=5)
    mixes = ["IQ2_XS", "Q4_K_M", "Q3_K_S", "IQ4_XS"]
    many = [OutputSpec.make(tmp_path / f"many-{m}.gguf", m, llama=request) for m in mixes]
    summaries = quantize_model(src, many, options, imatrix)
    singles = _singles(src, [OutputSpec.make(tmp_path / f"one-{m}.gguf", m, llama=request) for m in mixes],
                       options, imatrix)
    for m, a, b in zip(mixes, summaries, singles, strict=True):
        assert (tmp_path / f"many-{m}.gguf").read_bytes() == (tmp_path / f"one-{m}.gguf").read_bytes(), m
        assert [r.error for r in a.records] == [r.error for r in b.records], m
        assert any(r.imatrix_used for r in a.records)


def test_keep_split_outputs(llama_f16, tmp_path):
    """--keep-split with several outputs: each output's shard(s) as a run for it alone."""
    request = LlamaRequest(keep_split=True)
    options = RunOptions(backend="native", measure_error=False, digest=True)
    many = quantize_model(llama_f16, [OutputSpec.make(tmp_path / f"a-{m}.gguf", m, llama=request)
                                      for m in ("Q4_0", "Q8_0")], options)
    for m, s in zip(("Q4_0", "Q8_0"), many, strict=True):
        single = quantize_model(llama_f16, [OutputSpec.make(tmp_path / f"b-{m}.gguf", m, llama=request)],
                                options)[0]
        assert [Path(p).name for p in s.outputs] == [f"a-{m}-00001-of-00001.gguf"]
        assert Path(s.outputs[0]).read_bytes() == Path(single.outputs[0]).read_bytes()
        assert s.sha256 == single.sha256 and len(s.sha256[0]) == 64


def test_tts_model_outputs(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {k: (v.astype(np.float16) if v.ndim >= 2 else v) for k, v in kokoro_like(rng, 512, 24).items()}
    src = write_tiny(tmp_path / "kokoro.gguf", tensors)
    tts = TtsRequest(convert_non_quantized_to_f16=True, quantize_text_embeddings=True)
    options = RunOptions(backend="native")
    types = ["Q4_0", "Q5_1", "Q8_0"]
    quantize_model(src, [OutputSpec.make(tmp_path / f"m-{t}.gguf", t, tts=tts) for t in types], options)
    for t in types:
        quantize_file(src, tmp_path / f"s-{t}.gguf", t, tts=tts, options=options)
        assert (tmp_path / f"m-{t}.gguf").read_bytes() == (tmp_path / f"s-{t}.gguf").read_bytes(), t


def test_sha256_is_the_files(llama_f16, tmp_path):
    import hashlib

    s = quantize_file(llama_f16, tmp_path / "o.gguf", "Q4_K_M", options=RunOptions(backend="native", digest=True))
    assert s.sha256 == [hashlib.sha256((tmp_path / "o.gguf").read_bytes()).hexdigest()]


def test_refusals_before_any_output(llama_f16, tmp_path, monkeypatch):
    options = RunOptions(backend="native")
    same = [OutputSpec.make(tmp_path / "x.gguf", "Q4_0"), OutputSpec.make(tmp_path / "x.gguf", "Q8_0")]
    with pytest.raises(ValueError, match="given twice"):
        quantize_model(llama_f16, same, options)
    with pytest.raises(ValueError, match="no output"):
        quantize_model(llama_f16, [], options)

    class Tiny:
        free = 1000

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: Tiny())
    specs = [OutputSpec.make(tmp_path / f"d-{m}.gguf", m) for m in ("Q4_0", "Q8_0")]
    with pytest.raises(ValueError, match=r"not enough disk space in .* for the outputs: .* GB needed"):
        quantize_model(llama_f16, specs, options)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_each_source_byte_once(llama_f16, tmp_path):
    done: list[int] = []
    options = RunOptions(backend="native", on_progress=done.append)
    summaries = quantize_model(llama_f16, [OutputSpec.make(tmp_path / f"{m}.gguf", m) for m in ("Q4_K_M", "Q8_0")],
                               options)
    assert sum(done) == summaries[0].bytes_in == llama_f16.stat().st_size - _header_and_padding(llama_f16)
    assert len(done) >= len(summaries[0].records)


def _header_and_padding(path: Path) -> int:
    import gguf

    reader = gguf.GGUFReader(path)
    return path.stat().st_size - sum(int(t.n_bytes) for t in reader.tensors)

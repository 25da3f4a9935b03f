"""`gpuquant publish`: one model in many mixes from one read of the source.

A publish is one run of the file pipeline with N outputs (pipeline.quantize_model): the source is
read and made float32 once per chunk, each distinct (tensor, type) pair is quantized and measured
once and written to every output that needs it. Each output is OUTDIR/<model>-<LABEL>.gguf, byte for
byte what `gpuquant quantize` writes for that mix alone, with a manifest beside it
(<file>.manifest.json: size and sha256 taken while it was written, and what made it), so that a
publish that was interrupted resumes: an output whose file matches its manifest is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .model_plan import LlamaRequest
from .output_paths import file_sha256, write_text_atomic
from .outputs import OutputSpec, RunOptions, TtsRequest
from .size_search import TargetRequest
from .summary import Summary


@dataclass(frozen=True)
class PublishEntry:
    """One output of a publish: a mix (or ggml type) by name, or a size budget with its label."""

    label: str  # "Q4_K_M", or the budget as given: "4G", "4.5bpw"
    mix: str | None = None
    target: TargetRequest | None = None  # its base mix is DEFAULT_BASE unless `mix` is given


@dataclass(frozen=True)
class PublishJob:
    """One source and its outputs, with the options every output gets."""

    source: Path
    outdir: Path
    entries: tuple[PublishEntry, ...]
    llama: LlamaRequest = LlamaRequest()
    tts: TtsRequest = TtsRequest()
    imatrix: Path | None = None
    include_weights: tuple[str, ...] = ()
    exclude_weights: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()  # report kinds written beside each output: "json", "html"
    force: bool = False  # rewrite outputs whose manifest matches
    model_name: str | None = None  # None: the source's name less its float type ("llama-f16" -> "llama")


@dataclass
class PublishedOutput:
    label: str
    path: Path  # the output (the first shard with --keep-split)
    skipped: bool  # already there, matching its manifest
    bytes: int  # of the output's file(s)
    sha256: str
    figures: dict = field(default_factory=dict)  # publish_report.output_figures: kept in the manifest
    summary: Summary | None = None  # None when skipped


@dataclass
class PublishResult:
    job: PublishJob
    outputs: list[PublishedOutput] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0  # source bytes converted (0 when every output was skipped)
    table: str = ""  # the summary table across outputs (mix, size, bits per weight, error, worst tensor)
    card: Path | None = None  # the model card's Markdown table
    plot: Path | None = None  # error against size


def model_name(source: str | os.PathLike[str]) -> str:
    """The outputs' stem: the source file's name without .gguf, a shard suffix or a float type."""
    import re

    stem = Path(source).name
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    stem = re.sub(r"[-_.](f32|f16|bf16|fp16|fp32)$", "", stem, flags=re.IGNORECASE)
    return stem or "model"


MANIFEST_FORMAT = 1


def output_stem(job: PublishJob, entry: PublishEntry) -> Path:
    """OUTDIR/<model>-<LABEL>.gguf."""
    return job.outdir / f"{job.model_name or model_name(job.source)}-{entry.label}.gguf"


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def publish(job: PublishJob, options: RunOptions) -> PublishResult:
    """Write every entry of the job from one read of its source; outputs that match their manifest
    are skipped unless job.force. Raises ValueError (one line) before any tensor is read when the
    job cannot run, and leaves no partial output on any error."""
    from .pipeline import prepare_imatrix, quantize_model
    from .publish_report import model_card, output_figures, plot_error_vs_size, publish_table
    from .target_size import file_fingerprint

    start = time.perf_counter()
    _check_job(job)
    imatrix = prepare_imatrix(job.imatrix, job.include_weights, job.exclude_weights)
    if not options.dry_run:
        job.outdir.mkdir(parents=True, exist_ok=True)
    source_key = file_fingerprint(_source_paths(job.source))
    imatrix_key = file_fingerprint(job.imatrix) if job.imatrix is not None else None
    result = PublishResult(job)
    to_write: list[tuple[PublishEntry, OutputSpec, str]] = []
    done: dict[str, PublishedOutput] = {}
    for entry in job.entries:
        spec = _output_spec(job, entry)
        request_key = _request_key(source_key, imatrix_key, spec)
        found = None if job.force or options.dry_run else _up_to_date(entry.label, spec.path, request_key)
        if found is not None:
            done[entry.label] = found
        else:
            to_write.append((entry, spec, request_key))
    summaries = []
    if to_write:
        summaries = quantize_model(job.source, [spec for _, spec, _ in to_write], replace(options, digest=True),
                                   imatrix)
    written: dict[str, PublishedOutput] = {}
    for (entry, spec, request_key), summary in zip(to_write, summaries, strict=True):
        files = [Path(p) for p in summary.outputs]
        figures = output_figures(summary)
        out = PublishedOutput(entry.label, files[0] if files else spec.path, False,
                              sum(f.stat().st_size for f in files) if files else 0,
                              ",".join(summary.sha256), figures, summary)
        if not options.dry_run:
            _write_manifest(spec.path, files, summary.sha256, request_key, figures)
        written[entry.label] = out
    result.outputs = [done.get(e.label) or written[e.label] for e in job.entries]
    if summaries:
        result.bytes_read = summaries[0].bytes_in
    result.table = publish_table(result.outputs)
    if not options.dry_run:
        name = job.model_name or model_name(job.source)
        result.card = job.outdir / f"{name}-mixes.md"
        write_text_atomic(result.card, model_card(name, result.outputs))
        result.plot = plot_error_vs_size(result.outputs, job.outdir / f"{name}-error-vs-size.png",
                                         f"{name}: error against size")
    result.seconds = time.perf_counter() - start
    return result


def _source_paths(source: Path) -> list[Path]:
    from .gguf_io import SourceModel

    model = SourceModel(source)
    try:
        return list(model.paths)
    finally:
        model.close()


def _check_job(job: PublishJob) -> None:
    """The refusals that need no tensor: no entry, a label twice, an output folder that cannot be one."""
    if not job.entries:
        raise ValueError("nothing to publish: give at least one --mix or --target-size")
    seen: dict[str, str] = {}
    for entry in job.entries:
        key = entry.label.upper()
        if key in seen:
            raise ValueError(f"mix {entry.label} is given twice")
        seen[key] = entry.label
    outdir = job.outdir
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output folder {outdir} is a file")
    existing = next((p for p in (outdir, *outdir.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {outdir} is not writable")


def _output_spec(job: PublishJob, entry: PublishEntry) -> OutputSpec:
    from .size_search import DEFAULT_BASE

    stem = output_stem(job, entry)
    reports = tuple(stem.with_suffix(f".{kind}") for kind in job.reports)
    mix = entry.mix or (DEFAULT_BASE if entry.target is not None else entry.label)
    return OutputSpec.make(stem, mix, llama=job.llama, tts=job.tts, target=entry.target, reports=reports,
                           label=entry.label)


def _request_key(source_key: str | None, imatrix_key: str | None, spec: OutputSpec) -> str:
    """What made an output: its source and imatrix files and everything that plans it."""
    text = repr((MANIFEST_FORMAT, source_key, imatrix_key, spec.qtype.name, spec.llama, spec.tts,
                 None if spec.target is None else replace(spec.target, recipe_out=None, cache_dir=None)))
    return hashlib.sha256(text.encode()).hexdigest()


def _up_to_date(label: str, stem: Path, request_key: str) -> PublishedOutput | None:
    """The output as its manifest describes it, if its files are exactly that (size and sha256)."""
    try:
        manifest = json.loads(manifest_path(stem).read_text())
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("request") != request_key:
            return None
        files = [(stem.parent / f["name"], f["bytes"], f["sha256"]) for f in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for path, size, digest in files:
        if not path.is_file() or path.stat().st_size != size or file_sha256(path) != digest:
            return None
    return PublishedOutput(label, files[0][0], True, sum(size for _, size, _ in files),
                           ",".join(d for _, _, d in files), manifest.get("figures", {}))


def _write_manifest(stem: Path, files: list[Path], digests: list[str], request_key: str, figures: dict) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "request": request_key,
        "files": [{"name": f.name, "bytes": f.stat().st_size, "sha256": d}
                  for f, d in zip(files, digests, strict=True)],
        "figures": figures,
    }
    write_text_atomic(manifest_path(stem), json.dumps(manifest, indent=1) + "\n")



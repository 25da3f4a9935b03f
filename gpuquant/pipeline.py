"""The file job: plan every tensor, then stream each one from the mapped input through a backend
into the output, in row chunks, with progress and a summary."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .backends import Chunk, NonFiniteError, get_backend
from .gguf_io import (
    AtomicGGUFWriter,
    MetadataEntry,
    PlannedTensor,
    SourceModel,
    WriteBehind,
    header_bytes,
    padded,
)
from .imatrix import Imatrix, check_importances, load_imatrix, select_entries, weights_for
from .mixes import Mix
from .model_plan import LlamaRequest, ModelPlan, PlannedEntry, plan_model
from .output_paths import check_new_file, same_file
from .outputs import OutputSpec, RunOptions, TtsRequest
from .plan import Decision
from .progress import Progress
from .qtypes import QType
from .quant_error import ErrorSums, exact_figures, sample_rows
from .report import check_report_path, write_report
from .size_search import TARGET_REASON, TargetChoice, TargetRequest, choose, write_recipe
from .summary import Summary, TensorRecord

# float32 input per chunk: big enough to amortize per-call overhead, small enough to bound memory
CHUNK_BYTES = 32 << 20


def _check_output_path(src: Path, dst: Path) -> None:
    """Refuse an output that cannot be written before any work is done."""
    if same_file(src, dst):
        raise ValueError(f"output path {dst} is the input file; choose another")
    check_new_file(dst, "output")


def prepare_imatrix(imatrix: str | os.PathLike[str] | Imatrix | None, include_weights: tuple[str, ...] = (),
                    exclude_weights: tuple[str, ...] = ()) -> Imatrix | None:
    """An importance matrix loaded (a llama.cpp GGUF or legacy .dat file) or checked (a caller's own),
    with --include-weights/--exclude-weights applied."""
    if include_weights and exclude_weights:
        raise ValueError("--include-weights and --exclude-weights cannot be used together")
    if imatrix is None:
        return None
    if not isinstance(imatrix, Imatrix):
        imatrix = load_imatrix(imatrix)
    else:  # a caller's own Imatrix: the checks a loaded file gets
        for name, values in imatrix.entries.items():
            check_importances(np.asarray(values), f"imatrix entry {name}")
    return select_entries(imatrix, include_weights, exclude_weights)


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    qtype: str | int | QType | Mix = "Q4_0",
    *,
    llama: LlamaRequest | None = None,
    tts: TtsRequest | None = None,
    target_size: TargetRequest | None = None,
    reports: tuple[str | os.PathLike[str], ...] = (),
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    include_weights: tuple[str, ...] = (),
    exclude_weights: tuple[str, ...] = (),
    options: RunOptions | None = None,
) -> Summary:
    """Quantize a GGUF file (quantize_model with one output); raises ValueError (one-line message) on
    bad input, leaving no output.

    `qtype` is a ggml type (TTS.cpp's form: a name or a ggml id) or a llama-quantize mix (Q4_K_M, a
    Mix); `llama` holds llama-quantize's options for llama.cpp models, `tts` TTS.cpp's for its models.
    `imatrix` is a llama.cpp importance-matrix file (GGUF or legacy .dat) or a loaded Imatrix. With
    `target_size` (--target-size / --target-bpw, gpuquant.size_search) each quantized tensor's type
    is chosen to fit the budget with the least error; `qtype` is then the base mix. `reports` are
    .json or .html paths written after the output (gpuquant.report). `options`: how the run works
    (backend, threads, error measurement, dry run: then `dst` may be None).
    """
    output = OutputSpec.make(dst, qtype, llama=llama, tts=tts, target=target_size, reports=reports)
    matrix = prepare_imatrix(imatrix, include_weights, exclude_weights)
    return quantize_model(src, [output], options or RunOptions(), matrix)[0]


@dataclass
class _OutputRun:
    """One output while the run writes it."""

    spec: OutputSpec
    plan: ModelPlan
    summary: Summary
    choice: TargetChoice | None = None
    weights: list[np.ndarray | None] = field(default_factory=list)
    records: list[TensorRecord] = field(default_factory=list)
    shards: list = field(default_factory=list)  # (path, metadata, planned tensors) per file
    shard_of: list[int] = field(default_factory=list)  # entry index -> its file (_output_shards' order)


def quantize_model(src: str | os.PathLike[str], outputs: Sequence[OutputSpec], options: RunOptions,
                   imatrix: Imatrix | None = None) -> list[Summary]:
    """One source, N outputs: each output's file is the one a run for it alone writes.

    The source is read (and made float32 by the backend) once per chunk; each distinct (tensor, type)
    pair of the outputs is quantized, and its error measured, once, then written to every output
    that has it. Memory stays bounded by a few chunks per output. Every refusal is raised before
    any tensor is read; on any error no output is left. `imatrix` comes from prepare_imatrix.
    """
    src = Path(src)
    options.check()
    if not outputs:
        raise ValueError("no output to write")
    _check_outputs(src, outputs, options)
    model = SourceModel(src)
    try:
        runs = _plan_outputs(model, outputs, options, imatrix)
        _run(model, runs, options, imatrix)
    finally:
        model.close()
    summaries = []
    for run in runs:
        summary, choice = run.summary, run.choice
        if choice is not None:
            summary.target = choice
            summary.target_actual_bytes = _actual_bytes(summary, choice)
            if run.spec.target.recipe_out is not None:
                write_recipe(run.spec.target.recipe_out, choice.request, run.plan.requested)
                summary.recipe = str(run.spec.target.recipe_out)
        for path in run.spec.reports:
            write_report(summary, path)
            summary.reports.append(str(path))
        summaries.append(summary)
    return summaries


def _check_outputs(src: Path, outputs: Sequence[OutputSpec], options: RunOptions) -> None:
    seen: set[Path] = set()
    for spec in outputs:
        if not options.dry_run:
            if spec.path is None:
                raise ValueError("missing the output path")
            _check_output_path(src, spec.path)
            key = spec.path.resolve()
            if key in seen:
                raise ValueError(f"output path {spec.path} is given twice")
            seen.add(key)
        for p in spec.reports:
            check_report_path(p, src, spec.path)


def _plan_outputs(model: SourceModel, outputs: Sequence[OutputSpec], options: RunOptions,
                  imatrix: Imatrix | None) -> list[_OutputRun]:
    """Every output's plan and empty summary. A size search reads sample rows: before any does, every
    output's base plan is checked, so that a refusal comes before any tensor is read."""
    plans = [plan_model(model, spec.qtype, spec.tts.plan_options(spec.base_type), spec.llama, imatrix)
             for spec in outputs]
    searched = [spec.target is not None for spec in outputs]
    if any(searched):
        needed = {e.decision.qtype for plan in plans for e in plan.entries if e.decision.qtype != e.source.qtype}
        be = get_backend(options.backend, n_threads=options.n_threads, needed=needed)
        for plan in plans:
            _check_plan(plan, be, imatrix, options.allow_requantize, options.dry_run)
    runs = []
    for spec, plan in zip(outputs, plans, strict=True):
        llama, choice = spec.llama, None
        if spec.target is not None:
            searcher = get_backend(options.backend, n_threads=options.n_threads,
                                   needed=spec.target.candidate_types(imatrix is not None))
            shards = _output_shards(plan, spec.path or Path("dry-run.gguf"), llama)
            choice = choose(model, plan, llama, spec.target, imatrix, searcher, shards)
            llama = choice.request
            plan = plan_model(model, spec.qtype, spec.tts.plan_options(spec.base_type), llama, imatrix)
            _label_choice(plan, choice)
        dst = str(spec.path) if spec.path is not None and not options.dry_run else "(dry run)"
        summary = Summary(str(model.path), dst, plan.requested, plan.architecture, "", options.n_threads)
        run = _OutputRun(spec, plan, summary, choice)
        if not options.dry_run:
            run.shards = _output_shards(plan, spec.path, llama)
            run.shard_of = [e.source.split if llama.keep_split else 0 for e in plan.entries]
        runs.append(run)
    return runs


def _run(model: SourceModel, runs: list[_OutputRun], options: RunOptions, imatrix: Imatrix | None) -> None:
    start = time.perf_counter()
    needed = {e.decision.qtype for run in runs for e in run.plan.entries if e.decision.qtype != e.source.qtype}
    be = get_backend(options.backend, n_threads=options.n_threads, needed=needed)
    measure = options.measure_error and not options.dry_run
    for run in runs:
        run.weights = _check_plan(run.plan, be, imatrix, options.allow_requantize, options.dry_run)
        _start_summary(run, be, options, imatrix)
    if options.dry_run:
        for run in runs:
            run.summary.records = run.records
            run.summary.seconds = time.perf_counter() - start
        return
    entries = runs[0].plan.entries
    for run in runs[1:]:  # the same source and options: the same tensors, only their types differ
        if [e.name for e in run.plan.entries] != [e.name for e in entries]:
            raise RuntimeError(f"outputs {runs[0].spec.label} and {run.spec.label} plan different tensors")
    _check_disk_space(runs, model.alignment)
    works = [_TensorWork.of(i, runs, options, measure) for i in range(len(entries))]
    total = sum(e.source.n_bytes for e in entries)
    report = Progress(total, len(entries)) if options.progress else None
    for run in runs:
        _note_plan_warnings(run.plan, run.summary, None)
    if report:  # each warning once, with the outputs it is about when not all of them
        said: dict[str, list[str]] = {}
        for run in runs:
            for message in run.summary.warnings:
                said.setdefault(message, []).append(run.spec.label)
        for message, labels in said.items():
            report.warn(message if len(labels) == len(runs) else f"{', '.join(labels)}: {message}")

    def chunks():
        for work in works:
            yield from work.chunks(model)

    outputs = be.quantize_chunks(chunks(), check_finite=True)
    try:
        with ExitStack() as stack:
            writers = []
            for run in runs:
                files = [stack.enter_context(AtomicGGUFWriter(path, metadata, planned, model.alignment,
                                                              digest=options.digest))
                         for path, metadata, planned in run.shards]
                behind = [WriteBehind(f, depth=3) for f in files]  # the GPU engine lends 4 outputs at once
                for w in behind:
                    stack.callback(w.close)
                writers.append((files, behind))
            for work in works:
                e = work.entry
                if report:
                    report.tensor_started(work.index, e.name, e.source.qtype.name,
                                          ",".join(g.qtype.name for g in work.groups) or e.source.qtype.name)
                targets = [[writers[k][1][runs[k].shard_of[work.index]] for k in g.outputs] for g in work.groups]
                copies = [writers[k][1][runs[k].shard_of[work.index]] for k in work.copies]
                work.write(model, outputs, targets, copies, chunk_bytes(options), _Advance(report, options))
                for k, run in enumerate(runs):
                    record = run.records[work.index]
                    if measure:
                        record.error = work.figures(k)
                    run.summary.records.append(record)
            for _, behind in writers:
                for w in behind:
                    w.drain()
            for files, _ in writers:
                for f in files:
                    f.commit()
    finally:
        outputs.close()  # stops a backend working ahead (GPU streams, staging threads)
        if report:
            report.close()
    seconds = time.perf_counter() - start
    for run, (files, _) in zip(runs, writers, strict=True):
        run.summary.outputs = [str(path) for path, _, _ in run.shards]
        run.summary.sha256 = [f.sha256 for f in files] if options.digest else []
        run.summary.seconds = seconds
        for note in be.notes:  # what the backend found out while running
            run.summary.warnings.append(note)
            if report and run is runs[0]:
                report.warn(note)


def _check_disk_space(runs: list[_OutputRun], alignment: int) -> None:
    """All the outputs together must fit their file systems' free space: said before any tensor is read."""
    needed: dict[int, tuple[Path, int]] = {}
    for run in runs:
        for path, metadata, planned in run.shards:
            folder = Path(path).parent
            size = header_bytes(metadata, planned, alignment) + sum(padded(p.n_bytes, alignment) for p in planned)
            device = os.stat(folder).st_dev
            where, total = needed.get(device, (folder, 0))
            needed[device] = (where, total + size)
    for folder, total in needed.values():
        free = shutil.disk_usage(folder).free
        if total > free:
            what = "the outputs" if len(runs) > 1 else "the output"
            raise ValueError(f"not enough disk space in {folder} for {what}: {total / 1e9:.2f} GB needed, "
                             f"{free / 1e9:.2f} GB free")


def _start_summary(run: _OutputRun, be, options: RunOptions, imatrix: Imatrix | None) -> None:
    summary, plan = run.summary, run.plan
    summary.backend = be.name
    summary.family = plan.family
    summary.backend_reason = be.reason
    summary.backend_description = be.description
    summary.dry_run = options.dry_run
    summary.report_sample = options.report_sample if options.measure_error else None
    summary.error_measured = options.measure_error and not options.dry_run
    if imatrix is not None:
        summary.imatrix_file = imatrix.path
    entries = plan.entries
    if options.dry_run and imatrix is None and any(e.requires_imatrix and e.decision.qtype != e.source.qtype
                                                   for e in entries):
        plan.notes.append("dry run completed, but this quantization will require an importance matrix (--imatrix)")
    run.records = [
        TensorRecord(
            e.name, e.source.qtype.name, e.decision.qtype.name, e.source.n_elements, e.source.n_bytes,
            _output_bytes(e), e.decision.reason,
            e.decision.fallback_from.name if e.decision.fallback_from else None,
            imatrix_used=w is not None, shape=tuple(e.source.shape_gguf),
        )
        for e, w in zip(entries, run.weights, strict=True)
    ]
    if options.dry_run:
        _note_plan_warnings(plan, summary, None)


class _Advance:
    """Counts source bytes done, for the progress line and a caller's on_progress."""

    def __init__(self, report: Progress | None, options: RunOptions) -> None:
        self.report, self.hook = report, options.on_progress

    def __call__(self, n_bytes: int) -> None:
        if self.report:
            self.report.advance(n_bytes)
        if self.hook:
            self.hook(n_bytes)


@dataclass
class _TypeGroup:
    """The outputs that store one tensor as one type: its chunks are quantized once for all of them."""

    qtype: QType
    weights: np.ndarray | None
    outputs: list[int]
    sums: ErrorSums | None = None


@dataclass
class _TensorWork:
    """One source tensor across the outputs: its type groups, and the outputs that copy it."""

    index: int
    entry: PlannedEntry
    groups: list[_TypeGroup]
    copies: list[int]
    ranges: list[tuple[int, int, int]]  # (first row, last row + 1, expert): the chunks, shared by the groups
    sample: np.ndarray | None
    measure: bool

    @classmethod
    def of(cls, index: int, runs: list[_OutputRun], options: RunOptions, measure: bool) -> _TensorWork:
        entry = runs[0].plan.entries[index]
        groups: dict[QType, _TypeGroup] = {}
        copies = []
        for k, run in enumerate(runs):
            e = run.plan.entries[index]
            if e.decision.qtype == e.source.qtype:
                copies.append(k)
            elif e.decision.qtype in groups:
                groups[e.decision.qtype].outputs.append(k)
            else:
                groups[e.decision.qtype] = _TypeGroup(e.decision.qtype, run.weights[index], [k])
        t = entry.source
        per_expert = next((g.weights for g in groups.values() if g.weights is not None and g.weights.ndim == 2), None)
        ranges = list(row_ranges(t, per_expert, chunk_bytes(options)))
        sample = sample_rows(entry.name, t.n_rows, options.report_sample) if measure else None
        return cls(index, entry, list(groups.values()), copies, ranges, sample, measure)

    def _chunk_weights(self, group: _TypeGroup, expert: int) -> np.ndarray | None:
        w = group.weights
        return w[expert] if w is not None and w.ndim == 2 else w

    def chunks(self, model: SourceModel):
        """Each row range's stored rows read once and handed to the backend once per type (a host
        backend makes float32 of them once: Chunk's `data` is the same array)."""
        t = self.entry.source
        for r0, r1, expert in self.ranges:
            data = model.stored_rows(t, r0, r1)
            local = None if self.sample is None else self.sample[(self.sample >= r0) & (self.sample < r1)] - r0
            for g in self.groups:
                yield Chunk(data, g.qtype, self._chunk_weights(g, expert), t.qtype, self.measure, local)

    def write(self, model: SourceModel, outputs, targets, copies, chunk_bytes: int, advance: _Advance) -> None:
        """Writes this tensor to every output: copies as they are stored, each group's chunks in order.
        A buffer goes back (and the source pages are dropped) once every output has written it."""
        t = self.entry.source
        if copies:
            for a in range(0, t.n_bytes, chunk_bytes):
                b = min(t.n_bytes, a + chunk_bytes)
                data = model.raw_bytes(t, a, b)
                done = _AfterAll(len(copies), partial(model.release, t, a, b))
                for w in copies:
                    w.write(data, done)
            if not self.groups:
                advance(t.n_bytes)
                return
        row_bytes = t.n_bytes // t.n_rows
        for g in self.groups:
            g.sums = ErrorSums(weighted=g.weights is not None) if self.measure else None
        for r0, r1, _ in self.ranges:
            # the source pages go once every group's output of this range is written everywhere
            source_done = _AfterAll(sum(len(g.outputs) for g in self.groups),
                                    partial(model.release, t, r0 * row_bytes, r1 * row_bytes))
            for g, writers in zip(self.groups, targets, strict=True):
                try:
                    out = next(outputs)
                except NonFiniteError as err:
                    raise ValueError(
                        f"tensor {self.entry.name}: NaN or Inf weight in row {r0 + err.row}; refusing to quantize it"
                    ) from None
                if g.sums is not None and out.error is not None:
                    g.sums.add(out.error)
                done = _AfterAll(len(writers), out.release)
                for w in writers:
                    w.write(out.q, _Both(done, source_done))
            advance((r1 - r0) * row_bytes)

    def figures(self, k: int):
        """Output k's error figures for this tensor: exact when copied, its group's otherwise."""
        t = self.entry.source
        if k in self.copies:
            return exact_figures(t.n_rows)
        group = next(g for g in self.groups if k in g.outputs)
        return group.sums.figures(t.n_rows) if group.sums is not None else None


class _AfterAll:
    """Runs `then` on the n-th call: a buffer shared by n writes is handed back after the last."""

    def __init__(self, n: int, then) -> None:
        self._left, self._then = n, then
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._then()


class _Both:
    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def __call__(self) -> None:
        self.first()
        self.second()


def _label_choice(plan: ModelPlan, choice: TargetChoice) -> None:
    """The chosen tensors' reason says so; the planner must have given each the type chosen."""
    for e in plan.entries:
        chosen = choice.types.get(e.name)
        if chosen is None:
            continue
        if e.decision.qtype != chosen:  # the patterns are exact names: only a bug gets here
            raise RuntimeError(f"tensor {e.name}: planned as {e.decision.qtype.name}, chosen {chosen.name}")
        e.decision = Decision(chosen, TARGET_REASON)


def _actual_bytes(summary: Summary, choice: TargetChoice) -> int:
    """What the choice is judged by: the output files' bytes, or all tensors' data (--target-bpw)."""
    if choice.by_bpw or summary.dry_run:
        return summary.bytes_out if choice.by_bpw else choice.predicted_bytes
    return sum(Path(p).stat().st_size for p in summary.outputs)


def _output_bytes(e: PlannedEntry) -> int:
    return e.source.n_rows * e.decision.qtype.row_bytes(e.source.n_per_row)


def ggml_shape(shape_gguf: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ggml writes (ggml_n_dims): trailing dimensions of 1 dropped, at least one kept."""
    n = len(shape_gguf)
    while n > 1 and shape_gguf[n - 1] == 1:
        n -= 1
    return tuple(shape_gguf[: max(n, 1)])


def _output_shards(plan: ModelPlan, dst: Path, request: LlamaRequest):
    """(path, metadata, tensors) per output file: one, or with --keep-split one per input shard."""
    planned = [
        PlannedTensor(e.name, tuple(reversed(ggml_shape(e.source.shape_gguf))), e.decision.qtype, _output_bytes(e))
        for e in plan.entries
    ]
    if not request.keep_split:
        return [(dst, plan.metadata, planned)]
    from gguf import GGUFValueType

    # llama-quantize names even a single shard PREFIX-00001-of-00001.gguf, and strips ".gguf"
    text = str(dst)
    prefix = Path(text[:-5] if ".gguf" in text else text)
    n_split = 1 + max((e.source.split for e in plan.entries), default=0)
    shards = []
    for i in range(n_split):
        metadata = list(plan.metadata) if i == 0 else []  # later shards start from an empty context
        if n_split > 1:
            metadata += [
                MetadataEntry("split.no", i, GGUFValueType.UINT16, None),
                MetadataEntry("split.count", n_split, GGUFValueType.UINT16, None),
                MetadataEntry("split.tensors.count", len(planned), GGUFValueType.INT32, None),
            ]
        shard = [p for p, e in zip(planned, plan.entries, strict=True) if e.source.split == i]
        shards.append((split_path(prefix, i, n_split), metadata, shard))
    return shards


def split_path(prefix: Path, index: int, count: int) -> Path:
    """llama_split_path: PREFIX-0000i-of-0000n.gguf (1-based)."""
    return prefix.with_name(f"{prefix.name}-{index + 1:05d}-of-{count:05d}.gguf")


def _check_plan(plan: ModelPlan, be, imatrix, allow_requantize: bool, dry_run: bool) -> list[np.ndarray | None]:
    """Every tensor's importance weights, with every refusal raised before any output exists."""
    weights: list[np.ndarray | None] = []
    for e in plan.entries:
        t, d = e.source, e.decision
        w = None
        if d.qtype != t.qtype:
            if not t.qtype.is_float and not allow_requantize and not dry_run:
                raise ValueError(
                    f"tensor {e.name} is {t.qtype.name}: requantizing is disabled (add --allow-requantize)"
                )
            if not be.supports(d.qtype):
                raise ValueError(f"type {d.qtype.name} is not supported yet by the {be.name} backend")
            if not t.qtype.is_float and not be.supports(t.qtype):
                raise ValueError(f"tensor {e.name}: cannot dequantize its type {t.qtype.name}")
            if imatrix is not None and not d.qtype.is_float:
                w = weights_for(imatrix, e.imatrix_name, t.shape_gguf)
            if w is None and e.requires_imatrix and not dry_run:
                if imatrix is None:
                    raise ValueError(
                        f"this quantization requires an imatrix (--imatrix): tensor {e.name} "
                        f"is planned as {d.qtype.name}"
                    )
                raise ValueError(f"tensor {e.name}: type {d.qtype.name} requires an importance matrix entry")
        weights.append(w)
    if imatrix is not None:
        _check_imatrix_coverage(plan, weights, imatrix)
    return weights


def _check_imatrix_coverage(plan: ModelPlan, weights, imatrix: Imatrix) -> None:
    """An imatrix for another model (no entry for any tensor to quantize) is an error; one that
    misses some tensors is a note, said once."""
    quantized = [e for e in plan.entries if e.decision.qtype != e.source.qtype and not e.decision.qtype.is_float]
    missing = [e.name for e, w in zip(plan.entries, weights, strict=True)
               if w is None and e.decision.qtype != e.source.qtype and not e.decision.qtype.is_float]
    if quantized and len(missing) == len(quantized):
        raise ValueError(
            f"importance matrix {imatrix.path} has no entry for any of the {len(quantized)} tensors to quantize "
            "(is it for another model?)"
        )
    if missing:
        plan.notes.append(
            f"importance matrix {imatrix.path} has no entry for {len(missing)} of the {len(quantized)} tensors to "
            f"quantize (e.g. {missing[0]}): those are quantized without one"
        )


def _note_plan_warnings(plan: ModelPlan, summary: Summary, report: Progress | None) -> None:
    entries = plan.entries
    kept = [e.name for e in entries if e.decision.kept_unquantizable]
    fallbacks: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        if e.decision.fallback_from:
            fallbacks.setdefault((e.decision.fallback_from.name, e.decision.qtype.name), []).append(e.name)
    messages = list(plan.notes) + [
        f"{len(names)} tensors with rows not a multiple of {a}'s block quantized as {b} instead "
        f"(e.g. {names[0]})"
        for (a, b), names in fallbacks.items()
    ]
    if kept:
        messages.append(
            f"{len(kept)} tensors kept as they are: no block size divides their rows (e.g. {kept[0]})"
        )
    copied = [e for e in entries if e.source.qtype.family == "copy-only"]
    if copied:
        kinds = ", ".join(sorted({e.source.qtype.name for e in copied}))
        messages.append(f"{len(copied)} {kinds} tensors kept as they are: integer tensors are copied (e.g. "
                        f"{copied[0].name})")
    summary.warnings.extend(messages)
    if report:
        for m in messages:
            report.warn(m)


def row_ranges(t, per_expert: np.ndarray | None, chunk_bytes: int):
    """(first row, last row + 1, expert) chunks of a tensor; with per-expert weights [experts, n_per_row]
    a chunk never spans two experts (expert 0 otherwise)."""
    rows_per_chunk = max(1, chunk_bytes // (4 * t.n_per_row))
    span = t.n_rows // per_expert.shape[0] if per_expert is not None else t.n_rows
    for e0 in range(0, t.n_rows, span):
        for r0 in range(e0, e0 + span, rows_per_chunk):
            yield r0, min(e0 + span, r0 + rows_per_chunk), e0 // span


def chunk_bytes(options: RunOptions) -> int:
    """float32 bytes per chunk: CHUNK_BYTES, or less under --max-buffer-size."""
    return min(CHUNK_BYTES, options.max_buffer_bytes) if options.max_buffer_bytes else CHUNK_BYTES

"""The `gpuquant` command: parsing and printing only; the work lives in pipeline and friends."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import click

from . import __version__
from .model_plan import LlamaRequest
from .outputs import RunOptions, TtsRequest
from .qtypes import QTYPES
from .synthetic_llama import LAYOUT_NAMES


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"gpuquant: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpuquant")
def main() -> None:
    """GGUF quantizer for llama.cpp and TTS.cpp models, byte-identical to llama-quantize, TTS.cpp's
    quantize and ggml's C quantizers: CuPy kernels on an NVIDIA GPU, the same kernels built for this
    CPU (native), or NumPy. GPUQUANT_CUDA_SIM=1 runs --backend cupy on a CUDA simulator (slow, for
    debugging)."""


_SHARED_OPTIONS = [
    click.option("--n-threads", "-nt", "n_threads", type=int, default=None,
                 help="CPU threads for the native and NumPy backends (default: all cores); never changes bytes."),
    click.option("--convert-dac-to-f16", "-df", is_flag=True, help="Store the audio codec (audio_encoder.*) as F16."),
    click.option("--quantize-output-heads", "-qh", is_flag=True, help="Also quantize the output heads."),
    click.option("--quantize-text-embedding", "-qe", is_flag=True, help="Also quantize the text embeddings."),
    click.option("--quantize-cross-attn-kv", "-qkv", is_flag=True,
                 help="Also quantize the cross-attention key/value projections."),
    click.option("--convert-non-quantized-to-f16", "-nqf", is_flag=True,
                 help="Store tensors that stay unquantized as F16 (TTS.cpp's Kokoro rule, on every architecture)."),
    click.option("--imatrix", "imatrix", metavar="FILE",
                 help="llama.cpp importance matrix (GGUF or legacy .dat) for the weighted quantizers."),
    click.option("--include-weights", multiple=True, metavar="NAME",
                 help="Use the imatrix only for tensors naming this."),
    click.option("--exclude-weights", multiple=True, metavar="NAME", help="No imatrix for tensors naming this."),
    click.option("--allow-requantize", is_flag=True, help="Dequantize quantized tensors and quantize them again."),
    click.option("--leave-output-tensor", is_flag=True, help="Leave output.weight as it is."),
    click.option("--pure", is_flag=True, help="No mix rules: every quantizable tensor gets the mix's base type."),
    click.option("--output-tensor-type", metavar="GGML_TYPE", help="Type of output.weight."),
    click.option("--token-embedding-type", metavar="GGML_TYPE", help="Type of the token embeddings."),
    click.option("--tensor-type", "tensor_types", multiple=True, metavar="PATTERN=GGML_TYPE",
                 help="Type of the tensors a regular expression finds (first match wins; repeatable)."),
    click.option("--tensor-type-file", metavar="FILE",
                 help="PATTERN=GGML_TYPE entries separated by spaces or newlines."),
    click.option("--prune-layers", metavar="L0,L1,...", help="Remove these layers and renumber the rest."),
    click.option("--keep-split", is_flag=True, help="Write the same shards as a split input, with split.* keys."),
    click.option("--override-kv", "kv_overrides", multiple=True, metavar="KEY=TYPE:VALUE",
                 help="Set a key in the output (TYPE int, float, bool or str); repeatable."),
    click.option("--target-types", metavar="T1,T2,...",
                 help="Candidate types for --target-size/--target-bpw (default: Q2_K..Q6_K, Q8_0, Q4_0, Q4_1, "
                      "Q5_0, Q5_1, IQ4_NL, and with --imatrix IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS)."),
    click.option("--target-sample", type=int, default=None, metavar="ROWS",
                 help="Rows per tensor measured for each candidate (default 64; seeded, cached)."),
    click.option("--target-objective", type=click.Choice(["relative", "absolute"]), default=None,
                 help="What the search minimises: each tensor's importance-weighted relative squared error, "
                      "summed (relative, the default), or the squared errors themselves (absolute)."),
    click.option("--max-buffer-size", metavar="MiB", help="Largest piece of a tensor held in memory at once."),
    click.option("--backend", type=click.Choice(["auto", "native", "numpy", "cupy"]), default="auto",
                 show_default=True,
                 help="auto: CuPy with a CUDA device, else native (the kernels built for this CPU), else NumPy. "
                      "cupy with GPUQUANT_CUDA_SIM=1: the CUDA simulator."),
    click.option("--report-sample", type=int, default=None, metavar="N",
                 help="Measure the error on N seeded random rows per tensor instead of every row."),
    click.option("--no-error", is_flag=True, help="Do not measure the error (saves the dequantize pass)."),
    click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
]


def _shared_options(command):
    """The options `quantize` and `publish` both take: llama-quantize's and TTS.cpp's, and the run's."""
    for option in reversed(_SHARED_OPTIONS):
        command = option(command)
    return command


@dataclass
class _Shared:
    """What the shared options ask for, parsed (ValueError, one line, for what is wrong)."""

    llama: LlamaRequest
    tts: TtsRequest
    imatrix: str | None
    include_weights: tuple[str, ...]
    exclude_weights: tuple[str, ...]
    run: RunOptions
    target_types: str | None
    target_sample: int | None
    target_objective: str | None
    quiet: bool


def _parse_shared(o: dict, dry_run: bool = False) -> _Shared:
    from . import llama_cli

    n_threads = o["n_threads"]
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"--n-threads must be 1 or more, not {n_threads}")
    if o["include_weights"] and o["exclude_weights"]:
        raise ValueError("--include-weights and --exclude-weights cannot be used together")
    if o["report_sample"] is not None and o["no_error"]:
        raise ValueError("--report-sample and --no-error cannot be used together")
    patterns = [llama_cli.parse_tensor_type(text) for text in o["tensor_types"]]
    if o["tensor_type_file"]:
        patterns += llama_cli.read_tensor_type_file(o["tensor_type_file"])
    ggml_type = llama_cli.parse_ggml_type
    llama = LlamaRequest(
        pure=o["pure"],
        leave_output_tensor=o["leave_output_tensor"],
        output_tensor_type=ggml_type(o["output_tensor_type"]) if o["output_tensor_type"] else None,
        token_embedding_type=ggml_type(o["token_embedding_type"]) if o["token_embedding_type"] else None,
        tensor_types=tuple(patterns),
        prune_layers=llama_cli.parse_prune_layers(o["prune_layers"]) if o["prune_layers"] is not None else (),
        kv_overrides=tuple(llama_cli.parse_kv_override(text) for text in o["kv_overrides"]),
        keep_split=o["keep_split"],
    )
    tts = TtsRequest(
        convert_dac_to_f16=o["convert_dac_to_f16"],
        quantize_output_heads=o["quantize_output_heads"],
        quantize_text_embeddings=o["quantize_text_embedding"],
        quantize_cross_attn_kv=o["quantize_cross_attn_kv"],
        convert_non_quantized_to_f16=o["convert_non_quantized_to_f16"],
    )
    buffer = o["max_buffer_size"]
    run = RunOptions(
        backend=o["backend"],
        n_threads=n_threads or os.cpu_count() or 1,
        measure_error=not o["no_error"],
        report_sample=o["report_sample"],
        progress=not o["quiet"],
        dry_run=dry_run,
        allow_requantize=o["allow_requantize"],
        max_buffer_bytes=llama_cli.parse_max_buffer_size(buffer) if buffer is not None else None,
    )
    return _Shared(llama, tts, o["imatrix"], tuple(o["include_weights"]), tuple(o["exclude_weights"]), run,
                   o["target_types"], o["target_sample"], o["target_objective"], o["quiet"])


def _quiet_compiler(quiet: bool) -> None:
    if quiet:
        from .backends.cupy import compile as cupy_compile

        cupy_compile.quiet = True  # nor the note that the CUDA kernels are being compiled


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("positional", nargs=-1, metavar="[IN.gguf [OUT.gguf] TYPE [NTHREADS]]")
@click.option("--model-path", "-mp", "model_path", help="Input GGUF file (TTS.cpp's form).")
@click.option("--quantized-model-path", "-qp", "quantized_path", help="Output GGUF file (TTS.cpp's form).")
@click.option(
    "--quantized-type", "-qt", "qtype", default=None,
    help="Target type (TTS.cpp's form): a ggml type name in any case or a ggml type id (8 = Q8_0), "
         "or a llama.cpp mix name (Q4_K_M). Default Q4_0.",
)
@_shared_options
@click.option("--dry-run", is_flag=True, help="Show each tensor's type and the final size; write nothing.")
@click.option("--target-size", metavar="SIZE",
              help="Choose each quantized tensor's type for the least error in a file of at most SIZE bytes "
                   "(K/M/G/T: powers of 1000, Ki/Mi/Gi/Ti: of 1024, e.g. 7.5G). TYPE is then the base mix.")
@click.option("--target-bpw", metavar="B", help="The same for B bits per weight over all tensors.")
@click.option("--recipe-out", metavar="FILE",
              help="Write the chosen types as a llama-quantize --tensor-type-file.")
@click.option("--report", "reports", multiple=True, metavar="FILE.json|FILE.html",
              help="Write a report: every tensor's type, size and error; .html adds plots (repeatable).")
def quantize(positional, model_path, quantized_path, qtype, dry_run, target_size, target_bpw, recipe_out, reports,
             **options) -> None:
    """Quantize a GGUF model: TTS.cpp's `quantize -mp IN -qp OUT -qt TYPE` or llama-quantize's
    `IN [OUT] TYPE [NTHREADS]` (TYPE a mix name or LLAMA_FTYPE number; no OUT: ggml-model-TYPE.gguf
    beside IN)."""
    from . import llama_cli
    from .mixes import find_mix, resolve_type_or_mix
    from .pipeline import quantize_file
    from .size_search import DEFAULT_BASE

    try:
        if positional:
            if model_path or quantized_path:
                _fail("give the files either as arguments or with --model-path/--quantized-model-path, not both")
            if qtype:
                _fail("the type is given twice (argument and --quantized-type)")
            sizing = target_size is not None or target_bpw is not None
            if sizing and len(positional) == 2 and find_mix(positional[1]) is None:
                positional = (*positional, DEFAULT_BASE)  # IN OUT: the base mix of a target size
            model_path, quantized_path, target, positional_threads = llama_cli.parse_positional(
                positional, dry_run, options["keep_split"]
            )
            if positional_threads is not None:
                if options["n_threads"] is not None:
                    _fail("the thread count is given twice (argument and --n-threads)")
                options["n_threads"] = positional_threads if positional_threads > 0 else os.cpu_count() or 1
        else:
            if not model_path:
                _fail("missing the input model (--model-path/-mp or the first argument)")
            if not quantized_path and not dry_run:
                _fail("missing the output path (--quantized-model-path/-qp or the second argument)")
            target = resolve_type_or_mix(qtype or "Q4_0")  # -qt: a ggml type (TTS.cpp's meaning) or a mix
        shared = _parse_shared(options, dry_run)
        sized = target_request(target_size, target_bpw, shared.target_types, shared.target_sample,
                               shared.target_objective, recipe_out)
    except ValueError as e:
        _fail(str(e))
    _quiet_compiler(shared.quiet)
    _interrupt_on_termination()
    try:
        summary = quantize_file(
            model_path, quantized_path, target,
            llama=shared.llama,
            tts=shared.tts,
            target_size=sized,
            reports=reports,
            imatrix=shared.imatrix,
            include_weights=shared.include_weights,
            exclude_weights=shared.exclude_weights,
            options=shared.run,
        )
    except KeyboardInterrupt:
        _fail("interrupted; no output written", 130)
    except (ValueError, OSError) as e:
        _fail(str(e))
    if dry_run:
        click.echo(summary.dry_run_table())  # the result of a dry run: on stdout
    elif not shared.quiet:
        click.echo(summary.table(), err=True)


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", metavar="IN.gguf")
@click.argument("outdir", metavar="OUTDIR")
@click.option("--mix", "mixes", multiple=True, metavar="MIX",
              help="A llama-quantize mix (Q4_K_M, or its LLAMA_FTYPE number) or ggml type to publish "
                   "(repeatable).")
@click.option("--mixes", "mix_list", metavar="M1,M2,...", help="Several mixes at once, comma-separated.")
@click.option("--target-size", "target_sizes", multiple=True, metavar="SIZE",
              help="Also a file of at most SIZE bytes with the least error (as quantize's --target-size; "
                   "repeatable; named <model>-SIZE.gguf).")
@click.option("--target-bpw", "target_bpws", multiple=True, metavar="B",
              help="Also a file of B bits per weight with the least error (repeatable; <model>-Bbpw.gguf).")
@_shared_options
@click.option("--report", "report_kinds", multiple=True, type=click.Choice(["json", "html"]),
              help="Write each output's report beside it, <model>-<MIX>.json or .html (repeatable).")
@click.option("--name", "name", metavar="MODEL", help="The outputs' name stem (default: IN's name less its type).")
@click.option("--force", is_flag=True, help="Write every output, even those already there and matching their "
                                            "manifest.")
@click.option("--dry-run", is_flag=True, help="Plan every output and show their sizes; read and write nothing.")
def publish(**params) -> None:
    """Publish a model in many mixes from one read: OUTDIR/<model>-<MIX>.gguf for each --mix, each the
    file `quantize` writes for that mix alone (and so llama-quantize's). Every (tensor, type) pair is
    quantized once; outputs already there and matching their manifest are skipped, so an interrupted
    publish resumes. Ends with a table across the outputs, a model card (<model>-mixes.md) and a plot
    of error against size (<model>-error-vs-size.png)."""
    from .publish import publish as run_publish

    try:
        job, run = publish_job(params)
    except ValueError as e:
        _fail(str(e))
    _quiet_compiler(not run.progress)
    _interrupt_on_termination()
    try:
        result = run_publish(job, run)
    except KeyboardInterrupt:
        _fail("interrupted; the outputs not yet finished were not written", 130)
    except (ValueError, OSError) as e:
        _fail(str(e))
    if run.dry_run:
        for out in result.outputs:
            click.echo(f"== {out.label}")
            click.echo(out.summary.dry_run_table())
    elif run.progress:
        click.echo(result.table, err=True)
        for path in (result.card, result.plot):
            if path is not None:
                click.echo(f"wrote {path}", err=True)


def publish_job(params: dict):
    """(PublishJob, RunOptions) from `publish`'s parsed options; ValueError (one line) otherwise."""
    from pathlib import Path

    from .mixes import find_mix, resolve_type_or_mix
    from .publish import PublishEntry, PublishJob

    shared = _parse_shared(params, params["dry_run"])

    def budget(size: str | None, bpw: str | None):
        return target_request(size, bpw, shared.target_types, shared.target_sample, shared.target_objective, None)

    names = list(params["mixes"]) + [m for m in (params["mix_list"] or "").split(",") if m.strip()]
    entries = []
    for text in names:  # llama-quantize's TYPE: a mix name or LLAMA_FTYPE number, else a ggml type name
        resolved = find_mix(text) or resolve_type_or_mix(text.strip())
        entries.append(PublishEntry(resolved.name, mix=resolved.name))
    entries += [PublishEntry(size.strip(), target=budget(size, None)) for size in params["target_sizes"]]
    entries += [PublishEntry(f"{bpw.strip()}bpw", target=budget(None, bpw)) for bpw in params["target_bpws"]]
    if not params["target_sizes"] and not params["target_bpws"]:
        budget(None, None)  # the --target-* options without a budget are refused
    job = PublishJob(
        source=Path(params["source"]), outdir=Path(params["outdir"]), entries=tuple(entries), llama=shared.llama,
        tts=shared.tts, imatrix=Path(shared.imatrix) if shared.imatrix else None,
        include_weights=shared.include_weights, exclude_weights=shared.exclude_weights,
        reports=tuple(dict.fromkeys(params["report_kinds"])), force=params["force"], model_name=params["name"],
    )
    return job, shared.run


def publish_job_from_args(args: list[str]):
    """(PublishJob, RunOptions) from a `gpuquant publish` command line (the words after `publish`), as
    `gpuquant batch` makes them; ValueError (one line) for what the command would refuse."""
    try:
        ctx = publish.make_context("publish", list(args), resilient_parsing=False)
    except click.ClickException as e:
        raise ValueError(e.format_message()) from None
    return publish_job(ctx.params)


def target_request(size: str | None, bpw: str | None, types: str | None, sample: int | None,
                   objective: str | None, recipe_out: str | None):
    """The size search's request from its options, or None without --target-size/--target-bpw."""
    from pathlib import Path

    from .llama_cli import parse_ggml_type
    from .size_search import DEFAULT_OBJECTIVE, DEFAULT_SAMPLE_ROWS, TargetRequest
    from .target_size import parse_bpw, parse_size

    if size is None and bpw is None:
        for name, value in (("--target-types", types), ("--target-sample", sample),
                            ("--target-objective", objective), ("--recipe-out", recipe_out)):
            if value is not None:
                raise ValueError(f"{name} goes with --target-size or --target-bpw")
        return None
    if size is not None and bpw is not None:
        raise ValueError("--target-size and --target-bpw cannot be used together")
    candidates = None
    if types is not None:
        candidates = tuple(dict.fromkeys(parse_ggml_type(t) for t in types.split(",") if t.strip()))
        if not candidates:
            raise ValueError("--target-types names no type")
    return TargetRequest(
        size=parse_size(size) if size is not None else None,
        bpw=parse_bpw(bpw) if bpw is not None else None,
        types=candidates,
        sample_rows=DEFAULT_SAMPLE_ROWS if sample is None else sample,
        recipe_out=Path(recipe_out) if recipe_out else None,
        objective=objective or DEFAULT_OBJECTIVE,
    )


def types_table() -> str:
    """Every ggml type: id, block size, bits per weight, imatrix need, and the backends that have it."""
    from .backends.cupy import CupyBackend
    from .backends.numpy_backend import NumpyBackend
    from .hostkernels import HOST_TYPES

    has = {
        "numpy": NumpyBackend().supports,
        "native": lambda t: t.name == "F32" or t.name in HOST_TYPES,  # without building the library
        "cupy": CupyBackend().supports,
    }
    lines = [f"{'type':<8} {'id':>3} {'block':>5} {'bits/w':>6}  {'imatrix':<9} backends"]
    for t in sorted(QTYPES.values(), key=lambda t: t.ggml_id):
        names = ", ".join(name for name, supports in has.items() if supports(t)) or "none yet"
        lines.append(
            f"{t.name:<8} {t.ggml_id:>3} {t.block_size:>5} {t.bits_per_weight:>6.3f}  {t.imatrix_use:<9} {names}"
        )
    return "\n".join(lines)


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP end a run the way Ctrl-C does, so the temporary output is removed."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, interrupt)


def run() -> None:
    """The console entry point: click's own usage errors become one line too."""
    try:
        code = main.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.exceptions.NoArgsIsHelpError as e:  # `gpuquant` alone: the help, as click shows it
        click.echo(e.ctx.get_help() if e.ctx else e.format_message(), err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a bug of ours: still one line for the user, and the tests look for it
        _fail(f"unexpected error ({type(e).__name__}: {e}); please report it")
    sys.exit(code if isinstance(code, int) else 0)


@main.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors", is_flag=True, help="Also list every tensor.")
def inspect(path, as_json, tensors) -> None:
    """What a GGUF file holds: architecture, quantization keys, bytes and bits per weight by type and layer."""
    import json

    from .inspect import inspect_file, inspect_table

    try:
        info = inspect_file(path)
    except (ValueError, OSError) as e:
        _fail(str(e))
    if not tensors:
        info.pop("tensors")
    click.echo(json.dumps(info, indent=1, default=str) if as_json else inspect_table(info, tensors))


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-error", is_flag=True, help="Do not measure the error against a float source.")
@click.option("--sample", type=click.IntRange(min=1), default=None, metavar="N",
              help="Measure the error on N seeded random rows per tensor (as --report-sample).")
@click.option("--imatrix", metavar="FILE", help="Also the importance-weighted error, with this importance matrix.")
def diff(a, b, as_json, no_error, sample, imatrix) -> None:
    """Whether two GGUF files are identical, and if not where they differ (exit 1 when they differ).
    When one file is the float source of the other, each tensor's error against it."""
    import json

    from .inspect import diff_files, diff_table

    try:
        d = diff_files(a, b, errors=not no_error, sample=sample, imatrix=imatrix)
    except (ValueError, OSError) as e:
        _fail(str(e), 2)
    click.echo(json.dumps(d, indent=1, default=str) if as_json else diff_table(d))
    sys.exit(0 if d["identical"] else 1)


@main.command()
def mixes() -> None:
    """List llama-quantize's mixes (TYPE of the llama-quantize form) with their LLAMA_FTYPE numbers."""
    from .mixes import mixes_table

    click.echo(mixes_table())


@main.command()
def types() -> None:
    """List every ggml type with its id, block size, bits per weight and backend support."""
    click.echo(types_table())


def _nvrtc_message(e: Exception) -> str:
    """An NVRTC failure in one line: the message's first, and NVRTC's first error where it logged one."""
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    errors = [line.strip() for line in getattr(e, "log", "").splitlines() if "error" in line]
    return f"{first} ({errors[0]})" if errors else first


def _kernel_targets(archs: str | None, quiet: bool):
    """(the architectures, the NVRTC): --arch's, else this machine's GPU's as the runtime picks it,
    else sm_90. With a GPU the NVRTC is the runtime's (of the driver's CUDA major), so that what is
    compiled here is what a run finds in the cache."""
    from .backends.cupy import compile as cupy_compile
    from .backends.cupy import nvrtc

    local = cupy_compile.local_target()
    lib = local[1] if local else nvrtc.library()
    if archs:
        targets = list(dict.fromkeys(a.strip() for a in archs.split(",") if a.strip()))
        if not targets:
            raise ValueError("--arch: no architecture given (e.g. --arch sm_80,sm_90)")
        supported = nvrtc.supported_archs(lib)
        for arch in targets:
            cupy_compile.module_options(arch)  # ValueError for what is not sm_XY or compute_XY
            if int(arch.split("_")[1]) not in supported:
                raise ValueError(f"NVRTC {'.'.join(map(str, nvrtc.version(lib)))} does not compile for {arch} "
                                 f"(it does for {', '.join(f'sm_{cc}' for cc in supported)})")
    elif local:
        targets = [local[0]]
    else:
        targets = ["sm_90"]
        if not quiet:
            click.echo("gpuquant: no CUDA GPU found; the kernels are for sm_90 (--arch to choose)", err=True)
    return targets, lib


@main.command()
@click.option("--compile", "compile_", is_flag=True,
              help="Compile every module, so that a run finds them in the cache (what is cached costs nothing).")
@click.option("--list", "list_", is_flag=True,
              help="List the modules and their kernels (compiling what is not cached).")
@click.option("--arch", "archs", metavar="sm_80,sm_90",
              help="Architectures, comma-separated: sm_XY (a CUBIN) or compute_XY (PTX). "
                   "Default: this machine's GPU, else sm_90.")
@click.option("--quiet", "-q", is_flag=True, help="No table and no notes; errors only.")
def kernels(compile_, list_, archs, quiet) -> None:
    """The CuPy backend's CUDA kernels (kernels/*.cu, compiled by NVRTC and cached): --compile builds
    them all in parallel ahead of a run, --list names their kernels; alone, which modules the cache
    holds."""
    import time

    from .backends.cupy import compile as cupy_compile
    from .backends.cupy import nvrtc
    from .hostkernels import cache_dir

    def row(module: str, arch: str, size: str, seconds: str, cached: str) -> str:
        return f"{module:<12} {arch:<12} {size:>10} {seconds:>8}  {cached}"

    try:
        targets, lib = _kernel_targets(archs, quiet)
        names = cupy_compile.module_names()
        if not compile_ and not list_:
            if not quiet:
                version = ".".join(map(str, nvrtc.version(lib)))
                click.echo(f"NVRTC {version} ({lib.path}); cache {cache_dir() / 'nvrtc'}")
                click.echo(f"{'module':<12} {'arch':<12} {'bytes':>10}  cached")
                for arch in targets:
                    for name in names:
                        binary = cupy_compile.cached_module(name, arch, lib=lib)
                        size = "-" if binary is None else str(len(binary))
                        click.echo(f"{name:<12} {arch:<12} {size:>10}  {'no' if binary is None else 'yes'}")
            return
        start = time.perf_counter()
        show = compile_ and not quiet
        if show:
            click.echo(row("module", "arch", "bytes", "seconds", "cached"))

        def progress(build: cupy_compile.ModuleBuild) -> None:
            if show:  # each as it is done: a cold compilation takes a while
                click.echo(row(build.source, build.arch, str(len(build.binary)), f"{build.seconds:.2f}",
                               "yes" if build.cached else "no"))

        builds = cupy_compile.compile_all(targets, progress=progress, lib=lib)
        if show:
            compiled = [b for b in builds if not b.cached]
            click.echo(f"total: {len(names)} modules for {', '.join(targets)}, "
                       f"{sum(len(b.binary) for b in builds) / 1e6:.1f} MB; "
                       f"{sum(b.seconds for b in builds):.2f} s of NVRTC in {time.perf_counter() - start:.2f} s "
                       f"({len(compiled)} compiled, {len(builds) - len(compiled)} cached)")
        if list_:
            arch = targets[0]  # the kernels are the same for every architecture
            for build in (b for b in builds if b.arch == arch):
                # The PTX: compute_XY's binary, or the one NVRTC made beside sm_XY's CUBIN (cached with it).
                ptx = build.binary if arch.startswith("compute_") else cupy_compile.compile_module(
                    build.source, "compute_" + arch.split("_")[1], lib=lib)
                found = cupy_compile.kernel_names(ptx)
                click.echo(f"{build.source}: {len(found)} kernels")
                for kernel in found:
                    click.echo(f"  {kernel}")
    except nvrtc.NVRTCError as e:
        _fail(_nvrtc_message(e))
    except (ValueError, OSError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


@main.command()
@click.argument("spec", type=click.Choice(["parler-tts-mini", "parler-tts-large", "dia", "kokoro", "orpheus",
                                           *LAYOUT_NAMES]))
@click.argument("out")
@click.option("--layers", type=int, default=None, help="Keep only this many layers per stack (fast tests).")
@click.option("--dtype", type=click.Choice(["F32", "F16", "BF16"]), default="F32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def synth(spec, out, layers, dtype, seed) -> None:
    """Write a synthetic GGUF model with the exact layout of a TTS.cpp model or of a llama.cpp
    architecture (llama-gqa, gemma3, ...)."""
    from .synthetic import write_synthetic_model
    from .synthetic_llama import write_llama_model

    if layers is not None and layers < 1:
        _fail(f"--layers must be 1 or more, not {layers}")
    try:
        if spec in LAYOUT_NAMES:
            path = write_llama_model(spec, out, dtype=dtype, seed=seed, n_layer=layers)
        else:
            path = write_synthetic_model(spec, out, max_layers=layers, dtype=dtype, seed=seed)
    except (ValueError, OSError) as e:
        _fail(str(e))
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)


from .batch_cli import batch  # noqa: E402  (it uses this module's helpers)

main.add_command(batch)

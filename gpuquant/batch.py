"""`gpuquant batch JOBS.toml`: many models times many mixes, on this machine or as Ray tasks.

The job file is TOML, one `[[job]]` table per source model:

    [[job]]
    input = "models/llama-f16.gguf"          # required: the source GGUF (its first shard if split)
    outdir = "out/llama"                     # required: a folder, made if missing
    mixes = ["Q4_K_M", "Q8_0"]               # mixes or ggml types: OUTDIR/<model>-<MIX>.gguf each
    target_sizes = ["4G"]                    # optional: size budgets (--target-size), one output each
    imatrix = "models/llama.imatrix.gguf"    # optional: passed as given (quantize.imatrix.file)
    options = ["--leave-output-tensor"]      # optional: llama-quantize's options, as `gpuquant publish` takes them

Relative paths (input, outdir, imatrix, and the FILE of `--tensor-type-file FILE` in options) are
relative to the TOML file's folder. A job is exactly one `gpuquant publish` run: `BatchJob.publish_args`
is its command line, parsed by cli.publish_job_from_args and run by publish.publish, so each output is
byte for byte what `gpuquant quantize IN OUT MIX` writes, and an output whose file matches its
manifest is skipped (resume) unless --force. The imatrix is passed as the file writes it, since
outputs record that text (quantize.imatrix.file, as llama-quantize does): a job runs with the TOML
file's folder as its working folder (run_job), so that the job's output is the one `gpuquant quantize`
run in that folder writes; every other path is made absolute.

Every job is checked before any job runs and before any tensor is read (load_jobs, then
prepare_jobs): a bad job file is refused with one line naming the job (its index and input) and
the key. Two runners take the checked jobs and return one JobResult per job, in file order:

- EmbeddedRunner: on this machine, one job after another with all cores, or `parallel` jobs at once
  (threads), each with its share of the cores;
- RayRunner: each job a Ray task asking for num_cpus = its threads (and num_gpus=1 with the CuPy
  backend), retried by Ray when its worker dies (an output is written unnamed and linked into place
  only when complete, so a dead worker leaves nothing behind); progress comes back through a small
  actor.

A job that fails is reported with its error and does not stop the others; BatchProgress aggregates
progress on the driver (jobs and bytes done, rate, time left) and results_table is the closing table.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

JOB_KEYS = ("input", "outdir", "mixes", "target_sizes", "imatrix", "options")

# Options a job may not set itself: the batch sets them (its keys, or the batch command's options).
_RESERVED = {
    "--mix": "give the mixes with the key mixes",
    "--target-size": "give size budgets with the key target_sizes",
    "--imatrix": "give the importance matrix with the key imatrix",
    "--n-threads": "the batch sets the threads (gpuquant batch --n-threads)",
    "-nt": "the batch sets the threads (gpuquant batch --n-threads)",
    "--backend": "the batch sets the backend (gpuquant batch --backend)",
    "--quiet": "the batch sets it",
    "-q": "the batch sets it",
    "--force": "the batch sets it (gpuquant batch --force)",
    "--mixes": "give the mixes with the key mixes",
    "--dry-run": "a batch writes its outputs",
}
# Options whose value is a file: relative to the TOML file's folder, like the keys' paths.
_PATH_OPTIONS = ("--tensor-type-file",)

RAY_INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'gpuquant[ray]' (or pip install ray)"


# ---------------------------------------------------------------- the job file


@dataclass(frozen=True)
class BatchJob:
    """One `[[job]]` of the file: paths absolute, names as written (checked by load_jobs)."""

    index: int  # 1-based, in file order
    given_input: str  # `input` as the file writes it: what messages name
    input: Path
    outdir: Path
    mixes: tuple[str, ...] = ()
    target_sizes: tuple[str, ...] = ()
    imatrix: str | None = None  # as the file writes it (relative to `folder`): outputs record it
    options: tuple[str, ...] = ()
    folder: Path | None = None  # the job file's folder: the job's working folder (None: the current one)

    @property
    def name(self) -> str:
        return f"job {self.index} ({self.given_input})"

    def publish_args(self, n_threads: int, backend: str, force: bool = False) -> list[str]:
        """The job as a `gpuquant publish` command line (the words after `publish`)."""
        args = [str(self.input), str(self.outdir)]
        for mix in self.mixes:
            args += ["--mix", mix]
        for size in self.target_sizes:
            args += ["--target-size", size]
        if self.imatrix is not None:
            args += ["--imatrix", self.imatrix]
        args += [*self.options, "--n-threads", str(n_threads), "--backend", backend, "--quiet"]
        if force:
            args.append("--force")
        return args


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def load_jobs(path: str | os.PathLike[str]) -> list[BatchJob]:
    """The jobs of a TOML job file, checked: ValueError with one line naming the job and the key.

    Checks what the file alone can tell (keys, types, files and folders, mix names, sizes, duplicate
    outputs within a job); prepare_jobs checks the rest (the options) without reading any tensor.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the package tomli
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError("reading a job file needs Python 3.11 or the package tomli (pip install tomli)") from None
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the job file: {e.strerror or e}") from None
    unknown = [k for k in data if k != "job"]
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (a job file holds [[job]] tables)")
    tables = data.get("job")
    if tables is None:
        raise ValueError(f"{path}: no job (add a [[job]] table with input, outdir and mixes)")
    if not isinstance(tables, list):
        raise ValueError(f"{path}: job must be an array of tables ([[job]]), not {_type_name(tables)}")
    if not tables:
        raise ValueError(f"{path}: no job (add a [[job]] table with input, outdir and mixes)")
    base = path.resolve().parent
    return [_job(path, base, i, table) for i, table in enumerate(tables, start=1)]


def _job(path: Path, base: Path, index: int, table: object) -> BatchJob:
    if not isinstance(table, dict):
        raise ValueError(f"{path}: job {index}: must be a table, not {_type_name(table)}")
    given = table.get("input")
    label = f"job {index} ({given})" if isinstance(given, str) and given else f"job {index}"

    def fail(key: str, message: str) -> ValueError:
        return ValueError(f"{path}: {label}: {key}: {message}")

    for key in table:
        if key not in JOB_KEYS:
            raise fail(key, f"unknown key (a job's keys: {', '.join(JOB_KEYS)})")

    def text(key: str, required: bool) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise fail(key, "missing (required)")
            return None
        if not isinstance(value, str):
            raise fail(key, f"must be a string, not {_type_name(value)}")
        if not value.strip():
            raise fail(key, "is empty")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list):
            raise fail(key, f"must be an array of strings, not {_type_name(value)}")
        for i, item in enumerate(value, start=1):
            if not isinstance(item, str):
                raise fail(key, f"item {i} must be a string, not {_type_name(item)}")
            if not item.strip():
                raise fail(key, f"item {i} is empty")
        return tuple(value)

    def resolve(given_path: str) -> Path:
        return base / Path(given_path).expanduser()

    source = resolve(text("input", True))
    if not source.exists():
        raise fail("input", f"no such file: {source}")
    if not source.is_file():
        raise fail("input", f"{source} is not a file")
    outdir = resolve(text("outdir", True))
    if outdir.exists() and not outdir.is_dir():
        raise fail("outdir", f"{outdir} is a file, not a folder")
    for parent in outdir.parents:  # a file where a folder on the way should be
        if parent.exists():
            if not parent.is_dir():
                raise fail("outdir", f"{parent} is a file, not a folder")
            break

    from .mixes import resolve_type_or_mix
    from .target_size import parse_size

    mixes = strings("mixes")
    seen: dict[str, str] = {}
    for mix in mixes:
        try:
            name = resolve_type_or_mix(mix.strip()).name.upper()
        except ValueError as e:
            raise fail("mixes", str(e)) from None
        if name in seen:
            raise fail("mixes", f"{mix!r} is given twice" + (f" (as {seen[name]!r})" if seen[name] != mix else ""))
        seen[name] = mix
    sizes = strings("target_sizes")
    budgets: dict[int, str] = {}
    for size in sizes:
        try:
            n = parse_size(size.strip())
        except ValueError as e:
            raise fail("target_sizes", str(e)) from None
        if n in budgets:
            raise fail("target_sizes", f"{size!r} is given twice" + (
                f" (as {budgets[n]!r})" if budgets[n] != size else ""))
        budgets[n] = size
    if not mixes and not sizes:
        raise fail("mixes", "no output: give mixes (or target_sizes)")

    imatrix = text("imatrix", False)
    if imatrix is not None and not resolve(imatrix).is_file():
        raise fail("imatrix", f"no such file: {resolve(imatrix)}")

    options = list(strings("options"))
    for i, word in enumerate(options):
        flag = word.split("=", 1)[0]
        if flag in _RESERVED:
            raise fail("options", f"{flag}: {_RESERVED[flag]}")
        if flag in _PATH_OPTIONS:  # --tensor-type-file FILE or --tensor-type-file=FILE
            if "=" in word:
                options[i] = f"{flag}={resolve(word.split('=', 1)[1])}"
            elif i + 1 < len(options):
                options[i + 1] = str(resolve(options[i + 1]))
    return BatchJob(index=index, given_input=given, input=source, outdir=outdir, mixes=tuple(m.strip() for m in mixes),
                    target_sizes=tuple(s.strip() for s in sizes), imatrix=imatrix, options=tuple(options),
                    folder=base)


def prepare_jobs(path: str | os.PathLike[str], jobs: Sequence[BatchJob], n_threads: int, backend: str,
                 force: bool = False) -> None:
    """Checks each job's command line as `gpuquant publish` parses it, and that no two jobs write to
    the same model's files in one folder (its outputs, manifests and model card): ValueError naming
    the job and the key. Reads no tensor."""
    from .cli import publish_job_from_args
    from .publish import model_name

    owners: dict[tuple[Path, str], BatchJob] = {}
    for job in jobs:
        try:
            publish_job, _ = publish_job_from_args(job.publish_args(n_threads, backend, force))
        except ValueError as e:
            key = "options: " if job.options else ""
            raise ValueError(f"{path}: {job.name}: {key}{e}") from None
        stem = publish_job.model_name or model_name(publish_job.source)
        owner = (job.outdir.resolve(), stem)
        if owner in owners:
            raise ValueError(f"{path}: {job.name}: outdir: {owners[owner].name} writes {stem}'s outputs to "
                             f"{job.outdir} too (give all of a model's mixes in one job, or another outdir)")
        owners[owner] = job


# ---------------------------------------------------------------- running one job


@dataclass(frozen=True)
class BatchSettings:
    """How every job runs: its threads and backend, and whether matching outputs are rewritten."""

    n_threads: int
    backend: str = "auto"
    force: bool = False


@dataclass
class JobResult:
    index: int
    input: str  # as the job file writes it
    ok: bool
    error: str = ""  # one line, when not ok
    written: tuple[str, ...] = ()  # output paths
    skipped: tuple[str, ...] = ()  # outputs already there, matching their manifests
    bytes_written: int = 0  # of the written outputs
    bytes_read: int = 0  # source bytes converted
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"job {self.index} ({self.input})"


def run_job(job: BatchJob, settings: BatchSettings, on_progress: Callable[[int], None] | None = None) -> JobResult:
    """One job, here, in its folder (working_folder): its publish, with on_progress(n) told of each n
    source bytes done. Errors become the result's one-line `error`; only KeyboardInterrupt (and
    SystemExit) go through."""
    from dataclasses import replace

    from .cli import publish_job_from_args
    from .publish import publish

    start = time.perf_counter()
    try:
        publish_job, options = publish_job_from_args(job.publish_args(settings.n_threads, settings.backend,
                                                                      settings.force))
        options = replace(options, progress=False, on_progress=on_progress)
        with working_folder(job.folder):
            result = publish(publish_job, options)
    except (ValueError, OSError) as e:
        return JobResult(job.index, job.given_input, False, " ".join(str(e).split()) or type(e).__name__,
                         seconds=time.perf_counter() - start)
    except Exception as e:  # a bug of ours: still a failed job, not a failed batch
        return JobResult(job.index, job.given_input, False,
                         f"unexpected error ({type(e).__name__}: {' '.join(str(e).split())}); please report it",
                         seconds=time.perf_counter() - start)
    written = [o for o in result.outputs if not o.skipped]
    return JobResult(
        job.index, job.given_input, True,
        written=tuple(str(o.path) for o in written),
        skipped=tuple(str(o.path) for o in result.outputs if o.skipped),
        bytes_written=sum(o.bytes for o in written),
        bytes_read=result.bytes_read,
        seconds=time.perf_counter() - start,
    )


class _WorkingFolder:
    """The process's working folder while jobs run: jobs of one folder may run at once (threads);
    the folder before the first is back after the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._folder: Path | None = None
        self._before: str | None = None

    @contextmanager
    def __call__(self, folder: Path | None):
        if folder is None:
            yield
            return
        with self._lock:
            if self._users == 0:
                before = os.getcwd()
                os.chdir(folder)  # OSError (the folder is missing on this node): the job's error
                self._before, self._folder = before, folder
            elif folder != self._folder:
                raise ValueError(f"jobs of two folders at once ({self._folder}, {folder}): run them one by one")
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    os.chdir(self._before)
                    self._before = self._folder = None


working_folder = _WorkingFolder()


# ---------------------------------------------------------------- progress on the driver


class BatchProgress:
    """Jobs and source bytes done across the batch, its rate and the time left, on one line.

    The bytes to do are the inputs' sizes until a job ends, then what it really converted (nothing
    for a job whose outputs were all there already), so a resumed batch's time left is not skewed.
    Thread-safe: embedded jobs report from their threads. On a terminal the line is redrawn in place;
    otherwise a line every few seconds. `quiet`: nothing is written.
    """

    def __init__(self, jobs: Sequence[BatchJob], stream: TextIO | None = None, quiet: bool = False,
                 interval: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.n_jobs = len(jobs)
        self.planned = {j.index: _file_bytes(j.input) for j in jobs}
        self.done: dict[int, int] = {}
        self.finished: dict[int, JobResult] = {}
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = interval if interval is not None else (0.2 if self._tty else 5.0)
        self._last_draw = 0.0
        self._drawn = False

    # what the runners call
    def add(self, index: int, n_bytes: int) -> None:
        with self._lock:
            self.done[index] = self.done.get(index, 0) + n_bytes
        self.draw()

    def set(self, index: int, n_bytes: int) -> None:
        """Job `index` has converted n_bytes so far (a retried Ray task starts again from 0)."""
        with self._lock:
            if index not in self.finished:
                self.done[index] = n_bytes
        self.draw()

    def job_done(self, result: JobResult) -> None:
        with self._lock:
            self.finished[result.index] = result
            self.done[result.index] = result.bytes_read if result.ok else self.done.get(result.index, 0)
        if self.quiet:
            return
        with self._lock:
            self._clear()
            if result.ok:
                line = (f"{result.name}: {len(result.written)} written, {len(result.skipped)} skipped, "
                        f"{result.seconds:.1f} s")
            else:
                line = f"{result.name}: failed: {result.error}"
            print(line, file=self.stream, flush=True)
        self.draw(force=True)

    # figures
    def figures(self) -> dict:
        with self._lock:
            done = sum(self.done.values())
            total = sum(self.done.get(i, 0) if i in self.finished else max(n, self.done.get(i, 0))
                        for i, n in self.planned.items())
            failed = sum(1 for r in self.finished.values() if not r.ok)
            finished = len(self.finished)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else math.inf
        return {"jobs_done": finished, "jobs": self.n_jobs, "failed": failed, "bytes_done": done,
                "bytes_total": total, "rate": rate, "elapsed": elapsed, "left": left}

    def line(self) -> str:
        f = self.figures()
        failed = f", {f['failed']} failed" if f["failed"] else ""
        left = "-" if math.isinf(f["left"]) else _duration(f["left"])
        return (f"batch: {f['jobs_done']}/{f['jobs']} jobs{failed}, "
                f"{f['bytes_done'] / 1e6:.1f}/{f['bytes_total'] / 1e6:.1f} MB, {f['rate'] / 1e6:.1f} MB/s, "
                f"{_duration(f['elapsed'])} elapsed, {left} left")

    def draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._last_draw < self._interval:
                return
            self._last_draw = now
        text = self.line()
        with self._lock:
            if self._tty:
                self.stream.write("\r\033[K" + text[:160])
                self._drawn = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def _clear(self) -> None:
        if self._tty and self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False

    def close(self) -> None:
        """Ends the line on a terminal (elsewhere each job's end already wrote the last figures)."""
        if self.quiet or not self._tty:
            return
        self.draw(force=True)
        self.stream.write("\n")
        self._drawn = False
        self.stream.flush()


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------- runners


class Runner(Protocol):
    """Runs checked jobs; returns one result per job, in the jobs' order. A job's failure is its
    result's; KeyboardInterrupt stops the jobs still running and goes through."""

    def run(self, jobs: Sequence[BatchJob], progress: BatchProgress) -> list[JobResult]: ...


@dataclass
class EmbeddedRunner:
    """On this machine: `parallel` jobs at once (1: one after another, in this thread), each with
    settings.n_threads threads."""

    settings: BatchSettings
    parallel: int = 1

    def run(self, jobs: Sequence[BatchJob], progress: BatchProgress) -> list[JobResult]:
        results: dict[int, JobResult] = {}
        if self.parallel <= 1 or len(jobs) <= 1:
            for job in jobs:
                results[job.index] = run_job(job, self.settings, _adder(progress, job.index))
                progress.job_done(results[job.index])
            return [results[j.index] for j in jobs]
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        stop = threading.Event()  # set on Ctrl-C: each running job stops at its next progress report

        def hook(index: int) -> Callable[[int], None]:
            add = _adder(progress, index)

            def on_progress(n: int) -> None:
                if stop.is_set():
                    raise KeyboardInterrupt  # publish removes what it was writing
                add(n)

            return on_progress

        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="gpuquant-batch") as pool:
            pending = {pool.submit(run_job, job, self.settings, hook(job.index)): job for job in jobs}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = pending.pop(future)
                        results[job.index] = future.result()
                        progress.job_done(results[job.index])
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                raise
        return [results[j.index] for j in jobs]


def _adder(progress: BatchProgress, index: int) -> Callable[[int], None]:
    return lambda n: progress.add(index, n)


def import_ray():
    """Ray, or ValueError saying in one line how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_INSTALL_HINT) from None
    return ray


@dataclass
class RayRunner:
    """Each job a Ray task on the cluster at `address` (None: the one ray.init() finds, or a new local
    one); an already initialised Ray (ray.init in this process) is used as it is. A task asks for
    num_cpus = settings.n_threads and, with the CuPy backend, num_gpus=1. A task whose worker dies is
    run again up to `max_retries` times; a job's own error (a ValueError, a bad file) is not retried.

    `kill_once` is for the tests only: a marker file path; the first task to report progress while
    the file does not exist creates it and kills its own worker process (SIGKILL), mid-job, so that
    Ray's retry is exercised for real.
    """

    settings: BatchSettings
    address: str | None = None
    max_retries: int = 3
    poll_seconds: float = 0.5
    kill_once: str | None = None

    def run(self, jobs: Sequence[BatchJob], progress: BatchProgress) -> list[JobResult]:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=True)
        board = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        task = ray.remote(_ray_task)
        resources = {"num_cpus": self.settings.n_threads, "num_gpus": 1 if self.settings.backend == "cupy" else 0,
                     "max_retries": self.max_retries, "retry_exceptions": False}
        refs = {task.options(name=f"gpuquant batch job {j.index}", **resources).remote(
                    j, self.settings, board, self.kill_once): j for j in jobs}
        results: dict[int, JobResult] = {}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=self.poll_seconds,
                                          fetch_local=True)
                for index, n in ray.get(board.read.remote()).items():
                    progress.set(index, n)
                for ref in ready:
                    job = refs[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        result = JobResult(job.index, job.given_input, False, _ray_error(e, self.max_retries))
                    results[job.index] = result
                    progress.job_done(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)  # the worker is killed: its unnamed output goes with it
            raise
        finally:
            ray.kill(board)
        return [results[j.index] for j in jobs]


def _ray_error(e: Exception, retries: int) -> str:
    import ray

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[0] if lines else type(e).__name__
    if isinstance(e, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
        tries = retries + 1
        return f"its worker died {tries} time{'s' if tries != 1 else ''}, no retry left ({type(e).__name__}: {first})"
    return f"{type(e).__name__}: {first}"


class _ProgressBoard:
    """A Ray actor (num_cpus=0): each job's source bytes done, set by its task, read by the driver."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}

    def report(self, index: int, n_bytes: int) -> None:
        self.done[index] = n_bytes

    def read(self) -> dict[int, int]:
        return dict(self.done)


def _ray_task(job: BatchJob, settings: BatchSettings, board, kill_once: str | None = None) -> JobResult:
    """A job on a Ray worker: its progress reported to `board` (the attempt's bytes so far, at most
    every half second), its result returned."""
    done = 0
    last = 0.0

    def on_progress(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= 0.5:
            last = now
            board.report.remote(job.index, done)
        if kill_once is not None:
            _kill_once(kill_once)

    result = run_job(job, settings, on_progress)
    board.report.remote(job.index, done)
    return result


def _kill_once(marker: str) -> None:
    """Tests only (RayRunner.kill_once): the first caller creates `marker` and kills its own process."""
    import signal

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- the closing table


def results_table(results: Sequence[JobResult], seconds: float) -> str:
    """One row per job (status, outputs written and skipped, megabytes, seconds, error), then the totals."""
    width = max([len("input")] + [len(r.input) for r in results])
    head = (f"{'job':>4}  {'input':<{width}}  {'status':<6}  {'written':>7}  {'skipped':>7}  "
            f"{'out MB':>9}  {'read MB':>9}  {'seconds':>8}  error")
    lines = [head]
    for r in results:
        lines.append(
            f"{r.index:>4}  {r.input:<{width}}  {'ok' if r.ok else 'failed':<6}  {len(r.written):>7}  "
            f"{len(r.skipped):>7}  {r.bytes_written / 1e6:>9.1f}  {r.bytes_read / 1e6:>9.1f}  {r.seconds:>8.1f}  "
            f"{r.error}".rstrip()
        )
    failed = sum(1 for r in results if not r.ok)
    read = sum(r.bytes_read for r in results)
    lines.append(
        f"{len(results)} jobs: {len(results) - failed} ok, {failed} failed; "
        f"{sum(len(r.written) for r in results)} outputs written, {sum(len(r.skipped) for r in results)} skipped; "
        f"{sum(r.bytes_written for r in results) / 1e6:.1f} MB written, {read / 1e6:.1f} MB read "
        f"in {seconds:.1f} s ({read / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
    )
    return "\n".join(lines)


@dataclass
class BatchRun:
    """What `gpuquant batch` did: the results in file order and the wall time."""

    results: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def table(self) -> str:
        return results_table(self.results, self.seconds)


def run_batch(jobs: Sequence[BatchJob], runner: Runner, progress: BatchProgress) -> BatchRun:
    start = time.perf_counter()
    try:
        results = runner.run(jobs, progress)
    finally:
        progress.close()
    return BatchRun(results, time.perf_counter() - start)


def default_ray_threads(nodes: Sequence[dict], gpu: bool) -> int:
    """One task per node, or with GPUs one per GPU: the smallest alive node's CPUs (per GPU)."""
    shares = []
    for node in nodes:
        resources = node.get("Resources", {}) if node.get("Alive", True) else {}
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if cpus < 1 or (gpu and gpus < 1):
            continue
        shares.append(max(1, cpus // gpus) if gpu else cpus)
    return min(shares) if shares else 1


def ray_fits(nodes: Sequence[dict], n_threads: int, gpu: bool) -> bool:
    """Whether some alive node has n_threads CPUs (and a GPU) for a task now."""
    for node in nodes:
        resources = node.get("Resources", {}) if node.get("Alive", True) else {}
        if resources.get("CPU", 0) >= n_threads and (not gpu or resources.get("GPU", 0) >= 1):
            return True
    return False

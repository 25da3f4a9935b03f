"""How a kernels/*.cu file is compiled, for the GPU at run time and for the tests alike.

Why not `cupy.RawModule(code=...)`: CuPy appends `-ftz=true` to every RawModule/RawKernel
compilation, after the caller's options, and for NVRTC the last `-ftz` wins. Flushing subnormals
to zero changes bytes wherever a block's values, squares or products are subnormal. So the kernels
are compiled here by our own NVRTC front end (nvrtc.py, ctypes over libnvrtc: no CuPy, no GPU, no
driver needed), and the binary is loaded as a module. That also lets CI, which has no GPU, compile
exactly what the runtime compiles and check the machine code (tests/test_kernels_nvrtc.py). The
options below are the whole contract: IEEE division and square root, no fused multiply-add,
subnormals kept, never fast math.

Every compilation also asks ptxas for its resource report (--ptxas-options=-v: each kernel's
registers, stack frame, spill stores and spill loads, in NVRTC's program log; ptxas_resources reads
it), which the tests hold to no spills. It changes nothing in the code: the CUBIN differs only in the
note that records the options.

Compiled binaries are cached under hostkernels.cache_dir()/nvrtc, with the log of their compilation
(the report comes from the cache too), keyed by the source text (headed by a digest of every kernel
source), the options and the NVRTC build.

compile_all compiles every module at once, in threads (ctypes releases the GIL and NVRTC compiles
different programs concurrently), which is what `gpuquant kernels --compile` runs ahead of a run. At
run time the first cache miss prints one note to stderr (not with GPUQUANT_QUIET=1, or `quiet` set,
as `gpuquant quantize --quiet` does) and starts every module's compilation in background threads:
a run that meets several types then waits for the slowest module once, not for each in turn.

cupy is imported inside functions only, so this module (and its option list) imports without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ...hostkernels import DEVICE_SOURCES, cache_dir, kernel_sources_digest, kernels_dir
from . import nvrtc
from .device import env_flag

NVRTC_OPTIONS: tuple[str, ...] = (
    "--fmad=false",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    "-std=c++17",
)
# What ptxas reports into NVRTC's log: per function, registers, stack frame and spills.
REPORT_OPTIONS: tuple[str, ...] = ("--ptxas-options=-v",)

# An entry: the magic, sha256 of the payload, the payload: the log's length (8 bytes, little-endian),
# the log (UTF-8), the binary.
_CACHE_MAGIC = b"gpuquant-nvrtc-2\n"
_ARCH = re.compile(r"^(sm|compute)_(\d+)$")

QUIET_ENV = "GPUQUANT_QUIET"
# The run-time note on a cache miss is not printed when this is set (the CLI sets it for --quiet) or
# when $GPUQUANT_QUIET is 1.
quiet = False
# The run-time first cache miss compiles every module in background threads (False: only the one
# requested, as each is met).
warm_all = True

_lock = threading.Lock()
_modules: dict[tuple[int, str], object] = {}
_functions: dict[tuple[int, str, str], object] = {}


def module_options(arch: str, directory: Path | None = None) -> tuple[str, ...]:
    """The NVRTC options for a kernels/*.cu file: NVRTC_OPTIONS, REPORT_OPTIONS, the include path and
    the target (sm_XY for a CUBIN, compute_XY for PTX)."""
    if not _ARCH.match(arch):
        raise ValueError(f"not a CUDA architecture: {arch!r} (sm_90, compute_90, ...)")
    return NVRTC_OPTIONS + REPORT_OPTIONS + (f"-I{directory or kernels_dir()}", f"-arch={arch}")


def module_source(source_name: str, directory: Path | None = None) -> str:
    """The .cu file's text, headed by a hash of all device sources (.cu, .cuh): its #included headers
    are part of what the binary depends on, and a cache keyed on this text must see their edits."""
    directory = directory or kernels_dir()
    text = (directory / source_name).read_text()
    return f"// gpuquant kernel sources {kernel_sources_digest(directory, DEVICE_SOURCES)}\n{text}"


def target_arch(compute_capability: int, supported: tuple[int, ...]) -> str:
    """What to compile for a device: its own CUBIN (sm_XY) when NVRTC knows the architecture, else
    PTX of the newest one NVRTC knows that the device can run (compute_XY), which the driver compiles
    for a GPU newer than this NVRTC."""
    if compute_capability in supported:
        return f"sm_{compute_capability}"
    older = [cc for cc in supported if cc <= compute_capability]
    if not older:
        raise nvrtc.NVRTCError(
            f"this NVRTC compiles for compute capabilities {min(supported)} to {max(supported)}; "
            f"the GPU has {compute_capability}"
        )
    return f"compute_{max(older)}"


def _cache_path(code: str, options: tuple[str, ...], include_dir: Path, lib: nvrtc.Library, cache: Path) -> Path:
    # The include folder's contents are in the code's digest header; its path is not part of the key,
    # so a checkout moved elsewhere (CI's fresh clone) finds the same entries.
    include = f"-I{include_dir}"
    key_options = ["-I<kernels>" if o == include else o for o in options]
    key = "\0".join([code, *key_options, nvrtc.identity(lib)])
    return cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"


def _read_cache(path: Path) -> tuple[bytes, str] | None:
    """The entry's binary and log, or None when it is missing, truncated or corrupt."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header = len(_CACHE_MAGIC) + 32
    if len(data) < header + 8 or not data.startswith(_CACHE_MAGIC):
        return None
    digest, payload = data[len(_CACHE_MAGIC) : header], data[header:]
    if hashlib.sha256(payload).digest() != digest:
        return None
    size = int.from_bytes(payload[:8], "little")
    if size > len(payload) - 8:
        return None
    return payload[8 + size :], payload[8 : 8 + size].decode(errors="replace")


def _write_cache(path: Path, binary: bytes, log: str) -> None:
    """Written to a temporary file and renamed over the entry: a reader sees all of it or none."""
    encoded = log.encode()
    payload = len(encoded).to_bytes(8, "little") + encoded + binary
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_CACHE_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
    except OSError:
        pass  # an unwritable cache only costs a recompilation next time


def compile_cached(code: str, name: str, options: tuple[str, ...], include_dir: Path,
                   lib: nvrtc.Library | None = None, cache: Path | None = None) -> bytes:
    """NVRTC's CUBIN (-arch=sm_XY) or PTX (-arch=compute_XY) of code, from the cache (the folder
    cache, default hostkernels.cache_dir()/nvrtc) when an intact entry is there, else compiled and
    cached. include_dir: the -I folder of the options, whose sources code's header digests."""
    return _compile_cached(code, name, options, include_dir, lib, cache)[0]


def _compile_cached(code: str, name: str, options: tuple[str, ...], include_dir: Path,
                    lib: nvrtc.Library | None, cache: Path | None) -> tuple[bytes, str, bool]:
    """compile_cached's binary, the log of its compilation, and whether they came from the cache."""
    lib = lib or nvrtc.library()
    cache = cache or cache_dir() / "nvrtc"
    path = _cache_path(code, options, include_dir, lib, cache)
    entry = _read_cache(path)
    if entry is not None:
        return *entry, True
    binary, ptx, log = nvrtc.compile_outputs(code, name, options, lib)
    # Without ptxas's timings, which differ from one compilation to the next: the same source gives
    # the same entry.
    log = "".join(line for line in log.splitlines(keepends=True) if not _PTXAS_TIME.match(line))
    if binary is None:
        binary = ptx
    elif ptx is not None:
        # The PTX that NVRTC made on the way to sm_XY's CUBIN is what -arch=compute_XY gives (same
        # source and options; a test checks it): cached as that, it saves a compilation. Its log is
        # the compilation's less ptxas's lines (ptxas does not run for compute_XY).
        ptx_options = tuple("-arch=compute_" + o[len("-arch=sm_"):] if o.startswith("-arch=sm_") else o
                            for o in options)
        ptx_log = "".join(line for line in log.splitlines(keepends=True) if not line.startswith("ptxas"))
        _write_cache(_cache_path(code, ptx_options, include_dir, lib, cache), ptx, ptx_log)
    _write_cache(path, binary, log)
    return binary, log, False


def compile_module(source_name: str, arch: str, directory: Path | None = None,
                   lib: nvrtc.Library | None = None, cache: Path | None = None) -> bytes:
    """kernels/<source_name> (or directory/<source_name>) compiled with module_options(arch): a CUBIN
    for sm_XY, PTX for compute_XY; cached (see compile_cached)."""
    directory = directory or kernels_dir()
    return compile_cached(module_source(source_name, directory), source_name, module_options(arch, directory),
                          directory, lib, cache)


def cached_module(source_name: str, arch: str, directory: Path | None = None,
                  lib: nvrtc.Library | None = None, cache: Path | None = None) -> bytes | None:
    """compile_module's result when the cache holds it, else None (and nothing is compiled)."""
    entry = _cached_entry(source_name, arch, directory, lib, cache)
    return None if entry is None else entry[0]


def _cached_entry(source_name: str, arch: str, directory: Path | None = None, lib: nvrtc.Library | None = None,
                  cache: Path | None = None) -> tuple[bytes, str] | None:
    directory = directory or kernels_dir()
    lib = lib or nvrtc.library()
    options = module_options(arch, directory)
    path = _cache_path(module_source(source_name, directory), options, directory, lib, cache or cache_dir() / "nvrtc")
    return _read_cache(path)


@dataclass(frozen=True)
class ModuleBuild:
    """One module compiled (or found in the cache) for one architecture."""

    source: str  # kernels/<source>
    arch: str  # sm_XY (binary: a CUBIN) or compute_XY (binary: PTX)
    binary: bytes
    seconds: float  # the wall time of the lookup and, on a miss, the compilation
    cached: bool
    log: str = ""  # NVRTC's program log of the compilation: ptxas's report for sm_XY (ptxas_resources)


def module_names(directory: Path | None = None) -> list[str]:
    """Every module: the kernels/*.cu files, sorted."""
    return sorted(p.name for p in (directory or kernels_dir()).glob("*.cu"))


def kernel_names(ptx: bytes | str) -> list[str]:
    """The kernels (.entry functions) of a module's PTX, by the names get_kernel looks them up by."""
    text = ptx.decode(errors="replace") if isinstance(ptx, bytes) else ptx
    return re.findall(r"^\s*\.(?:visible\s+|weak\s+)?\.entry\s+([\w$]+)\s*\(", text, re.MULTILINE)


def build_module(source_name: str, arch: str, directory: Path | None = None,
                 lib: nvrtc.Library | None = None, cache: Path | None = None) -> ModuleBuild:
    """compile_module, timed, saying whether the cache had it, with the compilation's log."""
    directory = directory or kernels_dir()
    start = time.perf_counter()
    binary, log, cached = _compile_cached(module_source(source_name, directory), source_name,
                                          module_options(arch, directory), directory, lib, cache)
    return ModuleBuild(source_name, arch, binary, time.perf_counter() - start, cached, log)


def _slowest_first(sources: Iterable[str], directory: Path) -> list[str]:
    # With fewer workers than modules the long compilations start first. A module's size with its
    # family header (kernels/<family>.cuh) is a fair proxy: lattice and kquants take ~10 s, floats 0.1 s.
    def size(name: str) -> int:
        return sum(p.stat().st_size for p in (directory / name, (directory / name).with_suffix(".cuh")) if p.is_file())

    return sorted(sources, key=size, reverse=True)


def _workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1))


def compile_all(arch: str | Sequence[str], sources: Iterable[str] | None = None,
                progress: Callable[[ModuleBuild], None] | None = None, *, directory: Path | None = None,
                lib: nvrtc.Library | None = None, cache: Path | None = None,
                workers: int | None = None) -> list[ModuleBuild]:
    """Every module (kernels/*.cu, or sources) compiled for arch (or each of several) as compile_module
    compiles it, the cache misses concurrently in up to `workers` threads (default: one per core).
    Cache hits are read first, in this thread, and cost a file read. progress(build) is called in
    this thread as each module is done. Returns the builds in (arch, source) order. The first failure
    (nvrtc.CompileException, ...) is raised at once; the compilations not started yet are dropped."""
    directory = directory or kernels_dir()
    lib = lib or nvrtc.library()
    cache = cache or cache_dir() / "nvrtc"
    archs = [arch] if isinstance(arch, str) else list(arch)
    names = list(sources) if sources is not None else module_names(directory)
    for a in archs:
        module_options(a, directory)  # a malformed arch fails here, before any work
    done: dict[tuple[str, str], ModuleBuild] = {}
    misses: list[tuple[str, str]] = []
    for a in archs:
        for name in names:
            start = time.perf_counter()
            entry = _cached_entry(name, a, directory, lib, cache)
            if entry is None:
                misses.append((name, a))
                continue
            done[name, a] = ModuleBuild(name, a, entry[0], time.perf_counter() - start, True, entry[1])
            if progress:
                progress(done[name, a])
    if misses:
        order = {name: i for i, name in enumerate(_slowest_first({n for n, _ in misses}, directory))}
        misses.sort(key=lambda job: (order[job[0]], job[1]))
        pool = ThreadPoolExecutor(max_workers=workers or _workers(len(misses)), thread_name_prefix="gpuquant-nvrtc")
        try:
            futures = [pool.submit(build_module, name, a, directory, lib, cache) for name, a in misses]
            for future in as_completed(futures):
                build = future.result()
                done[build.source, build.arch] = build
                if progress:
                    progress(build)
        finally:
            # After a failure or an interrupt the compilations not started yet are dropped; those in
            # flight cannot be cut off (the process waits for them at exit, and they land in the cache).
            pool.shutdown(wait=False, cancel_futures=True)
    return [done[name, a] for a in archs for name in names]


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one function: its registers (kernels only: None for a device function
    that was not inlined), stack frame, spill stores and spill loads (bytes)."""

    registers: int | None
    stack_frame: int
    spill_stores: int
    spill_loads: int


_PTXAS_TIME = re.compile(r"^ptxas\s+info\s+:\s+Compile time\b")
_PTXAS_ENTRY = re.compile(r"^ptxas\s+info\s+:\s+Compiling entry function '([\w$]+)'")
_PTXAS_PROPERTIES = re.compile(r"^ptxas\s+info\s+:\s+Function properties for ([\w$]+)")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGISTERS = re.compile(r"^ptxas\s+info\s+:\s+Used (\d+) registers")


def ptxas_resources(log: str) -> dict[str, Resources]:
    """Each function's resources from ptxas's report in an sm_XY compilation's log (REPORT_OPTIONS),
    by its name in the CUBIN (a kernel's extern "C" name, a device function's mangled one). ptxas
    writes "Compiling entry function 'k'" for a kernel; "Function properties for f" then "N bytes
    stack frame, N bytes spill stores, N bytes spill loads" for every function; "Used N registers" for
    the kernel being compiled."""
    frames: dict[str, tuple[int, int, int]] = {}
    registers: dict[str, int] = {}
    entry = properties = None
    for line in log.splitlines():
        if m := _PTXAS_ENTRY.match(line):
            entry = m.group(1)
        elif m := _PTXAS_PROPERTIES.match(line):
            properties = m.group(1)
        elif (m := _PTXAS_FRAME.search(line)) and properties is not None:
            frames[properties] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            properties = None
        elif (m := _PTXAS_REGISTERS.match(line)) and entry is not None:
            registers[entry] = int(m.group(1))
            entry = None
    return {name: Resources(registers.get(name), *frame) for name, frame in frames.items()}


def _runtime_library(cupy) -> nvrtc.Library:
    """The NVRTC for this process's GPU: of the driver's CUDA major version where there is one, as
    code from a newer major's NVRTC may not load on an older driver."""
    try:
        major = cupy.cuda.runtime.driverGetVersion() // 1000
    except Exception:  # a runtime that cannot say: the first NVRTC found
        major = None
    return nvrtc.library(prefer_major=major)


def local_target() -> tuple[str, nvrtc.Library] | None:
    """What the runtime compiles for CUDA device 0 (its arch, per target_arch) and with which NVRTC;
    None without CuPy or a GPU."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        compute_capability = int(cupy.cuda.Device(0).compute_capability)
    except Exception:  # no CuPy, no driver, no device: not an error here
        return None
    lib = _runtime_library(cupy)
    return target_arch(compute_capability, nvrtc.supported_archs(lib)), lib


_noted = False
_warm_pool: ThreadPoolExecutor | None = None
_warming: dict[tuple[str, str, str, str], dict[str, Future[ModuleBuild]]] = {}


def _quiet() -> bool:
    return quiet or env_flag(QUIET_ENV)


def _note(arch: str, lib: nvrtc.Library) -> None:
    """One line, the first time in the process that the runtime compiles: a run otherwise sits
    silent for up to a minute the first time."""
    global _noted
    if _noted:
        return
    _noted = True
    if _quiet():
        return
    version = ".".join(map(str, nvrtc.version(lib)))
    clear = "\r\033[K" if sys.stderr.isatty() else ""  # off the progress line it would otherwise end
    sys.stderr.write(f"{clear}gpuquant: compiling the CUDA kernels for {arch} with NVRTC {version} (once; "
                     "up to a minute; `gpuquant kernels --compile` does it ahead of a run)\n")
    sys.stderr.flush()


def _runtime_binary(source_name: str, arch: str, lib: nvrtc.Library) -> bytes:
    """The module's binary for the runtime: from the cache, else from the background compilation of
    every module that the first miss starts."""
    global _warm_pool
    directory, cache = kernels_dir(), cache_dir() / "nvrtc"
    key = (arch, lib.path, str(directory), str(cache))
    jobs = _warming.get(key)
    if jobs is None:
        binary = cached_module(source_name, arch, directory, lib, cache)
        if binary is not None:
            return binary
        _note(arch, lib)
        if not warm_all:
            return compile_module(source_name, arch, directory, lib, cache)
        names = module_names(directory)
        # The module asked for first, then the slowest: the run waits only for its own.
        order = [source_name] + [n for n in _slowest_first(names, directory) if n != source_name]
        if _warm_pool is None:
            # Never shut down: its threads end with the process, which waits for compilations in
            # flight (they land in the cache) rather than cut NVRTC off mid-call.
            _warm_pool = ThreadPoolExecutor(max_workers=_workers(len(order)), thread_name_prefix="gpuquant-nvrtc")
        jobs = _warming[key] = {n: _warm_pool.submit(build_module, n, arch, directory, lib, cache) for n in order}
    job = jobs.get(source_name)
    if job is None:  # not a kernels/*.cu of when the warm started
        return compile_module(source_name, arch, directory, lib, cache)
    return job.result().binary  # a compilation error is raised here, for the module that needs it


def load_module(source_name: str):
    """The loaded cupy.cuda.function.Module for kernels/<source_name> on the current device."""
    import cupy
    from cupy.cuda import function

    device = cupy.cuda.Device()
    with _lock:
        module = _modules.get((device.id, source_name))
        if module is not None:
            return module
        lib = _runtime_library(cupy)
        arch = target_arch(int(device.compute_capability), nvrtc.supported_archs(lib))
        binary = _runtime_binary(source_name, arch, lib)
        module = function.Module()
        module.load(binary)  # a CUBIN, or PTX that the driver compiles for this GPU
        _modules[(device.id, source_name)] = module
        return module


def get_kernel(source_name: str, kernel_name: str):
    """A cupy.cuda.function.Function, called as fn(grid, block, args, stream=stream)."""
    import cupy

    key = (cupy.cuda.Device().id, source_name, kernel_name)
    fn = _functions.get(key)
    if fn is None:
        fn = load_module(source_name).get_function(kernel_name)
        _functions[key] = fn
    return fn

"""Seeded damaged GGUF files, and a runner that checks each ends cleanly.

`python tests/fuzz_gguf.py N [FIRST_SEED]` (make fuzz: 100,000) and tests/test_fuzz.py (500) run
gpuquant's CLI on N damaged copies of two small models (a llama.cpp layout and a TTS.cpp one):
bit flips in the header, key/values and tensor infos; truncations; extreme counts, string and
array lengths, dimension counts, dimensions, offsets and type ids; damaged tensor data. Every run
must end in a readable output or a one-line error (no traceback, no "unexpected error") within
10 s, and the process must not grow by more than 1 GB of memory over its warmed-up size.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def header_fields(data: bytes) -> list[tuple[str, int, int]]:
    """(kind, offset, width) of the header's structural fields, for targeted damage."""
    out = [("n_tensors", 8, 8), ("n_kv", 16, 8)]
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string(kind: str) -> None:
        nonlocal pos
        out.append((kind, pos, 8))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    def value(vtype: int) -> None:
        nonlocal pos
        if vtype == 8:
            string("string_length")
        elif vtype == 9:
            out.append(("array_type", pos, 4))
            out.append(("array_length", pos + 4, 8))
            sub, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                value(sub)
        else:
            pos += _SCALAR[vtype]

    for _ in range(n_kv):
        string("key_length")
        out.append(("value_type", pos, 4))
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        value(vtype)
    for _ in range(n_tensors):
        string("tensor_name_length")
        out.append(("n_dims", pos, 4))
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(n_dims):
            out.append(("dimension", pos, 8))
            pos += 8
        out.append(("type_id", pos, 4))
        out.append(("offset", pos + 4, 8))
        pos += 12
    out.append(("data_start", pos, 0))
    return out


_EXTREMES = [0, 1, 2, 3, 7, 31, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**48, 2**63 - 1, 2**63,
             2**64 - 1]


def damage(data: bytes, fields: list[tuple[str, int, int]], seed: int) -> tuple[str, bytes]:
    """One damaged copy of data: (what was done, bytes)."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    header_end = fields[-1][1]
    kind = int(rng.integers(0, 5))
    if kind == 0:  # bit flips in the header
        flips = int(rng.integers(1, 9))
        for _ in range(flips):
            pos = int(rng.integers(0, header_end))
            buf[pos] ^= 1 << int(rng.integers(0, 8))
        return f"{flips} bit flips in the header", bytes(buf)
    if kind == 1:  # truncation
        cut = int(rng.integers(0, len(buf)))
        return f"truncated at {cut}", bytes(buf[:cut])
    if kind in (2, 3):  # an extreme or random value in one structural field
        structural = [f for f in fields if f[2]]
        name, pos, width = structural[int(rng.integers(0, len(structural)))]
        if kind == 2:
            value = _EXTREMES[int(rng.integers(0, len(_EXTREMES)))] % (1 << (8 * width))
        else:
            value = int(rng.integers(0, 1 << min(63, 8 * width)))
        buf[pos:pos + width] = value.to_bytes(width, "little")
        return f"{name} at {pos} set to {value}", bytes(buf)
    # damaged tensor data: random bytes, or NaN / Inf floats
    start = header_end
    n = int(rng.integers(1, 64))
    for _ in range(n):
        pos = int(rng.integers(start, len(buf) - 4))
        if rng.random() < 0.5:
            buf[pos:pos + 4] = struct.pack("<f", [np.nan, np.inf, -np.inf, 3e38][int(rng.integers(0, 4))])
        else:
            buf[pos] = int(rng.integers(0, 256))
    return f"{n} damaged data words", bytes(buf)


def base_models(folder: Path) -> list[tuple[Path, list[str]]]:
    """The two models damaged, each with the command-line tail it is quantized with."""
    from tiny_models import kokoro_like, write_tiny

    from gpuquant.synthetic_llama import write_llama_model

    llama = write_llama_model("llama-gqa", folder / "llama.gguf", n_layer=2)
    tts = write_tiny(folder / "tts.gguf", kokoro_like(np.random.default_rng(1)))
    return [(llama, ["Q4_K_M"]), (tts, ["Q4_0"])]


class _Timeout(Exception):
    pass


def run_case(src: Path, out: Path, tail: list[str], seconds: int = 10) -> tuple[bool, str]:
    """(clean, what happened) of one CLI run on src."""
    from click.testing import CliRunner

    from gpuquant.cli import main
    from gpuquant.gguf_header import tensor_infos

    def alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        result = CliRunner().invoke(main, ["quantize", str(src), str(out), *tail, "-q"])
    except _Timeout:
        return False, f"no result within {seconds} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, _Timeout):
        return False, f"no result within {seconds} s"
    if result.exit_code == 0:
        try:
            tensor_infos(out)
        except Exception as e:  # noqa: BLE001 - any failure to read the output is the finding
            return False, f"exit 0 but unreadable output: {e}"
        out.unlink()
        return True, "output"
    if not isinstance(result.exception, SystemExit):
        return False, f"{type(result.exception).__name__}: {result.exception}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith("gpuquant: error:") or "unexpected error" in lines[0]:
        return False, f"not one clean line: {result.output!r}"
    if out.exists() or any(p.name.endswith(".partial") for p in out.parent.iterdir()):
        return False, "an output or temporary file remained after an error"
    return True, lines[0]


def fuzz(n: int, first_seed: int, folder: Path) -> list[str]:
    """Runs n cases; returns the failures (empty when every case ended cleanly)."""
    models = base_models(folder)
    prepared = [(src, tail, src.read_bytes()) for src, tail in models]
    prepared = [(src, tail, data, header_fields(data)) for src, tail, data in prepared]
    failures = []
    damaged, out = folder / "damaged.gguf", folder / "out.gguf"
    # warm-up on the undamaged models (imports, the native library, its first use), so that the
    # memory bound measures what damaged files cost
    for src, tail, _, _ in prepared:
        run_case(src, out, tail)
        out.unlink(missing_ok=True)
    baseline_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    for seed in range(first_seed, first_seed + n):
        src, tail, data, fields = prepared[seed % len(prepared)]
        what, bytes_ = damage(data, fields, seed)
        damaged.write_bytes(bytes_)
        clean, outcome = run_case(damaged, out, tail)
        if not clean:
            failures.append(f"seed {seed} ({src.name}, {what}): {outcome}")
        out.unlink(missing_ok=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if peak_gb - baseline_gb > 1.0:
        failures.append(f"peak memory {peak_gb:.2f} GB, {peak_gb - baseline_gb:.2f} GB above the warmed-up process")
    return failures


def main() -> None:
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with tempfile.TemporaryDirectory() as tmp:
        failures = fuzz(n, first, Path(tmp))
    for f in failures:
        print(f)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak memory of the fuzzing process: {peak_gb:.2f} GB")
    print(f"{n - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("GPUQUANT_FUZZ", "1")
    main()

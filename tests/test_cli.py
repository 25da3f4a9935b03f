"""The `gpuquant` command: TTS.cpp's flags, the positional form, errors as one line, no partial output."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import kokoro_like, write_tiny

import gpuquant
from gpuquant.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny.gguf", kokoro_like(np.random.default_rng(1)))


def out_types(path):
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def leftovers(directory):
    return [p for p in os.listdir(directory) if p.endswith(".partial")]


def test_tts_cpp_long_and_short_flags(tiny, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    r1 = run("quantize", "--model-path", str(tiny), "--quantized-model-path", str(a),
             "--quantized-type", "Q5_0", "--n-threads", "2", "--quiet")
    r2 = run("quantize", "-mp", str(tiny), "-qp", str(b), "-qt", "q5_0", "-nt", "1", "-q")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    assert a.read_bytes() == b.read_bytes()
    assert out_types(a)["kokoro.albert.layer.0.q"] == "Q5_0"
    assert out_types(a)["kokoro.albert.layer.0.attn_norm"] == "F32"
    assert r1.output == ""  # --quiet silences progress and summary


@pytest.mark.parametrize("spelling,expected", [("2", "Q4_0"), ("8", "Q8_0"), ("1", "F16"), ("Q4", "Q4_0"),
                                               ("q8", "Q8_0"), ("fp16", "F16"), ("Q4_1", "Q4_1")])
def test_type_names_and_ids(tiny, tmp_path, spelling, expected):
    out = tmp_path / "o.gguf"
    r = run("quantize", "-mp", str(tiny), "-qp", str(out), "-qt", spelling, "-q")
    assert r.exit_code == 0, r.output
    assert out_types(out)["kokoro.albert.layer.0.ffn"] == expected


def test_default_type_is_q4_0_and_positional_form(tiny, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert run("quantize", "-mp", str(tiny), "-qp", str(a), "-q").exit_code == 0
    assert run("quantize", str(tiny), str(b), "q4_0", "-q").exit_code == 0
    assert out_types(a)["kokoro.albert.layer.0.q"] == "Q4_0"
    assert a.read_bytes() == b.read_bytes()


def test_summary_table_and_progress_on_stderr(tiny, tmp_path):
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), "Q8_0"])
    assert r.exit_code == 0
    assert r.stdout == ""
    text = r.stderr
    assert "Q8_0" in text and "bits/weight" in text and "GB/s" in text and "[   4/4]" in text


@pytest.mark.parametrize("args,message", [
    (["quantize", "-mp", "missing.gguf", "-qp", "x.gguf"], "no such file"),
    (["quantize", "IN", "OUT", "Q9_9"], "unknown quantization type"),
    (["quantize", "-qp", "x.gguf"], "missing the input"),
    (["quantize", "a", "b", "q4_0", "2", "e"], "too many arguments"),
    (["quantize", "a", "b", "q4_0", "x"], "invalid nthread"),
])
def test_usage_errors_are_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IN").write_bytes(b"GGUF")
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output


def test_output_equal_to_input_is_refused(tiny):
    before = tiny.read_bytes()
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tiny)])
    assert r.exit_code == 1 and "is the input file" in r.output
    assert tiny.read_bytes() == before


def test_not_gguf_and_truncated(tmp_path, tiny):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    r = CliRunner().invoke(main, ["quantize", str(junk), str(tmp_path / "o.gguf")])
    assert r.exit_code == 1 and "not a GGUF file" in r.output
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:-100])
    r = CliRunner().invoke(main, ["quantize", str(cut), str(tmp_path / "o.gguf")])
    # the user's words: which tensor ends past the end, never NumPy's ("cannot reshape ...")
    assert r.exit_code == 1
    assert "truncated or damaged: tensor kokoro.albert.layer.0.attn_norm's data ends at" in r.output
    assert "past the end of the file" in r.output and "reshape" not in r.output
    cut.write_bytes(tiny.read_bytes()[:60])
    r = CliRunner().invoke(main, ["quantize", str(cut), str(tmp_path / "o.gguf")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "truncated or damaged: the length of the value of key general.architecture ends past the end" in r.output
    assert not (tmp_path / "o.gguf").exists() and not leftovers(tmp_path)


def test_unknown_architecture(tmp_path):
    src = write_tiny(tmp_path / "w.gguf", kokoro_like(np.random.default_rng(2)), arch="whisper")
    r = CliRunner().invoke(main, ["quantize", str(src), str(tmp_path / "o.gguf")])
    assert r.exit_code == 1 and "whisper" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.gguf").exists()


def test_nan_stops_the_run_and_names_the_tensor(tmp_path):
    tensors = kokoro_like(np.random.default_rng(3))
    tensors["kokoro.albert.layer.0.ffn"][5, 17] = np.nan
    src = write_tiny(tmp_path / "nan.gguf", tensors)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous contents")
    r = CliRunner().invoke(main, ["quantize", str(src), str(out)])
    assert r.exit_code == 1 and "kokoro.albert.layer.0.ffn" in r.output and "row 5" in r.output
    assert out.read_bytes() == b"previous contents" and not leftovers(tmp_path)
    tensors["kokoro.albert.layer.0.ffn"][5, 17] = -np.inf
    src = write_tiny(tmp_path / "inf.gguf", tensors)
    r = CliRunner().invoke(main, ["quantize", str(src), str(out)])
    assert r.exit_code == 1 and "NaN or Inf" in r.output


def test_rows_not_a_multiple_of_the_block_are_kept_with_a_warning(tmp_path):
    tensors = kokoro_like(np.random.default_rng(4))
    tensors["kokoro.albert.layer.0.k"] = np.ones((4, 20), dtype=np.float32)
    src = write_tiny(tmp_path / "odd.gguf", tensors)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(out), "Q4_0"])
    assert r.exit_code == 0
    assert "warning:" in r.output and "kokoro.albert.layer.0.k" in r.output
    reader = gguf.GGUFReader(out)
    odd = next(t for t in reader.tensors if t.name == "kokoro.albert.layer.0.k")
    assert odd.tensor_type.name == "F32" and np.array_equal(np.asarray(odd.data), tensors["kokoro.albert.layer.0.k"])


def test_ctrl_c_leaves_no_partial_file(tiny, tmp_path, monkeypatch):
    from gpuquant.backends.numpy_backend import NumpyBackend

    def interrupted(self, chunks, check_finite):  # Ctrl-C while the first tensor is being quantized
        next(iter(chunks))
        # written unnamed (O_TMPFILE) or under a temporary name, never under the output's own
        assert not (tmp_path / "o.gguf").exists()
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(NumpyBackend, "quantize_chunks", interrupted)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "--backend", "numpy"])
    assert r.exit_code == 130 and "interrupted" in r.output
    assert not out.exists() and not leftovers(tmp_path)


def test_module_entry_point(tiny, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o.gguf"
    # the llama-quantize form: TYPE is a LLAMA_FTYPE number (7 = Q8_0)
    p = subprocess.run([sys.executable, "-m", "gpuquant", "quantize", str(tiny), str(out), "7", "--quiet"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert out_types(out)["kokoro.albert.layer.0.q"] == "Q8_0"
    assert gpuquant.__version__


def test_types_command_lists_every_type():
    r = run("types")
    assert r.exit_code == 0
    for name in gpuquant.QTYPES:
        assert f"\n{name} " in "\n" + r.output


def test_inf_is_a_value_for_float_targets(tmp_path):
    tensors = kokoro_like(np.random.default_rng(5))
    tensors["kokoro.albert.layer.0.ffn"][2, 3] = np.inf
    src = write_tiny(tmp_path / "inf.gguf", tensors)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(out), "F16", "--quiet"])
    assert r.exit_code == 0, r.output
    ffn = next(t for t in gguf.GGUFReader(out).tensors if t.name == "kokoro.albert.layer.0.ffn")
    assert ffn.tensor_type.name == "F16" and np.isposinf(np.asarray(ffn.data)[2, 3])


def test_write_error_on_the_writer_thread_is_reported_and_cleaned_up(tiny, tmp_path, monkeypatch):
    from gpuquant.gguf_io import AtomicGGUFWriter

    real_write, calls = AtomicGGUFWriter.write, []

    def failing_write(self, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(AtomicGGUFWriter, "write", failing_write)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "--backend", "numpy"])
    errors = [line for line in r.output.splitlines() if "error" in line]
    assert r.exit_code == 1 and len(errors) == 1 and "No space left on device" in errors[0]
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("name", sorted(n for n, t in gpuquant.QTYPES.items() if not t.requires_imatrix))
def test_every_supported_type_by_id_end_to_end(tmp_path, name):
    from gpuquant.backends.numpy import QUANTIZERS

    t = gpuquant.QTYPES[name]
    tensors = kokoro_like(np.random.default_rng(6), n_per_row=512, rows=4)
    src = write_tiny(tmp_path / "m.gguf", tensors)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", "-mp", str(src), "-qp", str(out), "-qt", str(t.ggml_id), "-q",
                                  "--backend", "numpy"])
    if name not in QUANTIZERS:  # the lattice IQ types: a clear refusal before any output
        assert r.exit_code == 1 and f"type {name} is not supported yet" in r.output
        assert not out.exists()
        return
    assert r.exit_code == 0, r.output
    if name not in gguf.GGMLQuantizationType.__members__:  # gguf 0.19 cannot read Q2_0 (id 42) back:
        data = out.read_bytes()  # find the expected tensor bytes at an aligned offset instead
        expected = gpuquant.quantize(tensors["kokoro.albert.layer.0.q"], name).tobytes()
        offset = data.find(expected)
        assert offset > 0 and offset % 32 == 0
        return
    reader = gguf.GGUFReader(out)
    q = next(x for x in reader.tensors if x.name == "kokoro.albert.layer.0.q")
    assert q.tensor_type.name == name
    expected = gpuquant.quantize(tensors["kokoro.albert.layer.0.q"], name)
    assert np.array_equal(np.asarray(q.data).view(np.uint8).reshape(expected.shape), expected)
    assert reader.fields["general.quantization_type"].contents() == t.ggml_id


@pytest.mark.parametrize("target,message", [
    ("DIR", "is a directory"),
    ("missing/o.gguf", "does not exist"),
])
def test_unusable_output_paths_are_refused_before_any_work(tiny, tmp_path, target, message):
    (tmp_path / "DIR").mkdir()
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / target)])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1
    assert not leftovers(tmp_path) and not leftovers(tmp_path / "DIR")


@pytest.mark.parametrize("args,message", [
    (["-nt", "0"], "--n-threads must be 1 or more"),
    (["-nt", "-3"], "--n-threads must be 1 or more"),
    (["--imatrix", "."], "is a directory, not an imatrix file"),
])
def test_bad_option_values(tiny, tmp_path, args, message):
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(tmp_path / "o.gguf"), *args])
    assert r.exit_code != 0 and message in r.output and not (tmp_path / "o.gguf").exists()


def test_click_usage_errors_are_one_line_from_the_console_entry(tiny, tmp_path):
    import subprocess
    import sys

    for extra in (["--backend", "tpu"], ["-nt", "abc"]):
        p = subprocess.run([sys.executable, "-m", "gpuquant", "quantize", str(tiny), str(tmp_path / "o.gguf"), *extra],
                           capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("gpuquant: error:"), p.stderr


def test_synth_rejects_non_positive_layers(tmp_path):
    r = CliRunner().invoke(main, ["synth", "kokoro", str(tmp_path / "s.gguf"), "--layers", "0"])
    assert r.exit_code == 1 and "--layers must be 1 or more" in r.output


def test_integer_and_already_quantized_tensors_are_copied_with_a_warning(tmp_path):
    tensors = kokoro_like(np.random.default_rng(10))
    tensors["kokoro.positions"] = np.arange(16, dtype=np.int32)
    src = write_tiny(tmp_path / "i.gguf", tensors)
    q4 = tmp_path / "q4.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(q4), "Q4_0"])
    assert r.exit_code == 0 and "I32 tensors kept as they are" in r.output
    out = {t.name: t for t in gguf.GGUFReader(q4).tensors}
    assert out["kokoro.positions"].tensor_type.name == "I32"
    assert np.array_equal(np.asarray(out["kokoro.positions"].data), tensors["kokoro.positions"])
    # feeding a quantized file back: refused unless --allow-requantize, as llama-quantize does
    again = tmp_path / "again.gguf"
    r = CliRunner().invoke(main, ["quantize", str(q4), str(again), "Q8_0"])
    assert r.exit_code == 1 and "--allow-requantize" in r.output and not again.exists()
    r = CliRunner().invoke(main, ["quantize", "--allow-requantize", str(q4), str(again), "Q8_0"])
    assert r.exit_code == 0, r.output
    out2 = {t.name: t for t in gguf.GGUFReader(again).tensors}
    name = "kokoro.albert.layer.0.q"
    assert out2[name].tensor_type.name == "Q8_0"
    q4_rows = np.asarray(out[name].data).reshape(8, -1)
    expected = gpuquant.quantize(gpuquant.dequantize(q4_rows, "Q4_0"), "Q8_0")
    assert np.array_equal(np.asarray(out2[name].data).reshape(expected.shape), expected)


def test_bf16_source_through_the_cli(tmp_path):
    tensors = kokoro_like(np.random.default_rng(11))
    bf16 = {k: (v.view(np.uint32) >> np.uint32(16)).astype(np.uint16) for k, v in tensors.items()}
    src = write_tiny(tmp_path / "b.gguf", bf16)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(src), str(out), "Q5_1", "-q"])
    assert r.exit_code == 0, r.output
    widened = (bf16["kokoro.albert.layer.0.ffn"].astype(np.uint32) << np.uint32(16)).view(np.float32)
    got = next(t for t in gguf.GGUFReader(out).tensors if t.name == "kokoro.albert.layer.0.ffn")
    assert got.tensor_type.name == "Q5_1"
    assert np.array_equal(np.asarray(got.data).reshape(widened.shape[0], -1), gpuquant.quantize(widened, "Q5_1"))


def test_sigterm_leaves_no_partial_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from gpuquant.synthetic import write_synthetic_model

    src = write_synthetic_model("kokoro", tmp_path / "k.gguf")
    out = tmp_path / "o.gguf"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.Popen([sys.executable, "-m", "gpuquant", "quantize", str(src), str(out), "Q4_K", "-nt", "1",
                              "-q", "--backend", "numpy"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not writing_output(p.pid, tmp_path) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, "the run ended before it could be interrupted"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        if sig == signal.SIGTERM:
            assert p.returncode == 130 and "interrupted" in err
        else:  # no handler runs: the unnamed output file simply vanishes with the process
            assert p.returncode == -signal.SIGKILL
        assert sorted(os.listdir(tmp_path)) == ["k.gguf"]


def writing_output(pid: int, folder) -> bool:
    """Whether process pid holds an output file open in folder: unnamed (O_TMPFILE, which /proc shows
    as "folder/#inode (deleted)") or a temporary .partial file."""
    import os

    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)) and (target.endswith("(deleted)") or target.endswith(".partial")):
            return True
    return False


def test_named_temporary_file_where_unnamed_files_do_not_exist(tiny, tmp_path, monkeypatch):
    from gpuquant.backends.numpy_backend import NumpyBackend

    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    seen = []
    real = NumpyBackend.quantize_chunks

    def watch(self, chunks, check_finite):
        seen.extend(leftovers(tmp_path))
        yield from real(self, chunks, check_finite)

    monkeypatch.setattr(NumpyBackend, "quantize_chunks", watch)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "-q", "--backend", "numpy"])
    assert r.exit_code == 0 and out.exists() and not leftovers(tmp_path)
    assert seen == [f".o.gguf.{os.getpid()}.partial"]


def test_unnamed_file_the_system_will_not_link_is_copied_into_place(tiny, tmp_path, monkeypatch):
    """No probe link at the start (a SIGKILL right after it would leave the probe's name behind):
    a refused link is found at the end, and the finished file is copied instead, byte for byte."""
    import errno

    from gpuquant import gguf_io

    want = tmp_path / "want.gguf"
    assert CliRunner().invoke(main, ["quantize", str(tiny), str(want), "-q", "--backend", "numpy"]).exit_code == 0

    def refuse(fd, path):
        raise OSError(errno.EPERM, "linkat refused")

    monkeypatch.setattr(gguf_io, "_link_unnamed", refuse)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "-q", "--backend", "numpy"])
    assert r.exit_code == 0 and not leftovers(tmp_path)
    assert out.read_bytes() == want.read_bytes()


def test_disk_full_names_the_output_and_the_bytes_needed(tiny, tmp_path, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "-q"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert f"no space left on the device for {out} (" in r.output and "bytes needed)" in r.output
    assert sorted(os.listdir(tmp_path)) == ["tiny.gguf"]


def test_stale_partial_files_of_dead_runs_are_removed(tiny, tmp_path):
    out = tmp_path / "o.gguf"
    dead = tmp_path / ".o.gguf.999999999.partial"  # no such process
    dead.write_bytes(b"GGUF" + bytes(100))
    other = tmp_path / ".other.gguf.999999999.partial"  # another output's: not ours to touch
    other.write_bytes(b"x")
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "-q"])
    assert r.exit_code == 0 and out.exists()
    assert not dead.exists() and other.exists()

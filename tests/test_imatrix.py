"""Importance matrices: both llama.cpp file formats, written here by the test's own writers."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

from gpuquant.imatrix import ImatrixError, load_imatrix, metadata_entries, weights_for

N_PER_ROW = 8
DENSE = "blk.0.attn_q.weight"
EXPERTS = "blk.0.ffn_up_exps.weight"

# importances chosen so that value * count and back are exact in float32
DENSE_VALUES = (np.arange(N_PER_ROW, dtype=np.float32) / np.float32(8) + np.float32(0.25))
EXPERT_VALUES = np.stack([DENSE_VALUES * np.float32(e + 1) for e in range(3)])  # [n_expert, n_per_row]


def write_legacy(path, entries, trailer=None) -> None:
    """entries: (name, ncall, stored float32 values); trailer: (chunk count, dataset name) or None."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        raw_name = name.encode()
        values = np.asarray(values, dtype="<f4").reshape(-1)
        out += struct.pack("<i", len(raw_name)) + raw_name + struct.pack("<ii", ncall, values.size)
        out += values.tobytes()
    if trailer is not None:
        chunks, dataset = trailer
        out += struct.pack("<ii", chunks, len(dataset.encode())) + dataset.encode()
    path.write_bytes(out)


def write_gguf(path, entries, datasets=("calib.txt",), chunk_count=17, chunk_size=512, extra=()) -> None:
    """entries: (name, sums [n_mat, n_per_row], counts [n_mat]), stored as llama-imatrix does."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("imatrix")
    if datasets is not None:
        # add_key_value: add_array would drop an empty list, which llama-imatrix writes as is
        w.add_key_value("imatrix.datasets", list(datasets), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    if chunk_count is not None:
        w.add_uint32("imatrix.chunk_count", chunk_count)
    if chunk_size is not None:
        w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, sums, counts in entries:
        sums = np.atleast_2d(np.asarray(sums, dtype=np.float32))
        counts = np.asarray(counts, dtype=np.float32)
        w.add_tensor(f"{name}.in_sum2", sums)  # ggml [n_per_row, n_mat]
        w.add_tensor(f"{name}.counts", counts.reshape(counts.size, 1))  # ggml [1, n_mat]
    for name, data in extra:
        w.add_tensor(name, np.asarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def standard_gguf(path, **kw):
    counts = np.array([2, 0, 5], dtype=np.float32)
    sums = EXPERT_VALUES * counts[:, None]
    sums[1] = np.float32(123.0)  # an expert with no count: its sums are ignored
    write_gguf(path, [
        (DENSE, DENSE_VALUES * np.float32(4), [4]),
        (EXPERTS, sums, counts),
    ], extra=[(f"{DENSE}.in_sum", np.ones(N_PER_ROW))], **kw)  # activation sums: not used


def assert_exact(a: np.ndarray, expected: np.ndarray) -> None:
    assert a.dtype == np.float32 and a.flags.c_contiguous
    assert a.shape == expected.shape
    assert a.tobytes() == np.ascontiguousarray(expected, dtype=np.float32).tobytes()


# ---- GGUF format ----


def test_gguf_values_and_metadata(tmp_path):
    path = tmp_path / "imatrix.gguf"
    standard_gguf(path, datasets=("calib.txt", "more.txt"))
    im = load_imatrix(path)
    assert im.format == "gguf"
    assert im.path == str(path)
    assert im.datasets == ["calib.txt", "more.txt"]
    assert im.chunks_count == 17
    assert sorted(im.entries) == [DENSE, EXPERTS]
    assert_exact(im.entries[DENSE], DENSE_VALUES)
    expected = EXPERT_VALUES.copy()
    expected[1] = 1.0  # the zero-count expert: neutral weights, as llama-quantize
    assert_exact(im.entries[EXPERTS], expected)
    assert not im.entries[DENSE].flags.writeable

    assert_exact(weights_for(im, DENSE, (N_PER_ROW, 5)), DENSE_VALUES)
    assert_exact(weights_for(im, EXPERTS, (N_PER_ROW, 6, 3)), expected)
    assert metadata_entries(im) == [
        ("quantize.imatrix.file", str(path), "STRING"),
        ("quantize.imatrix.dataset", "calib.txt", "STRING"),
        ("quantize.imatrix.entries_count", 2, "UINT32"),
        ("quantize.imatrix.chunks_count", 17, "UINT32"),
    ]


def test_gguf_division_is_float32(tmp_path):
    # 1/3 and 2/3 in float32 (IEEE, correctly rounded), as C's float division gives them
    path = tmp_path / "third.gguf"
    write_gguf(path, [(DENSE, [[1.0, 2.0, 3.0, 0.0]], [3])])
    values = load_imatrix(path).entries[DENSE]
    assert values.view(np.uint32).tolist() == [0x3EAAAAAB, 0x3F2AAAAB, 0x3F800000, 0]


def empty_datasets_gguf(path) -> None:
    """A GGUF imatrix whose imatrix.datasets is an empty array, which gguf's writer refuses to write.

    Written with one dataset "x", then patched in place: the array's length becomes 0 and its one
    string (8-byte length + 1 byte) moves into a padding string, so that no offset changes.
    """
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("test.pad", "p")
    w.add_array("imatrix.datasets", ["x"])
    w.add_uint32("imatrix.chunk_count", 0)
    w.add_uint32("imatrix.chunk_size", 512)
    w.add_tensor(f"{DENSE}.in_sum2", DENSE_VALUES.reshape(1, -1))
    w.add_tensor(f"{DENSE}.counts", np.ones((1, 1), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    pad = struct.pack("<Q", 8) + b"test.pad" + struct.pack("<IQ", 8, 1) + b"p"
    one = b"imatrix.datasets" + struct.pack("<IIQQ", 9, 8, 1, 1) + b"x"
    assert data.count(pad) == 1 and data.count(one) == 1
    data = data.replace(one, b"imatrix.datasets" + struct.pack("<IIQ", 9, 8, 0))
    data = data.replace(pad, struct.pack("<Q", 8) + b"test.pad" + struct.pack("<IQ", 8, 10) + b"p9 bytes..")
    path.write_bytes(data)


def test_gguf_zero_chunks_and_no_dataset_leave_keys_out(tmp_path):
    path = tmp_path / "empty-meta.gguf"
    empty_datasets_gguf(path)
    assert gguf.GGUFReader(path).fields["test.pad"].contents() == "p9 bytes.."
    im = load_imatrix(path)
    assert im.datasets == [] and im.chunks_count == 0
    assert_exact(im.entries[DENSE], DENSE_VALUES)
    assert metadata_entries(im) == [
        ("quantize.imatrix.file", str(path), "STRING"),
        ("quantize.imatrix.entries_count", 1, "UINT32"),
    ]


@pytest.mark.parametrize("missing", ["datasets", "chunk_count", "chunk_size"])
def test_gguf_missing_metadata(tmp_path, missing):
    path = tmp_path / "no-meta.gguf"
    standard_gguf(path, **{missing: None})
    with pytest.raises(ImatrixError, match=f"missing imatrix metadata imatrix.{missing}"):
        load_imatrix(path)


def test_gguf_bad_entries(tmp_path):
    nan_sums = DENSE_VALUES.copy()
    nan_sums[3] = np.nan
    cases = {
        "nan": ([(DENSE, [nan_sums], [1])], f"entry {DENSE} has non-finite values"),
        "negative count": ([(DENSE, [DENSE_VALUES], [-1])], f"entry {DENSE} has a negative or non-finite count"),
        "count rows": ([(EXPERTS, EXPERT_VALUES.reshape(1, -1), [1, 1, 1])], "3 counts for 1 matrices"),
    }
    for label, (entries, message) in cases.items():
        path = tmp_path / f"{label}.gguf"
        write_gguf(path, entries)
        with pytest.raises(ImatrixError, match=message):
            load_imatrix(path)


def test_gguf_unpaired_tensor(tmp_path):
    path = tmp_path / "unpaired.gguf"
    write_gguf(path, [(DENSE, [DENSE_VALUES], [1])], extra=[(f"{EXPERTS}.in_sum2", EXPERT_VALUES)])
    with pytest.raises(ImatrixError, match=f"entry {EXPERTS} has no {EXPERTS}.counts tensor"):
        load_imatrix(path)


def test_gguf_without_entries(tmp_path):
    path = tmp_path / "none.gguf"
    write_gguf(path, [], extra=[("something.else", np.ones(4))])
    with pytest.raises(ImatrixError, match="has no entries"):
        load_imatrix(path)


def test_gguf_truncated(tmp_path):
    path = tmp_path / "whole.gguf"
    standard_gguf(path)
    data = path.read_bytes()
    for cut in (len(data) - 8, 40, 6):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(ImatrixError, match="unreadable or truncated GGUF imatrix") as e:
            load_imatrix(short)
        assert "\n" not in str(e.value)


# ---- legacy format ----


def legacy_entries():
    return [
        (DENSE, 4, DENSE_VALUES * np.float32(4)),
        (EXPERTS, 2, EXPERT_VALUES.reshape(-1) * np.float32(2)),  # one flat vector, one ncall
    ]


def test_legacy_values_and_metadata(tmp_path):
    path = tmp_path / "imatrix.dat"
    write_legacy(path, legacy_entries(), trailer=(17, "wiki.train.raw"))
    im = load_imatrix(str(path))
    assert im.format == "legacy"
    assert im.datasets == ["wiki.train.raw"]
    assert im.chunks_count == 17
    assert_exact(im.entries[DENSE], DENSE_VALUES)
    assert_exact(im.entries[EXPERTS], EXPERT_VALUES.reshape(-1))
    assert_exact(weights_for(im, EXPERTS, (N_PER_ROW, 6, 3)), EXPERT_VALUES)
    assert_exact(weights_for(im, DENSE, (N_PER_ROW, 6)), DENSE_VALUES)
    assert metadata_entries(im) == [
        ("quantize.imatrix.file", str(path), "STRING"),
        ("quantize.imatrix.dataset", "wiki.train.raw", "STRING"),
        ("quantize.imatrix.entries_count", 2, "UINT32"),
        ("quantize.imatrix.chunks_count", 17, "UINT32"),
    ]


def test_legacy_without_trailer_and_zero_ncall(tmp_path):
    path = tmp_path / "old.dat"
    raw = np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32)
    write_legacy(path, [(DENSE, 0, raw), (EXPERTS, 3, [1.0, 2.0, 3.0, 6.0])])
    im = load_imatrix(path)
    assert im.chunks_count is None and im.datasets == []
    assert_exact(im.entries[DENSE], raw)  # ncall 0: the stored values as they are
    assert im.entries[EXPERTS].view(np.uint32).tolist() == [0x3EAAAAAB, 0x3F2AAAAB, 0x3F800000, 0x40000000]
    assert metadata_entries(im) == [
        ("quantize.imatrix.file", str(path), "STRING"),
        ("quantize.imatrix.entries_count", 2, "UINT32"),
    ]


def test_legacy_truncated_anywhere(tmp_path):
    path = tmp_path / "whole.dat"
    write_legacy(path, legacy_entries(), trailer=(17, "wiki.train.raw"))
    data = path.read_bytes()
    # inside the entry count, a name, the values, the dataset-name length and the dataset name;
    # a cut exactly after the entries or after the chunk count is a valid, shorter trailer
    entries_end = len(data) - 8 - len("wiki.train.raw")
    for cut in (0, 2, 10, 60, entries_end - 3, entries_end + 6, len(data) - 1):
        short = tmp_path / f"cut{cut}.dat"
        short.write_bytes(data[:cut])
        with pytest.raises(ImatrixError, match="truncated or invalid legacy imatrix") as e:
            load_imatrix(short)
        assert "\n" not in str(e.value)
    for cut, chunks in ((entries_end, None), (entries_end + 4, 17)):
        short = tmp_path / f"ok{cut}.dat"
        short.write_bytes(data[:cut])
        im = load_imatrix(short)
        assert im.chunks_count == chunks and im.datasets == []
        assert_exact(im.entries[DENSE], DENSE_VALUES)


def test_legacy_trailing_garbage(tmp_path):
    path = tmp_path / "extra.dat"
    write_legacy(path, legacy_entries(), trailer=(17, "x"))
    path.write_bytes(path.read_bytes() + b"??")
    with pytest.raises(ImatrixError, match="2 unexpected bytes after the dataset name"):
        load_imatrix(path)


def test_legacy_nan_names_the_entry(tmp_path):
    path = tmp_path / "nan.dat"
    values = EXPERT_VALUES.reshape(-1).copy()
    values[5] = np.inf
    write_legacy(path, [(DENSE, 1, DENSE_VALUES), (EXPERTS, 1, values)])
    with pytest.raises(ImatrixError, match=f"entry {EXPERTS} has non-finite values"):
        load_imatrix(path)


def test_legacy_negative_ncall(tmp_path):
    path = tmp_path / "neg.dat"
    write_legacy(path, [(DENSE, -2, DENSE_VALUES)])
    with pytest.raises(ImatrixError, match=f"entry {DENSE}: call count -2"):
        load_imatrix(path)


# ---- any file ----


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_bytes(b"hello, this is not an importance matrix at all\n" * 4)
    with pytest.raises(ImatrixError, match="not a GGUF file, and a truncated or invalid legacy imatrix"):
        load_imatrix(garbage)
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(ImatrixError, match="the entry count needs 4 bytes"):
        load_imatrix(empty)
    zero = tmp_path / "zero.dat"
    zero.write_bytes(struct.pack("<i", 0))
    with pytest.raises(ImatrixError, match="entry count 0"):
        load_imatrix(zero)
    with pytest.raises(ImatrixError, match="no such file"):
        load_imatrix(tmp_path / "absent.dat")


def test_weights_for_mismatch_and_missing(tmp_path):
    path = tmp_path / "imatrix.gguf"
    standard_gguf(path)
    im = load_imatrix(path)
    assert weights_for(im, "blk.9.attn_q.weight", (N_PER_ROW, 4)) is None
    with pytest.raises(ImatrixError) as e:
        weights_for(im, DENSE, (2 * N_PER_ROW, 4))
    assert str(e.value) == f"tensor {DENSE}: imatrix entry has 8 values, the tensor needs 16 (1 x 16)"
    with pytest.raises(ImatrixError, match=r"has 24 values, the tensor needs 32 \(4 x 8\)"):
        weights_for(im, EXPERTS, (N_PER_ROW, 6, 4))
    with pytest.raises(ImatrixError, match="not shape"):
        weights_for(im, DENSE, (N_PER_ROW, 1, 1, 1))

    # llama-quantize quantizes token embeddings without the imatrix when the size does not fit
    token_path = tmp_path / "tok.dat"
    write_legacy(token_path, [("token_embd.weight", 1, DENSE_VALUES)])
    tok = load_imatrix(token_path)
    assert weights_for(tok, "token_embd.weight", (2 * N_PER_ROW, 100)) is None
    assert_exact(weights_for(tok, "token_embd.weight", (N_PER_ROW, 100)), DENSE_VALUES)


def test_metadata_strings_are_cut_like_llama_quantize(tmp_path):
    # llama-quantize copies the strings into a char[128]: at most 127 bytes
    path = tmp_path / ("d" * 150 + ".dat")
    write_legacy(path, [(DENSE, 1, DENSE_VALUES)], trailer=(3, "é" * 100))
    entries = dict((k, v) for k, v, _ in metadata_entries(load_imatrix(path)))
    assert entries["quantize.imatrix.file"] == str(path).encode()[:127].decode()
    assert entries["quantize.imatrix.dataset"] == "é" * 63  # 126 bytes: no half character

"""Hostile bitstream IO tables and npz files (issue 13): sizes are checked against attnc.limits before
anything is allocated, and names never become paths or raw message text."""

from __future__ import annotations

import io as _io
import time
import zipfile

import numpy as np
import pytest

from attnc.arch import load_arch, preset_text
from attnc.backend import bitstream as bsm
from attnc.backend.bitstream import Bitstream, IOEntry
from attnc.errors import AttncError
from attnc.simulator import functional, io

TINY = preset_text("tiny")
TINY_FP = load_arch("tiny").fingerprint()


def table(*entries: IOEntry) -> Bitstream:
    bs = Bitstream(arch_source=TINY, arch_fingerprint=TINY_FP, io=list(entries))
    return bsm.decode(bsm.encode(bs))  # through the format, as `attnc simulate` reads it


def test_io_shape_that_disagrees_with_its_bytes_is_refused_before_allocating():
    # 10^6 x 10^6 f32 declared in a 64-byte entry: used to draw 4 TB of random input before complaining
    bs = table(IOEntry("x", "input", "f32", [10**6, 10**6], 0, 64), IOEntry("y", "output", "f32", [4, 4], 64, 64))
    t0 = time.monotonic()
    with pytest.raises(AttncError, match="the entry says 64"):
        io.random_inputs(bs)
    with pytest.raises(AttncError, match="the entry says 64"):
        functional.run(bs, {})
    bs = table(IOEntry("x", "input", "f32", [10**5, 10**5], 0, 4 * 10**10), IOEntry("y", "output", "f32", [4, 4], 64, 64))
    with pytest.raises(AttncError, match="ATTNC_MAX_TENSOR_BYTES"):
        io.random_inputs(bs)
    assert time.monotonic() - t0 < 2


def test_io_bytes_must_match_the_shape():
    bs = table(IOEntry("x", "input", "f32", [1000, 1000], 0, 64), IOEntry("y", "output", "f32", [4, 4], 64, 64))
    with pytest.raises(AttncError, match="the shape needs 4,000,000 bytes, the entry says 64"):
        io.random_inputs(bs)
    with pytest.raises(AttncError, match="the entry says 64"):
        functional.run(bs, {"x": np.zeros((4, 4), np.float32)})


def test_dram_image_is_limited(monkeypatch):
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", str(1 << 20))
    bs = table(IOEntry("x", "input", "f32", [4, 4], 1 << 30, 64), IOEntry("y", "output", "f32", [4, 4], 0, 64))
    with pytest.raises(AttncError, match="DRAM image.*ATTNC_MAX_TENSOR_BYTES"):
        functional.run(bs, {"x": np.zeros((4, 4), np.float32)})


def test_random_arrays_check_the_limit_first(monkeypatch):
    with pytest.raises(AttncError, match="random input 'x'.*ATTNC_MAX_TENSOR_BYTES"):
        io.random_arrays([("small", (2,), np.dtype(np.float32)), ("x", (10**9, 10**9), np.dtype(np.float32))])
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", "1000")
    with pytest.raises(AttncError, match="random input"):
        io.random_arrays([("x", (100, 100), np.dtype(np.float32))])
    assert io.random_arrays([("x", (10, 10), np.dtype(np.float32))])["x"].shape == (10, 10)


def test_non_zip_npz_is_named_as_such(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"\x80\x04not a pickle, not a zip")
    with pytest.raises(AttncError, match="not an .npz archive") as e:
        io.load_npz(p)
    assert "pickled" not in str(e.value)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(AttncError, match="a single .npy array"):
        io.load_npz(tmp_path / "one.npy")


def test_npz_member_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    header = _io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + bytes(64))
    with pytest.raises(AttncError, match="ATTNC_MAX_TENSOR_BYTES"):
        io.load_npz(p)
    with zipfile.ZipFile(p, "w") as zf:
        header = _io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1000,)})
        zf.writestr("x.npy", header.getvalue() + bytes(64))
    with pytest.raises(AttncError, match="declares 8000 bytes of data"):
        io.load_npz(p)


def test_npz_names_never_become_paths(tmp_path):
    for bad in ("../evil", "a/b", "..", ""):
        with pytest.raises(AttncError, match="path separators"):
            io.save_npz(tmp_path / "o.npz", {bad: np.zeros(2)})
    assert not (tmp_path / "o.npz").exists()
    io.save_npz(tmp_path / "o.npz", {"fine.name-1": np.zeros(2)})
    assert list(io.load_npz(tmp_path / "o.npz")) == ["fine.name-1"]


def test_names_in_messages_are_escaped():
    evil = "x\nattnc: error: forged\u202e" + "z" * 500
    bs = table(IOEntry(evil, "input", "f32", [2], 0, 8), IOEntry("y", "output", "f32", [2], 8, 8))
    with pytest.raises(AttncError) as e:
        functional.run(bs, {})
    msg = str(e.value)
    assert "\n" not in msg and "\u202e" not in msg and len(msg) < 300, msg


def test_empty_shape_with_huge_dims_is_a_clean_error():
    # found by fuzzing: numpy refuses even an empty array of such dims (MemoryError / "array is too big")
    bs = table(IOEntry("x", "input", "f32", [0, 1 << 62, 1 << 62], 0, 0), IOEntry("y", "output", "f32", [2], 0, 8))
    with pytest.raises(AttncError, match="out of range"):
        io.random_inputs(bs)
    with pytest.raises(AttncError, match="out of range"):
        functional.run(bs, {"x": np.zeros((0, 1, 1), np.float32)})

"""Hostile bitstreams (issue 13): the decoder bounds what it allocates and quotes names escaped and short."""

from __future__ import annotations

import time

import pytest
from test_bitstream import refresh_crcs

from attnc.arch import load_arch, preset_text
from attnc.backend import bitstream as B
from attnc.backend.bitstream import Bitstream, BitstreamError, ConstantEntry, IOEntry, decode, encode

TINY = preset_text("tiny")
TINY_FP = load_arch("tiny").fingerprint()


def small(**change) -> Bitstream:
    fields = dict(
        arch_source=TINY, arch_fingerprint=TINY_FP,
        constants=[ConstantEntry(0, "w", "f32", [2, 2], "dense", bytes(16))],
        io=[IOEntry("x", "input", "f32", [2, 2], 0, 16), IOEntry("y", "output", "f32", [2, 2], 64, 16)],
    )  # fmt: skip
    fields.update(change)
    return Bitstream(**fields)


def with_section(data: bytes, name: str, body: bytes) -> bytes:
    header = B.read_header(data)
    bodies = [(s.kind, body if s.name == name else data[s.offset : s.offset + s.length]) for s in header.sections]
    return B._assemble(header.fingerprint, bodies)


def rejects(data: bytes, match: str) -> str:
    with pytest.raises(BitstreamError) as info:
        decode(data, source="t.bit")
    msg = str(info.value)
    assert "decoder bug" not in msg and "\n" not in msg and len(msg) < 400, msg
    assert match in msg, msg
    return msg


def laughs(depth: int = 20) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def test_embedded_billion_laughs_is_refused_quickly():
    data = with_section(encode(small()), "ARCH", laughs().encode())
    t0 = time.monotonic()
    rejects(data, "ATTNC_MAX_ARCH_NODES")
    assert time.monotonic() - t0 < 5


def test_embedded_arch_size_limit(monkeypatch):
    data = encode(small())
    monkeypatch.setenv("ATTNC_MAX_ARCH_BYTES", "100")
    rejects(data, "ATTNC_MAX_ARCH_BYTES")


def test_file_size_checked_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "x.bit"
    B.write(small(), p)
    assert B.read(p).io[0].name == "x"
    monkeypatch.setenv("ATTNC_MAX_FILE_BYTES", "64")
    with pytest.raises(BitstreamError, match="ATTNC_MAX_FILE_BYTES"):
        B.read(p)


def test_huge_rank_dense_constant_is_linear_and_short():
    # a 60000-dim shape of 2**63 dims: its exact product is a 3.8-megabit number computed in quadratic time
    shape = [(1 << 63) - 1] * 60000
    data = bytearray(encode(small(constants=[ConstantEntry(0, "w", "f32", shape, "nm", bytes(16))])))
    sec = next(s for s in B.read_header(bytes(data)).sections if s.name == "CONSTANTS")
    data[sec.offset + 8 + 12] = B.ENCODINGS.index("dense")  # the entry's encoding byte
    t0 = time.monotonic()
    rejects(refresh_crcs(data), "needs more")
    assert time.monotonic() - t0 < 5


def test_bounded_prod():
    assert B.bounded_prod([2, 3, 4]) == 24 and B.bounded_prod([]) == 1 and B.bounded_prod([5, 0, 1 << 70]) == 0
    assert B.bounded_prod([1 << 60] * 1000) == B.PROD_CAP
    assert B.shape_text([1, 2]) == "[1, 2]" and len(B.shape_text([10**18] * 1000)) <= 60


def test_names_are_escaped_in_messages():
    evil = "x\nattnc: error: forged\u202e" + "y" * 1000
    bs = small(constants=[ConstantEntry(0, evil, "f32", [2, 2], "dense", bytes(16))])
    data = bytearray(encode(bs))
    sec = next(s for s in B.read_header(bytes(data)).sections if s.name == "CONSTANTS")
    data[sec.offset + 8 + 13] = 1  # the entry's reserved byte
    msg = rejects(refresh_crcs(data), "reserved")
    assert "\u202e" not in msg and "forged" in msg


def test_inspect_listing_escapes_names():
    bs = small(constants=[ConstantEntry(0, "w\nattnc: error: forged\u202e", "f32", [2, 2], "dense", bytes(16))])
    text = B.describe(decode(encode(bs)))
    assert "\u202e" not in text and not any(line.startswith("attnc: error") for line in text.splitlines())
    assert "w\\nattnc: error: forged\\u202e" in text

"""The bitstream format: round trips (hypothesis), every decode check, corruption fuzzing, `attnc inspect`."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnc.arch import load_arch, preset_text
from attnc.backend import bitstream as B
from attnc.backend.bitstream import (
    Bitstream,
    BitstreamError,
    Buffer,
    ConstantEntry,
    DmaDescriptor,
    Instr,
    IOEntry,
    KernelConfig,
    Port,
    RouteConfig,
    TileConfig,
    decode,
    encode,
)
from attnc.cli import run

TINY = preset_text("tiny")
TINY_FP = load_arch("tiny").fingerprint()


def sample() -> Bitstream:
    """A small configuration touching every record type and every params tag."""
    gemm = KernelConfig(
        kernel=1, name="qk_h0", kind="gemm",
        inputs=[Port(0, 10, "f32", [4, 4], 8), Port(1, 11, "f32", [4], 8)],
        outputs=[Port(2, 12, "f32", [4, 4], 8)],
        constants=[(3, 0)],
        buffers=[Buffer("acc", 0, 1024, 2, True), Buffer("w", 1024, 64, 1, False)],
        loops=[("m", 2), ("n", 2), ("k", 4)],
        body=[
            Instr("matmul", [0, 3], [2], {"transpose_b": True, "scale": 0.125, "tile": [4, 4], "mode": "acc",
                                          "bias": [0.5, -1.0], "shift": -3}),
            Instr("barrier", [], [], {}),
        ],
        cycles=1234,
    )  # fmt: skip
    load = KernelConfig(2, "load_x", "dma_load", [], [Port(0, 10, "f32", [4, 4], 8)], [], [], [("t", 8)],
                        [Instr("dma_load", [], [0], {"channel": 0})], 64)  # fmt: skip
    return Bitstream(
        arch_source=TINY,
        arch_fingerprint=TINY_FP,
        tiles=[TileConfig(1, 1, "compute", [gemm]), TileConfig(0, 0, "dma", [load])],
        routes=[RouteConfig(10, "x", 2, 1, [(0, 0), (1, 0), (1, 1)], 1, 512, 0.25)],
        dma=[DmaDescriptor((0, 0), "load", 10, 0x1000, 512, [8, 4, 4], [16, 4, 1], "f32"),
             DmaDescriptor((3, 3), "store", 12, 0x2000, 512, [8, 16], [-16, 1], "f32")],  # fmt: skip
        constants=[
            ConstantEntry(0, "wq", "f32", [4, 4], "dense", bytes(range(64))),
            ConstantEntry(1, "mask", "i8", [3], "dense", b"\x01\x00\x01"),
            ConstantEntry(2, "wk", "f16", [5, 5], "nm", b"\xaa" * 27),
        ],
        io=[IOEntry("x", "input", "f32", [1, 8, 4], 0x1000, 128), IOEntry("y", "output", "f32", [1, 8, 4], 0x2000, 128)],
        meta={"compiler": "attnc 0.1.0", "model": "sample", "pipeline": "canonicalize,raise-attention"},
    )


SAMPLE = sample()
DATA = encode(SAMPLE)
HEADER = B.read_header(DATA)


def rejects(data: bytes, *, match: str | None = None) -> str:
    """Decoding ``data`` raises BitstreamError (never anything else, never the decoder's safety net)."""
    with pytest.raises(BitstreamError) as info:
        decode(data, source="t.bit")
    msg = str(info.value)
    assert msg.startswith("t.bit: ") and "\n" not in msg
    assert "decoder bug" not in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def refresh_crcs(data: bytes | bytearray) -> bytes:
    """Recompute every section CRC and the header CRC, so a mutation reaches the structural checks."""
    out = bytearray(data)
    count = struct.unpack_from("<I", out, 20)[0]
    for i in range(count):
        at = B.HEADER.size + B.ENTRY.size * i
        kind, res, offset, length, _ = B.ENTRY.unpack_from(out, at)
        B.ENTRY.pack_into(out, at, kind, res, offset, length, zlib.crc32(out[offset : offset + length]))
    end = B.HEADER.size + B.ENTRY.size * count
    struct.pack_into("<I", out, 24, zlib.crc32(out[B.HEADER.size : end], zlib.crc32(out[:24])))
    return bytes(out)


def with_section(name: str, body: bytes, data: bytes = DATA) -> bytes:
    """``data`` re-assembled with one section's body replaced (CRCs valid)."""
    bodies = [(s.kind, body if s.name == name else data[s.offset : s.offset + s.length]) for s in HEADER.sections]
    return B._assemble(HEADER.fingerprint, bodies)


def section(name: str) -> B.SectionInfo:
    return next(s for s in HEADER.sections if s.name == name)


# ---------------------------------------------------------------------------
# round trips


def test_sample_round_trip_and_determinism() -> None:
    assert decode(DATA) == SAMPLE
    assert encode(decode(DATA)) == DATA
    assert encode(sample()) == DATA


def test_layout_is_as_documented() -> None:
    assert DATA[:8] == b"ATNCBIT\0" and B.HEADER.size == 28 and B.ENTRY.size == 24
    version, flags, fp, count = struct.unpack_from("<HH8sI", DATA, 8)
    assert (version, flags, fp, count) == (1, 0, TINY_FP, 8)
    assert [s.name for s in HEADER.sections] == ["ARCH", "STRINGS", "META", "TILES", "ROUTES", "DMA", "CONSTANTS", "IO"]
    assert all(s.offset % 8 == 0 for s in HEADER.sections)
    assert DATA[section("ARCH").offset :][: len(TINY)] == TINY.encode()
    consts = section("CONSTANTS")
    for c, i in zip(SAMPLE.constants, range(3)):  # payloads are 8-byte aligned in the file
        entry = B.CONSTANT.unpack_from(DATA, consts.offset + 8 + sum(B.CONSTANT.size + 8 * len(x.shape) for x in SAMPLE.constants[:i]))
        assert (consts.offset + entry[6]) % 8 == 0
        assert DATA[consts.offset + entry[6] :][: len(c.data)] == c.data


def test_the_phase_is_the_kernel_record_u16_at_offset_30() -> None:
    # the sample's first tile record, then its first kernel record
    at = section("TILES").offset + 4 + B.TILE.size
    assert struct.unpack_from("<H", DATA, at + 30) == (0,)  # phase 0 writes what the reserved field held
    for phase in (1, 7, 0xFFFF):
        bs = sample()
        bs.tiles[0].contexts[0].phase = phase
        data = encode(bs)
        tiles = next(s for s in B.read_header(data).sections if s.name == "TILES")
        assert struct.unpack_from("<H", data, tiles.offset + 4 + B.TILE.size + 30) == (phase,)
        assert decode(data) == bs and decode(data).tiles[0].contexts[0].phase == phase
    bs = sample()
    bs.tiles[0].contexts[0].phase = 0x10000
    with pytest.raises(BitstreamError, match=r"TILES: tile \(1,1\) context 0 phase: 65536 is out of range \[0, 65535\]"):
        encode(bs)


def test_dict_order_does_not_change_bytes() -> None:
    a, b = sample(), sample()
    body = b.tiles[0].contexts[0].body[0]
    body.params = dict(reversed(list(body.params.items())))
    b.meta = dict(reversed(list(b.meta.items())))
    assert encode(a) == encode(b)


def test_nan_round_trips_to_the_same_bytes() -> None:
    bs = sample()
    bs.routes[0].rate = float("nan")
    bs.tiles[0].contexts[0].body[0].params["x"] = [float("inf"), float("nan")]
    assert encode(decode(encode(bs))) == encode(bs)


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=6)
dims = st.lists(st.integers(0, 2**40), max_size=3)
finite = st.floats(allow_nan=False)
params = st.dictionaries(
    text,
    st.one_of(i64, finite, text, st.booleans(), st.lists(i64, max_size=3),
              st.lists(finite, min_size=1, max_size=3).filter(lambda xs: all(isinstance(x, float) for x in xs))),
    max_size=3,
)  # fmt: skip
instrs = st.builds(Instr, st.text(max_size=8), st.lists(u32, max_size=3), st.lists(u32, max_size=2), params)
ports = st.builds(Port, u32, u32, text, dims, u64)
buffers = st.builds(Buffer, text, u64, u64, u32, st.booleans())
kernels = st.builds(
    KernelConfig, u32, text, text, st.lists(ports, max_size=2), st.lists(ports, max_size=2),
    st.lists(st.tuples(u32, u32), max_size=2), st.lists(buffers, max_size=2),
    st.lists(st.tuples(text, u64), max_size=3), st.lists(instrs, max_size=3), u64, u16,
)  # fmt: skip
tiles = st.builds(TileConfig, u16, u16, text, st.lists(kernels, max_size=2))
routes = st.builds(RouteConfig, u32, text, u32, u32, st.lists(st.tuples(u16, u16), max_size=4), u32, u64, finite)
dmas = st.builds(
    DmaDescriptor, st.tuples(u16, u16), st.sampled_from(B.DMA_DIRECTIONS), u32, u64, u64, dims,
    st.lists(i64, max_size=3), text,
)  # fmt: skip
consts = st.builds(
    ConstantEntry, u32, text, st.sampled_from(["x", "q8", "custom"]), dims, st.sampled_from(B.ENCODINGS),
    st.binary(max_size=20),
)  # fmt: skip
ios = st.builds(IOEntry, text, st.sampled_from(B.IO_DIRECTIONS), text, dims, u64, u64)
arch = st.sampled_from(["tiny", "edge", "cloud"])
bitstreams = arch.flatmap(
    lambda name: st.builds(
        Bitstream, st.just(preset_text(name)), st.just(load_arch(name).fingerprint()),
        st.lists(tiles, max_size=3), st.lists(routes, max_size=3), st.lists(dmas, max_size=2),
        st.lists(consts, max_size=3), st.lists(ios, max_size=3), st.dictionaries(text, text, max_size=3),
    )
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bitstreams)
def test_round_trip_property(bs: Bitstream) -> None:
    data = encode(bs)
    assert encode(bs) == data
    assert decode(data) == bs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_are_rejected(data: bytes, with_magic: bool) -> None:
    rejects(B.MAGIC + data if with_magic else data)


# ---------------------------------------------------------------------------
# every decode check, one error each


def test_bad_magic() -> None:
    rejects(b"PK\x03\x04" + DATA[4:], match="not an attnc bitstream")
    rejects(b"\x7fELF", match="not an attnc bitstream")


def test_empty_and_short_files_are_truncated() -> None:
    rejects(b"", match="truncated")
    rejects(DATA[:5], match="truncated")
    rejects(DATA[:20], match="truncated")


def test_wrong_version() -> None:
    msg = rejects(DATA[:8] + struct.pack("<H", 2) + DATA[10:], match="unknown format version 2")
    assert "version 1" in msg


def test_unknown_flags() -> None:
    rejects(refresh_crcs(DATA[:10] + struct.pack("<H", 4) + DATA[12:]), match="unknown flags 0x0004")


def test_header_crc() -> None:
    rejects(DATA[:24] + bytes([DATA[24] ^ 1]) + DATA[25:], match="header: CRC mismatch")
    at = B.HEADER.size + 2 * B.ENTRY.size + 10  # inside the table
    rejects(DATA[:at] + bytes([DATA[at] ^ 0x40]) + DATA[at + 1 :], match="header: CRC mismatch")


@pytest.mark.parametrize("name", list(B.SECTION_IDS))
def test_section_crc_names_the_section(name: str) -> None:
    s = section(name)
    at = s.offset + s.length // 2
    rejects(DATA[:at] + bytes([DATA[at] ^ 0x10]) + DATA[at + 1 :], match=f"section {name}: CRC mismatch")


def test_trailing_garbage() -> None:
    rejects(DATA + b"\0", match="1 bytes of trailing data")
    rejects(DATA + DATA, match="trailing data")


def test_section_count_out_of_range() -> None:
    rejects(DATA[:20] + struct.pack("<I", 0xFFFF_FFFF) + DATA[24:], match="section count 4294967295 out of range")


def test_section_table_checks() -> None:
    bodies = [(s.kind, DATA[s.offset : s.offset + s.length]) for s in HEADER.sections]
    rejects(B._assemble(TINY_FP, bodies[:-1]), match="missing section(s) IO")
    rejects(B._assemble(TINY_FP, bodies[1:2] + bodies[:1] + bodies[2:]), match="in kind order")
    rejects(B._assemble(TINY_FP, bodies + [(3, b"")]), match="in kind order")
    rejects(B._assemble(TINY_FP, bodies + [(99, b"")]), match="unknown section kind 99")

    def patched_entry(i: int, **change: int) -> bytes:
        out = bytearray(DATA)
        at = B.HEADER.size + B.ENTRY.size * i
        kind, res, offset, length, crc = B.ENTRY.unpack_from(out, at)
        vals = {"kind": kind, "res": res, "offset": offset, "length": length, "crc": crc, **change}
        B.ENTRY.pack_into(out, at, *vals.values())
        return refresh_crcs(out)

    s3 = HEADER.sections[3]
    rejects(patched_entry(3, offset=HEADER.sections[2].offset), match="overlaps")
    rejects(patched_entry(3, offset=s3.offset + 3), match="not 8-byte aligned")
    rejects(patched_entry(3, offset=s3.offset + 64), match=f"bytes {s3.offset - 4}..{s3.offset + 64} before the section are not zero padding")
    rejects(patched_entry(7, offset=section("IO").offset + 64), match="truncated: section IO ends at byte")
    rejects(patched_entry(3, length=2**63), match="truncated: section TILES")
    rejects(patched_entry(3, offset=2**63), match="truncated: section TILES")
    rejects(patched_entry(2, res=1), match="reserved field")
    rejects(patched_entry(7, length=section("IO").length - 1), match="trailing data")


def test_nonzero_padding_between_sections() -> None:
    s = section("META")  # META is 20 bytes long, so 4 bytes of padding follow it
    assert s.length % 8
    rejects(refresh_crcs(DATA[: s.offset + s.length] + b"\x01" + DATA[s.offset + s.length + 1 :]),
            match="not zero padding")  # fmt: skip


def test_fingerprint_must_match_embedded_arch() -> None:
    fake = bytes(8)
    rejects(refresh_crcs(DATA[:12] + fake + DATA[20:]), match="does not match the embedded architecture")


def test_embedded_arch_must_be_valid() -> None:
    rejects(with_section("ARCH", b"name: nope\n"), match="ARCH: the embedded architecture is invalid")
    rejects(with_section("ARCH", b"\xff\xfe"), match="ARCH: the embedded architecture is not UTF-8")


def test_embed_arch() -> None:
    import dataclasses

    assert B.embed_arch(load_arch("tiny")) == (TINY, TINY_FP)
    built = dataclasses.replace(load_arch("edge"), source="")  # an Arch made in code has no text
    text, fp = B.embed_arch(built)
    assert fp == load_arch("edge").fingerprint() == B.arch_fingerprint(text)


def test_expect_arch() -> None:
    assert decode(DATA, expect_arch=load_arch("tiny")) == SAMPLE
    with pytest.raises(BitstreamError) as info:
        decode(DATA, source="out.bit", expect_arch=load_arch("cloud"))
    assert str(info.value) == (
        f"out.bit: built for arch 'tiny' (fingerprint {TINY_FP.hex()}), "
        f"not 'cloud' ({load_arch('cloud').fingerprint().hex()})"
    )


def test_huge_counts_fail_before_allocating() -> None:
    tiles = DATA[section("TILES").offset :][: section("TILES").length]
    rejects(with_section("TILES", struct.pack("<I", 0xFFFF_FFFF) + tiles[4:]), match="TILES: tile count: 4294967295 does not fit")
    strings = DATA[section("STRINGS").offset :][: section("STRINGS").length]
    rejects(with_section("STRINGS", struct.pack("<I", 0xFFFF_FFF0) + strings[4:]), match="STRINGS: count")
    rejects(with_section("IO", struct.pack("<I", 10**9)), match="IO: entry count")
    rejects(with_section("CONSTANTS", struct.pack("<II", 2**31, 0)), match="CONSTANTS: constant count")


def test_string_index_out_of_range() -> None:
    meta = with_section("META", struct.pack("<III", 1, 0, 10**6))
    rejects(meta, match="META: 'compiler': string index 1000000 out of range")


def test_records_reject_bad_enums_and_reserved_fields() -> None:
    io = struct.pack("<I", 1) + B.IO.pack(0, 2, 0, 0, 0, 0, 0)
    rejects(with_section("IO", io), match="direction: value 2 is not one of 0..1 (input, output)")
    io = struct.pack("<I", 1) + B.IO.pack(0, 0, 7, 0, 0, 0, 0)
    rejects(with_section("IO", io), match="reserved field is 7")
    consts = struct.pack("<II", 1, 0) + B.CONSTANT.pack(0, 0, 0, 9, 0, 0, 48, 0)
    rejects(with_section("CONSTANTS", consts), match="encoding: value 9")
    consts = struct.pack("<II", 1, 0) + B.CONSTANT.pack(0, 0, 0, 1, 0, 0, 44, 0)
    rejects(with_section("CONSTANTS", consts), match="not an aligned range")
    consts = struct.pack("<II", 1, 0) + B.CONSTANT.pack(0, 0, 0, 1, 0, 0, 40, 16) + bytes(8)
    rejects(with_section("CONSTANTS", consts), match="not an aligned range")


def test_unused_bytes_in_a_section() -> None:
    body = DATA[section("ROUTES").offset :][: section("ROUTES").length]
    rejects(with_section("ROUTES", body + b"\0"), match="ROUTES: end: 1 unused bytes")


def test_dense_payload_size_is_checked() -> None:
    bs = sample()
    bs.constants[0].data = bytes(63)
    with pytest.raises(BitstreamError, match=r"CONSTANTS: constant 0 \('wq'\) data: 63 bytes, but dense f32 \[4, 4\] needs 64"):
        encode(bs)


# ---------------------------------------------------------------------------
# corruption fuzzing: boundaries, random flips, truncations, mutations behind valid CRCs


def boundaries() -> list[int]:
    points = {0, 8, 10, 12, 20, 24, 28, len(DATA)}
    points |= {B.HEADER.size + B.ENTRY.size * i for i in range(len(HEADER.sections) + 1)}
    for s in HEADER.sections:
        points |= {s.offset, s.offset + s.length}
    return sorted(points)


def test_flips_and_truncations_at_every_boundary() -> None:
    for b in boundaries():
        for at in (b - 1, b, b + 1):
            if 0 <= at < len(DATA):
                for mask in (0x01, 0x80, 0xFF):
                    rejects(DATA[:at] + bytes([DATA[at] ^ mask]) + DATA[at + 1 :])
        for cut in (b - 1, b, b + 1):
            if 0 <= cut < len(DATA):
                rejects(DATA[:cut], match="truncated" if cut < len(DATA) else None)


def test_random_flips_truncations_and_appends() -> None:
    rng = random.Random(4)
    for _ in range(800):
        at = rng.randrange(len(DATA))
        rejects(DATA[:at] + bytes([DATA[at] ^ rng.randrange(1, 256)]) + DATA[at + 1 :])
    for _ in range(300):
        rejects(DATA[: rng.randrange(len(DATA))], match="truncated")
    for _ in range(100):
        rejects(DATA + rng.randbytes(rng.randrange(1, 64)), match="trailing data")


def test_mutations_behind_valid_crcs_never_crash() -> None:
    """Random byte changes inside the record sections with the CRCs recomputed: the structural checks
    must answer with BitstreamError or a decoded Bitstream, never another exception."""
    rng = random.Random(7)
    spans = [(s.offset, s.offset + s.length) for s in HEADER.sections if s.name not in ("ARCH",)]
    decoded = 0
    for i in range(2500):
        out = bytearray(DATA)
        for _ in range(rng.choice((1, 1, 2, 4))):
            lo, hi = rng.choice(spans)
            at = rng.randrange(lo, hi)
            out[at] = rng.choice((0, 0xFF, rng.randrange(256), out[at] ^ (1 << rng.randrange(8))))
        data = refresh_crcs(out)
        try:
            bs = decode(data, source="t.bit")
        except BitstreamError as e:
            assert "decoder bug" not in str(e), str(e)
        else:
            decoded += 1
            again = encode(bs)  # what decodes re-encodes (not always to the same bytes: the strings may repeat)
            assert encode(decode(again)) == again
    assert 0 < decoded < 2500


# ---------------------------------------------------------------------------
# the encoder's checks


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda bs: setattr(bs.tiles[0].contexts[0].inputs[0], "register", -1), r"TILES: tile \(1,1\) context 0 input 0 register: -1 is out of range"),
        (lambda bs: setattr(bs.tiles[0], "x", 70000), r"tile \(70000,1\) x: 70000 is out of range"),
        (lambda bs: setattr(bs.tiles[0].contexts[0].body[0], "opcode", "x" * 33), "longer than 32 bytes"),
        (lambda bs: bs.tiles[0].contexts[0].body[0].params.update(p=[1, 2.5]), "mixes integers and floats"),
        (lambda bs: bs.tiles[0].contexts[0].body[0].params.update(p={"a": 1}), "unsupported value"),
        (lambda bs: setattr(bs.constants[0], "encoding", "zip"), "'zip' is not one of dense, nm, csr, block, butterfly"),
        (lambda bs: setattr(bs.dma[0], "direction", "both"), "DMA: descriptor 0 .* direction"),
        (lambda bs: bs.meta.update(when=3), "META: 'when': expected a string"),
        (lambda bs: setattr(bs.routes[0], "hops", [(0, 0, 1)]), "hop 0: expected a pair"),
        (lambda bs: setattr(bs, "arch_fingerprint", bytes(8)), "not the fingerprint of the embedded architecture"),
        (lambda bs: setattr(bs, "arch_fingerprint", b"abc"), "must be 8 bytes"),
        (lambda bs: setattr(bs.tiles[0].contexts[0].buffers[0], "double_buffered", 1), "expected a bool"),
    ],
)  # fmt: skip
def test_encoder_rejects_values_that_do_not_fit(change, match: str) -> None:
    bs = sample()
    change(bs)
    with pytest.raises(BitstreamError, match=match):
        encode(bs)


# ---------------------------------------------------------------------------
# files, the inspect command, the import contract


def test_write_read(tmp_path: Path) -> None:
    path = tmp_path / "out.bit"
    B.write(SAMPLE, path)
    assert path.read_bytes() == DATA
    assert B.read(path) == SAMPLE
    assert [p.name for p in tmp_path.iterdir()] == ["out.bit"]  # no temporary file left behind
    with pytest.raises(BitstreamError, match="cannot write"):
        B.write(SAMPLE, tmp_path / "missing" / "out.bit")
    with pytest.raises(BitstreamError, match="cannot read"):
        B.read(tmp_path / "nope.bit")


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bit"
    path.write_bytes(b"old")
    bad = sample()
    bad.tiles[0].x = -1
    with pytest.raises(BitstreamError):
        B.write(bad, path)
    assert path.read_bytes() == b"old"


def test_inspect_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.bit"
    path.write_bytes(DATA)
    assert run(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for needle in [
        "format version 1", "sections:", "CONSTANTS", f"arch: 'tiny', fingerprint {TINY_FP.hex()}",
        "pipeline = canonicalize,raise-attention", "tiles: 2 (2 contexts)", "tile (1,1) compute: 1 context(s)",
        "kernel 1 'qk_h0' gemm, ~1234 cycles", "in   r0 <- stream 10: f32[4x4] x 8 tokens",
        "buf  'acc' @0x0 1024 bytes, 2 bank(s), double-buffered", "loops m=2 > n=2 > k=4",
        "r2 = matmul r0, r3 {bias=[0.5, -1], mode='acc', scale=0.125, shift=-3, tile=[4, 4], transpose_b=True}",
        "const r3 = constant 0", "stream 10 'x': kernel 2 -> kernel 1, vc 1, 512 bytes, rate 0.25: (0,0) -> (1,0) -> (1,1)",
        "(3,3) store stream 12: dram 0x2000, 512 bytes, f32[8x16] strides [-16, 1]",
        "wk    f16    5x5    nm        27", "y     output     f32    1x8x4  0x2000  128",
    ]:  # fmt: skip
        assert needle in out, needle


def test_inspect_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.bit"
    path.write_bytes(DATA)
    assert run(["inspect", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"header", "arch", "meta", "tiles", "routes", "dma", "constants", "io"}
    assert doc["arch"]["name"] == "tiny" and doc["arch"]["source"] == TINY
    assert [s["kind"] for s in doc["header"]["sections"]] == list(B.SECTION_IDS)
    assert doc["tiles"][0]["contexts"][0]["body"][0]["params"]["tile"] == [4, 4]
    assert doc["routes"][0]["hops"] == [[0, 0], [1, 0], [1, 1]]
    assert doc["constants"][0] == {"id": 0, "name": "wq", "dtype": "f32", "shape": [4, 4], "encoding": "dense",
                                   "bytes": 64, "crc32": f"{zlib.crc32(bytes(range(64))):08x}"}  # fmt: skip


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.bit"
    path.write_bytes(DATA[:-3])
    assert run(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnc: error: {path}: truncated") and err.count("\n") == 1
    path.write_bytes(b"hello")
    assert run(["inspect", "--json", str(path)]) == 2
    assert "not an attnc bitstream" in capsys.readouterr().err
    assert run(["inspect", str(tmp_path / "none.bit")]) == 2


def test_bitstream_imports_no_compiler_internals() -> None:
    """The simulator reads bitstreams with this module and attnc.arch alone."""
    code = (
        "import sys, attnc.backend.bitstream as b; b.decode(open(sys.argv[1], 'rb').read()); "
        "print(sorted(m for m in sys.modules if m.startswith('attnc')))"
    )
    path = Path(__file__).parent / "_tmp_contract.bit"
    try:
        path.write_bytes(DATA)
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    finally:
        path.unlink(missing_ok=True)
    mods = eval(out)
    assert all(m in ("attnc", "attnc.errors", "attnc.limits", "attnc.backend", "attnc.backend.bitstream") or m.startswith("attnc.arch")
               for m in mods), mods  # fmt: skip

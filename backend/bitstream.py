"""The attnc configuration bitstream: its data classes, encoder and decoder (docs/bitstream.md).

The format is this one module: the simulator reads bitstreams with it and ``attnc.arch`` alone, so
the decoded ``Bitstream`` carries everything needed to run the configuration. Nothing here imports
other attnc modules except ``attnc.errors`` (and ``attnc.arch``, lazily, to fingerprint the embedded
architecture).

Layout, little-endian: a 28-byte header, a table of 24-byte section entries, then the sections, each
starting on an 8-byte boundary. Records are fixed-width structs followed by their variable parts
(dims, hops, operands), with strings stored once in the STRINGS section and referred to by index.

The decoder trusts nothing: every count is checked against the bytes that remain before anything is
allocated, and every failure is one ``BitstreamError`` line naming the section and field.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

from attnc import limits
from attnc.arch.datatypes import ELEMENT_BYTES, PACKED_NIBBLE_TYPES
from attnc.errors import AttncError

FORMAT_VERSION = 1
MAGIC = b"ATNCBIT\0"
ALIGN = 8

ParamValue = Union[int, float, str, bool, list[int], list[float]]


class BitstreamError(AttncError):
    """A bitstream that cannot be written or read; the message names the section and field."""


# ---------------------------------------------------------------------------
# the contract: what the backend fills in and the simulator reads


@dataclass
class Instr:
    """One micro-op of a kernel body."""

    opcode: str  # e.g. "matmul", "softmax", "add" (at most 32 bytes of UTF-8)
    operands: list[int]  # kernel-local register ids
    results: list[int]
    params: dict[str, ParamValue] = field(default_factory=dict)


@dataclass
class Port:
    register: int  # kernel-local register
    stream: int  # global stream id
    dtype: str
    shape: list[int]  # per-token shape
    tokens: int


@dataclass
class Buffer:
    name: str
    address: int
    size: int
    banks: int
    double_buffered: bool


@dataclass
class KernelConfig:
    """One context of a tile."""

    kernel: int
    name: str
    kind: str  # "gemm", "softmax", "elementwise", "reduce", "layer_norm", "attention", "dma_load", ...
    inputs: list[Port]
    outputs: list[Port]
    constants: list[tuple[int, int]]  # (kernel-local register, global constant id)
    buffers: list[Buffer]
    loops: list[tuple[str, int]]  # (loop name, trip count), outermost first
    body: list[Instr]
    cycles: int  # the compiler's estimate, for reports
    #: 0: holds its buffers for the whole run; p >= 1: only while it runs, after its tile's phases 1..p-1
    #: (buffers of different nonzero phases may share addresses; docs/bitstream.md)
    phase: int = 0


@dataclass
class TileConfig:
    x: int
    y: int
    kind: str
    contexts: list[KernelConfig]


@dataclass
class RouteConfig:
    """Router settings for one stream."""

    stream: int
    name: str
    src_kernel: int
    dst_kernel: int
    hops: list[tuple[int, int]]  # tile path, ends included
    vc: int
    bytes: int
    rate: float


@dataclass
class DmaDescriptor:
    channel: tuple[int, int]  # the DMA tile
    direction: str  # "load" (DRAM -> stream) | "store" (stream -> DRAM)
    stream: int
    dram_address: int
    bytes: int
    shape: list[int]
    strides: list[int]  # in elements; may be negative
    dtype: str


@dataclass
class ConstantEntry:
    id: int
    name: str
    dtype: str
    shape: list[int]
    encoding: str  # one of ENCODINGS; the payload layout of each is in docs/bitstream.md
    data: bytes


@dataclass
class IOEntry:
    name: str
    direction: str  # "input" | "output"
    dtype: str
    shape: list[int]
    dram_address: int
    bytes: int


@dataclass
class Bitstream:
    arch_source: str  # the architecture YAML text, embedded
    arch_fingerprint: bytes  # 8 bytes
    tiles: list[TileConfig] = field(default_factory=list)
    routes: list[RouteConfig] = field(default_factory=list)
    dma: list[DmaDescriptor] = field(default_factory=list)
    constants: list[ConstantEntry] = field(default_factory=list)
    io: list[IOEntry] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)  # compiler version, model, pipeline; no dates

    @property
    def arch_name(self) -> str:
        return arch_name(self.arch_source)


@dataclass(frozen=True)
class SectionInfo:
    """One entry of the section table."""

    kind: int
    name: str
    offset: int
    length: int
    crc32: int


@dataclass(frozen=True)
class Header:
    version: int
    flags: int
    fingerprint: bytes
    sections: tuple[SectionInfo, ...]
    size: int  # bytes in the file


# ---------------------------------------------------------------------------
# constants of the format

HEADER = struct.Struct("<8sHH8sII")  # magic, version, flags, fingerprint, section count, header CRC32
ENTRY = struct.Struct("<HHQQI")  # kind, reserved, offset, length, CRC32
MAX_SECTIONS = 64  # a sanity bound on the header's count, checked before the table is read

SECTION_KINDS = {1: "ARCH", 2: "STRINGS", 3: "META", 4: "TILES", 5: "ROUTES", 6: "DMA", 7: "CONSTANTS", 8: "IO"}
SECTION_IDS = {name: kind for kind, name in SECTION_KINDS.items()}

DMA_DIRECTIONS = ("load", "store")
IO_DIRECTIONS = ("input", "output")
ENCODINGS = ("dense", "nm", "csr", "block", "butterfly")
MAX_OPCODE_BYTES = 32


# Params values carry a one-byte tag.
TAG_INT, TAG_FLOAT, TAG_STR, TAG_BOOL, TAG_INTS, TAG_FLOATS = range(6)
TAG_NAMES = ("int", "float", "str", "bool", "list[int]", "list[float]")

# Fixed parts of the records (variable parts follow each).
TILE = struct.Struct("<HHII")  # x, y, kind str, context count
KERNEL = struct.Struct("<IIIQHHHHHHI")  # kernel, name, kind, cycles, #in, #out, #const, #buf, #loops, phase, #body
PORT = struct.Struct("<IIIQI")  # register, stream, dtype str, tokens, rank
CONST_REF = struct.Struct("<II")  # register, constant id
BUFFER = struct.Struct("<IQQIBBH")  # name, address, size, banks, double_buffered, reserved, reserved
LOOP = struct.Struct("<IQ")  # name, trip count
INSTR = struct.Struct("<IHHI")  # opcode str, #operands, #results, #params
PARAM = struct.Struct("<IBBH")  # key str, tag, reserved, reserved
ROUTE = struct.Struct("<IIIIIIQd")  # stream, name, src kernel, dst kernel, vc, #hops, bytes, rate
HOP = struct.Struct("<HH")
DMA = struct.Struct("<HHBBBBIIQQ")  # channel x, y, direction, rank, #strides, reserved, stream, dtype, address, bytes
CONSTANT = struct.Struct("<IIIBBHQQ")  # id, name, dtype, encoding, reserved, rank, data offset, data length
IO = struct.Struct("<IBBHIQQ")  # name, direction, reserved, rank, dtype, dram address, bytes
META = struct.Struct("<II")  # key str, value str
U32 = struct.Struct("<I")

_SIZES = {"B": 1, "H": 2, "I": 4, "Q": 8, "q": 8, "d": 8}
_LIMITS = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFF_FFFF, "Q": 0xFFFF_FFFF_FFFF_FFFF}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------------------
# the architecture: fingerprint and name of the embedded YAML


def _arch_module() -> Any:
    """``attnc.arch`` if it is installed, else None (then a plain sha256 of the text stands in)."""
    if importlib.util.find_spec("attnc.arch") is None:
        return None
    import attnc.arch

    return attnc.arch if hasattr(attnc.arch, "parse_arch") else None


def _fingerprint_bytes(fp: Any) -> bytes:
    return bytes.fromhex(fp) if isinstance(fp, str) else bytes(fp)


@lru_cache(maxsize=16)
def _embedded_arch(text: str) -> tuple[str, bytes]:
    """(name, fingerprint) of an architecture YAML text; cached: one compile or simulation reads it often."""
    arch = _arch_module()
    if arch is None:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        name = str(doc.get("name", "?")) if isinstance(doc, dict) else "?"
        return name, hashlib.sha256(text.encode()).digest()[:8]
    try:
        parsed = arch.parse_arch(text, source_name="<embedded arch>")
    except AttncError as e:
        raise BitstreamError(f"ARCH: the embedded architecture is invalid: {e}") from None
    return str(parsed.name), _fingerprint_bytes(parsed.fingerprint())


def arch_fingerprint(text: str) -> bytes:
    """The 8-byte fingerprint of an architecture YAML text, computed as ``attnc.arch`` does."""
    return _embedded_arch(text)[1]


def arch_name(text: str) -> str:
    """The ``name:`` of an architecture YAML text ('?' when it is not a valid architecture)."""
    try:
        return _embedded_arch(text)[0]
    except BitstreamError:
        return "?"


def embed_arch(arch: Any) -> tuple[str, bytes]:
    """``(arch_source, arch_fingerprint)`` for a ``Bitstream`` built for ``arch`` (an ``attnc.arch.Arch``):
    its YAML text as read, or its canonical YAML when it was built in code."""
    text = getattr(arch, "source", "") or _arch_module().dump_arch(arch)
    return text, _fingerprint_bytes(arch.fingerprint())


# ---------------------------------------------------------------------------
# encoder


class _Strings:
    """The string table: each distinct string once, numbered in order of first use."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, s: Any, where: str) -> int:
        if not isinstance(s, str):
            raise BitstreamError(f"{where}: expected a string, got {type(s).__name__} {s!r}")
        i = self.index.get(s)
        if i is None:
            try:
                s.encode()
            except UnicodeEncodeError:
                raise BitstreamError(f"{where}: {s!r} cannot be encoded as UTF-8") from None
            i = self.index[s] = len(self.index)
        return i

    def section(self) -> bytes:
        blobs = [s.encode() for s in self.index]
        offsets = [0]
        for b in blobs:
            offsets.append(offsets[-1] + len(b))
        if offsets[-1] > _LIMITS["I"]:
            raise BitstreamError(f"STRINGS: {offsets[-1]} bytes of strings exceed the 4 GiB limit")
        return struct.pack(f"<I{len(offsets)}I", len(blobs), *offsets) + b"".join(blobs)


class _Writer:
    """One section's bytes; every value is range-checked with a message naming the field."""

    def __init__(self, section: str, strings: _Strings) -> None:
        self.section = section
        self.buf = bytearray()
        self.strings = strings

    def fail(self, where: str, msg: str) -> BitstreamError:
        return BitstreamError(f"{self.section}: {where}: {msg}")

    def int(self, value: Any, where: str, code: str = "I") -> int:
        if type(value) is int and 0 <= value <= _LIMITS.get(code, -1):  # the common case, fast
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.fail(where, f"expected an integer, got {type(value).__name__} {value!r}")
        v = int(value)
        if code == "q":
            lo, hi = -(1 << 63), (1 << 63) - 1
        else:
            lo, hi = 0, _LIMITS[code]
        if not lo <= v <= hi:
            raise self.fail(where, f"{v} is out of range [{lo}, {hi}]")
        return v

    def float(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail(where, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)

    def str(self, value: Any, where: str) -> int:
        return self.strings(value, f"{self.section}: {where}")

    def list(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        return list(value)

    def pack(self, st: struct.Struct, *values: Any) -> None:
        self.buf += st.pack(*values)

    def ints(self, values: Any, where: str, code: str) -> None:
        vs = self.list(values, where)
        hi = _LIMITS.get(code)
        if not all(type(v) is int and (0 <= v <= hi if hi else -(1 << 63) <= v < (1 << 63)) for v in vs):
            vs = [self.int(v, f"{where}[{i}]", code) for i, v in enumerate(vs)]
        self.buf += struct.pack(f"<{len(vs)}{code}", *vs)

    def pair(self, value: Any, where: str) -> list[Any]:
        xs = self.list(value, where)
        if len(xs) != 2:
            raise self.fail(where, f"expected a pair, got {len(xs)} items")
        return xs

    def enum(self, value: Any, choices: tuple[str, ...], where: str) -> int:
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return choices.index(value)


def _encode_meta(bs: Bitstream, w: _Writer) -> None:
    if not isinstance(bs.meta, dict):
        raise w.fail("meta", f"expected a dict, got {type(bs.meta).__name__}")
    w.pack(U32, len(bs.meta))
    for key in sorted(bs.meta, key=lambda k: (not isinstance(k, str), str(k))):
        w.pack(META, w.str(key, "key"), w.str(bs.meta[key], f"'{key}'"))


def _encode_port(w: _Writer, p: Port, where: str) -> None:
    shape = w.list(p.shape, f"{where} shape")
    w.pack(
        PORT,
        w.int(p.register, f"{where} register"),
        w.int(p.stream, f"{where} stream"),
        w.str(p.dtype, f"{where} dtype"),
        w.int(p.tokens, f"{where} tokens", "Q"),
        w.int(len(shape), f"{where} rank"),
    )
    w.ints(shape, f"{where} shape", "Q")


def _param_tag(w: _Writer, value: Any, where: str) -> int:
    if isinstance(value, bool):
        return TAG_BOOL
    if isinstance(value, numbers.Integral):
        return TAG_INT
    if isinstance(value, numbers.Real):
        return TAG_FLOAT
    if isinstance(value, str):
        return TAG_STR
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            return TAG_INTS  # an empty list is a list[int]
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value) and any(
            not isinstance(v, numbers.Integral) for v in value
        ):
            if any(isinstance(v, numbers.Integral) for v in value):
                raise w.fail(where, "a list mixes integers and floats; make it all one type")
            return TAG_FLOATS
    raise w.fail(where, f"unsupported value {value!r} ({', '.join(TAG_NAMES)} only)")


def _encode_instr(w: _Writer, ins: Instr, where: str) -> None:
    op = w.str(ins.opcode, f"{where} opcode")
    if len(ins.opcode.encode()) > MAX_OPCODE_BYTES:
        raise w.fail(f"{where} opcode", f"{ins.opcode!r} is longer than {MAX_OPCODE_BYTES} bytes")
    operands = w.list(ins.operands, f"{where} operands")
    results = w.list(ins.results, f"{where} results")
    if not isinstance(ins.params, dict):
        raise w.fail(f"{where} params", f"expected a dict, got {type(ins.params).__name__}")
    w.pack(
        INSTR,
        op,
        w.int(len(operands), f"{where} operand count", "H"),
        w.int(len(results), f"{where} result count", "H"),
        len(ins.params),
    )
    w.ints(operands, f"{where} operands", "I")
    w.ints(results, f"{where} results", "I")
    for key in sorted(ins.params, key=lambda k: (not isinstance(k, str), str(k))):
        pw = f"{where} param '{key}'"
        value = ins.params[key]
        tag = _param_tag(w, value, pw)
        w.pack(PARAM, w.str(key, f"{where} param key"), tag, 0, 0)
        if tag == TAG_INT:
            w.buf += struct.pack("<q", w.int(value, pw, "q"))
        elif tag == TAG_FLOAT:
            w.buf += struct.pack("<d", float(value))
        elif tag == TAG_STR:
            w.pack(U32, w.str(value, pw))
        elif tag == TAG_BOOL:
            w.buf.append(int(value))
        elif tag == TAG_INTS:
            w.pack(U32, w.int(len(value), f"{pw} length"))
            w.ints(value, pw, "q")
        else:
            w.pack(U32, w.int(len(value), f"{pw} length"))
            w.buf += struct.pack(f"<{len(value)}d", *map(float, value))


def _encode_kernel(w: _Writer, k: KernelConfig, where: str) -> None:
    inputs, outputs = w.list(k.inputs, f"{where} inputs"), w.list(k.outputs, f"{where} outputs")
    consts, buffers = w.list(k.constants, f"{where} constants"), w.list(k.buffers, f"{where} buffers")
    loops, body = w.list(k.loops, f"{where} loops"), w.list(k.body, f"{where} body")
    w.pack(
        KERNEL,
        w.int(k.kernel, f"{where} kernel"),
        w.str(k.name, f"{where} name"),
        w.str(k.kind, f"{where} kind"),
        w.int(k.cycles, f"{where} cycles", "Q"),
        *(w.int(len(xs), f"{where} {what} count", "H") for xs, what in
          ((inputs, "input"), (outputs, "output"), (consts, "constant"), (buffers, "buffer"), (loops, "loop"))),
        w.int(k.phase, f"{where} phase", "H"),
        w.int(len(body), f"{where} body length"),
    )  # fmt: skip
    for i, p in enumerate(inputs):
        _encode_port(w, p, f"{where} input {i}")
    for i, p in enumerate(outputs):
        _encode_port(w, p, f"{where} output {i}")
    for i, c in enumerate(consts):
        reg, cid = w.pair(c, f"{where} constant {i}")
        w.pack(CONST_REF, w.int(reg, f"{where} constant {i} register"), w.int(cid, f"{where} constant {i} id"))
    for i, b in enumerate(buffers):
        bw = f"{where} buffer {i}"
        if not isinstance(b.double_buffered, bool):
            raise w.fail(f"{bw} double_buffered", f"expected a bool, got {b.double_buffered!r}")
        w.pack(
            BUFFER,
            w.str(b.name, f"{bw} name"),
            w.int(b.address, f"{bw} address", "Q"),
            w.int(b.size, f"{bw} size", "Q"),
            w.int(b.banks, f"{bw} banks"),
            int(b.double_buffered),
            0,
            0,
        )
    for i, loop in enumerate(loops):
        name, trips = w.pair(loop, f"{where} loop {i}")
        w.pack(LOOP, w.str(name, f"{where} loop {i} name"), w.int(trips, f"{where} loop {i} trip count", "Q"))
    for i, ins in enumerate(body):
        _encode_instr(w, ins, f"{where} body instr {i}")


def _encode_tiles(bs: Bitstream, w: _Writer) -> None:
    tiles = w.list(bs.tiles, "tiles")
    w.pack(U32, w.int(len(tiles), "tile count"))
    for t in tiles:
        where = f"tile ({t.x},{t.y})"
        contexts = w.list(t.contexts, f"{where} contexts")
        w.pack(
            TILE,
            w.int(t.x, f"{where} x", "H"),
            w.int(t.y, f"{where} y", "H"),
            w.str(t.kind, f"{where} kind"),
            w.int(len(contexts), f"{where} context count"),
        )
        for i, k in enumerate(contexts):
            _encode_kernel(w, k, f"{where} context {i}")


def _encode_routes(bs: Bitstream, w: _Writer) -> None:
    routes = w.list(bs.routes, "routes")
    w.pack(U32, w.int(len(routes), "route count"))
    for i, r in enumerate(routes):
        where = f"route {i} (stream {r.stream})"
        hops = w.list(r.hops, f"{where} hops")
        w.pack(
            ROUTE,
            w.int(r.stream, f"{where} stream"),
            w.str(r.name, f"{where} name"),
            w.int(r.src_kernel, f"{where} src_kernel"),
            w.int(r.dst_kernel, f"{where} dst_kernel"),
            w.int(r.vc, f"{where} vc"),
            w.int(len(hops), f"{where} hop count"),
            w.int(r.bytes, f"{where} bytes", "Q"),
            w.float(r.rate, f"{where} rate"),
        )
        for j, hop in enumerate(hops):
            x, y = w.pair(hop, f"{where} hop {j}")
            w.pack(HOP, w.int(x, f"{where} hop {j} x", "H"), w.int(y, f"{where} hop {j} y", "H"))


def _encode_dma(bs: Bitstream, w: _Writer) -> None:
    descs = w.list(bs.dma, "dma")
    w.pack(U32, w.int(len(descs), "descriptor count"))
    for i, d in enumerate(descs):
        where = f"descriptor {i} (stream {d.stream})"
        cx, cy = w.pair(d.channel, f"{where} channel")
        shape, strides = w.list(d.shape, f"{where} shape"), w.list(d.strides, f"{where} strides")
        w.pack(
            DMA,
            w.int(cx, f"{where} channel x", "H"),
            w.int(cy, f"{where} channel y", "H"),
            w.enum(d.direction, DMA_DIRECTIONS, f"{where} direction"),
            w.int(len(shape), f"{where} rank", "B"),
            w.int(len(strides), f"{where} stride count", "B"),
            0,
            w.int(d.stream, f"{where} stream"),
            w.str(d.dtype, f"{where} dtype"),
            w.int(d.dram_address, f"{where} dram_address", "Q"),
            w.int(d.bytes, f"{where} bytes", "Q"),
        )
        w.ints(shape, f"{where} shape", "Q")
        w.ints(strides, f"{where} strides", "q")


def _dense_bytes(dtype: str, shape: list[int]) -> int | None:
    if dtype in PACKED_NIBBLE_TYPES:
        return (bounded_prod(shape) + 1) // 2
    size = ELEMENT_BYTES.get(dtype)
    return None if size is None else size * bounded_prod(shape)


#: the product of a shape is capped here: a decoded shape has up to 65535 dims of 64 bits each, and an
#: exact product of those is a number of megabits computed in quadratic time
PROD_CAP = 1 << 80


def shape_text(shape: list[int], width: int = 60) -> str:
    """A shape for a message: ``[2, 3, 4]``, shortened when a hostile file declares thousands of dims."""
    text = "[" + ", ".join(map(str, shape[:32])) + "]"
    return text if len(text) <= width and len(shape) <= 32 else text[: width - 6] + ", ...]"


def bounded_prod(shape: Iterable[int], cap: int = PROD_CAP) -> int:
    """``math.prod(shape)`` for non-negative dims, or ``cap`` when it reaches ``cap`` (0 if any dim is 0)."""
    dims = list(shape)
    if any(d == 0 for d in dims):
        return 0
    n = 1
    for d in dims:
        n *= d
        if n >= cap:
            return cap
    return n


def _encode_constants(bs: Bitstream, w: _Writer) -> None:
    consts = w.list(bs.constants, "constants")
    w.pack(U32, w.int(len(consts), "constant count"))
    w.pack(U32, 0)  # reserved: keeps the entries 8-byte aligned
    entries = bytearray()
    payloads: list[tuple[int, bytes]] = []
    for i, c in enumerate(consts):
        where = f"constant {i} ('{c.name}')"
        shape = w.list(c.shape, f"{where} shape")
        if not isinstance(c.data, (bytes, bytearray, memoryview)):
            raise w.fail(f"{where} data", f"expected bytes, got {type(c.data).__name__}")
        data = bytes(c.data)
        enc = w.enum(c.encoding, ENCODINGS, f"{where} encoding")
        entry = _Writer(w.section, w.strings)
        entry.pack(
            CONSTANT,
            w.int(c.id, f"{where} id"),
            w.str(c.name, f"{where} name"),
            w.str(c.dtype, f"{where} dtype"),
            enc,
            0,
            w.int(len(shape), f"{where} rank", "H"),
            0,  # data offset: patched below, once the entries' size is known
            len(data),
        )
        entry.ints(shape, f"{where} shape", "Q")
        if c.encoding == "dense":
            expected = _dense_bytes(c.dtype, shape)
            if expected is not None and expected != len(data):
                raise w.fail(f"{where} data", f"{len(data)} bytes, but dense {c.dtype} {shape} needs {expected}")
        payloads.append((len(entries), data))
        entries += entry.buf
    pos = _align(len(w.buf) + len(entries))
    for at, data in payloads:
        struct.pack_into("<Q", entries, at + CONSTANT.size - 16, pos)
        pos = _align(pos + len(data))
    w.buf += entries
    for _, data in payloads:  # appended in place: weights can be many megabytes
        w.buf += bytes(_align(len(w.buf)) - len(w.buf))
        w.buf += data


def _encode_io(bs: Bitstream, w: _Writer) -> None:
    ios = w.list(bs.io, "io")
    w.pack(U32, w.int(len(ios), "entry count"))
    for i, e in enumerate(ios):
        where = f"entry {i} ('{e.name}')"
        shape = w.list(e.shape, f"{where} shape")
        w.pack(
            IO,
            w.str(e.name, f"{where} name"),
            w.enum(e.direction, IO_DIRECTIONS, f"{where} direction"),
            0,
            w.int(len(shape), f"{where} rank", "H"),
            w.str(e.dtype, f"{where} dtype"),
            w.int(e.dram_address, f"{where} dram_address", "Q"),
            w.int(e.bytes, f"{where} bytes", "Q"),
        )
        w.ints(shape, f"{where} shape", "Q")


_ENCODERS: dict[str, Callable[[Bitstream, _Writer], None]] = {
    "META": _encode_meta,
    "TILES": _encode_tiles,
    "ROUTES": _encode_routes,
    "DMA": _encode_dma,
    "CONSTANTS": _encode_constants,
    "IO": _encode_io,
}


def encode(bs: Bitstream) -> bytes:
    """The bytes of ``bs``; deterministic (dicts are written in sorted key order).

    Raises BitstreamError naming the field when a value does not fit the format, or when
    ``arch_fingerprint`` is not the fingerprint of ``arch_source``.
    """
    if not isinstance(bs.arch_source, str):
        raise BitstreamError(f"ARCH: arch_source must be the YAML text, got {type(bs.arch_source).__name__}")
    fp = bs.arch_fingerprint
    if not isinstance(fp, (bytes, bytearray)) or len(fp) != 8:
        raise BitstreamError(f"header: arch_fingerprint must be 8 bytes, got {fp!r}")
    actual = arch_fingerprint(bs.arch_source)
    if actual != fp:
        raise BitstreamError(
            f"header: arch_fingerprint {bytes(fp).hex()} is not the fingerprint of the embedded "
            f"architecture ({actual.hex()})"
        )
    strings = _Strings()
    bodies: dict[str, bytes | bytearray] = {"ARCH": bs.arch_source.encode()}
    for name, enc in _ENCODERS.items():
        w = _Writer(name, strings)
        enc(bs, w)
        bodies[name] = w.buf
    bodies["STRINGS"] = strings.section()
    return _assemble(bytes(fp), [(kind, bodies[name]) for kind, name in SECTION_KINDS.items()])


def _assemble(fingerprint: bytes, sections: list[tuple[int, bytes]], *, flags: int = 0) -> bytes:
    """Header + section table + sections, each section on an 8-byte boundary."""
    pos = _align(HEADER.size + ENTRY.size * len(sections))
    table = bytearray()
    placed: list[tuple[int, bytes]] = []
    for kind, body in sections:
        table += ENTRY.pack(kind, 0, pos, len(body), zlib.crc32(body))
        placed.append((pos, body))
        pos = _align(pos + len(body))
    head = HEADER.pack(MAGIC, FORMAT_VERSION, flags, fingerprint, len(sections), 0)[:-4]
    crc = zlib.crc32(table, zlib.crc32(head))
    parts = [head, U32.pack(crc), table]
    end = len(head) + 4 + len(table)
    for offset, body in placed:
        parts += [bytes(offset - end), body]
        end = offset + len(body)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# decoder


class _Reader:
    """A cursor over one section; every read is bounds-checked and every error names the field."""

    def __init__(self, data: bytes, section: str, strings: list[str] | None = None) -> None:
        self.data = data
        self.pos = 0
        self.section = section
        self.strings = strings or []

    def fail(self, where: str, msg: str) -> BitstreamError:
        return BitstreamError(f"{self.section}: {where}: {msg}")

    def take(self, n: int, where: str) -> int:
        start = self.pos
        if n > len(self.data) - start:
            raise self.fail(where, f"needs {n} bytes at section offset {start}, but the section ends at {len(self.data)}")
        self.pos += n
        return start

    def unpack(self, st: struct.Struct, where: str) -> tuple[Any, ...]:
        return st.unpack_from(self.data, self.take(st.size, where))

    def array(self, code: str, n: int, where: str) -> list[Any]:
        if n == 0:
            return []
        at = self.take(_SIZES[code] * n, where)
        return list(struct.unpack_from(f"<{n}{code}", self.data, at))

    def count(self, n: int, min_size: int, where: str) -> int:
        """Check a count against the bytes left before anything of that size is allocated."""
        left = len(self.data) - self.pos
        if n * min_size > left:
            raise self.fail(where, f"{n} does not fit: that needs at least {n * min_size} bytes, {left} remain")
        return n

    def str(self, i: int, where: str) -> str:
        if i >= len(self.strings):
            raise self.fail(where, f"string index {i} out of range (the string table has {len(self.strings)})")
        return self.strings[i]

    def enum(self, v: int, choices: tuple[str, ...], where: str) -> str:
        if v >= len(choices):
            raise self.fail(where, f"value {v} is not one of 0..{len(choices) - 1} ({', '.join(choices)})")
        return choices[v]

    def zero(self, v: int, where: str) -> None:
        if v:
            raise self.fail(where, f"reserved field is {v}, must be 0")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail("end", f"{len(self.data) - self.pos} unused bytes after the last record")


def _decode_strings(body: bytes) -> list[str]:
    r = _Reader(body, "STRINGS")
    (n,) = r.unpack(U32, "count")
    r.count(n + 1, 4, "count")
    offsets = r.array("I", n + 1, "offsets")
    blob = body[r.pos :]
    if offsets[0] != 0 or offsets[-1] != len(blob):
        raise r.fail("offsets", f"must run from 0 to the {len(blob)} bytes of text, got {offsets[0]}..{offsets[-1]}")
    out = []
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        if b < a:
            raise r.fail(f"string {i}", f"offsets go backwards ({a} then {b})")
        try:
            out.append(blob[a:b].decode())
        except UnicodeDecodeError:
            raise r.fail(f"string {i}", "not valid UTF-8") from None
    return out


def _decode_meta(r: _Reader) -> dict[str, str]:
    (n,) = r.unpack(U32, "count")
    meta: dict[str, str] = {}
    for _ in range(r.count(n, META.size, "count")):
        k, v = r.unpack(META, "entry")
        key = r.str(k, "key")
        if key in meta:
            raise r.fail(f"key {limits.shown(key)}", "repeated")
        meta[key] = r.str(v, limits.shown(key))
    return meta


def _decode_shape(r: _Reader, rank: int, where: str) -> list[int]:
    return r.array("Q", r.count(rank, 8, f"{where} rank"), f"{where} shape")


def _decode_port(r: _Reader, where: str) -> Port:
    reg, stream, dtype, tokens, rank = r.unpack(PORT, where)
    return Port(reg, stream, r.str(dtype, f"{where} dtype"), _decode_shape(r, rank, where), tokens)


def _decode_param(r: _Reader, tag: int, where: str) -> ParamValue:
    if tag == TAG_INT:
        return r.unpack(struct.Struct("<q"), where)[0]
    if tag == TAG_FLOAT:
        return r.unpack(struct.Struct("<d"), where)[0]
    if tag == TAG_STR:
        return r.str(r.unpack(U32, where)[0], where)
    if tag == TAG_BOOL:
        (b,) = r.unpack(struct.Struct("<B"), where)
        if b > 1:
            raise r.fail(where, f"bool value {b}, must be 0 or 1")
        return bool(b)
    (n,) = r.unpack(U32, f"{where} length")
    r.count(n, 8, f"{where} length")
    return r.array("q" if tag == TAG_INTS else "d", n, where)


def _decode_instr(r: _Reader, where: str) -> Instr:
    op, n_operands, n_results, n_params = r.unpack(INSTR, where)
    opcode = r.str(op, f"{where} opcode")
    if len(opcode.encode()) > MAX_OPCODE_BYTES:
        raise r.fail(f"{where} opcode", f"{limits.shown(opcode, 40)} is longer than {MAX_OPCODE_BYTES} bytes")
    operands = r.array("I", n_operands, f"{where} operands")
    results = r.array("I", n_results, f"{where} results")
    params: dict[str, ParamValue] = {}
    for _ in range(r.count(n_params, PARAM.size, f"{where} param count")):
        k, tag, res1, res2 = r.unpack(PARAM, f"{where} param")
        key = r.str(k, f"{where} param key")
        pw = f"{where} param {limits.shown(key)}"
        r.enum(tag, TAG_NAMES, f"{pw} tag")
        r.zero(res1 | res2, pw)
        if key in params:
            raise r.fail(pw, "repeated")
        params[key] = _decode_param(r, tag, pw)
    return Instr(opcode, operands, results, params)


def _decode_kernel(r: _Reader, where: str) -> KernelConfig:
    kid, name, kind, cycles, n_in, n_out, n_const, n_buf, n_loops, phase, n_body = r.unpack(KERNEL, where)
    name_s = r.str(name, f"{where} name")
    where = f"{where} (kernel {kid} {limits.shown(name_s)})"
    inputs = [_decode_port(r, f"{where} input {i}") for i in range(r.count(n_in, PORT.size, f"{where} input count"))]
    outputs = [
        _decode_port(r, f"{where} output {i}") for i in range(r.count(n_out, PORT.size, f"{where} output count"))
    ]
    consts = [
        tuple(r.unpack(CONST_REF, f"{where} constant {i}"))
        for i in range(r.count(n_const, CONST_REF.size, f"{where} constant count"))
    ]
    buffers = []
    for i in range(r.count(n_buf, BUFFER.size, f"{where} buffer count")):
        bw = f"{where} buffer {i}"
        bname, address, size, banks, double, res1, res2 = r.unpack(BUFFER, bw)
        r.zero(res1 | res2, bw)
        if double > 1:
            raise r.fail(f"{bw} double_buffered", f"value {double}, must be 0 or 1")
        buffers.append(Buffer(r.str(bname, f"{bw} name"), address, size, banks, bool(double)))
    loops = []
    for i in range(r.count(n_loops, LOOP.size, f"{where} loop count")):
        lname, trips = r.unpack(LOOP, f"{where} loop {i}")
        loops.append((r.str(lname, f"{where} loop {i} name"), trips))
    body = [_decode_instr(r, f"{where} body instr {i}") for i in range(r.count(n_body, INSTR.size, f"{where} body length"))]
    return KernelConfig(
        kid, name_s, r.str(kind, f"{where} kind"), inputs, outputs, consts, buffers, loops, body, cycles,  # type: ignore[arg-type]
        phase,
    )


def _decode_tiles(r: _Reader) -> list[TileConfig]:
    (n,) = r.unpack(U32, "tile count")
    tiles = []
    for i in range(r.count(n, TILE.size, "tile count")):
        x, y, kind, n_ctx = r.unpack(TILE, f"tile {i}")
        where = f"tile ({x},{y})"
        kind_s = r.str(kind, f"{where} kind")
        contexts = [
            _decode_kernel(r, f"{where} context {j}") for j in range(r.count(n_ctx, KERNEL.size, f"{where} context count"))
        ]
        tiles.append(TileConfig(x, y, kind_s, contexts))
    return tiles


def _decode_routes(r: _Reader) -> list[RouteConfig]:
    (n,) = r.unpack(U32, "route count")
    routes = []
    for i in range(r.count(n, ROUTE.size, "route count")):
        stream, name, src, dst, vc, n_hops, nbytes, rate = r.unpack(ROUTE, f"route {i}")
        where = f"route {i} (stream {stream})"
        r.count(n_hops, HOP.size, f"{where} hop count")
        flat = r.array("H", 2 * n_hops, f"{where} hops")
        hops = list(zip(flat[::2], flat[1::2]))
        routes.append(RouteConfig(stream, r.str(name, f"{where} name"), src, dst, hops, vc, nbytes, rate))
    return routes


def _decode_dma(r: _Reader) -> list[DmaDescriptor]:
    (n,) = r.unpack(U32, "descriptor count")
    descs = []
    for i in range(r.count(n, DMA.size, "descriptor count")):
        cx, cy, direction, rank, n_strides, reserved, stream, dtype, address, nbytes = r.unpack(DMA, f"descriptor {i}")
        where = f"descriptor {i} (stream {stream})"
        r.zero(reserved, where)
        d = r.enum(direction, DMA_DIRECTIONS, f"{where} direction")
        shape = _decode_shape(r, rank, where)
        strides = r.array("q", r.count(n_strides, 8, f"{where} stride count"), f"{where} strides")
        descs.append(DmaDescriptor((cx, cy), d, stream, address, nbytes, shape, strides, r.str(dtype, f"{where} dtype")))
    return descs


def _decode_constants(r: _Reader) -> list[ConstantEntry]:
    (n,) = r.unpack(U32, "constant count")
    r.zero(r.unpack(U32, "reserved")[0], "header")
    entries = []
    for i in range(r.count(n, CONSTANT.size, "constant count")):
        cid, name, dtype, enc, reserved, rank, offset, length = r.unpack(CONSTANT, f"constant {i}")
        name_s = r.str(name, f"constant {i} name")
        where = f"constant {i} ({limits.shown(name_s)})"
        r.zero(reserved, where)
        entries.append(
            (cid, name_s, r.str(dtype, f"{where} dtype"), _decode_shape(r, rank, where),
             r.enum(enc, ENCODINGS, f"{where} encoding"), offset, length, where)
        )  # fmt: skip
    out = []
    pos = r.pos  # payloads follow the entries, in order, each 8-byte aligned, zero padding between
    for cid, name_s, dtype, shape, enc, offset, length, where in entries:
        if offset % ALIGN or offset < pos or offset > len(r.data) or length > len(r.data) - offset:
            raise r.fail(
                f"{where} data",
                f"offset {offset} length {length} is not an aligned range after byte {pos} "
                f"within the section's {len(r.data)} bytes",
            )
        if any(r.data[pos:offset]):
            raise r.fail(f"{where} data", "nonzero padding before the payload")
        data = bytes(r.data[offset : offset + length])
        if enc == "dense":
            expected = _dense_bytes(dtype, shape)
            if expected is not None and expected != length:
                raise r.fail(f"{where} data", f"{length} bytes, but dense {limits.shown(dtype, 20)[1:-1]} "
                                              f"{shape_text(shape)} needs {expected if expected < PROD_CAP else 'more'}")
        out.append(ConstantEntry(cid, name_s, dtype, shape, enc, data))
        pos = offset + length
    r.pos = pos
    return out


def _decode_io(r: _Reader) -> list[IOEntry]:
    (n,) = r.unpack(U32, "entry count")
    ios = []
    for i in range(r.count(n, IO.size, "entry count")):
        name, direction, reserved, rank, dtype, address, nbytes = r.unpack(IO, f"entry {i}")
        name_s = r.str(name, f"entry {i} name")
        where = f"entry {i} ({limits.shown(name_s)})"
        r.zero(reserved, where)
        d = r.enum(direction, IO_DIRECTIONS, f"{where} direction")
        ios.append(IOEntry(name_s, d, r.str(dtype, f"{where} dtype"), _decode_shape(r, rank, where), address, nbytes))
    return ios


def read_header(data: bytes, *, source: str = "<bitstream>") -> Header:
    """Check the header and the section table (bounds, overlap, CRCs of every section)."""
    try:
        return _read_header(data)
    except BitstreamError as e:
        raise BitstreamError(f"{source}: {e}") from None


def _read_header(data: bytes) -> Header:
    size = len(data)
    if size < len(MAGIC) and MAGIC.startswith(data):
        raise BitstreamError(f"truncated: {size} bytes, the header alone needs {HEADER.size}")
    if data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not an attnc bitstream (bad magic)")
    if size < HEADER.size:
        raise BitstreamError(f"truncated: {size} bytes, the header alone needs {HEADER.size}")
    magic, version, flags, fp, count, crc = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BitstreamError(f"header: unknown format version {version} (this attnc reads version {FORMAT_VERSION})")
    if not 1 <= count <= MAX_SECTIONS:
        raise BitstreamError(f"header: section count {count} out of range (1..{MAX_SECTIONS})")
    table_end = HEADER.size + ENTRY.size * count
    if size < table_end:
        raise BitstreamError(f"truncated: {size} bytes, the header and section table need {table_end}")
    if zlib.crc32(data[HEADER.size : table_end], zlib.crc32(data[: HEADER.size - 4])) != crc:
        raise BitstreamError("header: CRC mismatch in the header or section table")
    if flags:
        raise BitstreamError(f"header: unknown flags 0x{flags:04x} (version {FORMAT_VERSION} defines none)")
    sections = []
    pos = table_end
    for i in range(count):
        kind, reserved, offset, length, scrc = ENTRY.unpack_from(data, HEADER.size + ENTRY.size * i)
        where = f"section table entry {i}"
        if kind not in SECTION_KINDS:
            raise BitstreamError(f"{where}: unknown section kind {kind}")
        name = SECTION_KINDS[kind]
        if reserved:
            raise BitstreamError(f"{where} ({name}): reserved field is {reserved}, must be 0")
        if sections and kind <= sections[-1].kind:
            raise BitstreamError(f"{where} ({name}): sections must appear once each, in kind order")
        if offset % ALIGN or offset < pos:
            raise BitstreamError(
                f"{where} ({name}): offset {offset} overlaps what precedes it (byte {pos}) or is not 8-byte aligned"
            )
        if offset > size or length > size - offset:
            raise BitstreamError(f"truncated: section {name} ends at byte {offset + length}, the file has {size}")
        if offset - pos >= ALIGN or any(data[pos:offset]):
            raise BitstreamError(f"{where} ({name}): bytes {pos}..{offset} before the section are not zero padding")
        if zlib.crc32(data[offset : offset + length]) != scrc:
            raise BitstreamError(f"section {name}: CRC mismatch (the section is corrupt)")
        sections.append(SectionInfo(kind, name, offset, length, scrc))
        pos = offset + length
    missing = [name for kind, name in SECTION_KINDS.items() if kind not in {s.kind for s in sections}]
    if missing:
        raise BitstreamError(f"section table: missing section(s) {', '.join(missing)}")
    if pos != size:
        raise BitstreamError(f"{size - pos} bytes of trailing data after the last section (ends at byte {pos})")
    return Header(version, flags, fp, tuple(sections), size)


_DECODERS: dict[str, Callable[[_Reader], Any]] = {
    "META": _decode_meta,
    "TILES": _decode_tiles,
    "ROUTES": _decode_routes,
    "DMA": _decode_dma,
    "CONSTANTS": _decode_constants,
    "IO": _decode_io,
}


def decode(data: bytes, *, source: str = "<bitstream>", expect_arch: Any = None) -> Bitstream:
    """Decode and check a bitstream; ``source`` (a file name) starts every error message.

    ``expect_arch`` (an ``attnc.arch.Arch``) rejects a bitstream built for another architecture.
    Raises only BitstreamError, whatever ``data`` holds.
    """
    try:
        data = bytes(data)
        header = _read_header(data)
        body = {s.name: data[s.offset : s.offset + s.length] for s in header.sections}
        limits.check(len(body["ARCH"]), "ARCH: the embedded architecture", limits.ARCH_FILE_BYTES)
        try:
            arch_source = body["ARCH"].decode()
        except UnicodeDecodeError:
            raise BitstreamError("ARCH: the embedded architecture is not UTF-8 text") from None
        strings = _decode_strings(body["STRINGS"])
        fields: dict[str, Any] = {}
        for name, dec in _DECODERS.items():
            r = _Reader(body[name], name, strings)
            fields[name] = dec(r)
            r.end()
        actual = arch_fingerprint(arch_source)
        if actual != header.fingerprint:
            raise BitstreamError(
                f"header: architecture fingerprint {header.fingerprint.hex()} does not match the embedded "
                f"architecture's ({actual.hex()})"
            )
        if expect_arch is not None:
            want = _fingerprint_bytes(expect_arch.fingerprint())
            if want != header.fingerprint:
                raise BitstreamError(
                    f"built for arch {limits.shown(arch_name(arch_source))} (fingerprint {header.fingerprint.hex()}), "
                    f"not '{getattr(expect_arch, 'name', '?')}' ({want.hex()})"
                )
    except AttncError as e:  # BitstreamError, or a limit of attnc.limits
        raise BitstreamError(f"{source}: {e}") from None
    except (MemoryError, RecursionError) as e:
        # every declared size is checked before allocating, so this means the machine itself is short
        raise BitstreamError(f"{source}: too large to decode on this machine ({type(e).__name__})") from None
    except Exception as e:
        # A safety net: every check above should fire first. Tests look for this text.
        raise BitstreamError(f"{source}: malformed bitstream (decoder bug: {type(e).__name__}: {e})") from None
    return Bitstream(
        arch_source=arch_source,
        arch_fingerprint=header.fingerprint,
        tiles=fields["TILES"],
        routes=fields["ROUTES"],
        dma=fields["DMA"],
        constants=fields["CONSTANTS"],
        io=fields["IO"],
        meta=fields["META"],
    )


# ---------------------------------------------------------------------------
# files


def write(bs: Bitstream, path: str | os.PathLike[str]) -> None:
    """Encode ``bs`` to ``path`` atomically (a temporary file renamed onto ``path``)."""
    data = encode(bs)
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise BitstreamError(f"{path}: cannot write: {e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise BitstreamError(f"{path}: cannot write: {e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike[str], *, expect_arch: Any = None) -> Bitstream:
    """Read and decode the bitstream file ``path``."""
    return decode(_read_bytes(path), source=str(path), expect_arch=expect_arch)


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; one above the FILE_BYTES limit is refused before it is read."""
    cap = limits.FILE_BYTES.value()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            limits.check(size, f"{path}", limits.FILE_BYTES)
            # in chunks: read(cap + 1) would reserve a buffer of the whole limit; a special file or one
            # that grows is still read only up to the limit
            chunks, total = [], 0
            while chunk := f.read(min(1 << 24, cap + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                limits.check(total, f"{path}", limits.FILE_BYTES)
            data = b"".join(chunks)
    except AttncError as e:
        raise BitstreamError(str(e)) from None
    except OSError as e:
        raise BitstreamError(f"{path}: cannot read: {e.strerror or e}") from None
    return data


# ---------------------------------------------------------------------------
# inspection: `attnc inspect FILE.bit [--json]`


def _dims(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def to_json(bs: Bitstream, header: Header | None = None) -> dict[str, Any]:
    """A JSON-ready dict of everything in ``bs`` except the constants' data (their size and CRC32 instead)."""
    from dataclasses import asdict

    out: dict[str, Any] = {}
    if header is not None:
        out["header"] = {
            "format_version": header.version,
            "flags": header.flags,
            "fingerprint": header.fingerprint.hex(),
            "size": header.size,
            "sections": [
                {"kind": s.name, "offset": s.offset, "length": s.length, "crc32": f"{s.crc32:08x}"}
                for s in header.sections
            ],
        }
    out["arch"] = {"name": arch_name(bs.arch_source), "fingerprint": bs.arch_fingerprint.hex(), "source": bs.arch_source}
    out["meta"] = dict(bs.meta)
    out["tiles"] = [asdict(t) for t in bs.tiles]
    out["routes"] = [asdict(r) for r in bs.routes]
    out["dma"] = [asdict(d) for d in bs.dma]
    out["constants"] = [
        {"id": c.id, "name": c.name, "dtype": c.dtype, "shape": c.shape, "encoding": c.encoding,
         "bytes": len(c.data), "crc32": f"{zlib.crc32(c.data):08x}"}
        for c in bs.constants
    ]  # fmt: skip
    out["io"] = [asdict(e) for e in bs.io]
    return out


def _param_text(v: ParamValue) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _port_text(p: Port, arrow: str) -> str:
    return f"r{p.register} {arrow} stream {p.stream}: {p.dtype}[{_dims(p.shape)}] x {p.tokens} tokens"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def describe(bs: Bitstream, header: Header | None = None, *, source: str = "<bitstream>") -> str:
    """Every section in readable text (constants without their data)."""
    lines: list[str] = []
    if header is not None:
        lines.append(f"{source}: attnc bitstream, format version {header.version}, flags 0x{header.flags:04x}, "
                     f"{header.size} bytes")  # fmt: skip
        lines.append("sections:")
        lines += _table(
            [["kind", "offset", "length", "crc32"]]
            + [[s.name, str(s.offset), str(s.length), f"{s.crc32:08x}"] for s in header.sections]
        )
    lines.append(f"arch: '{arch_name(bs.arch_source)}', fingerprint {bs.arch_fingerprint.hex()}, "
                 f"{len(bs.arch_source.encode())} bytes of YAML")  # fmt: skip
    lines.append(f"meta: {len(bs.meta)}")
    lines += [f"  {k} = {v}" for k, v in sorted(bs.meta.items())]
    n_ctx = sum(len(t.contexts) for t in bs.tiles)
    lines.append(f"tiles: {len(bs.tiles)} ({n_ctx} contexts)")
    for t in bs.tiles:
        lines.append(f"  tile ({t.x},{t.y}) {t.kind}: {len(t.contexts)} context(s)")
        for i, k in enumerate(t.contexts):
            phase = f", SRAM phase {k.phase}" if k.phase else ""
            lines.append(f"    [{i}] kernel {k.kernel} '{k.name}' {k.kind}, ~{k.cycles} cycles{phase}")
            lines += [f"        in   {_port_text(p, '<-')}" for p in k.inputs]
            lines += [f"        out  {_port_text(p, '->')}" for p in k.outputs]
            lines += [f"        const r{reg} = constant {cid}" for reg, cid in k.constants]
            for b in k.buffers:
                lines.append(f"        buf  '{b.name}' @0x{b.address:x} {b.size} bytes, {b.banks} bank(s)"
                             + (", double-buffered" if b.double_buffered else ""))  # fmt: skip
            if k.loops:
                lines.append("        loops " + " > ".join(f"{n}={trips}" for n, trips in k.loops))
            for ins in k.body:
                res = ", ".join(f"r{x}" for x in ins.results)
                ops = ", ".join(f"r{x}" for x in ins.operands)
                params = ", ".join(f"{key}={_param_text(v)}" for key, v in ins.params.items())
                lines.append(f"        {res + ' = ' if res else ''}{ins.opcode} {ops}".rstrip()
                             + (f" {{{params}}}" if params else ""))  # fmt: skip
    lines.append(f"routes: {len(bs.routes)}")
    for r in bs.routes:
        path = " -> ".join(f"({x},{y})" for x, y in r.hops)
        lines.append(f"  stream {r.stream} '{r.name}': kernel {r.src_kernel} -> kernel {r.dst_kernel}, "
                     f"vc {r.vc}, {r.bytes} bytes, rate {r.rate:g}: {path}")  # fmt: skip
    lines.append(f"dma: {len(bs.dma)}")
    for d in bs.dma:
        lines.append(f"  ({d.channel[0]},{d.channel[1]}) {d.direction} stream {d.stream}: dram 0x{d.dram_address:x}, "
                     f"{d.bytes} bytes, {d.dtype}[{_dims(d.shape)}] strides {list(d.strides)}")  # fmt: skip
    lines.append(f"constants: {len(bs.constants)}")
    if bs.constants:
        lines += _table([["id", "name", "dtype", "shape", "encoding", "bytes"]]
                        + [[str(c.id), c.name, c.dtype, _dims(c.shape), c.encoding, str(len(c.data))]
                           for c in bs.constants])  # fmt: skip
    lines.append(f"io: {len(bs.io)}")
    if bs.io:
        lines += _table([["name", "direction", "dtype", "shape", "dram", "bytes"]]
                        + [[e.name, e.direction, e.dtype, _dims(e.shape), f"0x{e.dram_address:x}", str(e.bytes)]
                           for e in bs.io])  # fmt: skip
    # names come from the file: a newline or a bidi control in one must not forge lines of the listing
    return "\n".join(limits.shown(line, len(line) + 1)[1:-1] for line in lines) + "\n"


def inspect_file(path: str, *, as_json: bool = False) -> str:
    """What ``attnc inspect`` prints for ``path``."""
    import json

    data = _read_bytes(path)
    bs = decode(data, source=path)
    header = read_header(data, source=path)
    if as_json:
        return json.dumps(to_json(bs, header), indent=1) + "\n"
    return describe(bs, header, source=path)

"""Reading and validating architecture YAML (the format is docs/arch.md).

Every problem raises one ``AttncError`` of the form ``FILE:LINE: path.to.field: what is wrong``;
unknown keys suggest the closest valid one. A custom YAML loader keeps the line of every key,
rejects duplicate keys (plain PyYAML keeps the last one silently) and lets nothing but plain
data through.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable
from typing import Any

import yaml

from attnc import limits
from attnc.arch.model import DEFAULT_BANK_BYTES_PER_CYCLE, DRAM, ENERGY_ACTIONS, KIND_LETTERS, LETTER_KINDS, TILE_KINDS, Arch, FrozenMap, NoC, Tile
from attnc.errors import AttncError

FORMAT_VERSION = 1
#: bounds on any count or rate of a file: far beyond any real array, and small enough that every figure derived
#: from them (cycles, bytes per cycle, energy) stays a 64-bit integer in the IR and the bitstream
MAX_INT = 1 << 30
MAX_NUMBER = 1e9
SUPPORTED_VERSIONS = (1,)
DATATYPES = ("f32", "f16", "bf16", "i32", "i16", "i8", "i4")
TOPOLOGIES = ("mesh",)
MAX_GRID = 255  # a coordinate fits one byte
MAX_TILE_SRAM = (1 << 32) - 1  # a tile's buffer is addressed with 32 bits

TOP_KEYS = ("version", "name", "description", "grid", "clock_mhz", "tile_kinds", "layout", "noc", "dram",
            "datatypes", "energy_pj")  # fmt: skip
TOP_OPTIONAL = ("description",)
COMMON_TILE_KEYS = ("contexts", "sram", "sram_banks", "sram_bank_bytes_per_cycle")
KIND_KEYS = {
    "compute": ("mac_array", "vector_lanes", "exp_per_cycle"),
    "sfu": ("vector_lanes",),
    "butterfly": ("vector_lanes",),
    "memory": (),
    "dma": ("dma_channels",),
}
SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------------
# YAML with line numbers


class _Map(dict):
    """A mapping that remembers its own line and the line of each key (1-based)."""

    line = 0
    lines: dict[str, int]


class _Seq(list):
    line = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)  # YAML merge keys (<<)
    m = _Map()
    m.line, m.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise _YamlKeyError(line, f"key {limits.shown(repr(key), 40)[1:-1]} is not a string")
        if key in m:
            raise _YamlKeyError(line, f"duplicate key {limits.shown(key)} (first at line {m.lines[key]})")
        m[key] = loader.construct_object(value_node, deep=True)
        m.lines[key] = line
    return m


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    s = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    s.line, s.lines = node.start_mark.line + 1, [child.start_mark.line + 1 for child in node.value]
    return s


# YAML 1.1 (PyYAML) reads 1e-3 and 1e3 as strings; a person writing an energy table means numbers.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class _YamlKeyError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _count_nodes(root: yaml.Node, cap: int) -> int:
    """How many nodes ``root`` expands to when every alias is replaced by what it refers to, counted
    without expanding (each distinct node once, memoised), stopping as soon as the count passes ``cap``.
    Raises _YamlNodeError for a node that contains itself (a recursive alias)."""
    memo: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1
            for child in _children(node):
                total += memo[id(child)]
                if total > cap:
                    raise _YamlNodeError(node.start_mark.line + 1, total)
            memo[key] = total
            continue
        if key in memo:
            continue
        if key in on_path:
            raise _YamlNodeError(node.start_mark.line + 1, None)
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise _YamlNodeError(child.start_mark.line + 1, None)
            if id(child) not in memo:
                stack.append((child, False))
    return memo[id(root)]


class _YamlNodeError(Exception):
    def __init__(self, line: int, count: int | None) -> None:
        super().__init__(count)
        self.line, self.count = line, count


def _load_yaml(text: str) -> Any:
    """``yaml.load(text, _Loader)``, but the composed node graph is measured before anything is built:
    aliases (a "billion laughs" chain) may not expand to more than the ARCH_NODES limit."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, limits.ARCH_NODES.value())
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------
# field readers


class _Reader:
    """Typed access to the parsed YAML with errors that name file, line and field path."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name

    def fail(self, line: int, path: str, message: str) -> AttncError:
        where = f"{self.source_name}:{line}" if line else self.source_name
        path = limits.shown(path, 80)[1:-1]  # keys come from the file: escaped, shortened
        return AttncError(f"{where}: {path}: {message}" if path else f"{where}: {message}")

    def mapping(self, value: Any, path: str, line: int, what: str = "a mapping of keys to values") -> _Map:
        if not isinstance(value, _Map):
            raise self.fail(line, path, f"expected {what}, got {_describe(value)}")
        return value

    def keys(self, m: _Map, path: str, allowed: Iterable[str], optional: Iterable[str] = ()) -> None:
        allowed, optional = tuple(allowed), set(optional)
        for key in m:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(allowed)}"
                raise self.fail(m.lines[key], _join(path, key), f"unknown key ({hint})")
        for key in allowed:
            if key not in m and key not in optional:
                raise self.fail(m.line, path or "top level", f"missing key '{key}'")

    def int(self, m: _Map, key: str, path: str, lo: int, hi: int | None = MAX_INT) -> int:
        value, where = m[key], _join(path, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(m.lines[key], where, f"expected an integer, got {_describe(value)}")
        _check_range(self, m.lines[key], where, value, lo, hi)
        return value

    def number(self, m: _Map, key: str, path: str, lo: float, *, positive: bool = False,
               hi: float = MAX_NUMBER) -> float:
        value, where = m[key], _join(path, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(m.lines[key], where, f"expected a finite number, got {_describe(value)}")
        if positive and value <= 0:
            raise self.fail(m.lines[key], where, f"must be positive, got {value}")
        if value < lo:
            raise self.fail(m.lines[key], where, f"must be at least {lo}, got {value}")
        if value > hi:
            raise self.fail(m.lines[key], where, f"must be at most {hi:g}, got {value:g}")
        return float(value)

    def string(self, m: _Map, key: str, path: str) -> str:
        value = m[key]
        if not isinstance(value, str):
            raise self.fail(m.lines[key], _join(path, key), f"expected a string, got {_describe(value)}")
        return value

    def size(self, m: _Map, key: str, path: str) -> int:
        """Bytes: an integer, or a string like '64 KiB' (units B, KiB, MiB, GiB)."""
        value, where, line = m[key], _join(path, key), m.lines[key]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.fail(line, where, f"expected a size (bytes, or e.g. '64 KiB'), got {_describe(value)}")
        if isinstance(value, int):
            n = value
        else:
            match = _SIZE_RE.match(value)
            if not match:
                raise self.fail(line, where, f"cannot read size {limits.shown(value)} (expected e.g. '64 KiB' or 65536)")
            number, unit = match.groups()
            if unit not in SIZE_UNITS:
                close = difflib.get_close_matches(unit, SIZE_UNITS, n=1, cutoff=0.3)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.fail(line, where, f"unknown unit {limits.shown(unit)} (use {', '.join(SIZE_UNITS)}: binary units{hint})")
            exact = float(number) * SIZE_UNITS[unit]
            if not math.isfinite(exact) or exact > MAX_TILE_SRAM:
                raise self.fail(line, where, f"must be at most {MAX_TILE_SRAM} bytes, got {limits.shown(value, 40)}")
            if exact != int(exact):
                raise self.fail(line, where, f"{limits.shown(value)} is not a whole number of bytes")
            n = int(exact)
        _check_range(self, line, where, n, 0, MAX_TILE_SRAM)
        return n


def _check_range(r: _Reader, line: int, where: str, value: int, lo: int, hi: int | None) -> None:
    if value < lo:
        raise r.fail(line, where, f"must be {'positive' if lo == 1 else f'at least {lo}'}, got {value}")
    if hi is not None and value > hi:
        raise r.fail(line, where, f"must be at most {hi}, got {value}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value))
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if kind:
        return f"{kind} ({limits.shown(repr(value), 40)[1:-1]})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# ---------------------------------------------------------------------------
# the description


def parse_arch(text: str, source_name: str = "<arch>") -> Arch:
    """Parse and validate an architecture description (YAML text)."""
    r = _Reader(source_name)
    limits.check(len(text.encode("utf-8", "surrogatepass")), source_name, limits.ARCH_FILE_BYTES)
    try:
        doc = _load_yaml(text)
    except _YamlKeyError as e:
        raise r.fail(e.line, "", str(e)) from None
    except _YamlNodeError as e:
        if e.count is None:
            raise r.fail(e.line, "", "a YAML alias refers to a node that contains it (recursive)") from None
        cap = limits.ARCH_NODES
        raise r.fail(
            e.line, "",
            f"the YAML expands (aliases included) to more than {cap.value():,} nodes, the {cap.name} limit "
            f"(set {cap.env} to raise it)",
        ) from None  # fmt: skip
    except RecursionError:
        raise r.fail(0, "", "the YAML is nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal of more digits than Python converts
        raise r.fail(0, "", f"cannot read a value: {limits.shown(' '.join(str(e).split()), 120)[1:-1]}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = limits.shown(" ".join(str(e.problem or e.context or "invalid YAML").split()), 120)[1:-1]
        raise r.fail(mark.line + 1 if mark else 0, "", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise r.fail(0, "", f"YAML error: {limits.shown(' '.join(str(e).split()), 120)[1:-1]}") from None
    if doc is None:
        raise r.fail(0, "", "empty architecture description")
    if not isinstance(doc, _Map):  # said without quoting the text: it may be any file (--arch /etc/passwd)
        got = _describe(doc).split(" (")[0]
        raise r.fail(1, "", f"expected a mapping at the top level (version, name, grid, ...), got {got}: "
                            "not an architecture description")
    top = doc

    if "version" in top:  # checked first: a newer file may have keys this reader does not know
        version = top["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise r.fail(top.lines["version"], "version", f"expected an integer, got {_describe(version)}")
        if version not in SUPPORTED_VERSIONS:
            raise r.fail(
                top.lines["version"], "version",
                f"unsupported format version {version} (this attnc reads {', '.join(map(str, SUPPORTED_VERSIONS))})",
            )  # fmt: skip
    r.keys(top, "", TOP_KEYS, TOP_OPTIONAL)
    if "description" in top:
        r.string(top, "description", "")

    name = r.string(top, "name", "")
    if not _NAME_RE.match(name):
        raise r.fail(top.lines["name"], "name", f"{limits.shown(name)} must be letters, digits, '_', '.', '+' or '-'")

    grid = r.mapping(top["grid"], "grid", top.lines["grid"])
    r.keys(grid, "grid", ("width", "height"))
    width = r.int(grid, "width", "grid", 1, MAX_GRID)
    height = r.int(grid, "height", "grid", 1, MAX_GRID)
    clock_mhz = r.number(top, "clock_mhz", "", 0, positive=True, hi=1e5)  # 100 GHz

    kinds = _tile_kinds(r, top)
    tiles = _layout(r, top, width, height, kinds)
    noc = _noc(r, top)
    dram = _dram(r, top, clock_mhz)
    datatypes = _datatypes(r, top)
    energy = _energy(r, top)
    return Arch(
        name=name, width=width, height=height, clock_mhz=clock_mhz, tiles=tiles, noc=noc, dram=dram,
        datatypes=datatypes, energy_pj=FrozenMap(energy), source=text,
    )  # fmt: skip


def _tile_kinds(r: _Reader, top: _Map) -> dict[str, dict[str, int]]:
    """``tile_kinds:`` -> {kind: Tile keyword arguments except x, y, kind}."""
    m = r.mapping(top["tile_kinds"], "tile_kinds", top.lines["tile_kinds"])
    for key in m:
        if key not in TILE_KINDS:
            close = difflib.get_close_matches(key, TILE_KINDS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"tile kinds are {', '.join(TILE_KINDS)}"
            raise r.fail(m.lines[key], f"tile_kinds.{key}", f"unknown tile kind ({hint})")
    out: dict[str, dict[str, int]] = {}
    for kind, value in m.items():
        path = f"tile_kinds.{kind}"
        spec = r.mapping(value, path, m.lines[kind])
        r.keys(spec, path, COMMON_TILE_KEYS + KIND_KEYS[kind], optional=("sram_banks", "sram_bank_bytes_per_cycle", "exp_per_cycle"))
        p: dict[str, int] = {"contexts": r.int(spec, "contexts", path, 1, 255)}
        sram = r.size(spec, "sram", path)
        if sram == 0 and kind != "dma":
            raise r.fail(spec.lines["sram"], f"{path}.sram", f"a {kind} tile needs a buffer (only dma tiles may have 0)")
        if "sram_banks" in spec:
            banks = r.int(spec, "sram_banks", path, 0 if sram == 0 else 1)
            if sram == 0 and banks:
                raise r.fail(spec.lines["sram_banks"], f"{path}.sram_banks", "must be 0 when sram is 0")
            if sram and (banks > sram or sram % banks):
                raise r.fail(
                    spec.lines["sram_banks"], f"{path}.sram_banks",
                    f"{banks} banks do not divide {sram} bytes of sram into equal whole-byte banks",
                )  # fmt: skip
        else:
            banks = 1 if sram else 0
        p["sram_bytes"], p["sram_banks"] = sram, banks
        if "sram_bank_bytes_per_cycle" in spec:  # the banks' port width: what the timing lets the buffers move
            p["sram_bank_bytes_per_cycle"] = r.int(spec, "sram_bank_bytes_per_cycle", path, 1)
        if kind == "compute":
            rows, cols = _mac_array(r, spec, path)
            p["mac_rows"], p["mac_cols"] = rows, cols
        if "vector_lanes" in KIND_KEYS[kind]:
            p["vector_lanes"] = r.int(spec, "vector_lanes", path, 1)
        if "exp_per_cycle" in spec:  # an exp unit beside the lanes; without one, no exp runs on the tile
            p["exp_per_cycle"] = r.int(spec, "exp_per_cycle", path, 0)
        if kind == "dma":
            p["dma_channels"] = r.int(spec, "dma_channels", path, 1, 255)
        out[kind] = p
    return out


def _mac_array(r: _Reader, spec: _Map, path: str) -> tuple[int, int]:
    value, where, line = spec["mac_array"], f"{path}.mac_array", spec.lines["mac_array"]
    if not isinstance(value, list) or len(value) != 2:
        raise r.fail(line, where, f"expected [rows, cols] (two integers), got {_describe(value)}")
    pair = _Map(rows=value[0], cols=value[1])
    pair.line, pair.lines = line, {"rows": line, "cols": line}
    return r.int(pair, "rows", where, 1, 4096), r.int(pair, "cols", where, 1, 4096)


def _layout(r: _Reader, top: _Map, width: int, height: int, kinds: dict[str, dict[str, int]]) -> tuple[Tile, ...]:
    rows, line = top["layout"], top.lines["layout"]
    letters = ", ".join(f"{c} {k}" for k, c in KIND_LETTERS.items())
    if not isinstance(rows, _Seq) or not all(isinstance(row, str) for row in rows):
        raise r.fail(line, "layout", f"expected a list of rows, each a string of one-letter tile codes ({letters})")
    if len(rows) != height:
        raise r.fail(line, "layout", f"{len(rows)} rows for a grid of height {height}")
    tiles: list[Tile] = []
    for y, (row, row_line) in enumerate(zip(rows, rows.lines)):
        cells = row.replace(" ", "")  # spaces between letters are optional
        if len(cells) != width:
            raise r.fail(row_line, f"layout[{y}]", f"{limits.shown(row)} has {len(cells)} tiles for a grid of width {width}")
        for x, letter in enumerate(cells):
            if letter not in LETTER_KINDS:
                raise r.fail(
                    row_line, f"layout[{y}]",
                    f"unknown tile code '{letter}' at column {x} (codes: {letters}; every cell is a tile)",
                )  # fmt: skip
            kind = LETTER_KINDS[letter]
            if kind not in kinds:
                raise r.fail(row_line, f"layout[{y}]", f"'{letter}' at column {x}: tile_kinds has no '{kind}' entry")
            if kind == "dma" and not (x in (0, width - 1) or y in (0, height - 1)):
                raise r.fail(row_line, f"layout[{y}]", f"dma tile at ({x}, {y}) is not on the edge of the grid")
            tiles.append(Tile(x=x, y=y, kind=kind, **kinds[kind]))
    for kind in ("dma", "compute"):
        if not any(t.kind == kind for t in tiles):
            raise r.fail(line, "layout", f"the grid has no {kind} tile ('{KIND_LETTERS[kind]}'); it needs at least one")
    return tuple(tiles)


def _noc(r: _Reader, top: _Map) -> NoC:
    m = r.mapping(top["noc"], "noc", top.lines["noc"])
    r.keys(m, "noc", ("topology", "link_bytes_per_cycle", "hop_latency", "virtual_channels"), optional=("topology",))
    topology = r.string(m, "topology", "noc") if "topology" in m else "mesh"
    if topology not in TOPOLOGIES:
        raise r.fail(m.lines["topology"], "noc.topology", f"unsupported topology {limits.shown(topology)} (supported: mesh)")
    return NoC(
        topology=topology,
        link_bytes_per_cycle=r.int(m, "link_bytes_per_cycle", "noc", 1),
        hop_latency=r.int(m, "hop_latency", "noc", 1),
        virtual_channels=r.int(m, "virtual_channels", "noc", 1, 255),
    )


def _dram(r: _Reader, top: _Map, clock_mhz: float) -> DRAM:
    m = r.mapping(top["dram"], "dram", top.lines["dram"])
    r.keys(m, "dram", ("bandwidth_gib_s", "latency_ns", "latency_cycles"), optional=("latency_ns", "latency_cycles"))
    gib_s = r.number(m, "bandwidth_gib_s", "dram", 0, positive=True)
    if ("latency_ns" in m) == ("latency_cycles" in m):
        raise r.fail(m.line, "dram", "give exactly one of latency_ns and latency_cycles")
    if "latency_cycles" in m:
        cycles = r.int(m, "latency_cycles", "dram", 0)
    else:
        cycles = math.ceil(r.number(m, "latency_ns", "dram", 0) * clock_mhz / 1000 - 1e-9)
    # Binary units (GiB) at the array clock: 50 GiB/s at 940 MHz is 57.1 bytes per cycle.
    return DRAM(bytes_per_cycle=gib_s * (1 << 30) / (clock_mhz * 1e6), latency_cycles=cycles, bandwidth_gib_s=gib_s)


def _datatypes(r: _Reader, top: _Map) -> tuple[str, ...]:
    value, line = top["datatypes"], top.lines["datatypes"]
    if not isinstance(value, _Seq) or not value:
        raise r.fail(line, "datatypes", f"expected a non-empty list (of {', '.join(DATATYPES)})")
    seen: list[str] = []
    for i, (dt, dt_line) in enumerate(zip(value, value.lines)):
        if dt not in DATATYPES:
            close = difflib.get_close_matches(str(dt), DATATYPES, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise r.fail(dt_line, f"datatypes[{i}]", f"unknown datatype {limits.shown(repr(dt), 40)[1:-1]} (known: {', '.join(DATATYPES)}{hint})")
        if dt in seen:
            raise r.fail(dt_line, f"datatypes[{i}]", f"'{dt}' is listed twice")
        seen.append(dt)
    return tuple(seen)


def _energy(r: _Reader, top: _Map) -> dict[str, float]:
    m = r.mapping(top["energy_pj"], "energy_pj", top.lines["energy_pj"])
    r.keys(m, "energy_pj", ENERGY_ACTIONS)
    return {action: r.number(m, action, "energy_pj", 0) for action in ENERGY_ACTIONS}


# ---------------------------------------------------------------------------
# writing


def dump_arch(arch: Arch) -> str:
    """Canonical YAML for ``arch`` (``parse_arch(dump_arch(a)) == a``), in the hand-written style of
    the presets. Every tile of a kind must share its parameters: the format has one entry per kind."""
    kinds: dict[str, dict[str, Any]] = {}
    for t in arch.tiles:
        spec: dict[str, Any] = {"contexts": t.contexts, "sram": _size_text(t.sram_bytes), "sram_banks": t.sram_banks}
        if t.kind == "compute":
            spec["mac_array"] = f"[{t.mac_rows}, {t.mac_cols}]"
        if "vector_lanes" in KIND_KEYS[t.kind]:
            spec["vector_lanes"] = t.vector_lanes
        if t.sram_bank_bytes_per_cycle != DEFAULT_BANK_BYTES_PER_CYCLE:
            spec["sram_bank_bytes_per_cycle"] = t.sram_bank_bytes_per_cycle
        if t.exp_per_cycle:
            spec["exp_per_cycle"] = t.exp_per_cycle
        if t.kind == "dma":
            spec["dma_channels"] = t.dma_channels
        if kinds.setdefault(t.kind, spec) != spec:
            raise ValueError(f"{arch.name}: {t.kind} tiles differ (at {t.pos}); the YAML format has one entry per kind")
    noc, dram = arch.noc, arch.dram
    lines = [
        f"version: {FORMAT_VERSION}",
        f"name: {json.dumps(arch.name)}",
        f"grid: {{width: {arch.width}, height: {arch.height}}}",
        f"clock_mhz: {arch.clock_mhz!r}",
        "tile_kinds:",
        *(f"  {k}: {{{', '.join(f'{key}: {v}' for key, v in kinds[k].items())}}}" for k in TILE_KINDS if k in kinds),
        "layout:",
        *(f"  - {row}" for row in arch.layout_rows()),
        f"noc: {{topology: {noc.topology}, link_bytes_per_cycle: {noc.link_bytes_per_cycle}, "
        f"hop_latency: {noc.hop_latency}, virtual_channels: {noc.virtual_channels}}}",
        f"dram: {{bandwidth_gib_s: {dram.bandwidth_gib_s!r}, latency_cycles: {dram.latency_cycles}}}",
        f"datatypes: [{', '.join(arch.datatypes)}]",
        "energy_pj:",
        *(f"  {k}: {float(v)!r}" for k, v in arch.energy_pj.items()),
    ]
    return "\n".join(lines) + "\n"


def _size_text(n: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]} {unit}"
    return str(n)

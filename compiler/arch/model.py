"""The architecture model: frozen dataclasses that every later stage reads.

An ``Arch`` is immutable and hashable, so passes may cache on it; its networkx
view and fingerprint are computed once per instance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx

TILE_KINDS = ("compute", "sfu", "butterfly", "memory", "dma")

# The one-letter codes of the YAML ``layout:`` rows.
KIND_LETTERS = {"compute": "C", "sfu": "S", "butterfly": "B", "memory": "M", "dma": "D"}
LETTER_KINDS = {letter: kind for kind, letter in KIND_LETTERS.items()}

#: Tile fields added after the format's first version: canonical() lists them only when set
_OPTIONAL_TILE_FIELDS = frozenset({"exp_per_cycle", "sram_bank_bytes_per_cycle"})
#: bytes each SRAM bank reads or writes per cycle when a file does not say (a 128-bit port)
DEFAULT_BANK_BYTES_PER_CYCLE = 16

ENERGY_ACTIONS = ("mac", "sram_byte", "noc_hop_byte", "dram_byte", "sfu_op", "butterfly_op", "vector_op")


@dataclass(frozen=True)
class Tile:
    """One grid position: what it computes and how much it holds."""

    x: int  # column; (0, 0) is the top-left corner
    y: int  # row
    kind: str  # one of TILE_KINDS
    contexts: int  # kernels this tile may time-multiplex
    sram_bytes: int  # local buffer capacity
    sram_banks: int
    mac_rows: int = 0  # compute: the m x n MAC array
    mac_cols: int = 0
    vector_lanes: int = 0  # compute vector unit / sfu lanes / butterfly lanes (ops per cycle)
    dma_channels: int = 0  # dma tiles
    # compute: special-function results (exp, erf, tanh, sigmoid, rsqrt, reciprocal, ...) per cycle of the
    # tile's exp unit, beside its vector lanes; 0 = no exp unit, such work cannot run on the tile
    # (docs/arch.md, "Where exp runs"). An sfu tile evaluates them on its lanes.
    exp_per_cycle: int = 0
    # bytes each SRAM bank reads or writes per cycle: the tile's buffers move at most sram_banks times this
    sram_bank_bytes_per_cycle: int = DEFAULT_BANK_BYTES_PER_CYCLE

    @property
    def sram_bytes_per_cycle(self) -> int:
        """What the tile's SRAM reads and writes per cycle, all banks together."""
        return self.sram_banks * self.sram_bank_bytes_per_cycle

    @property
    def pos(self) -> tuple[int, int]:
        return (self.x, self.y)

    @property
    def macs_per_cycle(self) -> int:
        return self.mac_rows * self.mac_cols

    @property
    def special_per_cycle(self) -> int:
        """Special-function results (exp and the other transcendentals) per cycle: a compute tile's exp
        unit, an sfu tile's lanes; 0 where none can run."""
        if self.kind == "compute":
            return self.exp_per_cycle
        return self.vector_lanes if self.kind == "sfu" else 0


@dataclass(frozen=True)
class NoC:
    topology: str  # "mesh" (only one for now)
    link_bytes_per_cycle: int
    hop_latency: int  # cycles per router hop
    virtual_channels: int


@dataclass(frozen=True)
class DRAM:
    bytes_per_cycle: float  # at the array clock, from bandwidth_gib_s and clock_mhz
    latency_cycles: int
    bandwidth_gib_s: float


class FrozenMap(Mapping[str, float]):
    """A read-only, hashable str -> float mapping (a dict would make Arch unhashable)."""

    __slots__ = ("_items", "_dict")

    def __init__(self, items: Mapping[str, float] | None = None) -> None:
        self._dict = dict(items or {})
        self._items = tuple(sorted(self._dict.items()))

    def __getitem__(self, key: str) -> float:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._dict == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._dict!r})"


@dataclass(frozen=True)
class Arch:
    """A reconfigurable dataflow array: a mesh of tiles, its NoC, DRAM, clock and energy table."""

    name: str
    width: int
    height: int
    clock_mhz: float
    tiles: tuple[Tile, ...]  # one per grid position, row-major: tiles[y * width + x]
    noc: NoC
    dram: DRAM
    datatypes: tuple[str, ...]
    energy_pj: Mapping[str, float]
    # The YAML text it was read from (embedded in bitstreams). Not part of equality or the
    # fingerprint: two files that differ only in comments or spelling describe the same array.
    source: str = field(default="", compare=False, repr=False)
    # How the user named it (a preset name or the YAML path given to load_arch), so that a pass spec can
    # name the array it was given; empty for an Arch built in memory.
    origin: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.energy_pj, FrozenMap):
            object.__setattr__(self, "energy_pj", FrozenMap(self.energy_pj))
        if len(self.tiles) != self.width * self.height:
            raise ValueError(f"Arch {self.name}: {len(self.tiles)} tiles for a {self.width}x{self.height} grid")

    def tile(self, x: int, y: int) -> Tile:
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise IndexError(f"({x}, {y}) is outside the {self.width}x{self.height} grid of '{self.name}'")
        return self.tiles[y * self.width + x]

    def tiles_of(self, kind: str) -> list[Tile]:
        if kind not in TILE_KINDS:
            raise ValueError(f"unknown tile kind '{kind}' (one of {', '.join(TILE_KINDS)})")
        return [t for t in self.tiles if t.kind == kind]

    def on_edge(self, x: int, y: int) -> bool:
        return x in (0, self.width - 1) or y in (0, self.height - 1)

    @property
    def total_macs_per_cycle(self) -> int:
        return sum(t.macs_per_cycle for t in self.tiles)

    @property
    def total_sram_bytes(self) -> int:
        return sum(t.sram_bytes for t in self.tiles)

    @property
    def num_links(self) -> int:
        """Directed mesh links (two per neighbouring pair)."""
        return 2 * ((self.width - 1) * self.height + self.width * (self.height - 1))

    def graph(self) -> networkx.DiGraph:
        """The mesh as a frozen networkx DiGraph: nodes ``(x, y)`` with ``tile=Tile``; one edge per
        link direction with ``bytes_per_cycle`` and ``latency`` (cycles per hop). Cached; copy it
        (``nx.DiGraph(g)``) before changing it."""
        return self._graph

    @cached_property
    def _graph(self) -> networkx.DiGraph:
        import networkx as nx

        g = nx.DiGraph(name=self.name)
        for t in self.tiles:
            g.add_node(t.pos, tile=t)
        bw, lat = self.noc.link_bytes_per_cycle, self.noc.hop_latency
        for t in self.tiles:
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nx_, ny = t.x + dx, t.y + dy
                if 0 <= nx_ < self.width and 0 <= ny < self.height:
                    g.add_edge(t.pos, (nx_, ny), bytes_per_cycle=bw, latency=lat)
        return nx.freeze(g)

    def canonical(self) -> dict[str, Any]:
        """The parsed description as plain JSON data (what the fingerprint hashes)."""
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "clock_mhz": float(self.clock_mhz),
            # (a field at its default is left out, so adding one keeps the fingerprints of arrays without it)
            "tiles": [[getattr(t, f.name) for f in fields(Tile) if f.name not in _OPTIONAL_TILE_FIELDS
                       or getattr(t, f.name) != f.default] for t in self.tiles],
            "noc": [getattr(self.noc, f.name) for f in fields(NoC)],
            "dram": [float(self.dram.bytes_per_cycle), self.dram.latency_cycles, float(self.dram.bandwidth_gib_s)],
            "datatypes": list(self.datatypes),
            "energy_pj": {k: float(v) for k, v in sorted(self.energy_pj.items())},
        }

    def fingerprint(self) -> bytes:
        """8 bytes: the start of the sha256 of ``canonical()`` as compact, key-sorted JSON."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> bytes:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).digest()[:8]

    def layout_rows(self) -> list[str]:
        """The grid as rows of one-letter kind codes (the YAML ``layout:``)."""
        return [
            " ".join(KIND_LETTERS[self.tile(x, y).kind] for x in range(self.width)) for y in range(self.height)
        ]

    def summary(self) -> str:
        """One line for reports and ``attnc inspect``."""
        counts = ", ".join(f"{len(self.tiles_of(k))} {k}" for k in TILE_KINDS if self.tiles_of(k))
        return (
            f"{self.name}: {self.width}x{self.height} mesh ({counts}), {self.total_macs_per_cycle} MACs/cycle, "
            f"{_size(self.total_sram_bytes)} SRAM, {self.noc.link_bytes_per_cycle} B/cycle links, "
            f"DRAM {self.dram.bandwidth_gib_s:g} GiB/s, {self.clock_mhz:g} MHz, fingerprint {self.fingerprint().hex()}"
        )


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"

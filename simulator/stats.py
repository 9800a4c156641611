"""What a timing run measured: counts, cycles, energy, per-tile and per-link figures.

``Stats.to_json()`` is the ``--stats`` file (keys in docs/simulator.md, "Outputs"); the timeline
fields (kernel slices per tile, busy intervals per link) feed the trace and the plots and are left out
of the JSON to keep it small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# counts -> energy: which count each entry of the architecture's energy table multiplies
ENERGY_COUNTS = {
    "mac": "macs",
    "sram_byte": "sram_bytes",
    "noc_hop_byte": "noc_byte_hops",
    "dram_byte": "dram_bytes",
    "sfu_op": "sfu_ops",
    "vector_op": "vector_ops",
    "butterfly_op": "butterfly_ops",
}


@dataclass
class TileStats:
    x: int
    y: int
    kind: str
    macs_per_cycle: int
    busy_cycles: int = 0
    macs: int = 0
    kernels: list[str] = field(default_factory=list)
    buffer_bytes: int = 0  # the contexts' buffers, summed
    sram_bytes: int = 0  # the tile's capacity
    peak_buffer_bytes: float = 0  # most bytes its contexts' input buffers held at once (whole bytes after a run)
    slices: list[tuple[int, str, float, float]] = field(default_factory=list)  # (slot, kernel, start, end)


@dataclass
class LinkStats:
    src: tuple[int, int]
    dst: tuple[int, int]
    bytes_per_cycle: int
    bytes: int = 0
    busy_cycles: float = 0.0
    streams: list[int] = field(default_factory=list)
    intervals: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class KernelStats:
    kernel: int
    name: str
    kind: str
    tile: tuple[int, int]
    start: float = 0.0
    end: float = 0.0
    busy_cycles: int = 0
    macs: int = 0
    segments: int = 1
    peak_buffer_bytes: float = 0  # most bytes its input buffers held at once: arrived, not yet released
    buffer_banks: int = 0  # SRAM banks its buffers are interleaved over (the widest buffer's)
    throttled: bool = False  # a producer held back by its consumers' buffers (back-pressure)
    sram_stall_cycles: int = 0  # cycles its SRAM traffic adds beyond its compute (the banks' ports bind)


@dataclass
class Stats:
    arch: str
    clock_mhz: float
    total_macs_per_cycle: int
    dram_bytes_per_cycle: float
    energy_table: dict[str, float]
    cycles: int = 0
    macs: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    noc_byte_hops: int = 0
    vector_ops: int = 0
    sfu_ops: int = 0
    butterfly_ops: int = 0
    events: int = 0
    mode: str = "timing-only"  # or "functional": whether the numpy model ran too (same cycles either way)
    warnings: list[str] = field(default_factory=list)  # what the model saw but does not time (buffer overflow)
    tiles: list[TileStats] = field(default_factory=list)
    links: list[LinkStats] = field(default_factory=list)
    kernels: list[KernelStats] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def utilization(self) -> float:
        """MACs performed / (cycles x MACs of the whole array)."""
        denom = self.cycles * self.total_macs_per_cycle
        return self.macs / denom if denom else 0.0

    def energy_pj(self) -> dict[str, float]:
        counts = {
            "macs": self.macs,
            "sram_bytes": self.sram_read_bytes + self.sram_write_bytes,
            "noc_byte_hops": self.noc_byte_hops,
            "dram_bytes": self.dram_read_bytes + self.dram_write_bytes,
            "sfu_ops": self.sfu_ops,
            "vector_ops": self.vector_ops,
            "butterfly_ops": self.butterfly_ops,
        }
        parts = {key: counts[name] * float(self.energy_table.get(key, 0.0)) for key, name in ENERGY_COUNTS.items()}
        return {"total": sum(parts.values()), **parts}

    def to_json(self) -> dict[str, Any]:
        cycles = max(self.cycles, 1)
        return {
            "arch": self.arch,
            "clock_mhz": self.clock_mhz,
            "cycles": self.cycles,
            "seconds": self.seconds,
            "macs": self.macs,
            "dram_read_bytes": self.dram_read_bytes,
            "dram_write_bytes": self.dram_write_bytes,
            "sram_read_bytes": self.sram_read_bytes,
            "sram_write_bytes": self.sram_write_bytes,
            "noc_byte_hops": self.noc_byte_hops,
            "vector_ops": self.vector_ops,
            "sfu_ops": self.sfu_ops,
            "butterfly_ops": self.butterfly_ops,
            "energy_pj": self.energy_pj(),
            "utilization": self.utilization,
            "events": self.events,
            "mode": self.mode,
            "warnings": list(self.warnings),
            "tiles": [
                {
                    "x": t.x, "y": t.y, "kind": t.kind, "busy_cycles": t.busy_cycles,
                    "utilization": t.busy_cycles / cycles, "macs": t.macs,
                    "mac_utilization": t.macs / (cycles * t.macs_per_cycle) if t.macs_per_cycle else 0.0,
                    "buffer_bytes": t.buffer_bytes, "sram_bytes": t.sram_bytes,
                    "peak_buffer_bytes": t.peak_buffer_bytes, "kernels": list(t.kernels),
                }
                for t in self.tiles
            ],  # fmt: skip
            "links": [
                {
                    "src": list(lk.src), "dst": list(lk.dst), "bytes": lk.bytes,
                    "busy_cycles": round(lk.busy_cycles, 3),
                    "utilization": lk.bytes / (cycles * lk.bytes_per_cycle), "streams": list(lk.streams),
                }
                for lk in self.links
            ],  # fmt: skip
            "kernels": [
                {
                    "kernel": k.kernel, "name": k.name, "kind": k.kind, "tile": list(k.tile),
                    "start": round(k.start, 3), "end": round(k.end, 3), "busy_cycles": k.busy_cycles,
                    "macs": k.macs, "segments": k.segments, "peak_buffer_bytes": k.peak_buffer_bytes,
                    "buffer_banks": k.buffer_banks, "throttled": k.throttled,
                    "sram_stall_cycles": k.sram_stall_cycles,
                }
                for k in self.kernels
            ],  # fmt: skip
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        e = self.energy_pj()
        busiest = max(self.tiles, key=lambda t: t.busy_cycles, default=None)
        hot = max(self.links, key=lambda lk: lk.bytes, default=None)
        lines = [
            f"{self.cycles} cycles = {self.seconds * 1e6:.2f} us at {self.clock_mhz:g} MHz on '{self.arch}'",
            f"MACs {self.macs} (utilisation {self.utilization:.1%}), DRAM {self.dram_read_bytes} B read / "
            f"{self.dram_write_bytes} B written, SRAM {self.sram_read_bytes + self.sram_write_bytes} B, "
            f"NoC {self.noc_byte_hops} byte-hops",
            f"energy {e['total'] / 1e6:.3f} uJ ("
            + ", ".join(f"{k} {v / max(e['total'], 1e-30):.0%}" for k, v in e.items() if k != "total" and v)
            + ")",
        ]
        if busiest is not None and self.cycles:
            lines.append(
                f"busiest tile ({busiest.x},{busiest.y}) {busiest.kind}: {busiest.busy_cycles / self.cycles:.0%} busy"
            )
        if hot is not None and hot.bytes and self.cycles:
            lines.append(
                f"busiest link {hot.src}->{hot.dst}: {hot.bytes} B, "
                f"{hot.bytes / (self.cycles * hot.bytes_per_cycle):.0%} of its bandwidth"
            )
        fullest = max(self.tiles, key=lambda t: (t.peak_buffer_bytes, -t.y, -t.x), default=None)
        if fullest is not None and fullest.peak_buffer_bytes:
            throttled = sum(1 for k in self.kernels if k.throttled)
            lines.append(
                f"fullest buffers: tile ({fullest.x},{fullest.y}) held {fullest.peak_buffer_bytes} B of its "
                f"{fullest.sram_bytes} B at the peak; {throttled} source(s) held back by their consumers"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

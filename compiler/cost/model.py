"""The analytical cost model: cycles, traffic and energy of a whole graph from the IR and the architecture.

``estimate(module, arch)`` reads dataflow IR (after ``lower-to-dataflow``) or array IR (after
``place-route``) and returns a :class:`GraphCost`: per kernel its work, cycles and traffic, per link its
bytes, and whole-graph cycles, DRAM / SRAM bytes, NoC byte-hops and energy. It is the second tier next to
the simulator's discrete-event timing model (``attnc.simulator.timing``): it shares no code with it, and
a test holds the two to the same DRAM bytes exactly and the same cycles within 10% on small shapes.

The model is built in three steps, each in its own module: the kernel graph is read from the IR
(:mod:`attnc.cost.graph`), each kernel's work, cycles and traffic come from its body
(:mod:`attnc.cost.kernels`), and an event schedule over the graph times it (:mod:`attnc.cost.events`,
whose docstring states the timing rules).

``GraphCost.bounds`` keeps the terms the graph's cycles are the maximum of (the critical path and the
DRAM, link and tile bounds), so a report can say which one decides. On dataflow IR
nothing is placed yet: each kernel gets a tile of its kind to itself and each stream one hop, so cycles
and byte-hops are what the best placement could reach (byte-hops a lower bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnc.arch import resolve_arch
from attnc.cost.events import EventSchedule
from attnc.cost.graph import from_array, from_dataflow
from attnc.cost.kernels import KernelCost
from attnc.dialects import array as ar
from attnc.dialects import dataflow as df
from attnc.errors import AttncError
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp


@dataclass
class LinkCost:
    src: tuple[int, int]
    dst: tuple[int, int]
    bytes: int
    cycles: float  # bytes / link bandwidth


@dataclass
class GraphCost:
    arch: str
    level: str  # "dataflow" (unplaced) or "array" (placed and routed)
    clock_mhz: float
    total_macs_per_cycle: int
    energy_table: dict[str, float]
    kernels: list[KernelCost] = field(default_factory=list)
    links: list[LinkCost] = field(default_factory=list)
    cycles: int = 0
    bounds: dict[str, float] = field(default_factory=dict)  # critical_path, dram, link, tile
    macs: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    noc_byte_hops: int = 0
    vector_ops: int = 0
    sfu_ops: int = 0
    butterfly_ops: int = 0

    @property
    def seconds(self) -> float:
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def utilization(self) -> float:
        denom = self.cycles * self.total_macs_per_cycle
        return self.macs / denom if denom else 0.0

    @property
    def bottleneck(self) -> str:
        return max(self.bounds, key=lambda k: self.bounds[k]) if self.bounds else "critical_path"

    def energy_pj(self) -> dict[str, float]:
        counts = {
            "mac": self.macs,
            "sram_byte": self.sram_read_bytes + self.sram_write_bytes,
            "noc_hop_byte": self.noc_byte_hops,
            "dram_byte": self.dram_read_bytes + self.dram_write_bytes,
            "sfu_op": self.sfu_ops,
            "vector_op": self.vector_ops,
            "butterfly_op": self.butterfly_ops,
        }
        parts = {k: n * float(self.energy_table.get(k, 0.0)) for k, n in counts.items()}
        return {"total": sum(parts.values()), **parts}


def estimate(module: ModuleOp, arch) -> GraphCost:
    """The cost of ``module`` (dataflow IR after lower-to-dataflow, or array IR after place-route) on
    ``arch`` (an ``attnc.arch.Arch``, a preset name or a YAML path)."""
    arch = resolve_arch(arch)
    configs = [op for op in module.ops if isinstance(op, ar.ConfigOp)]
    if configs:
        nodes, counts = from_array(configs[0], arch)
        level = "array"
    else:
        fns = [op for op in module.ops if isinstance(op, func.FuncOp)]
        fn = next((f for f in fns if f.sym_name.data == "main"), fns[0] if fns else None)
        if fn is None or not any(isinstance(o, df.KernelOp) for o in fn.body.block.ops):
            raise AttncError("cost: needs dataflow IR (after lower-to-dataflow) or array IR (after place-route)")
        nodes, counts = from_dataflow(fn, arch)
        level = "dataflow"
    g = GraphCost(arch.name, level, arch.clock_mhz, arch.total_macs_per_cycle, dict(arch.energy_pj), **counts)
    g.bounds = EventSchedule(nodes, arch, placed=level == "array").run()
    g.cycles = math.ceil(max(g.bounds.values(), default=0.0) - 1e-6)
    g.kernels = [nd.cost for nd in nodes]
    for k in g.kernels:
        g.macs += k.macs
        g.dram_read_bytes += k.dram_read_bytes
        g.dram_write_bytes += k.dram_write_bytes
        g.sram_read_bytes += k.sram_read_bytes
        g.sram_write_bytes += k.sram_write_bytes
    per_link: dict = {}
    for nd in nodes:
        for e in nd.ins:
            g.noc_byte_hops += e.bytes * e.hops
            for lk in e.links:
                per_link[lk] = per_link.get(lk, 0) + e.bytes
    if level == "array":
        bw = arch.noc.link_bytes_per_cycle
        g.links = [LinkCost(a, b, nb, nb / bw) for (a, b), nb in sorted(per_link.items())]
    return g


def format_cost(cost: GraphCost) -> str:
    """A table for ``attnc compile --report``: one row per kernel, then the graph's totals."""
    lines = [f"cost model ({cost.level} IR on '{cost.arch}'):"]
    lines.append(
        f"  {'kernel':<28} {'kind':<11} {'tile':<8} {'cycles':>9} {'start':>9} {'finish':>9} {'MACs':>11} "
        f"{'DRAM B':>9} {'SRAM B':>10}"
    )
    for k in cost.kernels:
        where = f"{k.tile[0]},{k.tile[1]}" if k.tile is not None else k.tile_kind
        lines.append(
            f"  {k.name[:28]:<28} {k.kind[:11]:<11} {where:<8} {k.cycles:>9} {k.start:>9.0f} {k.finish:>9.0f} "
            f"{k.macs:>11} {k.dram_read_bytes + k.dram_write_bytes:>9} {k.sram_read_bytes + k.sram_write_bytes:>10}"
        )
    e = cost.energy_pj()
    bounds = ", ".join(f"{name} {value:.0f}" for name, value in cost.bounds.items())
    lines += [
        f"  cycles {cost.cycles} ({cost.seconds * 1e6:.2f} us at {cost.clock_mhz:g} MHz), bound by {cost.bottleneck} "
        f"[{bounds}]",
        f"  MACs {cost.macs} (utilisation {cost.utilization:.1%}), DRAM {cost.dram_read_bytes} B read / "
        f"{cost.dram_write_bytes} B written, SRAM {cost.sram_read_bytes + cost.sram_write_bytes} B, "
        f"NoC {cost.noc_byte_hops} byte-hops{'' if cost.level == 'array' else ' (unplaced: one hop per stream)'}",
        f"  energy {e['total'] / 1e6:.3f} uJ ("
        + ", ".join(f"{k} {v / max(e['total'], 1e-30):.0%}" for k, v in e.items() if k != "total" and v)
        + ")",
    ]
    if cost.links:
        hot = max(cost.links, key=lambda lk: lk.bytes)
        lines.append(f"  busiest link {hot.src}->{hot.dst}: {hot.bytes} B, {hot.cycles:.0f} cycles of transfer")
    return "\n".join(lines) + "\n"

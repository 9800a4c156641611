"""The analytical cost model (``attnc.cost.model``): cycles, traffic and energy from the IR and the architecture.

``estimate(module, arch)`` reads dataflow IR (after ``lower-to-dataflow``) or array IR (after
``place-route``) and returns a :class:`GraphCost`: per kernel its work, cycles and traffic, per link its
bytes, and whole-graph cycles, DRAM / SRAM bytes, NoC byte-hops and energy. It is the second tier next to
the simulator's discrete-event timing model (``attnc.simulator.timing``): it shares no code with it, and
a test holds the two to the same DRAM bytes exactly and the same cycles within 10% on small shapes.

Work of one kernel (the rules of docs/simulator.md, read off the kernel's body ops):

* ``butterfly_stage``: ``rows * n * width`` MACs (``width = radix * block``); on a compute tile the
  ``n / width`` GEMMs ``[rows, width] x [width, width]``: ``n / width * ceil(rows/mac_rows) *
  ceil(width/mac_cols) * width`` MAC-array cycles (a ``row_block`` b: ``ceil(rows/b) * ceil(b/mac_rows)``
  row steps instead of ``ceil(rows/mac_rows)``).
* ``matmul`` / ``contract``: MACs = result elements x reduction size; on a compute tile
  ``batch * ceil(M/rows) * ceil(N/cols) * K`` MAC-array cycles. An unscheduled ``attention`` is two such
  GEMMs plus 3 lane operations per score. A fused ``attention`` (``fusion`` = flat | online) follows the
  blocked rule of :func:`attnc.cost.attention.attention_work` (spec section 2, closed form per row block).
* softmax, log_softmax, layer_norm: 3 lane operations per element; any other compute op one per element
  of the largest of its result and operands; data-movement ops and constants cost nothing.
* A compute tile runs MAC cycles + ``ceil(lane ops / lanes)`` (a fused attention overlaps the two) plus
  one pipeline fill of ``rows + cols`` when it does MACs; an sfu tile runs MACs and lane ops on its
  lanes; a butterfly tile runs ``ceil(MACs/4) + ceil(lane ops/2)`` butterflies on its lanes.
* DMA kernels move their descriptors' bytes (a ``("repeat", P)`` loop moves them P times; a
  ``dma_spill`` writes and reads its value, so it counts both): ``latency + bytes / DRAM bandwidth``.

Whole-graph cycles: a critical path through the kernel graph in which shared resources add up. It works
at kernel granularity (one start and one finish per kernel, one transfer per stream), not per token:

* a kernel whose inputs come in one token starts when its producers have finished and the data has
  crossed its route (``bytes / link bandwidth + hops * hop latency``; a consumer on the producer's tile
  reads the buffer);
* a streamed input (tokens > 1) lets it overlap its producer: the producer emits its tokens evenly over
  its steps (after its DMA latency or fill), a step needs its share of them (the first ceil(T/steps), the
  last all), so the kernel starts when its first share has arrived and ends no earlier than the steps
  from the first that needs them all after the last; a DMA kernel moves data token by token (at least as
  many steps as tokens);
* kernels sharing a tile add up: the tile's ready kernels take turns one step each (loop steps grouped
  into at most 64, the fill in the first), in context order -- the simulator's round-robin, evaluated
  per tile for the kernels present; a DMA tile's transfers hold its channels, a one-step transfer a
  channel of its own, transfers of several steps take turns on one (from the end of the holder's first
  step, which carries the DRAM latency);
* a forwarded copy (an output that is an input's register through reshapes only: fused attention
  members pass K/V down their group's chain) is timed by the input it copies, not by its kernel: its
  tokens start across their links as the input's leave their producer (cut-through) and are delivered no
  earlier than the input has arrived; its consumers become ready when the chain's source starts (or
  finishes, for one-token streams). A compute or memory context with a ``("repeat", P)`` loop needs
  before each step only the share of its input that its first passes read;
* transfers in flight together share the DRAM bandwidth (a DMA tile's transfers between them as many
  shares as it has channels: its round-robin), and streams crossing a link together share the link
  (processor sharing, the fluid form of the simulator's max-min fair flows); a later arrival pushes back
  what is still running, so finishes are revised, never fixed early. A stream's token batches cross a
  route one after the other (the simulator's FIFO per route): the first f of them are through once f of
  the stream's time on its links has passed;
* a source held back by a streamed consumer's buffers (the simulator's back-pressure on DMA loads and
  memory-tile stages, where it closes no cycle of waits) runs at most ``depth`` tokens ahead of what the
  consumer's finished steps released: what a step needs beyond that is fetched only after the step
  before it, and the consumer waits for it (at the pace the source gets from DRAM);
* the result is the latest finish, bounded from below by ``DRAM latency + DRAM bytes / bandwidth``, by
  the busiest link's ``bytes / link bandwidth`` and by the busiest tile's summed work.

With one token per stream these are the simulator's own rules evaluated per kernel instead of per
event, so the two agree closely and the check mostly guards the work and byte rules; with streamed
ports the overlap and back-pressure rules are coarser than the simulator's token-by-token gating
(within 10% on the tested shapes and the benchmark sweep, see tests/compiler/test_cost.py).

``GraphCost.bounds`` keeps each of these terms, so a report can say which one decides. On dataflow IR
nothing is placed yet: each kernel gets a tile of its kind to itself and each stream one hop, so cycles
and byte-hops are what the best placement could reach (byte-hops a lower bound).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from attnc.arch.datatypes import element_bytes
from attnc.cost.attention import attention_work
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import DMA_KERNEL_KINDS
from attnc.errors import AttncError
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseArrayBase,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Operation, SSAValue

#: buffer addressing and configuration data: no work (docs/design.md, "The dataflow level")
#: row-wise ops make this many passes over their data
ROW_PASSES = {"softmax": 3, "log_softmax": 3, "layer_norm": 3}
#: the simulator's grain of a kernel's steps: the first output token of a streamed kernel leaves after
#: one of at most this many steps
MAX_STEPS = 64


def _prod(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------
# work of one kernel body


@dataclass
class Work:
    macs: int = 0
    mac_cycles: int = 0  # serial MAC-array cycles (no fill)
    lane_ops: int = 0  # serial lane operations
    fused_cycles: int = 0  # fused attentions: their own cycles, fill included
    fused_lane_ops: int = 0
    fused_macs: int = 0
    sram_read: int = 0
    sram_write: int = 0


def _shape(t) -> list[int]:
    return [int(d) for d in t.get_shape()] if isinstance(t, TensorType) else []


def _elt_bytes(t) -> int:
    return element_bytes(str(t.element_type)) if isinstance(t, TensorType) else 4


def _bytes(t) -> int:
    return _prod(_shape(t)) * _elt_bytes(t)


def _gemm_cycles(out: list[int], k: int, rows: int, cols: int) -> int:
    m = out[-2] if len(out) >= 2 else 1
    n = out[-1] if out else 1
    return _prod(out[:-2]) * _cdiv(max(m, 0), rows) * _cdiv(max(n, 0), cols) * max(k, 0)


def _contract(equation: str, shapes: list[list[int]], out: list[int], rows: int, cols: int) -> tuple[int, int]:
    eq = equation.replace(" ", "")
    lhs, _, res = eq.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    ok = "->" in eq and "." not in eq and len(terms) == len(shapes)
    for term, shp in zip(terms, shapes) if ok else ():
        if len(term) != len(shp):
            ok = False
            break
        for c, n in zip(term, shp):
            sizes[c] = max(sizes.get(c, 0), n)
    if not ok or any(c not in sizes for c in res):
        return _prod(out), _gemm_cycles(out, 1, rows, cols)  # an equation the rule cannot read: one MAC each
    k = _prod([sizes[c] for c in sizes if c not in res])
    return _prod(sizes.values()), _gemm_cycles(out, k, rows, cols)


def _attr_int(op: Operation, name: str, default: int = 0) -> int:
    a = op.attributes.get(name)
    return int(a.value.data) if isinstance(a, IntegerAttr) else default


def body_work(ops: Sequence[Operation], tile) -> Work:
    """The work of a kernel body (terminator excluded) on ``tile`` (an ``attnc.arch.Tile``)."""
    rows, cols = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
    w = Work()
    for op in ops:
        name = op.name.removeprefix("sparse.")
        if isinstance(op, sp.ConstantOp) or sp.is_data_movement(op) or not op.results:
            continue
        operand_types = [v.type for v in op.operands]
        shapes = [_shape(t) for t in operand_types]
        out = _shape(op.results[0].type)
        w.sram_read += sum(_bytes(t) for t in operand_types)
        w.sram_write += _bytes(op.results[0].type) * len(op.results)
        if name == "matmul":
            k = shapes[0][-1] if shapes and shapes[0] else 1
            w.macs += _prod(out) * k
            w.mac_cycles += _gemm_cycles(out, k, rows, cols)
        elif name == "butterfly_stage":
            # [rows, n] as n/width GEMMs [rows, width] x [width, width], width = radix * block
            x = shapes[0] if shapes and shapes[0] else out
            width = max(_attr_int(op, "radix", 1), 1) * max(_attr_int(op, "block", 1), 1)
            r = _prod(x[:-1])
            rb = _attr_int(op, "row_block")  # rows held at a time (below the MAC array's height: part-full)
            rb = min(rb, r) if rb > 0 else r
            steps = _cdiv(r, rb) * _cdiv(rb, rows) if rb else 0
            w.macs += r * x[-1] * width
            w.mac_cycles += x[-1] // width * steps * _cdiv(width, cols) * width
        elif name == "contract":
            eq = op.attributes.get("equation")
            macs, cyc = _contract(eq.data if isinstance(eq, StringAttr) else "", shapes, out, rows, cols)
            w.macs += macs
            w.mac_cycles += cyc
        elif name == "attention":
            q = shapes[0] or [1, 1, 1, 1]
            kk = shapes[1] if len(shapes) > 1 and shapes[1] else q
            fusion = op.attributes.get("fusion")
            if isinstance(fusion, StringAttr):
                aw = attention_work(
                    q, kk, out, fusion=fusion.data, row_block=_attr_int(op, "row_block", 1),
                    key_block=_attr_int(op, "key_block", 1), causal=isinstance(op.attributes.get("causal"), UnitAttr),
                    causal_offset=_attr_int(op, "causal_offset"), has_mask=len(op.operands) > 3,
                    rows=rows, cols=cols, lanes=tile.vector_lanes,
                )  # fmt: skip
                w.macs += aw.macs
                w.fused_macs += aw.macs
                w.fused_cycles += aw.cycles
                w.fused_lane_ops += aw.lane_ops
            else:
                d, t = q[-1], (kk[-2] if len(kk) >= 2 else 1)
                dv = out[-1] if out else d
                rows_q = _prod(q[:-1])
                w.macs += rows_q * t * (d + dv)
                w.mac_cycles += _gemm_cycles(q[:-1] + [t], d, rows, cols) + _gemm_cycles(q[:-1] + [dv], t, rows, cols)
                w.lane_ops += 3 * rows_q * t
        else:
            biggest = max([_prod(out)] + [_prod(s) for s in shapes])
            w.lane_ops += ROW_PASSES.get(name, 1) * biggest
    return w


# ---------------------------------------------------------------------------
# results


@dataclass
class KernelCost:
    name: str
    kind: str  # the kernel kind (gemm, softmax, dma_load, ...)
    tile_kind: str
    tile: tuple[int, int] | None  # None before placement
    cycles: int = 0  # busy cycles on its tile (DMA: bytes over the whole DRAM bandwidth, no latency)
    fill: int = 0  # of which the MAC array's pipeline fill
    macs: int = 0
    lane_ops: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    start: float = 0.0  # from the graph model
    finish: float = 0.0


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


# ---------------------------------------------------------------------------
# the kernel graph, from either IR level


@dataclass
class _Edge:
    src: int  # producer node index
    dst: int
    bytes: int  # what the consumer reads
    hops: int  # links crossed (0: same tile, a buffer read)
    links: list[tuple[tuple[int, int], tuple[int, int]]]
    tokens: int  # the stream's tokens (its producer's count, which its consumers see too)
    weight: bool  # a constant loaded by DMA: needed whole before the first step
    #: a forwarded copy: the producer's input edge whose register this output is (through reshapes only);
    #: its tokens leave as that input's arrive, not as the producer computes
    via: _Edge | None = None
    routed: bool = True  # it has a route (possibly of no links: a tile to itself); else a buffer read


@dataclass
class _Node:
    cost: KernelCost
    tile_params: object  # attnc.arch.Tile
    steps: int  # loop steps (trip counts multiplied)
    out_tokens: list[int]  # per output
    ins: list[_Edge] = field(default_factory=list)
    is_weight_load: bool = False
    position: int = 0  # its context's place on the tile (the round-robin order)
    lead: float = 0.0  # time of its first step before any output: DMA latency, or the MAC array's fill
    kid: int = 0  # kernel id (the order the simulator takes loads in for back-pressure)
    throttled: bool = False  # held back by its streamed consumers' buffers
    contexts: int = 1  # contexts configured on its tile
    forwards: dict[int, int] = field(default_factory=dict)  # output -> the input it is a copy of
    in_edge: dict[int, _Edge] = field(default_factory=dict)  # input -> its edge (on-chip producers only)
    out_edges: list[tuple[int, _Edge]] = field(default_factory=list)  # (output, edge to a consumer)
    repeat: tuple[int, int, int] | None = None  # (outer, P, inner) steps of a non-DMA ("repeat", P) loop
    room: int = 0  # bytes of its (double-buffered) input buffers


def _tokens_attr(op: Operation, name: str, n: int) -> list[int]:
    a = op.attributes.get(name)
    if isinstance(a, DenseArrayBase):
        vals = [int(x) for x in a.get_values()]
        if len(vals) == n:
            return [max(v, 1) for v in vals]
    return [1] * n


def _loops(names, trips) -> list[tuple[str, int]]:
    return [(n.data, int(t)) for n, t in zip(names.data, trips.get_values())]


def _repeat(loops: list[tuple[str, int]]) -> int:
    return _prod([t for n, t in loops if n == "repeat"]) if any(n == "repeat" for n, _ in loops) else 1


def _kernel_cost(name, kind, tile_kind, pos, body, in_types, out_types, tile, arch) -> tuple[KernelCost, dict]:
    kc = KernelCost(name, kind, tile_kind, pos)
    counts = {"vector_ops": 0, "sfu_ops": 0, "butterfly_ops": 0}
    if kind in DMA_KERNEL_KINDS or tile_kind == "dma":
        return kc, counts
    w = body_work(body, tile)
    lanes = max(tile.vector_lanes, 1)
    if tile_kind == "compute":
        kc.cycles = w.mac_cycles + _cdiv(w.lane_ops, lanes) + w.fused_cycles
        if w.macs > w.fused_macs:
            kc.fill = tile.mac_rows + tile.mac_cols  # one fill per kernel (a fused attention has its own)
            kc.cycles += kc.fill
        counts["vector_ops"] = w.lane_ops + w.fused_lane_ops
    elif tile_kind == "sfu":
        units = w.macs + w.lane_ops + w.fused_lane_ops
        kc.cycles = _cdiv(units, lanes)
        counts["sfu_ops"] = units
    elif tile_kind == "butterfly":
        units = _cdiv(w.macs, 4) + _cdiv(w.lane_ops + w.fused_lane_ops, 2)
        kc.cycles = _cdiv(units, lanes)
        counts["butterfly_ops"] = units
    kc.macs = w.macs
    kc.lane_ops = w.lane_ops + w.fused_lane_ops
    kc.sram_read_bytes = w.sram_read + sum(_bytes(t) for t in out_types)
    kc.sram_write_bytes = w.sram_write + sum(_bytes(t) for t in in_types)
    return kc, counts


def _dma(kc: KernelCost, descriptors: list[tuple[str, int]], repeat: int, arch, spill: bool = False) -> None:
    for direction, nbytes in descriptors:
        if direction == "load":
            kc.dram_read_bytes += repeat * nbytes
        else:  # a repeated spill writes its input once and reads it back per pass
            kc.dram_write_bytes += (1 if spill else repeat) * nbytes
    moved = kc.dram_read_bytes + kc.dram_write_bytes
    kc.sram_read_bytes = kc.sram_write_bytes = moved  # staged in the DMA tile's buffer
    kc.cycles = math.ceil(moved / arch.dram.bytes_per_cycle)


def _forwards(body: Sequence[Operation], args: Sequence[SSAValue], results: Sequence[SSAValue]) -> dict[int, int]:
    """Outputs that are a copy of an input: its register through ``reshape``s only (at least one; an input
    yielded as it is stays the context's output). Output index -> input index."""
    origin: dict[SSAValue, int] = {a: j for j, a in enumerate(args)}
    for op in body:
        if op.name == "sparse.reshape" and len(op.operands) == 1 and op.operands[0] in origin:
            for r in op.results:
                origin[r] = origin[op.operands[0]]
    inputs = set(args)
    return {j: origin[v] for j, v in enumerate(results) if v in origin and v not in inputs}


def _repeat_split(loops: list[tuple[str, int]]) -> tuple[int, int, int] | None:
    """(outer, P, inner) steps around the first ``("repeat", P)`` loop, when P > 1."""
    names = [n for n, _ in loops]
    if "repeat" not in names or _repeat(loops) <= 1:
        return None
    j = names.index("repeat")
    return _prod([t for _, t in loops[:j]]), max(loops[j][1], 1), _prod([t for _, t in loops[j + 1 :]])


def _link_forwards(nodes: list[_Node]) -> None:
    """A forwarded copy's edges point at the producer's input edge they copy (none: an input from DRAM,
    timed as the producer computes)."""
    for nd in nodes:
        for out, e in nd.out_edges:
            if out in nd.forwards:
                e.via = nd.in_edge.get(nd.forwards[out])


def _is_weight_body(body: Sequence[Operation], has_inputs: bool) -> bool:
    """A constant loaded by DMA: needed whole before its consumer's first step (unless a ("repeat", P)
    loop re-reads it: then each of its P copies is needed by its share of the steps)."""
    return not has_inputs and any(op.name == "sparse.constant" for op in body)


def _timing_rules(node: _Node, kind: str, tile_kind: str, loops, body, args, results) -> None:
    """A compute or memory context (not DMA) with a ("repeat", P) loop reads its inputs in the first pass
    only; without one, its outputs that copy an input are forwarded as the input arrives."""
    if kind in DMA_KERNEL_KINDS or tile_kind == "dma":
        return
    node.repeat = _repeat_split(loops)
    if node.repeat is None:
        node.forwards = _forwards(body, list(args), list(results))


def _back_pressure(nodes: list[_Node]) -> None:
    """Which sources are held back by their consumers' buffers (the simulator's back-pressure): a DMA load
    or a memory-tile context with streamed consumers, unless holding it back could close a cycle of
    waits of three or more kernels (a consumer waits for its producers, a held-back source for its
    consumers); sources are taken in kernel order."""
    waits: dict[int, set[int]] = {i: {e.src for e in nd.ins} for i, nd in enumerate(nodes)}
    consumers: dict[int, set[int]] = {}
    for i, nd in enumerate(nodes):
        for e in nd.ins:
            if e.tokens > 1 and not e.weight:
                consumers.setdefault(e.src, set()).add(i)

    def closes_cycle(start: int, load: int, extra: set[int]) -> bool:
        todo = [n for n in waits[start] if n != load]
        seen = set(todo) | {start}
        while todo:
            n = todo.pop()
            if n == load:
                return True
            for m in waits[n] | (extra if n == load else set()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return False

    for i in sorted(range(len(nodes)), key=lambda j: nodes[j].kid):
        nd = nodes[i]
        if nd.cost.kind != "dma_load" and nd.cost.tile_kind != "memory":
            continue
        extra = consumers.get(i, set()) - {i}
        if not extra or any(closes_cycle(c, i, extra) for c in extra):
            continue
        waits[i] |= extra
        nd.throttled = True


def _dma_steps(nodes: list[_Node]) -> None:
    """A DMA kernel moves its data token by token, whatever its loops say: it has at least as many steps
    as any of its ports has tokens."""
    for nd in nodes:
        if nd.cost.tile_kind == "dma" or nd.cost.kind in DMA_KERNEL_KINDS:
            nd.steps = max([nd.steps, *nd.out_tokens, *(e.tokens for e in nd.ins)])


def _from_array(config, arch) -> tuple[list[_Node], dict]:
    from attnc.dialects import array as ar

    nodes: list[_Node] = []
    by_kid: dict[int, int] = {}
    producer: dict[int, tuple[int, int]] = {}  # stream -> (node, its output)
    inputs: list[tuple[int, list[int], list]] = []  # node, streams, arg types
    counts = {"vector_ops": 0, "sfu_ops": 0, "butterfly_ops": 0}
    descs: dict[int, list[tuple[str, int]]] = {}
    for d in (o for o in config.body.block.ops if isinstance(o, ar.DmaOp)):
        descs.setdefault(d.kernel.value.data, []).append((d.direction.data, d.bytes.value.data))
    for tile in (o for o in config.body.block.ops if isinstance(o, ar.TileOp)):
        pos = (tile.x.value.data, tile.y.value.data)
        tp = arch.tile(*pos)
        contexts = list(tile.body.block.ops)
        for position, ctx in enumerate(contexts):
            assert isinstance(ctx, ar.ContextOp)
            block = ctx.body.block
            body = list(block.ops)[:-1]
            out_types = [v.type for v in block.last_op.operands]
            in_types = [a.type for a in block.args]
            kind = ctx.kind.data
            kc, c = _kernel_cost(ctx.sym_name.data, kind, tp.kind, pos, body, in_types, out_types, tp, arch)
            loops = _loops(ctx.loops, ctx.trips)
            if kind in DMA_KERNEL_KINDS or tp.kind == "dma":
                _dma(kc, descs.get(ctx.kernel.value.data, []), _repeat(loops), arch, kind == "dma_spill")
            for key in counts:
                counts[key] += c[key]
            idx = len(nodes)
            outs = [int(s) for s in ctx.outputs.get_values()]
            node = _Node(kc, tp, max(_prod([t for _, t in loops]), 1), _tokens_attr(ctx, "tokens", len(outs)))
            node.is_weight_load = _is_weight_body(body, bool(in_types)) and _repeat(loops) == 1
            node.position, node.contexts = position, len(contexts)
            node.room = sum(int(x) for x in ctx.buffer_sizes.get_values())
            node.kid = ctx.kernel.value.data
            node.lead = arch.dram.latency_cycles if tp.kind == "dma" or kind in DMA_KERNEL_KINDS else kc.fill
            _timing_rules(node, kind, tp.kind, loops, body, block.args, block.last_op.operands)
            nodes.append(node)
            by_kid[ctx.kernel.value.data] = idx
            for j, s in enumerate(outs):
                producer.setdefault(s, (idx, j))
            inputs.append((idx, [int(s) for s in ctx.inputs.get_values()], in_types))
    routes: dict[tuple[int, int, int], object] = {}
    for r in (o for o in config.body.block.ops if isinstance(o, ar.RouteOp)):
        routes[(r.stream.value.data, r.src.value.data, r.dst.value.data)] = r
    kid_of = {i: k for k, i in by_kid.items()}
    for idx, streams, types in inputs:
        for port, (s, t) in enumerate(zip(streams, types)):
            src, out = producer.get(s, (None, 0))
            if src is None or src == idx:
                continue  # a DRAM-side stream: there from the start
            r = routes.get((s, kid_of[src], kid_of[idx]))
            if r is not None:
                path = r.path()
                links = list(zip(path, path[1:]))
                nbytes = r.bytes.value.data or _bytes(t)
            else:
                links, nbytes = [], _bytes(t)
            p = nodes[src]
            edge = _Edge(src, idx, nbytes, len(links), links, p.out_tokens[out], p.is_weight_load)
            edge.routed = r is not None
            _attach(nodes, out, idx, port, edge)
    _link_up(nodes)
    return nodes, counts


def _from_dataflow(fn, arch) -> tuple[list[_Node], dict]:
    from attnc.cost.work import consumed_bytes
    from attnc.dialects import dataflow as df

    nodes: list[_Node] = []
    index: dict[SSAValue, tuple[int, int]] = {}  # value -> (producer node, its output)
    counts = {"vector_ops": 0, "sfu_ops": 0, "butterfly_ops": 0}
    for k in (o for o in fn.body.block.ops if isinstance(o, df.KernelOp)):
        tile_kind = k.tile_kind.data
        tiles = arch.tiles_of(tile_kind)
        if not tiles:
            raise AttncError(f"cost: kernel '{k.sym_name.data}' needs a {tile_kind} tile, the array has none")
        tp = max(tiles, key=lambda t: (t.macs_per_cycle, t.vector_lanes, t.sram_bytes))
        block = k.body.block
        body = list(block.ops)[:-1]
        out_types = [v.type for v in block.last_op.operands]
        in_types = [a.type for a in block.args]
        kind = k.kind.data
        kc, c = _kernel_cost(k.sym_name.data, kind, tile_kind, None, body, in_types, out_types, tp, arch)
        loops = k.loop_schedule()
        if kind in DMA_KERNEL_KINDS:
            if kind == "dma_load":
                d = [("load", sum(_bytes(t) for t in out_types))]
            elif kind == "dma_store":
                d = [("store", sum(_bytes(t) for t in out_types))]
            else:
                d = [("store", sum(_bytes(t) for t in in_types)), ("load", sum(_bytes(t) for t in out_types))]
            _dma(kc, d, _repeat(loops), arch, kind == "dma_spill")
        for key in counts:
            counts[key] += c[key]
        idx = len(nodes)
        node = _Node(kc, tp, max(_prod([t for _, t in loops]), 1), _tokens_attr(k, "tokens", len(out_types)))
        node.lead = arch.dram.latency_cycles if kind in DMA_KERNEL_KINDS else kc.fill
        node.kid = idx
        node.room = k.buffer_bytes.value.data
        node.is_weight_load = _is_weight_body(body, bool(in_types)) and _repeat(loops) == 1
        _timing_rules(node, kind, tile_kind, loops, body, block.args, block.last_op.operands)
        nodes.append(node)
        for j, r in enumerate(k.outputs):
            index[r] = (idx, j)
        reps = k.attributes.get("input_repeats")
        repeats = [int(x) for x in reps.get_values()] if isinstance(reps, DenseArrayBase) else [1] * len(in_types)
        for port, (v, arg, rep) in enumerate(zip(k.inputs, block.args, repeats)):
            src, out = index.get(v, (None, 0))
            if src is None:
                continue
            # unplaced: one hop per stream, the least any placement on different tiles needs; a fused
            # kernel reads a re-streamed input once per pass
            link = ((-1 - src, 0), (-1 - idx, 0))
            p = nodes[src]
            edge = _Edge(src, idx, consumed_bytes(arg) * rep, 1, [link], p.out_tokens[out], p.is_weight_load)
            _attach(nodes, out, idx, port, edge)
    _link_up(nodes)
    return nodes, counts


def _attach(nodes, out: int, idx: int, port: int, edge) -> None:
    """Join an edge from its producer's output ``out`` to input ``port`` of node ``idx``."""
    nodes[idx].ins.append(edge)
    nodes[idx].in_edge[port] = edge
    nodes[edge.src].out_edges.append((out, edge))


def _link_up(nodes) -> None:
    """What the graph model needs once every edge is in: forwarded copies, DMA steps, back-pressure."""
    _link_forwards(nodes)
    _dma_steps(nodes)
    _back_pressure(nodes)


# ---------------------------------------------------------------------------
# whole-graph cycles


class _RoundRobin:
    """A tile: its ready kernels take turns, one step each (a kernel's loop steps grouped into at most
    ``MAX_STEPS``, the pipeline fill in its first), in the order of their contexts on the tile, as the
    simulator's round-robin does. A kernel that arrives joins the rotation; the finish of every kernel
    on the tile is projected as if nothing else arrives, and updated in place when something does."""

    def __init__(self, finish: list[float], n_slots: int) -> None:
        self.finish = finish
        self.n = max(n_slots, 1)
        self.now = 0.0
        self.jobs: dict[int, list] = {}  # node -> [steps done, steps, work without fill, fill, position]
        self.running: tuple[int, float] | None = None  # (node, end of its current step)
        self.next_rr = 0

    @staticmethod
    def _step(job: list) -> float:
        i, steps, work, fill, _ = job
        return (i + 1) * work / steps - i * work / steps + (fill if i == 0 else 0.0)

    def _pick(self, jobs: dict, next_rr: int) -> int | None:
        if not jobs:
            return None
        return min(jobs, key=lambda n: ((jobs[n][4] - next_rr) % self.n, n))

    def _run(self, jobs: dict, running, next_rr: int, until: float, record: dict | None):
        """Run steps until ``until`` (``math.inf``: to the end); returns the state there."""
        t = self.now
        while True:
            if running is None:
                node = self._pick(jobs, next_rr)
                if node is None:
                    return jobs, None, next_rr
                next_rr = (jobs[node][4] + 1) % self.n
                running = (node, t + self._step(jobs[node]))
            node, end = running
            if end > until:
                return jobs, running, next_rr
            t = end
            jobs[node][0] += 1
            if jobs[node][0] >= jobs[node][1]:
                del jobs[node]
                if record is not None:
                    record[node] = end
            running = None

    def add(self, node: int, t: float, work: float, steps: int, fill: float, position: int) -> float:
        t = max(t, self.now)
        self.jobs, self.running, self.next_rr = self._run(self.jobs, self.running, self.next_rr, t, None)
        self.now = t
        self.jobs[node] = [0, max(steps, 1), max(work - fill, 0.0), fill, position]
        record: dict[int, float] = {}
        jobs = {n: list(j) for n, j in self.jobs.items()}
        self._run(jobs, self.running, self.next_rr, math.inf, record)
        for n, end in record.items():
            self.finish[n] = end
        return self.finish[node]


class _Shared:
    """A resource its users share at the same time (processor sharing: the fluid form of the simulator's
    max-min fair flows on a link or on DRAM). Users of one ``group`` (the transfers of one DMA tile) hold
    at most ``caps[group]`` shares between them (its channels: more transfers than channels take turns).
    A user's finish is projected as if nothing else arrives, by walking the resource from completion to
    completion; a later arrival only delays users still active, and their finishes are updated in place."""

    def __init__(self, finish, rate: float = 1.0, caps: dict | None = None) -> None:
        self.finish = finish
        self.rate = rate
        self.caps = caps or {}
        self.now = 0.0
        self.jobs: dict[int, list] = {}  # user -> [remaining work, group]

    def _rates(self, jobs: dict) -> dict:
        count: dict = {}
        for _, g in jobs.values():
            count[g] = count.get(g, 0) + 1
        w = {n: min(1.0, self.caps.get(g, math.inf) / count[g]) for n, (_, g) in jobs.items()}
        total = sum(w.values())
        return {n: self.rate * w[n] / total for n in jobs}

    def _run(self, jobs: dict, t: float, until: float, record: dict | None) -> None:
        while jobs:
            rates = self._rates(jobs)
            dt = min(r / rates[n] for n, (r, _) in jobs.items())
            step = min(dt, until - t)
            for n, job in jobs.items():
                job[0] -= rates[n] * step
            t += step
            for n in [n for n, (r, _) in jobs.items() if r <= 1e-9 * max(1.0, self.rate)]:
                del jobs[n]
                if record is not None:
                    record[n] = t
            if t >= until:
                return

    def add(self, node: int, t: float, work: float, group=None) -> float:
        t = max(t, self.now)
        self._run(self.jobs, self.now, t, None)
        self.now = t
        if work <= 0:
            self.finish[node] = t
            return t
        self.jobs[node] = [work, group]
        record: dict = {}
        self._run({n: list(j) for n, j in self.jobs.items()}, t, math.inf, record)
        for n, end in record.items():
            self.finish[n] = end
        return self.finish[node]


def _graph_cycles(nodes: list[_Node], arch, placed: bool) -> dict[str, float]:
    """Start and finish of every kernel by list scheduling over the kernel graph (see the module
    docstring); returns the bounds whose maximum is the graph's cycles.

    Events in time order: a kernel becomes ready (the inputs it needs first have arrived) and joins its
    tile (a DMA kernel takes a channel of its tile); a DMA transfer, its latency over, joins DRAM; a
    streaming producer's first tokens put its stream's bytes on their links; a kernel finishes and its
    one-token outputs join the links of their routes. A tile is a :class:`_RoundRobin`, DRAM and links are
    :class:`_Shared`, so a later arrival can push back the finish of a kernel or a transfer still
    running; an event whose time moved since it was queued is queued again."""
    link_bw = float(arch.noc.link_bytes_per_cycle)
    hop = arch.noc.hop_latency
    dram_bw = float(arch.dram.bytes_per_cycle)
    latency = arch.dram.latency_cycles
    n = len(nodes)
    out_edges: list[list[_Edge]] = [[] for _ in nodes]
    missing = [0] * n
    for i, node in enumerate(nodes):
        for e in node.ins:
            out_edges[e.src].append(e)
            missing[i] += 1
    start = [0.0] * n
    finish = [0.0] * n
    tile_of = [nd.cost.tile if placed else ("own", i) for i, nd in enumerate(nodes)]
    tiles: dict = {}
    free: dict = {}  # (DMA tile, channel) -> when it is free; a transfer holds one channel
    shared: dict = {}  # (DMA tile, channel) -> whether its holder runs in steps others can take turns with
    first_step: dict = {}  # (DMA tile, channel) -> when its holder's first step (the latency's) ends
    for i, nd in enumerate(nodes):
        if nd.cost.tile_kind == "dma":
            for c in range(max(nd.tile_params.dma_channels, 1)):
                free[tile_of[i], c] = first_step[tile_of[i], c] = 0.0
                shared[tile_of[i], c] = False
        else:
            tiles.setdefault(tile_of[i], _RoundRobin(finish, nd.contexts))
    # the transfers of a DMA tile share its channels: between them as many shares of DRAM as it has
    # channels (the tile's round-robin over its contexts, in fluid form)
    caps: dict = {}
    for ch in free:
        caps[ch[0]] = caps.get(ch[0], 0) + 1
    dram = _Shared(finish, dram_bw, caps)
    channel_of: dict[int, tuple] = {}
    edge_id = {id(e): k for k, e in enumerate(e for nd in nodes for e in nd.ins)}
    sent: list[dict[tuple, float]] = [{} for _ in edge_id]  # edge -> {link: end of its bytes on it}
    sent_at = [0.0] * len(edge_id)  # when its bytes joined the links
    links: dict = {}

    def streamed(e: _Edge) -> bool:
        return e.tokens > 1 and not e.weight

    def copied(e: _Edge, need: int) -> int:
        """Tokens of the input a forwarded copy needs for ``need`` of its own: ⌊r·T/R⌋ of its T go on
        once r of the input's R have."""
        v = e.via
        return min(v.tokens, -(-need * v.tokens // max(e.tokens, 1)))

    def left(e: _Edge, need: int) -> float:
        """When ``need`` of the stream's tokens have left their producer (joined the links): evenly
        over the producer's steps after its DMA latency or fill; a forwarded copy as the input it copies
        leaves its own producer (cut-through: the copy streams on as the input comes in)."""
        if e.via is not None:
            return left(e.via, copied(e, need))
        p = nodes[e.src]
        steps = min(p.steps, MAX_STEPS)
        step = min(steps, -(-need * steps // e.tokens))  # the producer step after which they are out
        lead = min(p.lead, finish[e.src] - start[e.src])
        return start[e.src] + lead + step / steps * (finish[e.src] - start[e.src] - lead)

    def gate(e: _Edge, need: int) -> float:
        """A forwarded copy over a route (even one of no links) is delivered no earlier than the input it
        copies has arrived (0 otherwise; a consumer without a route reads the buffer at once)."""
        if e.via is None or not e.routed:
            return 0.0
        v = e.via
        return (tokens_in(v, copied(e, need)) if streamed(v) else arrival(v)) + e.hops * hop

    def arrival(e: _Edge) -> float:
        done = left(e, e.tokens)
        if not e.hops:
            return max(done, gate(e, e.tokens))  # same tile: a buffer read
        links_done = sent[edge_id[id(e)]]
        if not links_done:  # not sent yet: as if alone on its links
            return max(done + e.bytes / link_bw + e.hops * hop, gate(e, e.tokens))
        return max(max(links_done.values()) + e.hops * hop, gate(e, e.tokens))

    def tokens_in(e: _Edge, need: int) -> float:
        """When ``need`` of a streamed input's tokens have reached the consumer: each step's (or input
        batch's) share crosses the links as one transfer, in order behind the ones before it."""
        if e.via is not None:
            batches = max(1, min(e.tokens, e.via.tokens if streamed(e.via) else 1))
        else:
            batches = min(nodes[e.src].steps, MAX_STEPS)
        step = min(batches, -(-need * batches // e.tokens))
        out = left(e, need)
        if not e.hops:
            return max(out, gate(e, need))
        out += e.bytes / min(batches, e.tokens) / link_bw + e.hops * hop
        k = edge_id[id(e)]
        if sent[k]:
            # the stream's bytes share their links with whatever else crosses them from its first
            # tokens on (``span`` cycles in all); its batches go one after the other (a FIFO per
            # route), so the first f of them are through once f of the span has passed
            span = max(sent[k].values()) - sent_at[k]
            out = max(out, sent_at[k] + step / batches * span + e.hops * hop)
        return max(out, gate(e, need))

    def needs(nd: _Node, tokens: int, segments: int) -> list[int]:
        """Tokens of an input each segment needs to have arrived: its share, or with a ("repeat", P)
        loop the share the steps up to the segment's end read, a repeated pass reading nothing new."""
        if nd.repeat is None:
            return [-(-(i + 1) * tokens // segments) for i in range(segments)]
        outer, passes, inner = nd.repeat
        total = outer * passes * inner
        out = []
        for i in range(segments):
            o, rem = divmod(min(total, -(-(i + 1) * total // segments)), passes * inner)
            out.append(-(-(o * inner + min(rem, inner)) * tokens // max(outer * inner, 1)))
        return out

    def held_back(nd: _Node, e: _Edge, need: list[int]) -> float:
        """Cycles a consumer waits, over its run, for a source its buffers hold back: the source runs at
        most ``depth`` tokens ahead of what the consumer's finished steps released (the simulator's
        depth: two of the source's bursts plus the consumer's largest step share, or what fits in the
        consumer's buffers), so what a step needs beyond that is fetched only once the step before it
        has ended (at the pace the source gets from DRAM, or the link's if slower)."""
        while e.via is not None:  # a copy comes at the pace its chain's source is held to
            e = e.via
            nd = nodes[e.dst]
            need = needs(nd, e.tokens, min(nd.steps, MAX_STEPS))
        src = nodes[e.src]
        if not src.throttled:
            return 0.0
        src_steps = min(src.steps, MAX_STEPS)
        burst = -(-e.tokens // src_steps)
        chunk = max(b - a for a, b in zip([0, *need], need))
        token_bytes = e.bytes / e.tokens
        shared = max(len(nd.ins), 1)
        fit = int(nd.room / shared // token_bytes) if token_bytes > 0 else 0
        depth = max(2 * burst + chunk - 1, fit)
        # the source runs whole steps of e.tokens / src_steps tokens: it may run ahead to the last step
        # that ends within the allowance, and a step that needs more waits for the whole next steps
        grain = e.tokens / src_steps
        late = 0.0
        for j in range(1, len(need)):
            allowed = math.floor(((need[j - 2] if j >= 2 else 0) + depth) / grain + 1e-9) * grain
            late += max(0.0, math.ceil(need[j] / grain - 1e-9) * grain - allowed)
        if not late:
            return 0.0
        per_token = token_bytes / link_bw if e.hops else 0.0
        if src.cost.tile_kind == "dma" or src.cost.kind in DMA_KERNEL_KINDS:
            # at the pace the transfer gets from DRAM (its share while it runs)
            lead = min(src.lead, finish[e.src] - start[e.src])
            per_token = max(per_token, (finish[e.src] - start[e.src] - lead) / e.tokens)
        return late * per_token

    def ready_time(i: int) -> tuple[float, float]:
        """(earliest start, earliest finish regardless of the tile) from the inputs."""
        nd = nodes[i]
        s_at, f_at = 0.0, 0.0
        steps = min(nd.steps, MAX_STEPS)
        for e in nd.ins:
            if not streamed(e):
                s_at = max(s_at, arrival(e))
                continue
            # a step needs its share of the tokens; the steps from the first that needs them all on
            # wait for the last
            need = needs(nd, e.tokens, steps)
            first = tokens_in(e, need[0])
            s_at = max(s_at, first)
            if steps > 1:
                per_step = (nd.cost.cycles - nd.cost.fill) / steps
                whole = next((j for j, n in enumerate(need) if n >= e.tokens), steps - 1)
                f_at = max(f_at, tokens_in(e, e.tokens) + (steps - whole) * per_step)
                f_at = max(f_at, first + nd.cost.cycles + held_back(nd, e, need))
        return s_at, f_at

    def send(k: int, e: _Edge, t: float) -> None:
        """The bytes of edge ``k`` join the links of its route at ``t``."""
        sent_at[k] = t
        for lk in e.links:
            res = links.setdefault(lk, _Shared({}, link_bw))  # its finishes are keyed by edge
            res.add(k, t, e.bytes)
            for other in res.jobs:  # every transfer still on this link may have been pushed back
                sent[other][lk] = res.finish[other]

    def first_out(e: _Edge) -> float:
        """When a streaming producer emits its first tokens (all of them, if it runs one step)."""
        return left(e, 1)

    copies: dict[int, list[_Edge]] = {}  # edge -> the forwarded copies of it (its consumer's outputs)
    for nd in nodes:
        for e in nd.ins:
            if e.via is not None:
                copies.setdefault(id(e.via), []).append(e)

    def forwarded(e: _Edge, chain_streamed: bool):
        """The copies of ``e``, of their copies, ...: (copy, whether it and every edge it copies stream)."""
        for f in copies.get(id(e), []):
            ok = chain_streamed and streamed(f)
            yield f, ok
            yield from forwarded(f, ok)

    # at equal times: finishes first (they send), then DMA transfers that reach DRAM (their finish is
    # known from then on), streamed sends, and kernels that become ready
    DONE, JOIN, SEND, READY = 0, 1, 2, 3
    edges = [e for nd in nodes for e in nd.ins]
    heap: list[tuple[float, int, int]] = []
    for i in range(n):
        if missing[i] == 0:
            heapq.heappush(heap, (0.0, READY, i))
            missing[i] = -1
    while heap:
        key, what, i = heapq.heappop(heap)
        if what == SEND:  # a streamed (or forwarded) edge's bytes enter its links with its first tokens
            e = edges[i]
            t = first_out(e)
            if t > key + 1e-9:
                heapq.heappush(heap, (t, SEND, i))
            else:
                send(i, e, key)
            continue
        nd = nodes[i]
        if what == JOIN:  # a DMA transfer, its latency over, shares the DRAM bandwidth from now on
            dram.add(i, key, nd.cost.dram_read_bytes + nd.cost.dram_write_bytes, channel_of[i][0])
            finish[i] = max(finish[i], ready_time(i)[1])
            for m in (i, *dram.jobs):
                ch = channel_of[m]
                free[ch] = max(free[ch], finish[m])
            heapq.heappush(heap, (finish[i], DONE, i))
            continue
        if what == DONE:
            if finish[i] > key + 1e-9:  # its tile or DRAM took on more work since
                heapq.heappush(heap, (finish[i], DONE, i))
                continue
            for e in out_edges[i]:
                if e.via is not None:
                    continue  # a copy of an input: it goes with the input's producer (below)
                if streamed(e):
                    # the consumer was queued when this kernel started; its last step waits for the
                    # last token, which now has its final time
                    if missing[e.dst] < 0:
                        finish[e.dst] = max(finish[e.dst], ready_time(e.dst)[1])
                else:
                    if e.hops:
                        send(edge_id[id(e)], e, finish[i])
                    missing[e.dst] -= 1
                    if missing[e.dst] == 0:
                        heapq.heappush(heap, (ready_time(e.dst)[0], READY, e.dst))
                        missing[e.dst] = -1  # queued
                for f, chain_streamed in forwarded(e, streamed(e)):
                    if chain_streamed:  # queued when this kernel started, like ``e``'s consumer
                        if missing[f.dst] < 0:
                            finish[f.dst] = max(finish[f.dst], ready_time(f.dst)[1])
                        continue
                    # a copy leaves whole once what it copies has arrived whole
                    if f.hops:
                        heapq.heappush(heap, (first_out(f), SEND, edge_id[id(f)]))
                    missing[f.dst] -= 1
                    if missing[f.dst] == 0:
                        heapq.heappush(heap, (ready_time(f.dst)[0], READY, f.dst))
                        missing[f.dst] = -1
            continue
        ready, f_at = ready_time(i)
        if ready > key + 1e-9:  # an input arrives later than when this was queued
            heapq.heappush(heap, (ready, READY, i))
            continue
        s = key
        if nd.cost.tile_kind == "dma" or nd.cost.kind in DMA_KERNEL_KINDS:
            # a free channel; else a transfer of several steps takes turns with one of several steps
            # (the tile's round-robin); a one-step transfer waits for a channel of its own
            mine = [ch for ch in free if ch[0] == tile_of[i]]
            ch = min(mine, key=lambda c: (free[c], c))
            multi = min(nd.steps, MAX_STEPS) > 1
            if free[ch] > key + 1e-9:
                turns = [c for c in mine if shared[c]] if multi else []
                if not turns:
                    heapq.heappush(heap, (free[ch], READY, i))
                    continue
                # its first step waits for the end of a step of the transfer it takes turns with (the
                # first, which holds the channel through the DRAM latency)
                ch = min(turns, key=lambda c: (max(first_step[c], key), c))
                if first_step[ch] > key + 1e-9:
                    heapq.heappush(heap, (first_step[ch], READY, i))
                    continue
            else:
                shared[ch] = multi
                share = dram_bw / max(len(mine), 1)
                moved = nd.cost.dram_read_bytes + nd.cost.dram_write_bytes
                first_step[ch] = key + latency + moved / max(min(nd.steps, MAX_STEPS), 1) / share
            channel_of[i] = ch
            free[ch] = max(free[ch], key + latency)
            finish[i] = key + latency
            heapq.heappush(heap, (key + latency, JOIN, i))
        else:
            tiles[tile_of[i]].add(i, s, nd.cost.cycles, min(nd.steps, MAX_STEPS), nd.cost.fill, nd.position)
            finish[i] = max(finish[i], f_at)
            heapq.heappush(heap, (finish[i], DONE, i))
        start[i] = s
        for e in out_edges[i]:
            if e.via is not None or not streamed(e):
                continue
            # a streaming consumer may start while this kernel runs, and so may the consumers of the
            # copies it forwards as the stream arrives
            for f in [e] + [f for f, chain_streamed in forwarded(e, True) if chain_streamed]:
                if f.hops:
                    heapq.heappush(heap, (first_out(f), SEND, edge_id[id(f)]))
                missing[f.dst] -= 1
                if missing[f.dst] == 0:
                    heapq.heappush(heap, (max(ready_time(f.dst)[0], s), READY, f.dst))
                    missing[f.dst] = -1
    for i, nd in enumerate(nodes):
        nd.cost.start, nd.cost.finish = start[i], finish[i]
    load: dict = {}
    for nd in nodes:
        for e in nd.ins:
            for lk in e.links:
                load[lk] = load.get(lk, 0) + e.bytes
    busy: dict = {}
    for i, nd in enumerate(nodes):
        if nd.cost.tile_kind != "dma":
            busy[tile_of[i]] = busy.get(tile_of[i], 0) + nd.cost.cycles
    dram_bytes = sum(nd.cost.dram_read_bytes + nd.cost.dram_write_bytes for nd in nodes)
    return {
        "critical_path": max(finish, default=0.0),
        "dram": (latency + dram_bytes / dram_bw) if dram_bytes else 0.0,
        "link": max(load.values(), default=0) / link_bw,
        "tile": float(max(busy.values(), default=0)),
    }


# ---------------------------------------------------------------------------
# the entry points


def _resolve_arch(arch):
    from attnc.arch import Arch, load_arch

    return arch if isinstance(arch, Arch) else load_arch(str(arch))


def estimate(module: ModuleOp, arch) -> GraphCost:
    """The cost of ``module`` (dataflow IR after lower-to-dataflow, or array IR after place-route) on
    ``arch`` (an ``attnc.arch.Arch``, a preset name or a YAML path)."""
    from attnc.dialects import array as ar
    from attnc.dialects import dataflow as df

    arch = _resolve_arch(arch)
    configs = [op for op in module.ops if isinstance(op, ar.ConfigOp)]
    if configs:
        nodes, counts = _from_array(configs[0], arch)
        level = "array"
    else:
        fns = [op for op in module.ops if isinstance(op, func.FuncOp)]
        fn = next((f for f in fns if f.sym_name.data == "main"), fns[0] if fns else None)
        if fn is None or not any(isinstance(o, df.KernelOp) for o in fn.body.block.ops):
            raise AttncError("cost: needs dataflow IR (after lower-to-dataflow) or array IR (after place-route)")
        nodes, counts = _from_dataflow(fn, arch)
        level = "dataflow"
    g = GraphCost(arch.name, level, arch.clock_mhz, arch.total_macs_per_cycle, dict(arch.energy_pj), **counts)
    g.bounds = _graph_cycles(nodes, arch, placed=level == "array")
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

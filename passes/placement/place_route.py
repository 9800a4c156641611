"""place-route: map dataflow kernels onto the array and emit the array dialect.

Reads @main's dataflow kernels, states the mapping problem (kernels with the tile
kind, SRAM and cycles they need; one stream per producer-consumer edge with the
bytes the consumer actually reads), solves it with the CP-SAT placer/router of
``attnc.passes.placement.cpsat``, and replaces @main by one ``array.config``: the I/O
table with DRAM addresses, tiles with their contexts, routes and DMA descriptors.
The mapping is one search over the whole graph; :class:`MainToConfigPattern` then
applies it, rewriting @main into the config. The mapping's figures (solver status
and time, objective terms and bounds) are kept as attributes of the config for
reports.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, fields, replace

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
)
from xdsl.ir import Block, Region, SSAValue
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern, op_type_rewrite_pattern
from xdsl.rewriter import InsertPoint
from xdsl.utils.exceptions import VerifyException

from attnc.arch import Arch
from attnc.dialects import array as ar
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.errors import AttncError
from attnc.ir import io_names, main_func
from attnc.passes.target import TargetPass
from attnc.passes.placement.problem import KernelSpec, Mapping, MappingInfeasible, MappingProblem, MappingStats, StreamSpec
from attnc.cost.work import consumed_bytes, nbytes

#: DRAM buffers are aligned to this many bytes
DRAM_ALIGN = 64


@dataclass(frozen=True)
class PlaceRoutePass(TargetPass):
    """place-route: place kernels on tiles and route streams (OR-Tools CP-SAT), giving array IR."""

    name = "place-route"

    time_limit: float = 10.0
    seed: int = 0
    heuristic_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        # the solver takes a finite positive budget and a 31-bit seed; anything else fails before any work
        if not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise AttncError(f"place-route: time-limit must be a positive number of seconds, got {self.time_limit}")
        if not 0 <= self.seed < 2**31:
            raise AttncError(f"place-route: seed must be in 0..{2**31 - 1}, got {self.seed}")

    def _place(self, problem: MappingProblem, arch) -> tuple[Mapping, float]:
        """Place and route within link capacity; when only link bandwidth stands in the way, throttle:
        ask every stream for half its rate (down to an eighth) and try again, charging the slowdown.

        Link capacity is a hard limit on the rates the configuration states: no route carries more than
        its link's bandwidth at them. Throttling is the explicit way to fit a graph whose streams at full
        speed do not: a stream's rate is what keeps its slower end busy, so at a fraction of it the
        pipeline is slower, not wrong (the simulator shares a link max-min fairly and times that). The
        slowdown is charged: each kernel's cycles in the problem become at least the time its streams
        take at their throttled rates, so the makespan estimate the placer minimises, and the report,
        see it; the config records the scale (``attnc.stream_rate_scale``). Below an eighth the pass
        refuses with the full-rate error, which names the fullest link and its streams."""
        from attnc.passes.placement.cpsat import place_and_route

        scale, first = 1.0, None
        while True:
            try:
                return place_and_route(problem, arch, time_limit=self.time_limit, seed=self.seed,
                                       heuristic_only=self.heuristic_only), scale  # fmt: skip
            except MappingInfeasible as e:
                first = first or e
                if "B/cycle" not in str(e) or scale <= 1 / 8:  # contexts, SRAM or links' count: no rate helps
                    raise first from None
            scale /= 2
            problem = throttled(problem, 0.5)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = self.target()
        fn = main_func(op)
        kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
        if not kernels:
            raise AttncError("place-route needs dataflow IR: run lower-to-dataflow first")
        stream_of = _stream_ids(fn, kernels)
        problem, edges = dataflow_problem(kernels, stream_of, arch, schedule_windows(fn, arch))
        mapping, rate_scale = self._place(problem, arch)
        if rate_scale < 1:  # say so in the config: its streams were placed at a fraction of their rates
            fn.attributes["attnc.stream_rate_scale"] = FloatAttr(rate_scale, 64)
        placed = PlacedGraph(fn, arch, kernels, stream_of, problem, edges, mapping)
        PatternRewriteWalker(MainToConfigPattern(placed), apply_recursively=False).rewrite_module(op)


def throttled(problem: MappingProblem, factor: float) -> MappingProblem:
    """``problem`` with every stream at ``factor`` of its rate, and every kernel's cycles at least the
    time its streams take at those rates (the slowdown throttling costs)."""
    streams = [replace(st, rate=st.rate * factor) for st in problem.streams]
    need: dict[str, float] = {}
    for st in streams:
        if st.rate > 0:
            for end in (st.src, st.dst):
                need[end] = max(need.get(end, 0.0), st.bytes / st.rate)
    kernels = [replace(k, cycles=max(k.cycles, math.ceil(need.get(k.name, 0.0) - 1e-9))) for k in problem.kernels]
    return replace(problem, kernels=kernels, streams=streams)


def _stream_ids(fn: func.FuncOp, kernels: list[df.KernelOp]) -> dict[SSAValue, int]:
    """Stream numbers: one per graph input (the DRAM side), then one per kernel output."""
    stream_of: dict[SSAValue, int] = {}
    for a in fn.body.block.args:
        stream_of[a] = len(stream_of)
    for k in kernels:
        for r in k.outputs:
            stream_of[r] = len(stream_of)
    return stream_of


@dataclass
class PlacedGraph:
    """@main's dataflow kernels with the mapping place-route found for them: what the config states."""

    fn: func.FuncOp
    arch: Arch
    kernels: list[df.KernelOp]
    stream_of: dict[SSAValue, int]
    problem: MappingProblem
    edges: list[tuple[int, df.KernelOp, df.KernelOp, int]]  # (stream, producer, consumer, bytes)
    mapping: Mapping


class MainToConfigPattern(RewritePattern):
    """Rewrites the placed @main into one ``array.config``: the I/O table with the inputs' and outputs'
    DRAM addresses, per used tile its contexts (one per kernel placed there, with its body and
    buffers), one route per stream, the DMA descriptors of loads, stores and spills, and @main's report
    attributes with the mapping's figures."""

    def __init__(self, placed: PlacedGraph):
        self.placed = placed

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: func.FuncOp, rewriter: PatternRewriter) -> None:
        if op is not self.placed.fn:
            return
        config = _ConfigBuilder(self.placed)
        config.io()
        config.tiles()
        config.routes()
        config.dmas()
        rewriter.insert(config.build(), InsertPoint.before(op))
        rewriter.erase(op)


class _ConfigBuilder:
    """The body of an ``array.config``, section by section, and the DRAM bytes it lays out (inputs, outputs,
    then spill buffers; weights are placed by the backend)."""

    def __init__(self, placed: PlacedGraph):
        self.p = placed
        self.block = Block()
        self.address = 0
        self.kid = {k: i for i, k in enumerate(placed.kernels)}
        self.out_address: dict[SSAValue, int] = {}

    def io(self) -> None:
        fn = self.p.fn
        in_names, out_names = io_names(fn)
        for name, a in zip(in_names, fn.body.block.args):
            self.block.add_op(ar.IOOp.build(attributes=_io(name, "input", a.type, self.address)))
            self.address = _align(self.address + nbytes(a.type))
        ret = fn.body.block.last_op
        assert isinstance(ret, func.ReturnOp)
        for name, v in zip(out_names, ret.operands):
            self.block.add_op(ar.IOOp.build(attributes=_io(name, "output", v.type, self.address)))
            self.out_address[v] = self.address
            try:  # an output several stores write, a region each (checked again: the passes may not verify)
                regions = df.store_regions(v, f"place-route: output {name!r}") or []
            except VerifyException as e:
                raise AttncError(str(e)) from None
            for store, offset in regions:
                self.out_address[store.outputs[0]] = self.address + offset
            self.address = _align(self.address + nbytes(v.type))

    def tiles(self) -> None:
        """One ``array.tile`` per used tile (row-major), its kernels' contexts stacked in its SRAM: the
        phase-0 (resident) buffers from address 0, then each SRAM phase p >= 1's from the top of those again,
        so that phases, which never hold their buffers at the same time, share addresses."""
        by_tile: dict[tuple[int, int], list[df.KernelOp]] = {}
        for k in self.p.kernels:
            by_tile.setdefault(self.p.mapping.placement[k.sym_name.data], []).append(k)
        for (x, y), placed in sorted(by_tile.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            tile_block = Block()
            resident = sum(k.buffer_bytes.value.data for k in placed if k.phase == 0)
            top: dict[int, int] = {0: 0}  # SRAM phase -> next free address
            for k in placed:
                address = top.setdefault(k.phase, resident)
                tile_block.add_op(self._context(k, address))
                top[k.phase] = address + k.buffer_bytes.value.data
            attributes = {"sym_name": StringAttr(f"t{x}_{y}"), "x": IntegerAttr(x, 64), "y": IntegerAttr(y, 64),
                          "kind": StringAttr(self.p.arch.tile(x, y).kind)}  # fmt: skip
            self.block.add_op(ar.TileOp.build(attributes=attributes, regions=[Region(tile_block)]))

    def _context(self, k: df.KernelOp, sram: int) -> ar.ContextOp:
        """Kernel ``k`` as a context of its tile, its work buffer at ``sram``, with its SRAM phase."""
        stream_of = self.p.stream_of
        phase = {"phase": IntegerAttr(k.phase, 64)} if k.phase else {}  # absent: 0, as on the kernel
        return ar.ContextOp.build(
            attributes={
                "sym_name": k.sym_name,
                "kernel": IntegerAttr(self.kid[k], 64),
                "kind": k.kind,
                "inputs": df.i64_array([stream_of[v] for v in k.inputs]),
                "outputs": df.i64_array([stream_of[r] for r in k.outputs]),
                "loops": k.loops,
                "trips": k.trips,
                "tile": k.tile,
                "buffers": ArrayAttr([StringAttr("work")]),
                "buffer_addresses": df.i64_array([sram]),
                "buffer_sizes": df.i64_array([k.buffer_bytes.value.data]),
                "cycles": k.cycles,
                "macs": k.macs,
                "tokens": k.tokens,
                **phase,
            },
            regions=[k.body.clone()],
        )

    def routes(self) -> None:
        """One ``array.route`` per producer-consumer stream, along the path the router chose."""
        for s, src, dst, nb in self.p.edges:
            name = f"s{s}:{dst.sym_name.data}"
            path = self.p.mapping.routes[name]
            spec = next(st for st in self.p.problem.streams if st.name == name)
            self.block.add_op(
                ar.RouteOp.build(
                    attributes={
                        "sym_name": StringAttr(name),
                        "stream": IntegerAttr(s, 64),
                        "src": IntegerAttr(self.kid[src], 64),
                        "dst": IntegerAttr(self.kid[dst], 64),
                        "hops": df.i64_array([c for p in path for c in p]),
                        "vc": IntegerAttr(0, 64),
                        "bytes": IntegerAttr(nb, 64),
                        "rate": FloatAttr(spec.rate, 64),
                    }
                )
            )

    def dmas(self) -> None:
        """The DMA descriptors: a load or a store per DMA kernel, a store and a load per spill."""
        fn, mapping, stream_of = self.p.fn, self.p.mapping, self.p.stream_of
        in_address = {a: _io_address(self.block, n) for n, a in zip(io_names(fn)[0], fn.body.block.args)}
        for k in self.p.kernels:
            if k.kind.data == "dma_spill":
                # written to DRAM and read back: a store of each input stream, a load of the output made of it
                # (a spill between SRAM phases carries several streams, output i being input i)
                pairs = list(zip(k.inputs, k.outputs)) if len(k.inputs) == len(k.outputs) else [(k.inputs[0], k.outputs[0])]
                for j, (src, dst) in enumerate(pairs):
                    size = nbytes(dst.type)
                    for direction, stream in (("store", stream_of[src]), ("load", stream_of[dst])):
                        self.block.add_op(_dma(k, mapping, direction, stream, self.address, size, self.kid[k],
                                               f"_{j}" if len(pairs) > 1 else ""))  # fmt: skip
                    self.address = _align(self.address + size)
                continue
            if k.kind.data not in ("dma_load", "dma_store"):
                continue
            load = k.kind.data == "dma_load"
            if load:
                stream = stream_of[k.outputs[0]]
                src = k.inputs[0] if k.inputs else None
                addr = in_address.get(src, -1) if src is not None else -1  # -1: a weight, placed by the backend
                if addr >= 0 and k.dram_offset is not None:  # a region of the input (a group's units of K)
                    addr += k.dram_offset.value.data
            else:
                stream = stream_of[k.inputs[0]] if k.inputs else stream_of[k.outputs[0]]
                addr = self.out_address[k.outputs[0]]
            self.block.add_op(
                ar.DmaOp.build(
                    attributes={
                        "sym_name": StringAttr(f"dma_{k.sym_name.data}"),
                        "channel": df.i64_array(mapping.placement[k.sym_name.data]),
                        "direction": StringAttr("load" if load else "store"),
                        "stream": IntegerAttr(stream, 64),
                        "address": IntegerAttr(addr, 64),
                        "bytes": IntegerAttr(nbytes(k.outputs[0].type), 64),
                        "kernel": IntegerAttr(self.kid[k], 64),
                        **({"strides": k.dram_strides} if load and k.dram_strides is not None else {}),
                    }
                )
            )

    def build(self) -> ar.ConfigOp:
        """The config around the sections built so far, with @main's report attributes (the tile search's
        choices and predictions travel with it) and the mapping's figures."""
        arch = self.p.arch
        kept = {n: a for n, a in self.p.fn.attributes.items() if n.startswith("attnc.")}
        attrs = {
            **kept,
            "sym_name": StringAttr("main"),
            "arch": StringAttr(arch.name),
            "fingerprint": StringAttr(arch.fingerprint().hex()),
            "dram_bytes": IntegerAttr(self.address, 64),
        }
        for key, value in asdict(self.p.mapping.stats).items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int):
                attrs[f"mapping.{key}"] = IntegerAttr(value, 64)
            elif isinstance(value, float):
                attrs[f"mapping.{key}"] = FloatAttr(value, 64)
            elif isinstance(value, str):
                attrs[f"mapping.{key}"] = StringAttr(value)
        return ar.ConfigOp.build(attributes=attrs, regions=[Region(self.block)])


def schedule_windows(fn: func.FuncOp, arch) -> list[tuple[float, float]] | None:
    """When each kernel of ``fn`` runs (start, finish) in the cost model's event schedule of the unplaced
    graph (every kernel a tile of its own, streams one hop): which kernels run at the same time, for the
    placer's phases. None when the cost model cannot time the graph (the placer then takes every kernel
    as running all the time)."""
    from attnc.cost.events import EventSchedule
    from attnc.cost.graph import from_dataflow

    try:
        nodes, _ = from_dataflow(fn, arch)
        EventSchedule(nodes, arch, placed=False).run()
    except AttncError:
        return None
    return [(nd.cost.start, nd.cost.finish) for nd in nodes]


def dataflow_problem(kernels: list[df.KernelOp], stream_of: dict[SSAValue, int], arch,
                     windows: list[tuple[float, float]] | None = None):
    """The mapping problem of dataflow kernels: one stream per producer-consumer
    edge, carrying the bytes the consumer reads (times the passes a fused kernel streams
    it in), at the rate the slower end allows; ``windows``: when each kernel runs
    (``schedule_windows``)."""
    edges = []  # (stream id, producer kernel, consumer kernel, bytes)
    for k in kernels:
        reps = k.attributes.get("input_repeats")
        repeats = reps.get_values() if isinstance(reps, DenseArrayBase) else [1] * len(k.inputs)
        for v, arg, rep in zip(k.inputs, k.body.block.args, repeats):
            owner = v.owner
            if isinstance(owner, df.KernelOp):
                edges.append((stream_of[v], owner, k, consumed_bytes(arg) * int(rep)))
    width = arch.noc.link_bytes_per_cycle
    # a butterfly stage pipeline moves at its slowest kernel's pace: so do its streams (and its inputs')
    pace: dict[str, int] = {}
    for k in kernels:
        if k.group is not None and any(isinstance(o, sp.ButterflyStageOp) for o in k.body.block.ops):
            pace[k.group.data] = max(pace.get(k.group.data, 0), k.cycles.value.data)

    def cycles(k: df.KernelOp) -> int:
        own = k.cycles.value.data
        stages = any(isinstance(o, sp.ButterflyStageOp) for o in k.body.block.ops)
        if k.group is not None and k.group.data in pace and stages:
            return max(own, pace[k.group.data])
        return own

    def cap(src: df.KernelOp, dst: df.KernelOp) -> float:
        # a stage chain's streams each carry a whole tensor at the chain's pace, several to a tile: asking
        # a full link for each would make small chains unplaceable, where sharing one only slows them (the
        # simulator shares links); half a link each lets two meet on one
        return width / 2 if any(k.group is not None and k.group.data in pace for k in (src, dst)) else float(width)

    rates = [min(cap(src, dst), nb / max(cycles(src), cycles(dst), 1)) for _, src, dst, nb in edges]
    # what DMA loads stream out cannot exceed what DRAM delivers: their rates share its bandwidth
    loads = [i for i, (_, src, _, _) in enumerate(edges) if src.kind.data == "dma_load"]
    total = sum(rates[i] for i in loads)
    if total > arch.dram.bytes_per_cycle:
        for i in loads:
            rates[i] *= arch.dram.bytes_per_cycle / total
    # a group whose kernels are all of one kind runs them at the same time (a grid's parts, a group's members);
    # one of several kinds is a pipeline of steps (an unfused head's QK, softmax and PV)
    kinds: dict[str, set[str]] = {}
    for k in kernels:
        if k.group:
            kinds.setdefault(k.group.data, set()).add(k.kind.data)
    problem = MappingProblem(
        kernels=[
            KernelSpec(k.sym_name.data, k.tile_kind.data, k.buffer_bytes.value.data, max(1, k.cycles.value.data),
                       k.group.data if k.group else "", window=windows[i] if windows else None,
                       phase=k.phase,
                       together=k.group.data if k.group and len(kinds[k.group.data]) == 1 else "")  # fmt: skip
            for i, k in enumerate(kernels)
        ],
        streams=[
            StreamSpec(f"s{s}:{dst.sym_name.data}", src.sym_name.data, dst.sym_name.data, nbytes_, rate)
            for (s, src, dst, nbytes_), rate in zip(edges, rates)
        ],
    )
    return problem, edges


def module_problem(module: ModuleOp, arch) -> MappingProblem:
    """The mapping problem of a module whose @main is dataflow IR (for benchmarks)."""
    fn = main_func(module)
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    stream_of = {r: i for i, r in enumerate(r for k in kernels for r in k.outputs)}
    return dataflow_problem(kernels, stream_of, arch, schedule_windows(fn, arch))[0]


def _dma(k: df.KernelOp, mapping: Mapping, direction: str, stream: int, address: int, size: int, kernel: int,
         suffix: str = ""):
    return ar.DmaOp.build(
        attributes={
            "sym_name": StringAttr(f"dma_{k.sym_name.data}_{direction}{suffix}"),
            "channel": df.i64_array(mapping.placement[k.sym_name.data]),
            "direction": StringAttr(direction),
            "stream": IntegerAttr(stream, 64),
            "address": IntegerAttr(address, 64),
            "bytes": IntegerAttr(size, 64),
            "kernel": IntegerAttr(kernel, 64),
        }
    )


def _align(n: int) -> int:
    return -(-n // DRAM_ALIGN) * DRAM_ALIGN


def _io(name: str, direction: str, ty, address: int) -> dict:
    return {
        "sym_name": StringAttr(name),
        "direction": StringAttr(direction),
        "type": ty,
        "address": IntegerAttr(address, 64),
    }


def _io_address(block: Block, name: str) -> int:
    for op in block.ops:
        if isinstance(op, ar.IOOp) and op.sym_name.data == name and op.direction.data == "input":
            return op.address.value.data
    raise AssertionError(name)



def mapping_from_config(config: ar.ConfigOp, arch) -> tuple[MappingProblem, Mapping]:
    """The mapping problem and its solution as the array IR states them (for reports
    and for the independent validator): contexts give kernels and placement, routes
    give streams and paths."""
    placement: dict[str, tuple[int, int]] = {}
    kernels: list[KernelSpec] = []
    names: dict[int, str] = {}
    for tile in (o for o in config.body.block.ops if isinstance(o, ar.TileOp)):
        pos = (tile.x.value.data, tile.y.value.data)
        for ctx in tile.body.block.ops:
            assert isinstance(ctx, ar.ContextOp)
            name = ctx.sym_name.data
            names[ctx.kernel.value.data] = name
            placement[name] = pos
            kernels.append(KernelSpec(name, arch.tile(*pos).kind, sum(int(s) for s in ctx.buffer_sizes.get_values()),
                                      ctx.cycles.value.data, phase=ctx.phase))  # fmt: skip
    streams, routes = [], {}
    for r in (o for o in config.body.block.ops if isinstance(o, ar.RouteOp)):
        streams.append(StreamSpec(r.sym_name.data, names[r.src.value.data], names[r.dst.value.data],
                                  r.bytes.value.data, r.rate.value.data))  # fmt: skip
        routes[r.sym_name.data] = r.path()
    stats = MappingStats()
    for f in fields(MappingStats):
        attr = config.attributes.get(f"mapping.{f.name}")
        if isinstance(attr, (IntegerAttr, FloatAttr)):
            setattr(stats, f.name, type(getattr(stats, f.name))(attr.value.data))
        elif isinstance(attr, StringAttr):
            setattr(stats, f.name, attr.data)
    return MappingProblem(kernels, streams), Mapping(placement, routes, stats)

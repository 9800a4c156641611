"""The kernel graph the cost model times, read from dataflow IR or array IR.

A :class:`Node` per kernel (its figures, from :mod:`attnc.cost.kernels`, and what the timing rules need:
steps, tokens per output, buffers, its place on its tile) and an :class:`Edge` per stream from a producer
to a consumer (bytes, route, tokens). On array IR the edges follow the routes; on dataflow IR nothing is
placed yet, so each stream gets one hop of its own. Once every edge is in, the graph is annotated with
what the event schedule (:mod:`attnc.cost.events`) reads: forwarded copies, DMA steps, back-pressure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from attnc.cost.kernels import KernelCost, dims_product, estimate_kernel, set_dma_traffic, tensor_bytes
from attnc.cost.work import consumed_bytes
from attnc.dialects import array as ar
from attnc.dialects import dataflow as df
from attnc.dialects.dataflow import DMA_KERNEL_KINDS
from attnc.errors import AttncError
from xdsl.dialects.builtin import DenseArrayBase
from xdsl.ir import Operation, SSAValue


@dataclass
class Edge:
    """A stream from a producer kernel to one of its consumers."""

    src: int  # producer node index
    dst: int
    bytes: int  # what the consumer reads
    hops: int  # links crossed (0: same tile, a buffer read)
    links: list[tuple[tuple[int, int], tuple[int, int]]]
    tokens: int  # the stream's tokens (its producer's count, which its consumers see too)
    weight: bool  # a constant loaded by DMA: needed whole before the first step
    #: a forwarded copy: the producer's input edge whose register this output is (through reshapes only);
    #: its tokens leave as that input's arrive, not as the producer computes
    via: Edge | None = None
    routed: bool = True  # it has a route (possibly of no links: a tile to itself); else a buffer read


@dataclass
class Node:
    """A kernel: its figures and what the timing rules read of it."""

    cost: KernelCost
    tile_params: object  # attnc.arch.Tile
    steps: int  # loop steps (trip counts multiplied)
    out_tokens: list[int]  # per output
    ins: list[Edge] = field(default_factory=list)
    is_weight_load: bool = False
    position: int = 0  # its context's place on the tile (the round-robin order)
    lead: float = 0.0  # time of its first step before any output: DMA latency, or the MAC array's fill
    kid: int = 0  # kernel id (the order the simulator takes loads in for back-pressure)
    throttled: bool = False  # held back by its streamed consumers' buffers
    contexts: int = 1  # contexts configured on its tile
    forwards: dict[int, int] = field(default_factory=dict)  # output -> the input it is a copy of
    in_edge: dict[int, Edge] = field(default_factory=dict)  # input -> its edge (on-chip producers only)
    out_edges: list[tuple[int, Edge]] = field(default_factory=list)  # (output, edge to a consumer)
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
    return dims_product([t for n, t in loops if n == "repeat"]) if any(n == "repeat" for n, _ in loops) else 1


def _forwards(body: Sequence[Operation], args: Sequence[SSAValue], results: Sequence[SSAValue]) -> dict[int, int]:
    """Outputs that are a copy of an input: its register through ``reshape``s and ``slice``s only (at least one;
    an input yielded as it is stays the context's output), as the simulator forwards them. Output index -> input
    index. (The simulator also forwards a concatenation of inputs; here such an output is timed as computed.)"""
    origin: dict[SSAValue, int] = {a: j for j, a in enumerate(args)}
    for op in body:
        if op.name in ("sparse.reshape", "sparse.slice") and len(op.operands) == 1 and op.operands[0] in origin:
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
    return dims_product([t for _, t in loops[:j]]), max(loops[j][1], 1), dims_product([t for _, t in loops[j + 1 :]])


def _link_forwards(nodes: list[Node]) -> None:
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


def _timing_rules(node: Node, kind: str, tile_kind: str, loops, body, args, results) -> None:
    """A compute or memory context (not DMA) with a ("repeat", P) loop reads its inputs in the first pass
    only; without one, its outputs that copy an input are forwarded as the input arrives."""
    if kind in DMA_KERNEL_KINDS or tile_kind == "dma":
        return
    node.repeat = _repeat_split(loops)
    if node.repeat is None:
        node.forwards = _forwards(body, list(args), list(results))


def _root(e: Edge) -> Edge:
    """The edge whose producer sends ``e``'s tokens: ``e``, or up its chain of forwarded copies."""
    seen = 0
    while e.via is not None and seen < 1000:
        e, seen = e.via, seen + 1
    return e


def _back_pressure(nodes: list[Node]) -> None:
    """Which producers are held back by their consumers' buffers (the simulator's back-pressure): any kernel
    with streamed consumers (tokens > 1, not a weight; a forwarded copy's consumers count for the copy's
    source), unless holding it back could close a cycle of waits of three or more kernels with a wait for
    all of a producer on it (a consumer waits for its producers -- for a copy, the copy's source -- in step
    when it streams the input, for all of it when the input is one token, a weight or read in the first of
    P passes; a held-back producer waits for its consumers); producers are taken in kernel order."""
    waits: dict[int, dict[int, bool]] = {i: {} for i in range(len(nodes))}

    def wait(a: int, b: int, in_step: bool) -> None:
        if a != b:
            waits[a][b] = waits[a].get(b, True) and in_step

    consumers: dict[int, dict[int, bool]] = {}
    for i, nd in enumerate(nodes):
        for e in nd.ins:
            src = _root(e).src
            in_step = e.tokens > 1 and not e.weight and nd.repeat is None
            wait(i, src, in_step)
            if e.tokens > 1 and not e.weight and i != src:
                consumers.setdefault(src, {})
                consumers[src][i] = consumers[src].get(i, True) and nd.repeat is None

    def closes_cycle(start: int, load: int, extra: dict[int, bool]) -> bool:
        todo = [(n, step and extra[start]) for n, step in waits[start].items() if n != load]
        seen = set(todo)
        while todo:
            n, step = todo.pop()
            if n == load:
                if not step:
                    return True
                continue
            for m, s in waits[n].items():
                state = (m, step and s)
                if state not in seen:
                    seen.add(state)
                    todo.append(state)
        return False

    for i in sorted(range(len(nodes)), key=lambda j: nodes[j].kid):
        extra = consumers.get(i, {})
        if not extra or any(closes_cycle(c, i, extra) for c in extra):
            continue
        for c, step in extra.items():
            wait(i, c, step)
        nodes[i].throttled = True


def _dma_steps(nodes: list[Node]) -> None:
    """A DMA kernel moves its data token by token, whatever its loops say: it has at least as many steps
    as any of its ports has tokens."""
    for nd in nodes:
        if nd.cost.tile_kind == "dma" or nd.cost.kind in DMA_KERNEL_KINDS:
            nd.steps = max([nd.steps, *nd.out_tokens, *(e.tokens for e in nd.ins)])


def from_array(config, arch) -> tuple[list[Node], dict]:
    """The graph of an ``array.config`` (after place-route), and its vector/SFU/butterfly op counts."""
    nodes: list[Node] = []
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
            kc, c = estimate_kernel(ctx.sym_name.data, kind, tp.kind, pos, body, in_types, out_types, tp)
            loops = _loops(ctx.loops, ctx.trips)
            if kind in DMA_KERNEL_KINDS or tp.kind == "dma":
                set_dma_traffic(kc, descs.get(ctx.kernel.value.data, []), _repeat(loops), arch, kind == "dma_spill")
            for key in counts:
                counts[key] += c[key]
            idx = len(nodes)
            outs = [int(s) for s in ctx.outputs.get_values()]
            node = Node(kc, tp, max(dims_product([t for _, t in loops]), 1), _tokens_attr(ctx, "tokens", len(outs)))
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
                nbytes = r.bytes.value.data or tensor_bytes(t)
            else:
                links, nbytes = [], tensor_bytes(t)
            p = nodes[src]
            edge = Edge(src, idx, nbytes, len(links), links, p.out_tokens[out], p.is_weight_load)
            edge.routed = r is not None
            _attach(nodes, out, idx, port, edge)
    _link_up(nodes)
    return nodes, counts


def from_dataflow(fn, arch) -> tuple[list[Node], dict]:
    """The graph of a function of dataflow kernels (after lower-to-dataflow), unplaced, and its
    vector/SFU/butterfly op counts."""
    nodes: list[Node] = []
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
        kc, c = estimate_kernel(k.sym_name.data, kind, tile_kind, None, body, in_types, out_types, tp)
        loops = k.loop_schedule()
        if kind in DMA_KERNEL_KINDS:
            if kind == "dma_load":
                d = [("load", sum(tensor_bytes(t) for t in out_types))]
            elif kind == "dma_store":
                d = [("store", sum(tensor_bytes(t) for t in out_types))]
            else:
                d = [
                    ("store", sum(tensor_bytes(t) for t in in_types)),
                    ("load", sum(tensor_bytes(t) for t in out_types)),
                ]
            set_dma_traffic(kc, d, _repeat(loops), arch, kind == "dma_spill")
        for key in counts:
            counts[key] += c[key]
        idx = len(nodes)
        node = Node(kc, tp, max(dims_product([t for _, t in loops]), 1), _tokens_attr(k, "tokens", len(out_types)))
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
            edge = Edge(src, idx, consumed_bytes(arg) * rep, 1, [link], p.out_tokens[out], p.is_weight_load)
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

"""SRAM phases: kernels that cannot run at the same time reuse the same SRAM.

Used by ``lower-to-dataflow`` when ``tile`` decided that the module's phases share SRAM (``tile{share-sram}``).
Each compute kernel gets a phase >= 1: kernels of one group (a GEMM's grid parts, an attention's members, a
row kernel's parts) share one, and a group's phase is one more than the latest phase it reads from (groups
that read each other, a cycle, are merged). The array runs a tile's phases in order and lets the buffers of
different phases overlap (docs/simulator.md, "SRAM phases"), so data that crosses phases cannot wait on chip
in a buffer that the next phase overwrites: it goes through DRAM.

* Every stream from a kernel of one phase into kernels of another goes through a ``dma_spill``: the streams
  of one (producer group, consumer phase), a crossing, are cut over up to ``SPILL_WAYS`` spills as the DMA
  contexts allow, no reader fed by two. A spill stores its inputs as they are made and reads them back once
  the consumers' phase has begun. Output i of a spill is its input i.
* A DMA load (a graph input, a weight) read by kernels of several phases is cloned, one load per phase.
* DMA kernels (loads, spills, stores) keep phase 0: they hold their staging buffers all the time.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
from attnc.cost.work import kernel_cost, nbytes
from attnc.dialects import dataflow as df
from attnc.dialects.dataflow import DMA_KERNEL_KINDS
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Block, Operation

#: set on @main by ``tile`` when the module's phases share SRAM
SHARE_ATTR = "attnc.share_sram"


def is_dma(k: df.KernelOp) -> bool:
    return k.kind.data in DMA_KERNEL_KINDS or k.tile_kind.data == "dma"


def _group(k: df.KernelOp) -> str:
    g = k.group
    return g.data if g is not None and g.data else k.sym_name.data


def assign_phases(fn: func.FuncOp, arch, unique: Callable[[str], str]) -> dict[str, int]:
    """Give every compute kernel of @main its phase and route the data between phases through DRAM
    (``unique`` names the kernels it adds: the partitioner's, which knows every name taken). Returns each
    group's phase."""
    block = fn.body.block
    kernels = [k for k in block.ops if isinstance(k, df.KernelOp)]
    compute = [k for k in kernels if not is_dma(k)]
    graph = nx.DiGraph()
    graph.add_nodes_from(_group(k) for k in compute)
    for k in compute:
        for v in k.inputs:
            src = v.owner
            if isinstance(src, df.KernelOp) and not is_dma(src) and _group(src) != _group(k):
                graph.add_edge(_group(src), _group(k))
    # groups that read each other run together: one phase
    dag = nx.condensation(graph)
    level: dict[int, int] = {}
    for c in nx.topological_sort(dag):
        level[c] = 1 + max((level[p] for p in dag.predecessors(c)), default=0)
    phase = {g: level[c] for g, c in dag.graph["mapping"].items()}
    for k in compute:
        k.attributes["phase"] = IntegerAttr(phase[_group(k)], 64)
    _split_loads(block, [k for k in kernels if k.kind.data == "dma_load"], unique)
    _spill_crossings(block, compute, arch, unique)
    _sort(block)
    return phase


def _spill_crossings(block: Block, compute: list[df.KernelOp], arch, unique: Callable[[str], str]) -> None:
    """The streams of each (producer group, consumer phase) whose phases differ through ``dma_spill`` kernels,
    as many as ``_spill_ways`` gives it, each carrying whole classes of values read together (each value
    written once, however many groups of the phase read it); the consumers read their outputs instead."""
    crossings: dict[tuple[str, int], list[tuple[df.KernelOp, int]]] = {}
    for k in compute:
        for i, v in enumerate(k.inputs):
            src = v.owner
            if isinstance(src, df.KernelOp) and not is_dma(src) and src.phase != k.phase:
                crossings.setdefault((_group(src), k.phase), []).append((k, i))
    parts = {key: _read_together(readers) for key, readers in crossings.items()}
    ways = _spill_ways(block, arch, parts)
    for (src, phase), readers in crossings.items():
        dst = _group(readers[0][0])
        out: dict = {}
        chunks = _balanced(parts[src, phase], ways[src, phase])
        for j, chunk in enumerate(chunks):
            name = unique(f"spill_{src}_to_{dst}".replace("/", "_") + (f"_s{j}" if len(chunks) > 1 else ""))
            out.update(_spill(block, chunk, arch, name))
        for k, i in readers:
            k.operands[i] = out[k.inputs[i]]


def _read_together(readers: list[tuple[df.KernelOp, int]]) -> list[list]:
    """The values ``readers`` read, in classes that no reader straddles (values linked by a reader that reads
    both), in order of first read. A reader fed by two spills could wait on one for tokens the other holds
    back behind its buffer credits (the simulator found such a deadlock: a row strip cut over two spills)."""
    values = list(dict.fromkeys(k.inputs[i] for k, i in readers))
    linked = nx.utils.UnionFind(values)
    by_reader: dict[df.KernelOp, list] = {}
    for k, i in readers:
        by_reader.setdefault(k, []).append(k.inputs[i])
    for vs in by_reader.values():
        linked.union(*vs)
    classes: dict = {}
    for v in values:
        classes.setdefault(linked[v], []).append(v)
    return list(classes.values())


#: at most this many spills carry one crossing between phases
SPILL_WAYS = 4


def _spill_ways(block: Block, arch, parts: dict) -> dict:
    """Into how many spills each crossing is cut: one each, and the DMA contexts the kernels leave (less an
    eighth, headroom for placement) to the crossings with the most bytes per spill, at most ``SPILL_WAYS`` or
    one per class of values read together. A crossing is on the layer's critical path: its consumers' phase
    waits on it, and one DMA context streams it at one flow's share of DRAM and of its tile's channels while
    the loads of later phases' weights take theirs (BERT-base on cloud at seq 512: a GEMM phase ran 1.6x its
    parts' busy time waiting on its spill; cut in three or four, the layer took 192K cycles, not 250K)."""
    total = sum(t.contexts for t in arch.tiles_of("dma"))
    used = sum(1 for k in block.ops if isinstance(k, df.KernelOp) and is_dma(k))
    free = total - total // 8 - used - len(parts)
    size = {key: sum(nbytes(v.type) for c in classes for v in c) for key, classes in parts.items()}
    ways = dict.fromkeys(parts, 1)
    while free > 0:
        open_ = [key for key in parts if ways[key] < min(SPILL_WAYS, len(parts[key]))]
        if not open_:
            break
        key = max(open_, key=lambda x: size[x] / ways[x])
        ways[key] += 1
        free -= 1
    return ways


def _balanced(classes: list[list], n: int) -> list[list]:
    """``classes`` (in order) in ``n`` contiguous runs of about equal bytes."""
    total = sum(nbytes(v.type) for c in classes for v in c)
    runs: list[list] = [[]]
    done = 0
    for c in classes:
        # a new run once this one has its share, while runs and classes remain for the rest
        if runs[-1] and len(runs) < n and done >= total * len(runs) / n:
            runs.append([])
        runs[-1].extend(c)
        done += sum(nbytes(v.type) for v in c)
    return runs


def _spill(block: Block, values: list, arch, name: str) -> dict:
    """A ``dma_spill`` kernel carrying ``values`` (output i is input i), after their last producer; each value
    mapped to its output."""
    body = Block(arg_types=[v.type for v in values])
    body.add_op(df.YieldOp(list(body.args)))
    types = [v.type for v in values]
    cost = kernel_cost([], types, arch, dma="dma_spill")
    spill = df.KernelOp(name, values, types, body, kind=cost.kind, tile_kind=cost.tile_kind, loops=cost.loops,
                        tile=cost.tile, buffer_bytes=cost.buffer_bytes, cycles=cost.cycles, macs=cost.macs)  # fmt: skip
    block.insert_op_after(spill, max((v.owner for v in values), key=_index(block)))
    return dict(zip(values, spill.results))


def _split_loads(block: Block, loads: list[df.KernelOp], unique: Callable[[str], str]) -> None:
    """A load read by kernels of several phases becomes one load per phase (a DMA context whose data waits
    in DRAM for one phase at a time)."""
    for load in loads:
        for j, v in enumerate(load.results):
            by_phase: dict[int, list[tuple[Operation, int]]] = {}
            for use in list(v.uses):
                if isinstance(use.operation, df.KernelOp) and not is_dma(use.operation):
                    by_phase.setdefault(use.operation.phase, []).append((use.operation, use.index))
            for p in sorted(by_phase)[1:]:
                twin = load.clone()
                twin.attributes["sym_name"] = StringAttr(unique(f"{load.sym_name.data}_p{p}"))
                block.insert_op_after(twin, load)
                for op, i in by_phase[p]:
                    op.operands[i] = twin.results[j]


def _index(block: Block):
    order = {op: i for i, op in enumerate(block.ops)}
    return lambda op: order.get(op, -1)


def _sort(block: Block) -> None:
    """Kernels in an order where each comes after what it reads (a spill placed after its last producer may
    come after one of its readers), the terminator last."""
    ops = list(block.ops)
    term = ops[-1]
    body = ops[:-1]
    pos = {op: i for i, op in enumerate(body)}
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(body)))
    for i, op in enumerate(body):
        for v in op.operands:
            if v.owner in pos:
                graph.add_edge(pos[v.owner], i)
    order = list(nx.lexicographical_topological_sort(graph))
    if order == list(range(len(body))):
        return
    for op in body:
        op.detach()
    for i in order:
        block.insert_op_before(body[i], term)

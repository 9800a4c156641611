"""The graph model's figures for one kernel: its work, cycles and traffic on the tile it runs on.

Work of one kernel (the rules of docs/simulator.md, read off the kernel's body ops):

* ``butterfly_stage``: ``rows * n * width`` MACs (``width = radix * block``); on a compute tile the
  ``n / width`` GEMMs ``[rows, width] x [width, width]``: ``n / width * ceil(rows/mac_rows) *
  ceil(width/mac_cols) * width`` MAC-array cycles (a ``row_block`` b: ``ceil(rows/b) * ceil(b/mac_rows)``
  row steps instead of ``ceil(rows/mac_rows)``).
* ``matmul`` / ``contract``: MACs = result elements x reduction size; on a compute tile
  ``batch * ceil(M/rows) * ceil(N/cols) * K`` MAC-array cycles. An unscheduled ``attention`` is two such
  GEMMs plus a softmax over the scores. A fused ``attention`` (``fusion`` = flat | online) follows the
  blocked rule of :func:`attnc.cost.attention.attention_work` (spec section 2, closed form per row block).
* every other compute op: the lane and special-function operations of :mod:`attnc.cost.op_costs` (per
  element of the largest of its result and operands, and per row of a row-wise op: softmax, LayerNorm,
  GELU in either form, exp and the other special functions); data-movement ops and constants cost nothing.
* A compute tile runs MAC cycles + ``ceil(lane ops / lanes)`` + ``ceil(special ops / exp_per_cycle)``
  (a fused attention overlaps the three) plus one pipeline fill of ``rows + cols`` when it does MACs; an
  sfu tile runs MACs, lane and special ops on its lanes; a butterfly tile runs ``ceil(MACs/4) + ceil(lane
  ops/2)`` butterflies on its lanes.
* DMA kernels move their descriptors' bytes (a ``("repeat", P)`` loop moves them P times; a
  ``dma_spill`` writes and reads its value, so it counts both): ``latency + bytes / DRAM bandwidth``.

These are the simulator's rules, not the first-order sizing ``lower-to-dataflow`` records on a kernel
(:mod:`attnc.cost.work`): the graph model re-derives each kernel's figures from its body, so that it checks
the simulator and the simulator checks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from attnc.arch.datatypes import element_bytes
from attnc.cost import op_costs as oc
from attnc.cost.attention import attention_work
from attnc.cost.work import stage_mac_cycles
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import DMA_KERNEL_KINDS
from xdsl.dialects.builtin import IntegerAttr, StringAttr, TensorType, UnitAttr
from xdsl.ir import Operation


def dims_product(dims: Sequence[int]) -> int:
    """The number of elements of a shape (a negative dim counts as empty)."""
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
    special_ops: int = 0  # serial special-function operations (exp, erf, rsqrt, ...)
    fused_special_ops: int = 0
    sram_read: int = 0
    sram_write: int = 0


def _shape(t) -> list[int]:
    return [int(d) for d in t.get_shape()] if isinstance(t, TensorType) else []


def _elt_bytes(t) -> int:
    return element_bytes(str(t.element_type)) if isinstance(t, TensorType) else 4


def tensor_bytes(t) -> int:
    """Bytes of a tensor as the array stores it (``attnc.arch.datatypes``; not a numpy value's size)."""
    return dims_product(_shape(t)) * _elt_bytes(t)


def _gemm_cycles(out: list[int], k: int, rows: int, cols: int, row_block: int = 0) -> int:
    m = out[-2] if len(out) >= 2 else 1
    n = out[-1] if out else 1
    return dims_product(out[:-2]) * oc.row_steps(max(m, 0), rows, row_block) * _cdiv(max(n, 0), cols) * max(k, 0)


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
        return dims_product(out), _gemm_cycles(out, 1, rows, cols)  # an equation the rule cannot read: one MAC each
    k = dims_product([sizes[c] for c in sizes if c not in res])
    return dims_product(sizes.values()), _gemm_cycles(out, k, rows, cols)


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
        w.sram_read += sum(tensor_bytes(t) for t in operand_types)
        w.sram_write += tensor_bytes(op.results[0].type) * len(op.results)
        if name == "matmul":
            k = shapes[0][-1] if shapes and shapes[0] else 1
            w.macs += dims_product(out) * k
            # a ``row_block`` (an unfused QKᵀ with its softmax epilogue holds that many score rows): part-full
            # MAC-array row steps
            w.mac_cycles += _gemm_cycles(out, k, rows, cols, _attr_int(op, "row_block"))
        elif name == "butterfly_stage":
            # [rows, n] as n/width GEMMs [rows, width] x [width, width], width = radix * block
            x = shapes[0] if shapes and shapes[0] else out
            width = max(_attr_int(op, "radix", 1), 1) * max(_attr_int(op, "block", 1), 1)
            r = dims_product(x[:-1])
            w.macs += r * x[-1] * width
            # rows held row_block at a time: below the MAC array's height, part-full row steps
            w.mac_cycles += stage_mac_cycles(x[-1], width, r, rows, cols, _attr_int(op, "row_block"))
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
                    rows=rows, cols=cols, lanes=tile.vector_lanes, exps=_exps(tile),
                )  # fmt: skip
                w.macs += aw.macs
                w.fused_macs += aw.macs
                w.fused_cycles += aw.cycles
                w.fused_lane_ops += aw.lane_ops
                w.fused_special_ops += aw.special_ops
            else:
                d, t = q[-1], (kk[-2] if len(kk) >= 2 else 1)
                dv = out[-1] if out else d
                rows_q = dims_product(q[:-1])
                w.macs += rows_q * t * (d + dv)
                w.mac_cycles += _gemm_cycles(q[:-1] + [t], d, rows, cols) + _gemm_cycles(q[:-1] + [dv], t, rows, cols)
                lane, special = oc.vector_work("softmax", rows_q * t, rows_q)
                w.lane_ops += lane + (oc.MASK_LANE * rows_q * t if len(op.operands) > 3 else 0)
                w.special_ops += special
        else:
            biggest = max([dims_product(out)] + [dims_product(s) for s in shapes])
            approx = op.attributes.get("approximate")
            lane, special = oc.vector_work(
                name, biggest, oc.row_count(name, shapes[0] if shapes else out, _attr_int(op, "axis", -1)),
                approximate=approx.data if isinstance(approx, StringAttr) else "", operands=len(op.operands),
            )  # fmt: skip
            w.lane_ops += lane
            w.special_ops += special
    return w


def _exps(tile) -> int:
    """The exp unit's results per cycle (0: none; the fused rule refuses it)."""
    return tile.exp_per_cycle if tile.kind == "compute" else tile.vector_lanes


# ---------------------------------------------------------------------------
# one kernel's figures


@dataclass
class KernelCost:
    """One kernel's figures in the graph model (``GraphCost.kernels``); the first-order sizing that
    ``lower-to-dataflow`` records is :class:`attnc.cost.work.KernelPlan`."""

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


def estimate_kernel(name, kind, tile_kind, pos, body, in_types, out_types, tile) -> tuple[KernelCost, dict]:
    """The figures of a kernel whose body is ``body`` (terminator excluded) on ``tile``, and its counts of
    vector, SFU and butterfly operations (for energy); a DMA kernel's traffic comes from its descriptors
    (:func:`set_dma_traffic`)."""
    kc = KernelCost(name, kind, tile_kind, pos)
    counts = {"vector_ops": 0, "sfu_ops": 0, "butterfly_ops": 0}
    if kind in DMA_KERNEL_KINDS or tile_kind == "dma":
        return kc, counts
    w = body_work(body, tile)
    lanes = max(tile.vector_lanes, 1)
    if tile_kind == "compute":
        kc.cycles = w.mac_cycles + _cdiv(w.lane_ops, lanes) + w.fused_cycles
        kc.cycles += _cdiv(w.special_ops, max(tile.exp_per_cycle, 1))  # (the simulator refuses them without a unit)
        if w.macs > w.fused_macs:
            kc.fill = tile.mac_rows + tile.mac_cols  # one fill per kernel (a fused attention has its own)
            kc.cycles += kc.fill
        counts["vector_ops"] = w.lane_ops + w.fused_lane_ops
        counts["sfu_ops"] = w.special_ops + w.fused_special_ops  # on the tile's exp unit
    elif tile_kind == "sfu":
        units = w.macs + w.lane_ops + w.fused_lane_ops + w.special_ops + w.fused_special_ops
        kc.cycles = _cdiv(units, lanes)
        counts["sfu_ops"] = units
    elif tile_kind == "butterfly":
        units = _cdiv(w.macs, 4) + _cdiv(w.lane_ops + w.fused_lane_ops + w.special_ops + w.fused_special_ops, 2)
        kc.cycles = _cdiv(units, lanes)
        counts["butterfly_ops"] = units
    kc.macs = w.macs
    kc.lane_ops = w.lane_ops + w.fused_lane_ops + w.special_ops + w.fused_special_ops
    kc.sram_read_bytes = w.sram_read + sum(tensor_bytes(t) for t in out_types)
    kc.sram_write_bytes = w.sram_write + sum(tensor_bytes(t) for t in in_types)
    return kc, counts


def set_dma_traffic(kc: KernelCost, descriptors: list[tuple[str, int]], repeat: int, arch, spill: bool = False) -> None:
    """A DMA kernel's DRAM and SRAM bytes and its cycles at the whole DRAM bandwidth (latency not
    included), from its ``(direction, bytes)`` descriptors moved ``repeat`` times."""
    for direction, nbytes in descriptors:
        if direction == "load":
            kc.dram_read_bytes += repeat * nbytes
        else:  # a repeated spill writes its input once and reads it back per pass
            kc.dram_write_bytes += (1 if spill else repeat) * nbytes
    moved = kc.dram_read_bytes + kc.dram_write_bytes
    kc.sram_read_bytes = kc.sram_write_bytes = moved  # staged in the DMA tile's buffer
    kc.cycles = math.ceil(moved / arch.dram.bytes_per_cycle)

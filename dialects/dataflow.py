"""The `dataflow` dialect: kernels on tiles and the streams between them.

A ``dataflow.kernel`` is a tile-sized unit of work (a GEMM, a softmax row block
sweep, an elementwise op, a DMA transfer) whose body is ordinary ``sparse`` IR;
the SSA edges between kernels are the streams. A kernel records what the back
end needs to place, route and time it: the tile kind that can run it, its loop
schedule (loop names and trip counts, outermost first), its tile sizes, the
on-chip buffer bytes it needs (double-buffered), its estimated busy cycles and
MACs, and the number of tokens on each output stream. An optional ``phase``
(absent: 0) is its SRAM phase: 0 keeps its buffers for the whole run; a kernel
of phase p >= 1 holds them only while it runs, once its tile's kernels of phases
1..p-1 are done, so kernels of different nonzero phases on one tile reuse the
same SRAM addresses (docs/bitstream.md). An optional ``dram_offset`` on a
``dma_load`` of a graph input says the load reads only a contiguous region of it:
its body argument (the region's type, which may differ from the input's) starts
that many bytes into the input (a group of a fused attention loading just its
(batch, head) units of K); with ``dram_strides`` too, the region is read with those strides (in
elements) instead of densely (a range of keys of every unit of K). On a ``dma_store`` it says the store writes a
contiguous region of a graph output (its result, the region's value) that many
bytes into it: the output is then a ``sparse.concat`` of such stores' results,
each lying where its ``dram_offset`` says (a GEMM grid's output stored one grid
row per store, each as its row finishes; :func:`store_regions`).

    %s = dataflow.kernel "qk_h0"(%q, %k) attributes {kind = "gemm", tile_kind = "compute",
           loops = ["m", "n", "k"], trips = array<i64: 2, 2, 16>, tile = array<i64: 8, 8, 4>,
           buffer_bytes = 1536 : i64, cycles = 1040 : i64, macs = 65536 : i64,
           tokens = array<i64: 4>, group = "h0"} : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x16xf32> {
    ^bb0(%a: tensor<16x64xf32>, %b: tensor<16x64xf32>):
      ...
      dataflow.yield %r : tensor<16x16xf32>
    }
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    DenseArrayBase,
    IntegerAttr,
    StringAttr,
    TensorType,
    i64,
)
from attnc.arch.datatypes import element_bytes
from xdsl.ir import Attribute, Block, Dialect, Operation, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    opt_attr_def,
    region_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import IsTerminator
from xdsl.utils.exceptions import VerifyException

# Markers the back-end passes put on sparse ops for lower-to-dataflow, which turns them into kernels.
#: the kernel an op belongs to (ops with one tag become one kernel)
TAG = "dataflow.tag"
GROUP = "dataflow.group"
SPILL = "dataflow.spill"
REPEAT = "dataflow.repeat"
#: a copy of K or V held in a memory tile and streamed out once per pass (the value: passes)
STAGE = "dataflow.stage"
#: the SRAM a kernel claims (its tile's budget), so that the placer gives each such kernel its own tile
RESERVE = "dataflow.reserve"
#: on a butterfly stage op: the row blocks (tokens) its kernel streams, and the tile kind it runs on
ROWS = "dataflow.rows"
TILE_KIND = "dataflow.tile_kind"
#: on a stage op and on its chain's weight constant: the passes that stream the weights from DRAM, one
#: per row block, when they do not stay on chip (absent: loaded once and kept)
WEIGHT_PASSES = "dataflow.weight_passes"

TILE_KINDS = ("compute", "sfu", "butterfly", "memory", "dma")
#: kernels that move data between DRAM and the array (they run on DMA tiles)
DMA_KERNEL_KINDS = ("dma_load", "dma_store", "dma_spill")
KERNEL_KINDS = ("gemm", "softmax", "elementwise", "reduce", "layer_norm", "attention", "data", *DMA_KERNEL_KINDS)


def i64_array(values: Sequence[int]) -> DenseArrayBase:
    """An ``array<i64: ...>`` attribute (the form of every list of integers on dataflow and array ops)."""
    return DenseArrayBase.from_list(i64, [int(v) for v in values])


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends a kernel body; its operands are the kernel's output streams.

    dataflow.yield %r : tensor<16x16xf32>
    """

    name = "dataflow.yield"
    values = var_operand_def()
    traits = traits_def(IsTerminator())
    assembly_format = "attr-dict ($values^ `:` type($values))?"

    def __init__(self, values: Sequence[SSAValue]):
        super().__init__(operands=[list(values)])


@irdl_op_definition
class KernelOp(IRDLOperation):
    """A kernel: one unit of work placed on one tile (see the module docstring for the form)."""

    name = "dataflow.kernel"
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    sym_name = attr_def(StringAttr)
    kind = attr_def(StringAttr)
    tile_kind = attr_def(StringAttr)
    loops = attr_def(ArrayAttr[StringAttr])
    trips = attr_def(DenseArrayBase)
    tile = attr_def(DenseArrayBase)
    buffer_bytes = attr_def(IntegerAttr[I64])
    cycles = attr_def(IntegerAttr[I64])
    macs = attr_def(IntegerAttr[I64])
    tokens = attr_def(DenseArrayBase)
    group = opt_attr_def(StringAttr)
    #: the SRAM phase (absent: 0, resident); read it as ``phase``
    phase_attr = opt_attr_def(IntegerAttr[I64], attr_name="phase")
    #: on a ``dma_load``: the byte offset into its input of the contiguous region its body argument reads; on a
    #: ``dma_store``: the byte offset into the graph output of the region it writes (its result)
    dram_offset = opt_attr_def(IntegerAttr[I64])
    #: on a ``dma_load`` with ``dram_offset``: the strides (in elements, of the input's dense layout) its region
    #: is read with, when it is not contiguous (a range of keys of every (batch, head) unit of K); absent: dense
    dram_strides = opt_attr_def(DenseArrayBase)
    body = region_def("single_block")
    assembly_format = "$sym_name `(` $inputs `)` attr-dict-with-keyword `:` functional-type($inputs, $outputs) $body"

    def __init__(
        self,
        name: str,
        inputs: Sequence[SSAValue],
        result_types: Sequence[Attribute],
        body: Block,
        *,
        kind: str,
        tile_kind: str,
        loops: Sequence[tuple[str, int]] = (),
        tile: Sequence[int] = (),
        buffer_bytes: int = 0,
        cycles: int = 0,
        macs: int = 0,
        tokens: Sequence[int] | None = None,
        group: str | None = None,
        phase: int = 0,
    ):
        attrs: dict[str, Attribute] = {
            "sym_name": StringAttr(name),
            "kind": StringAttr(kind),
            "tile_kind": StringAttr(tile_kind),
            "loops": ArrayAttr([StringAttr(n) for n, _ in loops]),
            "trips": i64_array([t for _, t in loops]),
            "tile": i64_array(tile),
            "buffer_bytes": IntegerAttr(buffer_bytes, 64),
            "cycles": IntegerAttr(cycles, 64),
            "macs": IntegerAttr(macs, 64),
            "tokens": i64_array(tokens if tokens is not None else [1] * len(result_types)),
        }
        if group:
            attrs["group"] = StringAttr(group)
        if phase:  # absent means 0: IR without phases prints as before
            attrs["phase"] = IntegerAttr(phase, 64)
        super().__init__(operands=[list(inputs)], result_types=[list(result_types)], attributes=attrs, regions=[Region(body)])

    @property
    def kernel_name(self) -> str:
        return self.sym_name.data

    @property
    def phase(self) -> int:
        """The kernel's SRAM phase: 0 (resident, the default) or p >= 1."""
        return 0 if self.phase_attr is None else self.phase_attr.value.data

    def loop_schedule(self) -> list[tuple[str, int]]:
        return [(n.data, int(t)) for n, t in zip(self.loops.data, self.trips.get_values())]

    def verify_(self) -> None:
        where = f"dataflow.kernel '{self.sym_name.data}'"
        if self.kind.data not in KERNEL_KINDS:
            raise VerifyException(f"{where}: kind must be one of {KERNEL_KINDS}, got {self.kind.data!r}")
        if self.tile_kind.data not in TILE_KINDS:
            raise VerifyException(f"{where}: tile_kind must be one of {TILE_KINDS}, got {self.tile_kind.data!r}")
        trips = self.trips.get_values()
        if len(trips) != len(self.loops.data) or any(t < 1 for t in trips):
            raise VerifyException(f"{where}: needs one trip count >= 1 per loop")
        if len(self.tokens.get_values()) != len(self.outputs) or any(t < 1 for t in self.tokens.get_values()):
            raise VerifyException(f"{where}: needs one token count >= 1 per output stream")
        for name in ("buffer_bytes", "cycles", "macs"):
            if getattr(self, name).value.data < 0:
                raise VerifyException(f"{where}: {name} must be >= 0")
        if self.phase < 0:
            raise VerifyException(f"{where}: phase must be >= 0, got {self.phase}")
        block = self.body.block
        if self.dram_offset is not None and self.kind.data == "dma_store":
            self._verify_store_region(where)
        if self.dram_offset is not None and self.kind.data != "dma_store":
            self._verify_region(where)
        elif [a.type for a in block.args] != [v.type for v in self.inputs]:
            raise VerifyException(f"{where}: body arguments do not match the input streams")
        last = block.last_op
        if not isinstance(last, YieldOp):
            raise VerifyException(f"{where}: body must end with dataflow.yield")
        if [v.type for v in last.values] != [r.type for r in self.outputs]:
            raise VerifyException(f"{where}: dataflow.yield types do not match the output streams")
        for op in block.ops:
            if op is not last and not op.name.startswith("sparse."):
                raise VerifyException(f"{where}: a kernel body holds sparse ops only, found {op.name}")

    def _verify_region(self, where: str) -> None:
        """A load of a region: one input, and its body argument a tensor of the input's element type lying
        within it from ``dram_offset``."""
        args = self.body.block.args
        if self.kind.data != "dma_load" or len(self.inputs) != 1 or len(args) != 1:
            raise VerifyException(f"{where}: only a dma_load of one input reads a region (dram_offset; a "
                                  "dma_store writes one)")
        whole, part = self.inputs[0].type, args[0].type
        assert isinstance(whole, TensorType) and isinstance(part, TensorType)
        if whole.element_type != part.element_type:
            raise VerifyException(f"{where}: the region's element type differs from the input's")
        item = element_bytes(str(whole.element_type))
        offset = self.dram_offset.value.data
        # the last element it reads, past its first (a dense region: its size less one)
        span = _elems(part) - 1
        if self.dram_strides is not None:
            strides = [int(v) for v in self.dram_strides.get_values()]
            if len(strides) != len(part.get_shape()) or any(v <= 0 for v in strides):
                raise VerifyException(f"{where}: dram_strides must be one positive stride per dimension of the "
                                      f"region {list(part.get_shape())}, got {strides}")
            span = sum((n - 1) * v for n, v in zip(part.get_shape(), strides)) if _elems(part) else -1
        if offset < 0 or offset % item or offset + (span + 1) * item > _elems(whole) * item:
            raise VerifyException(f"{where}: the region at byte {offset} ({_elems(part) * item} bytes) is not "
                                  f"within the input ({_elems(whole) * item} bytes)")


    def _verify_store_region(self, where: str) -> None:
        """A store of a region: one output, used by nothing but a ``sparse.concat`` that forms a graph output
        (used by the ``func.return`` alone) out of region stores only, each at the byte offset where its operand
        lies in the concatenation, which is contiguous there (the product of the dims before the axis is 1).
        So the stores of one output write it exactly once, each within it."""
        if len(self.outputs) != 1:
            raise VerifyException(f"{where}: a dma_store of a region (dram_offset) has one output")
        regions = store_regions(self.outputs[0], where)
        if regions is None:
            raise VerifyException(f"{where}: a dma_store of a region (dram_offset) must be an operand of a "
                                  "sparse.concat that the function returns")


def store_regions(v: SSAValue, where: str = "") -> list[tuple[KernelOp, int]] | None:
    """The region stores that make the graph output ``v`` belongs to, with each one's byte offset into it, when
    ``v`` is one of them or the ``sparse.concat`` of them that ``func.return`` returns; None when it is neither
    (a whole store's result, or any other value). Raises VerifyException where the regions do not tile the output
    exactly: an operand of the concat that is no region store, an offset other than where the operand lies, an
    operand not contiguous in the output, or a concat used by anything but the return. ``where`` prefixes the
    messages."""
    owner = v.owner
    if isinstance(owner, KernelOp):
        uses = list(v.uses)
        if owner.kind.data != "dma_store" or owner.dram_offset is None:
            return None
        if len(uses) != 1 or uses[0].operation.name != "sparse.concat":
            return None
        owner = uses[0].operation
    if not isinstance(owner, Operation) or owner.name != "sparse.concat":
        return None
    concat = owner
    whole = concat.results[0].type
    assert isinstance(whole, TensorType)
    shape = whole.get_shape()
    axis = concat.attributes["axis"].value.data % max(len(shape), 1)  # pyright: ignore[reportAttributeAccessIssue]
    if any(u.operation.name != "func.return" for u in concat.results[0].uses) or not concat.results[0].uses:
        raise VerifyException(f"{where}: the concatenation of region stores is used by other than the return")
    lead = 1
    for d in shape[:axis]:
        lead *= d
    if lead != 1:
        raise VerifyException(f"{where}: the regions of a concatenation along axis {axis} of {list(shape)} are not "
                              "contiguous in it")
    item = element_bytes(str(whole.element_type))
    out: list[tuple[KernelOp, int]] = []
    at = 0
    for o in concat.operands:
        k = o.owner
        if not isinstance(k, KernelOp) or k.kind.data != "dma_store" or k.dram_offset is None:
            raise VerifyException(f"{where}: an operand of the concatenation of region stores is not a region store")
        offset = k.dram_offset.value.data
        if offset != at:
            raise VerifyException(f"{where}: store '{k.kernel_name}' writes at byte {offset}; its region lies at "
                                  f"byte {at} of the output ({_elems(whole) * item} bytes)")
        out.append((k, offset))
        assert isinstance(o.type, TensorType)
        at += _elems(o.type) * item
    return out


def _elems(t: TensorType) -> int:
    n = 1
    for d in t.get_shape():
        n *= d
    return n


Dataflow = Dialect("dataflow", [KernelOp, YieldOp], [])

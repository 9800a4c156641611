"""The `array` dialect: a placed and routed configuration of the array.

One ``array.config`` replaces ``@main``. It holds the I/O table (``array.io``), the
tiles with the kernel contexts they run (``array.tile`` / ``array.context``, each
context keeping its kernel body of sparse ops), the router settings of every
stream (``array.route``) and the DMA descriptors (``array.dma``). Values move
between contexts through numbered streams, not SSA edges: this is the level the
bitstream encodes one to one.

    array.config "main" attributes {arch = "tiny", fingerprint = "5a0c..."} {
      array.io "x" attributes {direction = "input", type = tensor<1x16x64xf32>, address = 0 : i64}
      array.tile "t1_1" attributes {x = 1 : i64, y = 1 : i64, kind = "compute"} {
        array.context "matmul" attributes {kernel = 3 : i64, kind = "gemm", inputs = array<i64: 0, 1>,
            outputs = array<i64: 2>, ...} {
        ^bb0(%a: tensor<16x64xf32>, %b: tensor<64x64xf32>):
          ...
          dataflow.yield %r : tensor<16x64xf32>
        }
      }
      array.route "s2" attributes {stream = 2 : i64, src = 3 : i64, dst = 4 : i64, hops = array<i64: 1, 1, 2, 1>, ...}
      array.dma "d0" attributes {channel = array<i64: 0, 1>, direction = "load", stream = 0 : i64, ...}
    }
"""

from __future__ import annotations

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    TypeAttribute,
)
from xdsl.ir import Dialect
from xdsl.irdl import IRDLOperation, attr_def, irdl_op_definition, opt_attr_def, region_def, traits_def
from xdsl.traits import NoTerminator
from xdsl.utils.exceptions import VerifyException

from attnc.dialects.dataflow import KERNEL_KINDS, TILE_KINDS, YieldOp


def _ints(a: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(x) for x in a.get_values())


@irdl_op_definition
class ConfigOp(IRDLOperation):
    """The whole configuration for one architecture (see the module docstring)."""

    name = "array.config"
    sym_name = attr_def(StringAttr)
    arch = attr_def(StringAttr)
    fingerprint = attr_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(NoTerminator())
    assembly_format = "$sym_name attr-dict-with-keyword $body"

    def verify_(self) -> None:
        for op in self.body.block.ops:
            if not isinstance(op, (IOOp, TileOp, RouteOp, DmaOp)):
                raise VerifyException(f"array.config holds io, tile, route and dma ops only, found {op.name}")
        seen = set()
        for t in self.body.block.ops:
            if isinstance(t, TileOp):
                pos = (t.x.value.data, t.y.value.data)
                if pos in seen:
                    raise VerifyException(f"array.config: two array.tile ops at {pos}")
                seen.add(pos)


@irdl_op_definition
class IOOp(IRDLOperation):
    """A graph input or output and where it lives in DRAM.

    array.io "x" attributes {direction = "input", type = tensor<1x16xf32>, address = 0 : i64}
    """

    name = "array.io"
    sym_name = attr_def(StringAttr)
    direction = attr_def(StringAttr)
    type = attr_def(TypeAttribute)
    address = attr_def(IntegerAttr[I64])
    assembly_format = "$sym_name attr-dict-with-keyword"

    def verify_(self) -> None:
        if self.direction.data not in ("input", "output"):
            raise VerifyException(f"array.io '{self.sym_name.data}': direction must be input or output")
        if not isinstance(self.type, TensorType):
            raise VerifyException(f"array.io '{self.sym_name.data}': type must be a tensor type")
        if self.address.value.data < 0:
            raise VerifyException(f"array.io '{self.sym_name.data}': negative address")


@irdl_op_definition
class TileOp(IRDLOperation):
    """One tile of the array and the contexts (kernels) it time-multiplexes."""

    name = "array.tile"
    sym_name = attr_def(StringAttr)
    x = attr_def(IntegerAttr[I64])
    y = attr_def(IntegerAttr[I64])
    kind = attr_def(StringAttr)
    body = region_def("single_block")
    traits = traits_def(NoTerminator())
    assembly_format = "$sym_name attr-dict-with-keyword $body"

    def verify_(self) -> None:
        if self.kind.data not in TILE_KINDS:
            raise VerifyException(f"array.tile '{self.sym_name.data}': kind must be one of {TILE_KINDS}")
        for op in self.body.block.ops:
            if not isinstance(op, ContextOp):
                raise VerifyException(f"array.tile '{self.sym_name.data}' holds array.context ops only")


@irdl_op_definition
class ContextOp(IRDLOperation):
    """A placed kernel: its body, the streams it reads and writes (by id, one per body
    argument and per yielded value), its loop schedule and its buffers (name,
    address, size in bytes, in the tile's SRAM). ``phase`` (absent: 0) is its
    kernel's SRAM phase: buffers of contexts with different nonzero phases on one
    tile may share addresses."""

    name = "array.context"
    sym_name = attr_def(StringAttr)
    kernel = attr_def(IntegerAttr[I64])
    kind = attr_def(StringAttr)
    inputs = attr_def(DenseArrayBase)
    outputs = attr_def(DenseArrayBase)
    loops = attr_def(ArrayAttr[StringAttr])
    trips = attr_def(DenseArrayBase)
    tile = attr_def(DenseArrayBase)
    buffers = attr_def(ArrayAttr[StringAttr])
    buffer_addresses = attr_def(DenseArrayBase)
    buffer_sizes = attr_def(DenseArrayBase)
    cycles = attr_def(IntegerAttr[I64])
    macs = attr_def(IntegerAttr[I64])
    tokens = opt_attr_def(DenseArrayBase)  # per output; absent: one token each
    #: the SRAM phase (absent: 0, resident); read it as ``phase``
    phase_attr = opt_attr_def(IntegerAttr[I64], attr_name="phase")
    body = region_def("single_block")
    assembly_format = "$sym_name attr-dict-with-keyword $body"

    @property
    def phase(self) -> int:
        """The context's SRAM phase: 0 (resident, the default) or p >= 1."""
        return 0 if self.phase_attr is None else self.phase_attr.value.data

    def verify_(self) -> None:
        where = f"array.context '{self.sym_name.data}'"
        if self.kind.data not in KERNEL_KINDS:
            raise VerifyException(f"{where}: kind must be one of {KERNEL_KINDS}")
        if self.phase < 0:
            raise VerifyException(f"{where}: phase must be >= 0, got {self.phase}")
        block = self.body.block
        if len(block.args) != len(_ints(self.inputs)):
            raise VerifyException(f"{where}: one input stream per body argument")
        last = block.last_op
        if not isinstance(last, YieldOp) or len(last.values) != len(_ints(self.outputs)):
            raise VerifyException(f"{where}: the body must yield one value per output stream")
        n = len(self.buffers.data)
        if len(_ints(self.buffer_addresses)) != n or len(_ints(self.buffer_sizes)) != n:
            raise VerifyException(f"{where}: one address and size per buffer")
        if len(_ints(self.trips)) != len(self.loops.data):
            raise VerifyException(f"{where}: one trip count per loop")


@irdl_op_definition
class RouteOp(IRDLOperation):
    """Router settings of one stream: the tile path (x, y pairs, ends included) its
    tokens take from the producing context's tile to the consuming one's.

    array.route "s0" attributes {stream = 0 : i64, src = 0 : i64, dst = 3 : i64, hops = array<i64: 0, 1, 1, 1>, vc = 0 : i64, bytes = 4096 : i64, rate = 4.0 : f64}
    """

    name = "array.route"
    sym_name = attr_def(StringAttr)
    stream = attr_def(IntegerAttr[I64])
    src = attr_def(IntegerAttr[I64])
    dst = attr_def(IntegerAttr[I64])
    hops = attr_def(DenseArrayBase)
    vc = attr_def(IntegerAttr[I64])
    bytes = attr_def(IntegerAttr[I64])
    rate = attr_def(FloatAttr)
    assembly_format = "$sym_name attr-dict-with-keyword"

    def path(self) -> list[tuple[int, int]]:
        h = _ints(self.hops)
        return list(zip(h[0::2], h[1::2]))

    def verify_(self) -> None:
        h = _ints(self.hops)
        if not h or len(h) % 2:
            raise VerifyException(f"array.route '{self.sym_name.data}': hops must be a non-empty list of x, y pairs")
        for (x0, y0), (x1, y1) in zip(self.path(), self.path()[1:]):
            if abs(x0 - x1) + abs(y0 - y1) != 1:
                raise VerifyException(f"array.route '{self.sym_name.data}': ({x0}, {y0}) -> ({x1}, {y1}) is not a mesh link")


@irdl_op_definition
class DmaOp(IRDLOperation):
    """A DMA descriptor: a channel of a DMA tile moves ``bytes`` between DRAM at
    ``address`` and a stream.

    array.dma "d0" attributes {channel = array<i64: 0, 1>, direction = "load", stream = 0 : i64, address = 0 : i64, bytes = 4096 : i64, kernel = 0 : i64}
    """

    name = "array.dma"
    sym_name = attr_def(StringAttr)
    channel = attr_def(DenseArrayBase)
    direction = attr_def(StringAttr)
    stream = attr_def(IntegerAttr[I64])
    address = attr_def(IntegerAttr[I64])
    bytes = attr_def(IntegerAttr[I64])
    kernel = attr_def(IntegerAttr[I64])
    #: a load of a strided region (the load kernel's ``dram_strides``), in elements; absent: dense
    strides = opt_attr_def(DenseArrayBase)
    assembly_format = "$sym_name attr-dict-with-keyword"

    def verify_(self) -> None:
        if self.direction.data not in ("load", "store"):
            raise VerifyException(f"array.dma '{self.sym_name.data}': direction must be load or store")
        if len(_ints(self.channel)) != 2:
            raise VerifyException(f"array.dma '{self.sym_name.data}': channel must be an x, y pair")


Array = Dialect("array", [ConfigOp, IOOp, TileOp, ContextOp, RouteOp, DmaOp], [])

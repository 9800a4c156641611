"""Array IR -> bitstream records (``attnc.backend.bitstream``).

Each ``array.context`` becomes a ``KernelConfig`` whose body is the context's
sparse ops as micro-ops over kernel-local registers (inputs first, then one
register per op result): the opcode is the op name without ``sparse.``, the
params are the op's attributes plus the result's ``dtype`` and ``shape``.
Constants in a body go to the CONSTANTS section and are referenced by id; the
weights a DMA kernel loads are laid out in DRAM after the I/O buffers, in
constant order, so a loader can copy the section into DRAM as it is.
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import (
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Attribute, SSAValue

from attnc import __version__
from attnc.backend import bitstream as bs
from attnc.dialects import array as ar
from attnc.dialects import sparse as sp
from attnc.dialects.values import np_dtype
from attnc.errors import AttncError
from attnc.cost.work import nbytes

DRAM_ALIGN = 64


def dtype_name(t: TensorType) -> str:
    return str(t.element_type)


def _strides(shape: list[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


def _param(attr: Attribute) -> bs.ParamValue | None:
    if isinstance(attr, IntegerAttr):
        return int(attr.value.data)
    if isinstance(attr, FloatAttr):
        return float(attr.value.data)
    if isinstance(attr, StringAttr):
        return attr.data
    if isinstance(attr, UnitAttr):
        return 1
    if isinstance(attr, DenseArrayBase):
        return [int(v) for v in attr.get_values()]
    return None


def _constant_bytes(value: DenseIntOrFPElementsAttr) -> bytes:
    ty = value.get_type()
    assert isinstance(ty, TensorType)
    n = int(np.prod(ty.get_shape(), dtype=np.int64))
    raw = value.data.data
    size = 1 if str(ty.element_type) == "i1" else np_dtype(ty.element_type).itemsize
    if str(ty.element_type) == "bf16":
        size = 2
    return raw * n if len(raw) == size and n != 1 else raw  # splats are stored whole


def _align(n: int) -> int:
    return -(-n // DRAM_ALIGN) * DRAM_ALIGN


def emit_bitstream(module: ModuleOp, arch, meta: dict[str, str] | None = None) -> bs.Bitstream:
    """The bitstream records of a module holding one ``array.config``."""
    configs = [op for op in module.ops if isinstance(op, ar.ConfigOp)]
    if len(configs) != 1:
        raise AttncError("emitting a bitstream needs array IR: run place-route first")
    config = configs[0]
    if config.fingerprint.data != arch.fingerprint().hex():
        raise AttncError(f"the array IR was placed for arch '{config.arch.data}', not '{arch.name}'")
    return _Emitter(config, arch).run(meta or {})


class _Emitter:
    """One pass over a placed configuration, section by section. Weights get DRAM addresses above the
    I/O in the order their load kernels appear (tiles, then contexts), so the order of the steps matters."""

    def __init__(self, config: ar.ConfigOp, arch) -> None:
        self.config = config
        self.arch = arch
        self.ops = list(config.body.block.ops)
        self.out = bs.Bitstream(arch_source=arch.source, arch_fingerprint=arch.fingerprint())
        self.weight_address: dict[int, int] = {}  # kernel id -> DRAM address of the weight it loads
        self.dram_top = 0
        self.stream_tokens: dict[int, int] = {}

    def run(self, meta: dict[str, str]) -> bs.Bitstream:
        self.io()
        self.count_tokens()
        for tile in (o for o in self.ops if isinstance(o, ar.TileOp)):
            self.tile(tile)
        self.routes()
        self.dma()
        self.meta(meta)
        return self.out

    def io(self) -> None:
        for io in (o for o in self.ops if isinstance(o, ar.IOOp)):
            t = io.type
            assert isinstance(t, TensorType)
            self.out.io.append(bs.IOEntry(io.sym_name.data, io.direction.data, dtype_name(t), list(t.get_shape()),
                                          io.address.value.data, nbytes(t)))  # fmt: skip
        # weights go above everything place-route put in DRAM: the I/O table and the spills' regions
        ends = [e.dram_address + e.bytes for e in self.out.io]
        ends += [d.address.value.data + d.bytes.value.data for d in self.ops
                 if isinstance(d, ar.DmaOp) and d.address.value.data >= 0]  # fmt: skip
        self.dram_top = _align(max(ends, default=0))

    def count_tokens(self) -> None:
        # a stream has the token count its producer gives it, at both ends
        for tile in (o for o in self.ops if isinstance(o, ar.TileOp)):
            for ctx in tile.body.block.ops:
                assert isinstance(ctx, ar.ContextOp)
                counts = ctx.tokens.get_values() if ctx.tokens is not None else ()
                for i, sid in enumerate(ctx.outputs.get_values()):
                    self.stream_tokens[int(sid)] = int(counts[i]) if i < len(counts) else 1

    def tile(self, tile: ar.TileOp) -> None:
        tcfg = bs.TileConfig(tile.x.value.data, tile.y.value.data, tile.kind.data, [])
        banks = self.arch.tile(tcfg.x, tcfg.y).sram_banks
        for ctx in tile.body.block.ops:
            assert isinstance(ctx, ar.ContextOp)
            tcfg.contexts.append(self.context(ctx, banks))
        self.out.tiles.append(tcfg)

    def context(self, ctx: ar.ContextOp, banks: int) -> bs.KernelConfig:
        block = ctx.body.block
        reg: dict[SSAValue, int] = {}
        inputs = []
        for i, (arg, sid) in enumerate(zip(block.args, ctx.inputs.get_values())):
            reg[arg] = i
            t = arg.type
            inputs.append(bs.Port(i, int(sid), dtype_name(t), list(t.get_shape()), self.stream_tokens.get(int(sid), 1)))
        body: list[bs.Instr] = []
        constants: list[tuple[int, int]] = []
        for op in block.ops:
            if op is block.last_op:
                break
            body.append(self.instr(op, ctx, reg, constants))
        outputs = []
        for v, sid in zip(block.last_op.operands, ctx.outputs.get_values()):
            t = v.type
            outputs.append(bs.Port(reg[v], int(sid), dtype_name(t), list(t.get_shape()), self.stream_tokens[int(sid)]))
        buffers = [
            bs.Buffer(n.data, int(a), int(s), banks, True)
            for n, a, s in zip(ctx.buffers.data, ctx.buffer_addresses.get_values(), ctx.buffer_sizes.get_values())
        ]
        return bs.KernelConfig(ctx.kernel.value.data, ctx.sym_name.data, ctx.kind.data, inputs, outputs, constants,
                               buffers, [(n.data, int(t)) for n, t in zip(ctx.loops.data, ctx.trips.get_values())],
                               body, ctx.cycles.value.data, phase=ctx.phase)  # fmt: skip

    def instr(self, op, ctx: ar.ContextOp, reg: dict[SSAValue, int], constants: list[tuple[int, int]]) -> bs.Instr:
        """One body op as an instruction; a constant's data goes to the CONSTANTS section (and, loaded by
        a DMA kernel, gets a DRAM address)."""
        results = []
        for r in op.results:
            reg[r] = len(reg)
            results.append(reg[r])
        t = op.results[0].type
        params: dict[str, bs.ParamValue] = {"dtype": dtype_name(t), "shape": list(t.get_shape())}
        if isinstance(op, sp.ConstantOp):
            cid = len(self.out.constants)
            self.out.constants.append(bs.ConstantEntry(cid, f"{ctx.sym_name.data}.c{len(constants)}",
                                                       dtype_name(t), list(t.get_shape()), "dense",
                                                       _constant_bytes(op.value)))  # fmt: skip
            constants.append((results[0], cid))
            params["constant"] = cid
            if ctx.kind.data == "dma_load":
                self.weight_address[ctx.kernel.value.data] = self.dram_top
                self.dram_top = _align(self.dram_top + nbytes(t))
        for name, attr in op.attributes.items():
            if isinstance(op, sp.ConstantOp) and name == "value":
                continue  # the data went to the CONSTANTS section
            if (v := _param(attr)) is not None:
                params[name] = v
        return bs.Instr(op.name.removeprefix("sparse."), [reg[v] for v in op.operands], results, params)

    def routes(self) -> None:
        for r in (o for o in self.ops if isinstance(o, ar.RouteOp)):
            self.out.routes.append(bs.RouteConfig(r.stream.value.data, r.sym_name.data, r.src.value.data,
                                                  r.dst.value.data, r.path(), r.vc.value.data, r.bytes.value.data,
                                                  r.rate.value.data))  # fmt: skip

    def dma(self) -> None:
        out = self.out
        shapes = {p.stream: (p.dtype, p.shape) for t in out.tiles for c in t.contexts for p in c.outputs + c.inputs}
        kernels = {c.kernel: c for t in out.tiles for c in t.contexts}
        # in kernel order: contexts on one DMA tile that store the same stream claim its store descriptors in
        # that order (docs/bitstream.md, DMA)
        for d in sorted((o for o in self.ops if isinstance(o, ar.DmaOp)), key=lambda o: o.kernel.value.data):
            address = d.address.value.data
            if address < 0:
                address = self.weight_address[d.kernel.value.data]
            if d.direction.data == "store":  # what the store kernel writes, not what its input stream carries
                port = kernels[d.kernel.value.data].outputs[0]
                dtype, shape = port.dtype, port.shape
            else:
                dtype, shape = shapes[d.stream.value.data]
            # a load of a strided region (keys of every unit) reads with the input's strides, else densely
            strides = [int(v) for v in d.strides.get_values()] if d.strides is not None else _strides(shape)
            out.dma.append(bs.DmaDescriptor(tuple(int(v) for v in d.channel.get_values()), d.direction.data,
                                            d.stream.value.data, address, d.bytes.value.data, shape, strides,
                                            dtype))  # fmt: skip

    def meta(self, meta: dict[str, str]) -> None:
        self.out.meta = {"compiler": f"attnc {__version__}", "arch": self.arch.name, **meta}
        # wall-clock figures (mapping.seconds, mapping.heuristic_seconds) stay on the IR for --report: the
        # bitstream holds only what the inputs determine, so the same compile gives the same bytes
        for key, attr in self.config.attributes.items():
            if key.startswith("mapping.") and not key.endswith("seconds") and (v := _param(attr)) is not None:
                self.out.meta[key] = str(v)

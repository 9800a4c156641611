"""The functional simulator: executes a bitstream's contexts on numpy and returns the outputs.

It reads the bitstream alone (no compiler module): inputs are written to a DRAM image at the
addresses of the IO table; DMA load contexts read them back through their descriptors (address,
shape, strides, dtype); every context runs once its input streams have values (Kahn's order over
stream ids); DMA store contexts write their values to DRAM through their descriptors; the outputs
are read from DRAM at the IO table's addresses. Weight loads execute their ``constant`` instruction,
which reads the CONSTANTS section. A load with a ``("repeat", P)`` loop reads the same region P times
on the array; its value is the same each time, so it is loaded once here. A ``dma_spill`` context writes
its value to DRAM through its store descriptor and reads it back through its load descriptor.

    outputs = run(bitstream.read("out.bit"), {"x": x})
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attnc import limits
from attnc.backend.bitstream import Bitstream, DmaDescriptor, KernelConfig, bounded_prod, shape_text
from attnc.simulator.io import MAX_RANK, check_inputs, check_io, check_shape, entries, store_descriptors
from attnc.simulator.ops import (SimulationError, execute, finish, from_bytes, np_dtype, storage_bytes, stored,
                                 to_bytes, wide)

# What a (possibly hostile) bitstream may ask for is checked before anything is allocated: every value,
# the DRAM image and the index arrays of a strided access against the TENSOR_BYTES limit (attnc.limits).


@dataclass
class Context:
    tile: tuple[int, int]
    config: KernelConfig

    @property
    def label(self) -> str:
        return f"kernel {self.config.kernel} {limits.shown(self.config.name)} on tile {self.tile}"


def contexts(bs: Bitstream) -> list[Context]:
    return [Context((t.x, t.y), c) for t in bs.tiles for c in t.contexts]


class Dram:
    """A flat byte image of DRAM, addressed as the IO table and DMA descriptors say."""

    def __init__(self, size: int) -> None:
        limits.check(size, "the simulated DRAM image (the highest address the bitstream uses)", limits.TENSOR_BYTES)
        self.mem = bytearray(size)

    def _offsets(self, address: int, dtype: str, shape: list[int], strides: list[int], where: str) -> np.ndarray | None:
        """Element byte offsets for a strided access, or None when it is dense and contiguous."""
        if len(strides) != len(shape):
            raise SimulationError(f"{where}: {len(strides)} strides for a rank-{len(shape)} shape")
        check_shape(shape, dtype, where)
        size = storage_bytes(dtype)
        n = bounded_prod(shape)
        dense = dense_strides(shape)
        if all(s == d or n_ == 1 for s, d, n_ in zip(strides, dense, shape)):
            lo, hi = address, address + n * size
            offsets = None
        else:
            lo = address + size * sum(s * (d - 1) for s, d in zip(strides, shape) if s < 0 and d > 0)
            hi = address + size * (1 + sum(s * (d - 1) for s, d in zip(strides, shape) if s > 0 and d > 0))
            offsets = np.zeros(0, np.int64)
        if n and (lo < 0 or hi > len(self.mem)):
            raise SimulationError(f"{where}: bytes {lo}..{hi} lie outside DRAM (0..{len(self.mem)})")
        if offsets is not None and n:  # within DRAM (checked above), so every offset fits an int64
            limits.check(n * 8, f"{where}: the strided access's offsets", limits.TENSOR_BYTES)
            grids = np.ix_(*[np.arange(d, dtype=np.int64) * s for d, s in zip(shape, strides)]) if shape else []
            offsets = (sum(grids, np.zeros((), np.int64)) * size + address).reshape(-1)
        return offsets

    def read(self, address: int, dtype: str, shape: list[int], strides: list[int], where: str) -> np.ndarray:
        offsets = self._offsets(address, dtype, shape, strides, where)
        size = storage_bytes(dtype)
        if offsets is None:
            return from_bytes(bytes(self.mem[address : address + math.prod(shape) * size]), dtype, shape)
        view = np.frombuffer(self.mem, dtype=np.uint8)
        raw = np.empty((len(offsets), size), np.uint8)
        for k in range(size):  # byte by byte: an (n, size) index array would be 8 times the value
            raw[:, k] = view[offsets + k]
        return from_bytes(raw.tobytes(), dtype, shape)

    def write(self, address: int, x: np.ndarray, dtype: str, shape: list[int], strides: list[int], where: str) -> None:
        offsets = self._offsets(address, dtype, shape, strides, where)
        raw = to_bytes(np.broadcast_to(x, shape) if list(x.shape) != list(shape) else x, dtype)
        if offsets is None:
            self.mem[address : address + len(raw)] = raw
            return
        view = np.frombuffer(self.mem, dtype=np.uint8)
        size = storage_bytes(dtype)
        data = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
        for k in range(size):
            view[offsets + k] = data[:, k]


def dram_size(bs: Bitstream) -> int:
    ends = [e.dram_address + e.bytes for e in bs.io] + [d.dram_address + max(d.bytes, 0) for d in bs.dma]
    return max(ends, default=0)


def dense_strides(shape: list[int]) -> list[int]:
    out, n = [], 1
    for d in reversed(shape):  # linear in the rank
        out.append(n)
        n *= d
    return out[::-1]


def schedule(ctxs: list[Context], dma_inputs: set[int]) -> list[int]:
    """An order in which every context runs after the producers of its input streams (Kahn's algorithm,
    lowest index first, so the order is deterministic). ``dma_inputs`` are the DRAM-side streams that
    DMA loads read; any other stream must have exactly one producer."""
    producer: dict[int, int] = {}
    for i, c in enumerate(ctxs):
        for p in c.config.outputs:
            if p.stream in producer and producer[p.stream] != i:
                other = ctxs[producer[p.stream]]
                raise SimulationError(f"stream {p.stream} is produced by both {other.label} and {c.label}")
            producer[p.stream] = i
    waiting: list[int] = []
    consumers: dict[int, list[int]] = {}
    for i, c in enumerate(ctxs):
        deps = set()
        for p in c.config.inputs:
            if p.stream in producer:
                deps.add(producer[p.stream])
            elif not (c.config.kind == "dma_load" and p.stream in dma_inputs):
                raise SimulationError(f"{c.label} reads stream {p.stream}, which no context produces and no DMA loads")
        waiting.append(len(deps))
        for d in deps:
            consumers.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(ctxs):
        stuck = [ctxs[i].label for i in range(len(ctxs)) if waiting[i] > 0]
        raise SimulationError(f"the streams form a cycle; these contexts can never start: {', '.join(stuck[:5])}")
    return order


class Functional:
    """One functional run over a decoded bitstream."""

    def __init__(self, bs: Bitstream) -> None:
        self.bs = bs
        check_io(bs)
        for d in bs.dma:
            if len(d.shape) > MAX_RANK or len(d.strides) > MAX_RANK:
                raise SimulationError(f"DMA descriptor of stream {d.stream}: more than {MAX_RANK} dimensions")
        self.ctxs = contexts(bs)
        self.constants = {c.id: c for c in bs.constants}
        self._decoded: dict[int, np.ndarray] = {}
        self.loads: dict[int, DmaDescriptor] = {}
        for d in bs.dma:
            if d.direction == "load":
                if d.stream in self.loads:
                    raise SimulationError(f"DMA: two load descriptors for stream {d.stream}")
                self.loads[d.stream] = d
        self.stores = store_descriptors(bs)  # kernel id -> the store descriptors it claims

    def constant(self, cid: Any, where: str) -> np.ndarray:
        if isinstance(cid, bool) or not isinstance(cid, int) or cid not in self.constants:
            raise SimulationError(f"{where}: constant {cid!r} is not in the CONSTANTS section")
        x = self._decoded.get(cid)
        if x is None:
            c = self.constants[cid]
            if c.encoding != "dense":
                raise SimulationError(f"{where}: constant {cid} has encoding '{c.encoding}'; the simulator runs dense ones")
            try:
                check_shape(list(c.shape), c.dtype, f"constant {cid} {limits.shown(c.name)}")
                x = from_bytes(c.data, c.dtype, list(c.shape))
            except SimulationError as e:
                raise SimulationError(f"{where}: constant {cid} {limits.shown(c.name)}: {e}") from None
            x.flags.writeable = False
            self._decoded[cid] = x
        return x

    def load_descriptor(self, c: Context, port_stream: int) -> DmaDescriptor:
        for s in [port_stream] + [p.stream for p in c.config.outputs]:
            if s in self.loads:
                return self.loads[s]
        raise SimulationError(f"{c.label} reads DRAM-side stream {port_stream} but no DMA load descriptor serves it")

    def run_context(self, c: Context, args: list[np.ndarray]) -> list[np.ndarray]:
        """Execute one context's body on its input values; the values of its output ports.

        The body holds f16 values in f32 from instruction to instruction (the tile's datapath: a GEMM's
        epilogue works on its f32 accumulator); they are rounded to the port's dtype as they leave on an
        output port, and by an explicit cast or convert (ops.execute)."""
        cfg = c.config
        regs: dict[int, np.ndarray] = {i: x.astype(wide(x.dtype), copy=False) for i, x in enumerate(args)}
        for n, ins in enumerate(cfg.body):
            where = f"{c.label}, instruction {n} {limits.shown(ins.opcode, 32)}"
            if len(ins.results) != 1:
                raise SimulationError(f"{where}: expected one result register, got {len(ins.results)}")
            shape, dtype = ins.params.get("shape"), ins.params.get("dtype")
            if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
                if any(d < 0 for d in shape):
                    raise SimulationError(f"{where}: result shape {shape_text(shape)} has a negative dimension")
                check_shape(shape, dtype if isinstance(dtype, str) else "f64", f"{where}: result")
            try:
                operands = [regs[r] for r in ins.operands]
            except KeyError as e:
                raise SimulationError(f"{where}: register r{e.args[0]} is read before it is written") from None
            try:
                if ins.opcode == "constant":
                    value = finish(self.constant(ins.params.get("constant"), where), ins.params)
                    value = value.astype(wide(value.dtype), copy=False)
                else:
                    value = execute(ins.opcode, operands, ins.params, in_kernel=True)
            except SimulationError as e:
                raise SimulationError(f"{where}: {e}") from None
            regs[ins.results[0]] = value
        outs = []
        for p in cfg.outputs:
            if p.register not in regs:
                raise SimulationError(f"{c.label}: output port register r{p.register} is never written")
            x = regs[p.register]
            if x.dtype.kind == "f" and isinstance(p.dtype, str) and np_dtype(p.dtype).kind == "f":
                x = stored(x, p.dtype)  # leaving the kernel: rounded to the stream's dtype
            outs.append(x)
        return outs

    def run(self, inputs: Mapping[str, Any], progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        values = check_inputs(self.bs, inputs)
        dram = Dram(dram_size(self.bs))
        for e in entries(self.bs, "input"):
            dram.write(e.dram_address, values[e.name], e.dtype, list(e.shape), dense_strides(list(e.shape)),
                       f"IO '{e.name}'")  # fmt: skip
        dma_inputs = {p.stream for c in self.ctxs if c.config.kind == "dma_load" for p in c.config.inputs}
        order = schedule(self.ctxs, dma_inputs)
        streams: dict[int, np.ndarray] = {}
        for n, i in enumerate(order):
            c = self.ctxs[i]
            args = []
            for p in c.config.inputs:
                if p.stream in streams:
                    x = streams[p.stream]
                else:  # a DRAM-side stream: the DMA descriptor says where and how
                    d = self.load_descriptor(c, p.stream)
                    x = dram.read(d.dram_address, d.dtype, list(d.shape), list(d.strides), f"DMA load of stream {d.stream}")
                self._check_port(c, p, x, "input")
                args.append(x)
            outs = self.run_context(c, args)
            if c.config.kind == "dma_spill":
                outs = self._spill(c, outs, dram)
            for p, x in zip(c.config.outputs, outs):
                self._check_port(c, p, x, "output")
                streams[p.stream] = x
            if c.config.kind == "dma_store":
                self._store(c, args, outs, dram)
            if progress is not None:
                progress(n + 1, len(order))
        result: dict[str, np.ndarray] = {}
        for e in entries(self.bs, "output"):
            result[e.name] = dram.read(e.dram_address, e.dtype, list(e.shape), dense_strides(list(e.shape)),
                                       f"IO '{e.name}'")  # fmt: skip
        return result

    def _store(self, c: Context, args: list[np.ndarray], outs: list[np.ndarray], dram: Dram) -> None:
        """A DMA store writes the value its context computes (its first output port) to DRAM.

        The descriptor is the one the context claims (``store_descriptors``). When the descriptor's shape does not
        describe the whole value but its byte count does (the emitter gives a store descriptor the shape of
        the store's first input, which differs when the store concatenates per-head results or slices a
        Split's part), the value is written densely at the descriptor's address."""
        d = self.stores.get(c.config.kernel, [None])[0]
        if d is None:
            raise SimulationError(f"{c.label} is a DMA store but no store descriptor on its tile names its streams")
        if not outs:
            raise SimulationError(f"{c.label} is a DMA store without an output port")
        x = outs[0]
        where = f"DMA store of stream {d.stream}"
        if d.dtype != c.config.outputs[0].dtype:
            raise SimulationError(f"{where}: descriptor dtype {d.dtype}, the stored value is {c.config.outputs[0].dtype}")
        if bounded_prod(d.shape) == x.size:
            dram.write(d.dram_address, x.reshape(d.shape), d.dtype, list(d.shape), list(d.strides), where)
        elif d.bytes == x.size * storage_bytes(d.dtype):
            dram.write(d.dram_address, x, d.dtype, list(x.shape), dense_strides(list(x.shape)), where)
        else:
            raise SimulationError(f"{where}: the descriptor ({d.dtype}{list(d.shape)}, {d.bytes} bytes) "
                                  f"cannot hold the stored value {list(x.shape)}")

    def _spill(self, c: Context, outs: list[np.ndarray], dram: Dram) -> list[np.ndarray]:
        """A ``dma_spill`` writes the value its context computes (its body's result: its one input, or a
        concatenation of the parts on its several inputs) through the store descriptor it claims on its DMA
        tile (``store_descriptors``: one naming an input stream) and reads its output back through the load
        descriptor of its output stream (the same DRAM region when the compiler is right; the simulator does
        not assume it)."""
        cfg = c.config
        stores = self.stores.get(cfg.kernel, [])
        if len(cfg.outputs) > 1 and len(cfg.outputs) == len(cfg.inputs) == len(outs):
            # a spill between SRAM phases carries several streams: output i is input i, each through its own
            # store and load descriptors
            return [self._spill_one(c, [p.stream], d, q, x, dram) for p, d, q, x in zip(cfg.inputs, stores, cfg.outputs, outs)]
        if not cfg.inputs or len(cfg.outputs) != 1 or len(outs) != 1:
            raise SimulationError(f"{c.label} is a dma_spill: it needs one or more input ports and one output port "
                                  "(or as many output ports as input ports)")  # fmt: skip
        return [self._spill_one(c, [p.stream for p in cfg.inputs], stores[0], cfg.outputs[0], outs[0], dram)]

    def _spill_one(self, c: Context, ins: list[int], store: DmaDescriptor | None, port: Any, x: np.ndarray,
                   dram: Dram) -> np.ndarray:  # fmt: skip
        """Write ``x`` through ``store`` (the descriptor the spill claims for one of the ``ins`` streams) and
        read ``port``'s stream back through its load descriptor."""
        dst = port.stream
        load = self.loads.get(dst)
        if store is None:
            streams = " or ".join(str(s) for s in dict.fromkeys(ins))
            raise SimulationError(f"{c.label} is a dma_spill but its tile has no store descriptor of stream {streams} "
                                  "left for it")  # fmt: skip
        if load is None:
            raise SimulationError(f"{c.label} is a dma_spill but no load descriptor of stream {dst} exists")
        where = f"DMA spill of stream {store.stream}"
        shape, strides = list(store.shape), list(store.strides)
        if bounded_prod(shape) != x.size:
            raise SimulationError(f"{where}: the store descriptor's shape {shape} cannot hold {list(x.shape)}")
        dram.write(store.dram_address, x.reshape(shape), store.dtype, shape, strides, where)
        where = f"DMA load of stream {dst}"
        y = dram.read(load.dram_address, load.dtype, list(load.shape), list(load.strides), where)
        if y.size != bounded_prod(port.shape):
            raise SimulationError(f"{where}: {list(load.shape)} does not fill the port's {list(port.shape)}")
        return y.reshape(port.shape)

    @staticmethod
    def _check_port(c: Context, p: Any, x: np.ndarray, direction: str) -> None:
        if list(x.shape) != list(p.shape) or x.dtype != np_dtype(p.dtype):
            raise SimulationError(
                f"{c.label}: {direction} stream {p.stream} carries {x.dtype}{list(x.shape)}, the port says {p.dtype}{list(p.shape)}"
            )


def run(bs: Bitstream, inputs: Mapping[str, Any], progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Execute the bitstream on ``inputs`` (keyed by graph input names); outputs keyed by output names."""
    return Functional(bs).run(inputs, progress)

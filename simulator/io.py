"""Inputs and outputs of a simulation: checking arrays against a bitstream's IO table, .npz files.

The IO table is the simulator's only description of the model's interface: each entry names a graph
input or output, its dtype, shape and DRAM address. Every mismatch is one ``AttncError`` naming the key.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from attnc import limits
from attnc.backend.bitstream import Bitstream, DmaDescriptor, IOEntry, bounded_prod, shape_text
from attnc.errors import AttncError
from attnc.simulator.ops import SimulationError, np_dtype, storage_bytes

#: the most dimensions a simulated tensor may have (numpy's own bound is 32 or 64)
MAX_RANK = 32


def entries(bs: Bitstream, direction: str) -> list[IOEntry]:
    return [e for e in bs.io if e.direction == direction]


def store_descriptors(bs: Bitstream) -> dict[int, list[DmaDescriptor | None]]:
    """The store descriptors each ``dma_store`` and ``dma_spill`` context executes, keyed by kernel id: one
    per value it writes (a store's value; a spill's value, or one per input port when it has an output port
    per input), ``None`` where its tile has none left for it.

    A store descriptor names its DMA tile and a stream, not its context, and several contexts on one tile
    may store what one stream carries, each to its own DRAM region: the outputs of a Split, K and V that two
    spills slice out of one QKV projection, a layer norm's output spilled once for each of two later phases.
    A descriptor belongs to one context: the contexts claim them in kernel order (the order the emitter
    writes them in), each taking, for each value it writes, the first unclaimed descriptor on its own tile
    that names one of that value's streams: a store's input or output ports, a spill's input ports (the
    first input's first), or input i for a spill's output i. Matching by stream alone would let a context
    execute a neighbour's descriptor, writing its value over the neighbour's and reading its own region
    unwritten (docs/bitstream.md, DMA)."""
    free: dict[tuple[tuple[int, int], int], list[DmaDescriptor]] = {}
    for d in bs.dma:
        if d.direction == "store":
            free.setdefault((tuple(d.channel), d.stream), []).append(d)
    ctxs = [((t.x, t.y), c) for t in bs.tiles for c in t.contexts if c.kind in ("dma_store", "dma_spill")]
    out: dict[int, list[DmaDescriptor | None]] = {}
    for tile, c in sorted(ctxs, key=lambda tc: tc[1].kernel):
        if c.kind == "dma_store":
            values = [[p.stream for p in c.inputs] + [p.stream for p in c.outputs]]
        elif len(c.outputs) > 1 and len(c.outputs) == len(c.inputs):
            values = [[p.stream] for p in c.inputs]
        else:
            values = [[p.stream for p in c.inputs]]
        claimed = []
        for streams in values:
            queue = next((q for s in streams if (q := free.get((tile, s)))), None)
            claimed.append(queue.pop(0) if queue else None)
        out[c.kernel] = claimed
    return out


def check_shape(shape: list[int], dtype: str, what: str) -> int:
    """The bytes a dense ``dtype`` tensor of ``shape`` takes in DRAM, after checking its rank and that it
    is within the TENSOR_BYTES limit (before anything of that size is allocated)."""
    if len(shape) > MAX_RANK:
        raise SimulationError(f"{what}: rank {len(shape)} exceeds the simulator's {MAX_RANK} dimensions")
    if bounded_prod([d for d in shape if d]) > 1 << 58:  # numpy refuses even an empty array of such dims
        raise SimulationError(f"{what}: shape {shape_text(list(shape))} is out of range")
    nbytes = bounded_prod(shape) * storage_bytes(dtype)
    limits.check(nbytes, what, limits.TENSOR_BYTES)
    # in memory a bf16 value is a float32: twice its DRAM bytes
    limits.check(bounded_prod(shape) * np_dtype(dtype).itemsize, what, limits.TENSOR_BYTES)
    return nbytes


def check_io(bs: Bitstream) -> None:
    """Every IO entry's shape and dtype agree with its byte count, and fit the TENSOR_BYTES limit: checked
    before any input is drawn or any DRAM allocated (a hostile table can declare any shape)."""
    for e in bs.io:
        what = f"IO {e.direction} {limits.shown(e.name)} ({limits.shown(e.dtype, 12)[1:-1]}{shape_text(list(e.shape))})"
        if len(e.shape) <= MAX_RANK:  # the disagreement first: it says more than the limit would
            nbytes = bounded_prod(list(e.shape)) * storage_bytes(e.dtype)
            if nbytes != e.bytes:
                raise SimulationError(f"{what}: the shape needs {nbytes:,} bytes, the entry says {e.bytes:,}")
        check_shape(list(e.shape), e.dtype, what)


def check_inputs(bs: Bitstream, inputs: Mapping[str, Any], *, source: str = "inputs") -> dict[str, np.ndarray]:
    """The inputs as arrays of the IO table's dtypes; missing/extra keys, shapes and dtypes are errors."""
    check_io(bs)
    want = entries(bs, "input")
    names = [e.name for e in want]
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise AttncError(
            f"{source}: unknown input(s) {', '.join(limits.shown(x, 40) for x in extra[:5])}; "
            f"the bitstream's inputs are {', '.join(limits.shown(x, 40) for x in names[:5])}"
        )
    out: dict[str, np.ndarray] = {}
    for e in want:
        name = limits.shown(e.name)
        if e.name not in inputs:
            raise AttncError(f"{source}: missing input {name} ({e.dtype}{shape_text(list(e.shape))})")
        x = inputs[e.name]
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.shape != tuple(e.shape):
            raise AttncError(f"{source}: input {name} has shape {shape_text(list(x.shape))}, "
                             f"the bitstream expects {shape_text(list(e.shape))}")
        dt = np_dtype(e.dtype)
        if e.dtype == "bf16" and x.dtype.name == "bfloat16":
            x = x.astype(np.float32)
        elif x.dtype != dt:
            raise AttncError(f"{source}: input {name} has dtype {x.dtype}, the bitstream expects {e.dtype} ({dt})")
        out[e.name] = x
    return out


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record


def load_npz(path: str | os.PathLike[str], option: str = "--inputs") -> dict[str, np.ndarray]:
    """The arrays of an .npz file keyed by name; anything unreadable is one error naming the file.

    Each member's declared shape is read from its .npy header and checked against the TENSOR_BYTES
    limit and against the bytes the member holds before the array is allocated (a small compressed
    file can declare any size)."""
    where = f"{option} {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic not in _ZIP_MAGICS:
            what = "a single .npy array" if magic == b"\x93NUM" else "not a zip file"
            raise AttncError(f"{where}: cannot read as .npz: not an .npz archive ({what})")
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise AttncError(f"{where}: not an .npz archive (a single .npy array?)")
            for k in data.files:
                _check_member(data.zip, k, where)
            return {k: data[k] for k in data.files}
    except AttncError:
        raise
    except MemoryError:
        raise AttncError(f"{where}: an array is too large to load on this machine") from None
    except Exception as e:  # BadZipFile, ValueError (pickled objects), OSError, EOFError
        raise AttncError(f"{where}: cannot read as .npz: {limits.shown(' '.join(str(e).split()), 120)[1:-1]}") from None


def _check_member(zf: zipfile.ZipFile, key: str, where: str) -> None:
    """Check one member's .npy header (shape, dtype) against the limit and the member's size."""
    info = zf.getinfo(key if key in zf.namelist() else f"{key}.npy")
    what = f"{where}: array {limits.shown(key)}"
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        header = f.tell()
    if dtype.hasobject:
        raise AttncError(f"{what}: contains pickled (object) data, which attnc does not load")
    nbytes = bounded_prod(shape) * dtype.itemsize
    limits.check(nbytes, what, limits.TENSOR_BYTES)
    if info.file_size - header < nbytes:
        raise AttncError(f"{what}: declares {nbytes} bytes of data, the member holds {info.file_size - header}")


def is_npz_member_name(name: str) -> bool:
    """Whether ``name`` can be one plain member of an .npz: numpy makes ``name + '.npy'`` a path inside the
    archive, so no path separator, NUL, '.', '..' or empty name."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def check_npz_name(name: str, what: str = "array") -> None:
    if not is_npz_member_name(name):
        raise AttncError(f"{what} name {limits.shown(name)} cannot be stored in an .npz file (no path separators)")


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    for name in arrays:
        check_npz_name(name)
    np.savez(path, **arrays)


def random_arrays(specs: Iterable[tuple[str, tuple[int, ...], np.dtype]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random arrays for ``(name, shape, dtype)`` specs, in order: normal floats, 0/1 integers,
    random booleans. The same seed gives the same arrays for a model and for its bitstream."""
    specs = list(specs)
    for name, shape, dtype in specs:  # every size first: nothing is drawn if one input is too large
        if len(shape) > MAX_RANK:
            raise AttncError(f"input {limits.shown(name)}: rank {len(shape)} exceeds {MAX_RANK} dimensions")
        if any(d < 0 for d in shape):
            raise AttncError(f"input {limits.shown(name)}: shape {shape_text(list(shape))} has a negative dimension")
        limits.check(bounded_prod(shape) * np.dtype(dtype).itemsize, f"random input {limits.shown(name)}",
                     limits.TENSOR_BYTES)  # fmt: skip
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape, dtype in specs:
        if dtype == np.bool_:
            out[name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            out[name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            out[name] = rng.standard_normal(shape).astype(dtype)
    return out


def random_inputs(bs: Bitstream, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for the IO table (what ``attnc interpret`` feeds when no inputs are given)."""
    check_io(bs)
    return random_arrays(((e.name, tuple(e.shape), np_dtype(e.dtype)) for e in entries(bs, "input")), seed)


# Tolerances by dtype: fp32 results differ from the reference only by the order of accumulation
# (kernels split per head); f16/bf16 round at kernel boundaries in the simulator, per op in the reference on sparse IR.
TOLERANCES = {"float64": (1e-9, 1e-9), "float32": (1e-5, 1e-4), "float16": (1e-2, 1e-2)}


@dataclass
class Comparison:
    name: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], *, bf16: bool = False) -> list[Comparison]:
    """Per output: largest absolute and relative error of ``actual`` against ``expected``, and whether every
    element is within ``atol + rtol * |expected|`` (NaN and inf must match exactly; integers and
    booleans must be equal)."""
    rows = []
    for name, want in expected.items():
        want = np.asarray(want)
        got = actual.get(name)
        if got is None or np.shape(got) != want.shape:
            rows.append(Comparison(name, float("inf"), float("inf"), 0.0, 0.0, False))
            continue
        got = np.asarray(got)
        atol, rtol = TOLERANCES.get(np.result_type(got, want).name, (0.0, 0.0))
        if bf16:
            atol, rtol = max(atol, 1e-2), max(rtol, 1e-2)
        a, b = got.astype(np.float64), want.astype(np.float64)
        with np.errstate(all="ignore"):
            finite = np.isfinite(b)
            same_special = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(a[~finite & ~np.isnan(b)], b[~finite & ~np.isnan(b)])
            diff = np.abs(a - b)[finite] if a.size else np.zeros(0)
            max_abs = float(diff.max()) if diff.size else 0.0
            rel = diff / np.maximum(np.abs(b[finite]), 1e-30)
            max_rel = float(rel.max()) if rel.size else 0.0
            ok = same_special and bool(np.all(diff <= atol + rtol * np.abs(b[finite])))
        rows.append(Comparison(name, max_abs, max_rel, atol, rtol, ok))
    return rows

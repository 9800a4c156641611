"""Inputs and outputs of a simulation: checking arrays against a bitstream's IO table, .npz files.

The IO table is the simulator's only description of the model's interface: each entry names a graph
input or output, its dtype, shape and DRAM address. Every mismatch is one ``AttncError`` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from attnc.backend.bitstream import Bitstream, IOEntry
from attnc.errors import AttncError
from attnc.simulator.ops import np_dtype


def entries(bs: Bitstream, direction: str) -> list[IOEntry]:
    return [e for e in bs.io if e.direction == direction]


def check_inputs(bs: Bitstream, inputs: Mapping[str, Any], *, source: str = "inputs") -> dict[str, np.ndarray]:
    """The inputs as arrays of the IO table's dtypes; missing/extra keys, shapes and dtypes are errors."""
    want = entries(bs, "input")
    names = [e.name for e in want]
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise AttncError(f"{source}: unknown input(s) {', '.join(map(repr, extra))}; the bitstream's inputs are {names}")
    out: dict[str, np.ndarray] = {}
    for e in want:
        if e.name not in inputs:
            raise AttncError(f"{source}: missing input '{e.name}' ({e.dtype}{list(e.shape)})")
        x = inputs[e.name]
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.shape != tuple(e.shape):
            raise AttncError(f"{source}: input '{e.name}' has shape {list(x.shape)}, the bitstream expects {list(e.shape)}")
        dt = np_dtype(e.dtype)
        if e.dtype == "bf16" and x.dtype.name == "bfloat16":
            x = x.astype(np.float32)
        elif x.dtype != dt:
            raise AttncError(f"{source}: input '{e.name}' has dtype {x.dtype}, the bitstream expects {e.dtype} ({dt})")
        out[e.name] = x
    return out


def load_npz(path: str | os.PathLike[str], option: str = "--inputs") -> dict[str, np.ndarray]:
    """The arrays of an .npz file keyed by name; anything unreadable is one error naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise AttncError(f"{option} {path}: not an .npz archive (a single .npy array?)")
            return {k: data[k] for k in data.files}
    except AttncError:
        raise
    except Exception as e:  # BadZipFile, ValueError (pickled objects), OSError, EOFError
        raise AttncError(f"{option} {path}: cannot read as .npz: {e}") from None


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    np.savez(path, **arrays)


def random_arrays(specs: Iterable[tuple[str, tuple[int, ...], np.dtype]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random arrays for ``(name, shape, dtype)`` specs, in order: normal floats, 0/1 integers,
    random booleans. The same seed gives the same arrays for a model and for its bitstream."""
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
    return random_arrays(((e.name, tuple(e.shape), np_dtype(e.dtype)) for e in entries(bs, "input")), seed)


# Tolerances by dtype: fp32 results differ from the reference only by the order of accumulation
# (kernels split per head); f16/bf16 round after every op.
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

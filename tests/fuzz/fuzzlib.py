"""The fuzz harness shared by tests/fuzz and benchmarks/fuzz.py: input generators, a bounded worker, verdicts.

A *case* is one hostile input: ``Case(kind, argv, data, ext)``. ``argv`` is an ``attnc`` command line with
placeholders -- ``{case}`` (the case file, written from ``data`` with suffix ``ext``), ``{tmp}`` (a fresh
scratch directory), ``{examples}`` (the shipped examples/) and ``{a23bit}`` (examples/attention23.onnx compiled
once with --heuristic-only). The same text is what a corpus sidecar (``<name>.json``) stores.

Generators take a ``Chooser``: ``RandomChooser`` (a seeded ``random.Random``, for the large-budget driver) or
``DrawChooser`` (hypothesis' ``data.draw``, for the property tests, which then shrink).

``Worker`` runs cases in a child process that imports attnc once and calls ``attnc.cli.run(argv)`` in-process
under ``RLIMIT_AS`` (default 4 GiB); a case that does not answer within its time bound kills the child, which
is restarted. ``verdict`` sorts the outcome: ``ok``, ``clean`` (one ``attnc: error:`` line, exit 2),
``unclean`` (exit 2, but several lines, control or bidi characters, or too long), ``internal``, ``memory``
(the address-space cap was hit), ``hang``, ``crash`` (the child died).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CORPUS = Path(__file__).resolve().parent / "corpus"
GiB = 1 << 30
#: longest stderr line accepted as a clean error (docs: one line under ~300 characters)
MAX_ERROR_CHARS = 400
BIDI = {chr(c) for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}

# ---------------------------------------------------------------------------
# choosers


class Chooser:
    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.integer(0, len(seq) - 1)]

    def coin(self, p_true: float = 0.5) -> bool:
        return self.integer(0, 999) < int(p_true * 1000)

    def blob(self, max_len: int) -> bytes:
        return bytes(self.integer(0, 255) for _ in range(self.integer(0, max_len)))


class RandomChooser(Chooser):
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)


class DrawChooser(Chooser):
    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


# ---------------------------------------------------------------------------
# hostile atoms

HOSTILE_INTS = [0, -1, 1, 2, 3, 7, 64, 65535, 1 << 31, (1 << 31) - 1, 1 << 32, 10**9, 10**12, (1 << 63) - 1,
                -(1 << 63), 10**23, -5]
HOSTILE_FLOATS = [0.0, -0.0, 1e-300, 1e308, float("inf"), float("-inf"), float("nan"), -1.0, 6e8]
HOSTILE_NAMES = ["", "x", "a\nattnc: error: forged", "\u202etxt.exe", "../../evil", "/abs/path", "a" * 5000,
                 "名前", "\x00nul", "a=b,c", "{x}", "%x", "@main", "'\"", " "]


def hostile_int(c: Chooser) -> int:
    return c.choice(HOSTILE_INTS) if c.coin(0.7) else c.integer(-(1 << 40), 1 << 40)


def hostile_i64(c: Chooser) -> int:
    """A hostile value that fits a protobuf int64 field."""
    return max(-(1 << 63), min((1 << 63) - 1, hostile_int(c)))


def hostile_name(c: Chooser) -> str:
    return c.choice(HOSTILE_NAMES)


# ---------------------------------------------------------------------------
# cases


@dataclass
class Case:
    kind: str
    argv: list[str]
    data: bytes | None = None  # the case file's bytes ({case} in argv)
    ext: str = ".bin"
    note: str = ""
    #: corpus checks beyond the verdict: expect (verdicts allowed), forbid / require (strings in the output),
    #: unchanged (the case file is left as it was), npz_plain (the output npz has no path-like member names),
    #: env (environment variables for this case; "" restores a limit's default)
    checks: dict[str, Any] = field(default_factory=dict)

    def sidecar(self) -> dict[str, Any]:
        return {"kind": self.kind, "argv": self.argv, "ext": self.ext, "note": self.note, **self.checks}


COMPILE_FAST = ["--heuristic-only", "--time-limit", "2"]


def _onnx_models() -> list[Any]:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    models = [onnx.load(str(EXAMPLES / "attention23.onnx"))]

    def mk(nodes, inputs, outputs, inits=(), opset=17):
        g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    f = TensorProto.FLOAT
    vi = helper.make_tensor_value_info
    models.append(mk([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                     [vi("a", f, [2, 4]), vi("b", f, [4, 3])], [vi("y", f, [2, 3])]))
    models.append(mk([helper.make_node("Add", ["a", "c"], ["s"], name="add"),
                      helper.make_node("Softmax", ["s"], ["y"], axis=-1, name="sm")],
                     [vi("a", f, [2, 4])], [vi("y", f, [2, 4])],
                     [numpy_helper.from_array(np.ones((2, 4), np.float32), "c")]))
    models.append(mk([helper.make_node("ConstantOfShape", ["shp"], ["z"], value=helper.make_tensor("v", f, [1], [1.0])),
                      helper.make_node("Add", ["a", "z"], ["y"])],
                     [vi("a", f, [2, 3])], [vi("y", f, [2, 3])],
                     [numpy_helper.from_array(np.array([2, 3], np.int64), "shp")]))
    models.append(mk([helper.make_node("Range", ["s", "l", "d"], ["r"]),
                      helper.make_node("Cast", ["r"], ["rf"], to=f),
                      helper.make_node("Add", ["a", "rf"], ["y"])],
                     [vi("a", f, [4])], [vi("y", f, [4])],
                     [numpy_helper.from_array(np.array(0, np.int64), "s"),
                      numpy_helper.from_array(np.array(4, np.int64), "l"),
                      numpy_helper.from_array(np.array(1, np.int64), "d")]))
    i64 = TensorProto.INT64

    def sym(name: str, dtype: int, rank: int) -> Any:
        return helper.make_tensor_value_info(name, dtype, [f"{name}{i}" for i in range(rank)])

    def shaped(op: str, x_shape: list[int], consts: dict[str, Any], rank: int = 2, **attrs: Any) -> Any:
        """``y = op(x, *consts)`` with symbolic output dims (a mutated constant reaches shape inference)."""
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
        node = helper.make_node(op, ["x", *consts], ["y"], name=op.lower(), **attrs)
        return mk([node], [vi("x", f, x_shape)], [sym("y", f, rank)], inits)

    models += [
        shaped("Reshape", [2, 6], {"shape": np.array([3, 4], np.int64)}),
        shaped("Expand", [1, 3], {"shape": np.array([2, 3], np.int64)}),
        shaped("Tile", [2, 3], {"repeats": np.array([2, 1], np.int64)}),
        shaped("Slice", [4, 6], {"starts": np.array([0, 1], np.int64), "ends": np.array([2, 5], np.int64)}),
        shaped("Gather", [5, 3], {"idx": np.array([0, 4, 2], np.int64)}, axis=0),
        shaped("Pad", [2, 3], {"pads": np.array([0, 1, 0, 1], np.int64)}),
        shaped("Transpose", [2, 3, 4], {}, rank=3, perm=[2, 0, 1]),
        shaped("Softmax", [2, 3], {}, axis=-1),
        shaped("ReduceSum", [2, 3], {"axes": np.array([1], np.int64)}, keepdims=1),
        shaped("Concat", [2, 3], {"c": np.ones((2, 3), np.float32)}, axis=0),
        shaped("Trilu", [4, 4], {"k": np.array(0, np.int64)}, upper=0),
        mk([helper.make_node("ConstantOfShape", ["s"], ["y"], value=helper.make_tensor("v", f, [1], [0.5]))],
           [], [sym("y", f, 2)], [numpy_helper.from_array(np.array([2, 3], np.int64), "s")]),
        mk([helper.make_node("Range", ["a", "b", "d"], ["y"])], [], [sym("y", i64, 1)],
           [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("a", 0), ("b", 5), ("d", 1))]),
    ]
    return models


_MODELS: list[bytes] | None = None


def onnx_model_bytes() -> list[bytes]:
    global _MODELS
    if _MODELS is None:
        _MODELS = [m.SerializeToString() for m in _onnx_models()]
    return _MODELS


def _mutate_onnx(c: Chooser, m: Any) -> None:
    from onnx import AttributeProto, TensorProto

    g = m.graph
    op = c.integer(0, 19)
    if op > 14:
        op = c.choice([8, 9, 13, 13, 14])  # weigh the mutations that pass the checker
    vis = list(g.input) + list(g.output)
    if op == 0 and vis:  # a dimension
        v = c.choice(vis)
        dims = v.type.tensor_type.shape.dim
        if dims:
            d = c.choice(dims)
            if c.coin(0.7):
                d.dim_value = c.choice([0, 1, 2, 10**9, 10**12, (1 << 62), (1 << 63) - 1]) if c.coin() else max(
                    0, hostile_i64(c))
            else:
                d.dim_param = c.choice(["?", "N", "", "-1", "a\nb"])
        else:
            v.type.tensor_type.shape.dim.add().dim_value = c.choice([1, 10**9])
    elif op == 1 and g.input:  # drop an input
        del g.input[c.integer(0, len(g.input) - 1)]
    elif op == 2 and vis:  # rename a value
        c.choice(vis).name = hostile_name(c)
    elif op == 3 and vis:  # wrong dtype
        c.choice(vis).type.tensor_type.elem_type = c.integer(0, 25)
    elif op == 4 and g.node:  # strange node name
        c.choice(g.node).name = hostile_name(c)
    elif op == 5 and g.node:  # bad attribute
        n = c.choice(g.node)
        if n.attribute and c.coin():
            a = c.choice(n.attribute)
            if a.type == AttributeProto.INT:
                a.i = hostile_i64(c)
            elif a.type == AttributeProto.FLOAT:
                a.f = c.choice(HOSTILE_FLOATS)
            elif a.type == AttributeProto.INTS:
                del a.ints[:]
                a.ints.extend(hostile_i64(c) for _ in range(c.integer(0, 5)))
            else:
                a.type = c.choice([AttributeProto.INT, AttributeProto.STRING, AttributeProto.FLOATS])
        else:
            a = n.attribute.add()
            a.name = c.choice(["axis", "perm", "transA", "to", "value", "num_heads", "scale", "bogus"])
            a.type = AttributeProto.INT
            a.i = hostile_i64(c)
    elif op == 6 and g.node:  # node input/output rewiring
        n = c.choice(g.node)
        if n.input and c.coin():
            n.input[c.integer(0, len(n.input) - 1)] = c.choice(["", "nosuch", *(v.name for v in vis)])
        else:
            n.input.append(c.choice(["", "nosuch", *(v.name for v in vis)]))
    elif op == 7 and g.node:
        c.choice(g.node).op_type = c.choice(["Nope", "Attention", "Loop", "If", "Einsum", "Reshape", ""])
    elif op == 8 and g.initializer:  # initializer shape disagreeing with its data
        t = c.choice(g.initializer)
        if t.dims and c.coin():
            t.dims[c.integer(0, len(t.dims) - 1)] = c.choice([0, 10**9, 30000, (1 << 62)])
        else:
            t.data_type = c.choice([TensorProto.INT64, TensorProto.FLOAT16, TensorProto.STRING, 0, 99])
    elif op == 9 and g.initializer:  # a huge value in a shape-like constant
        import numpy as np
        from onnx import numpy_helper

        t = c.choice(g.initializer)
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind in "iu" or c.coin():
            arr = np.full(arr.shape, c.choice([30000, 6 * 10**8, 10**9, -1, 0]), dtype=np.int64)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif op == 13 and g.initializer:  # one element of a shape-like constant
        import numpy as np
        from onnx import numpy_helper

        ints = [t for t in g.initializer if t.data_type == TensorProto.INT64]
        if ints:
            t = c.choice(ints)
            arr = numpy_helper.to_array(t).copy()
            if arr.size:
                arr.flat[c.integer(0, arr.size - 1)] = c.choice(
                    [0, -1, -2, 30000, 6 * 10**8, 10**9, (1 << 62), -(1 << 63), (1 << 63) - 1, 2, 7])
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif op == 14 and vis:  # a huge but consistent input dimension (the output left to shape inference)
        v = c.choice(list(g.input) or vis)
        for d in v.type.tensor_type.shape.dim:
            if c.coin():
                d.dim_value = c.choice([10**5, 10**9, 30000, 1 << 31])
        for o in g.output:
            for i, d in enumerate(o.type.tensor_type.shape.dim):
                d.dim_param = f"out{i}"
    elif op == 10:
        m.opset_import[0].version = c.choice([1, 6, 13, 17, 21, 23, 99, 0])
    elif op == 11 and g.output:
        if c.coin():
            del g.output[:]
        else:
            g.output[0].name = c.choice(["../evil", "a/b", "x.npy", hostile_name(c)])
    elif op == 12 and g.node:
        g.node.append(g.node[c.integer(0, len(g.node) - 1)])  # duplicate a node (cycle / redefinition)
    else:
        m.ir_version = c.choice([0, 3, 7, 10, 99])


def gen_onnx(c: Chooser) -> Case:
    import onnx

    models = onnx_model_bytes()
    m = onnx.ModelProto()
    m.ParseFromString(models[c.integer(0, len(models) - 1)])
    for _ in range(c.integer(1, 3)):
        try:
            _mutate_onnx(c, m)
        except ValueError:  # a mutation onnx's own helpers refuse to build: try the next one
            pass
    data = m.SerializeToString()
    if c.coin(0.1):  # raw damage of the serialized proto
        b = bytearray(data)
        if b:
            if c.coin():
                b = b[: c.integer(0, len(b))]
            else:
                b[c.integer(0, len(b) - 1)] = c.integer(0, 255)
        data = bytes(b)
    cmd = c.choice(["interpret", "interpret", "compile-mlir", "compile-bit"])
    argv = {
        "interpret": ["interpret", "{case}", "-o", "{tmp}/out.npz", "--seed", "1"],
        "compile-mlir": ["compile", "{case}", "-o", "{tmp}/out.mlir"],
        "compile-bit": ["compile", "{case}", "-o", "{tmp}/out.bit", *COMPILE_FAST],
    }[cmd]
    if c.coin(0.15):
        argv += ["--input-shape", f"{c.choice(['a', 'q', 'x', 'nosuch'])}={hostile_int(c)},{c.integer(1, 4)}"]
    return Case("onnx", argv, data, ".onnx")


# --- npz


def _npy_bytes(header: dict[str, Any], payload: bytes) -> bytes:
    h = repr(header).encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + payload


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def gen_npz(c: Chooser) -> Case:
    import numpy as np

    base = dict(np.load(EXAMPLES / "attention23.inputs.npz"))
    names = list(base)
    op = c.integer(0, 9)
    raw: bytes | None = None
    arrays = dict(base)
    if op == 0:
        del arrays[c.choice(names)]
    elif op == 1:
        arrays[hostile_name(c) or "k"] = np.zeros(2, np.float32)
    elif op == 2:
        k = c.choice(names)
        arrays[k] = np.zeros(tuple(c.integer(0, 5) for _ in range(c.integer(0, 5))), np.float32)
    elif op == 3:
        k = c.choice(names)
        arrays[k] = arrays[k].astype(c.choice(["float64", "float16", "int8", "int64", "bool", "complex64", "U3"]))
    elif op == 4:
        raw = c.choice([b"", b"not a zip at all", b"PK\x03\x04" + c.blob(40), c.blob(200)])
    elif op == 5:  # pickled object array
        buf = io.BytesIO()
        obj = np.empty(2, dtype=object)
        obj[0], obj[1] = {"a": 1}, [1, 2]
        arrays[c.choice(names)] = obj
        np.savez(buf, **arrays)
        raw = buf.getvalue()
    elif op == 6:  # an .npy header declaring far more than it holds
        k = c.choice(names)
        shape = c.choice([(10**9,), (10**5, 10**5), (1 << 62,), (-1,), (2, 3)])
        members = {f"{n}.npy": _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": shape}, b"\0" * 16)
                   if n == k else _array_npy(base[n]) for n in names}
        raw = _zip(members)
    elif op == 7:  # bad descr / fortran order / garbage header
        k = c.choice(names)
        hdr = c.choice([{"descr": "|O", "fortran_order": False, "shape": (2,)},
                        {"descr": "<f4", "fortran_order": True, "shape": base[k].shape},
                        {"descr": "bogus", "fortran_order": False, "shape": (1,)},
                        {"descr": "<f4"}])
        members = {f"{n}.npy": _npy_bytes(hdr, base[k].tobytes()) if n == k else _array_npy(base[n]) for n in names}
        raw = _zip(members)
    elif op == 8:  # truncated zip
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        b = buf.getvalue()
        raw = b[: c.integer(0, len(b) - 1)]
    else:  # a member path with ../ or a directory
        raw = _zip({"../" + names[0] + ".npy": _array_npy(base[names[0]]),
                    **{f"{n}.npy": _array_npy(base[n]) for n in names[1:]}})
    if raw is None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = buf.getvalue()
    cmd = c.choice(["interpret", "simulate", "run"])
    argv = {
        "interpret": ["interpret", "{examples}/attention23.onnx", "--inputs", "{case}", "-o", "{tmp}/out.npz"],
        "simulate": ["simulate", "{a23bit}", "--inputs", "{case}", "-o", "{tmp}/out.npz"],
        "run": ["run", "{examples}/attention23.onnx", "--inputs", "{case}", *COMPILE_FAST],
    }[cmd]
    return Case("npz", argv, raw, ".npz")


def _array_npy(a: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# --- arch YAML

ARCH_VALUES: list[Any] = [-1, 0, 1, 10**30, 1e308, float("nan"), "x", "4 KiB", "1e999 GiB", [], {}, None, True,
                          [4, -4], [10**9, 10**9], "\u202e", "a\nb"]


def _yaml_paths(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _yaml_paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _yaml_paths(v, path + (i,))
    return out


def billion_laughs(depth: int = 9, width: int = 9, word: str = "lol") -> str:
    lines = ["a0: &a0 [" + ",".join([f'"{word}"'] * 9) + "]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "version: 1\nname: laughs\n" + "\n".join(lines) + f"\ndatatypes: *a{depth - 1}\n"


def gen_arch(c: Chooser) -> Case:
    import yaml
    from attnc.arch import PRESETS, preset_text

    text = preset_text(c.choice(PRESETS))
    op = c.integer(0, 7)
    if op <= 2:  # structural mutations
        doc = yaml.safe_load(text)
        for _ in range(c.integer(1, 3)):
            path = c.choice(_yaml_paths(doc)[1:])
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            if c.coin(0.2) and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = c.choice(ARCH_VALUES)
            if c.coin(0.1):
                doc[c.choice(["bogus", "tile_kinds", "\u202ekey"])] = {"x": 1}
        text = yaml.safe_dump(doc, allow_unicode=True)
    elif op == 3:  # aliases
        text = billion_laughs(c.integer(2, 9), c.integer(2, 9)) if c.coin() else \
            text + "\nextra: &e [1,2]\nmore: [*e, *e]\n"
    elif op == 4:  # deep nesting
        n = c.choice([50, 500, 5000, 50000])
        text = text + "\nnested: " + "[" * n + "]" * n + "\n" if c.coin() else "{a: " * n + "1" + "}" * n
    elif op == 5:  # huge numbers in text
        text = text.replace("4 KiB", c.choice(["9" * 400 + " KiB", "-4 KiB", "4e30 KiB", "0x10 KiB"]), 1)
        text = text.replace("[4, 4]", c.choice(["[100000, 100000]", "[0, 4]", "[-4, 4]", "[4]"]), 1)
    elif op == 6:  # not YAML / not a mapping / passwd-like
        text = c.choice(["root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
                         "- a\n- b\n", "\t:::\n", "!!python/object:os.system {}\n", "name: [unclosed\n", ""])
    else:  # raw byte damage
        b = bytearray(text.encode())
        for _ in range(c.integer(1, 5)):
            b[c.integer(0, len(b) - 1)] = c.integer(0, 255)
        return Case("arch", _arch_argv(c), bytes(b), ".yaml")
    return Case("arch", _arch_argv(c), text.encode("utf-8", "surrogatepass"), ".yaml")


def _arch_argv(c: Chooser) -> list[str]:
    if c.coin(0.8):
        return ["compile", "{examples}/attention23.onnx", "--arch", "{case}", "-o", "{tmp}/out.bit", *COMPILE_FAST]
    return ["run", "{examples}/attention23.onnx", "--arch", "{case}", *COMPILE_FAST]


# --- pipelines

PASSES = ["canonicalize", "raise-attention", "fuse-attention", "tile", "fuse-elementwise", "lower-to-dataflow", "place-route",
          "butterfly-decompose", "nosuch", ""]
OPTION_KEYS = ["mode", "arch", "members", "key-block", "share-sram", "tile-m", "layers", "fourier", "block", "factors", "iters",
               "kind", "bogus", ""]
OPTION_VALUES = ["bogus", "-5", "-1", "0", "1", "10000000000000000000000", "nosuch", "tiny", "edge", "nan", "",
                 "1,2", "\u202e", "a b", "{", "}", "=", "all", "none"]


def gen_pipeline(c: Chooser) -> Case:
    parts = []
    for _ in range(c.integer(0, 4)):
        p = c.choice(PASSES)
        if c.coin(0.6):
            opts = " ".join(f"{c.choice(OPTION_KEYS)}={c.choice(OPTION_VALUES)}" if c.coin(0.8)
                            else c.choice(OPTION_KEYS) for _ in range(c.integer(0, 3)))
            p += "{" + opts + "}"
        parts.append(p)
    pipe = ",".join(parts)
    if c.coin(0.1):
        pipe = c.choice([pipe + "{", "," * 5, "a{b{c}}", "{}" * 10, "canonicalize{" * 200])
    cmd = c.choice(["compile-mlir", "interpret", "opt", "compile-bit"])
    argv = {
        "compile-mlir": ["compile", "{examples}/attention23.onnx", "-p", pipe, "-o", "{tmp}/out.mlir"],
        "interpret": ["interpret", "{examples}/attention23.onnx", "-p", pipe, "-o", "{tmp}/out.npz"],
        "opt": ["opt", "{case}", "-p", pipe, "-o", "{tmp}/out.mlir"],
        "compile-bit": ["compile", "{examples}/attention23.onnx", "-p", pipe, "-o", "{tmp}/out.bit", *COMPILE_FAST],
    }[cmd]
    return Case("pipeline", argv, SMALL_MLIR.encode(), ".mlir")


SMALL_MLIR = """builtin.module {
  func.func @main(%x: tensor<2x3xf32> {attnc.name = "x"}, %k: tensor<2x3xi1> {attnc.name = "keep"}) -> (tensor<2x3xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<2x3xf32> -> tensor<2x3xf32>
    %b = sparse.where %k, %a, %x : tensor<2x3xi1>, tensor<2x3xf32>, tensor<2x3xf32> -> tensor<2x3xf32>
    func.return %b : tensor<2x3xf32>
  }
}
"""


ATTENTION_MLIR = """builtin.module {
  func.func @main(%q: T {attnc.name = "q"}, %k: T {attnc.name = "k"}, %v: T {attnc.name = "v"}, %m: M {attnc.name = "m"}) -> (T {attnc.name = "o"}) {
    %o = sparse.attention %q, %k, %v mask %m : M {scale = 0.25 : f64, heads = 4 : i64, kv_heads = 4 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64} : T, T, T -> T
    func.return %o : T
  }
}
"""


def _attention_mlir(c: Chooser) -> str:
    t, m = "tensor<1x4x8x16xf32>", "tensor<1x1x8x8xi1>"
    text = ATTENTION_MLIR
    for _ in range(c.integer(1, 3)):
        op = c.integer(0, 3)
        if op == 0:
            key = c.choice(["scale", "heads", "kv_heads", "causal_offset", "softcap"])
            val = c.choice(["0", "-1", "3", "1000000000", "9223372036854775807", "0x7fffffff"])
            if key in ("scale", "softcap"):
                val = c.choice(["0x7FF8000000000000", "-1.0", "1.0e308", "0.0"])
            text = text.replace(f"{key} = ", f"{key} = {val} : i64, _{key}_old = ", 1) if c.coin(0.2) else \
                __import__("re").sub(rf"{key} = [^:]+:", f"{key} = {val} :", text, count=1)
        elif op == 1:
            t = c.choice(["tensor<1x4x8x16xf32>", "tensor<1x4x8x16xf16>", "tensor<1x3x8x16xf32>", "tensor<0x4x8x16xf32>",
                          "tensor<1x4x100000x16xf32>", "tensor<1x4x8xf32>", "tensor<1x4x8x16xi1>"])
        elif op == 2:
            m = c.choice(["tensor<1x1x8x8xi1>", "tensor<1x1x8x9xi1>", "tensor<8x8xf32>", "tensor<1x4x8x8xi1>",
                          "tensor<1x1x100000x100000xi1>"])
        else:
            text = text.replace(" causal,", c.choice(["", " causal = 5,", " causal, causal,"]), 1)
    return text.replace("T", t).replace("M", m)


def gen_mlir(c: Chooser) -> Case:
    text = SMALL_MLIR if c.coin(0.4) else _attention_mlir(c)
    op = c.integer(0, 6)
    if op == 0:
        text = text.replace("2x3", c.choice(["-2x3", "?x3", "0x3", "1000000000x1000000000", "2x?", "x", "2x3x"]), 1)
    elif op == 1:
        n = c.choice([100, 1000, 3000])
        text = "builtin.module {" * n + "}" * n
    elif op == 2:
        text = text.replace('"x"', '"' + c.choice(["a\\nb", "\u202e", "../x", ""]) + '"')
    elif op == 3:
        b = bytearray(text.encode())
        for _ in range(c.integer(1, 4)):
            b[c.integer(0, len(b) - 1)] = c.integer(0, 255)
        return Case("mlir", _mlir_argv(c), bytes(b), ".mlir")
    elif op == 4:
        text = text[: c.integer(0, len(text))]
    return Case("mlir", _mlir_argv(c), text.encode(), ".mlir")


def _mlir_argv(c: Chooser) -> list[str]:
    return c.choice([["opt", "{case}", "-p", "canonicalize"], ["interpret", "{case}", "-o", "{tmp}/out.npz"],
                     ["compile", "{case}", "-o", "{tmp}/out.bit", *COMPILE_FAST], ["run", "{case}", *COMPILE_FAST],
                     ["compile", "{case}", "-o", "{tmp}/out.bit", "--arch", "tiny", *COMPILE_FAST]])


# --- command-line options


def gen_options(c: Chooser) -> Case:
    opt = c.integer(0, 5)
    if opt == 0:
        argv = ["interpret", "{examples}/attention23.onnx", "-o", "{tmp}/out.npz", "--seed",
                str(c.choice([-1, 10**23, 2**32, 2**64, -(2**63)]))]
    elif opt == 1:
        argv = ["compile", "{examples}/attention23.onnx", "-o", "{tmp}/out.bit", "--heuristic-only",
                "--time-limit", c.choice(["nan", "inf", "-1", "0", "1e308", "x"])]
    elif opt == 2:
        argv = ["simulate", "{a23bit}", "--timing-only", "--seed", str(c.choice([-1, 10**23]))]
    elif opt == 3:
        argv = ["compile", "{examples}/attention23.onnx", "-o", c.choice(["{tmp}", "{tmp}/nodir/out.bit",
                "{tmp}/out.txt", "/dev/null", "{examples}/attention23.onnx"]), *COMPILE_FAST]
    elif opt == 4:
        argv = ["interpret", "{examples}/attention23.onnx", "-o", "{tmp}/out.npz", "--input-shape",
                c.choice(["q=1000000000,1000000000", "q=-1", "q=", "=1", "q=1,2,3,4,5,6,7,8,9"])]
    else:
        argv = ["compile", "{examples}/attention23.onnx", "-o", "{tmp}/out.bit", *COMPILE_FAST, "--butterfly",
                c.choice(["layers=-1", "block=0", "factors=-3", "iters=1000000000", "kind=bogus", "x", "=", ","])]
    return Case("options", argv, None, "")


# --- bitstreams


def gen_bitstream(c: Chooser, a23bit: Path) -> Case:
    from attnc.backend import bitstream as B

    data = a23bit.read_bytes()
    if c.coin(0.6):
        bs = B.decode(data)
        _mutate_records(c, bs)
        try:
            data = B.encode(bs)
        except B.BitstreamError:
            data = _raw_section_mutation(c, data)
    else:
        data = _raw_section_mutation(c, data)
    argv = c.choice([["inspect", "{case}"], ["inspect", "{case}", "--json"],
                     ["simulate", "{case}", "-o", "{tmp}/out.npz"], ["simulate", "{case}", "--timing-only"]])
    return Case("bitstream", argv, data, ".bit")


def _mutate_records(c: Chooser, bs: Any) -> None:
    pools: list[Any] = []
    for t in bs.tiles:
        pools.append(t)
        for k in t.contexts:
            pools += [k, *k.inputs, *k.outputs, *k.buffers, *k.body]
    pools += [*bs.routes, *bs.dma, *bs.constants, *bs.io]
    for _ in range(c.integer(1, 3)):
        obj = c.choice(pools)
        names = [n for n in vars(obj)]
        name = c.choice(names)
        old = getattr(obj, name)
        if isinstance(old, bool):
            new: Any = not old
        elif isinstance(old, int):
            new = c.choice([0, 1, old + 1, old - 1, 2**31, 2**32 - 1, 2**63 - 1, 10**9, old * 1000])
            new = max(new, 0) if c.coin(0.8) else new
        elif isinstance(old, float):
            new = c.choice(HOSTILE_FLOATS)
        elif isinstance(old, str):
            new = c.choice(["", "f64", "i1", "bogus", "matmul", "input", "output", "load", "store", "dense", "csr",
                            "\u202e", "a\nb", "x" * 40])
        elif isinstance(old, bytes):
            new = old[: c.integer(0, len(old))] + c.blob(8)
        elif isinstance(old, list):
            new = list(old)
            if new and c.coin():
                i = c.integer(0, len(new) - 1)
                v = new[i]
                if isinstance(v, int):
                    new[i] = c.choice([0, 10**9, 2**32 - 1, v + 1, 1 << 40])
                elif isinstance(v, tuple) and v and isinstance(v[0], int):
                    new[i] = tuple(c.choice([0, 99, 65535, x + 1]) for x in v)
                else:
                    del new[i]
            elif new and c.coin():
                new.append(new[0])
            else:
                new = new[:-1]
        elif isinstance(old, tuple):
            new = tuple(c.choice([0, 99, 65535]) for _ in old)
        elif isinstance(old, dict):
            new = dict(old)
            new[c.choice(["n", "axis", "\u202e"])] = c.choice([1, -1, 1.5, "s", True, [1, 2], [0.5]])
        else:
            continue
        setattr(obj, name, new)


def _raw_section_mutation(c: Chooser, data: bytes) -> bytes:
    from attnc.backend import bitstream as B

    h = B.read_header(data)
    sections = []
    target = c.integer(0, len(h.sections) - 1)
    for i, s in enumerate(h.sections):
        body = bytearray(data[s.offset: s.offset + s.length])
        if i == target:
            op = c.integer(0, 3)
            if op == 0 and body:
                for _ in range(c.integer(1, 4)):
                    body[c.integer(0, len(body) - 1)] = c.integer(0, 255)
            elif op == 1 and body:
                body = body[: c.integer(0, len(body) - 1)]
            elif op == 2 and len(body) >= 4:
                j = c.integer(0, len(body) - 4)
                body[j: j + 4] = struct.pack("<I", c.choice([0xFFFFFFFF, 0x7FFFFFFF, 10**9, 65535]))
            elif s.name == "ARCH":
                body = bytearray(billion_laughs(c.integer(3, 9)).encode())
            else:
                body += c.blob(16)
        sections.append((s.kind, bytes(body)))
    return B._assemble(h.fingerprint, sections)


GENERATORS: dict[str, Callable[..., Case]] = {
    "onnx": gen_onnx, "npz": gen_npz, "arch": gen_arch, "pipeline": gen_pipeline, "mlir": gen_mlir,
    "options": gen_options, "bitstream": gen_bitstream,
}


def generate(kind: str, c: Chooser, a23bit: Path) -> Case:
    if kind == "bitstream":
        return gen_bitstream(c, a23bit)
    return GENERATORS[kind](c)


# ---------------------------------------------------------------------------
# running


def a23_bitstream(cache: Path) -> Path:
    """examples/attention23.onnx compiled once (heuristic placement) into ``cache``."""
    out = cache / "attention23.bit"
    if not out.exists():
        from attnc.cli import run

        tmp = cache / "attention23.tmp.bit"
        code = run(["compile", str(EXAMPLES / "attention23.onnx"), "-o", str(tmp), "--heuristic-only"])
        assert code == 0, "compiling examples/attention23.onnx failed"
        os.replace(tmp, out)
    return out


def expand(argv: Sequence[str], case_path: str, tmp: str, a23bit: str) -> list[str]:
    return [a.replace("{case}", case_path).replace("{tmp}", tmp).replace("{examples}", str(EXAMPLES))
            .replace("{a23bit}", a23bit) for a in argv]


@dataclass
class Outcome:
    code: int | None
    out: str = ""
    err: str = ""
    wall: float = 0.0
    rss_kib: int = 0
    died: str = ""  # "timeout" or "signal N" when the worker did not answer


def verdict(argv: Sequence[str], o: Outcome) -> str:
    """``ok``, ``clean``, ``unclean``, ``internal``, ``memory``, ``hang`` or ``crash``."""
    if o.died == "timeout":
        return "hang"
    if o.died:
        return "memory" if "MemoryError" in o.died else "crash"
    err = o.err
    if any(m in err for m in ("MemoryError", "Maximum allowed dimension", "Unable to allocate", "out of memory")):
        return "memory"
    if o.code == 0 and "Traceback" not in err and "internal error" not in err:
        return "ok"
    if o.code == 1 and argv and argv[0] == "run" and "internal error" not in err and "Traceback" not in err:
        return "ok"  # a numeric mismatch reported by `attnc run`
    if o.code == 2 and clean_error(err):
        return "clean"
    if o.code == 2 and "internal error" not in err and "Traceback" not in err:
        return "unclean"  # a user error, but not one short line free of control and bidi characters
    return "internal"


def clean_error(err: str) -> bool:
    """One ``attnc: error:`` line, last, short, with no control or bidi characters (informational ``attnc:``
    lines such as the random-inputs notice may precede it)."""
    lines = err.split("\n")
    if lines[-1] != "" or "Traceback" in err or "internal error" in err or set(err) & BIDI:
        return False
    lines = lines[:-1]
    if not lines or not lines[-1].startswith("attnc: error: ") or len(lines[-1]) > MAX_ERROR_CHARS:
        return False
    if sum(line.startswith("attnc: error:") for line in lines) != 1:
        return False
    return not any(ch < " " or ch == "\x7f" for ch in "".join(lines))


WORKER_MAIN = r"""
import io, json, os, resource, sys, time, contextlib
limit = int(sys.argv[1])
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
proto = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
from attnc.cli import run

def peak():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

proto.write("ready\n"); proto.flush()
for line in sys.stdin:
    req = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    os.chdir(req["cwd"])
    saved_env = {k: os.environ.get(k) for k in req.get("env", {})}
    os.environ.update(req.get("env", {}))
    reset_peak()
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(req["argv"])
    except MemoryError:
        code, err = 1, io.StringIO("MemoryError escaped run()\n")
    except BaseException as e:
        code = 1
        err.write(f"escaped run(): {type(e).__name__}: {e}\n")
    wall = time.perf_counter() - t
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proto.write(json.dumps({"code": code, "out": out.getvalue()[-2000:], "err": err.getvalue()[-4000:],
                            "wall": wall, "rss_kib": peak()}) + "\n")
    proto.flush()
"""


class Worker:
    """A child process running cases in-process under an address-space cap; restarted after a death."""

    def __init__(self, mem_bytes: int = 4 * GiB, timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.mem_bytes, self.timeout = mem_bytes, timeout
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "ATTNC_DEBUG": "", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_MAIN, str(self.mem_bytes)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env,
                                     start_new_session=True)
        line = self._readline(120.0)
        if line != "ready\n":
            raise RuntimeError(f"fuzz worker did not start: {line!r}")

    def _readline(self, timeout: float) -> str | None:
        assert self.proc and self.proc.stdout
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        return self.proc.stdout.readline()

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None

    def run(self, argv: list[str], cwd: str, env: dict[str, str] | None = None) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self._start()
        assert self.proc and self.proc.stdin
        t = time.perf_counter()
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        line = self._readline(self.timeout)
        wall = time.perf_counter() - t
        if line is None:
            self.kill()
            return Outcome(None, wall=wall, died="timeout")
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return Outcome(None, wall=wall, died=f"signal {-rc}" if rc < 0 else f"exit {rc}")
        d = json.loads(line)
        return Outcome(d["code"], d["out"], d["err"], d["wall"], d["rss_kib"])


def run_case(worker: Worker, case: Case, a23bit: Path) -> tuple[str, Outcome, list[str]]:
    """Run one case in a fresh scratch directory; the verdict, or ``wrong: ...`` when a corpus check fails."""
    tmp = tempfile.mkdtemp(prefix="attnc-fuzz-")
    try:
        case_path = os.path.join(tmp, "case" + case.ext)
        if case.data is not None:
            Path(case_path).write_bytes(case.data)
        argv = expand(case.argv, case_path, tmp, str(a23bit))
        o = worker.run(argv, tmp, case.checks.get("env"))
        v = verdict(argv, o)
        ck = case.checks
        if v in ("ok", "clean") and ck:
            if v not in ck.get("expect", ("ok", "clean")):
                v = f"wrong: {v}, expected {' or '.join(ck['expect'])}"
            elif any(f in o.err or f in o.out for f in ck.get("forbid", ())):
                v = "wrong: the output contains " + repr([f for f in ck["forbid"] if f in o.err + o.out])
            elif not all(r in o.err for r in ck.get("require", ())):
                v = f"wrong: stderr does not name {ck['require']}"
            elif ck.get("unchanged") and case.data is not None and (
                    not os.path.isfile(case_path) or Path(case_path).read_bytes() != case.data):
                v = "wrong: the input file was overwritten"
            elif ck.get("npz_plain") and v == "ok":
                bad = [n for p in Path(tmp).glob("*.npz") if p.name != "case.npz"
                       for n in zipfile.ZipFile(p).namelist() if "/" in n or "\\" in n or n.startswith(".")]
                if bad:
                    v = f"wrong: npz member names {bad}"
        return v, o, argv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_crasher(case: Case, why: str, outcome: Outcome, corpus: Path = CORPUS) -> Path:
    import hashlib

    d = corpus / case.kind
    d.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha1(json.dumps(case.argv).encode() + (case.data or b"")).hexdigest()[:12]
    stem = d / f"found-{h}"
    if case.data is not None:
        stem.with_suffix(case.ext).write_bytes(case.data)
    side = case.sidecar()
    side["note"] = f"{why}: {(outcome.err or outcome.died).strip()[:300]}"
    stem.with_suffix(".json").write_text(json.dumps(side, indent=1, ensure_ascii=True) + "\n")
    return stem.with_suffix(".json")


def load_corpus(corpus: Path = CORPUS) -> list[tuple[Path, Case]]:
    out = []
    for side in sorted(corpus.glob("*/*.json")):
        d = json.loads(side.read_text())
        ext = d.get("ext", "")
        data_path = side.with_suffix(ext) if ext else None
        data = data_path.read_bytes() if data_path is not None and data_path.exists() else None
        checks = {k: d[k] for k in ("expect", "forbid", "require", "unchanged", "npz_plain", "env") if k in d}
        out.append((side, Case(d.get("kind", side.parent.name), d["argv"], data, ext, d.get("note", ""), checks)))
    return out


__all__ = [
    "GENERATORS",
    "Case",
    "Chooser",
    "DrawChooser",
    "Outcome",
    "RandomChooser",
    "Worker",
    "a23_bitstream",
    "generate",
    "load_corpus",
    "math",
    "run_case",
    "save_crasher",
    "verdict",
]

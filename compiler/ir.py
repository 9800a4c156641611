"""Shared IR plumbing: the context with every attnc dialect, the ``@main`` function
convention, and text parsing/printing for dumps and tests.

A compiled model is a ``builtin.module`` holding one ``func.func @main``. Each argument
and result carries its graph name as ``{attnc.name = "..."}`` in ``arg_attrs`` /
``res_attrs``, so the IR alone says which ``.npz`` key feeds which argument.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp, StringAttr
from xdsl.parser import Parser
from xdsl.printer import Printer

from attnc.errors import AttncError

NAME_ATTR = "attnc.name"


def make_context() -> Context:
    """A context with builtin, func and every attnc dialect loaded."""
    from attnc.dialects.array import Array
    from attnc.dialects.dataflow import Dataflow
    from attnc.dialects.sparse import Sparse

    ctx = Context()
    ctx.load_dialect(builtin.Builtin)
    ctx.load_dialect(func.Func)
    ctx.load_dialect(Sparse)
    ctx.load_dialect(Dataflow)
    ctx.load_dialect(Array)
    return ctx


def main_func(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            return op
    raise AttncError("the module has no func.func @main")


def _names(attrs: builtin.ArrayAttr | None, n: int, prefix: str) -> list[str]:
    out = []
    for i in range(n):
        name = f"{prefix}{i}"
        if attrs is not None and i < len(attrs.data):
            d = attrs.data[i]
            if isinstance(d, DictionaryAttr) and isinstance(v := d.data.get(NAME_ATTR), StringAttr):
                name = v.data
        out.append(name)
    return out


def io_names(fn: func.FuncOp) -> tuple[list[str], list[str]]:
    """Graph names of @main's arguments and results (``arg<i>``/``result<i>`` if unnamed)."""
    ft = fn.function_type
    return (
        _names(fn.arg_attrs, len(ft.inputs.data), "arg"),
        _names(fn.res_attrs, len(ft.outputs.data), "result"),
    )


def set_io_names(fn: func.FuncOp, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    fn.arg_attrs = builtin.ArrayAttr([DictionaryAttr({NAME_ATTR: StringAttr(n)}) for n in inputs])
    fn.res_attrs = builtin.ArrayAttr([DictionaryAttr({NAME_ATTR: StringAttr(n)}) for n in outputs])


#: the deepest nesting of regions attnc IR may have (a module holds @main, whose kernels hold bodies: a few
#: levels; a deeper file is refused before anything walks it recursively)
MAX_NESTING = 64


def _nesting(module: ModuleOp) -> int:
    """The deepest region nesting below ``module`` (counted without recursion)."""
    deepest, todo = 0, [(module, 0)]
    while todo:
        op, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:
            todo.extend((inner, depth + 1) for region in op.regions for block in region.blocks for inner in block.ops)
    return deepest


def check_shape(shape: Sequence[int], what: str) -> None:
    """A tensor shape from input: every dimension known and >= 0, the element count within
    ``limits.TENSOR_ELEMENTS`` (AttncError naming ``what``, which should show the shape, otherwise)."""
    from attnc import limits

    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise AttncError(f"{what}: an unknown or negative dimension (attnc needs static shapes)")
    n = 1
    for d in dims:
        n *= d
    limits.check(n, what, limits.TENSOR_ELEMENTS)


def _check_types(module: ModuleOp, name: str) -> None:
    """Every tensor type the IR names (values, block arguments, function signatures, typed attributes) has a
    static, non-negative shape within the element limit."""
    from attnc.limits import shown

    def types(op):
        yield from op.result_types
        for region in op.regions:
            for block in region.blocks:
                yield from block.arg_types
        for attr in (*op.attributes.values(), *op.properties.values()):
            if isinstance(attr, builtin.FunctionType):
                yield from attr.inputs.data
                yield from attr.outputs.data
            elif isinstance(t := getattr(attr, "type", None), builtin.TensorType):
                yield t

    for op in module.walk():
        for t in types(op):
            if isinstance(t, builtin.TensorType | builtin.MemRefType | builtin.VectorType):
                check_shape(t.get_shape(), f"{name}: {op.name}: type {shown(t, 80)}")


def parse_module(text: str, name: str = "<input>") -> ModuleOp:
    """Parse textual IR (with every attnc dialect registered) and verify it; every tensor shape in it must
    be static and within ``limits.TENSOR_ELEMENTS``, and regions nest at most ``MAX_NESTING`` deep."""
    from xdsl.utils.exceptions import ParseError, VerifyException, DiagnosticException

    from attnc.limits import shown

    name = shown(name, 120)[1:-1]
    try:
        module = Parser(make_context(), text, name).parse_module()
        if _nesting(module) > MAX_NESTING:
            raise AttncError(f"{name}: regions nest more than {MAX_NESTING} deep")
        _check_types(module, name)
        module.verify()
    except ParseError as e:
        # one line, compiler style: "file:line:col: message" (str(e) adds a multi-line source excerpt)
        raise AttncError(f"{e.span.get_location()}: {shown(e.msg, 200)[1:-1]}") from e
    except (VerifyException, DiagnosticException) as e:
        raise AttncError(f"{name}: {shown(e, 200)[1:-1]}") from e
    except RecursionError:
        raise AttncError(f"{name}: the IR is nested too deeply to parse") from None
    return module


def print_module(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    out.write("\n")
    return out.getvalue()

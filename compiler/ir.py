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


def parse_module(text: str, name: str = "<input>") -> ModuleOp:
    """Parse textual IR (with every attnc dialect registered) and verify it."""
    from xdsl.utils.exceptions import ParseError, VerifyException, DiagnosticException

    try:
        module = Parser(make_context(), text, name).parse_module()
        module.verify()
    except ParseError as e:
        # one line, compiler style: "file:line:col: message" (str(e) adds a multi-line source excerpt)
        raise AttncError(f"{e.span.get_location()}: {e.msg}") from e
    except (VerifyException, DiagnosticException) as e:
        raise AttncError(f"{name}: {e}") from e
    return module


def print_module(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    out.write("\n")
    return out.getvalue()

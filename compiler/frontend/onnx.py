"""ONNX frontend: an ONNX model to a sparse-dialect module.

    module = import_onnx("model.onnx", {"input_ids": [1, 128]})

The model is loaded, checked (``onnx.checker``), its symbolic input dims are bound
from ``input_shapes`` and ONNX shape inference is run on the result, so every value
has a static shape. Nodes are then imported in graph order: a node whose inputs
are all known at compile time (initializers, Constant, Shape of a static tensor,
...) is evaluated right away (``attnc.frontend.fold``); every other node becomes
sparse ops (``attnc.frontend.onnx_ops``; also onnxruntime's com.microsoft.Attention).
Known values turn into ``sparse.constant`` ops only where a runtime op reads them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp, TensorType
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.utils.exceptions import VerifyException

from attnc import limits
from attnc.dialects.sparse import tensor
from attnc.errors import AttncError
from attnc.frontend import fold
from attnc.frontend.onnx_ops import DOMAIN_OPS, OPS, Node, Val, const_op, np_of_elt, onnx_elt
from attnc.ir import check_shape, set_io_names
from attnc.limits import shown

#: ONNX default-domain opsets older than this are rejected: 7 brought numpy-style
#: broadcasting to the arithmetic ops; opsets 7..12 are upgraded to UPGRADE_TO.
MIN_OPSET = 7
DEFAULT_DOMAINS = ("", "ai.onnx")
#: models older than this are upgraded with ONNX's version converter first, so the
#: importer sees one set of signatures (Slice, Pad, Split, Squeeze... took their
#: parameters as attributes before)
UPGRADE_TO = 13


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def _upgrade(model: onnx.ModelProto, src: str) -> onnx.ModelProto:
    try:
        from onnx import version_converter

        return version_converter.convert_version(model, UPGRADE_TO)
    except Exception as e:
        first = _first_line(e)
        raise AttncError(f"{src}: upgrading the model from opset {_default_opset(model)} to {UPGRADE_TO} failed: {first}") from e


def _first_line(e: BaseException) -> str:
    # the messages of onnx and numpy quote the model's names: escaped, like every untrusted text
    text = str(e).strip()
    return shown(text.splitlines()[0], 200)[1:-1] if text else type(e).__name__


def _debug() -> bool:
    return os.environ.get("ATTNC_DEBUG") == "1"


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """``onnx.load`` with one-line AttncErrors naming the file."""
    p = Path(path)
    if not p.exists():
        raise AttncError(f"{p}: no such file")
    if p.is_dir():
        raise AttncError(f"{p}: is a directory, not an ONNX model")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf's DecodeError, external-data errors, ...
        if _debug():
            raise
        raise AttncError(f"{p}: not a readable ONNX model ({_first_line(e)})") from e
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise AttncError(f"{p}: not an ONNX model (it has no graph)")
    return model


def _check(model: onnx.ModelProto, src: str) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        if _debug():
            raise
        raise AttncError(f"{src}: the ONNX checker rejects the model: {_first_line(e)}") from e


def _check_opsets(model: onnx.ModelProto, src: str) -> dict[str, int]:
    opsets = {o.domain or "": o.version for o in model.opset_import}
    if "ai.onnx" in opsets:
        opsets.setdefault("", opsets["ai.onnx"])
    known = onnx.defs.onnx_opset_version()
    ver = opsets.get("")
    if ver is None:
        raise AttncError(f"{src}: the model imports no default-domain ('') opset")
    if ver < MIN_OPSET:
        raise AttncError(
            f"{src}: opset {ver} is older than {MIN_OPSET}, the oldest attnc imports; "
            f"upgrade it with onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    if ver > known:
        raise AttncError(f"{src}: opset {ver} is newer than {known}, the newest the installed onnx knows")
    return opsets


def _infer(model: onnx.ModelProto, src: str) -> onnx.ModelProto:
    custom = any(n.domain not in DEFAULT_DOMAINS for n in model.graph.node)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not custom, data_prop=True)
    except Exception as e:
        if _debug():
            raise
        raise AttncError(f"{src}: ONNX shape inference failed: {_first_line(e)}") from e


def supported_ops() -> list[str]:
    """Every op type the importer has a handler for, default domain first, sorted."""
    return [*sorted(OPS), *sorted(f"{d}.{o}" for d, o in DOMAIN_OPS)]


def _closest(op_type: str) -> str:
    import difflib

    near = difflib.get_close_matches(op_type, supported_ops(), n=3, cutoff=0.6)
    return f"; closest supported: {', '.join(near)}" if near else ""


def _check_ranges(model: onnx.ModelProto, src: str) -> None:
    """Refuse a Range of known bounds whose result is over the fold limit, before shape inference: ONNX's
    data propagation would materialise it (and Range has no runtime lowering)."""
    known: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in DEFAULT_DOMAINS and n.output:
            t = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "value"), None)
            if isinstance(t, onnx.TensorProto):
                known[n.output[0]] = t
        if n.op_type != "Range" or n.domain not in DEFAULT_DOMAINS or len(n.input) != 3:
            continue
        if not all(i in known and math.prod(known[i].dims) == 1 for i in n.input):
            continue
        try:
            ins = [numpy_helper.to_array(known[i]) for i in n.input]
        except Exception:  # a malformed tensor: the import reports it where it reads it
            continue
        size = fold.result_bytes(n, ins, {})
        if size is not None and size > limits.FOLD_BYTES.value():
            raise AttncError(
                f"{src}: node {shown(n.name or n.output[0])} (Range): its result ({size:,} bytes) is too large to "
                f"fold at compile time (the {limits.FOLD_BYTES.name} limit is {limits.FOLD_BYTES.value():,} bytes; "
                f"set {limits.FOLD_BYTES.env} to raise it), and Range has no runtime lowering"
            )


def _bind_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], src: str) -> None:
    """Give every graph input a static shape, in place."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    for key in input_shapes:
        if key not in names:
            raise AttncError(f"{src}: --input-shape names {shown(key)}, which is not an input "
                              f"(inputs: {', '.join(shown(n, 40)[1:-1] for n in names[:8])}{', ...' if len(names) > 8 else ''})")
    for inp in inputs:
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if tt is None:
            raise AttncError(f"{src}: input {shown(inp.name)} is not a tensor; attnc imports tensor inputs only")
        want = input_shapes.get(inp.name)
        if want is not None:
            want = [int(d) for d in want]
            if any(d < 0 for d in want):
                raise AttncError(f"{src}: --input-shape {shown(inp.name)[1:-1]}={','.join(map(str, want))} has a negative dim")
            if tt.HasField("shape"):
                dims = tt.shape.dim
                if len(dims) != len(want):
                    raise AttncError(
                        f"{src}: input {shown(inp.name)} has rank {len(dims)}, --input-shape gives {len(want)} dims"
                    )
                for i, (d, w) in enumerate(zip(dims, want)):
                    if d.HasField("dim_value") and d.dim_value != w:
                        raise AttncError(
                            f"{src}: input {shown(inp.name)} has dim {i} = {d.dim_value}, --input-shape gives {w}"
                        )
            tt.shape.Clear()
            for w in want:
                tt.shape.dim.add().dim_value = w
            continue
        if not tt.HasField("shape"):
            raise AttncError(f"{src}: input {shown(inp.name)} has no shape; bind it with --input-shape {shown(inp.name)[1:-1]}=...")
        for i, d in enumerate(tt.shape.dim):
            if not d.HasField("dim_value"):
                sym = d.dim_param or "?"
                raise AttncError(
                    f"{src}: input {shown(inp.name)} has symbolic dim {shown(sym, 30)} (dim {i}); "
                    f"bind it with --input-shape {shown(inp.name)[1:-1]}=..."
                )


class Importer:
    """Builds ``@main`` from one checked, shape-bound ONNX graph."""

    def __init__(
        self, model: onnx.ModelProto, opsets: dict[str, int], src: str, known_inputs: Mapping[str, np.ndarray]
    ):
        self.model = model
        self.known_inputs = known_inputs
        self.graph = model.graph
        self.opsets = opsets
        self.src = src
        self.block = Block()
        self.env: dict[str, Val] = {}
        # materialised known values: by ONNX name, and small ones by content
        self._by_name: dict[str, SSAValue] = {}
        self._by_content: dict[tuple, SSAValue] = {}
        self._built: list[Operation] = []  # ops emitted for the current node
        # the types shape inference gave the values (the size of a result before it is folded)
        self.declared: dict[str, onnx.TypeProto] = {v.name: v.type for v in [*self.graph.value_info, *self.graph.output]}
        self.used: set[str] = {o.name for o in self.graph.output}
        for n in self.graph.node:
            self.used.update(i for i in n.input if i)

    # -- values -----------------------------------------------------------
    def emit(self, op: Operation) -> SSAValue:
        self.block.add_op(op)
        self._built.append(op)
        return op.results[0]

    def materialize(self, arr: np.ndarray, name: str | None = None, elt=None) -> SSAValue:
        """A ``sparse.constant`` holding ``arr`` (deduplicated)."""
        if name is not None and name in self._by_name:
            return self._by_name[name]
        key = None
        if arr.size <= 4096:
            key = (arr.dtype.str, arr.dtype.name, arr.shape, str(elt), np.ascontiguousarray(arr).tobytes())
            if key in self._by_content:
                return self._by_content[key]
        v = self.emit(const_op(arr, elt))
        if key is not None:
            self._by_content[key] = v
        if name is not None:
            self._by_name[name] = v
        return v

    def value(self, name: str) -> SSAValue:
        v = self.env[name]
        if isinstance(v, np.ndarray):
            return self.materialize(v, name)
        return v

    # -- graph ----------------------------------------------------------------
    def run(self) -> ModuleOp:
        g = self.graph
        for t in g.initializer:
            dims = list(t.dims)
            check_shape(dims, f"{self.src}: initializer {shown(t.name)} (shape {'x'.join(map(str, dims))})")
            try:
                self.env[t.name] = numpy_helper.to_array(t)
            except Exception as e:  # data that does not match its dims or type
                raise AttncError(f"{self.src}: initializer {shown(t.name)} is malformed: {_first_line(e)}") from None
        if len(g.sparse_initializer):
            raise AttncError(f"{self.src}: sparse initializers are not supported")
        args = []
        in_names = []
        for inp in g.input:
            if inp.name in self.env:
                continue
            tt = inp.type.tensor_type
            elt = onnx_elt(tt.elem_type, f"{self.src}: input {shown(inp.name)}")
            if inp.name in self.known_inputs:
                self.env[inp.name] = np.asarray(self.known_inputs[inp.name]).astype(np_of_elt(elt))
                continue
            dims = [d.dim_value for d in tt.shape.dim]
            check_shape(dims, f"{self.src}: input {shown(inp.name)} (shape {'x'.join(map(str, dims))})")
            ty = tensor(dims, elt)
            arg = self.block.insert_arg(ty, len(self.block.args))
            args.append(ty)
            in_names.append(inp.name)
            self.env[inp.name] = arg
        for node in g.node:
            self.import_node(node)
        outs = []
        for o in g.output:
            if o.name not in self.env:
                raise AttncError(f"{self.src}: graph output {shown(o.name)} is produced by no node")
            outs.append(self.value(o.name))
        self.block.add_op(func.ReturnOp(*outs))
        fn = func.FuncOp("main", FunctionType.from_lists(args, [v.type for v in outs]), Region(self.block))
        set_io_names(fn, in_names, [o.name for o in g.output])
        module = ModuleOp([fn])
        try:
            module.verify()
        except VerifyException as e:
            raise AttncError(f"{self.src}: the imported IR does not verify: {_first_line(e)}") from e
        return module

    def describe(self, node: onnx.NodeProto) -> str:
        dom = node.domain or ""
        ver = self.opsets.get(dom if dom != "ai.onnx" else "", "?")
        return f"node {shown(node.name or node.output[0])} ({shown(node.op_type, 40)[1:-1]}, domain {shown(dom, 40)}, opset {ver})"

    def import_node(self, node: onnx.NodeProto) -> None:
        try:
            self._import_node(node)
        except AttncError as e:
            msg = str(e)
            if msg.startswith(self.src):
                raise
            raise type(e)(f"{self.src}: {self.describe(node)}: {msg}") from e
        except Exception as e:
            if _debug():
                raise
            raise AttncError(f"{self.src}: {self.describe(node)}: {type(e).__name__}: {_first_line(e)}") from e

    def _import_node(self, node: onnx.NodeProto) -> None:
        for i in node.input:
            if i and i not in self.env:
                raise AttncError(f"input {shown(i)} is produced by no earlier node")
        default = node.domain in DEFAULT_DOMAINS
        ins = [self.env[i] if i else None for i in node.input]
        unfolded = None  # the bytes of a result too large to fold
        if default and node.op_type not in NO_FOLD and all(x is None or isinstance(x, np.ndarray) for x in ins):
            if node.input or node.op_type in FOLD_WITHOUT_INPUTS:
                # a Constant's value is in the file already; anything else is computed, so its size is checked
                # before it is (from shape inference, or from the inputs of the ops that make big from small)
                size = None if node.op_type in FOLD_WITHOUT_INPUTS else fold.result_bytes(node, ins, self.declared)
                if size is None or size <= limits.FOLD_BYTES.value():
                    outs = fold.evaluate(node, ins, {"": self.opsets[""]})
                    size = sum(o.nbytes for o in outs if isinstance(o, np.ndarray))
                    if node.op_type in FOLD_WITHOUT_INPUTS or size <= limits.FOLD_BYTES.value():
                        self._bind(node, outs)
                        return
                unfolded = size  # too large: the op stays in the graph
        handler = OPS.get(node.op_type) if default else DOMAIN_OPS.get((node.domain, node.op_type))
        if unfolded is not None and (handler is None or getattr(handler, "needs_known", False)):
            raise AttncError(
                f"its result ({unfolded:,} bytes) is too large to fold at compile time (the {limits.FOLD_BYTES.name} "
                f"limit is {limits.FOLD_BYTES.value():,} bytes; set {limits.FOLD_BYTES.env} to raise it), "
                f"and {node.op_type} has no runtime lowering"
            )
        if handler is None:
            raise AttncError(f"{self.src}: {self.describe(node)} is not supported{_closest(node.op_type)} "
                             f"(docs/onnx.md lists the {len(supported_ops())} ops attnc imports)")
        self._built = []
        outs = handler(Node(node, self, ins))
        # verify what this node built here, so an inconsistency names the node; no result may declare more
        # elements than a tensor may have
        for op in self._built:
            for t in op.result_types:
                if isinstance(t, TensorType):
                    check_shape(t.get_shape(), f"its result type {shown(t, 80)}")
            op.verify()
        self._bind(node, outs)

    def _bind(self, node: onnx.NodeProto, outs: Sequence[Val | None]) -> None:
        for name, v in zip(node.output, outs):
            if name:
                if v is None:
                    if name in self.used:
                        raise AttncError(f"output {shown(name)} is not supported")
                    continue
                self.env[name] = np.asarray(v) if isinstance(v, np.generic) else v
        for name in node.output[len(outs) :]:
            if name and name in self.used:
                raise AttncError(f"output {shown(name)} is not supported")


#: never evaluated at compile time even with known inputs (random or stateful)
NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
#: nodes without inputs that still have a known value
FOLD_WITHOUT_INPUTS = {"Constant"}


def import_onnx(
    model: str | os.PathLike | onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    name: str | None = None,
    known_inputs: Mapping[str, np.ndarray] | None = None,
) -> ModuleOp:
    """Import an ONNX model (path or proto) into a verified sparse-dialect module.

    ``known_inputs`` binds graph inputs to values: they become constants (and leave
    ``@main``'s arguments), so shape subgraphs that read them fold.
    """
    if isinstance(model, onnx.ModelProto):
        src = name or model.graph.name or "<model>"
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        src = name or str(model)
        proto = load_model(model)
    _check(proto, src)
    opsets = _check_opsets(proto, src)
    if opsets[""] < UPGRADE_TO:
        proto = _upgrade(proto, src)
        opsets = _check_opsets(proto, src)
    _check_ranges(proto, src)
    proto = _infer(proto, src)
    known = dict(known_inputs or {})
    shapes = {k: list(np.shape(v)) for k, v in known.items()}
    shapes.update(input_shapes or {})
    _bind_shapes(proto, shapes, src)
    proto = _infer(proto, src)
    return Importer(proto, opsets, src, known).run()

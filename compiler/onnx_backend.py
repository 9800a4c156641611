"""ONNX backend API (``onnx.backend.base``) for attnc, so ``onnx.backend.test.BackendTest``
runs ONNX's own operator tests against it, as it does for onnxruntime.

    rep = ReferenceBackend.prepare(model)
    outputs = rep.run([x, y])          # in graph order, with the ONNX output dtypes

``ReferenceBackend`` imports with the ONNX frontend and runs the reference
interpreter; ``SimulatorBackend`` compiles the imported model for ``cloud``, encodes
the bitstream and runs the decoded bytes on the bundled simulator. Both subclass
:class:`AttncBackend` and provide their own ``execute``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType
from xdsl.dialects.builtin import ModuleOp

from attnc.errors import AttncError


class AttncRep(BackendRep):
    """A prepared model: the imported module and the ONNX graph's I/O signature.

    ONNX test graphs often feed shape operands (Reshape's shape, Slice's starts,
    Trilu's k) as graph inputs, which attnc needs at compile time. When the plain
    import fails for that reason the model is imported again at ``run`` time with its
    integer, bool and scalar inputs bound to the given values (one module per distinct value).
    """

    def __init__(
        self, model: onnx.ModelProto, backend: type[AttncBackend], module: ModuleOp | None, **import_kw: Any
    ):
        self.model = model
        self.backend = backend
        self.module = module
        self.import_kw = import_kw
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_names = [o.name for o in model.graph.output]
        self.output_dtypes = [
            helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in model.graph.output
        ]
        self._specialised: dict[bytes, ModuleOp] = {}

    def _module_for(self, named: dict[str, np.ndarray]) -> ModuleOp:
        if self.module is not None:
            return self.module
        from attnc.frontend.onnx import import_onnx

        # integer/bool inputs and scalars: what shape operands, pad values and Range bounds are
        known = {k: v for k, v in named.items() if v.dtype.kind in "iub" or v.size == 1}
        key = b"".join(k.encode() + v.dtype.str.encode() + str(v.shape).encode() + v.tobytes() for k, v in known.items())
        if key not in self._specialised:
            self._specialised[key] = import_onnx(self.model, known_inputs=known, **self.import_kw)
        return self._specialised[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        from onnx import numpy_helper

        if isinstance(inputs, Mapping):
            args = [inputs[n] for n in self.input_names]
        else:
            if isinstance(inputs, (np.ndarray, onnx.TensorProto)):
                inputs = [inputs]
            args = list(inputs)
            if len(args) != len(self.input_names):
                raise AttncError(f"the model takes {len(self.input_names)} inputs, got {len(args)}")
        args = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x) for x in args]
        named = dict(zip(self.input_names, args, strict=True))
        module = self._module_for(named)
        from attnc.ir import io_names, main_func

        wanted, _ = io_names(main_func(module))
        outs = self.backend.execute(module, {k: named[k] for k in wanted})
        return tuple(np.asarray(outs[n]).astype(dt) for n, dt in zip(self.output_names, self.output_dtypes))


class AttncBackend(Backend):
    """Shared part of the attnc backends: CPU only, models imported by the ONNX frontend."""

    @classmethod
    def execute(cls, module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an imported model; each concrete backend says how (interpreter, simulator)."""
        raise TypeError(f"{cls.__name__} is the shared base of the attnc backends and runs no model itself")

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> AttncRep:
        from attnc.frontend.onnx import import_onnx

        from attnc.frontend.onnx_ops import NotKnownError

        if not cls.supports_device(device):
            raise AttncError(f"device {device} is not supported (only CPU)")
        import_kw = {"input_shapes": kwargs["input_shapes"]} if "input_shapes" in kwargs else {}
        try:
            module: ModuleOp | None = import_onnx(model, **import_kw)
        except NotKnownError:
            module = None  # specialise on the integer inputs at run time
        return AttncRep(model, cls, module, **import_kw)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Sequence[np.ndarray],
        device: str = "CPU",
        outputs_info: Sequence[tuple[Any, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, ...]:
        """Run one node by wrapping it in a one-node model typed from the inputs."""
        arrays = [np.asarray(x) for x in inputs]
        names = [n for n in node.input if n]
        graph_inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), list(x.shape))
            for n, x in zip(names, arrays)
        ]
        if outputs_info is not None:
            graph_outputs = [
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), list(shp))
                for n, (dt, shp) in zip(node.output, outputs_info)
            ]
        else:
            graph_outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        if outputs_info is None:  # type the outputs from ONNX shape inference
            model = onnx.shape_inference.infer_shapes(model)
            typed = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
            del model.graph.output[:]
            model.graph.output.extend(typed[n] for n in node.output if n)
        return cls.run_model(model, arrays, device)


class ReferenceBackend(AttncBackend):
    """Runs models on attnc's reference interpreter."""

    @classmethod
    def execute(cls, module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from attnc.interpreter import interpret

        return interpret(module, inputs)


prepare = ReferenceBackend.prepare
run_model = ReferenceBackend.run_model
run_node = ReferenceBackend.run_node
supports_device = ReferenceBackend.supports_device


class SimulatorBackend(AttncBackend):
    """Runs models on the bundled simulator: the imported model goes through the default frontend
    pipeline, lower-to-dataflow and place-route for ``arch`` (``cloud`` unless a subclass says
    otherwise), is encoded to a bitstream, and the simulator executes the decoded bytes alone.

    Placement tries the greedy heuristic first and CP-SAT (``time_limit`` seconds) only when the
    heuristic finds no mapping. Bitstreams are cached per imported module."""

    arch = "cloud"
    time_limit = 5.0
    _bitstreams: weakref.WeakKeyDictionary[ModuleOp, bytes] = weakref.WeakKeyDictionary()

    @classmethod
    def bitstream(cls, module: ModuleOp) -> bytes:
        """The encoded bitstream of an imported module (compiled on first use)."""
        data = cls._bitstreams.get(module)
        if data is None:
            from attnc.pipeline import DEFAULT_PIPELINE, compile_to_bitstream, run_pipeline

            try:
                work = module.clone()
                run_pipeline(work, DEFAULT_PIPELINE)
                data, _ = compile_to_bitstream(work, cls.arch, heuristic_only=True)
            except AttncError:
                work = module.clone()
                run_pipeline(work, DEFAULT_PIPELINE)
                data, _ = compile_to_bitstream(work, cls.arch, time_limit=cls.time_limit)
            cls._bitstreams[module] = data
        return data

    @classmethod
    def execute(cls, module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from attnc.backend.bitstream import decode
        from attnc.simulator.functional import run

        return run(decode(cls.bitstream(module), source="<compiled bitstream>"), inputs)

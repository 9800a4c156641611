"""ONNX backend API (``onnx.backend.base``) for attnc, so ``onnx.backend.test.BackendTest``
runs ONNX's own operator tests against it, as it does for onnxruntime.

    rep = ReferenceBackend.prepare(model)
    outputs = rep.run([x, y])          # in graph order, with the ONNX output dtypes

``ReferenceBackend`` imports with the ONNX frontend and runs the reference
interpreter. A backend that runs compiled bitstreams on the simulator only has to
subclass :class:`AttncBackend` and provide its own ``execute``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep, Device, DeviceType
from xdsl.dialects.builtin import ModuleOp

from attnc.errors import AttncError


class AttncRep(BackendRep):
    """A prepared model: the imported module and the ONNX graph's I/O signature."""

    def __init__(self, module: ModuleOp, model: onnx.ModelProto, backend: type[AttncBackend]):
        from attnc.ir import io_names, main_func

        self.module = module
        self.backend = backend
        self.input_names, self.output_names = io_names(main_func(module))
        self.output_dtypes = [
            helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in model.graph.output
        ]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            args = [np.asarray(inputs[n]) for n in self.input_names]
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            args = [np.asarray(x) for x in inputs]
            if len(args) != len(self.input_names):
                raise AttncError(f"the model takes {len(self.input_names)} inputs, got {len(args)}")
        named = dict(zip(self.input_names, args, strict=True))
        outs = self.backend.execute(self.module, named)
        return tuple(np.asarray(outs[n]).astype(dt) for n, dt in zip(self.output_names, self.output_dtypes))


class AttncBackend(Backend):
    """Shared part of the attnc backends: CPU only, models imported by the ONNX frontend."""

    @classmethod
    def execute(cls, module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> AttncRep:
        from attnc.frontend.onnx import import_onnx

        if not cls.supports_device(device):
            raise AttncError(f"device {device} is not supported (only CPU)")
        module = import_onnx(model, kwargs.get("input_shapes"))
        return AttncRep(module, model, cls)

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
        if outputs_info is None:
            model = onnx.shape_inference.infer_shapes(model)
            graph_outputs = list(model.graph.output)
            known = {v.name: v for v in (*model.graph.value_info, *model.graph.output)}
            del model.graph.output[:]
            model.graph.output.extend(known[n] for n in node.output if n)
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

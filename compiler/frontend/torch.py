"""PyTorch frontend: an ``nn.Module`` (or a saved ``torch.export`` program) to a
sparse-dialect module, through ONNX.

    module = import_module(model.eval(), (x,))                  # dynamo exporter, opset 18
    module = import_module(model, (x,), dynamo=False, opset=17)  # TorchScript exporter
    module = load_exported_program("model.pt2")

The model is exported in memory with ``torch.onnx.export``, imported with
``attnc.frontend.onnx.import_onnx`` and then run through ``canonicalize,raise-attention``,
so every attention in the model is one ``sparse.attention``. torch is an optional
dependency and is imported only when one of these functions is called.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnc.errors import AttncError
from attnc.limits import shown

if TYPE_CHECKING:
    import onnx
    from xdsl.dialects.builtin import ModuleOp

#: the passes that follow the import (the same as the default of ``attnc compile``)
PIPELINE = "canonicalize,raise-attention"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise AttncError("PyTorch is not installed; pip install 'attnc[torch]'") from None
    return torch


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return shown(text.splitlines()[0], 200)[1:-1] if text else type(e).__name__


@contextlib.contextmanager
def _quiet():
    # the exporters print progress and warn about deprecations and unused features
    # (through print, warnings and torch's loggers)
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(
    module: Any,
    args: Any,
    *,
    dynamo: bool = True,
    opset: int = 18,
    input_names: Sequence[str] | None = None,
    name: str | None = None,
) -> onnx.ModelProto:
    """Export ``module(*args)`` (an ``nn.Module`` or an ``ExportedProgram``) to an ONNX
    model in memory, with the dynamo exporter or (``dynamo=False``) TorchScript."""
    torch = _torch()
    import onnx

    src = name or f"<torch {type(module).__name__}>"
    if not isinstance(args, tuple):
        args = (args,)
    names = list(input_names) if input_names is not None else None
    try:
        with _quiet():
            if dynamo:
                program = torch.onnx.export(
                    module, args, dynamo=True, opset_version=opset, input_names=names, verbose=False
                )
                if program is None:
                    raise RuntimeError("the exporter returned no program")
                return program.model_proto
            buffer = io.BytesIO()
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=names)
            return onnx.load_from_string(buffer.getvalue())
    except AttncError:
        raise
    except Exception as e:
        exporter = "dynamo" if dynamo else "TorchScript"
        raise AttncError(f"{src}: torch.onnx.export ({exporter}, opset {opset}) failed: {_first_line(e)}") from e


def import_onnx_and_raise(proto: onnx.ModelProto, name: str) -> ModuleOp:
    """Import an exported model and raise its attention patterns."""
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import run_pipeline

    module = import_onnx(proto, name=name)
    run_pipeline(module, PIPELINE)
    return module


def import_module(
    module: Any,
    args: Any,
    *,
    dynamo: bool = True,
    opset: int = 18,
    input_names: Sequence[str] | None = None,
) -> ModuleOp:
    """Export ``module(*args)`` to ONNX, import it and raise its attention patterns.

    ``args`` are example inputs (a tensor or a tuple of tensors); their shapes become
    the static shapes of ``@main``. Put the module in ``eval()`` mode first: the model
    is exported as it is (dropout included when training)."""
    name = f"<torch {type(module).__name__}>"
    proto = export_onnx(module, args, dynamo=dynamo, opset=opset, input_names=input_names, name=name)
    return import_onnx_and_raise(proto, name)


def load_exported_program(path: str | os.PathLike[str], *, opset: int = 18) -> ModuleOp:
    """Import a program saved with ``torch.export.save`` (a ``.pt2`` file)."""
    torch = _torch()
    p = Path(path)
    if not p.exists():
        raise AttncError(f"{p}: no such file")
    if p.is_dir():
        raise AttncError(f"{p}: is a directory, not a saved torch.export program")
    try:
        with _quiet():
            program = torch.export.load(str(p))
    except Exception as e:
        raise AttncError(f"{p}: not a saved torch.export program ({_first_line(e)})") from e
    proto = export_onnx(program, (), dynamo=True, opset=opset, name=str(p))
    return import_onnx_and_raise(proto, str(p))

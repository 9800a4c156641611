"""The pass pipeline driver: parse a pipeline spec, run its passes in memory.

    records = run_pipeline(module, "canonicalize,raise-attention", dump_dir="ir/")

The spec uses xDSL's syntax (``pass-a,pass-b{opt=1 flag}``); names resolve through
``attnc.passes.get_all_passes()``. The module is verified after every pass: a pass
that leaves invalid IR is a compiler bug, reported as ``PassFailure`` naming the
pass, never as a user error. Text IR is produced only for dumps and printing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from attnc.errors import AttncError

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp
    from xdsl.passes import ModulePass

DEFAULT_PIPELINE = "canonicalize,raise-attention,fuse-attention"

#: ``progress(index, total, pass_name)`` is called before each pass runs.
Progress = Callable[[int, int, str], None]


class PassFailure(Exception):
    """A pass crashed or left IR that does not verify: an internal error, not the user's."""


@dataclass(frozen=True)
class PassRecord:
    """One pass that ran: its name, its spec as written back by xDSL, and its wall time."""

    name: str
    spec: str
    seconds: float


def parse_pipeline(spec: str) -> list[ModulePass]:
    """Turn a pipeline spec into pass instances; AttncError on unknown passes or bad options."""
    from xdsl.utils.arg_spec import parse_pipeline as parse_specs
    from xdsl.utils.exceptions import ArgSpecParseError

    from attnc.passes import get_all_passes

    available = get_all_passes()
    try:
        # ArgSpecParseError derives from BaseException, not Exception.
        specs = list(parse_specs(spec))
    except ArgSpecParseError as e:
        detail = str(e).strip().splitlines()[-1].strip()
        raise AttncError(f"bad pipeline '{spec}': {detail}") from None
    passes: list[ModulePass] = []
    for s in specs:
        if s.name not in available:
            raise AttncError(f"unknown pass '{s.name}' in pipeline '{spec}'; known passes: {', '.join(sorted(available))}")
        try:
            cls = available[s.name]()
        except (ImportError, AttributeError) as e:
            raise PassFailure(f"pass '{s.name}' is registered but cannot be loaded: {e}") from e
        try:
            passes.append(cls.from_pass_spec(s))
        except (ValueError, TypeError) as e:
            raise AttncError(f"bad options for pass '{s.name}': {e}") from None
    return passes


def pipeline_spec(passes: Sequence[ModulePass]) -> str:
    """The spec string of a list of passes (the inverse of ``parse_pipeline``)."""
    return ",".join(str(p.pipeline_pass_spec()) for p in passes)


def _verify(module: ModuleOp, after: str) -> None:
    from xdsl.utils.exceptions import DiagnosticException, VerifyException

    try:
        module.verify()
    except (VerifyException, DiagnosticException) as e:
        where = "the input IR does not verify" if after == "input" else f"the IR does not verify after pass '{after}'"
        raise PassFailure(f"{where}: {e}") from e


def _write_text(path: Path, text: str) -> None:
    # Write then rename, so a dump is either complete or absent.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_pipeline(
    module: ModuleOp,
    spec: str | Sequence[ModulePass],
    *,
    dump_dir: str | os.PathLike[str] | None = None,
    print_after: Collection[str] = (),
    print_stream: TextIO | None = None,
    progress: Progress | None = None,
) -> list[PassRecord]:
    """Run the passes of ``spec`` over ``module`` in place and return what ran, with timings.

    ``dump_dir`` receives ``00-input.mlir`` and one numbered ``NN-<pass>.mlir`` per pass;
    ``print_after`` names passes after which the IR is printed to ``print_stream``
    (stderr by default).
    """
    from attnc.ir import make_context, print_module

    passes = parse_pipeline(spec) if isinstance(spec, str) else list(spec)
    names = [p.name for p in passes]
    unknown = [n for n in print_after if n not in names]
    if unknown:
        raise AttncError(
            f"cannot print the IR after pass '{unknown[0]}': it is not in the pipeline ({', '.join(names) or 'empty'})"
        )
    stream = print_stream if print_stream is not None else sys.stderr
    dump = Path(dump_dir) if dump_dir is not None else None
    if dump is not None:
        try:
            dump.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AttncError(f"cannot create the IR dump directory '{dump}': {e.strerror}") from None
        _write_text(dump / "00-input.mlir", print_module(module))

    _verify(module, "input")
    ctx = make_context()
    records: list[PassRecord] = []
    for i, p in enumerate(passes, 1):
        if progress is not None:
            progress(i, len(passes), p.name)
        start = time.perf_counter()
        try:
            p.apply(ctx, module)
        except AttncError:
            raise
        except Exception as e:
            raise PassFailure(f"pass '{p.name}' failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        _verify(module, p.name)
        records.append(PassRecord(p.name, str(p.pipeline_pass_spec()), seconds))
        if dump is not None:
            _write_text(dump / f"{i:02d}-{p.name}.mlir", print_module(module))
        if p.name in print_after:
            stream.write(f"// -----// IR Dump After {p.name} //----- //\n")
            stream.write(print_module(module))
            stream.flush()
    return records

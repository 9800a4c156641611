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
from typing import TYPE_CHECKING, Any, TextIO

from attnc.errors import AttncError
from attnc.limits import shown

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp
    from xdsl.passes import ModulePass

    from attnc.arch import Arch

DEFAULT_PIPELINE = "canonicalize,raise-attention,fuse-attention"
#: what ``backend_passes`` appends to the front-end pipeline for a bitstream
BACKEND_PASSES = ("tile", "fuse-elementwise", "lower-to-dataflow", "place-route")

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
        raise AttncError(f"bad pipeline {shown(spec)}: {shown(detail, 120)[1:-1]}") from None
    passes: list[ModulePass] = []
    for s in specs:
        if s.name not in available:
            raise AttncError(f"unknown pass {shown(s.name)} in pipeline {shown(spec)}; known passes: {', '.join(sorted(available))}")
        try:
            cls = available[s.name]()
        except (ImportError, AttributeError) as e:
            raise PassFailure(f"pass '{s.name}' is registered but cannot be loaded: {e}") from e
        try:
            passes.append(cls.from_pass_spec(s))
        except (ValueError, TypeError) as e:
            raise AttncError(f"bad options for pass '{s.name}': {shown(e, 200)[1:-1]}") from None
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
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C leaves no temporary file
        tmp.unlink(missing_ok=True)
        raise


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


# ---------------------------------------------------------------------------
# the compile driver: what `attnc compile -o OUT.bit`, `attnc run` and the ONNX backend share


def backend_passes(arch: Arch | str | None = None, *, time_limit: float = 10.0, seed: int = 0,
                   heuristic_only: bool = False) -> list[ModulePass]:
    """tile, fuse-elementwise, lower-to-dataflow and place-route for ``arch`` (an ``Arch``, a preset name or a
    YAML path; None is the default array), all given the same ``Arch``. ``tile`` schedules the attentions that
    ``fuse-attention`` (in the default front-end pipeline) marked; unmarked ones are lowered per head."""
    from attnc.arch import resolve_arch
    from attnc.passes.fuse_elementwise import FuseElementwisePass
    from attnc.passes.lower_dataflow import LowerToDataflowPass
    from attnc.passes.placement.place_route import PlaceRoutePass
    from attnc.passes.tile import TilePass

    target = resolve_arch(arch)
    return [
        TilePass(arch=target),
        FuseElementwisePass(arch=target),
        LowerToDataflowPass(arch=target),
        PlaceRoutePass(arch=target, time_limit=time_limit, seed=seed, heuristic_only=heuristic_only),
    ]


def compile_to_bitstream(
    module: ModuleOp,
    arch: Arch | str | None = None,
    *,
    time_limit: float = 10.0,
    seed: int = 0,
    heuristic_only: bool = False,
    meta: dict[str, str] | None = None,
    passes: Sequence[ModulePass] = (),
    **run_options: Any,
) -> tuple[bytes, list[PassRecord]]:
    """Compile ``module`` (in place) to a bitstream in memory: ``passes`` (front-end passes, if any are
    still to run) and the back-end passes for ``arch`` in one pipeline run, then emit and encode.
    ``run_options`` go to ``run_pipeline`` (IR dumps, printing, progress); the bitstream's ``pipeline``
    entry lists the passes run here. Returns the bitstream's bytes and the records of the passes."""
    from attnc.arch import resolve_arch
    from attnc.backend.bitstream import encode
    from attnc.backend.emit import emit_bitstream

    target = resolve_arch(arch)
    back = backend_passes(target, time_limit=time_limit, seed=seed, heuristic_only=heuristic_only)
    records = run_pipeline(module, [*passes, *back], **run_options)
    spec = ",".join(r.spec for r in records)
    return encode(emit_bitstream(module, target, {**(meta or {}), "pipeline": spec})), records


# ---------------------------------------------------------------------------
# --butterfly: butterfly-decompose's options in a command-line friendly form


#: the keys of ``--butterfly`` (butterfly-decompose's options)
BUTTERFLY_KEYS = ("layers", "linears", "fourier", "kind", "block", "factors", "iters")


def butterfly_pass_spec(spec: str) -> str:
    """``--butterfly layers=0,1,linears=ffn,block=3`` as a butterfly-decompose pass spec: comma-separated
    ``key=value`` pairs, where an item without ``=`` continues the previous key's list."""
    values: dict[str, list[str]] = {}
    key = None
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in BUTTERFLY_KEYS:
                raise AttncError(f"--butterfly: unknown key '{key}' (expected {', '.join(BUTTERFLY_KEYS)})")
            if key in values:
                raise AttncError(f"--butterfly: '{key}' is given twice")
            values[key] = [value.strip()]
        elif key is None:
            raise AttncError(f"--butterfly: '{item}' is not key=value (keys: {', '.join(BUTTERFLY_KEYS)})")
        else:
            values[key].append(item)
    opts = []
    for k, vs in values.items():
        if k in ("block", "factors", "iters"):
            if len(vs) != 1 or not vs[0].lstrip("-").isdigit():
                raise AttncError(f"--butterfly: {k} must be an integer, got '{','.join(vs)}'")
            opts.append(f"{k}={vs[0]}")
        else:
            opts.append(f'{k}="{",".join(vs)}"')
    return "butterfly-decompose" + ("{" + " ".join(opts) + "}" if opts else "")


def with_butterfly(passes: list[Any], spec: str | None) -> list[Any]:
    """The pipeline with ``--butterfly``'s pass before fuse-attention (or at its end)."""
    if spec is None:
        return passes
    if any(p.name == "butterfly-decompose" for p in passes):
        raise AttncError("--butterfly: the pipeline (-p) already has butterfly-decompose")
    try:
        (bfly,) = parse_pipeline(butterfly_pass_spec(spec))
    except AttncError as e:
        raise AttncError(f"--butterfly: {e}") from None
    at = next((i for i, p in enumerate(passes) if p.name in ("fuse-attention", "tile", "lower-to-dataflow")), len(passes))
    return passes[:at] + [bfly] + passes[at:]

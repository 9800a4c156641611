"""The ``attnc`` command line.

Only click and the standard library are imported at module level: ``attnc --help``
must answer fast, so xdsl, onnx, numpy and torch are imported inside the commands
that need them.

Errors: an ``AttncError``, a click usage error or running out of memory or recursion
depth on an input prints ``attnc: error: <msg>`` (one escaped line of at most
attnc.limits.MESSAGE_CHARS characters) and exits 2; Ctrl-C exits 130; anything else
is a bug and prints ``attnc: internal error: ...`` and exits 1. ``--debug`` (or
``ATTNC_DEBUG=1``) adds the Python traceback and changes nothing else. Outputs are
checked before any work (``check_outputs``) and written atomically.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from attnc import __version__, limits
from attnc.arch import DEFAULT_ARCH
from attnc.arch import PRESETS as ARCH_PRESETS
from attnc.errors import AttncError
from attnc.files import replacing
from attnc.pipeline import (
    BACKEND_PASSES,
    BUTTERFLY_KEYS,
    DEFAULT_PIPELINE,
    compile_to_bitstream,
    run_pipeline,
    with_butterfly,
)

if TYPE_CHECKING:
    from xdsl.dialects.builtin import ModuleOp

    from attnc.arch import Arch
    from attnc.pipeline import PassRecord

MODEL_SUFFIXES = (".onnx", ".pt2", ".mlir")

_debug = False


def _debug_on() -> bool:
    return _debug or os.environ.get("ATTNC_DEBUG", "") not in ("", "0")


# ---------------------------------------------------------------------------
# option parsing helpers (plain functions: unit tests call them directly)


def parse_input_shapes(values: Sequence[str]) -> dict[str, list[int]]:
    """``["x=1,128", "mask=1,1,1,128"]`` -> ``{"x": [1, 128], ...}``; AttncError on bad syntax."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        # rpartition: graph names may contain '=', dimensions never do
        name, eq, dims = value.rpartition("=")
        if not eq or not name:
            raise AttncError(f"--input-shape '{value}': expected NAME=D0,D1,... (e.g. input_ids=1,128)")
        try:
            shape = [int(d) for d in dims.split(",")]
        except ValueError:
            raise AttncError(f"--input-shape '{value}': dimensions must be integers separated by commas") from None
        if any(d < 1 for d in shape):
            raise AttncError(f"--input-shape '{value}': dimensions must be positive")
        if name in shapes:
            raise AttncError(f"--input-shape: '{name}' is given twice")
        shapes[name] = shape
    return shapes


def check_arch(arch: str | None) -> Arch | None:
    """``--arch`` is a preset name or a YAML file; load and validate it (attnc.arch, imported lazily)."""
    if arch is None:
        return None
    from attnc.arch import load_arch

    try:
        return load_arch(arch)
    except AttncError as e:
        raise AttncError(f"--arch {e}") from None


def check_pipeline(spec: str, print_after: Sequence[str] = ()) -> list[Any]:
    """Parse ``-p`` up front so a typo fails before any import or compile work."""
    from attnc.pipeline import parse_pipeline

    try:
        passes = parse_pipeline(spec)
    except AttncError as e:
        raise AttncError(f"-p/--pipeline: {e}") from None
    names = [p.name for p in passes]
    for name in print_after:
        if name not in names:
            raise AttncError(
                f"--print-ir-after '{name}': no such pass in the pipeline '{spec}' ({', '.join(names) or 'empty'})"
            )
    return passes


_butterfly_option = click.option(
    "--butterfly",
    "butterfly",
    metavar="SPEC",
    help="Make linear layers butterflies and attention blocks Fourier mixing (butterfly-decompose, before "
    "fuse-attention), e.g. layers=0,1,linears=qkv,out,ffn,fourier=2,block=3. Keys: " + ", ".join(BUTTERFLY_KEYS) + ".",
)


# ---------------------------------------------------------------------------
# loading models, writing files


def check_model(path: str, input_shapes: dict[str, list[int]] | None = None) -> str:
    """The model's format (its suffix), checked against the options given with it."""
    suffix = Path(path).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise AttncError(f"{path}: unknown model format '{suffix or path}' (expected {', '.join(MODEL_SUFFIXES)})")
    if input_shapes and suffix != ".onnx":
        raise AttncError(f"--input-shape applies only to .onnx models; {path} has static shapes")
    return suffix


def load_model(path: str, input_shapes: dict[str, list[int]] | None = None) -> ModuleOp:
    """Import an .onnx, .pt2 or .mlir file into a sparse-dialect module."""
    suffix = check_model(path, input_shapes)
    if suffix == ".onnx":
        from attnc.frontend.onnx import import_onnx

        return import_onnx(path, input_shapes=input_shapes or {})
    if suffix == ".pt2":
        from attnc.frontend.torch import load_exported_program

        return load_exported_program(path)
    from attnc.ir import parse_module

    return parse_module(_read_text(path), name=path)


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AttncError(f"{path}: cannot read: {e}") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _writable_dir(directory: Path, option: str, path: str) -> None:
    if not directory.is_dir():
        raise AttncError(f"{option} {limits.shown(path, 120)}: directory {limits.shown(directory, 120)} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise AttncError(f"{option} {limits.shown(path, 120)}: directory {limits.shown(directory, 120)} is not writable")


def _check_file_target(path: str, option: str, inputs: Sequence[tuple[str, str | None]]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise AttncError(f"{option} {limits.shown(path, 120)}: cannot use it: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise AttncError(f"{option} {limits.shown(path, 120)}: is a directory; name a file")
        if not stat.S_ISREG(st.st_mode):
            raise AttncError(f"{option} {limits.shown(path, 120)}: exists and is not a regular file (a device, "
                             "fifo or socket); attnc writes only regular files")  # fmt: skip
        for what, source in inputs:
            if source and source != "-" and _same_file(path, source):
                raise AttncError(f"{option} {limits.shown(path, 120)}: is the same file as {what} "
                                 f"{limits.shown(source, 120)}; refusing to overwrite an input")  # fmt: skip
    target = Path(path)
    _writable_dir(target.parent if str(target.parent) else Path("."), option, path)


def check_outputs(outputs: Sequence[tuple[str, str | None]], inputs: Sequence[tuple[str, str | None]] = (),
                  dirs: Sequence[tuple[str, str | None, Sequence[str]]] = ()) -> None:
    """Refuse, before any work, outputs that would clobber an input or each other, replace a directory or a
    special file (device, fifo), or land in a missing or read-only directory.

    ``outputs`` and ``inputs`` are (option, path) pairs (a None path is skipped, '-' is stdout/stdin);
    ``dirs`` are output directories as (option, path, names of the files written into it)."""
    files = [(option, path) for option, path in outputs if path is not None and path != "-"]
    for option, path, names in dirs:
        if path is None:
            continue
        d = Path(path)
        if d.exists() and not d.is_dir():
            raise AttncError(f"{option} {limits.shown(path, 120)}: exists and is not a directory")
        if d.is_dir():
            _writable_dir(d, option, path)
            files += [(option, str(d / name)) for name in names]
        else:  # created with its parents: the nearest existing ancestor must take it
            ancestor = d.absolute().parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            _writable_dir(ancestor, option, path)
    for option, path in files:
        _check_file_target(path, option, inputs)
    seen: list[tuple[str, str]] = []
    for option, path in files:
        real = os.path.realpath(path)
        for other_option, other in seen:
            if real == os.path.realpath(other) or _same_file(path, other):
                raise AttncError(f"{option} {limits.shown(path, 120)}: is also the file of {other_option}; "
                                 "name different files")  # fmt: skip
        seen.append((option, path))


def input_files(model: str | None = None, arch: str | None = None,
                inputs_path: str | None = None) -> list[tuple[str, str | None]]:
    """The files a command reads, as check_outputs takes them."""
    return [("MODEL", model), ("--arch", arch if arch is not None and arch not in ARCH_PRESETS else None),
            ("--inputs", inputs_path)]


def dump_names(pass_names: Sequence[str]) -> list[str]:
    """The files --dump-ir-after-all writes for these passes."""
    return ["00-input.mlir"] + [f"{i:02d}-{name}.mlir" for i, name in enumerate(pass_names, 1)]


@contextmanager
def _atomic_temp(path: str, option: str) -> Iterator[tuple[int, str]]:
    """``attnc.files.replacing`` for an output option: its directory checked first, and the check made before
    the work made again before the rename (something may have appeared at the path meanwhile)."""
    target = Path(path)
    _writable_dir(target.parent if str(target.parent) else Path("."), option, path)
    with replacing(target) as (fd, tmp):
        yield fd, tmp
        if target.exists() and not target.is_file():
            raise AttncError(f"{option} {limits.shown(path, 120)}: exists and is not a regular file")


@contextmanager
def atomic_output(path: str, option: str = "-o/--output", mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds,
    so an error or an interrupt never leaves a half-written output (nor the temporary file). The file
    gets the permissions of any new file (0666 less the umask), not mkstemp's 0600."""
    with _atomic_temp(path, option) as (fd, _tmp), os.fdopen(fd, mode) as f:
        yield f


@contextmanager
def atomic_path(path: str, option: str) -> Iterator[str]:
    """``atomic_output`` for a writer that takes a file name: yields the temporary file's name."""
    with _atomic_temp(path, option) as (fd, tmp):
        os.close(fd)
        yield tmp


def check_npz_names(path: str, names: Iterable[str], option: str = "-o/--output") -> None:
    """Each name must be one plain member of an .npz (no path separator, NUL, '..' or empty name)."""
    from attnc.simulator.io import is_npz_member_name

    for name in names:
        if not is_npz_member_name(name):
            raise AttncError(f"{option} {limits.shown(path, 120)}: output name {limits.shown(name)} cannot be an "
                             "npz key (empty, '..', or a path separator or NUL in it); rename the graph output")  # fmt: skip


def save_npz(path: str, arrays: dict[str, Any], option: str = "-o/--output") -> None:
    """Save ``arrays`` as an .npz keyed by their names (as np.savez, atomically). A name that would not be one
    plain member of the archive (a path separator, '..', NUL, empty) is refused: names come from the model."""
    import zipfile

    import numpy as np

    check_npz_names(path, arrays, option)
    with atomic_output(path, option, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _progress() -> Callable[[int, int, str], None] | None:
    """Per-pass progress lines on stderr, only when a person is watching."""
    if not sys.stderr.isatty():
        return None

    def show(i: int, n: int, name: str) -> None:
        click.echo(f"attnc: [{i}/{n}] {name}", err=True)

    return show


def _run_pipeline(module: ModuleOp, passes: list[Any], dump_dir: str | None, print_after: Sequence[str]) -> list[PassRecord]:
    return run_pipeline(
        module, passes, dump_dir=dump_dir, print_after=tuple(print_after), print_stream=sys.stderr, progress=_progress()
    )


# ---------------------------------------------------------------------------
# the report of `attnc compile --report`


def _shape(value: Any) -> str:
    t = value.type
    return "x".join(str(d) for d in t.get_shape()) + f"x{t.element_type}"


def format_report(module: ModuleOp, records: Sequence[PassRecord], import_seconds: float) -> str:
    """Ops by kind, the attention ops with their shapes, and the time of each step."""
    return format_ops(module) + format_times(records, import_seconds)


def format_ops(module: ModuleOp) -> str:
    """Ops by kind and the attention ops with their shapes."""
    from attnc.dialects.sparse import AttentionOp

    kinds: Counter[str] = Counter()
    attention: list[AttentionOp] = []
    for op in module.walk():
        if op is module:
            continue
        kinds[op.name] += 1
        if isinstance(op, AttentionOp):
            attention.append(op)
    lines = ["ops by kind:"]
    width = max((len(k) for k in kinds), default=0)
    for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {kind:<{width}}  {n:>5}")
    lines.append(f"sparse.attention ops: {len(attention)}")
    for i, op in enumerate(attention):
        mask = _shape(op.mask) if op.mask is not None else "none"
        causal = "yes" if op.causal is not None else "no"
        if op.causal is not None and op.causal_offset.value.data:
            causal += f" (offset {op.causal_offset.value.data})"
        lines.append(
            f"  #{i}: q {_shape(op.q)}, k {_shape(op.k)}, v {_shape(op.v)}, heads {op.heads.value.data}, "
            f"kv_heads {op.kv_heads.value.data}, causal {causal}, mask {mask}, scale {op.scale.value.data:.6g}"
            + (f", softcap {op.softcap.value.data:g}" if op.softcap.value.data else "")
        )
    return "\n".join(lines) + "\n"


def format_times(records: Sequence[PassRecord], import_seconds: float) -> str:
    lines = ["time:"]
    steps = [("import", import_seconds)] + [(r.spec, r.seconds) for r in records]
    width = max(len(s) for s, _ in steps)
    for step, seconds in steps:
        lines.append(f"  {step:<{width}}  {seconds:8.3f} s")
    lines.append(f"  {'total':<{width}}  {sum(s for _, s in steps):8.3f} s")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# commands


class _AttncGroup(click.Group):
    # Keep commands in the order they are defined (the order of the docs), not sorted.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    global _debug
    _debug = _debug or value
    return value


@click.group(cls=_AttncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="attnc", message="%(prog)s %(version)s")
@click.option(
    "--debug",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_set_debug,
    help="Show Python tracebacks on errors (also ATTNC_DEBUG=1).",
)
def cli() -> None:
    """attnc: compile transformer attention graphs (ONNX, PyTorch) for a reconfigurable dataflow array.

    Models are .onnx files, .pt2 files (torch.export) or .mlir text in the sparse dialect.
    """


#: --debug is also taken after the command (``attnc compile --debug ...``), as ATTNC_DEBUG=1 is taken
#: anywhere: the same run, with a traceback, never a usage error instead
_command_debug_option = click.option(
    "--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set_debug, hidden=True
)


#: --inputs of the commands that make seeded random inputs without it
_random_inputs_option = click.option(
    "--inputs",
    "inputs_path",
    metavar="IN.npz",
    type=click.Path(exists=True, dir_okay=False),
    help="Input arrays keyed by graph input names. Without it: seeded random inputs.",
)


_arch_option = click.option(
    "--arch",
    default=DEFAULT_ARCH,
    show_default=True,
    metavar="NAME|FILE",
    help=f"Target array: a preset ({', '.join(ARCH_PRESETS)}) or a YAML file.",
)
#: the largest --time-limit (a day): the solver's budget, not a wait without end
MAX_TIME_LIMIT = 86400.0
#: --seed: what CP-SAT's random_seed and numpy's generators both take
MAX_SEED = 2**31 - 1


def _check_time_limit(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= MAX_TIME_LIMIT):
        raise AttncError(f"--time-limit {value:g}: must be a number of seconds in (0, {MAX_TIME_LIMIT:g}]")
    return value


_time_limit_option = click.option(
    "--time-limit", default=10.0, show_default=True, type=float, callback=_check_time_limit,
    help="Seconds for CP-SAT placement and routing.",
)


def _seed_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
                        help=help + f" 0..{MAX_SEED}.")  # fmt: skip
_heuristic_option = click.option(
    "--heuristic-only", is_flag=True, help="Place and route with the greedy heuristic alone, no CP-SAT."
)
_input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME=D0,D1,...",
    help="Bind the dynamic dimensions of an ONNX input (repeatable), e.g. input_ids=1,128.",
)


def _pipeline_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "-p",
        "--pipeline",
        default=default,
        show_default=default or "none",
        metavar="PIPELINE",
        help="Comma-separated passes, xDSL syntax: pass-a,pass-b{opt=1}. 'attnc opt --help' lists them.",
    )


_dump_option = click.option(
    "--dump-ir-after-all",
    "dump_dir",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Write the IR before the pipeline and after every pass to DIR/NN-<pass>.mlir.",
)
_print_after_option = click.option(
    "--print-ir-after",
    "print_after",
    multiple=True,
    metavar="PASS",
    help="Print the IR to stderr after PASS (repeatable).",
)
_model_argument = click.argument("model", type=click.Path(exists=True, dir_okay=False, allow_dash=False))


@cli.command("compile")
@_command_debug_option
@_model_argument
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUT.bit|OUT.mlir",
    help="OUT.bit: the configuration bitstream (the whole back end runs). OUT.mlir: the IR after -p as text.",
)
@_arch_option
@_input_shape_option
@_pipeline_option(DEFAULT_PIPELINE)
@_time_limit_option
@_seed_option("Solver seed (results are reproducible for a seed).")
@_heuristic_option
@_butterfly_option
@_dump_option
@_print_after_option
@click.option(
    "--report",
    is_flag=True,
    help="Print what was compiled (attention ops, kernels per tile kind, utilisation, solver figures, pass times) "
    "and, for a bitstream, draw the placed array to OUT.svg.",
)
def compile_command(
    model: str,
    output: str,
    arch: str,
    input_shapes: tuple[str, ...],
    pipeline: str,
    time_limit: float,
    seed: int,
    heuristic_only: bool,
    butterfly: str | None,
    dump_dir: str | None,
    print_after: tuple[str, ...],
    report: bool,
) -> None:
    """Compile MODEL (.onnx, .pt2 or .mlir) for the array.

    With -o OUT.bit the frontend pipeline (-p) is followed by lower-to-dataflow
    and place-route for --arch, and the placed configuration is written as a
    bitstream ('attnc inspect' reads it). With -o OUT.mlir only -p runs and its
    IR is written as text (add the back-end passes to -p to see their IR).
    """
    shapes = parse_input_shapes(input_shapes)
    check_model(model, shapes)
    target = check_arch(arch)
    suffix = Path(output).suffix
    if suffix not in (".bit", ".mlir"):
        raise AttncError(f"-o/--output '{output}': name a bitstream (*.bit) or textual IR (*.mlir)")
    passes = with_butterfly(check_pipeline(pipeline, ()), butterfly)
    bitstream = suffix == ".bit"
    known = [p.name for p in passes] + (list(BACKEND_PASSES) if bitstream else [])
    for name in print_after:
        if name not in known:
            raise AttncError(f"--print-ir-after '{name}': not in the pipeline ({', '.join(known)})")
    outputs = [("-o/--output", output)]
    if report and bitstream:
        outputs.append(("--report", str(Path(output).with_suffix(".svg"))))
    check_outputs(outputs, input_files(model, arch), dirs=[("--dump-ir-after-all", dump_dir, dump_names(known))])

    start = time.perf_counter()
    module = load_model(model, shapes)
    import_seconds = time.perf_counter() - start
    # the attention ops are split by tile and gone once lowered: describe them just before
    frontend_ops: list[str] = []
    base_progress = _progress()

    def progress(i: int, n: int, name: str) -> None:
        if name in ("tile", "lower-to-dataflow") and not frontend_ops:
            frontend_ops.append(format_ops(module) + format_butterfly(module))
        if base_progress is not None:
            base_progress(i, n, name)

    run_options = {"dump_dir": dump_dir, "print_after": print_after, "print_stream": sys.stderr, "progress": progress}
    dumped = f"; IR after each pass in {dump_dir}" if dump_dir else ""
    if not bitstream:
        records = run_pipeline(module, passes, **run_options)
        _write_ir(module, output, dumped)
        if report:
            click.echo(format_butterfly(module), nl=False)
            click.echo(format_report(module, records, import_seconds), nl=False)
        return
    data, records = compile_to_bitstream(module, target, passes=passes, time_limit=time_limit, seed=seed,
                                         heuristic_only=heuristic_only, meta={"model": Path(model).name},
                                         **run_options)  # fmt: skip
    with atomic_output(output, mode="wb") as f:
        f.write(data)
    config, problem, mapping = _placed(module, target)
    click.echo(
        f"attnc: wrote {output} ({len(data)} bytes: {len(problem.kernels)} kernels on "
        f"{len(set(mapping.placement.values()))} tiles of {target.name}, {len(problem.streams)} routed streams, "
        f"mapping {config.attributes['mapping.status'].data}){dumped}",
        err=True,
    )
    if report:
        click.echo("".join(frontend_ops), nl=False)
        _report_bitstream(module, target, output, records, import_seconds)


def _write_ir(module: ModuleOp, output: str, dumped: str) -> None:
    from attnc.ir import print_module

    with atomic_output(output) as f:
        f.write(print_module(module))
    n_attn = sum(op.name == "sparse.attention" for op in module.walk())
    click.echo(f"attnc: wrote {output} ({n_attn} sparse.attention){dumped}", err=True)


def _placed(module: ModuleOp, target: Arch) -> tuple[Any, Any, Any]:
    """The placed configuration of compiled array IR, with its mapping problem and solution."""
    from attnc.dialects.array import ConfigOp
    from attnc.passes.placement.place_route import mapping_from_config

    config = next(op for op in module.ops if isinstance(op, ConfigOp))
    problem, mapping = mapping_from_config(config, target)
    return config, problem, mapping


def _report_bitstream(module: ModuleOp, target: Arch, output: str, records: Sequence[PassRecord],
                      import_seconds: float) -> None:
    """``attnc compile --report`` for a bitstream: schedules, mapping, cost model, pass times, picture."""
    from attnc.cost import estimate, format_cost
    from attnc.passes.placement.picture import draw_mapping
    from attnc.passes.placement.report import format_mapping_report

    config, problem, mapping = _placed(module, target)
    svg = Path(output).with_suffix(".svg")
    with atomic_output(str(svg), "--report", "wb") as f:
        picture = draw_mapping(target, problem, mapping, svg, file=f)
    click.echo(format_schedule(config), nl=False)
    click.echo(format_mapping_report(config, target, problem, mapping), nl=False)
    click.echo(format_cost(estimate(module, target)), nl=False)
    click.echo(format_times(records, import_seconds), nl=False)
    click.echo(f"picture: {picture}")


def format_butterfly(module: ModuleOp) -> str:
    """butterfly-decompose's per-layer report, if it ran."""
    from attnc.passes.butterfly_decompose import format_report as format_decomposition

    return format_decomposition(module)


def format_schedule(config: Any) -> str:
    """The attention schedules ``tile`` chose: dataflow, sizes, predicted cost and search time."""
    from attnc.passes.tile import REPORT_ATTR

    attr = config.attributes.get(REPORT_ATTR)
    if attr is None:
        return "attention schedules: none chosen (per-head lowering)\n"
    return "attention schedules (tile search):\n" + "".join(f"  {line}\n" for line in attr.data.splitlines())


def say_random_inputs(inputs: dict[str, Any], seed: int) -> None:
    # names come from the model: escaped, and the line kept short
    listing = ", ".join(f"{limits.shown(k, 40)[1:-1]} {list(v.shape)} {v.dtype}" for k, v in list(inputs.items())[:8])
    listing += ", ..." if len(inputs) > 8 else ""
    click.echo(f"attnc: no --inputs given; using random inputs (seed {seed}): {listing}", err=True)


def model_inputs(module: ModuleOp, inputs_path: str | None, seed: int) -> dict[str, Any]:
    """The inputs for @main: from --inputs (checked against the model), else seeded random ones."""
    from attnc.interpreter import check_inputs
    from attnc.ir import main_func

    if inputs_path is None:
        inputs = random_inputs(module, seed)
        say_random_inputs(inputs, seed)
        return inputs
    from attnc.simulator.io import load_npz

    inputs = load_npz(inputs_path)
    try:
        check_inputs(main_func(module), inputs)
    except AttncError as e:
        raise AttncError(f"--inputs {inputs_path}: {e}") from None
    return inputs


def random_inputs(module: ModuleOp, seed: int) -> dict[str, Any]:
    """Seeded random inputs for @main, drawn as the simulator draws them for a bitstream."""
    from attnc.dialects.values import np_dtype
    from attnc.ir import io_names, main_func
    from attnc.simulator.io import random_arrays

    fn = main_func(module)
    names, _ = io_names(fn)
    types = fn.function_type.inputs.data
    return random_arrays(((n, tuple(t.get_shape()), np_dtype(t.element_type)) for n, t in zip(names, types)), seed)


@cli.command()
@_command_debug_option
@_model_argument
@_random_inputs_option
@click.option("-o", "--output", required=True, metavar="OUT.npz", help="Where to save the outputs (keyed by output names).")
@_seed_option("Seed of the random inputs used when --inputs is omitted.")
@_input_shape_option
@_pipeline_option(DEFAULT_PIPELINE)
@_butterfly_option
def interpret(
    model: str, inputs_path: str | None, output: str, seed: int, input_shapes: tuple[str, ...], pipeline: str,
    butterfly: str | None,
) -> None:
    """Run MODEL on the reference interpreter.

    Imports MODEL, runs the pass pipeline, evaluates the IR with numpy and saves
    the outputs to OUT.npz keyed by the graph's output names.
    """
    shapes = parse_input_shapes(input_shapes)
    check_model(model, shapes)
    passes = with_butterfly(check_pipeline(pipeline), butterfly)
    check_outputs([("-o/--output", output)], input_files(model, None, inputs_path))
    from attnc.interpreter import interpret as interpret_module

    module = load_model(model, shapes)
    _run_pipeline(module, passes, None, ())
    from attnc.ir import io_names, main_func

    check_npz_names(output, io_names(main_func(module))[1])
    inputs = model_inputs(module, inputs_path, seed)
    outputs = interpret_module(module, inputs)
    save_npz(output, outputs)
    listing = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in outputs.items())
    click.echo(f"attnc: wrote {output}: {listing}", err=True)


@cli.command("inspect")
@_command_debug_option
@click.argument("bitstream", metavar="FILE.bit", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def inspect_command(bitstream: str, as_json: bool) -> None:
    """Print every section of a bitstream.

    The header and section table, the architecture (name, fingerprint), meta data,
    each tile's contexts (kernels, ports, buffers, loops, body), routes with their
    hops, DMA descriptors, constants (without their data) and the I/O table.
    """
    from attnc.backend.bitstream import inspect_file

    click.echo(inspect_file(bitstream, as_json=as_json), nl=False)


def _pass_summary(cls: type) -> str:
    """First line of the pass's docstring, else of its module's ("name: what it does")."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclasses invent a docstring from the signature
        doc = sys.modules[cls.__module__].__doc__ or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    prefix = f"{getattr(cls, 'name', '')}:"
    return line[len(prefix) :].strip() if line.startswith(prefix) else line


class _OptCommand(click.Command):
    """Lists the registered passes and dialects at the end of ``attnc opt --help``."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from attnc.ir import make_context
        from attnc.passes import get_all_passes

        rows = []
        for name, load in sorted(get_all_passes().items()):
            try:
                rows.append((name, _pass_summary(load())))
            except (ImportError, AttributeError) as e:
                rows.append((name, f"(cannot be loaded: {e})"))
        with formatter.section("Passes"):
            formatter.write_dl(rows)
        ctx_ = make_context()
        dialects = [d.name for d in ctx_.loaded_dialects] + list(ctx_.registered_dialect_names)
        with formatter.section("Dialects"):
            formatter.write_text(", ".join(dict.fromkeys(dialects)))


@cli.command(cls=_OptCommand)
@_command_debug_option
@click.argument("file", default="-", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_pipeline_option("")
@click.option("-o", "--output", default="-", metavar="OUT", help="Where to write the IR ('-' is stdout).")
@_dump_option
@_print_after_option
def opt(file: str, pipeline: str, output: str, dump_dir: str | None, print_after: tuple[str, ...]) -> None:
    """Run passes over .mlir text and print the result.

    Like xdsl-opt, with every attnc dialect and pass registered. FILE '-' (or
    none) reads stdin.
    """
    passes = check_pipeline(pipeline, print_after)
    check_outputs([("-o/--output", output)], [("FILE", file)],
                  dirs=[("--dump-ir-after-all", dump_dir, dump_names([p.name for p in passes]))])
    from attnc.ir import parse_module, print_module

    module = parse_module(_read_text(file), name="<stdin>" if file == "-" else file)
    _run_pipeline(module, passes, dump_dir, print_after)
    text = print_module(module)
    if output == "-":
        click.echo(text, nl=False)
    else:
        with atomic_output(output) as f:
            f.write(text)


# ---------------------------------------------------------------------------
# simulation: `attnc simulate`, `attnc run`


def _sim_progress(what: str) -> Callable[[int, int], None] | None:
    """A one-line progress bar on stderr, only when a person is watching and the run takes a while."""
    if not sys.stderr.isatty():
        return None
    start = time.perf_counter()
    shown = [False]

    def show(i: int, n: int) -> None:
        if time.perf_counter() - start < 0.5 and not shown[0]:
            return  # short runs print nothing
        shown[0] = True
        width = 30
        done = width * min(i, n) // max(n, 1)
        end = "\n" if i >= n else ""
        click.echo(f"\rattnc: {what} [{'#' * done}{'.' * (width - done)}] {i}/{n}{end}", err=True, nl=False)

    return show


def format_outputs(outputs: dict[str, Any]) -> str:
    lines = []
    for name, x in outputs.items():
        stats = ""
        if x.size and x.dtype.kind in "fiu":
            import numpy as np

            with np.errstate(all="ignore"):
                stats = f"  min {x.min():.6g}  max {x.max():.6g}  mean {x.astype(np.float64).mean():.6g}"
        lines.append(f"  {name}: {x.dtype}{list(x.shape)}{stats}")
    return "\n".join(lines) + "\n"


@cli.command("simulate")
@_command_debug_option
@click.argument("bitstream", metavar="FILE.bit", type=click.Path(exists=True, dir_okay=False))
@_random_inputs_option
@click.option("-o", "--output", metavar="OUT.npz", help="Where to save the outputs (keyed by output names).")
@_seed_option("Seed of the random inputs used when --inputs is omitted.")
@click.option("--stats", "stats_path", metavar="STATS.json", help="Write the timing model's counts, cycles and energy (with per-tile and per-link figures).")
@click.option("--trace", "trace_path", metavar="TRACE.json", help="Write a Chrome trace-event timeline (Perfetto opens it): one track per tile and per link.")
@click.option("--plot", "plot_dir", metavar="DIR", type=click.Path(file_okay=False), help="Draw timeline.png and heatmap.png into DIR.")
@click.option("--timing-only", is_flag=True, help="Run the timing model alone: no tensor values (same cycle count, much faster).")
def simulate_command(
    bitstream: str,
    inputs_path: str | None,
    output: str | None,
    seed: int,
    stats_path: str | None,
    trace_path: str | None,
    plot_dir: str | None,
    timing_only: bool,
) -> None:
    """Run a bitstream on the bundled simulator.

    Reads FILE.bit alone (the architecture is embedded). The functional model
    executes every tile's contexts on numpy in the order the streams allow and
    saves the outputs to OUT.npz keyed by the graph's output names; the timing
    model simulates the array event by event and reports cycles, traffic and
    energy. --timing-only skips the numpy model (no outputs).
    """
    import json

    from attnc.backend.bitstream import read
    from attnc.simulator.io import check_inputs, load_npz, random_inputs

    if timing_only and output is not None:
        raise AttncError("-o/--output: --timing-only computes no values; drop one of them")
    check_outputs([("-o/--output", output), ("--stats", stats_path), ("--trace", trace_path)],
                  [("FILE.bit", bitstream), ("--inputs", inputs_path)],
                  dirs=[("--plot", plot_dir, ("timeline.png", "heatmap.png"))])  # fmt: skip
    bs = read(bitstream)
    if output is not None:
        check_npz_names(output, [e.name for e in bs.io if e.direction == "output"])
    from attnc.simulator import timing

    outputs = None
    seconds = 0.0
    if not timing_only:
        from attnc.simulator.functional import run as simulate

        if inputs_path is None:
            inputs = random_inputs(bs, seed)
            say_random_inputs(inputs, seed)
        else:
            inputs = check_inputs(bs, load_npz(inputs_path), source=f"--inputs {inputs_path}")
        start = time.perf_counter()
        outputs = simulate(bs, inputs, progress=_sim_progress("simulating contexts"))
        seconds = time.perf_counter() - start
    elif inputs_path is not None:  # the values do not matter, but wrong inputs are still wrong
        check_inputs(bs, load_npz(inputs_path), source=f"--inputs {inputs_path}")
    start = time.perf_counter()
    stats = timing.simulate(bs, progress=_sim_progress("timing events"), functional=not timing_only)
    timing_seconds = time.perf_counter() - start
    if output is not None and outputs is not None:
        save_npz(output, outputs)
    if stats_path is not None:
        with atomic_output(stats_path, "--stats") as f:
            json.dump(stats.to_json(), f, indent=1)
    if trace_path is not None:
        from attnc.simulator.trace import write_trace

        with atomic_path(trace_path, "--trace") as tmp:
            write_trace(stats, tmp)
    pictures = []
    if plot_dir is not None:
        from attnc.simulator.plots import plot

        pictures = plot(stats, plot_dir)
    n_ctx = sum(len(t.contexts) for t in bs.tiles)
    mode = "timing only" if timing_only else f"functional {seconds:.2f} s"
    mode += f", timing {timing_seconds:.2f} s"
    click.echo(
        f"simulated {bitstream} ({bs.arch_name}): {n_ctx} contexts on {len(bs.tiles)} tiles, "
        f"{len(bs.routes)} routes, {len(bs.dma)} DMA descriptors ({mode})"
    )
    click.echo(stats.summary())
    if outputs is not None:
        click.echo("outputs:\n" + format_outputs(outputs), nl=False)
    written = [p for p in (output if outputs is not None else None, stats_path, trace_path) if p] + [str(p) for p in pictures]
    if written:
        click.echo(f"attnc: wrote {', '.join(written)}", err=True)


@cli.command("run")
@_command_debug_option
@_model_argument
@_arch_option
@_random_inputs_option
@click.option("-o", "--output", metavar="OUT.npz", help="Save the simulator's outputs here.")
@_input_shape_option
@_pipeline_option(DEFAULT_PIPELINE)
@_time_limit_option
@_seed_option("Solver seed and seed of the random inputs.")
@_heuristic_option
@_butterfly_option
@click.option(
    "--dense-baseline",
    is_flag=True,
    help="With --butterfly: also compile and time the dense model, and print the speedup and energy ratio.",
)
def run_command(
    model: str,
    arch: str,
    inputs_path: str | None,
    output: str | None,
    input_shapes: tuple[str, ...],
    pipeline: str,
    time_limit: float,
    seed: int,
    heuristic_only: bool,
    butterfly: str | None,
    dense_baseline: bool,
) -> int:
    """Compile MODEL, simulate the bitstream and compare with the reference.

    Compiles in memory as 'attnc compile -o OUT.bit' does, decodes the encoded
    bitstream and runs it on the simulator (which sees only those bytes), runs the
    reference interpreter on the sparse IR before lowering (and onnxruntime on an
    .onnx model when it is installed), and prints the largest absolute and relative
    error of every output. Exits 1 if the simulator disagrees with the reference.
    With --butterfly it also prints the butterfly model's output error against the
    dense model.
    """
    shapes = parse_input_shapes(input_shapes)
    check_model(model, shapes)
    target = check_arch(arch)
    if dense_baseline and butterfly is None:
        raise AttncError("--dense-baseline compares against --butterfly, which is not given")
    passes = with_butterfly(check_pipeline(pipeline), butterfly)
    check_outputs([("-o/--output", output)], input_files(model, arch, inputs_path))
    from attnc.backend.bitstream import decode
    from attnc.interpreter import interpret as interpret_module
    from attnc.simulator.functional import run as simulate

    t0 = time.perf_counter()
    module = load_model(model, shapes)
    dense = _run_frontend(module, passes)
    if output is not None:
        from attnc.ir import io_names, main_func

        check_npz_names(output, io_names(main_func(module))[1])
    inputs = model_inputs(module, inputs_path, seed)
    t1 = time.perf_counter()
    reference = interpret_module(module, inputs)  # the sparse IR, before lowering
    t2 = time.perf_counter()
    data, _ = compile_to_bitstream(module, target, time_limit=time_limit, seed=seed, heuristic_only=heuristic_only,
                                   meta={"model": Path(model).name})  # fmt: skip
    t3 = time.perf_counter()
    bs = decode(data, source="<compiled bitstream>")
    outputs = simulate(bs, inputs, progress=_sim_progress("simulating contexts"))
    t4 = time.perf_counter()
    if output is not None:
        save_npz(output, outputs)

    n_ctx = sum(len(t.contexts) for t in bs.tiles)
    click.echo(f"{Path(model).name} on {bs.arch_name}: {len(data)} bytes of bitstream, {n_ctx} kernels on {len(bs.tiles)} tiles")
    click.echo(f"time: import+passes {t1 - t0:.2f} s, reference {t2 - t1:.2f} s, compile {t3 - t2:.2f} s, simulate {t4 - t3:.2f} s")
    ok = _compare_outputs(model, shapes, inputs, outputs, reference)
    if dense is not None:
        _echo_butterfly_error(module, dense, inputs, reference)
    from attnc.simulator import timing

    click.echo("timing model:")
    stats = timing.simulate(bs, progress=_sim_progress("timing events"), functional=True)
    click.echo("".join(f"  {line}\n" for line in stats.summary().splitlines()), nl=False)
    if dense is not None and dense_baseline:
        dense_data, _ = compile_to_bitstream(dense, target, time_limit=time_limit, seed=seed,
                                             heuristic_only=heuristic_only)  # fmt: skip
        _echo_dense_baseline(stats, decode(dense_data, source="<dense bitstream>"))
    if not ok:
        click.echo("attnc: the simulator disagrees with the reference interpreter beyond tolerance", err=True)
        return 1
    return 0


def _run_frontend(module: ModuleOp, passes: list[Any]) -> ModuleOp | None:
    """Run the front-end passes; with butterfly-decompose among them, also return the dense model: the IR
    just before butterfly-decompose, taken on through the passes after it."""
    split = next((i for i, p in enumerate(passes) if p.name == "butterfly-decompose"), None)
    if split is None:
        _run_pipeline(module, passes, None, ())
        return None
    _run_pipeline(module, passes[:split], None, ())
    dense = module.clone()
    _run_pipeline(module, passes[split:], None, ())
    _run_pipeline(dense, passes[split + 1 :], None, ())
    return dense


def _compare_outputs(model: str, shapes: dict[str, list[int]], inputs: dict[str, Any], outputs: dict[str, Any],
                     reference: dict[str, Any]) -> bool:
    """Print the simulator's error against the reference interpreter (and onnxruntime); True if within
    tolerance of the reference."""
    from attnc.simulator.io import compare

    rows = compare(outputs, reference)
    click.echo("simulator vs reference interpreter:")
    for r in rows:
        click.echo(f"  {r.name}: max abs {r.max_abs:.3g}, max rel {r.max_rel:.3g} ({'ok' if r.ok else 'MISMATCH'}, tol {r.atol:g}+{r.rtol:g}*|ref|)")
    ort = _onnxruntime_outputs(model, inputs) if Path(model).suffix.lower() == ".onnx" and not shapes else None
    if ort is not None:
        click.echo("simulator vs onnxruntime:")
        for r in compare(outputs, ort):
            click.echo(f"  {r.name}: max abs {r.max_abs:.3g}, max rel {r.max_rel:.3g} ({'ok' if r.ok else 'differs'})")
    return all(r.ok for r in rows)


def _echo_butterfly_error(module: ModuleOp, dense: ModuleOp, inputs: dict[str, Any], reference: dict[str, Any]) -> None:
    import numpy as np

    from attnc.interpreter import interpret as interpret_module

    click.echo(format_butterfly(module), nl=False)
    click.echo("butterfly model vs dense model (reference interpreter):")
    dense_out = interpret_module(dense, inputs)
    for name, y in reference.items():
        d = np.asarray(dense_out[name], dtype=np.float64)
        diff = np.asarray(y, dtype=np.float64) - d
        rel = float(np.linalg.norm(diff) / (np.linalg.norm(d) or 1.0))
        click.echo(f"  {name}: relative error {rel:.3g} (||y - y_dense|| / ||y_dense||), max abs {np.max(np.abs(diff)):.3g}")


def _echo_dense_baseline(stats: Any, dense_bs: Any) -> None:
    from attnc.simulator import timing

    base = timing.simulate(dense_bs, progress=_sim_progress("timing events (dense)"))
    e_b, e_d = sum(stats.energy_pj().values()), sum(base.energy_pj().values())
    click.echo(
        f"dense model: {base.cycles} cycles, {e_d / 1e6:.4g} uJ, {base.macs} MACs; butterfly: "
        f"{base.cycles / max(stats.cycles, 1):.2f}x faster, {e_d / max(e_b, 1e-12):.2f}x less energy, "
        f"{base.macs / max(stats.macs, 1):.2f}x fewer MACs"
    )


def _onnxruntime_outputs(model: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """onnxruntime's outputs for an .onnx model, or None when it is not installed or cannot run it."""
    try:
        import onnxruntime
    except ImportError:
        click.echo("attnc: onnxruntime is not installed; comparing with the reference interpreter only", err=True)
        return None
    try:
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        feeds = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
        return dict(zip(names, session.run(None, feeds)))
    except Exception as e:  # onnxruntime lacks an op or type: say so, it is only a second opinion
        click.echo(f"attnc: onnxruntime could not run {model}: {' '.join(str(e).split())[:200]}", err=True)
        return None


# ---------------------------------------------------------------------------
# entry point


def one_line(prefix: str, text: object, suffix: str = "") -> str:
    """``prefix + text + suffix`` as one line of at most attnc.limits.MESSAGE_CHARS characters: control and
    bidirectional characters in ``text`` escaped (a name in a message cannot forge another line), the
    text shortened to fit (prefix and suffix are attnc's own and kept whole)."""
    width = max(limits.MESSAGE_CHARS - len(prefix) - len(suffix), 20)
    return prefix + limits.shown(str(text)[: 4 * width], width)[1:-1] + suffix


#: exceptions of the machine's limits, not bugs: what to tell the user instead of "internal error"
def _resource_error(e: BaseException) -> str | None:
    if isinstance(e, MemoryError):
        return ("out of memory: the input asks for more than this machine holds (the limits in docs/cli.md "
                "bound what attnc allocates; lower ATTNC_MAX_TENSOR_BYTES or check the input's shapes)")
    if isinstance(e, RecursionError):
        return "the input is nested too deeply to process (Python's recursion limit)"
    if isinstance(e, ValueError) and "Maximum allowed dimension exceeded" in str(e):
        return "a tensor in the input is larger than numpy can index (Maximum allowed dimension exceeded)"
    return None


def _traceback() -> None:
    if _debug_on():
        try:
            traceback.print_exc()
        except Exception:  # noqa: BLE001 -- a traceback that cannot be printed must not change the exit status
            click.echo("attnc: (the traceback could not be printed)", err=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit status instead of exiting.

    0 success; 2 an error in the input or the options (one ``attnc: error:`` line); 130 interrupted (nothing
    written); 1 a bug in attnc (``attnc: internal error:``), or ``attnc run``'s simulator mismatch.
    ``--debug`` and ``ATTNC_DEBUG=1`` only add the traceback: the status is the same with or without."""
    global _debug
    _debug = False
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="attnc", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("attnc: interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:
        # bare `attnc`: not an error, just show what there is
        click.echo(e.ctx.get_help())
        return 0
    except click.ClickException as e:
        # click's usage errors name the option; add where to look, keep it one line.
        msg = " ".join(e.format_message().split())
        hint = f" (see '{e.ctx.command_path} --help')" if isinstance(e, click.UsageError) and e.ctx is not None else ""
        click.echo(one_line("attnc: error: ", msg, hint), err=True)
        return 2
    except AttncError as e:
        _traceback()
        click.echo(one_line("attnc: error: ", e), err=True)
        return 2
    except Exception as e:  # noqa: BLE001 -- the one place every other exception ends
        _traceback()
        resource = _resource_error(e)
        if resource is not None:
            click.echo(one_line("attnc: error: ", resource), err=True)
            return 2
        hint = "" if _debug_on() else " (rerun with --debug for the traceback)"
        click.echo(one_line("attnc: internal error: ", f"{type(e).__name__}: {e}", hint), err=True)
        return 1


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

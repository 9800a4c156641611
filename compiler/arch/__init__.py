"""attnc.arch: the architecture description, one YAML file shared by the compiler, the bitstream
and the simulator (format: docs/arch.md).

    arch = load_arch("edge")            # a preset shipped in the package, or a path to a YAML file
    arch.tiles_of("compute"), arch.graph(), arch.fingerprint()
    resolve_arch(None)                  # the default array (DEFAULT_ARCH); an Arch is returned as it is

Each preset and each YAML file (until it changes on disk) is parsed once per process, so passes
that are given the same name share one ``Arch``.

Only PyYAML is imported here; networkx loads on the first ``Arch.graph()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from attnc.arch.model import DRAM, ENERGY_ACTIONS, KIND_LETTERS, TILE_KINDS, Arch, NoC, Tile
from attnc.arch.schema import DATATYPES, FORMAT_VERSION, SUPPORTED_VERSIONS, dump_arch, parse_arch
from attnc import limits
from attnc.errors import AttncError

__all__ = [
    "DATATYPES", "DRAM", "ENERGY_ACTIONS", "FORMAT_VERSION", "KIND_LETTERS", "PRESETS", "SUPPORTED_VERSIONS",
    "TILE_KINDS", "Arch", "NoC", "Tile", "dump_arch", "load_arch", "parse_arch", "preset_text",
    "DEFAULT_ARCH", "resolve_arch",
]  # fmt: skip

PRESETS = ("tiny", "edge", "cloud", "flat-cloud")
#: the array every command and pass targets when none is named
DEFAULT_ARCH = "edge"


def preset_text(name: str) -> str:
    """The YAML text of a preset shipped inside the package."""
    if name not in PRESETS:
        raise AttncError(f"unknown architecture preset '{name}' (presets: {', '.join(PRESETS)})")
    return resources.files(__name__).joinpath("presets", f"{name}.yaml").read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _load_preset(name: str) -> Arch:
    # Arch is immutable, so every caller may share one instance (and its cached graph).
    return dataclasses.replace(parse_arch(preset_text(name), source_name=f"<preset {name}>"), origin=name)


@lru_cache(maxsize=32)
def _load_file(path: str, mtime_ns: int, size: int, origin: str) -> Arch:
    # keyed by the file's identity and state: an edited file is read again
    limits.check(size, origin, limits.ARCH_FILE_BYTES)  # before reading: the size stat() gave
    cap = limits.ARCH_FILE_BYTES.value()
    try:
        with open(path, "rb") as f:
            raw = f.read(cap + 1)  # a file that grew since stat() is still read only up to the limit
    except OSError as e:
        raise AttncError(f"{origin}: cannot read: {e.strerror or type(e).__name__}") from None
    limits.check(len(raw), origin, limits.ARCH_FILE_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AttncError(f"{origin}: cannot read: not UTF-8 text (byte {e.start}); not an architecture description") from None
    return dataclasses.replace(parse_arch(text, source_name=origin), origin=origin)


def load_arch(spec: str | os.PathLike[str]) -> Arch:
    """A preset name (``tiny``, ``edge``, ``cloud``, ``flat-cloud``) or the path of a YAML file."""
    if isinstance(spec, str) and spec in PRESETS:
        return _load_preset(spec)
    path = Path(spec)
    if not path.is_file():
        close = difflib.get_close_matches(str(spec), PRESETS, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AttncError(f"{limits.shown(str(spec), 120)} is neither an architecture preset ({', '.join(PRESETS)}) nor an existing file{hint}")
    try:
        st = path.stat()
    except OSError as e:
        raise AttncError(f"{spec}: cannot read: {e}") from None
    return _load_file(str(path.resolve()), st.st_mtime_ns, st.st_size, str(spec))


def resolve_arch(arch: Arch | str | os.PathLike[str] | None) -> Arch:
    """The array a pass or the driver targets: an ``Arch`` as it is, a preset name or YAML path loaded
    (once), ``None`` the default preset."""
    if isinstance(arch, Arch):
        return arch
    return load_arch(DEFAULT_ARCH if arch is None else arch)

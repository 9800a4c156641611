"""The layout rules of docs/architecture.md, checked by reading the source, not by importing it.

* the one-way dependency rule between layers (which attnc package may import which);
* no module imports another module's private name (``from x import _y``);
* no file names a path outside the repository (a development machine's paths, design notes users do not have).

Imports are read with ``ast`` from every ``.py`` file under the package folders, including imports inside
functions and ``if TYPE_CHECKING:`` blocks: a lazy import is still a dependency, it only moves the cost.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The dependency rule (docs/architecture.md). A rule covers its module and everything inside it.
# ALLOWED: all that such a module may import from attnc (its own package included where it has submodules);
# the most specific rule covering a module applies. FORBIDDEN: what it must not import; every rule covering
# a module applies (attnc.cost is bound by its own rule and by the one for all of attnc).
ALLOWED: dict[str, tuple[str, ...]] = {
    "attnc.errors": (),
    "attnc.files": (),
    "attnc.limits": ("attnc.errors",),
    "attnc.arch": ("attnc.arch", "attnc.errors", "attnc.limits"),
    "attnc.butterfly": ("attnc.errors",),
    "attnc.dialects": ("attnc.dialects", "attnc.butterfly", "attnc.errors", "attnc.arch", "attnc.limits"),
    "attnc.backend.bitstream": ("attnc.errors", "attnc.arch", "attnc.limits"),
    "attnc.simulator": ("attnc.simulator", "attnc.backend.bitstream", "attnc.arch", "attnc.errors", "attnc.limits",
                        "attnc.files"),
}
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "attnc.cost": ("attnc.passes", "attnc.cli", "attnc.pipeline", "attnc.frontend", "attnc.backend.emit"),
    # attnc.cli is the top: nothing imports it (the ONNX backend and the tests call attnc.pipeline)
    "attnc": ("attnc.cli",),
}

# Names of files outside the repository: a development machine's paths and design notes that ship with no
# copy of attnc. "REFERENCES 2.7" and "REFERENCES §4" cite sections of such a note.
OUTSIDE = re.compile(r"/work/|\.\./shared|ARCHITECTURE\.md|REFERENCES\.md|/root/|/home/|\bREFERENCES\s*(?:§|\d)")
# build output, caches and tool state are not the repository's text (hypothesis records absolute paths)
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "build", "dist",
             ".venv", "venv", "node_modules"}  # fmt: skip


def package_dirs() -> dict[str, str]:
    """folder -> import name, as pyproject.toml's package-dir maps them (so the test follows the build)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10: read the one inline table by hand
        line = re.search(r"^package-dir\s*=\s*\{(.*)\}\s*$", text, re.MULTILINE)
        assert line, "pyproject.toml has no package-dir"
        mapping = dict(re.findall(r'"([^"]+)"\s*=\s*"([^"]+)"', line.group(1)))
    else:
        mapping = tomllib.loads(text)["tool"]["setuptools"]["package-dir"]
    return {folder: name for name, folder in mapping.items()}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    importer: str  # the importing module
    target: str  # the attnc module depended on (a submodule when ``from pkg import submodule``)
    names: tuple[str, ...]  # the names a from-import takes; () for ``import x``
    text: str  # the statement as written
    source: str  # the module a from-import reads the names from (``x`` in ``from x import y``); target otherwise

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@functools.cache  # parsing every module takes a second; the tests share one reading
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of attnc: name -> (file, is a package's __init__)."""
    found: dict[str, tuple[Path, bool]] = {}
    for folder, package in package_dirs().items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if any(p in SKIP_DIRS for p in parts):
                continue
            is_init = parts[-1] == "__init__"
            found[".".join([package, *(parts[:-1] if is_init else parts)])] = (path, is_init)
    return found


def _resolve_from(node: ast.ImportFrom, importer: str, is_init: bool) -> str | None:
    """The module a from-import reads from, relative imports resolved."""
    if node.level == 0:
        return node.module
    package = importer if is_init else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@functools.cache
def imports() -> tuple[Import, ...]:
    """Every import of an attnc module by an attnc module, wherever it sits in the file."""
    known = modules()
    found: list[Import] = []
    for importer, (path, is_init) in known.items():
        rel = str(path.relative_to(ROOT))
        found += imports_in(path.read_text(encoding="utf-8"), rel, importer, is_init, set(known))
    return tuple(found)


def imports_in(source_text: str, rel: str, importer: str, is_init: bool, known: set[str]) -> list[Import]:
    """The attnc imports of one file; ``ast.walk`` reaches those in functions and ``if`` blocks too."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(source_text, filename=rel)):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        text = ast.unparse(node)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "attnc" or alias.name.startswith("attnc."):
                    found.append(Import(rel, node.lineno, importer, alias.name, (), text, alias.name))
        else:
            source = _resolve_from(node, importer, is_init)
            if not source or not (source == "attnc" or source.startswith("attnc.")):
                continue
            # ``from attnc.dialects import sparse`` depends on attnc.dialects.sparse, not only the package
            plain = [a.name for a in node.names if f"{source}.{a.name}" not in known]
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:
                    found.append(Import(rel, node.lineno, importer, sub, (alias.name,), text, source))
            if plain:
                found.append(Import(rel, node.lineno, importer, source, tuple(plain), text, source))
    return sorted(found, key=lambda i: i.line)  # ast.walk goes breadth first


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def dependency_violations(found: Sequence[Import]) -> list[str]:
    out: list[str] = []
    for imp in found:
        covering = [key for key in ALLOWED if _within(imp.importer, key)]
        if covering:
            key = max(covering, key=len)
            if not any(_within(imp.target, a) for a in ALLOWED[key]):
                only = ", ".join(ALLOWED[key]) or "nothing from attnc"
                out.append(f"{imp.where()}  ({key} may import only {only}; this imports {imp.target})")
        if _within(imp.importer, "attnc.cli"):
            continue  # the top may import anything
        for key, banned in FORBIDDEN.items():
            hit = [b for b in banned if _within(imp.importer, key) and _within(imp.target, b)]
            if hit:
                out.append(f"{imp.where()}  ({key} must not import {hit[0]})")
                break  # one line per import is enough
    return out


def private_violations(found: Sequence[Import]) -> list[str]:
    out: list[str] = []
    for imp in found:
        # dunder names (__version__) are public by convention; a private submodule is private too
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private and imp.source != imp.importer:
            out.append(f"{imp.where()}  (private {', '.join(private)} of {imp.source})")
    return out


def text_files() -> list[Path]:
    """The repository's .py and .md files (README.md and docs/ included), caches and build output left out."""
    files: list[Path] = []
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(top) / n for n in sorted(names) if n.endswith((".py", ".md"))]
    return files


def test_scanner_sees_the_packages() -> None:
    """Guards the other tests against passing vacuously (a wrong folder would scan nothing)."""
    known = modules()
    for name in ("attnc.cli", "attnc.errors", "attnc.dialects.sparse", "attnc.passes", "attnc.backend.bitstream",
                 "attnc.simulator.timing", "attnc.arch", "attnc.cost"):  # fmt: skip
        assert name in known, f"{name} not found under {sorted(package_dirs())}"
    targets = {imp.target for imp in imports()}
    assert "attnc.errors" in targets and "attnc.dialects.sparse" in targets
    assert any(p.name == "README.md" for p in text_files())


def test_dependency_rule() -> None:
    """docs/architecture.md's layers: each import goes down, never up or sideways into a layer it may not use."""
    bad = dependency_violations(imports())
    if bad:
        pytest.fail("imports that break the dependency rule (docs/architecture.md):\n" + "\n".join(bad), pytrace=False)


def test_no_private_imports_across_modules() -> None:
    """A name starting with _ belongs to its module; a helper others need becomes public where it lives."""
    bad = private_violations(imports())
    if bad:
        pytest.fail("private names imported from another module:\n" + "\n".join(bad), pytrace=False)


def test_no_paths_outside_the_repository() -> None:
    """Users have the repository only: docs and code name no machine path and no file that is not shipped."""
    me = Path(__file__).resolve()
    bad: list[str] = []
    for path in text_files():
        if path.resolve() == me:
            continue  # this file spells the patterns out
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            m = OUTSIDE.search(line)
            if m:
                bad.append(f"{path.relative_to(ROOT)}:{n}: names '{m.group(0).strip()}': {line.strip()[:100]}")
    if bad:
        pytest.fail("references to files outside the repository:\n" + "\n".join(bad), pytrace=False)


# the rule's checker, checked on small made-up cases so a bug in it cannot hide a violation
@pytest.mark.parametrize(
    ("importer", "target", "ok"),
    [
        ("attnc.simulator.timing", "attnc.backend.bitstream", True),
        ("attnc.simulator.timing", "attnc.backend.emit", False),
        ("attnc.simulator.timing", "attnc.dialects.sparse", False),
        ("attnc.dialects.sparse", "attnc.dialects.values", True),
        ("attnc.dialects.sparse", "attnc.ir", False),
        ("attnc.dialects.sparse", "attnc", False),
        ("attnc.errors", "attnc.arch", False),
        ("attnc.arch.schema", "attnc.arch.model", True),
        ("attnc.butterfly", "attnc.arch", False),
        ("attnc.backend.bitstream", "attnc.arch", True),
        ("attnc.backend.emit", "attnc.dialects.array", True),
        ("attnc.cost.model", "attnc.dialects.dataflow", True),
        ("attnc.cost.work", "attnc.passes.tile", False),
        ("attnc.cost.work", "attnc.pipeline", False),
        ("attnc.onnx_backend", "attnc.cli", False),
        ("attnc.onnx_backend", "attnc.pipeline", True),
        ("attnc.cli", "attnc.cli", True),
    ],
)
def test_rule_checker(importer: str, target: str, ok: bool) -> None:
    imp = Import("x.py", 1, importer, target, (), f"import {target}", target)
    assert (not dependency_violations([imp])) == ok


def test_private_checker() -> None:
    def make(importer: str, source: str, name: str) -> Import:
        return Import("x.py", 1, importer, source, (name,), f"from {source} import {name}", source)

    assert private_violations([make("attnc.passes.tile", "attnc.passes.lower_dataflow", "_is_data")])
    assert not private_violations([make("attnc.passes.tile", "attnc.passes.lower_dataflow", "is_data")])
    assert not private_violations([make("attnc.backend.emit", "attnc", "__version__")])
    assert not private_violations([make("attnc.passes.tile", "attnc.passes.tile", "_own")])


def test_imports_are_found_wherever_they_sit() -> None:
    """Lazy imports, TYPE_CHECKING imports, relative imports and submodule imports all count."""
    src = """
from typing import TYPE_CHECKING
import attnc.errors
if TYPE_CHECKING:
    from attnc.ir import main_func
def f():
    from ..dialects import sparse
    from . import _helper as h
"""
    known = {"attnc.errors", "attnc.ir", "attnc.dialects", "attnc.dialects.sparse", "attnc.passes", "attnc.passes.x"}
    found = imports_in(src, "passes/x.py", "attnc.passes.x", False, known)
    assert [(i.line, i.target, i.names) for i in found] == [
        (3, "attnc.errors", ()),
        (5, "attnc.ir", ("main_func",)),
        (7, "attnc.dialects.sparse", ("sparse",)),
        (8, "attnc.passes", ("_helper",)),
    ]
    assert private_violations(found) == ["passes/x.py:8: from . import _helper as h  (private _helper of attnc.passes)"]

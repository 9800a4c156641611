"""docs/ir.md is generated from the dialect's docstrings and must be kept up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_ir_reference_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("gen_ir_docs", DOCS / "gen_ir_docs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (DOCS / "ir.md").read_text() == gen.render(), "docs/ir.md is stale: run python docs/gen_ir_docs.py"

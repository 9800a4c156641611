"""Hostile .mlir text: unknown or negative dimensions, huge declared shapes and deep nesting are clean
AttncErrors from parse_module (and `attnc: error:` lines from the CLI), not internal errors."""

from __future__ import annotations

import pytest

from attnc.cli import run
from attnc.errors import AttncError
from attnc.ir import MAX_NESTING, parse_module


def _neg(shape: str) -> str:
    return (f'func.func @main(%x: tensor<{shape}xf32> {{attnc.name = "x"}}) -> (tensor<{shape}xf32> {{attnc.name = "y"}}) {{\n'
            f"  %y = sparse.neg %x : tensor<{shape}xf32> -> tensor<{shape}xf32>\n"
            f"  func.return %y : tensor<{shape}xf32>\n}}\n")  # fmt: skip


@pytest.mark.parametrize("shape", ["?x3", "2x?"])
def test_unknown_dims_are_refused(shape: str) -> None:
    with pytest.raises(AttncError, match="unknown or negative dimension"):
        parse_module(_neg(shape), "m.mlir")


def test_an_unknown_dim_in_the_signature_only_is_refused() -> None:
    text = 'func.func @main(%a: tensor<3x4xf32>) -> tensor<?x4xf32> { func.return %a : tensor<3x4xf32> }'
    with pytest.raises(AttncError, match="unknown or negative dimension"):
        parse_module(text, "m.mlir")


def test_negative_dims_are_a_parse_error() -> None:
    with pytest.raises(AttncError, match="m.mlir:1:"):
        parse_module(_neg("-3x3"), "m.mlir")


def test_huge_shapes_are_refused() -> None:
    with pytest.raises(AttncError, match="tensor elements limit") as e:
        parse_module(_neg("1000000000x1000000000"), "m.mlir")
    assert "ATTNC_MAX_TENSOR_ELEMENTS" in str(e.value)


def test_the_element_limit_can_be_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    parse_module(_neg("20x20"))
    monkeypatch.setenv("ATTNC_MAX_TENSOR_ELEMENTS", "100")
    with pytest.raises(AttncError, match="400 elements exceeds"):
        parse_module(_neg("20x20"))


@pytest.mark.parametrize("depth", [3000, 100000])
def test_deep_nesting_is_an_error(depth: int) -> None:
    with pytest.raises(AttncError, match="nested too deeply"):
        parse_module("builtin.module {" * depth + "}" * depth)


def test_deep_type_nesting_is_an_error() -> None:
    with pytest.raises(AttncError, match="nested too deeply"):
        parse_module("func.func @main(%a: " + "tensor<" * 3000 + "f32" + ">" * 3000 + ") { func.return }")


def test_nesting_that_parses_is_still_bounded() -> None:
    depth = MAX_NESTING + 5
    with pytest.raises(AttncError, match=f"nest more than {MAX_NESTING} deep"):
        parse_module("builtin.module {" * depth + "}" * depth)


def test_messages_escape_names() -> None:
    with pytest.raises(AttncError) as e:
        parse_module('func.func @main() { "a\\nattnc: error: forged\u202e"() : () -> () }', "m\n.mlir")
    assert "\n" not in str(e.value) and "\u202e" not in str(e.value)


@pytest.mark.parametrize("text", [_neg("?x3"), "builtin.module {" * 3000 + "}" * 3000, _neg("1000000x1000000x1000000")])
@pytest.mark.parametrize("command", ["opt", "compile", "interpret"])
def test_the_cli_gives_one_clean_line(tmp_path, capsys, text: str, command: str) -> None:
    path = tmp_path / "m.mlir"
    path.write_text(text)
    args = [command, str(path)] + ({"opt": [], "compile": ["-o", str(tmp_path / "o.bit")],
                                    "interpret": ["-o", str(tmp_path / "o.npz")]}[command])  # fmt: skip
    code = run(args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("attnc: error: ") and err.count("\n") == 1, err

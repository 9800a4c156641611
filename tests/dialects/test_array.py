"""The array dialect: round trip and one invalid-IR case per verifier."""

from pathlib import Path

import pytest

from attnc.dialects.array import Array
from attnc.errors import AttncError
from attnc.ir import parse_module, print_module

SOURCE = (Path(__file__).parent / "array_ops.mlir").read_text()


def test_round_trip_covers_every_op():
    first = print_module(parse_module(SOURCE))
    assert print_module(parse_module(first)) == first
    seen = {op.name for op in parse_module(SOURCE).walk()}
    assert {op.name for op in Array.operations} <= seen


BAD = {
    "io-direction": ('direction = "input", type', 'direction = "inout", type', "direction must be input or output"),
    "io-type": ("type = tensor<4xf32>, address = 0", "type = f32, address = 0", "must be a tensor type"),
    "io-address": ("address = 64 : i64}", "address = -64 : i64}", "negative address"),
    "tile-kind": ('kind = "sfu"}', 'kind = "gpu"}', "kind must be one of"),
    "tile-twice": ('array.tile "t1_1" attributes {x = 1 : i64, y = 1 : i64', 'array.tile "t1_1" attributes {x = 0 : i64, y = 1 : i64', "two array.tile ops at (0, 1)"),
    "context-kind": ('kind = "elementwise"', 'kind = "magic"', "kind must be one of"),
    "context-inputs": ('kind = "elementwise", inputs = array<i64: 1>', 'kind = "elementwise", inputs = array<i64: 1, 5>', "one input stream per body argument"),
    "context-outputs": ("outputs = array<i64: 2>, loops = [\"rows\"]", "outputs = array<i64>, loops = [\"rows\"]", "yield one value per output stream"),
    "context-buffers": ("buffer_sizes = array<i64: 64>", "buffer_sizes = array<i64: 64, 8>", "one address and size per buffer"),
    "context-phase": ('cycles = 2 : i64, macs = 0 : i64}', 'cycles = 2 : i64, macs = 0 : i64, phase = -3 : i64}', "phase must be >= 0"),
    "context-loops": ('loops = ["rows"], trips = array<i64: 1>', 'loops = ["rows"], trips = array<i64: 1, 1>', "one trip count per loop"),
    "route-pairs": ("hops = array<i64: 0, 1, 1, 1>", "hops = array<i64: 0, 1, 1>", "list of x, y pairs"),
    "route-link": ("hops = array<i64: 0, 1, 1, 1>", "hops = array<i64: 0, 1, 2, 2>", "is not a mesh link"),
    "dma-direction": ('direction = "store", stream', 'direction = "copy", stream', "direction must be load or store"),
    "dma-channel": ("channel = array<i64: 0, 1>, direction = \"load\"", "channel = array<i64: 0>, direction = \"load\"", "must be an x, y pair"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid(case):
    old, new, expected = BAD[case]
    assert old in SOURCE, old
    with pytest.raises(AttncError) as info:
        parse_module(SOURCE.replace(old, new, 1))
    assert expected in str(info.value)


def test_config_holds_array_ops_only():
    text = SOURCE.replace('    array.io "y"', '    %z = sparse.constant {value = dense<1.0> : tensor<f32>} : tensor<f32>\n    array.io "y"', 1)
    with pytest.raises(AttncError, match="holds io, tile, route and dma ops only"):
        parse_module(text)


def test_context_phase_is_optional_and_round_trips():
    from attnc.dialects.array import ContextOp

    def phases(module):
        return {op.sym_name.data: op.phase for op in module.walk() if isinstance(op, ContextOp)}

    assert set(phases(parse_module(SOURCE)).values()) == {0}  # absent: resident
    text = SOURCE.replace('cycles = 2 : i64, macs = 0 : i64}', 'cycles = 2 : i64, macs = 0 : i64, phase = 1 : i64}', 1)
    first = print_module(parse_module(text))
    assert "phase = 1 : i64" in first and print_module(parse_module(first)) == first
    assert phases(parse_module(first))["exp"] == 1

"""Every sparse op and encoding round-trips through its textual and generic forms."""

from pathlib import Path

from attnc.dialects.sparse import Sparse
from attnc.ir import make_context, parse_module, print_module
from xdsl.parser import Parser
from xdsl.printer import Printer
import io

SOURCE = (Path(__file__).parent / "sparse_ops.mlir").read_text()


def test_custom_form_round_trips():
    first = print_module(parse_module(SOURCE))
    assert print_module(parse_module(first)) == first


def test_generic_form_round_trips():
    module = parse_module(SOURCE)
    out = io.StringIO()
    Printer(stream=out, print_generic_format=True).print_op(module)
    generic = out.getvalue()
    again = Parser(make_context(), generic).parse_module()
    again.verify()
    assert print_module(again) == print_module(module)


def test_every_op_and_encoding_is_covered():
    module = parse_module(SOURCE)
    seen = {op.name for op in module.walk()}
    missing = {op.name for op in Sparse.operations} - seen
    assert not missing, f"ops without a round-trip line: {sorted(missing)}"
    text = print_module(module)
    for attr in Sparse.attributes:
        assert f"#{attr.name}" in text, f"encoding {attr.name} has no round-trip line"

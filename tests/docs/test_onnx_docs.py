"""docs/onnx.md lists exactly the ONNX ops the importer has handlers for."""

from __future__ import annotations

import re
from pathlib import Path

from attnc.frontend.onnx import supported_ops

DOC = Path(__file__).parents[2] / "docs" / "onnx.md"


def test_the_supported_op_list_matches_the_importer():
    section = DOC.read_text().split("## Supported ops", 1)[1].split("\n\n")[1]
    assert re.findall(r"`([^`]+)`", section) == supported_ops()

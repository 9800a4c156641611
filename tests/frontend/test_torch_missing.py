"""Without torch, the Torch frontend says how to install it instead of failing on import."""

from __future__ import annotations

import sys

import pytest

from attnc.errors import AttncError
from attnc.frontend import torch as torch_frontend


@pytest.mark.parametrize(
    "call",
    [
        lambda: torch_frontend.import_module(object(), ()),
        lambda: torch_frontend.load_exported_program("model.pt2"),
    ],
    ids=["import_module", "load_exported_program"],
)
def test_missing_torch_is_an_attnc_error(monkeypatch: pytest.MonkeyPatch, call) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(AttncError, match=r"PyTorch is not installed; pip install 'attnc\[torch\]'"):
        call()

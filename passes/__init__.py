"""attnc.passes: one module per pass, and the registry that names them.

The registry maps each kebab-case pass name to ``"module:Class"`` and loads the
module only when the pass is asked for, so ``import attnc.passes`` (and therefore
``attnc --help``) stays cheap. Adding a pass is one line in ``PASSES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xdsl.passes import ModulePass

PASSES: dict[str, str] = {
    "canonicalize": "attnc.passes.canonicalize:CanonicalizePass",
    "raise-attention": "attnc.passes.raise_attention:RaiseAttentionPass",
    "butterfly-decompose": "attnc.passes.butterfly_decompose:ButterflyDecomposePass",
    "fuse-attention": "attnc.passes.fuse_attention:FuseAttentionPass",
    "tile": "attnc.passes.tile:TilePass",
    "fuse-elementwise": "attnc.passes.fuse_elementwise:FuseElementwisePass",
    "lower-to-dataflow": "attnc.passes.lower_dataflow:LowerToDataflowPass",
    "place-route": "attnc.passes.placement.place_route:PlaceRoutePass",
}


def _loader(target: str) -> Callable[[], type[ModulePass]]:
    module, _, cls = target.partition(":")

    def load() -> type[ModulePass]:
        return getattr(importlib.import_module(module), cls)

    return load


def get_all_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """Every registered pass: kebab-case name -> a function returning its class
    (the shape ``xdsl.passes.PassPipeline.parse_spec`` expects)."""
    return {name: _loader(target) for name, target in PASSES.items()}

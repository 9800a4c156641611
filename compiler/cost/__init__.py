"""attnc.cost: every cost rule of the compiler in one place.

- ``attnc.cost.attention``: the fused attention rules (the work of a fused kernel, its on-chip bytes)
  and ``predict``, the first-order cost of a whole attention schedule that the tile search ranks by.
- ``attnc.cost.work``: how one kernel is tiled and what that costs first-order on one tile (a
  ``KernelPlan``: loops, tile sizes, buffer bytes, cycles), the butterfly-stage rule, and the bytes a
  kernel reads of a stream. The back-end passes use it to size kernels and annotate their estimates.
- the analytical model of a whole dataflow or array configuration (cycles, DRAM and SRAM bytes,
  byte-hops, energy), checked against the simulator: ``attnc.cost.kernels`` (one kernel's figures),
  ``attnc.cost.graph`` (the kernel graph read from the IR), ``attnc.cost.events`` (the event schedule
  that times it) and ``attnc.cost.model`` (``estimate`` and ``format_cost``, re-exported here).
"""

from attnc.cost.model import GraphCost, estimate, format_cost

__all__ = ["GraphCost", "estimate", "format_cost"]

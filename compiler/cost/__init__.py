"""attnc.cost: every cost rule of the compiler in one place.

- ``attnc.cost.work``: what one kernel costs on one tile (MACs, lane and SFU steps, buffer bytes, the
  fused-attention and butterfly-stage rules, the bytes a kernel reads of a stream). The back-end passes
  use it to size kernels and annotate their cycle estimates.
- ``attnc.cost.model``: the analytical model of a whole dataflow or array configuration (cycles, DRAM and
  SRAM bytes, byte-hops, energy), checked against the simulator; ``estimate`` and ``format_cost`` are
  re-exported here.
"""

from attnc.cost.model import GraphCost, estimate, format_cost

__all__ = ["GraphCost", "estimate", "format_cost"]

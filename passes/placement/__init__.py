"""attnc.passes.placement: putting dataflow kernels on tiles and streams on links.

- ``problem``: the mapping problem (kernels, streams, the array), its solution, the independent validator
  and the counting infeasibility checks.
- ``cpsat``: the OR-Tools CP-SAT placer and router.
- ``heuristic``: the greedy placer that seeds CP-SAT and stands in for it with ``--heuristic-only``.
- ``place_route``: the ``place-route`` pass, dataflow IR -> array IR.
- ``sram``: a tile's SRAM need when kernels have SRAM phases (resident plus the largest phase).
- ``report``, ``picture``: what ``attnc compile --report`` prints and draws.
"""

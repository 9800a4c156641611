"""What every operation costs on which unit: the compiler's copy of the table in docs/simulator.md
("Operation costs"). The simulator keeps its own (``attnc.simulator.work``, it may not import the
compiler); tests/simulator/test_op_costs.py holds the two to the same numbers.

Two kinds of vector work: **lane operations** (add, subtract, multiply, max, compare, select, ...: one per
element per op, on the vector lanes) and **special-function operations** (exp, log, erf, tanh, sigmoid,
sqrt, rsqrt, reciprocal: one result each, on an exp unit or an sfu tile's lanes). A row-wise op also pays
per row (per slice it reduces): the reciprocal of a softmax's sum, LayerNorm's rsqrt.

Division by a tensor is one lane operation (the lanes' divider); a constant scale folded into an exp is
free (an exp unit computes ``2^(c·x)``, c already holds log2 e, so ``exp(s·x)`` only changes c).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attnc.dialects import sparse as sp


@dataclass(frozen=True)
class OpCost:
    lane: int = 1  # lane operations per element
    special: int = 0  # special-function operations per element
    lane_row: int = 0  # lane operations per row (per reduced slice)
    special_row: int = 0  # special-function operations per row

    @property
    def per_element(self) -> int:
        """Operations per element when both kinds run on the same lanes (an sfu tile), rows left out."""
        return self.lane + self.special


#: special functions: one result on the exp unit (or an sfu lane) each
SPECIAL = ("exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sigmoid")

OP_COSTS: dict[str, OpCost] = {
    **{name: OpCost(0, 1) for name in SPECIAL},
    # 0.5·x·(1 + erf(x·1/√2)): x·1/√2, 1 + e, x·(..), ·0.5, and one erf
    "gelu": OpCost(4, 1),
    # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): x·x, ·0.044715, + 1, x·(..), ·√(2/π), 1 + t, x·(..), ·0.5
    "gelu_tanh": OpCost(8, 1),
    # max, x − m, Σ, ·(1/Σ) per element, one exp; per row the reciprocal of the sum
    "softmax": OpCost(4, 1, 0, 1),
    # max, x − m, Σ, x − (m + log Σ) per element, one exp; per row m + log Σ and the log
    "log_softmax": OpCost(4, 1, 1, 1),
    # Σx, x − μ, (x − μ)², Σ, ·rstd, ·γ per element; per row μ = Σ/L, σ² = Σ/L, + ε and the rsqrt
    "layer_norm": OpCost(6, 0, 3, 1),
    # ... + β
    "layer_norm_bias": OpCost(7, 0, 3, 1),
}
#: every other compute op: one lane operation per element of the larger of its result and operands
DEFAULT = OpCost(1, 0)

# A fused attention, per score (one query row x one key) and per row of a row block:
#: flat (3-pass softmax on whole score rows): max, s − m, Σ, p·(1/Σ), and the exp; per row the reciprocal
FLAT_SCORE = OpCost(4, 1)
FLAT_ROW_SPECIAL = 1
#: online (FuseMax's cascade): max, s − m, Σ per score, and the exp; no normalising of the probabilities
ONLINE_SCORE = OpCost(3, 1)
#: online, per row at each key block after its row block's first: m' = max(m, m_blk), m − m', the exp
#: α = exp(m − m'), l·α + l_blk (2), and the output row rescaled, o·α (dv): dv + 4 lane ops, 1 exp
ONLINE_RESCALE_LANE = 4
ONLINE_RESCALE_SPECIAL = 1
#: online, per row at the end of its row block: 1/l and o·(1/l) (dv lane ops)
ONLINE_FINAL_SPECIAL = 1
#: an additive mask: one add per score
MASK_LANE = 1


def op_cost(name: str, *, approximate: str = "", operands: int = 1) -> OpCost:
    """The row of the table for a compute op called ``name`` (``gelu``'s form, ``layer_norm``'s bias)."""
    if name == "gelu" and approximate == "tanh":
        return OP_COSTS["gelu_tanh"]
    if name == "layer_norm" and operands > 2:
        return OP_COSTS["layer_norm_bias"]
    return OP_COSTS.get(name, DEFAULT)


def _prod(dims: Sequence[int]) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n


def row_count(name: str, shape: Sequence[int], axis: int) -> int:
    """Rows a row-wise op reduces over: softmax one axis, layer_norm every axis from ``axis`` on."""
    if not shape:
        return 1 if name in ("softmax", "log_softmax", "layer_norm") else 0
    ax = axis % len(shape)
    if name == "layer_norm":
        return _prod(shape[:ax])
    return _prod(shape) // max(int(shape[ax]), 1) if shape[ax] else 0


def vector_work(name: str, elements: int, rows: int, *, approximate: str = "", operands: int = 1) -> tuple[int, int]:
    """(lane operations, special-function operations) of one compute op over ``elements`` (the larger
    of its result and operands) and ``rows`` reduced slices."""
    c = op_cost(name, approximate=approximate, operands=operands)
    return c.lane * elements + c.lane_row * rows, c.special * elements + c.special_row * rows


#: passes over the data each op class makes, lane and special operations together (a first-order sizing of
#: a vector kernel on an sfu tile's lanes, per element, rows left out): ``attnc.cost.work``
PASSES = {
    cls: OP_COSTS[name].per_element
    for cls, name in ((sp.SoftmaxOp, "softmax"), (sp.LogSoftmaxOp, "log_softmax"), (sp.LayerNormOp, "layer_norm_bias"),
                      (sp.GeluOp, "gelu"))  # fmt: skip
}


def row_steps(rows: int, mac_rows: int, row_block: int = 0) -> int:
    """MAC-array row steps over ``rows`` rows taken ``row_block`` at a time (0: all at once): a block of fewer
    rows than the array's height runs it part-full."""
    rb = min(row_block, rows) if row_block > 0 else rows
    return -(-rows // rb) * -(-rb // mac_rows) if rb else 0

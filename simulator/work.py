"""The work of one context, from its body: MACs, MAC-array cycles, lane and special-function operations and
SRAM traffic, by the rules docs/simulator.md states (the event model in :mod:`attnc.simulator.timing` turns
them into time), and which unit of the tile runs each.

Written from the spec independently of the compiler's cost model (``attnc.cost``); tests hold the two to the
same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnc.arch.datatypes import element_bytes
from attnc.backend.bitstream import Instr, KernelConfig
from attnc.errors import AttncError

#: buffer addressing and configuration data, not work (docs/design.md, "The dataflow level")
DATA_OPS = frozenset({"constant", "reshape", "transpose", "slice", "concat", "broadcast", "gather", "pad", "convert"})
MAC_OPS = frozenset({"matmul", "contract", "attention"})

# What each op costs (docs/simulator.md, "Operation costs"): (lane operations per element, special-function
# operations per element, lane operations per row, special-function operations per row). Lane operations are
# add, subtract, multiply, divide, max, compare, select; special functions (exp, log, erf, tanh, sigmoid,
# sqrt, rsqrt, reciprocal) are one result each of an exp unit or an sfu lane. A row is a slice a row-wise op
# reduces. Any op not listed: one lane operation per element.
SPECIAL = ("exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sigmoid")
PASSES: dict[str, tuple[int, int, int, int]] = {
    **{name: (0, 1, 0, 0) for name in SPECIAL},
    "gelu": (4, 1, 0, 0),  # x/√2, erf, 1 + e, x·(..), ·0.5
    "gelu_tanh": (8, 1, 0, 0),  # x², ·0.044715, + 1, x·(..), ·√(2/π), tanh, 1 + t, x·(..), ·0.5
    "softmax": (4, 1, 0, 1),  # max, x − m, exp, Σ, ·(1/Σ); per row 1/Σ
    "log_softmax": (4, 1, 1, 1),  # max, x − m, exp, Σ, x − (m + log Σ); per row m + log Σ, log Σ
    "layer_norm": (6, 0, 3, 1),  # Σx, x − μ, (x − μ)², Σ, ·rstd, ·γ; per row /L, /L, + ε, rsqrt
    "layer_norm_bias": (7, 0, 3, 1),  # ... + β
}
ROW_OPS = frozenset({"softmax", "log_softmax", "layer_norm"})
# fused attention (per score; per row and step): see fused_attention_work
FLAT_PER_SCORE = (4, 1)  # max, s − m, Σ, p·(1/Σ); exp
ONLINE_PER_SCORE = (3, 1)  # max, s − m, Σ; exp (the probabilities stay unnormalised)


def prod_dims(dims) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 0)
    return n


def dtype_bytes(dtype: str) -> int:
    return element_bytes(dtype)


# ---------------------------------------------------------------------------
# work of one context, from its body


@dataclass
class Work:
    macs: int = 0
    mac_cycles: int = 0  # on this tile's MAC array, before the fill (fused attention excluded)
    lane_ops: int = 0  # vector-lane operations (per element, passes included)
    special_ops: int = 0  # special-function operations (exp, erf, rsqrt, ...)
    sram_read: int = 0
    sram_write: int = 0
    # the fused attention instructions (spec 2): their MACs and lane operations are in ``macs`` and
    # ``lane_ops`` too, but they are timed by their own pipelined rule, fill included
    fused_macs: int = 0
    fused_lane_ops: int = 0
    fused_special_ops: int = 0
    fused_cycles: int = 0


def _shape(value) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        return value
    return None


def _row_steps(m: int, rows: int, row_block: int = 0) -> int:
    """MAC-array row steps over ``m`` rows taken ``row_block`` at a time (0: all at once): ⌈m/b⌉ blocks of
    ⌈b/rows⌉ steps, a block of fewer rows than the array's height running it part-full."""
    rb = min(row_block, m) if row_block > 0 else m
    return -(-m // rb) * -(-rb // rows) if rb > 0 else 0


def _gemm_cycles(out: list[int], k: int, rows: int, cols: int, row_block: int = 0) -> int:
    m = out[-2] if len(out) >= 2 else 1
    n = out[-1] if out else 1
    batch = prod_dims(out[:-2])
    return batch * _row_steps(max(m, 0), rows, row_block) * -(-max(n, 0) // cols) * max(k, 0)


def _einsum_sizes(equation: str, shapes: list[list[int] | None]) -> tuple[dict[str, int], str] | None:
    if "->" not in equation or "." in equation:
        return None
    lhs, out = equation.replace(" ", "").split("->")
    sizes: dict[str, int] = {}
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    for term, shape in zip(terms, shapes):
        if shape is None or len(term) != len(shape):
            return None
        for c, d in zip(term, shape):
            sizes[c] = max(sizes.get(c, 0), int(d))
    if any(c not in sizes for c in out):
        return None
    return sizes, out


def kernel_work(cfg: KernelConfig, tile) -> Work:
    """MACs, MAC-array cycles, lane operations and SRAM traffic of one context on ``tile``."""
    shapes: dict[int, list[int]] = {}
    dtypes: dict[int, str] = {}
    for p in cfg.inputs:
        # a port's shape is the whole tensor the body sees; its tokens only say how it streams in
        shapes[p.register] = list(p.shape)
        dtypes[p.register] = p.dtype
    rows, cols = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
    w = Work()
    for ins in cfg.body:
        out = _shape(ins.params.get("shape")) or []
        dtype = str(ins.params.get("dtype", "f32"))
        for r in ins.results:
            shapes[r] = out
            dtypes[r] = dtype
        if ins.opcode in DATA_OPS:
            continue
        ops = [shapes.get(r) for r in ins.operands]
        out_elems = prod_dims(out)
        w.sram_read += sum(prod_dims(s or []) * dtype_bytes(dtypes.get(r, "f32")) for r, s in zip(ins.operands, ops))
        w.sram_write += out_elems * dtype_bytes(dtype) * max(len(ins.results), 1)
        if ins.opcode == "attention" and "fusion" in ins.params:
            exps = _special_rate(tile)
            if exps <= 0:
                raise AttncError(f"simulate: kernel '{cfg.name}' on {tile.kind} tile ({tile.x}, {tile.y}): a fused "
                                 "attention runs its exps on the tile's exp unit, and the tile has none (exp_per_cycle 0)")
            a = fused_attention_work(ins, ops, out, rows, cols, max(tile.vector_lanes, 1), exps)
            w.macs += a.macs
            w.lane_ops += a.lane_ops
            w.special_ops += a.special_ops
            w.fused_macs += a.macs
            w.fused_lane_ops += a.lane_ops
            w.fused_special_ops += a.special_ops
            w.fused_cycles += a.cycles
            continue
        if ins.opcode == "butterfly_stage":
            macs, cycles = butterfly_stage_work(ins, ops, out, rows, cols)
            w.macs += macs
            w.mac_cycles += cycles
            continue
        if ins.opcode in MAC_OPS:
            macs, cycles, lane, special = _mac_work(ins, ops, out, rows, cols)
            w.macs += macs
            w.mac_cycles += cycles
            w.lane_ops += lane
            w.special_ops += special
            continue
        biggest = max([out_elems] + [prod_dims(s) for s in ops if s is not None])
        key = ins.opcode
        if key == "gelu" and ins.params.get("approximate") == "tanh":
            key = "gelu_tanh"
        elif key == "layer_norm" and len(ins.operands) > 2:
            key = "layer_norm_bias"
        lane, special, lane_row, special_row = PASSES.get(key, (1, 0, 0, 0))
        rows_n = _rows(ins, ops[0] if ops and ops[0] is not None else out) if ins.opcode in ROW_OPS else 0
        w.lane_ops += lane * biggest + lane_row * rows_n
        w.special_ops += special * biggest + special_row * rows_n
    return w


def _rows(ins: Instr, shape: list[int]) -> int:
    """The slices a row-wise op reduces: softmax along ``axis``, layer_norm over every dim from ``axis`` on."""
    if not shape:
        return 1
    axis = ins.params.get("axis", -1)
    ax = (axis if isinstance(axis, int) and not isinstance(axis, bool) else -1) % len(shape)
    if ins.opcode == "layer_norm":
        return prod_dims(shape[:ax])
    return prod_dims(shape) // shape[ax] if shape[ax] > 0 else 0


def _special_rate(tile) -> int:
    """Special-function results per cycle: a compute tile's exp unit (0: none), an sfu tile's lanes."""
    if tile.kind == "compute":
        return max(getattr(tile, "exp_per_cycle", 0), 0)
    return max(tile.vector_lanes, 0) if tile.kind == "sfu" else 0


@dataclass
class ContextCycles:
    """How long a context's work takes on its tile, and the operations charged to each unit."""

    compute: int  # cycles of work, spread over the context's segments
    fill: int  # pipeline fill, paid by the first segment
    vector_ops: int = 0
    sfu_ops: int = 0
    butterfly_ops: int = 0


def context_cycles(w: Work, tile) -> ContextCycles:
    """The cycles of ``w`` on ``tile`` (an ``attnc.arch.Tile``), by the unit each operation runs on: MACs on
    the MAC array, lane operations on the vector lanes, special functions on the exp unit (a compute tile)
    or the lanes (an sfu tile). Work a tile has no unit for is an error, not timed."""
    lanes = max(tile.vector_lanes, 1)
    if w.special_ops and _special_rate(tile) <= 0:
        raise AttncError(
            f"simulate: {tile.kind} tile ({tile.x}, {tile.y}) is given {w.special_ops} special-function operations "
            "(exp, erf, tanh, rsqrt, ...) and has no unit for them"
            + (" (exp_per_cycle 0)" if tile.kind == "compute" else "")
        )  # fmt: skip
    if tile.kind == "butterfly":
        # a 2x2 butterfly is 4 multiply-adds, or an operation on 2 elements
        units = -(-w.macs // 4) + -(-w.lane_ops // 2)
        return ContextCycles(-(-units // lanes), 0, butterfly_ops=units)
    if tile.kind == "compute":
        # fused attention instructions carry their own (pipelined) cycles and fill; the rest add up
        special = w.special_ops - w.fused_special_ops
        compute = w.mac_cycles + -(-(w.lane_ops - w.fused_lane_ops) // lanes) + w.fused_cycles
        compute += -(-special // tile.exp_per_cycle) if special else 0
        fill = tile.mac_rows + tile.mac_cols if w.macs > w.fused_macs else 0
        return ContextCycles(compute, fill, vector_ops=w.lane_ops, sfu_ops=w.special_ops)
    if tile.kind == "sfu":
        # no MAC array: a stray contraction runs on the lanes; a lane evaluates one special function a cycle
        units = w.macs + w.lane_ops + w.special_ops
        return ContextCycles(-(-units // lanes), 0, sfu_ops=units)
    return ContextCycles(0, 0)  # memory tiles hold data and compute nothing


def butterfly_stage_work(ins: Instr, ops: list, out: list[int], rows: int, cols: int) -> tuple[int, int]:
    """(MACs, MAC-array cycles) of a ``butterfly_stage``: the last axis (n) seen as [g, radix, stride,
    block], each of the g·stride (group, stride) slices is a GEMM [R, width] x [width, width] over the R
    rows (width = radix·block): R·n·width MACs, n/width · ⌈R/rows⌉ · ⌈width/cols⌉ · width cycles. With a
    ``row_block`` param b (the kernel holds b rows at a time), ⌈R/rows⌉ becomes ⌈R/b⌉ · ⌈b/rows⌉."""
    x = ops[0] if ops and ops[0] is not None else out
    n = max(x[-1], 0) if x else 0
    r_rows = prod_dims(x[:-1]) if x else 0
    width = max(_param_int(ins, "radix", 1), 1) * max(_param_int(ins, "block", 1), 1)
    slices = n // width
    steps = _row_steps(r_rows, rows, _param_int(ins, "row_block", 0))
    return r_rows * n * width, slices * steps * -(-width // cols) * width


def _mac_work(ins: Instr, ops: list, out: list[int], rows: int, cols: int) -> tuple[int, int, int, int]:
    """(MACs, MAC-array cycles, lane ops, special ops) of a matmul, contract or attention."""
    if ins.opcode == "matmul":
        a = ops[0] if ops else None
        k = (a[-1] if a else 1) if a is not None else 1
        # (a ``row_block``: the kernel takes that many rows at a time, part-full row steps below the array's height)
        return prod_dims(out) * k, _gemm_cycles(out, k, rows, cols, _param_int(ins, "row_block", 0)), 0, 0
    if ins.opcode == "contract":
        parsed = _einsum_sizes(str(ins.params.get("equation", "")), ops)
        if parsed is None:
            return prod_dims(out), _gemm_cycles(out, 1, rows, cols), 0, 0
        sizes, outs = parsed
        k = prod_dims(sizes[c] for c in sizes if c not in outs)
        return prod_dims(sizes.values()), _gemm_cycles(out, k, rows, cols), 0, 0
    # attention: q (B, H, S, d), k (B, Hkv, T, d), v (B, Hkv, T, dv) -> (B, H, S, dv)
    q = ops[0] if ops and ops[0] else [1, 1, 1, 1]
    kk = ops[1] if len(ops) > 1 and ops[1] else q
    d, t = q[-1], (kk[-2] if len(kk) >= 2 else 1)
    dv = out[-1] if out else d
    rows_q = prod_dims(q[:-1])
    scores = list(q[:-1]) + [t]
    macs = rows_q * t * (d + dv)
    cycles = _gemm_cycles(scores, d, rows, cols) + _gemm_cycles(list(q[:-1]) + [dv], t, rows, cols)
    lane, special, lane_row, special_row = PASSES["softmax"]  # a softmax over the scores, after QKᵀ
    lane = lane * rows_q * t + lane_row * rows_q + (rows_q * t if len(ins.operands) > 3 else 0)  # + the mask's add
    return macs, cycles, lane, special * rows_q * t + special_row * rows_q


@dataclass
class AttentionWork:
    macs: int = 0
    mac_cycles: int = 0
    lane_ops: int = 0
    special_ops: int = 0
    cycles: int = 0
    steps: int = 0  # (row block, key block) steps executed, over all (batch, head) units
    skipped: int = 0  # steps skipped by the causal rule


#: the causal rule walks row blocks one by one; beyond this many a bitstream is refused, not timed for hours
MAX_ROW_BLOCKS = 1 << 21


def _param_int(ins: Instr, key: str, default: int) -> int:
    v = ins.params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise AttncError(f"simulate: attention param '{key}' must be an integer, got {v!r}")
    return v


def fused_attention_work(ins: Instr, ops: list, out: list[int], rows: int, cols: int, lanes: int,
                         exps: int) -> AttentionWork:
    """Work of an ``attention`` instruction with a ``fusion`` schedule (spec 2, docs/simulator.md).

    For each (batch, head) unit, row blocks of ``R`` rows by key blocks of ``Kb`` keys (``"flat"``: Kb = T);
    a step is skipped when ``causal`` masks its first key for its last row. A step of r rows and kb keys does
    r·kb·(d + dv) MACs in ⌈r/rows⌉·⌈kb/cols⌉·d + ⌈r/rows⌉·⌈dv/cols⌉·kb MAC-array cycles, and per score
    4 lane operations (flat: max, s − m, Σ, p·(1/Σ)) or 3 (online: max, s − m, Σ) and one exp, + 1 lane
    operation with a mask. Flat adds one reciprocal per row; online adds, per row at each step after its
    row block's first, dv + 4 lane operations and one exp (m' = max(m, m_blk), m − m', α = exp(m − m'),
    l·α + l_blk, o·α), and per row of a row block that ran, one reciprocal and dv multiplies (o·(1/l)).
    The lanes and the exp unit (``exps`` results a cycle) overlap the MAC array, so the instruction takes
    max(MAC cycles, ⌈lane ops / lanes⌉, ⌈special ops / exps⌉) + (rows + cols) if it did any MAC."""
    fusion = ins.params.get("fusion")
    if fusion not in ("flat", "online"):
        raise AttncError(f"simulate: attention fusion {fusion!r} is not one of 'flat', 'online'")
    q = ops[0] if ops and ops[0] is not None else None
    k = ops[1] if len(ops) > 1 and ops[1] is not None else None
    v = ops[2] if len(ops) > 2 and ops[2] is not None else None
    if q is None or k is None or len(q) < 2 or len(k) < 2:
        raise AttncError(f"simulate: fused attention needs q and k of rank >= 2, got {q} and {k}")
    units, s, d = prod_dims(q[:-2]), max(q[-2], 0), max(q[-1], 0)
    t = max(k[-2], 0)
    dv = max(v[-1], 0) if v else (max(out[-1], 0) if out else d)
    r_blk = _param_int(ins, "row_block", max(s, 1))
    k_blk = max(t, 1) if fusion == "flat" else _param_int(ins, "key_block", -1)  # flat: one block of all keys
    if r_blk < 1 or k_blk < 1:
        raise AttncError(f"simulate: fused attention needs row_block and key_block >= 1, got {r_blk} and {k_blk}")
    causal = bool(ins.params.get("causal", 0))
    offset = _param_int(ins, "causal_offset", 0)
    masked = len(ins.operands) > 3
    online = fusion == "online"
    n_rows = -(-s // r_blk)
    n_keys = -(-t // k_blk)
    kb_last = t - (n_keys - 1) * k_blk if n_keys else 0
    ck_full, ck_last = -(-k_blk // cols), -(-kb_last // cols)
    cdv = -(-dv // cols)

    def row_block(r: int, n_exec: int) -> tuple[int, int, int, int]:
        """(MACs, MAC cycles, lane ops, special ops) of a row block of r rows running its first n_exec key
        blocks."""
        if n_exec <= 0:
            return 0, 0, 0, 0
        if n_exec == n_keys:
            sum_kb, sum_ck = t, (n_keys - 1) * ck_full + ck_last
        else:
            sum_kb, sum_ck = n_exec * k_blk, n_exec * ck_full
        cr = -(-r // rows)
        per_lane, per_exp = ONLINE_PER_SCORE if online else FLAT_PER_SCORE
        lane = per_lane * r * sum_kb + (r * sum_kb if masked else 0)
        special = per_exp * r * sum_kb + r  # + one reciprocal per row (1/Σ, 1/l)
        if online:  # every step after the first rescales the output and the sum; o·(1/l) at the end
            lane += (n_exec - 1) * r * (dv + 4) + r * dv
            special += (n_exec - 1) * r
        return r * sum_kb * (d + dv), cr * (sum_ck * d + cdv * sum_kb), lane, special

    a = AttentionWork()

    def add(r: int, n_exec: int, times: int) -> None:
        m, c, lane, special = row_block(r, n_exec)
        a.macs += m * times
        a.mac_cycles += c * times
        a.lane_ops += lane * times
        a.special_ops += special * times
        a.steps += max(n_exec, 0) * times
        a.skipped += (n_keys - max(n_exec, 0)) * times

    if n_rows and n_keys:
        r_last = s - (n_rows - 1) * r_blk
        if not causal:
            add(r_blk, n_keys, n_rows - 1)
            add(r_last, n_keys, 1)
        else:
            if n_rows > MAX_ROW_BLOCKS:
                raise AttncError(f"simulate: fused attention has {n_rows} row blocks, more than {MAX_ROW_BLOCKS}")
            for i in range(n_rows):
                r = r_blk if i < n_rows - 1 else r_last
                last = i * r_blk + r - 1 + offset  # the last row's last allowed key
                add(r, min(n_keys, last // k_blk + 1) if last >= 0 else 0, 1)
    a.macs *= units
    a.mac_cycles *= units
    a.lane_ops *= units
    a.special_ops *= units
    a.steps *= units
    a.skipped *= units
    exps = max(exps, 1)
    a.cycles = max(a.mac_cycles, -(-a.lane_ops // lanes), -(-a.special_ops // exps)) + (rows + cols if a.macs else 0)
    return a

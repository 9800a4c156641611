"""The analytical cost model against the simulator's timing model (the two tiers check each other):
DRAM bytes exactly, cycles within 10%, on every example, on hand-built attention graphs in every fusion
mode, on hand-built dataflow IR of the fused lowering (streamed ports, re-read K and V), and on the
benchmark sweep's BERT attention where it compiles and simulates in seconds (chains of members forwarding
K/V, memory-tile stages, spilled unfused intermediates)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import decode, encode
from attnc.backend.emit import emit_bitstream
from attnc.pipeline import backend_passes
from attnc.cost import estimate, format_cost
from attnc.cost.attention import attention_work
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.ir import parse_module
from attnc.passes.fuse_attention import FuseAttentionPass
from attnc.pipeline import DEFAULT_PIPELINE, run_pipeline
from attnc.simulator.timing import simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.onnx"))
CYCLES_TOLERANCE = 0.10


# ---------------------------------------------------------------------------
# the fused attention rule (spec section 2), against a step-by-step reading of it


def stepwise(q, k, v, *, fusion, row_block, key_block, causal, causal_offset, has_mask, rows, cols, lanes, exps):
    """The rule as the spec states it: every (unit, row block, key block) step, one at a time (the operations
    per score and per row are docs/simulator.md's table)."""
    *lead, s, d = q
    t, dv = k[-2], v[-1]
    kb_size = t if fusion == "flat" else key_block
    macs = mac_cycles = lane = special = 0
    for _ in range(math.prod(lead)):
        for i in range(-(-s // row_block)):
            r = min(row_block, s - i * row_block)
            executed = 0
            for j in range(-(-t // kb_size)):
                kb = min(kb_size, t - j * kb_size)
                if causal and j * kb_size > (i * row_block + r - 1) + causal_offset:
                    continue
                executed += 1
                macs += r * kb * (d + dv)
                mac_cycles += -(-r // rows) * -(-kb // cols) * d + -(-r // rows) * -(-dv // cols) * kb
                special += r * kb  # the exps
                if fusion == "flat":
                    lane += 4 * r * kb  # max, s - m, sum, p * (1/sum)
                else:
                    lane += 3 * r * kb  # max, s - m, sum
                    if executed > 1:  # max(m, m_blk), m - m', l * a + l_blk, o * a; a = exp(m - m')
                        lane += r * (4 + dv)
                        special += r
                lane += r * kb if has_mask else 0
            if executed:  # 1/sum per row; online: and o * (1/l)
                special += r
                lane += r * dv if fusion == "online" else 0
    cycles = max(mac_cycles, -(-lane // lanes), -(-special // exps)) + (rows + cols if macs else 0)
    return macs, mac_cycles, lane, cycles, special


def test_attention_work_by_hand():
    # one head, 8 rows in blocks of 4, 8 keys in blocks of 4, d = dv = 4, on a 4x4 MAC array with 4 lanes
    # and 4 exps a cycle: 4 steps of 4*4*8 MACs, each 1*1*4 + 1*1*4 cycles; online lane ops 3*16 per step,
    # 4*(4 + 4) for the rescale of each row block's second step, 4*4 per row block for o * (1/l); exps 16
    # per step, 4 per rescale, 4 reciprocals per row block
    w = attention_work([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=4, key_block=4,
                       causal=False, causal_offset=0, has_mask=False, rows=4, cols=4, lanes=4, exps=4)  # fmt: skip
    assert w == (4 * 128, 4 * 8, 4 * 48 + 2 * 32 + 2 * 16, max(32, 288 // 4, 80 // 4) + 8, 4 * 16 + 2 * 4 + 2 * 4)
    # causal: row block 0 (rows 0..3) sees key block 0 only; row block 1 both
    c = attention_work([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=4, key_block=4,
                       causal=True, causal_offset=0, has_mask=False, rows=4, cols=4, lanes=4)  # fmt: skip
    assert c.macs == 3 * 128 and c.mac_cycles == 3 * 8 and c.lane_ops == 3 * 48 + 32 + 2 * 16
    assert c.special_ops == 3 * 16 + 4 + 2 * 4
    # a slow exp unit binds: 1 exp a cycle
    slow = attention_work([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=4, key_block=4,
                          causal=False, causal_offset=0, has_mask=False, rows=4, cols=4, lanes=4, exps=1)  # fmt: skip
    assert slow.cycles == 80 + 8
    with pytest.raises(AttncError, match="the tile has none"):
        attention_work([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="flat", row_block=4, key_block=4,
                       rows=4, cols=4, lanes=4, exps=0)  # fmt: skip


@pytest.mark.parametrize("fusion", ["flat", "online"])
def test_attention_work_is_the_stepwise_rule(fusion):
    shapes = [((1, 2, 7, 5), (1, 1, 9, 5), (1, 1, 9, 3)), ((2, 1, 16, 8), (2, 1, 16, 8), (2, 1, 16, 8)),
              ((1, 1, 1, 4), (1, 1, 13, 4), (1, 1, 13, 6))]  # fmt: skip
    for (q, k, v), rb, kb, causal, offset, mask, (rows, cols, lanes, exps) in itertools.product(
        shapes, (1, 3, 4, 16), (1, 4, 5, 16), (False, True), (-3, 0, 2), (False, True), ((4, 4, 4, 4), (3, 5, 2, 1))
    ):
        rb_, kb_ = min(rb, q[2]), (k[2] if fusion == "flat" else min(kb, k[2]))
        args = dict(fusion=fusion, row_block=rb_, key_block=kb_, causal=causal, causal_offset=offset,
                    has_mask=mask, rows=rows, cols=cols, lanes=lanes, exps=exps)  # fmt: skip
        assert tuple(attention_work(q, k, v, **args)) == stepwise(q, k, v, **args), (q, k, v, args)


def test_a_fully_masked_attention_costs_nothing():
    w = attention_work([1, 1, 4, 4], [1, 1, 4, 4], [1, 1, 4, 4], fusion="online", row_block=2, key_block=2,
                       causal=True, causal_offset=-8, has_mask=False, rows=4, cols=4, lanes=4)  # fmt: skip
    assert tuple(w) == (0, 0, 0, 0, 0)


# ---------------------------------------------------------------------------
# the graph model against the simulator


def compile_module(module, arch: str, *, lowered: bool = False):
    """(dataflow IR, array IR, decoded bitstream) of a sparse-IR module (or of dataflow IR, ``lowered``);
    the heuristic placer first, CP-SAT when it cannot map (as the simulator's own example tests do)."""
    lowered = module.clone() if lowered else _lower(module, arch)
    placed = None
    for heuristic in (True, False):
        try:
            placed = lowered.clone()
            run_pipeline(placed, backend_passes(arch, time_limit=10.0, seed=0, heuristic_only=heuristic)[-1:])
            break
        except AttncError:
            if not heuristic:
                raise
    bitstream = decode(encode(emit_bitstream(placed, load_arch(arch), {})))
    return lowered, placed, bitstream


def _lower(module, arch: str):
    lowered = module.clone()
    # every back-end pass up to lower-to-dataflow, then place-route (the last one)
    run_pipeline(lowered, backend_passes(arch, time_limit=10.0, seed=0, heuristic_only=True)[:-1])
    return lowered


def example(name: str, pipeline: str = "canonicalize,raise-attention"):
    module = import_onnx(EXAMPLES / f"{name}.onnx")
    run_pipeline(module, pipeline)
    return module


def attention_graph(q, kv, *, causal=False, offset=0, mask=None, softcap=0.0):
    """A module holding one sparse.attention on q (B, H, S, d) and k = v (B, Hkv, T, d)."""
    ty = lambda s, e="f32": f"tensor<{'x'.join(map(str, s))}x{e}>"  # noqa: E731
    args = [f"%q: {ty(q)}", f"%k: {ty(kv)}", f"%v: {ty(kv)}"]
    operands = "%q, %k, %v"
    if mask is not None:
        shape, elt = mask
        args.append(f"%m: {ty(shape, elt)}")
        operands += f" mask %m : {ty(shape, elt)}"
    out = ty(q)
    attrs = (f"scale = {1 / math.sqrt(q[-1])} : f64, heads = {q[1]} : i64, kv_heads = {kv[1]} : i64, "
             f"{'causal, ' if causal else ''}causal_offset = {offset} : i64, softcap = {softcap} : f64")  # fmt: skip
    text = (
        f"builtin.module {{\n  func.func @main({', '.join(args)}) -> {out} {{\n"
        f"    %o = sparse.attention {operands} {{{attrs}}} : {ty(q)}, {ty(kv)}, {ty(kv)} -> {out}\n"
        f"    func.return %o : {out}\n  }}\n}}\n"
    )
    return parse_module(text)


ATTENTION_GRAPHS = {
    "plain": dict(q=(1, 2, 8, 8), kv=(1, 2, 8, 8)),
    "causal_cached": dict(q=(1, 2, 6, 8), kv=(1, 2, 10, 8), causal=True, offset=4),
    "gqa_bool_mask": dict(q=(1, 4, 8, 4), kv=(1, 1, 8, 4), mask=((1, 1, 8, 8), "i1")),
    "additive_softcap": dict(q=(2, 1, 8, 8), kv=(2, 1, 12, 8), mask=((2, 1, 8, 12), "f32"), softcap=20.0),
    # long enough for K/V to be re-streamed (staged on memory tiles, forwarded member to member)
    "long": dict(q=(1, 2, 64, 16), kv=(1, 2, 64, 16)),
    "long_causal": dict(q=(1, 2, 64, 16), kv=(1, 2, 64, 16), causal=True),
}
LONG = ("long", "long_causal")
MODES = ("online", "flat", "unfused")


def _ty(shape, elt="f32") -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{elt}>"


def _kernel(res, name, args, arg_types, out_type, body, result, *, kind, tile_kind, loops, tokens, buffer_bytes):
    names = ", ".join(f'"{n}"' for n, _ in loops)
    trips = ", ".join(str(t) for _, t in loops)
    block = ", ".join(f"%x{i}: {t}" for i, t in enumerate(arg_types))
    # declared cycles only set the placer's stream rates; the cost model and the simulator read the body
    return [
        f'    {res} = dataflow.kernel "{name}"({", ".join(args)}) attributes {{kind = "{kind}", '
        f'tile_kind = "{tile_kind}", loops = [{names}], trips = array<i64: {trips}>, tile = array<i64>, '
        f"buffer_bytes = {buffer_bytes} : i64, cycles = 20000 : i64, macs = 0 : i64, tokens = array<i64: {tokens}>}} "
        f": ({', '.join(arg_types)}) -> {out_type} {{",
        f"    ^bb0({block}):",
        *[f"      {line}" for line in body],
        f"      dataflow.yield {result} : {out_type}",
        "    }",
    ]


def fused_dataflow(q, kv, *, arch="tiny", fusion="online", row_block=4, key_block=4, members=1, passes=1,
                   causal=False, offset=0):  # fmt: skip
    """Dataflow IR as the fused lowering makes it (spec section 4), for one group: DMA loads of Q, K and V
    (K and V re-read ``passes`` times, a ``("repeat", P)`` loop), ``members`` compute kernels that each run
    one fused sparse.attention over their slice of the query rows, with streamed ports, and a store.

    Each kernel declares what it holds on ``arch`` (the simulator refuses a context that cannot hold what one
    segment works on): a DMA context two of its tokens, a member two tokens of each input and its f32 working
    set (output rows, scores, running max and sum), as much of that as its tile holds and never less than one
    token of each input."""
    b, h, s, d = q
    t = kv[2]
    units, kb = b * h, (t if fusion == "flat" else key_block)
    n_k = -(-t // kb)
    target = load_arch(arch)
    dma_sram = target.tiles_of("dma")[0].sram_bytes
    compute_sram = max(x.sram_bytes for x in target.tiles_of("compute"))
    q_tokens, kv_tokens = units * -(-s // row_block), passes * units * n_k
    q_bytes, kv_bytes = math.prod(q) * 4, math.prod(kv) * 4

    def dma(token: float) -> int:
        return min(math.ceil(2 * token), dma_sram)

    text = [f"builtin.module {{\n  func.func @main(%q: {_ty(q)}, %k: {_ty(kv)}, %v: {_ty(kv)}) -> {_ty(q)} {{"]
    text += _kernel("%lq", "load_q", ["%q"], [_ty(q)], _ty(q), [], "%x0", kind="dma_load", tile_kind="dma",
                    loops=[("burst", 1)], tokens=q_tokens, buffer_bytes=dma(q_bytes / q_tokens))  # fmt: skip
    for n in "kv":
        text += _kernel(f"%l{n}", f"load_{n}", [f"%{n}"], [_ty(kv)], _ty(kv), [], "%x0", kind="dma_load",
                        tile_kind="dma", loops=[("repeat", passes), ("burst", 1)], tokens=kv_tokens,
                        buffer_bytes=dma(passes * kv_bytes / kv_tokens))  # fmt: skip
    parts, out_tokens = [], 0.0
    for c in range(members):
        r0, r1 = c * s // members, (c + 1) * s // members
        rb = min(row_block, r1 - r0)
        qs = _ty((b, h, r1 - r0, d))
        # a token of each input as it reaches this member: its slice of q, all of K and V (every pass)
        tokens = q_bytes * (r1 - r0) / s / q_tokens + 2 * passes * kv_bytes / kv_tokens
        working = 4 * (rb * d + 2 * rb * kb + 2 * rb)
        member = max(math.ceil(tokens), min(math.ceil(2 * tokens) + working, compute_sram))
        attrs = (f"scale = 0.25 : f64, heads = {h} : i64, kv_heads = {kv[1]} : i64, {'causal, ' if causal else ''}"
                 f'causal_offset = {offset + r0} : i64, softcap = 0.0 : f64, fusion = "{fusion}", '
                 f"row_block = {rb} : i64, key_block = {kb} : i64")  # fmt: skip
        body = [
            f"%qs = sparse.slice %x0 {{starts = array<i64: 0, 0, {r0}, 0>, ends = array<i64: {b}, {h}, {r1}, {d}>, "
            f"steps = array<i64: 1, 1, 1, 1>}} : {_ty(q)} -> {qs}",
            f"%o = sparse.attention %qs, %x1, %x2 {{{attrs}}} : {qs}, {_ty(kv)}, {_ty(kv)} -> {qs}",
        ]
        n_r = -(-(r1 - r0) // rb)
        text += _kernel(f"%m{c}", f"member{c}", ["%lq", "%lk", "%lv"], [_ty(q), _ty(kv), _ty(kv)], qs, body, "%o",
                        kind="attention", tile_kind="compute", loops=[("unit", units), ("row_block", n_r),
                        ("key_block", n_k)], tokens=units * n_r, buffer_bytes=member)  # fmt: skip
        parts.append((f"%m{c}", qs))
        out_tokens += q_bytes * (r1 - r0) / s / (units * n_r)
    regs, types = ", ".join(f"%x{i}" for i in range(members)), ", ".join(p[1] for p in parts)
    cat = [] if members == 1 else [f"%c = sparse.concat {regs} {{axis = 2 : i64}} : ({types}) -> {_ty(q)}"]
    text += _kernel("%st", "store_out", [p[0] for p in parts], [p[1] for p in parts], _ty(q), cat,
                    "%x0" if members == 1 else "%c", kind="dma_store", tile_kind="dma", loops=[("burst", 1)],
                    tokens=1, buffer_bytes=dma(out_tokens))  # fmt: skip
    text += [f"    func.return %st : {_ty(q)}", "  }", "}"]
    return parse_module("\n".join(text) + "\n")


FUSED_DATAFLOW = {
    "online_1": ("tiny", dict(q=(1, 2, 16, 8), kv=(1, 2, 16, 8))),
    "online_2x2_passes": ("tiny", dict(q=(1, 2, 16, 8), kv=(1, 2, 16, 8), members=2, passes=2)),
    "online_causal": ("tiny", dict(q=(1, 2, 16, 8), kv=(1, 2, 16, 8), members=2, passes=2, causal=True)),
    "flat_1": ("tiny", dict(q=(1, 2, 16, 8), kv=(1, 2, 16, 8), fusion="flat", row_block=2)),
    "flat_gqa_causal": ("tiny", dict(q=(1, 2, 16, 8), kv=(1, 1, 24, 8), fusion="flat", members=2, causal=True,
                                     offset=8)),
    "online_passes4_edge": ("edge", dict(q=(1, 4, 64, 16), kv=(1, 4, 64, 16), passes=4, row_block=8,
                                         key_block=16)),
    "online_2_edge": ("edge", dict(q=(1, 2, 32, 16), kv=(1, 2, 32, 16), members=2, passes=2, row_block=8,
                                   key_block=8)),
    "online_causal_edge": ("edge", dict(q=(1, 2, 128, 32), kv=(1, 2, 128, 32), members=2, row_block=16,
                                        key_block=32, causal=True)),  # fmt: skip
}
# the benchmark sweep's workload (benchmarks/attention_sweep.py: BERT-base's attention core, 12 heads of 64,
# f16, Q/K/V from DRAM) at the points that compile and simulate in a few seconds: (batch, seq, mode)
SWEEP = {
    # (FLAT's row-granular flat schedule stops at 1024 keys on edge: an f32 score row of 2048 keys, double-buffered,
    # is all of a 16 KiB tile)
    "edge": [(1, 512, "unfused"), (1, 512, "flat"), (1, 512, "online"), (1, 1024, "flat"), (1, 2048, "online"),
             (1, 4096, "online"), (64, 512, "online"), (64, 2048, "unfused")],
    "cloud": [(1, 512, "unfused"), (1, 512, "flat"), (1, 512, "online")],
}  # fmt: skip


def bert_attention(batch: int, seq: int, mode: str, heads: int = 12, d: int = 64):
    """The sweep's ONNX Attention model, raised and scheduled by ``fuse-attention{mode}``."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [batch, heads, seq, d]) for n in "QKV"]
    out = helper.make_tensor_value_info("O", TensorProto.FLOAT16, [batch, heads, seq, d])
    graph = helper.make_graph([helper.make_node("Attention", ["Q", "K", "V"], ["O"])], "attention", ins, [out])
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))
    run_pipeline(module, f"canonicalize,raise-attention,fuse-attention{{mode={mode}}}")
    return module


# the examples as `attnc compile` builds them (fuse-attention chooses a schedule): on tiny only those
# whose chosen kernels fit its 16 compute contexts
DEFAULT_EXAMPLES = [("edge", n) for n in NAMES] + [("tiny", "attention23"), ("tiny", "gqa_block")]
#: the examples lowered head by head that tiny refuses at compile time (:func:`test_tiny_refuses_what_it_cannot_hold`)
TINY_REFUSED = ("bert_layer", "causal_decoder", "gqa_block")
CASES = (
    [(a, "example", n) for a in ("tiny", "edge") for n in NAMES if (a, n) not in [("tiny", r) for r in TINY_REFUSED]]
    + [(a, "default", n) for a, n in DEFAULT_EXAMPLES]
    + [("tiny", "attention", n) for n in ATTENTION_GRAPHS if n not in LONG]
    + [("tiny", m, n) for m in MODES for n in ATTENTION_GRAPHS if n not in LONG]
    + [(a, m, n) for a in ("tiny", "edge") for m in ("online", "flat") for n in LONG]
    + [(a, "fused", n) for n, (a, _) in FUSED_DATAFLOW.items()]
    + [(a, "sweep", f"b{b}_n{n}_{m}") for a, points in SWEEP.items() for b, n, m in points]
)


#: cases the model does not hold within 10%, and why (reported, not hidden by a wider tolerance)
_BACK_PRESSURE = (
    "the timing model holds a producer to its consumers' buffers (a token stays until the last segment "
    "that works on it) and moves DMA data token by token; the cost model times neither stall"
)
_HONEST_DEPTH = (
    "the timing model holds a producer to what its consumer declares (no longer two bursts and a step whatever "
    "the buffers hold): these attention members and stages declare room for about one token of q, K and V, so "
    "their loads wait for every release, which the cost model (double buffering) does not time: 13-37% more "
    "cycles simulated"
)
KNOWN_GAPS: dict[tuple[str, str, str], str] = {
    ("tiny", "default", "gqa_block"): (
        "the model predicts 23% more cycles (14,453 against 11,704) since the output projection's residual comes "
        "through a load of its own and q/K/V in member-sized tokens: the projections' weight streams overlap the "
        "members better than the model's segments say (not analysed further)"
    ),
    # q, K and V reach the members in the blocks they take (a row block of q, a unit's K or V), no longer in one
    # 4 KiB burst a member could not hold: the simulated run is faster than before (causal_cached 375 -> 326 cycles),
    # the model's own estimate faster still (11-15%). (attention23 on tiny held within 10% once the placer weighs
    # the work beyond each phase's length on every tile: model 1,053 cycles, simulated 1,147)
    ("tiny", "online", "causal_cached"): _BACK_PRESSURE,
    ("tiny", "flat", "causal_cached"): _BACK_PRESSURE,
    ("cloud", "sweep", "b1_n512_flat"): (
        "the members are compute-bound (6,208 cycles each) and, with the loads, DRAM-bound (6,979): the timing "
        "model overlaps them chunk by chunk and the members' last chunks and O's store follow the last K/V "
        "(7,884 cycles); the cost model takes the larger bound (11.5% under)"
    ),
    ("edge", "sweep", "b1_n1024_flat"): _BACK_PRESSURE,
    # (b1_n4096_online held within 10% once its K/V stages keep each unit's first keys: the simulated run
    # took 29.2M cycles, now 27.3M, its members less often waiting on the loads)
    ("edge", "sweep", "b64_n512_online"): _HONEST_DEPTH,
    ("edge", "sweep", "b64_n2048_unfused"): (
        "its spills move 393,216 tokens each through 4 KiB, more than the timing model cuts a context into "
        "(MAX_FINE_SEGMENTS): 41 contexts hold more than they declare (docs/simulator.md, 'What still overflows'). "
        "Since its GEMMs take 32 query rows a step, K/V are read a quarter as often and the cost model predicts it "
        "DRAM-bound at 521M cycles; the simulator, its spills moving 24 tokens a segment, takes 630M (17% more)"
    ),
}


def _cases(cases):
    return [
        pytest.param(*c, marks=pytest.mark.xfail(reason=KNOWN_GAPS[c], strict=True)) if c in KNOWN_GAPS else c
        for c in cases
    ]


def _source(arch: str, what: str, name: str):
    if what == "example":
        return example(name)
    if what == "default":
        return example(name, DEFAULT_PIPELINE)
    if what == "fused":
        return fused_dataflow(**FUSED_DATAFLOW[name][1], arch=arch)
    if what == "sweep":
        b, n, mode = name.split("_")
        return bert_attention(int(b[1:]), int(n[1:]), mode)
    module = attention_graph(**ATTENTION_GRAPHS[name])
    if what in MODES:
        run_pipeline(module, [FuseAttentionPass(mode=what)])
    return module


@pytest.fixture(scope="module")
def compiled():
    cache: dict = {}

    def get(arch: str, what: str, name: str):
        if (arch, what, name) not in cache:
            cache[arch, what, name] = compile_module(_source(arch, what, name), arch, lowered=what == "fused")
        return cache[arch, what, name]

    return get


@pytest.mark.parametrize("arch,what,name", _cases(CASES))
def test_the_cost_model_agrees_with_the_simulator(compiled, arch, what, name):
    lowered, placed, bitstream = compiled(arch, what, name)
    cost = estimate(placed, arch)
    stats = simulate(bitstream)
    assert cost.level == "array"
    assert (cost.dram_read_bytes, cost.dram_write_bytes) == (stats.dram_read_bytes, stats.dram_write_bytes)
    assert cost.macs == stats.macs
    # the simulator rounds each token batch's bytes to whole bytes; the model counts the route's bytes once
    assert cost.noc_byte_hops == pytest.approx(stats.noc_byte_hops, rel=0.01)
    assert abs(cost.cycles - stats.cycles) <= CYCLES_TOLERANCE * stats.cycles, (cost.cycles, stats.cycles, cost.bounds)
    assert cost.sram_read_bytes + cost.sram_write_bytes == stats.sram_read_bytes + stats.sram_write_bytes
    assert cost.energy_pj()["total"] == pytest.approx(stats.energy_pj()["total"], rel=1e-3)
    # every bound is a lower bound of the simulated run, up to the model's own error
    assert cost.bounds["dram"] <= stats.cycles and cost.bounds["link"] <= stats.cycles


def test_the_fused_cases_stream_and_re_read(compiled):
    """The hand-built fused graphs exercise what they are there for: fused attention instructions,
    streamed ports and repeated DMA loads."""
    repeated = 0
    for name, (arch, _) in FUSED_DATAFLOW.items():
        _, _, bitstream = compiled(arch, "fused", name)
        contexts = [c for t in bitstream.tiles for c in t.contexts]
        assert any(i.opcode == "attention" and "fusion" in i.params for c in contexts for i in c.body), name
        assert max(p.tokens for c in contexts for p in c.inputs) > 1, name
        repeated += any(n == "repeat" and t > 1 for c in contexts for n, t in c.loops)
    assert repeated >= 3


@pytest.mark.parametrize("name", TINY_REFUSED)
def test_tiny_refuses_what_it_cannot_hold(name):
    """The examples lowered head by head on tiny: BERT's output projection holds four [16, 16] f32 head outputs
    whole next to a weight token (5.2 KiB), a GEMM a [16, 64] f32 activation next to its weight's token; the
    kernels declare that, and placement refuses them by name and bytes instead of the simulator finding tiles over
    their SRAM."""
    with pytest.raises(AttncError, match=r"cannot map onto tiny: kernel '\w+' needs \d[\d.]* KiB of SRAM, the "
                                         r"largest compute tile has 4 KiB"):
        compile_module(example(name), "tiny")


def test_dataflow_ir_gives_the_same_traffic_before_placement(compiled):
    lowered, placed, _ = compiled("edge", "example", "bert_layer")
    before, after = estimate(lowered, "edge"), estimate(placed, "edge")
    assert before.level == "dataflow" and not before.links
    assert (before.dram_read_bytes, before.dram_write_bytes, before.macs) == (
        after.dram_read_bytes, after.dram_write_bytes, after.macs)  # fmt: skip
    # unplaced: one hop per stream, which no placement on distinct tiles beats
    assert 0 < before.noc_byte_hops
    assert [k.name for k in before.kernels] and all(k.tile is None for k in before.kernels)


def test_the_report_table(compiled):
    _, placed, _ = compiled("tiny", "example", "attention23")
    cost = estimate(placed, load_arch("tiny"))
    text = format_cost(cost)
    assert text.startswith("cost model (array IR on 'tiny'):")
    assert all(k.name[:28] in text for k in cost.kernels)
    assert f"cycles {cost.cycles} " in text and f"DRAM {cost.dram_read_bytes} B read" in text
    assert cost.bottleneck in cost.bounds


def test_sparse_ir_is_an_error():
    with pytest.raises(AttncError, match="needs dataflow IR"):
        estimate(example("attention23"), "tiny")


def test_unfused_prediction_counts_kv_re_reads():
    """K and V too large for the unfused GEMMs' tiles are re-read once per row block of the first member's rows
    (a kernel's units share those passes), and the prediction's DRAM bytes and time count them; where they fit,
    once."""
    from attnc.cost.attention import Shape, predict, unfused_kv_passes
    from attnc.passes.fuse_attention import Schedule

    sh = Shape(1, 12, 12, 512, 512, 64, 64, 2, False, 0, False, True)
    kv = sh.units * sh.keys * (sh.d + sh.dv) * sh.eb
    edge, cloud = load_arch("edge"), load_arch("cloud")
    et, ct = edge.tiles_of("compute")[0], cloud.tiles_of("compute")[0]
    many = Schedule("unfused", 4, 4, 128, 512)  # 3 heads a kernel: 192 KiB of K against 16 KiB tiles
    few = Schedule("unfused", 1, 16, 32, 512)
    # 32 GEMM kernels on 16 tiles: 8 KiB of room each, two 16-row tokens of q in a quarter of it
    assert unfused_kv_passes(sh, many, edge, et) == (8, 8)  # 128 rows, 16 a row block
    assert unfused_kv_passes(sh, few, edge, et) == (2, 2)
    assert predict(sh, many, edge, et).dram_bytes - predict(sh, few, edge, et).dram_bytes == 6 * kv
    assert predict(sh, many, edge, et).cycles > predict(sh, few, edge, et).cycles
    small = Shape(1, 2, 2, 64, 64, 16, 16, 2, False, 0, False, True)  # 4 KiB of K: fits a cloud tile
    assert unfused_kv_passes(small, Schedule("unfused", 1, 1, 64, 64), cloud, ct) == (1, 1)

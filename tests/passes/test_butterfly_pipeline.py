"""The butterfly expansion and pipeline planner (attnc.passes.butterfly_pipeline): the stage ops compute
what the butterfly matmul and Fourier ops did (reference interpreter, before == after), the planner's
column parts are the stage's own, and its kernels fit the tiles it was given."""

from __future__ import annotations

import numpy as np
import pytest
from attnc import butterfly as bf
from attnc.arch import load_arch
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import TAG, TILE_KIND
from attnc.dialects.encoding import ButterflyEncodingAttr
from attnc.dialects.values import from_numpy
from attnc.interpreter import interpret
from attnc.ir import main_func, set_io_names
from attnc.passes import butterfly_pipeline as bp
from attnc.passes.tile import REPORT_ATTR, TilePass
from attnc.pipeline import run_pipeline
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp, TensorType, f32
from xdsl.ir import Block, Region


def build_module(arg_shapes, body) -> ModuleOp:
    """@main(x...) whose body ``body(args, add)`` returns its results; ``add(op)`` appends an op and
    returns its result."""
    block = Block(arg_types=[TensorType(f32, list(s)) for s in arg_shapes])

    def add(op):
        block.add_op(op)
        return op.results[0]

    outs = body(block.args, add)
    block.add_op(func.ReturnOp(*outs))
    fn = func.FuncOp("main", FunctionType.from_lists([a.type for a in block.args], [o.type for o in outs]),
                     Region(block))  # fmt: skip
    set_io_names(fn, [f"x{i}" for i in range(len(arg_shapes))], [f"y{i}" for i in range(len(outs))])
    module = ModuleOp([fn])
    module.verify()
    return module


def const(add, arr):
    return add(sp.ConstantOp(from_numpy(np.asarray(arr, dtype=np.float32))))


def butterfly(add, x, kind, factors, block, perm="none", seed=0):
    n = sp.shape_of(x)[-1]
    sts = bf.stages(kind, n, factors, block)
    ws = bf.random_factors(sts, n, np.random.default_rng(seed))
    enc = ButterflyEncodingAttr(factors, block, perm=perm, kind=kind)
    return add(sp.ButterflyMatmulOp(x, [const(add, w) for w in ws], enc))


def inputs(module, seed=1):
    fn = main_func(module)
    rng = np.random.default_rng(seed)
    args = fn.body.block.args
    return {f"x{i}": rng.standard_normal(a.type.get_shape()).astype(np.float32) for i, a in enumerate(args)}


def expanded(module, arch=None):
    """A clone with its butterfly ops expanded: planned for ``arch`` by ``tile``, or plainly."""
    out = module.clone()
    if arch is None:
        bp.expand_plain(main_func(out))
    else:
        run_pipeline(out, [TilePass(arch=arch)])
    out.verify()
    fn = main_func(out)
    assert not [o for o in fn.body.block.ops if isinstance(o, (sp.ButterflyMatmulOp, sp.FourierOp))]
    return out


def same(module, other, tol=1e-5):
    ins = inputs(module)
    a, b = interpret(module, ins), interpret(other, ins)
    for k in a:
        assert np.max(np.abs(a[k] - b[k])) < tol * max(1.0, float(np.max(np.abs(a[k])))), k


CASES = [
    ("block", 4, 3, "none", (5, 48)),
    ("block", 2, 2, "none", (2, 3, 32)),
    ("block", 5, 1, "bitrev", (4, 32)),
    ("monarch", 2, 4, "none", (6, 16)),
    ("monarch", 2, 8, "bitrev", (3, 64)),
]


@pytest.mark.parametrize("kind,factors,block,perm,shape", CASES)
@pytest.mark.parametrize("arch", [None, "tiny", "edge"])
def test_butterfly_matmul_expansion_keeps_the_numbers(kind, factors, block, perm, shape, arch):
    m = build_module([shape], lambda a, add: [butterfly(add, a[0], kind, factors, block, perm)])
    e = expanded(m, arch)
    same(m, e)
    stages = [o for o in main_func(e).body.block.ops if isinstance(o, sp.ButterflyStageOp)]
    assert len(stages) >= factors
    gathers = [o for o in main_func(e).body.block.ops if isinstance(o, sp.GatherOp)]
    assert len(gathers) == (perm == "bitrev")


@pytest.mark.parametrize("shape,axes", [((1, 16, 24), (-2, -1)), ((2, 6, 10, 8), (1, 2, 3)), ((3, 12), (0,)),
                                        ((4, 9, 6), (-1,))])  # fmt: skip
@pytest.mark.parametrize("arch", [None, "edge"])
def test_fourier_expansion_is_the_fft(shape, axes, arch):
    m = build_module([shape], lambda a, add: [add(sp.FourierOp(a[0], axes))])
    e = expanded(m, arch)
    same(m, e, tol=2e-5)
    x = inputs(m)["x0"]
    y = interpret(e, {"x0": x})["y0"]
    assert np.max(np.abs(y - np.fft.fftn(x.astype(np.float64), axes=axes).real)) < 1e-4 * np.max(np.abs(y))


def test_views_are_the_stage_on_its_columns():
    """Each part of a stage, run on its columns with its slice of the weights, gives those columns of
    the whole stage's output (every split the planner may pick)."""
    rng = np.random.default_rng(0)
    n = 96
    for st in bf.stages("block", n, 5, 3) + bf.stages("monarch", n, 2, 8) + bf.fft_stages(12)[0]:
        nn = n if st.block != 2 else 24
        w = rng.standard_normal(st.weight_shape(nn))
        x = rng.standard_normal((3, nn))
        y = bf.apply_stage(x, w, st)
        for parts in (1, 2, 4, 8):
            vs = [bp.view(st, nn, parts, j) for j in range(parts)]
            if any(v is None for v in vs):
                continue
            assert sorted(c for v in vs for c in v.cols) == list(range(nn))
            for v in vs:
                cols = list(v.cols)
                local = bf.apply_stage(x[:, cols], w[v.g0 : v.g1, v.s0 : v.s1], v.stage)
                np.testing.assert_allclose(local, y[:, cols], rtol=1e-12, atol=1e-12)


def test_the_planner_splits_a_wide_butterfly_to_fit_the_tiles():
    """A 384-wide full butterfly (block 3, 7 stages: 9 KiB of f32 weights per stage) cannot sit whole
    on an 8 KiB butterfly tile: the plan splits it by columns and every kernel's weights fit its tile."""
    arch = load_arch("edge")
    m = build_module([(2048, 384)], lambda a, add: [butterfly(add, a[0], "block", 7, 3)])
    out = m.clone()
    run_pipeline(out, [TilePass(arch="edge")])
    fn = main_func(out)
    report = fn.attributes[REPORT_ATTR].data
    assert "bfly0" in report and "predicted" in report
    kernels: dict[str, list] = {}
    for o in fn.body.block.ops:
        if isinstance(o, sp.ButterflyStageOp):
            kernels.setdefault(o.attributes[TAG].data, []).append(o)
    assert len(kernels) > 1
    kinds = {ops[0].attributes[TILE_KIND].data for ops in kernels.values()}
    assert kinds <= {"butterfly", "compute"}
    sram = {t.kind: t.sram_bytes for t in arch.tiles}
    for ops in kernels.values():
        weights = sum(np.prod(sp.shape_of(o.weight)) * 4 for o in ops)
        assert weights < sram[ops[0].attributes[TILE_KIND].data]


def test_groups_respect_unjoinable_boundaries():
    assert bp._groups([1, 1, 1, 1], [True, True, True], 2) == [[0, 1], [2, 3]]
    assert bp._groups([3, 1, 1, 1], [True, True, True], 2) == [[0], [1, 2, 3]]
    assert bp._groups([1, 1, 1, 1], [True, False, True], 2) == [[0, 1], [2, 3]]
    assert bp._groups([1, 1, 1, 1], [False, False, True], 2) is None


def test_fourier_axes_split_each_tile_by_predicted_time():
    """The two axes of FNet's mixing run one after the other, so their chains split every free tile:
    together they fit each tile's contexts and SRAM, their summed predicted cycles are no worse than
    with each axis on half of every tile, and the op still computes the FFT."""
    arch = load_arch("edge")
    m = build_module([(1, 256, 384)], lambda a, add: [add(sp.FourierOp(a[0], (-2, -1)))])
    op = next(o for o in main_func(m).body.block.ops if isinstance(o, sp.FourierOp))
    assert bp.fourier_axes(op) == [1, 2]  # the last axis last: its rows stream to what follows
    slots = bp.free_slots(arch, {}, 0, 0)
    left = [bp.replace(s) for s in slots]
    plans = bp.plan_axes(op, arch, left, [])
    assert plans is not None and len(plans) == 2
    for si, s in enumerate(slots):
        on = [(p, k) for p in plans for k, w in enumerate(p.slots) if w == si]
        assert len(on) <= s.contexts
        assert sum(p.claims[k] for p, k in on) <= s.sram
    assert all(s.contexts >= 0 and s.sram >= 0 for s in left)

    halves, mine = 0, [bp.replace(s) for s in slots]
    for (n, rows), f in zip([(256, 384), (384, 256)], (0.5, 1.0)):
        sts, ws, _ = bf.fft_stages(n)
        ch = bp._Probe("p", None, sts, ws, dims=(2 * n, rows, 4))
        plan = bp.plan_chain(ch, arch, bp._scaled(mine, f), max_kernels=bp.AXIS_KERNELS)
        bp._commit(plan, mine)
        halves += plan.predicted
    assert sum(p.predicted for p in plans) <= halves
    same(m, expanded(m, "edge"), tol=2e-5)


def _bert_chain(rows: int = 512) -> bp._Probe:
    """A BERT-base 768-wide full block butterfly (block 3, 8 stages) on ``rows`` f16 rows."""
    sts = bf.stages("block", 768, 8, 3)
    ws = [w.astype(np.float16) for w in bf.random_factors(sts, 768, np.random.default_rng(0))]
    return bp._Probe("c", None, sts, ws, dims=(768, rows, 2))


def test_a_kernel_takes_the_largest_row_block_its_sram_holds():
    """A 768-wide f16 chain alone on a 16 KiB edge compute tile streams its weights (74 KiB): each pass holds
    its rows while the weights stream through, next to the token arriving (3 KiB a row). 128 passes of
    4-row tokens fit (12 KiB; the MAC array runs half full); 64 passes of 8 rows would need 16 rows (24 KiB),
    and 64 passes of 1-row tokens run the MAC array an eighth full."""
    arch = load_arch("edge")
    tile = arch.tiles_of("compute")[0]
    ch = _bert_chain()
    plan = bp.plan_chain(ch, arch, [bp.Slot(0, "compute", tile, 1, tile.sram_bytes)])
    assert plan.passes == 128 and plan.tokens == 128 and plan.blocks == [4]
    assert plan.needs[0] <= tile.sram_bytes
    views = [bp.View(tuple(range(768)), st, 0, 0, 0, 0) for st in ch.stages]
    assert bp.kernel_need(views, 512, 64, 2, 64) > tile.sram_bytes
    assert plan.cycles[0] < bp.stage_kernel_cycles(ch.stages, 768, 512, tile, "compute", 1)
def test_chains_that_share_dram_plan_with_their_share_of_it():
    """The chains running at the same time share DRAM (their rows in and out, weights streamed once per row
    block): a chain with a quarter of the bandwidth predicts its DRAM time four times as long, and streams its
    weights no more often (at seq 512 four FFN chains each streaming 74 KiB 64 times, planned as if each had
    all of DRAM, had made their phase DRAM-bound at twice the predicted cycles)."""
    arch = load_arch("edge")
    slots = bp.free_slots(arch, {}, 0, 0)
    ch = _bert_chain()
    alone = bp.plan_chain(ch, arch, [bp.replace(s) for s in slots], share=1.0)
    shared = bp.plan_chain(ch, arch, [bp.replace(s) for s in slots], share=0.25)
    assert alone.bound == shared.bound == "dram"
    assert shared.predicted > 3 * alone.predicted
    assert shared.passes <= alone.passes


def _two_phase_module():
    """x -> two butterflies of x (one phase) -> their sum -> a third butterfly (the next phase)."""

    def body(a, add):
        y0 = butterfly(add, a[0], "block", 5, 1, seed=1)
        y1 = butterfly(add, a[0], "block", 5, 1, seed=2)
        s = add(sp.AddOp(y0, y1))
        return [butterfly(add, s, "block", 5, 1, seed=3)]

    return build_module([(256, 32)], body)


def test_butterfly_phases_count_the_mac_ops_before_each_op():
    m = _two_phase_module()
    fn = main_func(m)
    ops = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    assert list(bp.butterfly_phases(fn, ops).values()) == [0, 0, 1]


def test_with_sram_phases_each_phase_plans_on_the_whole_sram():
    """Without SRAM phases every chain is resident: one budget for all, by MACs. With them (``tile`` set
    ``attnc.share_sram``) the ops of a phase share every tile's SRAM, each phase all of it, and the contexts
    are split over the phases in proportion to the square root of their MACs (each phase at least one
    kernel per op)."""
    from attnc.passes.sram_phases import SHARE_ATTR
    from xdsl.dialects.builtin import IntegerAttr

    arch = load_arch("edge")
    m = _two_phase_module()
    fn = main_func(m)
    ops = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    slots = bp.free_slots(arch, {}, 0, 0)
    contexts, sram = sum(s.contexts for s in slots), sum(s.sram for s in slots)
    (resident,) = bp._phase_budgets(fn, ops, slots)
    assert resident[0] == ops and (resident[1].contexts, resident[1].sram) == (contexts, sram)
    fn.attributes[SHARE_ATTR] = IntegerAttr(1, 64)
    first, second = bp._phase_budgets(fn, ops, slots)
    assert first[0] == ops[:2] and second[0] == ops[2:]
    assert first[1].sram == second[1].sram == sram
    assert first[1].macs == 2 * second[1].macs
    assert first[1].contexts == int(contexts * np.sqrt(2) / (np.sqrt(2) + 1))
    assert first[1].contexts + second[1].contexts <= contexts
    # planned: the phases' kernels together take no more contexts than the tiles have, and a later phase
    # reuses SRAM the earlier one claims
    plans = bp.plan_butterflies(fn, arch, {}, 0, 0)
    kernels = [len(p.kinds) for _, ps in plans.plans.values() for p in ps]
    assert sum(kernels) <= contexts
    same(m, expanded(m, "edge"))


def test_chains_of_one_phase_plan_with_the_load_the_ones_before_left():
    """Chains that run at the same time (a block's Q, K and V) share the tiles' time: the second chain on the
    butterfly tile the first took predicts both kernels' cycles there (it had predicted its lone kernel's,
    and the Q and V chains of a BERT layer on edge stacked on one butterfly tile ran 2x longer than planned);
    a chain of another phase starts from idle tiles. (A cloud butterfly tile: an edge one holds one BERT
    chain's buffers.)"""
    arch = load_arch("cloud")
    bt = arch.tiles_of("butterfly")[0]
    slots = [bp.Slot(0, "butterfly", bt, 4, bt.sram_bytes)]

    def chain():
        ch = _bert_chain()
        ch.grain = 8  # tokens its readers hold: two chains' buffers then share the tile
        return ch

    first = bp.plan_chain(chain(), arch, slots, max_kernels=1)
    assert first.kinds == ["butterfly"]
    bp._commit(first, slots, busy=True)
    second = bp.plan_chain(chain(), arch, slots, max_kernels=1)
    assert second.kinds == ["butterfly"] and second.slots == first.slots
    assert second.predicted >= first.cycles[0] + second.cycles[0]
    for s in slots:
        s.busy = 0
    assert bp.plan_chain(chain(), arch, slots, max_kernels=1).predicted == first.predicted


def test_a_chain_counts_the_kernels_its_row_blocks_stream_through():
    """Resident (no SRAM phases), a butterfly's row blocks stream on through row kernels and the next
    butterflies: x -> two butterflies -> their sum (a row kernel) -> a butterfly -> the result. The first two
    stream through the add and the third butterfly (2, and 3 if something computed on its result); the last
    goes straight to its store (0). An attention waits for whole tensors and ends a chain's tail; with SRAM
    phases every chain's result goes to a spill (0)."""
    m = _two_phase_module()
    fn = main_func(m)
    ops = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    phase = bp.butterfly_phases(fn, ops, streaming=True)
    assert list(phase.values()) == [0, 0, 0]  # one streaming region: no barrier between them
    assert list(bp.chain_tails(fn, ops, phase, False).values()) == [2, 2, 0]
    assert list(bp.chain_tails(fn, ops, bp.butterfly_phases(fn, ops), True).values()) == [0, 0, 0]


def test_a_drain_of_few_large_row_blocks_makes_a_chain_take_more():
    """The tail's drain costs a row-block time per kernel: the same chain with a tail predicts more, and it is
    planned with at least as many row blocks (the BERT FFN's chains had streamed 128-row blocks through five
    kernels after them)."""
    arch = load_arch("edge")
    slots = [s for s in bp.free_slots(arch, {}, 0, 0) if s.kind == "compute"]  # compute-bound
    lone, tailed = _bert_chain(), _bert_chain()
    tailed.tail = 5
    a = bp.plan_chain(lone, arch, [bp.replace(s) for s in slots], max_kernels=1)
    b = bp.plan_chain(tailed, arch, [bp.replace(s) for s in slots], max_kernels=1)
    assert b.predicted > a.predicted and b.tokens >= a.tokens


def test_a_kernel_keeps_to_its_share_of_the_chain_budget_when_it_can():
    """Each kernel takes the largest tokens that fit its tile and its share of the chain's SRAM budget
    (if any does): taking what only the tile holds had put every edge chain at seq 2048 over its budget,
    the planner then fell back to no budget, and the last chains found no room ("no grouping of its 8
    stages fits the free tiles"). Here the tile alone takes 4-row tokens in 128 passes (12 KiB); within
    8,000 bytes the chain makes more passes of 2-row tokens."""
    arch = load_arch("edge")
    tile = arch.tiles_of("compute")[0]
    free = bp.plan_chain(_bert_chain(), arch, [bp.Slot(0, "compute", tile, 4, tile.sram_bytes)], max_kernels=1)
    assert sum(free.claims) > 8_000
    plan = bp.plan_chain(_bert_chain(), arch, [bp.Slot(0, "compute", tile, 4, tile.sram_bytes)], max_kernels=1,
                         sram_budget=8_000)  # fmt: skip
    assert sum(plan.claims) <= 8_000 and plan.blocks == [2] and plan.passes > free.passes


def test_streamed_weights_hold_two_tokens_of_their_load():
    """Hand count: a 768-wide kernel of all 8 stages (block 3: 128 slices of 6x6 f16 a stage, 9216 B) streams
    73728 B a pass in 18 DMA bursts of 4096 B; a token puts the largest slice over the bursts (512 B) in its
    buffers, two of them held (lower-to-dataflow's declaration): 1024 B. With 4-row tokens and 128 passes
    (4 rows a pass) it also holds a pass's rows and the next token: 8 rows of 1536 B."""
    from attnc.cost.work import streamed_weight_bytes

    assert streamed_weight_bytes([9216] * 8) == 2 * 512
    assert streamed_weight_bytes([4096]) == 2 * 4096  # one burst: the whole slice is a token
    ch = _bert_chain()
    views = [bp.View(tuple(range(768)), st, 0, 0, 0, 0) for st in ch.stages]
    assert bp.kernel_need(views, 512, 128, 2, 128) == 1024 + 8 * 768 * 2


def test_a_chain_that_streams_on_chip_is_not_predicted_dram_bound():
    """A resident chain reads its rows from the kernel before it and sends its result to the one after it:
    only its weights cross DRAM. Counted as reading and writing its rows through DRAM with a twelfth of the
    bandwidth (the MAC share of one of BERT's 12 linears), a 768-wide chain at seq 512 on cloud was predicted
    DRAM-bound at ~40K cycles and kept to a few kernels; streaming on chip, it is compute-bound and faster."""
    arch = load_arch("cloud")
    slots = bp.free_slots(arch, {}, 0, 0)
    through = _bert_chain()
    on_chip = _bert_chain()
    on_chip.dram_streams = 0
    before = bp.plan_chain(through, arch, [bp.replace(s) for s in slots], share=1 / 12, max_kernels=16)
    after = bp.plan_chain(on_chip, arch, [bp.replace(s) for s in slots], share=1 / 12, max_kernels=16)
    assert before.bound == "dram" and after.bound == "compute"
    assert after.predicted < before.predicted / 2


def test_which_row_streams_of_a_butterfly_cross_dram():
    """A graph input is loaded and a result returned (through data movement) is stored; a value between two
    kernels streams on chip."""
    def body(args, add):
        y = butterfly(add, args[0], "block", 3, 1)
        z = add(sp.AddOp(y, y))
        w = butterfly(add, z, "block", 3, 1, seed=1)
        return [add(sp.ReshapeOp(w, [8, 8]))]

    fn = main_func(build_module([(1, 8, 8)], body))
    a, b = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    assert (bp._from_dram(a.input), bp._to_dram(a.results[0])) == (1, 0)
    assert (bp._from_dram(b.input), bp._to_dram(b.results[0])) == (0, 1)


def test_weight_pieces_keep_to_the_memory_contexts_other_chains_left():
    """Each staged piece of weights is a memory-tile context: a chain plans its pieces into the contexts the
    chains before it left (cloud's 4 memory tiles x 8 contexts held 48 pieces of BERT's FFN chains at seq
    2048, which no placement fits)."""
    assert bp._pack([10, 10, 10], [100, 100], [1, 1]) is None
    assert bp._pack([10, 10, 10], [100, 100], [2, 1]) is not None
    arch = load_arch("edge")
    tile = arch.tiles_of("compute")[0]
    room = bp.MemoryRoom([80 * 1024] * 2, [0, 0])
    plan = bp.plan_chain(_bert_chain(), arch, [bp.Slot(0, "compute", tile, 1, tile.sram_bytes)], memory=room,
                         prefer_staged=True)  # fmt: skip
    assert not plan.staged
    room = bp.MemoryRoom([80 * 1024] * 2, [4, 4])
    plan = bp.plan_chain(_bert_chain(), arch, [bp.Slot(0, "compute", tile, 1, tile.sram_bytes)], memory=room,
                         prefer_staged=True)  # fmt: skip
    assert plan.staged
    bp._take_memory(room, plan)
    assert sum(room.contexts) == 8 - sum(plan.pieces) and sum(plan.pieces) >= 1


def test_contexts_are_kept_for_the_column_parts_of_a_gelu_between_butterflies():
    """Bias add and GELU between two butterflies get the share of the free compute contexts that their lane
    cycles are of theirs and the stages' together; a plain bias add (no special function), none."""
    def ffn(gelu):
        def body(args, add):
            y = butterfly(add, args[0], "block", 3, 1)
            y = add(sp.AddOp(y, const(add, np.ones(8))))
            if gelu:
                y = add(sp.MulOp(y, add(sp.ErfOp(y))))
            return [butterfly(add, y, "block", 3, 1, seed=1)]
        return main_func(build_module([(1, 64, 8)], body))

    arch = load_arch("cloud")
    for gelu in (True, False):
        fn = ffn(gelu)
        ops = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
        slots = bp.free_slots(arch, {}, 0, 0)
        keep = bp.row_part_contexts(fn, ops, arch, slots)
        assert (keep > 0) is gelu
        free = sum(s.contexts for s in slots if s.kind == "compute")
        bp._keep_for_row_parts(slots, keep)
        assert sum(s.contexts for s in slots if s.kind == "compute") == free - keep


def test_stages_merge_where_the_mac_array_takes_them_wider():
    """On a 32-column MAC array a width-6 stage (radix 2, block 3) costs what a width-24 one does: the 8 stages
    of a 768-wide chain merge in runs of at most 3 (fewest cycles: 3 stages), and the runs of fewest MACs
    among those; a width-32 stage (block 16) gains nothing from merging."""
    tile = load_arch("cloud").tiles_of("compute")[0]
    sts = bf.stages("block", 768, 8, 3)
    runs = bp.merge_runs(sts, 768, tile)
    assert sum(runs) == 8 and len(runs) == 3 and max(runs) == 3
    merged = bp.merged_stages(sts, runs)
    assert [st.width for st in merged] == [3 * 2**r for r in runs]
    assert bp.merge_runs(bf.stages("block", 512, 5, 16), 512, tile) == []


def test_a_merged_chain_keeps_the_numbers_and_says_so():
    """On cloud the planner merges the stages of a chain of constant weights (its report says how) and the
    expansion computes what the butterfly matmul did."""
    m = build_module([(64, 96)], lambda a, add: [butterfly(add, a[0], "block", 5, 3)])
    e = expanded(m, "cloud")
    same(m, e)
    fn = main_func(e)
    assert "merged as" in fn.attributes[REPORT_ATTR].data
    stages = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyStageOp)]
    assert max(o.radix.value.data for o in stages) > 2


def test_chains_share_the_dram_with_their_phase_only():
    """Two butterflies of x run together and a third after their sum: the first two split the DRAM by MACs, the
    third has it all (with a share of every chain in the module it was planned DRAM-bound for nothing)."""
    fn = main_func(_two_phase_module())
    ops = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    shares = bp.phase_dram_shares(ops, bp.butterfly_phases(fn, ops))
    assert [shares[o] for o in ops] == [0.5, 0.5, 1.0]
    assert list(bp.phase_dram_shares(ops, {o: 0 for o in ops}).values()) == [1 / 3] * 3


def _epilogue_layer(add, x, r, n=512):
    """A linear whose result takes a bias, a residual and a layer norm, then a sum of two linears: what BERT's
    output projection and FFN2 end in (constants of n f32 values: held whole, above the small-constant size)."""
    y = butterfly(add, x, "block", 3, 1)
    y = add(sp.AddOp(y, const(add, np.ones(n))))
    y = add(sp.AddOp(y, r))
    y = add(sp.LayerNormOp(y, const(add, np.ones(n)), const(add, np.zeros(n)), -1, 1e-5))
    a = butterfly(add, y, "block", 3, 1, seed=1)
    b = butterfly(add, y, "block", 3, 1, seed=2)
    return [add(sp.AddOp(a, b))]


def test_the_epilogue_a_chain_ends_in_is_what_its_last_kernel_reads():
    """A butterfly with a bias add, a residual add and a layer norm after it, then two butterflies summed. The
    first's epilogue reads one row stream (the residual) and three constants of 2 KiB (bias, scale, shift); of
    the sum, the first summand's chain takes nothing (the add waits for the second, a later kernel), the second's
    reads the first's result as a row stream."""
    fn = main_func(build_module([(1, 64, 512)] * 2, lambda args, add: _epilogue_layer(add, *args)))
    first, a, b = [o for o in fn.body.block.ops if isinstance(o, sp.ButterflyMatmulOp)]
    assert bp.epilogue_reads(first) == (1, 3 * 512 * 4)
    assert bp.epilogue_reads(a) == (0, 0)
    assert bp.epilogue_reads(b) == (1, 0)


def test_a_stage_kernel_declares_what_the_planner_claimed(monkeypatch):
    """Lowered on edge, every stage kernel's plan holds what the planner claimed for it, its need or more (BERT-base's
    butterfly layer on edge at seq 512: its last kernel declared 14,336 B where 7,168 B were planned: the inputs
    of its epilogue, uncounted)."""
    from attnc.dialects import dataflow as df
    from attnc.passes import lower_dataflow as ld
    from attnc.passes.fuse_elementwise import FuseElementwisePass

    plans, lowered = {}, {}
    init = bp.ExpandButterflyPattern.__init__

    def keep(self, p):
        plans.update({name: pl for name, pl in p.values()})
        init(self, p)

    build = ld._Partitioner._kernel_op

    def record(self, name, *a, **k):
        out = build(self, name, *a, **k)
        lowered[out.sym_name.data] = out.buffer_bytes.value.data
        return out

    monkeypatch.setattr(bp.ExpandButterflyPattern, "__init__", keep)
    monkeypatch.setattr(ld._Partitioner, "_kernel_op", record)
    arch = load_arch("edge")
    module = build_module([(1, 64, 512)] * 2, lambda args, add: _epilogue_layer(add, *args))
    run_pipeline(module, [TilePass(arch=arch), FuseElementwisePass(arch=arch), ld.LowerToDataflowPass(arch=arch)])
    fn = main_func(module)
    stage_kernels = {k.sym_name.data for k in fn.body.block.ops if isinstance(k, df.KernelOp) and ld._stage_rows(k)}
    checked = 0
    for name, chain_plans in plans.items():
        for plan in chain_plans:
            kid = 0
            for gi in range(len(plan.groups)):
                for j in range(plan.parts):
                    tag = f"{name}_s{gi}" + (f"_p{j}" if plan.parts > 1 else "")
                    assert tag in stage_kernels
                    assert lowered[tag] == plan.claims[kid] >= plan.needs[kid], tag
                    kid += 1
                    checked += 1
    assert checked >= 3


def test_a_last_kernel_counts_its_epilogue_when_some_grouping_fits_it():
    """A 768-wide chain alone on a 16 KiB edge tile (its weights streamed): with a residual and 4.5 KiB of bias and
    norm constants to add, its one kernel needs that much more than without, at the same row blocks; with more
    than its tile can hold beside any grouping, it plans as without and says the epilogue is not counted."""
    arch = load_arch("edge")
    tile = arch.tiles_of("compute")[0]

    def plan(epilogue):
        ch = _bert_chain()
        ch.epilogue = epilogue
        return bp.plan_chain(ch, arch, [bp.Slot(0, "compute", tile, 1, tile.sram_bytes)])

    bare = plan((0, 0))
    small = plan((0, 1024))
    assert small.epilogue and small.tokens == bare.tokens and small.needs[0] == bare.needs[0] + 1024
    assert small.needs[0] <= tile.sram_bytes
    full = plan((1, 4608))
    assert full.epilogue and full.needs[0] <= tile.sram_bytes
    assert full.needs[0] >= 4608 + 2 * (512 // full.tokens) * 768 * 2
    over = plan((4, tile.sram_bytes))
    assert not over.epilogue and over.needs == bare.needs and "not counted" in over.text()


def test_spilled_queries_leave_the_members_tiles_to_the_stages():
    """Queries of which a member's share is more than its buffers go through DRAM (lower-to-dataflow's
    spill_held_queries): the stage planner does not count them, and the rest of the members' tiles is free for
    stage kernels (BERT-base's butterfly layer on edge at seq 512: 8 members of 11,392 B, 768 KiB of queries);
    queries that fit beside the buffers stay counted."""
    arch = load_arch("edge")
    tile = arch.tiles_of("compute")[0]
    members, buffer = 8, 11392
    assert bp.members_sram(members * buffer, 768 * 1024) == members * buffer
    assert bp.members_sram(members * buffer, 8 * 1024) == members * buffer + 8 * 1024
    shown = bp.free_slots(arch, {}, bp.members_sram(members * buffer, 768 * 1024), members)
    hidden = bp.free_slots(arch, {}, members * buffer + 768 * 1024, members)
    assert sum(s.kind == "compute" for s in hidden) == 16 - members
    assert sum(s.kind == "compute" for s in shown) == 16
    assert sum(s.sram for s in shown if s.kind == "compute") - sum(s.sram for s in hidden if s.kind == "compute") \
        == members * (tile.sram_bytes - buffer)

"""tile's GEMM grids (attnc.passes.gemm): every large GEMM over the compute tiles of its phase, its parts
computing what the GEMM computes, their buffers within the tile's SRAM, the operands passed along the grid."""

from dataclasses import replace

import numpy as np
import pytest
from test_tile import ffn_model

from attnc.arch import load_arch
from attnc.dialects import dataflow as df
from attnc.interpreter import interpret
from attnc.ir import main_func
from attnc.passes.gemm import grid_search, part_buffer
from attnc.pipeline import run_pipeline


def _kernels(module) -> dict[str, df.KernelOp]:
    return {k.sym_name.data: k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)}


def _part(name: str) -> tuple[str, int, int] | None:
    head, _, rc = name.rpartition("_r")
    if not head.startswith("gemm") or "c" not in rc:
        return None
    r, c = rc.split("c")
    return head, int(r), int(c)


@pytest.mark.parametrize("arch", ["edge", "cloud"])
def test_grid_parts_compute_the_gemms_and_pass_operands_along_rows_and_columns(arch):
    module, inputs = ffn_model()
    before = interpret(module, inputs)
    run_pipeline(module, f"tile{{arch={arch}}}")
    report = main_func(module).attributes["attnc.tile_report"].data
    assert report.count("parts, blocks") == 2
    np.testing.assert_allclose(interpret(module, inputs)["y"], before["y"], rtol=1e-5, atol=1e-5)
    run_pipeline(module, f"lower-to-dataflow{{arch={arch}}}")
    np.testing.assert_allclose(interpret(module, inputs)["y"], before["y"], rtol=1e-5, atol=1e-5)
    kernels = _kernels(module)
    parts = {p: k for n, k in kernels.items() if (p := _part(n))}
    tile = load_arch(arch).tiles_of("compute")[0]
    assert parts and all(k.buffer_bytes.value.data <= tile.sram_bytes for k in parts.values())
    for (g, r, c), k in parts.items():
        sources = {getattr(v.owner, "sym_name", None) and v.owner.sym_name.data for v in k.inputs}
        # the row strip from the part to the left, the weight block from the part above (or their loads)
        left, up = f"{g}_r{r}c{c - 1}", f"{g}_r{r - 1}c{c}"
        assert (left in sources) == (c > 0) and (up in sources) == (r > 0)
        assert any(s and s.startswith("load_const") for s in sources) == (r == 0)  # the block's own load
        assert not any(s and s.startswith(g + "_") for s in sources - {left, up})


def test_sequential_gemms_are_not_given_the_array_as_if_they_ran_at_once():
    # FFN2 reads what FFN1 writes: they cannot run at once, so each may take more than half the tiles
    module, _ = ffn_model(rows=1024, hidden=512, inner=2048)
    run_pipeline(module, "tile{arch=cloud}")
    tags = {o.attributes["dataflow.tag"].data for o in main_func(module).body.block.ops
            if o.name == "sparse.matmul" and "dataflow.tag" in o.attributes}  # fmt: skip
    tiles = len(load_arch("cloud").tiles_of("compute"))
    counts = [sum(1 for t in tags if t.startswith(g + "_")) for g in ("gemm0", "gemm1")]
    assert sum(counts) > tiles and max(counts) <= tiles


@pytest.mark.parametrize("arch", ["edge", "cloud"])
@pytest.mark.parametrize("a_dram", [False, True])
def test_grid_search_keeps_buffers_within_the_budget_and_the_parts_within_the_count(arch, a_dram):
    target = load_arch(arch)
    tile = target.tiles_of("compute")[0]
    budget = tile.sram_bytes // tile.contexts
    g = grid_search("g", 2048, 768, 3072, 2, target, 16, budget, a_dram)
    if g is None:
        # a row strip made on chip is read once, so a part accumulates all its columns: no room on edge
        assert not a_dram and 4 * tile.mac_rows * (3072 // 16) > budget
        return
    assert g.rows * g.cols <= 16
    assert g.buffer <= budget
    if not g.resident:
        assert g.buffer == part_buffer(g.mb, g.nb, g.kc, 2)
    if not a_dram:  # a row strip made on chip is read once: a part takes all its columns at once
        assert g.a_passes == 1 and g.nb == -(-3072 // g.cols)
    # the prediction is never below the MAC-array bound of the part
    assert g.cycles >= 2048 * 768 * 3072 / (g.rows * g.cols * tile.macs_per_cycle)


def test_no_grid_fits_a_budget_too_small_for_one_mac_array_block():
    target = load_arch("edge")
    assert grid_search("g", 512, 768, 768, 2, target, 16, 256, True) is None


def test_projections_of_one_value_merge_into_one_gemm_and_back():
    from example_script import load_make_examples

    from attnc.frontend.onnx import import_onnx
    from attnc.passes.gemm import merge_shared_lhs, unmerge

    model, inputs = load_make_examples().bert_layer(seq=256, hidden=256, heads=4)
    module = import_onnx(model)
    run_pipeline(module, "canonicalize,raise-attention,fuse-attention")
    before = interpret(module, inputs)["output"]
    fn = main_func(module)
    merged = merge_shared_lhs(fn)
    assert [int(w) for w in merged.values()] == [256]  # Q, K and V side by side, 256 columns each
    assert sum(o.name == "sparse.matmul" for o in fn.body.block.ops) == 2  # the merged one and the output's
    # their bias adds merge too: one add of the three biases side by side, on the merged result
    assert _bias_widths(fn) == [768, 256]  # the merged biases, and the output projection's
    np.testing.assert_allclose(interpret(module, inputs)["output"], before, rtol=1e-5, atol=1e-5)
    for o in merged:
        unmerge(o)
    assert sum(o.name == "sparse.matmul" for o in fn.body.block.ops) == 4
    assert _bias_widths(fn) == [256, 256, 256, 256]
    np.testing.assert_array_equal(interpret(module, inputs)["output"], before)


def _bias_widths(fn) -> list[int]:
    """The widths of the constant vectors added to a GEMM's result, in program order."""
    out = []
    for o in fn.body.block.ops:
        if o.name == "sparse.add" and o.operands[0].owner.name == "sparse.matmul":
            c = o.operands[1].owner
            if c.name == "sparse.constant" and len(c.result.type.get_shape()) == 1:
                out.append(c.result.type.get_shape()[0])
    return out


def test_column_blocks_of_a_merged_gemm_never_straddle_two_of_its_gemms():
    target = load_arch("cloud")
    # Q, K and V of 256 columns each, merged into 768: blocks of 64, 128, 256 (or whole multiples) only
    for parts in (4, 8, 16, 32):
        g = grid_search("g", 256, 256, 768, 2, target, parts, 64 << 10, True, 64, 256)
        assert g is not None
        width = 768 // g.cols
        assert 256 % width == 0 or width % 256 == 0


def test_among_grids_as_fast_the_allocation_takes_the_one_reading_less_dram():
    # a grid predicted compute-bound still waits on DRAM its loads share: within the tie margin of the fastest
    # allocation, SRAM goes to the option that cuts DRAM traffic (edge 768x768 at seq 512 alone: 14.9 MB and
    # 1.27x its roofline with 4 KB parts, 7.9 MB and 1.01x with 12 KB ones); beyond the margin it does not
    from attnc.passes.gemm import GemmGrid, _allocate, splittable

    module, _ = ffn_model()
    g = next(o for o in main_func(module).body.block.ops if splittable(o))

    def option(cycles: int, dram: int, budget: int):
        return GemmGrid("g", 2, 8, 32, 32, 8, cycles=cycles, dram_bytes=dram), budget

    small, fewer_bytes, slower = option(1000, 8000, 4096), option(1020, 4000, 8192), option(1100, 1000, 12288)
    chosen = _allocate({g: [small, fewer_bytes, slower]}, {g: 0}, 16, 64, 1 << 20, 16384, 16)
    assert chosen[g] == fewer_bytes
    # and none of it when the SRAM room holds only the smallest
    assert _allocate({g: [small, fewer_bytes, slower]}, {g: 0}, 16, 64, 16 * 4096, 16384, 16)[g] == small


def test_a_held_weight_block_streams_in_k_chunks_into_buffers_that_hold_it_whole():
    # on cloud the FFN's first GEMM holds its weight blocks: each block's load and every copy passed down a column
    # come in one token per k-chunk, so that a part computes its first row block as they arrive (the simulator
    # reads them during that row block and keeps them), and each part declares room for the whole block
    module, _ = ffn_model()
    run_pipeline(module, "tile{arch=cloud},lower-to-dataflow{arch=cloud}")
    assert "weight block held" in main_func(module).attributes["attnc.tile_report"].data
    kernels = _kernels(module)
    held = [k for n, k in kernels.items() if _part(n) and [x.data for x in k.loops.data] == ["m", "k"]]
    assert held
    tokens = {r: int(t) for k in kernels.values() for r, t in zip(k.outputs, k.tokens.get_values())}
    for k in held:
        chunks = dict(k.loop_schedule())["k"]
        assert chunks > 1
        block = k.inputs[1]  # the weight block: its load, or the copy of the part above
        assert tokens[block] == chunks
        kk, nb = block.type.get_shape()
        assert k.buffer_bytes.value.data >= kk * nb * 2  # f16, held whole


def test_a_held_weight_block_arrives_in_small_k_chunks_and_the_first_step_waits_for_one():
    # cloud 512x768x768 is DRAM-bound (2.75 MB over 457 B/cycle: 6,024 cycles): holding the weight blocks reads
    # them once, and in chunks of a DMA burst (or a MAC array's depth) the parts start after the first chunks of
    # all blocks instead of after the whole blocks (2,580 cycles of DRAM): predicted within 25% of the bound
    target = load_arch("cloud")
    g = grid_search("g", 512, 768, 768, 2, target, 64, 192 << 10, True)
    assert g.resident and g.w_passes == 1
    assert g.kc == max(target.tiles_of("compute")[0].mac_rows, -(-4096 // (g.nb * 2)))
    bound = (512 * 768 + 768 * 768 + 512 * 768) * 2 / target.dram.bytes_per_cycle
    assert g.cycles < 1.25 * bound


def test_a_narrower_last_sub_block_takes_fewer_mac_passes():
    # 4x16 parts of 512x768 @ 768x3072: a part's 128x192 block in sub-blocks of 128x128 then 128x64 takes
    # 4 x 6 MAC-array passes of K (the simulator's busy cycles, 18,496), not 4 x 8 of a full second sub-block;
    # with DRAM and links out of the way that is the whole prediction
    from attnc.passes.gemm import _predict

    g = _predict("g", (512, 768, 3072, 4, 16, 128, 128), 2, False, True, 128 << 10, (32, 32), 1 << 30, 1e12)
    assert g.cycles == 4 * 6 * 768 + 32 + 32


def test_the_drain_runs_per_grid_row_at_dram_rate_so_wider_sub_blocks_win():
    # cloud 512x768x3072 alone (DRAM-bound: 8.65 MB, 18,933 cycles): 4x16 parts of 128x64 sub-blocks read the
    # row strip 3 times (simulated 25,207 cycles), of 128x128 twice (22,911); the drain after the last step
    # is the last sub-block's bytes over DRAM (one store per grid row), not over two links, so the search takes
    # the wider sub-blocks when a part may have 128 KiB, and predicts them within 2% of what the simulator times
    target = load_arch("cloud")
    narrow = grid_search("g", 512, 768, 3072, 2, target, 64, 64 << 10, True)
    wide = grid_search("g", 512, 768, 3072, 2, target, 64, 128 << 10, True)
    assert (narrow.nb, narrow.a_passes) == (64, 3)
    assert (wide.rows * wide.cols, wide.a_passes) == (64, 2) and wide.cycles < narrow.cycles * (1 - 0.03)
    assert abs(wide.cycles - 22911) < 0.02 * 22911


def test_the_lean_grid_reads_its_weights_fewer_times_and_only_the_dram_step_takes_it():
    # BERT-base FFN2 on cloud at seq 2048 in 32x2 parts of 192 KiB: the cheapest grid walks 32-row sub-blocks
    # (its results leave earlier) and reads its weight blocks twice; the lean one walks whole 64-row blocks,
    # reads them once (4.7 MB less) and is predicted slower, within LEAN of it
    from attnc.passes.gemm import LEAN, GemmGrid, _allocate, _options, grid_options, splittable

    target = load_arch("cloud")
    best, lean = grid_options("g", 2048, 3072, 768, 2, target, 64, 192 << 10, True)
    assert (best.rows, best.cols) == (lean.rows, lean.cols) == (32, 2)
    assert best.w_passes == 2 and lean.w_passes == 1 and lean.mb == 2 * best.mb
    assert best.dram_bytes - lean.dram_bytes == 3072 * 768 * 2
    assert best.cycles < lean.cycles <= best.cycles * (1 + LEAN)
    assert lean.buffer <= 192 << 10
    assert grid_search("g", 2048, 3072, 768, 2, target, 64, 192 << 10, True) == best
    # a GEMM's options hold both (f32 here: the 64 KiB share already walks whole row blocks); the fastest
    # allocation takes the cheapest, the DRAM step the lean one when the time stays within the tie margin, and
    # not when it would not
    module, _ = ffn_model(rows=512, hidden=768, inner=3072)
    g = [o for o in main_func(module).body.block.ops if splittable(o)][1]
    tile = target.tiles_of("compute")[0]
    pairs = {}
    for grid, budget in _options(g, 1, target, 32, tile.sram_bytes // tile.contexts, tile, 1, True):
        pairs.setdefault((grid.rows * grid.cols, budget), []).append(grid)
    # per (parts, budget): the cheapest, the lean one of its shape, and the lean one of the shape the smallest
    # budget took (so that the DRAM step, which keeps a grid's shape, can still take larger blocks of it)
    leans = 0
    for (parts, budget), gs in pairs.items():
        cheap, shape0 = gs[0], (pairs[(parts, min(b for p, b in pairs if p == parts))][0].rows,)
        assert len(gs) <= 3
        for thin in gs[1:]:
            if (thin.rows, thin.cols) == (cheap.rows, cheap.cols):
                leans += 1
                assert thin.dram_bytes < cheap.dram_bytes
                assert cheap.cycles <= thin.cycles <= cheap.cycles * (1 + LEAN)
            else:
                assert (thin.rows,) == shape0
    assert leans or any(len(gs) > 1 for gs in pairs.values())
    # alone, FFN2's 4% is beyond the module's tie margin; after FFN1 (another phase, as long), within it
    budget = 128 << 10
    f1, f2 = [o for o in main_func(module).body.block.ops if splittable(o)]
    first = (GemmGrid("f1", 4, 8, 128, 64, 42, cycles=best.cycles, dram_bytes=1), budget)
    assert _allocate({f2: [(best, budget), (lean, budget)]}, {f2: 0}, 64, 256, 16 << 20, tile.sram_bytes, 64)[f2][0] == best
    both = _allocate({f1: [first], f2: [(best, budget), (lean, budget)]}, {f1: 0, f2: 1}, 64, 256, 16 << 20,
                     tile.sram_bytes, 64)  # fmt: skip
    assert both[f2][0] == lean
    slow = replace(lean, cycles=int(best.cycles * 1.07))
    both = _allocate({f1: [first], f2: [(best, budget), (slow, budget)]}, {f1: 0, f2: 1}, 64, 256, 16 << 20,
                     tile.sram_bytes, 64)  # fmt: skip
    assert both[f2][0] == best


def test_the_dram_step_keeps_consecutive_phases_parts_on_shared_tiles_when_they_could_run_at_once():
    # BERT-base on cloud at seq 512: FFN1's 4x8 parts of 64 KiB next to FFN2's of 128 KiB share tiles and FFN1
    # streams into FFN2 (107,517 cycles); FFN1 in 192 KiB parts (3.1 MB less DRAM, predicted as fast) ran first
    # and FFN2 after it (183,322). On edge each phase fills the array, and the larger parts are taken.
    from attnc.passes.gemm import GemmGrid, _allocate, splittable

    module, _ = ffn_model(rows=512, hidden=768, inner=3072)
    f1, f2 = [o for o in main_func(module).body.block.ops if splittable(o)]
    small = (GemmGrid("f1", 4, 8, 128, 64, 42, cycles=1000, dram_bytes=12 << 20), 64 << 10)
    large = (GemmGrid("f1", 4, 8, 128, 256, 42, cycles=1010, dram_bytes=9 << 20), 192 << 10)
    second = (GemmGrid("f2", 4, 8, 128, 96, 91, cycles=1000, dram_bytes=8 << 20), 128 << 10)

    def pick(tiles: int, shared: bool):
        return _allocate({f1: [small, large], f2: [second]}, {f1: 0, f2: 1}, tiles, 256, 64 << 20, 256 << 10, 64,
                         shared)[f1]  # fmt: skip

    assert pick(64, True) == small
    assert pick(32, True) == large  # 64 parts on 32 tiles: the phases could not run at once anyway
    assert pick(64, False) == large

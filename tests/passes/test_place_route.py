"""place-route: dataflow IR to a placed and routed array configuration."""

from collections import Counter
from pathlib import Path

import pytest

from attnc.arch import load_arch
from attnc.dialects import array as ar
from attnc.dialects import dataflow as df
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.ir import parse_module, print_module
from attnc.passes.placement.problem import validate
from attnc.passes.placement.place_route import mapping_from_config
from attnc.pipeline import run_pipeline

EXAMPLES = Path(__file__).parents[2] / "examples"


def compile_to_array(name: str, arch: str, extra: str = "time-limit=3.0"):
    module = import_onnx(EXAMPLES / f"{name}.onnx")
    run_pipeline(module, f"canonicalize,raise-attention,lower-to-dataflow{{arch={arch}}}")
    kernels = [op for op in module.walk() if isinstance(op, df.KernelOp)]
    specs = {k.sym_name.data: k for k in kernels}
    run_pipeline(module, f"place-route{{arch={arch} {extra}}}")
    return module, specs


@pytest.mark.parametrize("name, arch", [("attention23", "edge"), ("bert_layer", "edge"), ("gqa_block", "cloud")])
def test_every_kernel_is_placed_once_and_the_mapping_is_valid(name, arch):
    module, specs = compile_to_array(name, arch)
    (config,) = [o for o in module.walk() if isinstance(o, ar.ConfigOp)]
    contexts = Counter(o.sym_name.data for o in module.walk() if isinstance(o, ar.ContextOp))
    assert set(contexts) == set(specs) and set(contexts.values()) == {1}
    problem, mapping = mapping_from_config(config, load_arch(arch))
    assert {k.name: k.cycles for k in problem.kernels} == {n: k.cycles.value.data for n, k in specs.items()}
    assert validate(problem, load_arch(arch), mapping) == []
    dmas = [o for o in module.walk() if isinstance(o, ar.DmaOp)]
    assert len(dmas) == sum(k.kind.data.startswith("dma") for k in specs.values())
    assert config.attributes["mapping.status"].data in ("HEURISTIC", "FEASIBLE", "OPTIMAL")


def test_array_ir_round_trips():
    module, _ = compile_to_array("attention23", "edge", "time-limit=2.0")
    text = print_module(module)
    assert print_module(parse_module(text)) == text


def test_placing_twice_needs_dataflow_ir():
    module = import_onnx(EXAMPLES / "attention23.onnx")
    with pytest.raises(AttncError, match="run lower-to-dataflow first"):
        run_pipeline(module, "place-route{arch=edge}")


def test_too_small_an_array_is_explained(tmp_path):
    from attnc.arch import preset_text
    from attnc.passes.lower_dataflow import LowerToDataflowPass
    from attnc.passes.placement.place_route import PlaceRoutePass

    # tiny with one context per compute tile: 4 slots for the decoder's many compute kernels
    small = tmp_path / "small.yaml"
    small.write_text(preset_text("tiny").replace("compute:   {contexts: 4", "compute:   {contexts: 1"))
    module = import_onnx(EXAMPLES / "causal_decoder.onnx")
    run_pipeline(module, "canonicalize,raise-attention")
    with pytest.raises(AttncError, match=r"needs \d+ compute kernels but tiny has 4 compute tiles x 1 contexts = 4 slots"):
        run_pipeline(module, [LowerToDataflowPass(arch=str(small)), PlaceRoutePass(arch=str(small), heuristic_only=True)])


def test_link_bandwidth_alone_halves_the_rates_instead_of_failing(monkeypatch) -> None:
    """When only link bandwidth stands in the way, place-route asks every stream for half its rate and
    says so in the config; any other shortfall still fails at once."""
    from attnc.passes.placement.problem import MappingInfeasible
    from attnc.passes.placement import cpsat as place_route

    calls = []
    real = place_route.place_and_route

    def flaky(problem, arch, **kw):
        calls.append(max(s.rate for s in problem.streams))
        if len(calls) < 3:
            raise MappingInfeasible("cannot map onto edge: link (0, 0)->(0, 1): streams need 40 B/cycle, capacity 32")
        return real(problem, arch, **kw)

    monkeypatch.setattr(place_route, "place_and_route", flaky)
    module, _ = compile_to_array("bert_layer", "edge", "heuristic-only=true")
    assert len(calls) == 3 and calls[1] == calls[0] / 2 and calls[2] == calls[0] / 4
    (config,) = [o for o in module.walk() if isinstance(o, ar.ConfigOp)]
    assert config.attributes["attnc.stream_rate_scale"].value.data == 0.25

    def contexts(problem, arch, **kw):
        raise MappingInfeasible("cannot map onto edge: needs 99 compute kernels")

    monkeypatch.setattr(place_route, "place_and_route", contexts)
    with pytest.raises(MappingInfeasible, match="99 compute kernels"):
        compile_to_array("bert_layer", "edge")


@pytest.mark.parametrize("spec, fragment", [
    ("place-route{time-limit=-1.0}", "time-limit must be a positive number"),
    ("place-route{time-limit=0.0}", "time-limit must be a positive number"),
    ("place-route{seed=-3}", "seed must be in 0..2147483647"),
    ("place-route{seed=4294967296}", "seed must be in"),
])
def test_bad_solver_options_fail_when_the_pipeline_is_parsed(spec, fragment) -> None:
    from attnc.pipeline import parse_pipeline

    with pytest.raises(AttncError, match=fragment):
        parse_pipeline(spec)


def test_pipeline_text_is_escaped_in_messages() -> None:
    from attnc.pipeline import parse_pipeline

    with pytest.raises(AttncError) as info:
        parse_pipeline("canonicalize,no\u202esuch\npass")
    assert "\n" not in str(info.value) and "\u202e" not in str(info.value)


def _phased_kernel(res: str, name: str, src: str, kind: str, tile_kind: str, size: int, phase: int = 0) -> str:
    """One dataflow kernel over a tensor<16xf32> stream: a DMA kernel passes it on, any other takes its exp."""
    attrs = (f'kind = "{kind}", tile_kind = "{tile_kind}", loops = ["rows"], trips = array<i64: 1>, '
             f"tile = array<i64: 16>, buffer_bytes = {size} : i64, cycles = 16 : i64, macs = 0 : i64, "
             f"tokens = array<i64: 1>" + (f", phase = {phase} : i64" if phase else ""))
    body = ("      dataflow.yield %v : tensor<16xf32>\n" if tile_kind == "dma" else
            "      %e = sparse.exp %v : tensor<16xf32> -> tensor<16xf32>\n      dataflow.yield %e : tensor<16xf32>\n")
    return (f'    %{res} = dataflow.kernel "{name}"(%{src}) attributes {{{attrs}}} : (tensor<16xf32>) -> tensor<16xf32> {{\n'
            f"    ^bb0(%v: tensor<16xf32>):\n{body}    }}\n")


def test_sram_phases_share_addresses_on_the_tile_and_in_the_bitstream(tmp_path):
    """A resident kernel and two SRAM phases over a tile's SRAM together, on the only compute tile: the
    resident buffer from address 0, each phase's from its top again (phase 1's two kernels stacked), so the
    phases overlap; contexts and bitstream records carry the phases."""
    from attnc.arch import preset_text
    from attnc.backend import bitstream as bs
    from attnc.backend.emit import emit_bitstream
    from attnc.passes.placement.place_route import PlaceRoutePass
    from attnc.passes.placement.report import format_mapping_report

    one = tmp_path / "one.yaml"  # tiny with a single compute tile
    one.write_text(preset_text("tiny").replace("  - B C C S\n  - M C C D", "  - B C S S\n  - M M M D"))
    arch = load_arch(str(one))
    assert len(arch.tiles_of("compute")) == 1
    q = arch.tiles_of("compute")[0].sram_bytes // 4
    kernels = [("l", "load_x", "x", "dma_load", "dma", 128, 0), ("r", "resident", "l", "elementwise", "compute", q, 0),
               ("a", "phase1_a", "l", "elementwise", "compute", 2 * q, 1),
               ("a2", "phase1_b", "a", "elementwise", "compute", q, 1),
               ("s", "spill", "a2", "dma_spill", "dma", 128, 0),
               ("b", "phase2", "s", "elementwise", "compute", 3 * q, 2),
               ("y", "store_y", "b", "dma_store", "dma", 128, 0), ("z", "store_z", "r", "dma_store", "dma", 128, 0)]
    text = ("builtin.module {\n  func.func @main(%x: tensor<16xf32>) -> (tensor<16xf32>, tensor<16xf32>) {\n"
            + "".join(_phased_kernel(*k) for k in kernels)
            + "    func.return %y, %z : tensor<16xf32>, tensor<16xf32>\n  }\n}\n")
    module = parse_module(text)
    run_pipeline(module, [PlaceRoutePass(arch=str(one), time_limit=1.0)])
    (config,) = [o for o in module.walk() if isinstance(o, ar.ConfigOp)]
    problem, mapping = mapping_from_config(config, arch)
    assert validate(problem, arch, mapping) == []
    assert {k.name: k.phase for k in problem.kernels if k.phase} == {"phase1_a": 1, "phase1_b": 1, "phase2": 2}
    ctx = {o.sym_name.data: o for o in module.walk() if isinstance(o, ar.ContextOp)}
    assert [ctx[n].phase for n in ("resident", "phase1_a", "phase1_b", "phase2")] == [0, 1, 1, 2]
    assert "phase" not in ctx["resident"].attributes  # absent when 0, as on the kernel
    assert print_module(parse_module(print_module(module))) == print_module(module)
    (line,) = [ln for ln in format_mapping_report(config, arch, problem, mapping).splitlines()
               if ln.strip().startswith("compute")]
    assert line.rstrip().endswith("100.0%")  # resident + the largest phase fill the tile, no more

    b = emit_bitstream(module, arch)
    assert bs.decode(bs.encode(b), expect_arch=arch) == b
    (tile,) = [t for t in b.tiles if t.kind == "compute"]
    spans = {c.name: (c.phase, [(buf.address, buf.address + buf.size) for buf in c.buffers]) for c in tile.contexts}
    assert spans == {"resident": (0, [(0, q)]), "phase1_a": (1, [(q, 3 * q)]), "phase1_b": (1, [(3 * q, 4 * q)]),
                     "phase2": (2, [(q, 4 * q)])}

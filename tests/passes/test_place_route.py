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

"""Mapping quality and speed: CP-SAT placement and routing against the heuristic alone.

    python benchmarks/mapping.py [--time-limit 10] [--quick]

Four sources of mapping problems, each on edge and cloud:
- `bert-base`: the BERT-base encoder layer (hidden 768, 12 heads, FFN 3072, f16) at seq 512 as
  benchmarks/butterfly.py builds it, through the whole back end (tile, lower-to-dataflow), one configuration;
- `example:` the shipped example models, compiled by attnc (import, raise, lower-to-dataflow);
- `layer:` BERT-style attention layers (d = 64 per head) of 1..32 heads and seq 128..2048,
  built with examples/make_examples.py and compiled the same way (heads share kernels
  when the array runs short of contexts, as the compiler does);
- `graph:` a hand-made per-head graph (attnc.passes.placement.problem.synthetic_attention:
  per head DMA load -> layer norm -> Q/K/V projections -> QK^T -> softmax -> PV; every 4
  heads share an output projection and a store), which keeps one kernel per head and stage.
Prints one row per case and writes benchmarks/results/mapping.md. Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from attnc.arch import load_arch
from attnc.passes.placement.problem import MappingInfeasible, synthetic_attention, validate
from attnc.passes.placement.cpsat import heuristic_mapping, place_and_route
from attnc.passes.placement.phases import phases_of

from _examples import make_examples  # benchmarks/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((1, 128), (2, 256), (4, 512), (8, 1024), (16, 2048), (32, 2048))


def compiled_problem(model, arch_name: str):
    """The mapping problem attnc states for an ONNX model (path or proto)."""
    from attnc.frontend.onnx import import_onnx
    from attnc.passes.placement.place_route import module_problem
    from attnc.pipeline import run_pipeline

    module = import_onnx(model)
    run_pipeline(module, f"canonicalize,raise-attention,lower-to-dataflow{{arch={arch_name}}}")
    return module_problem(module, load_arch(arch_name))


def bert_base_problem(arch_name: str, seq: int = 512):
    """The mapping problem of the BERT-base layer, one configuration, after tile and lower-to-dataflow."""
    from attnc.passes.placement.place_route import module_problem
    from attnc.pipeline import backend_passes, run_pipeline
    from butterfly import block_model, front_end

    module = front_end(block_model(seq), None)
    run_pipeline(module, backend_passes(arch_name)[:2])
    return module_problem(module, load_arch(arch_name))


def cases():
    """(source, arch, heads, seq, build) rows: build(arch) gives the mapping problem."""
    out = [("bert-base", arch, 12, 512, lambda a: bert_base_problem(a.name)) for arch in ("edge", "cloud")]
    for arch in ("edge", "cloud"):
        for name in ("attention23", "bert_layer", "causal_decoder", "gqa_block"):
            out.append((f"example:{name}", arch, "-", "-", lambda a, n=name: compiled_problem(ROOT / "examples" / f"{n}.onnx", a.name)))
    ex = make_examples()
    for arch in ("edge", "cloud"):
        for heads, seq in SIZES:
            build = lambda a, h=heads, n=seq: compiled_problem(ex.bert_layer(seq=n, hidden=64 * h, heads=h)[0], a.name)
            out.append(("layer", arch, heads, seq, build))
    out.append(("graph", "tiny", 1, 128, lambda a: synthetic_attention(1, 128, a)))
    for arch in ("edge", "cloud"):
        for heads, seq in SIZES:
            out.append(("graph", arch, heads, seq, lambda a, h=heads, n=seq: synthetic_attention(h, n, a)))
    return out


def gap(value: float, lb: float) -> str:
    return "0%" if value <= 0 else f"{100 * max(0.0, value - lb) / value:.0f}%"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="the first few cases only")
    args = ap.parse_args()
    todo = cases()[:4] if args.quick else cases()
    head = ("| source | arch | heads | seq | kernels | phases | tiles | method | status | solver s "
            "| makespan est. (lb, gap) | byte-hops (lb, gap) | max link B/c (cap) | heuristic s | heuristic makespan "
            "| heuristic byte-hops | better | vars | LNS rounds |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    print(head)
    seconds = []
    better = []
    for source, arch_name, heads, seq, build in todo:
        arch = load_arch(arch_name)
        problem = build(arch)
        t0 = time.perf_counter()
        try:
            heuristic_mapping(problem, arch)
            place_and_route_args = dict(time_limit=args.time_limit)
            m = place_and_route(problem, arch, **place_and_route_args)
        except MappingInfeasible as e:
            dt = time.perf_counter() - t0
            seconds.append(dt)
            reason = str(e).split(": ", 1)[1]
            if len(reason) > 150:
                reason = reason[:147] + "..."
            row = (f"| {source} | {arch_name} | {heads} | {seq} | {len(problem.kernels)} | - | {len(arch.tiles)} | - "
                   f"| INFEASIBLE | {dt:.1f} | {reason} | | | | | | | | |")
            print(row, flush=True)
            rows.append(row)
            continue
        dt = time.perf_counter() - t0
        seconds.append(dt)
        assert not validate(problem, arch, m), validate(problem, arch, m)[:3]
        s = m.stats
        # link capacity is hard (both mappings are within it), then the makespan estimate, then byte-hops
        ours = (s.makespan, s.byte_hops)
        theirs = (s.heuristic_makespan, s.heuristic_byte_hops)
        is_better = ours < theirs
        better.append((len(problem.kernels), is_better))
        row = (f"| {source} | {arch_name} | {heads} | {seq} | {len(problem.kernels)} | {len(phases_of(problem).lengths)} "
               f"| {len(arch.tiles)} | {s.method} | {s.status} | {dt:.1f} "
               f"| {s.makespan:,} ({s.makespan_lb:,}, {gap(s.makespan, s.makespan_lb)}) "
               f"| {s.byte_hops:,} ({s.byte_hops_lb:,}, {gap(s.byte_hops, s.byte_hops_lb)}) "
               f"| {s.max_link_load:g} ({s.link_capacity:g}) | {s.heuristic_seconds:.2f} | {s.heuristic_makespan:,} "
               f"| {s.heuristic_byte_hops:,} | {'yes' if is_better else 'no'} | {s.variables} | {s.lns_rounds} |")
        print(row, flush=True)
        rows.append(row)
    summary = (f"median compile {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s over {len(seconds)} cases "
               f"(time limit {args.time_limit:g}); CP-SAT strictly better than the heuristic on "
               f"{sum(b for _, b in better)}/{len(better)} mapped cases")
    print(summary)
    if not args.quick:
        out = Path(__file__).parent / "results" / "mapping.md"
        out.write_text(
            "# Mapping benchmark\n\n`python benchmarks/mapping.py` on this machine (2 cores; one CP-SAT worker).\n"
            "Link capacity is a hard limit (no mapping over it is returned; `max link` is the fullest link "
            "against its capacity). Objective terms in priority order: the makespan estimate (the graph's "
            "unplaced schedule cut into `phases`, each stretched by the tile with the most work in it; a problem "
            "without a schedule is one phase, the busiest tile), then byte-hops. lb = lower bound (counting "
            "bounds); gap = (value - lb) / value. `better` = CP-SAT's mapping is lexicographically better than "
            "the heuristic's. Solver s includes the heuristic.\n\n" + "\n".join(rows) + f"\n\n{summary}\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

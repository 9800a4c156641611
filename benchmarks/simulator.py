"""Simulator speed: a BERT-base attention layer (hidden 768, 12 heads) at seq 128/512/2048 on edge and cloud.

    python benchmarks/simulator.py [--seqs 128,512,2048] [--archs edge,cloud] [--repeat 3]

Each case is built with examples/make_examples.py (bert_layer), compiled by attnc's default pipeline (the
attention fused as the cost model chooses; placement by the heuristic alone, CP-SAT with a 10 s limit when the
heuristic's mapping overloads a link), encoded and
decoded (the simulator sees only bytes), then timed:
- timing-only: ``attnc.simulator.timing.simulate`` (best of ``--repeat`` wall times), its simulated
  events and events per second, cycles and time at the clock;
- functional: ``attnc.simulator.functional.run`` on the example's inputs when that module exists
  (else '-'), and functional + timing, the cost of a full ``attnc simulate``.
Prints one row per case and writes benchmarks/results/simulator.md. Not part of the test run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

from _examples import make_examples  # benchmarks/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, HEADS = 768, 12


def compile_layer(model, arch: str):
    """(decoded bitstream, compile seconds, placement method) for an ONNX model proto."""
    from attnc.arch import load_arch
    from attnc.backend.bitstream import decode, encode
    from attnc.backend.emit import emit_bitstream
    from attnc.errors import AttncError
    from attnc.pipeline import backend_passes
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import DEFAULT_PIPELINE, run_pipeline

    def build(heuristic_only: bool, time_limit: float = 10.0):
        # what `attnc compile` does: the default pipeline (attention fused by the cost model), then the back end
        module = import_onnx(model)
        run_pipeline(module, DEFAULT_PIPELINE)
        run_pipeline(module, backend_passes(arch, time_limit=time_limit, seed=0, heuristic_only=heuristic_only))
        return decode(encode(emit_bitstream(module, load_arch(arch), {})))

    start = time.perf_counter()
    try:
        bs, method = build(heuristic_only=True), "heuristic"
    except AttncError:
        bs, method = build(heuristic_only=False), "cp-sat"
    return bs, time.perf_counter() - start, method


def best_of(repeat: int, fn):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="128,512,2048")
    ap.add_argument("--archs", default="edge,cloud")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simulator.md"))
    args = ap.parse_args(argv)

    from attnc.simulator.timing import simulate

    functional = None
    if importlib.util.find_spec("attnc.simulator.functional") is not None:
        from attnc.simulator import functional as _functional

        functional = getattr(_functional, "run", None)
    ex = make_examples()
    header = ("| arch | seq | kernels | placement | compile s | timing-only s | events | events/s | cycles | "
              "simulated us | MAC util | functional s | functional+timing s | functional / timing-only |")  # fmt: skip
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    print(header, flush=True)
    for arch in args.archs.split(","):
        for seq in (int(s) for s in args.seqs.split(",")):
            model, inputs = ex.bert_layer(seq=seq, hidden=HIDDEN, heads=HEADS)
            bs, compile_s, method = compile_layer(model, arch)
            kernels = sum(len(t.contexts) for t in bs.tiles)
            t_timing, stats = best_of(args.repeat, lambda: simulate(bs))
            f_cell = ft_cell = ratio = "-"
            if functional is not None:
                t_func, _ = best_of(1 if seq >= 2048 else args.repeat, lambda: functional(bs, inputs))
                f_cell, ft_cell = f"{t_func:.2f}", f"{t_func + t_timing:.2f}"
                ratio = f"{(t_func + t_timing) / t_timing:.0f}x"
            row = (f"| {arch} | {seq} | {kernels} | {method} | {compile_s:.1f} | {t_timing:.3f} | {stats.events} | "
                   f"{stats.events / t_timing:,.0f} | {stats.cycles:,} | {stats.seconds * 1e6:,.1f} | "
                   f"{stats.utilization:.1%} | {f_cell} | {ft_cell} | {ratio} |")  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"# Simulator speed\n\n`python benchmarks/simulator.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. BERT-base attention layer (hidden {HIDDEN}, "
        f"{HEADS} heads; examples/make_examples.py bert_layer), batch 1. Wall seconds are the best of "
        f"{args.repeat} runs (functional at seq 2048: one run). 'events' are the timing model's simulated "
        "events; 'functional / timing-only' is what a full `attnc simulate` costs against `--timing-only`.\n\n"
    )
    out.write_text(note + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

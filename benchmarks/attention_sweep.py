"""Attention dataflows on attnc's arrays: unfused vs FLAT row-block vs online softmax (issue 6).

    python benchmarks/attention_sweep.py [--archs edge,cloud,flat-cloud] [--models bert,trxl,t5,xlm] [--batches 1,64]
        [--seqs 512,1024,2048,4096,8192,16384] [--modes unfused,flat,online] [--time-limit 2] [--quick]

Workloads are FLAT's (Kao et al., "FLAT: An Optimized Dataflow for Mitigating Attention Bottlenecks",
ASPLOS 2023): the attention core softmax(QKᵀ/√d)V of BERT-base (12 heads, d 64), TrXL (16, 64), T5 (8, 64)
and XLM (16, 128), 16-bit data, Q/K/V read from DRAM and O written back.
Each point is one ONNX Attention model compiled by attnc with ``fuse-attention{mode=M}`` and the
cost-model search of ``tile`` (sizes chosen by attnc, not by this script), placed and routed, encoded and
decoded, and timed by the simulator from the bitstream alone (timing-only; the functional model also
runs, and is compared with the reference interpreter, where the tensors are small: batch 1 and
seq <= 1024). Per point it prints and records:

* cycles, speedup over unfused, DRAM bytes / compulsory minimum (4·B·H·N·d·2: Q, K and V read once, O
  written once), MAC utilisation (MACs / (cycles x array MACs)) and its inverse ``vs_ideal``, the cycles
  over the ideal 2-D time MACs / array MACs (FuseMax reports FLAT at about 8.0x of it on ``flat-cloud``'s
  hardware), energy;
* the cost model's (``attnc.cost.estimate`` on the array IR) cycles and DRAM bytes and their error
  against the simulator;
* what binds: the largest of the lower bounds compute (busiest tile's busy cycles), DRAM (bytes /
  bandwidth) and NoC (busiest link's bytes / width), named against the simulated cycles.

Writes benchmarks/results/attention_sweep.{csv,md} and speedup/utilisation plots (PNG) into
benchmarks/results/. Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import arch_axes, write_csv, write_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: FLAT's workloads: heads, head dim
MODELS = {"bert": (12, 64), "trxl": (16, 64), "t5": (8, 64), "xlm": (16, 128)}
FUNCTIONAL_MAX = 1024  # functional runs (and the numeric check) up to this seq at batch 1


def attention_model(batch: int, heads: int, seq: int, d: int):
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [batch, heads, seq, d]) for n in "QKV"]
    out = helper.make_tensor_value_info("O", TensorProto.FLOAT16, [batch, heads, seq, d])
    graph = helper.make_graph([helper.make_node("Attention", ["Q", "K", "V"], ["O"])], "attention", ins, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _point(*args):
    try:
        return run_point(*args)
    except Exception as e:  # noqa: BLE001 - reported per point by the parent
        return f"{type(e).__name__}: {e}"


def run_point(arch: str, model: str, batch: int, seq: int, mode: str, time_limit: float) -> dict:
    import numpy as np

    from attnc.arch import load_arch
    from attnc.backend.bitstream import decode, encode
    from attnc.backend.emit import emit_bitstream
    from attnc.pipeline import backend_passes
    from attnc.cost import estimate
    from attnc.frontend.onnx import import_onnx
    from attnc.interpreter import interpret
    from attnc.pipeline import run_pipeline
    from attnc.simulator.timing import simulate

    heads, d = MODELS[model]
    target = load_arch(arch)
    t0 = time.perf_counter()
    module = import_onnx(attention_model(batch, heads, seq, d))
    run_pipeline(module, f"canonicalize,raise-attention,fuse-attention{{mode={mode}}}")
    check = batch == 1 and seq <= FUNCTIONAL_MAX
    if check:
        rng = np.random.default_rng(0)
        inputs = {n: rng.standard_normal((batch, heads, seq, d)).astype(np.float16) for n in "QKV"}
        ref = interpret(module, inputs)["O"]
    passes = backend_passes(arch, time_limit=time_limit, seed=0, heuristic_only=False)
    run_pipeline(module, passes[:1])
    config_attrs = dict(next(iter(module.body.block.ops)).attributes)
    run_pipeline(module, passes[1:])
    cost = estimate(module, target)
    bs = decode(encode(emit_bitstream(module, target, {})))
    t1 = time.perf_counter()
    stats = simulate(bs)
    t2 = time.perf_counter()
    err = ""
    if check:
        from attnc.simulator.functional import run

        out = run(bs, inputs)["O"]
        err = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    compulsory = 4 * batch * heads * seq * d * 2
    dram = stats.dram_read_bytes + stats.dram_write_bytes
    busiest_tile = max((t.busy_cycles for t in stats.tiles if t.kind == "compute"), default=0)
    busiest_link = max((lk.bytes / lk.bytes_per_cycle for lk in stats.links), default=0.0)
    bounds = {"compute": busiest_tile, "dram": dram / target.dram.bytes_per_cycle, "noc": busiest_link}
    binds = max(bounds, key=lambda k: bounds[k])
    report = config_attrs.get("attnc.tile_report")
    schedule = report.data.split(": ", 1)[1].split(";")[0] if report is not None else "per-head"
    cost_dram = cost.dram_read_bytes + cost.dram_write_bytes
    return {
        "arch": arch, "model": model, "batch": batch, "seq": seq, "mode": mode, "schedule": schedule,
        "cycles": stats.cycles, "ms": stats.cycles / (target.clock_mhz * 1e3), "dram_bytes": dram,
        "dram_vs_min": dram / compulsory, "utilization": stats.utilization,
        "vs_ideal": stats.cycles * target.total_macs_per_cycle / stats.macs if stats.macs else "",
        "energy_uj": stats.energy_pj()["total"] / 1e6, "binds": binds,
        "bound_share": bounds[binds] / stats.cycles if stats.cycles else 0.0,
        "cost_cycles": cost.cycles, "cost_err": (cost.cycles - stats.cycles) / stats.cycles if stats.cycles else 0.0,
        "cost_dram_exact": cost_dram == dram, "max_abs_err": err, "compile_s": t1 - t0, "sim_s": t2 - t1,
        "warnings": len(stats.warnings),
    }  # fmt: skip


COLUMNS = [
    "arch", "model", "batch", "seq", "mode", "schedule", "cycles", "ms", "speedup", "dram_bytes", "dram_vs_min",
    "utilization", "vs_ideal", "energy_uj", "energy_saved", "binds", "bound_share", "cost_cycles", "cost_err",
    "cost_dram_exact", "max_abs_err", "compile_s", "sim_s", "warnings",
]  # fmt: skip


def _fmt(key: str, v) -> str:
    if v == "" or v is None:
        return "-"
    if key in ("dram_vs_min", "speedup", "vs_ideal"):
        return f"{v:.2f}x"
    if key in ("utilization", "bound_share", "energy_saved"):
        return f"{100 * v:.1f}%"
    if key == "cost_err":
        return f"{100 * v:+.1f}%"
    if key in ("ms", "energy_uj", "compile_s", "sim_s"):
        return f"{v:.3g}"
    if key == "max_abs_err":
        return f"{v:.1e}"
    return str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="edge,cloud,flat-cloud")
    ap.add_argument("--models", default="bert,trxl,t5,xlm")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--seqs", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--modes", default="unfused,flat,online")
    ap.add_argument("--time-limit", type=float, default=2.0, help="placement time limit per point (s)")
    ap.add_argument("--quick", action="store_true", help="bert only, batch 1 and 64, seq 512/2048/4096")
    ap.add_argument("--jobs", type=int, default=2, help="points compiled and simulated at once")
    ap.add_argument("--out", default=str(RESULTS / "attention_sweep"), help="output path without suffix")
    args = ap.parse_args()
    if args.quick:
        args.models, args.seqs = "bert", "512,2048,4096"
    points = [
        (arch, model, batch, seq, mode)
        for arch in args.archs.split(",")
        for model in args.models.split(",")
        for batch in (int(b) for b in args.batches.split(","))
        for seq in (int(s) for s in args.seqs.split(","))
        for mode in args.modes.split(",")
    ]
    done: dict[tuple, dict] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_point, *p, args.time_limit): p for p in points}
        for fut in as_completed(futures):
            p = futures[fut]
            r = fut.result()
            if isinstance(r, str):  # a point that cannot be compiled is reported, not fatal
                print(f"{p[0]} {p[1]} B={p[2]} N={p[3]} {p[4]}: {r}", flush=True)
                continue
            done[p] = r
            print("  ".join(f"{k}={_fmt(k, r.get(k, ''))}" for k in COLUMNS if k not in ("speedup", "energy_saved")),
                  flush=True)  # fmt: skip
    rows = []
    for p in points:
        if p not in done:
            continue
        r = done[p]
        base = done.get(p[:4] + ("unfused",))
        r["speedup"] = base["cycles"] / r["cycles"] if base else ""
        r["energy_saved"] = 1 - r["energy_uj"] / base["energy_uj"] if base else ""
        rows.append(r)
    out = Path(args.out)
    write_csv(out.with_suffix(".csv"), COLUMNS, rows)
    write_table(rows, out.with_suffix(".md"))
    plot(rows, out.parent)
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.md')} and plots in {out.parent}")
    return 0


def write_table(rows: list[dict], path: Path) -> None:
    shown = ["arch", "model", "batch", "seq", "mode", "schedule", "cycles", "speedup", "dram_vs_min", "utilization",
             "vs_ideal", "energy_uj", "energy_saved", "binds", "cost_err", "cost_dram_exact", "max_abs_err"]  # fmt: skip
    notes = [
        "Simulated (timing model, from the bitstream). speedup and energy_saved are against unfused at the same",
        "point; dram_vs_min is DRAM bytes over the compulsory 4·B·H·N·d·2; binds is the largest lower bound",
        "(compute: busiest compute tile, dram: bytes/bandwidth, noc: busiest link); cost_err is attnc.cost's",
        "cycle prediction against the simulator. vs_ideal is cycles over MACs / array MACs (the ideal 2-D time):",
        "on flat-cloud (softmax on a 256-lane 1-D unit) FuseMax's artifact puts FLAT at about 8.0x of it for BERT.",
        "Vector work is counted by the operation-cost table of docs/simulator.md (lane and exp operations per",
        "score, exps on the compute tile's exp unit).",
    ]
    write_markdown(path, "Attention dataflow sweep", notes, shown, rows, _fmt)


def plot(rows: list[dict], where: Path) -> None:
    for metric, label in (("speedup", "speedup over unfused"), ("utilization", "MAC utilisation")):
        plt, fig, panels = arch_axes(rows)
        for arch, ax in panels:
            for key in sorted({(r["model"], r["batch"], r["mode"]) for r in rows if r["arch"] == arch}):
                pts = sorted((r["seq"], r[metric]) for r in rows if (r["model"], r["batch"], r["mode"]) == key
                             and r["arch"] == arch and r[metric] != "")  # fmt: skip
                if pts and key[2] != "unfused":
                    ax.plot(*zip(*pts), marker="o", label=f"{key[0]} B={key[1]} {key[2]}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            ax.set_title(arch)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(where / f"attention_sweep_{metric}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

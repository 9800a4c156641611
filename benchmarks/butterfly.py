"""Butterfly sparsity on attnc's arrays: dense vs butterfly linear layers, ABfly and FBfly blocks, and a
FABNet-style hybrid model (issue 7).

    python benchmarks/butterfly.py [--archs edge,cloud] [--seqs 512,1024,2048,4096] [--block 1]
        [--hybrid-layers 4] [--attention-layers 1] [--knob 6,12,24] [--time-limit 2] [--jobs 2] [--quick]

Workloads (hidden 768, 12 heads, FFN 3072, 16-bit data, batch 1), each compiled by attnc from ONNX, placed
and routed, encoded and decoded, and timed by the simulator from the bitstream alone. A whole encoder block
does not fit one configuration of the arrays in butterfly form (the FFN alone is 8 butterflies of 8 stages), so
each sub-layer is its own configuration, with the whole array to itself, and a block is the sum of its
sub-layers (activations go through DRAM between configurations, which each one's I/O counts; the
reconfiguration time itself is not modelled; attnc has no layer folding):

* ``linear``: one 768x768 linear layer, x[N, 768] @ W; butterfly = a full block butterfly (768 = 3 x 2^8:
  block 3, 8 factors of 6x6 blocks).
* ``attn``: the attention sub-layer x -> LN(x + O(attention(Q x, K x, V x))); butterfly = Q/K/V/O projections
  as butterflies around the dense attention core (FABNet's ABfly).
* ``fourier``: the attention sub-layer replaced by FNet mixing, LN(x + Re(DFT2(x))), the DFT over sequence and
  hidden as butterfly stages (FABNet's FBfly); compared with the dense attention sub-layer.
* the accuracy knob: the linear layer on edge at seq 2048 with larger blocks (``--knob``, variants
  ``block=B``): projection error against speed.
* ``ffn``: the FFN sub-layer x -> LN(x + W2 gelu(W1 x)); butterfly = both layers (768->3072 as 4 butterflies
  side by side, 3072->768 as 4 summed).
* blocks: ``abfly`` = attn + ffn, ``fbfly`` = fourier + ffn, against dense attn + ffn; ``hybrid`` =
  ``--hybrid-layers`` blocks of which the top ``--attention-layers`` are ABfly and the rest FBfly (FABNet's
  layout "Top"); its output error is measured on the whole model.

Per point: MACs (executed, from the simulator), parameters, cycles, energy, DRAM bytes, MAC utilisation, what
binds (the largest lower bound: busiest compute tile, DRAM bytes / bandwidth, busiest link), speedup and MAC
reduction against dense at the same point, and the output error against the dense model (the relative
Frobenius norm ||y - y_dense|| / ||y_dense|| from the reference interpreter, at seq <= --error-max-seq). The
dense baseline is also compared with its roofline (MACs / array MACs per cycle, or compulsory DRAM bytes /
bandwidth): attnc keeps each Q/K/V/output projection in one kernel (a known gap), which leaves the dense
block far below its roofline, so the speedup against that roofline is the conservative figure.

Writes benchmarks/results/butterfly.{csv,md} and a plot (PNG). Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _examples import make_examples  # noqa: E402
from _report import arch_axes, write_csv, write_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HIDDEN, HEADS, FFN = 768, 12, 3072
#: sub-layer workloads (one array configuration each) and the blocks made of them
WORKLOADS = ("linear", "attn", "fourier", "ffn")
BLOCKS = {"abfly": ("attn", "ffn"), "fbfly": ("fourier", "ffn")}
ORDER = WORKLOADS + tuple(BLOCKS)


def linear_model(seq: int):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [seq, HIDDEN])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [seq, HIDDEN])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "linear", [x], [y],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def block_model(seq: int, layers: int = 1, part: str = "block", half: bool = True):
    model, _ = make_examples().encoder(seq=seq, hidden=HIDDEN, heads=HEADS, ffn=FFN, layers=layers, half=half,
                                       part=part)  # fmt: skip
    return model


def workload_model(workload: str, seq: int):
    if workload == "linear":
        return linear_model(seq)
    return block_model(seq, part="ffn" if workload == "ffn" else "attention")


def decompose_spec(workload: str, block: int) -> str:
    """The butterfly-decompose pass of a workload's butterfly variant."""
    if workload == "fourier":
        return f'butterfly-decompose{{fourier="all" block={block}}}'
    return f'butterfly-decompose{{linears="qkv,out,ffn" block={block}}}'


def front_end(model, spec: str | None):
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import run_pipeline

    module = import_onnx(model)
    run_pipeline(module, "canonicalize,raise-attention" + (f",{spec}" if spec else "") + ",fuse-attention")
    return module


def rel_error(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0))


def _point(*args):
    try:
        return run_point(*args)
    except Exception as e:  # noqa: BLE001 - reported per point by the parent
        return f"{type(e).__name__}: {e}"


def run_point(arch: str, workload: str, seq: int, variant: str, block: int, time_limit: float,
              error_max_seq: int) -> dict:  # fmt: skip
    import numpy as np

    from attnc.arch import load_arch
    from attnc.backend.bitstream import decode, encode
    from attnc.backend.emit import emit_bitstream
    from attnc.pipeline import backend_passes
    from attnc.interpreter import interpret
    from attnc.pipeline import run_pipeline
    from attnc.simulator.timing import simulate

    target = load_arch(arch)
    model = workload_model(workload, seq)
    if variant.startswith("block="):  # the accuracy knob: the same layer with larger blocks
        block = int(variant.split("=")[1])
    spec = decompose_spec(workload, block) if variant != "dense" else None
    t0 = time.perf_counter()
    module = front_end(model, spec)
    params = sum(int(np.prod(op.value.get_type().get_shape())) for op in module.walk()
                 if op.name == "sparse.constant" and len(op.value.get_type().get_shape()) >= 2)  # fmt: skip
    summary = {}
    if spec:
        from attnc.passes.butterfly_decompose import decompose_summary

        summary = decompose_summary(module)
    err, sim_err = "", ""
    x = None
    if seq <= error_max_seq:
        rng = np.random.default_rng(0)
        name = "x" if workload == "linear" else "hidden_states"
        shape = [seq, HIDDEN] if workload == "linear" else [1, seq, HIDDEN]
        x = {name: rng.standard_normal(shape).astype(np.float16)}
        out = next(iter(interpret(module, x).values()))
        if spec:
            dense = next(iter(interpret(front_end(model, None), x).values()))
            err = rel_error(out, dense)
    run_pipeline(module, backend_passes(arch, time_limit=time_limit, seed=0, heuristic_only=False))
    bs = decode(encode(emit_bitstream(module, target, {})))
    t1 = time.perf_counter()
    stats = simulate(bs)
    t2 = time.perf_counter()
    if x is not None and seq <= 512:  # the functional simulator against the interpreter (same IR)
        from attnc.simulator.functional import run

        sim_err = float(np.max(np.abs(next(iter(run(bs, x).values())).astype(np.float64) - out.astype(np.float64))))
    dram = stats.dram_read_bytes + stats.dram_write_bytes
    busiest_tile = max((t.busy_cycles for t in stats.tiles if t.kind in ("compute", "butterfly")), default=0)
    busiest_link = max((lk.bytes / lk.bytes_per_cycle for lk in stats.links), default=0.0)
    bounds = {"compute": busiest_tile, "dram": dram / target.dram.bytes_per_cycle, "noc": busiest_link}
    binds = max(bounds, key=lambda k: bounds[k])
    peak = sum(t.macs_per_cycle for t in target.tiles_of("compute"))
    io_bytes = 2 * seq * HIDDEN * 2 + 2 * params  # activations in and out, and the weights, once (f16)
    roofline = max(stats.macs / peak, io_bytes / target.dram.bytes_per_cycle)
    return {
        "arch": arch, "workload": workload, "seq": seq, "variant": variant, "macs": stats.macs, "params": params,
        "cycles": stats.cycles, "ms": stats.cycles / (target.clock_mhz * 1e3),
        "energy_uj": stats.energy_pj()["total"] / 1e6, "dram_bytes": dram, "utilization": stats.utilization,
        "binds": binds, "bound_share": bounds[binds] / stats.cycles if stats.cycles else 0.0,
        "roofline_cycles": int(roofline), "proj_error": summary.get("mean_error", ""),
        "out_error": err, "sim_vs_interp": sim_err, "compile_s": t1 - t0, "sim_s": t2 - t1,
        "warnings": len(stats.warnings),
    }  # fmt: skip


COLUMNS = [
    "arch", "workload", "seq", "variant", "macs", "mac_reduction", "params", "cycles", "ms", "speedup",
    "speedup_vs_roofline", "energy_uj", "energy_ratio", "dram_bytes", "utilization", "binds", "bound_share",
    "roofline_cycles", "proj_error", "out_error", "sim_vs_interp", "compile_s", "sim_s", "warnings",
]  # fmt: skip


def _fmt(key: str, v) -> str:
    if v == "" or v is None:
        return "-"
    if key in ("speedup", "mac_reduction", "speedup_vs_roofline", "energy_ratio"):
        return f"{v:.2f}x"
    if key in ("utilization", "bound_share"):
        return f"{100 * v:.1f}%"
    if key in ("ms", "energy_uj", "compile_s", "sim_s", "proj_error", "out_error"):
        return f"{v:.3g}"
    if key == "sim_vs_interp":
        return f"{v:.1e}"
    return str(v)


def block_rows(done: dict, archs, seqs, layers: int, attention_layers: int, errors: dict) -> list[dict]:
    """Blocks from their sub-layers, and the hybrid model from its blocks: (layers - attention_layers)
    FBfly and attention_layers ABfly blocks, against ``layers`` dense blocks."""
    rows = []
    sums = ("macs", "params", "cycles", "ms", "energy_uj", "dram_bytes", "roofline_cycles")
    for arch in archs:
        for seq in seqs:
            parts = {}
            dense = [done.get((arch, w, seq, "dense")) for w in ("attn", "ffn")]
            for name, subs in BLOCKS.items():
                bfly = [done.get((arch, w, seq, "butterfly")) for w in subs]
                if all(dense) and all(bfly):
                    parts[name] = bfly
            if not all(dense):
                continue
            nf = layers - attention_layers
            units = {"abfly": [(p, 1) for p in parts.get("abfly", [])], "fbfly": [(p, 1) for p in parts.get("fbfly", [])],
                     f"hybrid{layers}": [(p, nf) for p in parts.get("fbfly", [])]
                     + [(p, attention_layers) for p in parts.get("abfly", [])]}  # fmt: skip
            for wl, bfly in units.items():
                if not bfly or (wl.startswith("hybrid") and len(bfly) < 4):
                    continue
                n_blocks = layers if wl.startswith("hybrid") else 1
                for variant, pieces in (("dense", [(p, n_blocks) for p in dense]), ("butterfly", bfly)):
                    r = {"arch": arch, "workload": wl, "seq": seq, "variant": variant}
                    for k in sums:
                        r[k] = sum(p[k] * n for p, n in pieces)
                    peak = dense[0]["macs"] / dense[0]["cycles"] / dense[0]["utilization"]
                    r["utilization"] = r["macs"] / (r["cycles"] * peak)
                    if variant == "butterfly" and wl.startswith("hybrid"):
                        r["out_error"] = errors.get(seq, "")
                    rows.append(r)
    return rows


def hybrid_error(seq: int, layers: int, attention_layers: int, block: int) -> float:
    """Output error of the whole hybrid model against the dense one (reference interpreter, in f32: the
    approximation's error, not f16's range; four random f16 blocks can overflow)."""
    import numpy as np

    from attnc.interpreter import interpret

    model = block_model(seq, layers, half=False)
    fourier = ",".join(str(i) for i in range(layers - attention_layers)) or "none"
    spec = f'butterfly-decompose{{linears="qkv,out,ffn" fourier="{fourier}" block={block}}}'
    x = {"hidden_states": np.random.default_rng(0).standard_normal((1, seq, HIDDEN)).astype(np.float32)}
    out = interpret(front_end(model, spec), x)["output"]
    return rel_error(out, interpret(front_end(model, None), x)["output"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="edge,cloud")
    ap.add_argument("--seqs", default="512,1024,2048,4096")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--block", type=int, default=1, help="butterfly block (fitted per layer: 768 -> 3)")
    ap.add_argument("--knob", default="6,12,24", help="larger blocks for the linear layer on edge at seq 2048: "
                    "error against speed")
    ap.add_argument("--hybrid-layers", type=int, default=4)
    ap.add_argument("--attention-layers", type=int, default=1, help="ABfly blocks at the top of the hybrid")
    ap.add_argument("--error-max-seq", type=int, default=1024, help="output errors up to this seq")
    ap.add_argument("--time-limit", type=float, default=2.0, help="placement time limit per point (s)")
    ap.add_argument("--quick", action="store_true", help="edge only, seq 512 and 2048")
    ap.add_argument("--jobs", type=int, default=2, help="points compiled and simulated at once")
    ap.add_argument("--out", default=str(RESULTS / "butterfly"), help="output path without suffix")
    args = ap.parse_args()
    if args.quick:
        args.archs, args.seqs = "edge", "512,2048"
    archs, seqs = args.archs.split(","), [int(s) for s in args.seqs.split(",")]
    points = [(arch, w, seq, v) for arch in archs for w in args.workloads.split(",") for seq in seqs
              for v in ("dense", "butterfly") if not (w == "fourier" and v == "dense")]  # fmt: skip
    if "linear" in args.workloads.split(",") and "edge" in archs and 2048 in seqs:
        points += [("edge", "linear", 2048, f"block={b}") for b in args.knob.split(",") if b]
    done: dict[tuple, dict] = {}
    errors: dict[tuple, float] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_point, *p, args.block, args.time_limit, args.error_max_seq): p for p in points}
        hybrid = {pool.submit(hybrid_error, seq, args.hybrid_layers, args.attention_layers, args.block): seq
                  for seq in seqs if seq <= args.error_max_seq}  # fmt: skip
        for fut in as_completed(futures):
            p = futures[fut]
            r = fut.result()
            if isinstance(r, str):  # a point that cannot be compiled is reported, not fatal
                print(f"{' '.join(map(str, p))}: {r}", flush=True)
                continue
            done[p] = r
            print("  ".join(f"{k}={_fmt(k, r.get(k, ''))}" for k in COLUMNS if k in r), flush=True)
        for fut in as_completed(hybrid):
            errors[hybrid[fut]] = fut.result()
    # Fourier mixing is compared with the dense attention sub-layer it replaces
    for (arch, w, seq, v), r in list(done.items()):
        if w == "attn" and v == "dense":
            done[(arch, "fourier", seq, "dense")] = {**r, "workload": "fourier"}
    rows = [done[p] for p in sorted(done, key=lambda p: (p[0], ORDER.index(p[1]), p[2], p[3] != "dense"))]
    rows += block_rows(done, archs, seqs, args.hybrid_layers, args.attention_layers, errors)
    base = {(r["arch"], r["workload"], r["seq"]): r for r in rows if r["variant"] == "dense"}
    for r in rows:
        b = base.get((r["arch"], r["workload"], r["seq"]))
        if b and r["variant"] != "dense":
            r["speedup"] = b["cycles"] / r["cycles"]
            r["speedup_vs_roofline"] = b["roofline_cycles"] / r["cycles"]
            r["mac_reduction"] = b["macs"] / r["macs"]
            r["energy_ratio"] = b["energy_uj"] / r["energy_uj"]
    out = Path(args.out)
    write_csv(out.with_suffix(".csv"), COLUMNS, rows)
    write_table(rows, out.with_suffix(".md"))
    plot(rows, out.parent)
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.md')} and a plot in {out.parent}")
    return 0


def write_table(rows: list[dict], path: Path) -> None:
    shown = ["arch", "workload", "seq", "variant", "macs", "mac_reduction", "cycles", "speedup",
             "speedup_vs_roofline", "energy_uj", "energy_ratio", "utilization", "binds", "proj_error", "out_error",
             "sim_vs_interp"]  # fmt: skip
    notes = [
        "Simulated (timing model, from the bitstream). speedup, mac_reduction and energy_ratio are against the",
        "dense variant at the same point; speedup_vs_roofline is against the dense variant's roofline (its",
        "MACs at full array utilisation, or its compulsory DRAM traffic). proj_error is the mean relative",
        "Frobenius error of the projected weights; out_error the output's relative error against the dense",
        "model (reference interpreter); sim_vs_interp the functional simulator against the interpreter on the",
        "same IR (max abs). Blocks and the hybrid sum their sub-layers (one array configuration each).",
    ]
    write_markdown(path, "Butterfly sparsity: dense vs butterfly", notes, shown, rows, _fmt)


def plot(rows: list[dict], where: Path) -> None:
    plt, fig, panels = arch_axes(rows)
    for arch, ax in panels:
        for wl in sorted({r["workload"] for r in rows if r["arch"] == arch}):
            pts = sorted((r["seq"], r["speedup"]) for r in rows
                         if r["arch"] == arch and r["workload"] == wl and r.get("speedup"))  # fmt: skip
            if pts:
                ax.plot(*zip(*pts), marker="o", label=wl)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("speedup over dense (simulated)")
        ax.set_title(arch)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(where / "butterfly_speedup.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

"""Whole transformer layers, each compiled as one array configuration, against their roofline (issue 14).

    python benchmarks/layer.py [--archs edge,cloud] [--seqs 512,2048,8192] [--workloads bert,trxl,t5,xlm,llama]
        [--gemms/--no-gemms] [--quick] [--jobs 1] [--timeout 600] [--time-limit 2] [--out PATH]
        [--butterfly SPEC [--with-dense]]

Workloads: one layer each, built with onnx.helper from examples/make_examples.py (random weights from a fixed
seed, f16 weights and data, batch 1):

* ``bert``, ``trxl``, ``t5``, ``xlm``: the four workloads of the FLAT paper, which gives them as shapes (model
  width D / heads H / head size d / FFN width): BERT-base 768/12/64/3072, Transformer-XL 1024/16/64/4096,
  T5 512/8/64/2048, XLM 2048/16/128/8192. All four are built as the same post-LN encoder layer (Q/K/V/O
  projections with biases, softmax(QK^T/sqrt(d))V, residual + LayerNorm, erf-GELU FFN, residual + LayerNorm):
  only the shapes differ, as in FLAT. (The real T5 uses pre-RMSNorm and a ReLU FFN and Transformer-XL relative
  positions; neither changes the GEMM shapes.)
* ``llama``: a Llama-style decoder layer at TinyLlama-1.1B's shape: width 2048, 32 query heads sharing 4
  key/value heads (grouped-query attention, head size 64), SwiGLU FFN of width 5632, pre-RMSNorm written in
  ONNX ops (Pow, ReduceMean, Add, Sqrt, Div, Mul), causal attention, no biases, no rotary embedding. A real
  model's layer; it has Llama-2-70B's 8:1 query/kv grouping and the FLAT workloads' head size, while a
  Llama-7B layer (4096 wide, 202M weights) would take minutes per compile at the sizes of the sweep.

Seq 512, 2048 and 8192 (``--seqs``) on ``edge`` and ``cloud``. Each point runs the compile driver's passes
(the default front-end pipeline, then ``backend_passes(arch)``), emits, encodes and decodes the bitstream and
times it with the simulator's timing model (no values). At the smallest sequence of the run (``--check-seq``)
the functional simulator also runs the bitstream and is compared with the reference interpreter on the same IR,
for the layers where that is cheap (at most 5 GMAC: BERT-base and T5 at 512).

Per point:

* cycles; MAC utilisation (the layer's MACs, from the ONNX shapes, over cycles x the array's MACs per cycle);
  the roofline max(MACs / array MACs per cycle, compulsory DRAM bytes / DRAM bytes per cycle), where the
  compulsory bytes are the layer's input, weights (its float initializers) and output read or written once; the
  ratio cycles / roofline; DRAM bytes moved over the compulsory bytes; energy (the simulator's total).
* what binds: the largest of three lower bounds on the cycles -- the busiest compute tile's busy cycles, DRAM
  bytes / DRAM bandwidth, the busiest link's bytes / its bandwidth -- and its share of the cycles.
* the share of the kernels' busy cycles per sub-layer (DMA kernels, which move data, are left out). The rule,
  on the bitstream's kernel graph (streams between kernels): a kernel whose body has an ``attention`` or
  ``softmax`` op, or a matmul of two computed operands (QK^T, PV), is ``attention``; a matmul with a weight
  operand (a constant, or a stream from a DMA load of a constant) is a linear; a linear not downstream of an
  attention is a ``projection`` (Q/K/V), the first linear after an attention (reachable from it without
  another linear on the way; parts of one linear split over tiles count as one) is a ``projection`` (O), and
  linears after that are ``ffn``. The remaining kernels (elementwise, reductions, norms) fall into groups,
  the connected pieces of the kernel graph between linears and attentions (a kernel fed by a linear or an
  attention starts a group, so a residual add does not join two sub-layers): a group with a normalisation in it
  (a LayerNorm, or a reduction such as RMSNorm's mean of squares) is ``norms`` (with the residual add and
  bias beside it); any other group (biases, GELU, SiLU gating) belongs to the linear or attention feeding it
  (an epilogue), or if none, the one it feeds. When a later compiler fuses an epilogue into its GEMM, its
  cycles move to the GEMM's sub-layer, which is what the fusion does to the hardware too.
* compile seconds (front end to decoded bitstream), simulator seconds, the number of simulator warnings and
  the first one, and ``error``: why a point failed or ``timeout`` (the sweep goes on).

``--gemms`` (default on) also measures each distinct GEMM of each layer alone: one MatMul x[seq, K] @ W[K, N]
compiled and simulated the same way, against its own roofline.

``--butterfly SPEC`` (the compile driver's ``--butterfly``, e.g. ``linears=qkv,out,ffn``) compiles each point
with the butterfly-decompose pass added where ``attnc compile --butterfly`` adds it. A butterfly point is measured
against its *own* roofline: max(executed MACs (the simulator's count) / array MACs per cycle, its compulsory DRAM
bytes / DRAM bytes per cycle), its compulsory bytes being the model's input and output and the float constants of
its IR after the front end (the butterfly factors in place of the dense weights). ``speedup`` is the dense
layer's cycles over the butterfly layer's: the dense point of the same run (``--with-dense`` adds it) or else the
dense row of ``benchmarks/results/layer.csv`` at the same arch, workload and seq. Without ``--butterfly`` the
points are the dense ones as above.

Writes ``--out`` .md (benchmarks/_report.py's table), .csv and .png (ratio to the roofline per workload, seq and
arch). Each point runs in its own process, at most ``--jobs`` at once, and is stopped after ``--timeout`` s.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _examples import make_examples
from _report import arch_axes, write_csv, write_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: workload -> (width, query heads, kv heads, FFN width, layer builder)
WORKLOADS = {
    "bert": (768, 12, 12, 3072, "encoder"),
    "trxl": (1024, 16, 16, 4096, "encoder"),
    "t5": (512, 8, 8, 2048, "encoder"),
    "xlm": (2048, 16, 16, 8192, "encoder"),
    "llama": (2048, 32, 4, 5632, "llama"),
}
SUBLAYERS = ("projection", "attention", "ffn", "norms")
#: the functional check only where it is cheap: the reference interpreter multiplies f16 without BLAS, about
#: a minute for BERT-base at seq 512 (4.0 GMAC) on this 2-core machine, and several for XLM or Llama
CHECK_MAX_MACS = 5e9
BYTES = 2  # f16


def layer_model(workload: str, seq: int):
    hidden, heads, kv_heads, ffn, builder = WORKLOADS[workload]
    ex = make_examples()
    if builder == "llama":
        return ex.llama_layer(seq=seq, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=ffn, half=True)
    return ex.encoder(seq=seq, hidden=hidden, heads=heads, ffn=ffn, layers=1, half=True)


def layer_gemms(workload: str) -> dict[tuple[int, int], list[str]]:
    """The layer's linears as (K, N) -> their names (x[seq, K] @ W[K, N])."""
    hidden, heads, kv_heads, ffn, builder = WORKLOADS[workload]
    kv = hidden // heads * kv_heads
    names = {"q": (hidden, hidden), "k": (hidden, kv), "v": (hidden, kv), "o": (hidden, hidden)}
    if builder == "llama":
        names.update({"gate": (hidden, ffn), "up": (hidden, ffn), "down": (ffn, hidden)})
    else:
        names.update({"ffn1": (hidden, ffn), "ffn2": (ffn, hidden)})
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, kn in names.items():
        shapes.setdefault(kn, []).append(name)
    return shapes


def gemm_model(seq: int, k: int, n: int):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(7).standard_normal((k, n)) / np.sqrt(k)).astype(np.float16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [seq, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [seq, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm", [x], [y],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), None


def model_counts(model) -> tuple[int, int]:
    """(MACs of the model's MatMuls and Attention nodes, compulsory DRAM bytes: inputs, float initializers
    and outputs once), from the ONNX graph and its inferred shapes."""
    import numpy as np
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    shape = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        shape[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        shape[t.name] = list(t.dims)
    macs = 0
    for n in g.node:
        if n.op_type == "MatMul":
            a, out = shape[n.input[0]], shape[n.output[0]]
            macs += int(np.prod(out)) * a[-1]
        elif n.op_type == "Attention":  # 3-D q [B, S, Hq*d], k/v [B, S, Hkv*d]: QK^T and PV per query head
            q = shape[n.input[0]]
            heads = next(a.i for a in n.attribute if a.name == "q_num_heads")
            causal = next((a.i for a in n.attribute if a.name == "is_causal"), 0)
            b, s, d = q[0], q[1], q[2] // heads
            # causal: only the scores on or below the diagonal are needed (what a kernel computes beyond
            # them is its own overhead, not the layer's work)
            pairs = s * (s + 1) // 2 if causal else s * s
            macs += 2 * b * heads * pairs * d
    itemsize = {onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT64: 8}
    io = 0
    for vi in [*g.input, *g.output]:
        io += int(np.prod(shape[vi.name])) * itemsize.get(vi.type.tensor_type.elem_type, 2)
    for t in g.initializer:  # the weights; integer initializers are shapes and axes, folded at compile time
        if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT):
            io += int(np.prod(t.dims)) * itemsize[t.data_type]
    return macs, io


# ---------------------------------------------------------------------------
# the share of busy cycles per sub-layer (the rule is in the module docstring)


def _group(name: str) -> str:
    """A kernel's logical op: parts of one op split over tiles (``gemm0_p3``, ``attn0_g0_c5``) are one."""
    return re.sub(r"(_[a-z]+\d+)+$", "", name)


def classify(bs) -> dict[int, str]:
    """kernel id -> sub-layer (``projection``, ``attention``, ``ffn``, ``norms``) or ``dma``."""
    kernels = {c.kernel: c for t in bs.tiles for c in t.contexts}
    succ: dict[int, set[int]] = {k: set() for k in kernels}
    pred: dict[int, set[int]] = {k: set() for k in kernels}
    for r in bs.routes:
        if r.src_kernel in kernels and r.dst_kernel in kernels and r.src_kernel != r.dst_kernel:
            succ[r.src_kernel].add(r.dst_kernel)
            pred[r.dst_kernel].add(r.src_kernel)
    const_loads = {k for k, c in kernels.items() if c.kind == "dma_load" and c.constants}
    role: dict[int, str] = {}
    for k, c in kernels.items():
        ops = {i.opcode for i in c.body}
        if c.kind.startswith("dma"):
            role[k] = "dma"
        elif c.kind in ("attention", "softmax") or ops & {"attention", "softmax"} or c.name.startswith("attn"):
            role[k] = "attention"
        elif c.kind == "gemm" or ops & {"matmul", "batch_matmul"}:
            role[k] = "matmul"
        elif c.kind in ("layer_norm", "rms_norm", "reduce") or any(o.startswith("reduce") or o.endswith("norm")
                                                                    for o in ops):  # fmt: skip
            role[k] = "norm"
        else:
            role[k] = "other"
    # a matmul with a weight is a linear: the weight may reach only one part of a linear split over tiles
    weighted = {_group(kernels[k].name) for k, r in role.items()
                if r == "matmul" and (kernels[k].constants or pred[k] & const_loads)}  # fmt: skip
    for k, r in role.items():
        if r == "matmul":
            role[k] = "linear" if _group(kernels[k].name) in weighted else "attention"
    # linears: before any attention, the first after one, or later
    attn = {k for k, r in role.items() if r == "attention"}
    seen = set(attn)
    frontier = list(attn)
    while frontier:  # everything downstream of an attention
        k = frontier.pop()
        for s in succ[k]:
            if s not in seen:
                seen.add(s)
                frontier.append(s)
    first: set[str] = set()  # linear groups reached from an attention with no other linear on the way
    frontier = list(attn)
    visited = set(attn)
    while frontier:
        k = frontier.pop()
        for s in succ[k]:
            if s in visited:
                continue
            visited.add(s)
            if role[s] == "linear":
                first.add(_group(kernels[s].name))
            else:
                frontier.append(s)
    out: dict[int, str] = {}
    for k, r in role.items():
        if r == "linear":
            out[k] = "projection" if k not in seen or _group(kernels[k].name) in first else "ffn"
        elif r in ("dma", "attention"):
            out[k] = r
    # the remaining kernels: connected groups between linears and attentions
    rest = {k for k, r in role.items() if r in ("norm", "other")}
    # a kernel fed by a linear or attention starts a group (that kernel's epilogue); no stream into it joins it
    # to another group, so a residual add does not merge the sub-layers it connects
    heavy = {k: r for k, r in out.items() if r != "dma"}
    starts = {k for k in rest if pred[k] & heavy.keys()}
    done: set[int] = set()
    for k0 in sorted(rest):
        if k0 in done:
            continue
        comp, stack = {k0}, [k0]
        while stack:
            k = stack.pop()
            for n in [s for s in succ[k] if s not in starts] + ([] if k in starts else sorted(pred[k])):
                if n in rest and n not in comp:
                    comp.add(n)
                    stack.append(n)
        done |= comp
        if any(role[k] == "norm" for k in comp):
            label = "norms"
        else:
            ups = [heavy[p] for k in sorted(comp) for p in sorted(pred[k]) if p in heavy]
            downs = [heavy[s] for k in sorted(comp) for s in sorted(succ[k]) if s in heavy]
            label = (ups or downs or ["norms"])[0]
        for k in comp:
            out[k] = label
    return out


# ---------------------------------------------------------------------------
# one point


def run_point(arch: str, workload: str, seq: int, gemm: tuple[int, int] | None, time_limit: float,
              check: bool, butterfly: str | None = None) -> dict:  # fmt: skip
    """One point as a row; a failure is the row's ``error`` (with the roofline, which needs no compile).
    ``butterfly``: the ``--butterfly`` spec the layer is compiled with (its own roofline then needs the
    compile: the executed MACs and the factors' bytes)."""
    from attnc.arch import load_arch

    target = load_arch(arch)
    model, inputs = gemm_model(seq, *gemm) if gemm else layer_model(workload, seq)
    macs, compulsory = model_counts(model)
    peak = sum(t.macs_per_cycle for t in target.tiles_of("compute"))
    bw = target.dram.bytes_per_cycle
    roofline = max(macs / peak, compulsory / bw)
    row = {
        "arch": arch, "workload": workload, "seq": seq, "part": f"gemm {gemm[0]}x{gemm[1]}" if gemm else "layer",
        "macs": macs, "roofline": round(roofline), "mac_bound": round(macs / peak),
        "dram_bound": round(compulsory / bw), "compulsory_bytes": compulsory,
    }  # fmt: skip
    if butterfly is not None:
        # its own roofline needs the compile (the MACs it executes, the factors' bytes): none if that fails
        row.update({"variant": "butterfly", "roofline": "", "mac_bound": "", "dram_bound": "",
                    "compulsory_bytes": ""})  # fmt: skip
    check = check and macs <= CHECK_MAX_MACS
    try:
        _measure(row, target, model, inputs if check else None, time_limit, peak, roofline, butterfly)
    except Exception as e:  # noqa: BLE001 - the point's error, the sweep goes on
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return row


def io_bytes(model) -> int:
    """Bytes of the ONNX model's inputs and outputs (f16 unless typed otherwise)."""
    import numpy as np
    import onnx

    size = {onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.FLOAT: 4, onnx.TensorProto.INT64: 8}
    g = model.graph
    return sum(int(np.prod([d.dim_value for d in vi.type.tensor_type.shape.dim])) * size.get(vi.type.tensor_type.elem_type, 2)
               for vi in [*g.input, *g.output])  # fmt: skip


def constant_bytes(module) -> int:
    """Bytes of @main's float constants (weights, biases, norm parameters, butterfly factors, scalars): what a
    compiled layer must read from DRAM at least once besides its input."""
    import numpy as np
    from attnc.dialects import sparse as sp
    from attnc.dialects.values import np_dtype
    from attnc.ir import main_func

    total = 0
    for op in main_func(module).body.block.ops:
        if isinstance(op, sp.ConstantOp):
            dt = np_dtype(sp.elt_of(op.results[0]))
            if np.issubdtype(dt, np.floating):
                total += int(np.prod(sp.shape_of(op.results[0]), dtype=np.int64)) * dt.itemsize
    return total


def _measure(row: dict, target, model, inputs, time_limit: float, peak: int, roofline: float,
             butterfly: str | None = None) -> None:  # fmt: skip
    import numpy as np
    from attnc.backend.bitstream import decode, encode
    from attnc.backend.emit import emit_bitstream
    from attnc.frontend.onnx import import_onnx
    from attnc.interpreter import interpret
    from attnc.pipeline import DEFAULT_PIPELINE, backend_passes, parse_pipeline, run_pipeline, with_butterfly
    from attnc.simulator.timing import simulate

    t0 = time.perf_counter()
    module = import_onnx(model)
    records = run_pipeline(module, with_butterfly(parse_pipeline(DEFAULT_PIPELINE), butterfly))
    if butterfly is not None:
        from attnc.passes.butterfly_decompose import decompose_summary

        row["butterfly"] = butterfly
        row["compulsory_bytes"] = io_bytes(model) + constant_bytes(module)
        row["dram_bound"] = round(row["compulsory_bytes"] / target.dram.bytes_per_cycle)
        summary = decompose_summary(module)
        row["decomposed"] = summary["layers"]
        row["proj_error"] = summary["mean_error"]
    t_check = time.perf_counter()
    expected = interpret(module, inputs) if inputs else None  # the oracle, on the IR the back end receives
    t_check = time.perf_counter() - t_check
    records += run_pipeline(module, backend_passes(target, time_limit=time_limit, seed=0))
    bs = decode(encode(emit_bitstream(module, target, {})))
    t1 = time.perf_counter()
    slowest = max(records, key=lambda r: r.seconds)
    row.update({"compile_s": t1 - t0 - t_check, "slowest_pass": f"{slowest.name} {slowest.seconds:.1f}s"})
    stats = simulate(bs)
    t2 = time.perf_counter()
    bw = target.dram.bytes_per_cycle
    dram = stats.dram_read_bytes + stats.dram_write_bytes
    busiest_tile = max((t.busy_cycles for t in stats.tiles if t.kind in ("compute", "butterfly")), default=0)
    busiest_link = max((lk.bytes / lk.bytes_per_cycle for lk in stats.links), default=0.0)
    bounds = {"compute tile": busiest_tile, "dram": dram / bw, "link": busiest_link}
    binds = max(bounds, key=lambda k: bounds[k])
    if butterfly is not None:
        # its own roofline: the MACs it executes (the dense attention core and the butterfly stages)
        row["mac_bound"] = round(stats.macs / peak)
        roofline = max(stats.macs / peak, row["compulsory_bytes"] / bw)
        row["roofline"] = round(roofline)
    row.update({
        "executed_macs": stats.macs, "cycles": stats.cycles,
        # (a butterfly layer's own MACs: the ones it executes)
        "utilization": (stats.macs if butterfly else row["macs"]) / (stats.cycles * peak) if stats.cycles else 0.0,
        "ratio": stats.cycles / roofline if roofline else 0.0,
        "dram_bytes": dram, "dram_vs_compulsory": dram / row["compulsory_bytes"],
        "energy_uj": stats.energy_pj()["total"] / 1e6, "binds": binds,
        "bound_share": bounds[binds] / stats.cycles if stats.cycles else 0.0,
        "kernels": len(stats.kernels), "sim_s": t2 - t1,
        "warnings": len(stats.warnings), "first_warning": stats.warnings[0] if stats.warnings else "",
    })  # fmt: skip
    if row["part"] == "layer":
        roles = classify(bs)
        busy = {s: 0 for s in SUBLAYERS}
        for k in stats.kernels:
            r = roles.get(k.kernel, "dma")
            if r in busy:
                busy[r] += k.busy_cycles
        total = sum(busy.values()) or 1
        row.update({f"share_{s}": busy[s] / total for s in SUBLAYERS})
    if expected is not None:
        from attnc.simulator.functional import run

        got = run(bs, inputs)
        diffs = []
        for name, want in expected.items():
            a, b = np.asarray(got[name], np.float64), np.asarray(want, np.float64)
            diffs.append(float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0)))
        row["sim_vs_interp"] = max(diffs)


def _child(q, args) -> None:
    try:
        q.put(run_point(*args))
    except Exception as e:  # noqa: BLE001 - building the model failed: still one row
        q.put({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})


def run_all(points: list[tuple], jobs: int, timeout: float, report) -> list[dict]:
    """Each point in its own process (fork), at most ``jobs`` at once; one over ``timeout`` s is stopped
    (only the processes started here) and recorded as ``timeout``."""
    ctx = mp.get_context("fork")
    pending, running, rows = list(points), [], []
    while pending or running:
        while pending and len(running) < jobs:
            args = pending.pop(0)
            q = ctx.Queue()
            p = ctx.Process(target=_child, args=(q, args), daemon=True)
            p.start()
            running.append((p, q, args, time.monotonic()))
        time.sleep(0.2)
        for item in list(running):
            p, q, args, start = item
            try:
                r = q.get_nowait()
            except queue.Empty:
                r = None
                if p.is_alive() and time.monotonic() - start <= timeout:
                    continue
                if p.is_alive():
                    p.terminate()
                    p.join(5)
                    if p.is_alive():
                        p.kill()
                    r = {"error": f"timeout (over {timeout:g} s)"}
                else:
                    try:
                        r = q.get(timeout=1)
                    except queue.Empty:
                        r = {"error": f"the point's process died (exit code {p.exitcode})"}
            p.join(5)
            running.remove(item)
            arch, workload, seq, gemm = args[:4]
            if "arch" not in r:
                r = {"arch": arch, "workload": workload, "seq": seq,
                     "part": f"gemm {gemm[0]}x{gemm[1]}" if gemm else "layer", **r}  # fmt: skip
                if len(args) > 6 and args[6] is not None:
                    r["variant"] = "butterfly"
            r["elapsed_s"] = time.monotonic() - start
            rows.append(r)
            report(r)
    return rows


# ---------------------------------------------------------------------------
# output

COLUMNS = [
    "arch", "workload", "seq", "part", "variant", "butterfly", "decomposed", "proj_error", "gemms", "macs",
    "executed_macs", "cycles", "utilization", "roofline",
    "mac_bound", "dram_bound", "ratio", "dram_bytes", "compulsory_bytes", "dram_vs_compulsory", "energy_uj",
    "binds", "bound_share", *(f"share_{s}" for s in SUBLAYERS), "kernels", "compile_s", "slowest_pass", "sim_s",
    "sim_vs_interp", "dense_cycles", "speedup",
    "warnings", "first_warning", "error", "elapsed_s",
]  # fmt: skip
SHOWN = [
    "arch", "workload", "seq", "part", "gemms", "cycles", "utilization", "roofline", "ratio", "dram_vs_compulsory",
    "energy_uj", "binds", "bound_share", *(f"share_{s}" for s in SUBLAYERS), "compile_s", "sim_vs_interp",
    "warnings", "error",
]  # fmt: skip
#: the columns of a run with --butterfly
SHOWN_BUTTERFLY = [
    "arch", "workload", "seq", "part", "variant", "cycles", "executed_macs", "roofline", "ratio", "dense_cycles",
    "speedup", "dram_vs_compulsory", "binds", "bound_share", *(f"share_{s}" for s in SUBLAYERS), "compile_s",
    "sim_vs_interp", "warnings", "error",
]  # fmt: skip


def add_speedups(rows: list[dict], dense_csv: Path) -> None:
    """Each butterfly layer row's ``speedup``: the dense layer's cycles (same run, else ``dense_csv``) over its."""
    import csv

    key = lambda r: (r["arch"], r["workload"], int(r["seq"]), r.get("part", "layer"))  # noqa: E731
    dense = {key(r): int(r["cycles"]) for r in rows if r.get("variant") != "butterfly" and r.get("cycles")}
    if dense_csv.exists():
        with dense_csv.open() as f:
            for r in csv.DictReader(f):
                if r.get("cycles") and not r.get("error"):
                    dense.setdefault(key(r), int(float(r["cycles"])))
    for r in rows:
        if r.get("variant") == "butterfly" and r.get("cycles") and key(r) in dense:
            r["dense_cycles"] = dense[key(r)]
            r["speedup"] = dense[key(r)] / r["cycles"]


def _fmt(key: str, v) -> str:
    if v == "" or v is None:
        return "-"
    if key in ("utilization", "bound_share") or key.startswith("share_"):
        return f"{100 * v:.1f}%"
    if key in ("ratio", "dram_vs_compulsory", "speedup"):
        return f"{v:.2f}x"
    if key in ("cycles", "roofline", "mac_bound", "dram_bound", "macs", "executed_macs", "dram_bytes",
               "compulsory_bytes", "dense_cycles"):  # fmt: skip
        return f"{v:,}"
    if key in ("energy_uj", "compile_s", "sim_s", "elapsed_s"):
        return f"{v:.3g}"
    if key == "sim_vs_interp":
        return f"{v:.1e}"
    if key == "error":  # the table keeps the error's kind and first clause; the notes have it whole
        return str(v).split(" (")[0].replace("|", "/")
    return str(v).replace("|", "/")


def write_table(rows: list[dict], path: Path, title: str) -> None:
    butterfly = any(r.get("variant") == "butterfly" for r in rows)
    notes = [
        "Simulated from the bitstream (timing model). Each layer is one array configuration. utilization is the",
        "layer's MACs over cycles x the array's MACs per cycle; roofline = max(MACs / array MACs per cycle,",
        "compulsory DRAM bytes / DRAM bytes per cycle), compulsory = input, weights and output once (f16); ratio =",
        "cycles / roofline; dram_vs_compulsory = DRAM bytes moved / compulsory. binds: the largest lower bound",
        "(busiest compute tile, DRAM, busiest link), bound_share: that bound over the cycles (far below 100%:",
        "nothing binds, the schedule serialises). share_*: the kernels' busy cycles per sub-layer (rule in the",
        "script's docstring). 'gemm KxN' rows: one linear x[seq, K] @ W[K, N] of the layer alone (gemms: the",
        "layer's linears of that shape). sim_vs_interp: the functional simulator against the reference interpreter",
        "(relative Frobenius error), at the smallest seq only. warnings: the simulator's (first one in the CSV).",
    ]
    failed = [r for r in rows if r.get("error")]
    firsts = sorted({r["first_warning"] for r in rows if r.get("first_warning")})
    if firsts:
        notes += ["", "First simulator warning of the points that warn (distinct):", *(f"- {w}" for w in firsts[:8])]
    if failed:
        notes += ["", "Failed points:", *(f"- {r['arch']} {r['workload']} {r['seq']} {r['part']}: {r['error']}"
                                          for r in failed)]  # fmt: skip
    if butterfly:
        notes += ["", "Butterfly rows (variant): compiled with --butterfly " + ", ".join(sorted(
            {r["butterfly"] for r in rows if r.get("butterfly")})) + "; roofline is the row's own: max(executed",
            "MACs / array MACs per cycle, (input + output + the IR's float constants) / DRAM bytes per cycle);",
            "speedup = dense_cycles (the dense layer: same run, else benchmarks/results/layer.csv) / cycles."]
    write_markdown(path, title, notes, SHOWN_BUTTERFLY if butterfly else SHOWN, rows, _fmt)


def plot(rows: list[dict], path: Path) -> None:
    """Per arch: each layer's cycles / roofline against seq (solid), its worst GEMM alone (dashed, hollow),
    and the layers that failed (x on the top edge)."""
    plt, fig, panels = arch_axes(rows)
    seqs = sorted({r["seq"] for r in rows})
    for arch, ax in panels:
        mine = [r for r in rows if r["arch"] == arch]
        top = max([r["ratio"] for r in mine if r.get("ratio")] + [2.0]) * 1.5
        for i, wl in enumerate(sorted({r["workload"] for r in mine})):
            color = f"C{i}"
            for variant, style in (("", "-"), ("butterfly", ":")):
                layer = sorted((r["seq"], r["ratio"]) for r in mine if r["workload"] == wl and r["part"] == "layer"
                               and r.get("ratio") and r.get("variant", "") == variant)  # fmt: skip
                if layer:
                    ax.plot(*zip(*layer), marker="o", color=color, linestyle=style,
                            label=f"{wl} {variant or 'dense'} layer")  # fmt: skip
            worst: dict[int, float] = {}
            for r in mine:
                if r["workload"] == wl and r["part"] != "layer" and r.get("ratio"):
                    worst[r["seq"]] = max(worst.get(r["seq"], 0.0), r["ratio"])
            if worst:
                ax.plot(*zip(*sorted(worst.items())), marker="o", mfc="none", linestyle="--", color=color,
                        label=f"{wl} worst GEMM alone")  # fmt: skip
            failed = [r["seq"] for r in mine if r["workload"] == wl and r["part"] == "layer" and r.get("error")]
            if failed:
                ax.plot(failed, [top] * len(failed), marker="x", linestyle="none", color=color, markersize=9,
                        label=f"{wl} layer failed")  # fmt: skip
        ax.axhline(2.0, color="grey", linestyle="--", linewidth=0.8, label="2x (layer target)")
        ax.axhline(1.25, color="grey", linestyle=":", linewidth=0.8, label="1.25x (GEMM target)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqs, [str(q) for q in seqs])
        ax.set_xlim(seqs[0] / 1.5, seqs[-1] * 1.5)
        ax.set_yscale("log")
        ax.set_ylim(0.9, top * 1.3)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("simulated cycles / roofline")
        ax.set_title(arch)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="edge,cloud")
    ap.add_argument("--seqs", default="512,2048,8192")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--gemms", action=argparse.BooleanOptionalAction, default=True,
                    help="also each distinct GEMM of each layer alone")  # fmt: skip
    ap.add_argument("--check-seq", type=int, default=None,
                    help="run the functional check at this seq (default: the smallest of --seqs, if <= 512)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="bert only, seq 512 and 2048, edge and cloud")
    ap.add_argument("--jobs", type=int, default=1, help="points at once (each its own process)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per point; over it: 'timeout'")
    ap.add_argument("--time-limit", type=float, default=2.0, help="placement solver time limit per point (s)")
    ap.add_argument("--label", default="", help="added to the table's title (e.g. which code was measured)")
    ap.add_argument("--out", default=None, help="output path without suffix (default: benchmarks/results/layer, "
                    "or layer_butterfly with --butterfly)")
    ap.add_argument("--butterfly", default=None, metavar="SPEC",
                    help="compile the layers with butterfly-decompose (the compile driver's --butterfly spec)")
    ap.add_argument("--with-dense", action="store_true", help="with --butterfly: also run the dense layers")
    args = ap.parse_args()
    if args.out is None:
        args.out = str(RESULTS / ("layer_butterfly" if args.butterfly else "layer"))
    if args.with_dense and args.butterfly is None:
        ap.error("--with-dense compares against --butterfly, which is not given")
    if args.quick:
        args.workloads, args.seqs, args.archs = "bert", "512,2048", "edge,cloud"
    archs = args.archs.split(",")
    seqs = [int(s) for s in args.seqs.split(",")]
    workloads = args.workloads.split(",")
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    check_seq = args.check_seq if args.check_seq is not None else (min(seqs) if min(seqs) <= 512 else -1)
    points: list[tuple] = []
    gemm_names: dict[tuple, str] = {}
    for w in workloads:
        for seq in seqs:
            for arch in archs:
                if args.butterfly is None or args.with_dense:
                    points.append((arch, w, seq, None, args.time_limit, seq == check_seq and args.butterfly is None))
                if args.butterfly is not None:
                    points.append((arch, w, seq, None, args.time_limit, seq == check_seq, args.butterfly))
                if args.gemms:
                    for (k, n), names in layer_gemms(w).items():
                        points.append((arch, w, seq, (k, n), args.time_limit, False))
                        gemm_names[(w, k, n)] = "/".join(names)

    def report(r: dict) -> None:
        print("  ".join(f"{k}={_fmt(k, r[k])}" for k in COLUMNS if k in r and k != "first_warning"), flush=True)

    rows = run_all(points, args.jobs, args.timeout, report)
    for r in rows:
        m = re.match(r"gemm (\d+)x(\d+)", r.get("part", ""))
        if m:
            r["gemms"] = gemm_names.get((r["workload"], int(m[1]), int(m[2])), "")
    order = {(a, w, q, f"gemm {g[0]}x{g[1]}" if g else "layer", len(rest) > 2): i
             for i, (a, w, q, g, *rest) in enumerate(points)}  # fmt: skip
    rows.sort(key=lambda r: order.get((r["arch"], r["workload"], r["seq"], r["part"], r.get("variant") == "butterfly"),
                                      len(order)))  # fmt: skip
    if args.butterfly is not None:
        add_speedups(rows, RESULTS / "layer.csv")
    out = Path(args.out)
    write_csv(out.with_suffix(".csv"), COLUMNS, rows)
    title = "Whole transformer layers against the roofline" + (f" ({args.label})" if args.label else "")
    write_table(rows, out.with_suffix(".md"), title)
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Frontend benchmark: import + lowering time, interpreter speed and accuracy against
onnxruntime on a BERT-base self-attention layer, and the start-up time of `attnc --help`.

    python benchmarks/frontend.py [--repeats N] [--seqs 128,512]

The model is the BERT layer of examples/make_examples.py at BERT-base sizes (hidden
768, 12 heads, batch 1), built in memory. Every timed figure is the median of
``--repeats`` runs. The table is printed and written to benchmarks/results/frontend.md.
Targets: import + lowering <= 2 s, `attnc --help` <= 0.5 s. Not part of the test run.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _examples import make_examples  # benchmarks/, the script's folder, is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "frontend.md"
HIDDEN, HEADS = 768, 12
IMPORT_TARGET_S, HELP_TARGET_S = 2.0, 0.5


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bert_layer(seq: int) -> tuple[Any, dict[str, np.ndarray]]:
    return make_examples().bert_layer(seq=seq, hidden=HIDDEN, heads=HEADS)


def bench_seq(seq: int, repeats: int, tmp: Path, pipeline: str) -> dict[str, Any]:
    import onnxruntime as ort

    from attnc.frontend.onnx import import_onnx
    from attnc.interpreter import interpret
    from attnc.pipeline import run_pipeline

    model, inputs = bert_layer(seq)
    path = tmp / f"bert_base_seq{seq}.onnx"
    path.write_bytes(model.SerializeToString())

    def lower() -> Any:
        module = import_onnx(str(path), input_shapes={})
        run_pipeline(module, pipeline)
        return module

    lower_s, module = median_time(lower, repeats)
    n_attention = sum(op.name == "sparse.attention" for op in module.walk())
    interp_s, got = median_time(lambda: interpret(module, inputs), repeats)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # like the interpreter's numpy, mostly one core
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    ort_s, want = median_time(lambda: session.run(names, inputs), repeats)
    err = max(float(np.max(np.abs(got[n].astype(np.float64) - w))) for n, w in zip(names, want))
    return {"seq": seq, "lower": lower_s, "interp": interp_s, "ort": ort_s, "err": err, "attention": n_attention}


def bench_help(repeats: int) -> float:
    exe = shutil.which("attnc")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "attnc.cli", "--help"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
    t, _ = median_time(lambda: subprocess.run(cmd, check=True, capture_output=True), repeats)
    return t


def table(rows: list[dict[str, Any]], help_s: float, repeats: int, pipeline: str) -> str:
    lines = [
        "# Frontend benchmark",
        "",
        f"BERT-base self-attention layer (hidden {HIDDEN}, {HEADS} heads, batch 1), median of {repeats} runs.",
        f"Python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{_cpus()} CPUs; onnxruntime with 1 intra-op thread. Lowering = import_onnx + `{pipeline}`.",
        "",
        "| seq | import+lowering s | interpreter s | onnxruntime s | interp/ort | max abs err | sparse.attention |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ok = "" if r["lower"] <= IMPORT_TARGET_S else " (over target)"
        lines.append(
            f"| {r['seq']} | {r['lower']:.3f}{ok} | {r['interp']:.4f} | {r['ort']:.4f} | "
            f"{r['interp'] / r['ort']:.1f}x | {r['err']:.2e} | {r['attention']} |"
        )
    ok = "" if help_s <= HELP_TARGET_S else " (over target)"
    lines += [
        "",
        f"`attnc --help` wall time: {help_s:.3f} s{ok} (target <= {HELP_TARGET_S} s); "
        f"import+lowering target <= {IMPORT_TARGET_S} s.",
        "",
    ]
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--pipeline", default=None, help="default: attnc.pipeline.DEFAULT_PIPELINE")
    args = parser.parse_args()
    from attnc.pipeline import DEFAULT_PIPELINE

    pipeline = args.pipeline if args.pipeline is not None else DEFAULT_PIPELINE
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_seq(int(s), args.repeats, Path(tmp), pipeline) for s in args.seqs.split(",")]
    text = table(rows, bench_help(5), args.repeats, pipeline)
    print(text, end="")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

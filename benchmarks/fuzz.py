"""The large-budget fuzz run of issue 13: hostile inputs of every kind through the attnc CLI, bounded.

    python benchmarks/fuzz.py [--cases 20000] [--workers 1] [--seed 0] [--timeout 60] [--mem-gib 4]
                              [--kinds onnx,npz,...] [--budget SECONDS] [--corpus DIR] [--no-save] [--env KEY=VALUE]...

Cases come from the generators of tests/fuzz/fuzzlib.py (mutated ONNX protos, npz inputs, arch YAML,
pipeline strings, .mlir text, option values, CRC-valid bitstreams), round-robin over the kinds, case i seeded
with ``seed + i``. Each runs ``attnc.cli.run`` in a worker process (one per ``--workers``) under
``RLIMIT_AS`` = ``--mem-gib`` GiB (``ulimit -v``) with the default resource limits, and ``--timeout`` seconds per
case (a case over it kills the worker: a hang). Prints one row per kind: cases, successes, clean errors,
unclean errors (exit 2 but not one short plain line), internal errors, hangs, memory-cap hits, worker deaths,
the largest peak RSS of one case and the longest wall time. Every case that is not a success or a clean error
is written to tests/fuzz/corpus/<kind>/found-<hash>.* with a json sidecar naming the command line (one per
distinct error message), which tests/fuzz/test_corpus.py then replays. ``--budget`` stops after that many
seconds. Writes benchmarks/results/fuzz.md. Not part of the test run.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import fuzzlib
from _report import write_markdown

VERDICTS = ("ok", "clean", "unclean", "internal", "hang", "memory", "crash")
COLUMNS = ["kind", "cases", "ok", "clean", "unclean", "internal", "hang", "memory", "crash", "max RSS MiB",
           "max wall s"]


def _rel(p: Path | None) -> str:
    """A saved case's path relative to the repository (the results file names no machine's paths)."""
    if p is None:
        return "not saved"
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return p.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--mem-gib", type=float, default=4.0)
    ap.add_argument("--kinds", default=",".join(fuzzlib.GENERATORS))
    ap.add_argument("--budget", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--corpus", type=Path, default=fuzzlib.CORPUS)
    ap.add_argument("--no-save", action="store_true", help="do not write crashers into the corpus")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the workers, e.g. ATTNC_MAX_FILE_BYTES=67108864 (repeatable)")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    env = dict(e.split("=", 1) for e in args.env)
    unknown = set(kinds) - set(fuzzlib.GENERATORS)
    if unknown:
        ap.error(f"unknown kinds {sorted(unknown)} (known: {', '.join(fuzzlib.GENERATORS)})")

    cache = Path(tempfile.mkdtemp(prefix="attnc-fuzz-cache-"))
    a23bit = fuzzlib.a23_bitstream(cache)
    stats: dict[str, dict[str, float]] = {k: defaultdict(float) for k in kinds}
    saved: dict[tuple[str, str, str], Path] = {}
    lock = threading.Lock()
    start = time.monotonic()
    next_case = [0]

    def signature(kind: str, v: str, o: fuzzlib.Outcome) -> tuple[str, str, str]:
        text = (o.err or o.died).strip().splitlines()
        line = text[-1] if text else ""
        line = re.sub(r"/tmp/attnc-fuzz-[^/\s']+", "TMP", line)
        line = re.sub(r"\d+", "N", line)
        return kind, v, line[:120]

    def work() -> None:
        worker = fuzzlib.Worker(mem_bytes=int(args.mem_gib * fuzzlib.GiB), timeout=args.timeout, env=env)
        try:
            while True:
                with lock:
                    i = next_case[0]
                    if i >= args.cases or (args.budget and time.monotonic() - start > args.budget):
                        return
                    next_case[0] += 1
                kind = kinds[i % len(kinds)]
                try:
                    case = fuzzlib.generate(kind, fuzzlib.RandomChooser(args.seed + i), a23bit)
                except Exception as e:  # noqa: BLE001  (a generator bug: report it, do not stop the run)
                    print(f"case {i} ({kind}): generator failed: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                v, o, argv = fuzzlib.run_case(worker, case, a23bit)
                with lock:
                    s = stats[kind]
                    s["cases"] += 1
                    s[v] += 1
                    s["max RSS MiB"] = max(s["max RSS MiB"], o.rss_kib / 1024)
                    s["max wall s"] = max(s["max wall s"], o.wall)
                    if v not in ("ok", "clean"):
                        sig = signature(kind, v, o)
                        if sig not in saved:
                            where = None if args.no_save else fuzzlib.save_crasher(case, v, o, args.corpus)
                            saved[sig] = where
                            msg = (o.err or o.died).strip().splitlines()
                            print(f"[{v}] case {i} ({kind}): attnc {' '.join(argv)}\n    "
                                  f"{msg[-1][:300] if msg else ''}\n    saved: {where}", flush=True)
                    done = sum(t["cases"] for t in stats.values())
                    if done % 500 == 0:
                        print(f"... {done} cases, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        finally:
            worker.kill()

    threads = [threading.Thread(target=work) for _ in range(max(1, args.workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start

    rows = []
    for k in kinds:
        s = stats[k]
        rows.append({"kind": k, **{c: s.get(c, 0) for c in COLUMNS[1:]}})
    total = {"kind": "all", **{c: sum(r[c] for r in rows) for c in COLUMNS[1:-2]},
             "max RSS MiB": max((r["max RSS MiB"] for r in rows), default=0),
             "max wall s": max((r["max wall s"] for r in rows), default=0)}
    rows.append(total)

    def fmt(col: str, v: object) -> str:
        if col == "max RSS MiB":
            return f"{v:.0f}"
        if col == "max wall s":
            return f"{v:.1f}"
        return str(int(v)) if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(c, r[c])) for r in rows)) for c in COLUMNS]
    print()
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for r in rows:
        print("  ".join(fmt(c, r[c]).rjust(w) for c, w in zip(COLUMNS, widths)))
    bad = int(total["cases"] - total["ok"] - total["clean"])
    print(f"\n{int(total['cases'])} cases in {elapsed:.0f} s with {args.workers} worker(s), "
          f"RLIMIT_AS {args.mem_gib:g} GiB, {args.timeout:g} s per case; {bad} not a success or a clean error"
          + (f", {len(saved)} distinct saved under {args.corpus}" if saved and not args.no_save else ""))
    out = ROOT / "benchmarks" / "results" / "fuzz.md"
    summary = (
        f"{int(total['cases'])} cases in {elapsed:.0f} s, {args.workers} worker(s), RLIMIT_AS {args.mem_gib:g} GiB, "
        f"{args.timeout:g} s per case, seed {args.seed}, "
        f"{'environment ' + ' '.join(args.env) if args.env else 'default resource limits'}. Max RSS: the peak resident set "
        "of a case (the worker's VmHWM, reset before each case), imports included."
    )
    notes = [summary]
    notes += [f"- {v} ({k}): `{line}` -> {_rel(p)}" for (k, v, line), p in saved.items()]
    write_markdown(out, "Fuzzing the attnc CLI with hostile input", notes, COLUMNS, rows, fmt)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

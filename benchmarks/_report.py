"""The markdown the benchmark scripts write: a header saying how and where it was measured, and a table."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def write_markdown(path: Path, title: str, notes: Sequence[str], shown: Sequence[str], rows: Sequence[dict],
                   fmt: Callable[[str, object], str]) -> None:  # fmt: skip
    """``# title``, the command line with this machine and date, ``notes`` (lines), and ``rows`` as a table of
    the ``shown`` columns, each cell ``fmt(column, value)``."""
    script = Path(sys.argv[0]).name
    lines = [
        f"# {title}",
        "",
        f"`python benchmarks/{script} {' '.join(sys.argv[1:])}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}.",
        "",
        *notes,
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "---|" * len(shown),
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(k, r.get(k, "")) for k in shown) + " |")
    path.write_text("\n".join(lines) + "\n")


def arch_axes(rows: Sequence[dict]):
    """(pyplot, figure, [(arch, axes)]): one panel per architecture in ``rows``, off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in rows})
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4), squeeze=False)
    return plt, fig, list(zip(archs, axes[0]))


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """``rows`` as CSV with ``columns`` (missing values empty), creating the folder."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})

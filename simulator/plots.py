"""PNG plots of a timing run: a timeline (one row per tile, a bar per kernel slice) and a heat-map of
the array (each tile's busy fraction, each link's share of its bandwidth as an arrow between tiles).

matplotlib is imported here only, with the Agg backend through ``Figure`` (no pyplot, no display).
"""

from __future__ import annotations

import os
from pathlib import Path

from attnc.arch import KIND_LETTERS
from attnc.errors import AttncError
from attnc.files import replacing
from attnc.simulator.stats import Stats


def plot(stats: Stats, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``timeline.png`` and ``heatmap.png`` into ``out_dir`` (created if missing); return their paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "timeline.png", out / "heatmap.png"]
        for path, figure in zip(paths, (_timeline(stats), _heatmap(stats))):
            _save(figure, path)
    except OSError as e:
        raise AttncError(f"{out}: cannot write the plots: {e.strerror or e}") from None
    return paths


def _save(figure, path: Path) -> None:
    """Write the PNG beside ``path`` and rename it over, so an interrupt never leaves half a picture."""
    with replacing(path) as (fd, _tmp), os.fdopen(fd, "wb") as f:
        figure.savefig(f, format="png", dpi=110)


def _timeline(stats: Stats):
    from matplotlib.figure import Figure

    tiles = [t for t in stats.tiles if t.slices]
    fig = Figure(figsize=(11, 1.2 + 0.32 * max(len(tiles), 1)))
    ax = fig.add_subplot()
    names = sorted({s[1] for t in tiles for s in t.slices})
    cmap = fig.colormaps["tab20"] if hasattr(fig, "colormaps") else None
    if cmap is None:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
    colour = {n: cmap(i % 20) for i, n in enumerate(names)}
    for row, t in enumerate(tiles):
        for _, name, start, end in t.slices:
            ax.broken_barh([(start, end - start)], (row - 0.4, 0.8), facecolors=colour[name], edgecolor="none")
    ax.set_yticks(range(len(tiles)))
    ax.set_yticklabels([f"({t.x},{t.y}) {t.kind}" for t in tiles], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(stats.cycles, 1))
    ax.set_xlabel("cycle")
    ax.set_title(f"{stats.arch}: {stats.cycles} cycles, MAC utilisation {stats.utilization:.1%}")
    fig.tight_layout()
    return fig


def _heatmap(stats: Stats):
    import numpy as np
    from matplotlib.figure import Figure

    width = max((t.x for t in stats.tiles), default=0) + 1
    height = max((t.y for t in stats.tiles), default=0) + 1
    for lk in stats.links:
        width, height = max(width, lk.src[0] + 1, lk.dst[0] + 1), max(height, lk.src[1] + 1, lk.dst[1] + 1)
    grid = np.zeros((height, width))
    cycles = max(stats.cycles, 1)
    for t in stats.tiles:
        grid[t.y, t.x] = t.busy_cycles / cycles
    fig = Figure(figsize=(1.1 * width + 2, 1.1 * height + 1))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="tile busy fraction")
    for t in stats.tiles:
        ax.text(t.x, t.y, f"{KIND_LETTERS.get(t.kind, '?')}\n{grid[t.y, t.x]:.0%}", ha="center", va="center",
                fontsize=8, color="white" if grid[t.y, t.x] < 0.6 else "black")  # fmt: skip
    for lk in stats.links:
        use = min(lk.bytes / (cycles * lk.bytes_per_cycle), 1.0)
        (x0, y0), (x1, y1) = lk.src, lk.dst
        # offset each direction sideways so both arrows of a link pair show
        ox, oy = (y1 - y0) * 0.08, (x0 - x1) * 0.08
        ax.annotate("", xy=(x0 + 0.7 * (x1 - x0) + ox, y0 + 0.7 * (y1 - y0) + oy),
                    xytext=(x0 + 0.3 * (x1 - x0) + ox, y0 + 0.3 * (y1 - y0) + oy),
                    arrowprops={"arrowstyle": "->", "color": (1.0, 0.2, 0.1, 0.25 + 0.75 * use),
                                "lw": 0.5 + 3 * use})  # fmt: skip
    ax.set_xticks(range(width))
    ax.set_yticks(range(height))
    ax.set_title(f"{stats.arch}: tile busy fraction, link load (arrow width)")
    fig.tight_layout()
    return fig

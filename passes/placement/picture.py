"""A picture of a mapping: the array's tiles coloured by kind, the kernels placed
on each, and every NoC link shaded by its load (summed stream rate / capacity).

matplotlib is imported only here, and only when a picture is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING

from attnc.errors import AttncError

if TYPE_CHECKING:
    from attnc.arch import Arch
    from attnc.passes.placement.problem import Mapping, MappingProblem

KIND_COLOURS = {
    "compute": "#9ecae1",
    "sfu": "#fdd0a2",
    "butterfly": "#c7e9c0",
    "memory": "#dadaeb",
    "dma": "#d9d9d9",
}
KERNEL_COLOURS = {
    "compute": "#08519c",
    "sfu": "#a63603",
    "butterfly": "#006d2c",
    "memory": "#54278f",
    "dma": "#252525",
}


def draw_mapping(arch: Arch, problem: MappingProblem, mapping: Mapping, path: str | Path,
                 file: IO[bytes] | None = None) -> Path:
    """Write the picture to ``path``; the suffix (.svg or .png) picks the format. With ``file`` (an open
    binary file, e.g. the CLI's atomic temporary file) the picture goes there and ``path`` only names it."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise AttncError(f"{path}: picture must be .svg or .png, not '{path.suffix or '(no suffix)'}'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrow, Patch, Rectangle

    kinds = {k.name: k.kind for k in problem.kernels}
    on_tile: dict[tuple[int, int], list[str]] = {}
    for name, pos in sorted(mapping.placement.items()):
        on_tile.setdefault(tuple(pos), []).append(name)
    graph = arch.graph()
    loads = mapping.link_loads(problem)

    size = max(arch.width, arch.height)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * arch.width, 2.6 + 1.6 * arch.height))
    cmap = plt.get_cmap("Reds")
    side = 0.72
    for t in arch.tiles:
        # y grows downwards, as in the YAML grid.
        ax.add_patch(Rectangle((t.x - side / 2, -t.y - side / 2), side, side, facecolor=KIND_COLOURS.get(t.kind, "w"),
                               edgecolor="black", linewidth=0.8, gid=f"tile-{t.x}-{t.y}"))
        names = on_tile.get((t.x, t.y), [])
        ax.text(t.x - side / 2 + 0.03, -t.y + side / 2 - 0.03, f"({t.x},{t.y}) {len(names)}/{t.contexts}",
                fontsize=5, va="top", ha="left", color="#444444")
        for i, name in enumerate(names[:6]):
            label = name if len(name) <= 14 else name[:13] + "…"
            ax.text(t.x - side / 2 + 0.05, -t.y + side / 2 - 0.16 - 0.1 * i, label, fontsize=5, va="top",
                    ha="left", color=KERNEL_COLOURS.get(kinds.get(name, ""), "black"))
        if len(names) > 6:
            ax.text(t.x, -t.y - side / 2 + 0.03, f"+{len(names) - 6} more", fontsize=5, ha="center")
    for a, b, data in graph.edges(data=True):
        frac = loads.get((a, b), 0.0) / data["bytes_per_cycle"]
        (ax0, ay0), (bx, by) = a, b
        dx, dy = bx - ax0, by - ay0
        # Two directions of one link side by side, offset across the link.
        ox, oy = -dy * 0.07, dx * 0.07
        sx, sy = ax0 + dx * side / 2 + ox, -(ay0 + dy * side / 2) - oy
        lx, ly = dx * (1 - side), -dy * (1 - side)
        colour = cmap(0.15 + 0.85 * min(frac, 1.0)) if frac > 0 else "#e0e0e0"
        ax.add_patch(FancyArrow(sx, sy, lx, ly, width=0.03, head_width=0.07, head_length=0.06,
                                length_includes_head=True, color="#d7301f" if frac > 1 else colour, linewidth=0))
    ax.set_xlim(-0.7, arch.width - 0.3)
    ax.set_ylim(-arch.height + 0.3, 0.7)
    ax.set_aspect("equal")
    ax.axis("off")
    used = sorted({t.kind for t in arch.tiles})
    handles = [Patch(facecolor=KIND_COLOURS.get(k, "w"), edgecolor="black", label=f"{k} tile") for k in used]
    handles.append(Patch(color=cmap(1.0), label="link at capacity"))
    handles.append(Patch(color="#e0e0e0", label="idle link"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(4, len(handles)),
              fontsize=7, frameon=False)
    s = mapping.stats
    ax.set_title(
        f"{arch.name} {arch.width}x{arch.height}: {len(problem.kernels)} kernels, {len(problem.streams)} streams\n"
        f"{s.status} in {s.seconds:.1f} s; makespan est. {s.makespan:,} (lb {s.makespan_lb:,}); "
        f"{s.byte_hops:,} byte-hops (lb {s.byte_hops_lb:,}); max link {s.max_link_load:g} of {s.link_capacity:g} B/cycle",
        fontsize=max(6, 10 - size // 4))
    fig.tight_layout()
    try:
        fig.savefig(path if file is None else file, format=fmt, dpi=150)
    except OSError as e:
        raise AttncError(f"{path}: cannot write the picture: {e.strerror or e}") from e
    finally:
        plt.close(fig)
    return path

"""The mapping part of ``attnc compile --report``: what went where, how loaded the
array is, and how good the solver's answer is against its lower bound."""

from __future__ import annotations

from collections import Counter, defaultdict

from attnc.passes.placement.problem import Mapping, MappingProblem
from attnc.passes.placement.sram import sram_need


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:5.1f}%" if b else "    -"


def _gap(value: float, bound: float) -> str:
    if not bound:
        return "-"
    return f"{100 * (value - bound) / value:.1f}%" if value else "-"


def format_mapping_report(config, arch, problem: MappingProblem, mapping: Mapping) -> str:
    """Kernels per tile kind, tile and link utilisation, solver status and the objective
    next to its lower bound."""
    lines = [f"array: {arch.name} ({arch.width}x{arch.height}, {arch.total_macs_per_cycle} MACs/cycle, "
             f"{arch.clock_mhz:g} MHz)"]  # fmt: skip
    kinds = sorted({t.kind for t in arch.tiles})
    per_kind = Counter(k.kind for k in problem.kernels)
    used_tiles: dict[str, set] = defaultdict(set)
    ctx_used: Counter[str] = Counter()
    sram_used: Counter[str] = Counter()
    buffers: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for k in problem.kernels:
        pos = mapping.placement[k.name]
        used_tiles[k.kind].add(pos)
        ctx_used[k.kind] += 1
        buffers[k.kind, pos].append((k.buffer_bytes, k.phase))
    for (kind, _pos), held in buffers.items():  # SRAM phases on a tile share addresses
        sram_used[kind] += sram_need(held)
    lines.append(f"  {'tile kind':<10} {'kernels':>7} {'tiles used':>12} {'contexts':>14} {'SRAM used':>18}")
    for kind in kinds:
        tiles = arch.tiles_of(kind)
        slots = sum(t.contexts for t in tiles)
        sram = sum(t.sram_bytes for t in tiles)
        lines.append(
            f"  {kind:<10} {per_kind[kind]:>7} {len(used_tiles[kind]):>5}/{len(tiles):<6} "
            f"{ctx_used[kind]:>5}/{slots:<4}{_pct(ctx_used[kind], slots)} "
            f"{sram_used[kind] // 1024:>7}/{sram // 1024:<5}KiB {_pct(sram_used[kind], sram)}"
        )
    load: Counter[tuple] = Counter()
    for s in problem.streams:
        path = mapping.routes[s.name]
        for a, b in zip(path, path[1:]):
            load[a, b] += s.rate
    cap = arch.noc.link_bytes_per_cycle
    links = arch.graph().number_of_edges()
    busiest = max(load.values(), default=0.0)
    mean = sum(load.values()) / len(load) if load else 0.0
    lines.append(
        f"links: {len(load)}/{links} used; busiest {busiest:.2f} B/cycle ({_pct(busiest, cap).strip()} of {cap}, "
        f"a hard limit), mean of used {mean:.2f} B/cycle"
    )
    a = config.attributes
    get = lambda k, d=0: (a[k].value.data if hasattr(a[k], "value") else a[k].data) if k in a else d  # noqa: E731
    scale = get("attnc.stream_rate_scale", 1.0)
    if scale < 1:
        lines.append(
            f"  throttled: the streams do not fit the links at full rate, so every stream runs at {scale:g} of it "
            f"(its kernels' cycles charged the slowdown in the makespan estimate)"
        )
    lines.append(
        f"solver: {get('mapping.status', '?')} by {get('mapping.method', '?')} in {get('mapping.seconds'):.2f} s "
        f"({get('mapping.variables')} variables, {get('mapping.lns_rounds')} LNS rounds)"
    )
    lines.append(f"  {'objective':<22} {'value':>12} {'lower bound':>12} {'gap':>8} {'heuristic':>12}")
    for label, key, fmt in (  # in priority order, link capacity (hard) aside
        ("makespan estimate", "makespan", "{:d}"),
        ("byte-hops", "byte_hops", "{:d}"),
        ("max link load B/cycle", "max_link_load", "{:.2f}"),
    ):
        v, lb, h = get(f"mapping.{key}"), get(f"mapping.{key}_lb"), get(f"mapping.heuristic_{key}")
        lines.append(f"  {label:<22} {fmt.format(v):>12} {fmt.format(lb):>12} {_gap(v, lb):>8} {fmt.format(h):>12}")
    return "\n".join(lines) + "\n"

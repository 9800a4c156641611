"""The mapping problem handed to the placer, the mapping it returns, and two
checks that do not trust the placer: ``validate`` (is a mapping legal?) and
``explain_infeasible`` (can any mapping exist, by counting?).

The lowering builds a ``MappingProblem`` (kernels with the tile kind they need,
streams between them); ``attnc.passes.placement.cpsat.place_and_route`` returns a
``Mapping`` (kernel -> tile, stream -> path of tiles); the backend encodes it.

``validate`` deliberately re-derives everything from the architecture's own
graph (``Arch.graph()``) and shares no code with the mapper, so tests that run
it on the mapper's output check the mapper independently.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attnc.errors import AttncError

if TYPE_CHECKING:
    from attnc.arch import Arch

Pos = tuple[int, int]


@dataclass(frozen=True)
class KernelSpec:
    """A tile-sized unit of work that must sit on one tile of kind ``kind``. ``window``: when it runs
    (start, finish cycles) in the graph's schedule with a tile of its own, which tells the placer which
    kernels may share a tile at no cost (``attnc.passes.placement.phases``); None: unknown, every kernel
    is taken as running all the time. ``phase``: its SRAM phase (not a phase of the schedule): 0 holds its
    buffers for the whole run; on a tile, kernels of different phases p >= 1 reuse the same SRAM, so a
    tile needs its phase-0 buffers plus, for each p >= 1, its phase-p buffers (``attnc.passes.placement.sram``)."""

    name: str
    kind: str
    buffer_bytes: int
    cycles: int
    group: str = ""
    pipeline: tuple[str, int] | None = None
    window: tuple[float, float] | None = None
    phase: int = 0
    #: kernels with the same non-empty ``together`` run at the same time (a GEMM grid's parts, an attention
    #: group's members): two of them on one tile take turns, so the placer keeps them apart where it can
    together: str = ""


@dataclass(frozen=True)
class StreamSpec:
    """Data flowing from kernel ``src`` to kernel ``dst``: ``bytes`` in total, at
    ``rate`` bytes per cycle on every link it crosses."""

    name: str
    src: str
    dst: str
    bytes: int
    rate: float


@dataclass
class MappingProblem:
    kernels: list[KernelSpec]
    streams: list[StreamSpec]

    def kernel(self, name: str) -> KernelSpec:
        for k in self.kernels:
            if k.name == name:
                return k
        raise KeyError(name)


@dataclass
class MappingStats:
    """How the mapping was found and how good it is.

    ``status`` is OPTIMAL (CP-SAT proved the weighted objective optimal), FEASIBLE
    (CP-SAT improved or confirmed it without proof), or HEURISTIC (the greedy
    mapping, either asked for or because the solver found nothing better in time).
    Link capacity is a hard limit: a mapping with any link over it is never
    returned. Within it, the objective terms are, in priority order: the makespan
    estimate (cycles of the graph's schedule, each phase stretched by the tile
    with the most work placed in it: kernels that run at the same time and share
    a tile take turns, see ``attnc.passes.placement.phases``) and total byte-hops
    (bytes x links crossed, summed over streams). ``max_link_load`` is reported,
    not minimised: a stream within capacity runs at its rate however full its
    links are.
    """

    status: str = "HEURISTIC"
    seconds: float = 0.0
    max_link_load: float = 0.0
    byte_hops: int = 0
    makespan: int = 0
    max_link_load_lb: float = 0.0
    byte_hops_lb: int = 0
    makespan_lb: int = 0
    heuristic_max_link_load: float = 0.0
    heuristic_byte_hops: int = 0
    heuristic_makespan: int = 0
    heuristic_seconds: float = 0.0
    variables: int = 0
    lns_rounds: int = 0
    method: str = "heuristic"      # heuristic | monolithic | lns
    link_capacity: float = 0.0

    def gap(self, term: str) -> float:
        """Relative gap of an objective term to its lower bound (0 = proven tight)."""
        value, lb = getattr(self, term), getattr(self, term + "_lb")
        return 0.0 if value <= 0 else max(0.0, (value - lb) / value)


@dataclass
class Mapping:
    placement: dict[str, Pos]
    routes: dict[str, list[Pos]]
    stats: MappingStats = field(default_factory=MappingStats)

    def link_loads(self, problem: MappingProblem) -> dict[tuple[Pos, Pos], float]:
        """Summed stream rates per directed link (bytes/cycle)."""
        rate = {s.name: s.rate for s in problem.streams}
        loads: dict[tuple[Pos, Pos], float] = defaultdict(float)
        for name, path in self.routes.items():
            for a, b in zip(path, path[1:]):
                loads[(a, b)] += rate.get(name, 0.0)
        return dict(loads)


class MappingInfeasible(AttncError):
    """No mapping exists (or none was found): the message names the resource, by how
    much it is over-subscribed, and the kernels that need it."""


def _names(names: list[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def _kib(n: float) -> str:
    return f"{n / 1024:g} KiB" if n >= 1024 else f"{int(n)} B"


# --------------------------------------------------------------------------- validator


def validate(problem: MappingProblem, arch: Arch, mapping: Mapping) -> list[str]:
    """Every way ``mapping`` breaks the problem or the architecture, in words
    (empty list = a legal mapping)."""
    errors: list[str] = []
    graph = arch.graph()
    tiles = {(t.x, t.y): t for t in arch.tiles}
    kernels = {k.name: k for k in problem.kernels}
    if len(kernels) != len(problem.kernels):
        errors.append("problem has duplicate kernel names")

    used_ctx: dict[Pos, list[str]] = defaultdict(list)
    used_sram: dict[tuple[Pos, int], int] = defaultdict(int)  # (tile, SRAM phase) -> bytes
    named: dict[tuple[Pos, int], list[str]] = defaultdict(list)
    for k in problem.kernels:
        pos = mapping.placement.get(k.name)
        if pos is None:
            errors.append(f"kernel '{k.name}' is not placed")
            continue
        pos = tuple(pos)
        tile = tiles.get(pos)
        if tile is None:
            errors.append(f"kernel '{k.name}' placed at {pos}, where the array has no tile")
            continue
        if tile.kind != k.kind:
            errors.append(f"kernel '{k.name}' needs a {k.kind} tile, placed on {tile.kind} tile {pos}")
        used_ctx[pos].append(k.name)
        used_sram[pos, k.phase] += k.buffer_bytes
        named[pos, k.phase].append(k.name)
    for name in mapping.placement:
        if name not in kernels:
            errors.append(f"placement names unknown kernel '{name}'")
    for pos, names in sorted(used_ctx.items()):
        tile = tiles[pos]
        if len(names) > tile.contexts:
            errors.append(f"tile {pos} runs {len(names)} kernels, it has {tile.contexts} contexts: {_names(names)}")
        # phase 0 holds its buffers all the time; each phase p >= 1 holds its own on top of them, and
        # reuses the addresses of the other nonzero phases
        resident = used_sram.get((pos, 0), 0)
        if resident > tile.sram_bytes:
            errors.append(f"tile {pos} needs {resident} B of SRAM, it has {tile.sram_bytes}: {_names(named[pos, 0])}")
            continue
        for p in sorted({p for (q, p) in used_sram if q == pos and p != 0}):
            if resident + used_sram[pos, p] > tile.sram_bytes:
                errors.append(
                    f"tile {pos} needs {resident + used_sram[pos, p]} B of SRAM in phase {p} ({resident} B resident"
                    f" + {used_sram[pos, p]} B of phase {p}), it has {tile.sram_bytes}:"
                    f" {_names(named[pos, 0] + named[pos, p])}")

    loads: dict[tuple[Pos, Pos], float] = defaultdict(float)
    users: dict[tuple[Pos, Pos], list[str]] = defaultdict(list)
    for s in problem.streams:
        path = mapping.routes.get(s.name)
        if path is None:
            errors.append(f"stream '{s.name}' has no route")
            continue
        path = [tuple(p) for p in path]
        if not path:
            errors.append(f"stream '{s.name}' has an empty route")
            continue
        src, dst = mapping.placement.get(s.src), mapping.placement.get(s.dst)
        if src is not None and path[0] != tuple(src):
            errors.append(f"stream '{s.name}' starts at {path[0]}, its source '{s.src}' is at {tuple(src)}")
        if dst is not None and path[-1] != tuple(dst):
            errors.append(f"stream '{s.name}' ends at {path[-1]}, its destination '{s.dst}' is at {tuple(dst)}")
        for a, b in zip(path, path[1:]):
            if not graph.has_edge(a, b):
                errors.append(f"stream '{s.name}' hops {a}->{b}, which is not a link")
                continue
            loads[(a, b)] += s.rate
            users[(a, b)].append(s.name)
    for name in mapping.routes:
        if all(s.name != name for s in problem.streams):
            errors.append(f"routes name unknown stream '{name}'")
    for link, load in sorted(loads.items()):
        cap = graph.edges[link]["bytes_per_cycle"]
        if load > cap + 1e-9:
            errors.append(
                f"link {link[0]}->{link[1]}: streams need {load:g} B/cycle, capacity {cap:g}: {_names(users[link])}"
            )
    return errors


# --------------------------------------------------------------------------- counting checks


def explain_infeasible(problem: MappingProblem, arch: Arch) -> str | None:
    """Counting arguments that rule out every mapping, as one line each joined by
    '; ' (None when none applies). Cheap: run before any solver."""
    by_kind: dict[str, list[KernelSpec]] = defaultdict(list)
    for k in problem.kernels:
        by_kind[k.kind].append(k)
    reasons = [*_naming_reasons(problem), *_tile_reasons(by_kind, arch), *_link_reasons(problem, by_kind, arch)]
    return "; ".join(reasons) if reasons else None


def _naming_reasons(problem: MappingProblem) -> list[str]:
    """Kernel names must be unique and every stream must name known kernels."""
    reasons: list[str] = []
    names = [k.name for k in problem.kernels]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        reasons.append(f"duplicate kernel names: {_names(dup)}")
    known = set(names)
    for s in problem.streams:
        for end in (s.src, s.dst):
            if end not in known:
                reasons.append(f"stream '{s.name}' names unknown kernel '{end}'")
    return reasons


def _tile_reasons(by_kind: dict[str, list[KernelSpec]], arch: Arch) -> list[str]:
    """Per tile kind: enough tiles, contexts and SRAM for its kernels."""
    reasons: list[str] = []
    for kind in sorted(by_kind):
        ks = by_kind[kind]
        tiles = [t for t in arch.tiles if t.kind == kind]
        kn = [k.name for k in ks]
        if not tiles:
            reasons.append(f"needs {len(ks)} {kind} kernels but {arch.name} has no {kind} tile: {_names(kn)}")
            continue
        slots = sum(t.contexts for t in tiles)
        if len(ks) > slots:
            ctx = {t.contexts for t in tiles}
            per = f"{ctx.pop()} contexts" if len(ctx) == 1 else "contexts"
            reasons.append(
                f"needs {len(ks)} {kind} kernels but {arch.name} has {len(tiles)} {kind} tile"
                f"{'s' if len(tiles) != 1 else ''} x {per} = {slots} slots: {_names(kn)}"
            )
        biggest = max(t.sram_bytes for t in tiles)
        too_big = [k for k in ks if k.buffer_bytes > biggest]
        for k in too_big[:3]:
            reasons.append(
                f"kernel '{k.name}' needs {_kib(k.buffer_bytes)} of SRAM, the largest {kind} tile has {_kib(biggest)}"
            )
        if len(too_big) > 3:
            reasons.append(f"{len(too_big) - 3} more {kind} kernels need more SRAM than any {kind} tile has")
        # kernels needing more than half the SRAM of every tile they fit cannot share one (unless they are of
        # different SRAM phases >= 1): a phase-0 one takes a tile alone, the others one per phase and tile
        halves = [k for k in ks if all(2 * k.buffer_bytes > t.sram_bytes for t in tiles if t.sram_bytes >= k.buffer_bytes)]
        by_phase = Counter(k.phase for k in halves)
        worst = max((p for p in by_phase if p), key=lambda p: (by_phase[p], -p), default=0)
        apart = [k for k in halves if k.phase in (0, worst)]
        if not too_big and len(apart) > len(tiles):
            phased = f" (resident or of SRAM phase {worst})" if worst else ""
            reasons.append(
                f"{len(apart)} {kind} kernels{phased} each need more than half a {kind} tile's SRAM, so no two share a"
                f" tile, but {arch.name} has {len(tiles)} {kind} tiles: {_names([k.name for k in apart])}"
            )
        # every tile holds its phase-0 buffers and its largest phase's: together, at least the phase-0 total
        # and the largest phase's total
        per_phase = Counter()
        for k in ks:
            per_phase[k.phase] += k.buffer_bytes
        resident = per_phase.pop(0, 0)
        total, cap = resident + max(per_phase.values(), default=0), sum(t.sram_bytes for t in tiles)
        if not too_big and total > cap:
            which = " (resident plus the largest SRAM phase)" if per_phase else ""
            reasons.append(
                f"{kind} kernels need {_kib(total)} of SRAM together{which}, the {len(tiles)} {kind} tiles have"
                f" {_kib(cap)} (over by {_kib(total - cap)}): {_names(kn)}"
            )
    return reasons


def _link_reasons(problem: MappingProblem, by_kind: dict[str, list[KernelSpec]], arch: Arch) -> list[str]:
    """A stream whose ends cannot share a tile crosses at least one link: per stream, per kernel's links
    (pigeonhole) and per kernel's total in and out rates."""
    reasons: list[str] = []
    graph = arch.graph()
    caps = [d["bytes_per_cycle"] for _, _, d in graph.edges(data=True)]
    link_cap = max(caps) if caps else 0.0
    kinds = {k.name: k.kind for k in problem.kernels}
    out_rate: dict[str, float] = defaultdict(float)
    in_rate: dict[str, float] = defaultdict(float)
    for s in problem.streams:
        if s.src not in kinds or s.dst not in kinds:
            continue
        if s.rate > link_cap and must_cross(s, kinds):
            reasons.append(f"stream '{s.name}' needs {s.rate:g} B/cycle, the widest link carries {link_cap:g}")
        if must_cross(s, kinds):
            out_rate[s.src] += s.rate
            in_rate[s.dst] += s.rate
    rates_in: dict[str, list[float]] = defaultdict(list)
    rates_out: dict[str, list[float]] = defaultdict(list)
    for s in problem.streams:
        if s.src in kinds and s.dst in kinds and must_cross(s, kinds):
            rates_out[s.src].append(s.rate)
            rates_in[s.dst].append(s.rate)
    for kind in sorted(by_kind):
        tiles = [(t.x, t.y) for t in arch.tiles if t.kind == kind]
        if not tiles:
            continue
        # Pigeonhole: more streams than links means two share a link.
        for k in by_kind[kind]:
            for rates, way, deg in ((rates_in[k.name], "in", max(graph.in_degree(p) for p in tiles)),
                                    (rates_out[k.name], "out", max(graph.out_degree(p) for p in tiles))):
                need = pigeonhole(rates, deg)
                if need > link_cap + 1e-9:
                    reasons.append(
                        f"kernel '{k.name}' has {len(rates)} {way}going streams but a {kind} tile has {deg}"
                        f" {way}-links: two must share one and need {need:g} B/cycle, capacity {link_cap:g}"
                    )
        out_cap = max(sum(graph.edges[e]["bytes_per_cycle"] for e in graph.out_edges(p)) for p in tiles)
        in_cap = max(sum(graph.edges[e]["bytes_per_cycle"] for e in graph.in_edges(p)) for p in tiles)
        for k in by_kind[kind]:
            if out_rate[k.name] > out_cap + 1e-9:
                reasons.append(
                    f"kernel '{k.name}' sends {out_rate[k.name]:g} B/cycle to other tiles, a {kind} tile's links"
                    f" carry at most {out_cap:g} out"
                )
            if in_rate[k.name] > in_cap + 1e-9:
                reasons.append(
                    f"kernel '{k.name}' receives {in_rate[k.name]:g} B/cycle from other tiles, a {kind} tile's links"
                    f" carry at most {in_cap:g} in"
                )
    return reasons


def pigeonhole(rates: list[float], links: int) -> float:
    """Least load of the busiest link when streams of these rates share ``links``
    links whole: with more streams than links, the two smallest of the largest
    links+1 streams share one."""
    if len(rates) <= links or links <= 0:
        return max(rates, default=0.0) if links > 0 else (sum(rates) if rates else 0.0)
    top = sorted(rates, reverse=True)[: links + 1]
    return top[-1] + top[-2]


def must_cross(stream: StreamSpec, kinds: dict[str, str]) -> bool:
    """A stream between kernels of different kinds always leaves its source tile."""
    return stream.src != stream.dst and kinds[stream.src] != kinds[stream.dst]


# --------------------------------------------------------------------------- synthetic problems


def synthetic_attention(heads: int, seq: int, arch: Arch, *, head_dim: int = 64, elem_bytes: int = 2) -> MappingProblem:
    """A hand-made unfused attention graph, one small dataflow per head, for tests and benchmarks.

    Per head: DMA load of X -> layer norm (sfu) -> Q, K, V projections (compute)
    -> Q.K^T (compute) -> softmax (sfu) -> P.V (compute); every 4 heads share an
    output projection (compute) and a DMA store. ``seq`` sets bytes and cycles;
    rates are fractions of ``arch``'s link width and buffers fit its tiles (a
    quarter of a tile's SRAM per context at most), so the graph suits any preset.
    """
    cap = float(arch.noc.link_bytes_per_cycle)
    sram = {kind: min((t.sram_bytes // max(1, t.contexts) for t in arch.tiles if t.kind == kind), default=0)
            for kind in ("compute", "sfu", "dma")}
    row = seq * head_dim * elem_bytes          # one head's activations
    score_bytes = seq * seq * elem_bytes       # one head's attention matrix
    weights = head_dim * head_dim * elem_bytes

    def buf(kind: str, want: int) -> int:
        return max(1, min(want, sram[kind] // 4 * 3))

    kernels: list[KernelSpec] = []
    streams: list[StreamSpec] = []

    def kernel(name, kind, want_buf, cycles, group, stage):
        kernels.append(KernelSpec(name, kind, buf(kind, want_buf), max(1, int(cycles)), group, (group, stage)))

    def stream(src, dst, nbytes, frac):
        streams.append(StreamSpec(f"{src}->{dst}", src, dst, int(nbytes), cap * frac))

    macs = 256
    for h in range(heads):
        g = f"head{h}"
        kernel(f"load_x_h{h}", "dma", row, row / 16, g, 0)
        kernel(f"ln_h{h}", "sfu", 4 * head_dim, seq * head_dim / 16, g, 1)
        for p in "qkv":
            kernel(f"proj_{p}_h{h}", "compute", weights, seq * head_dim * head_dim / macs, g, 2)
        kernel(f"qk_h{h}", "compute", row, seq * seq * head_dim / macs, g, 3)
        kernel(f"softmax_h{h}", "sfu", seq * elem_bytes, seq * seq / 16, g, 4)
        kernel(f"pv_h{h}", "compute", row, seq * seq * head_dim / macs, g, 5)
        stream(f"load_x_h{h}", f"ln_h{h}", row, 0.25)
        for p in "qkv":
            stream(f"ln_h{h}", f"proj_{p}_h{h}", row, 0.125)
        stream(f"proj_q_h{h}", f"qk_h{h}", row, 0.125)
        stream(f"proj_k_h{h}", f"qk_h{h}", row, 0.125)
        stream(f"proj_v_h{h}", f"pv_h{h}", row, 0.125)
        stream(f"qk_h{h}", f"softmax_h{h}", score_bytes, 0.25)
        stream(f"softmax_h{h}", f"pv_h{h}", score_bytes, 0.25)
    for o in range((heads + 3) // 4):
        g = f"out{o}"
        members = range(4 * o, min(heads, 4 * o + 4))
        kernel(f"out_proj_{o}", "compute", weights * len(members), seq * head_dim * head_dim * len(members) / macs, g, 6)
        kernel(f"store_{o}", "dma", row, row * len(members) / 16, g, 7)
        for h in members:
            stream(f"pv_h{h}", f"out_proj_{o}", row, 0.125)
        stream(f"out_proj_{o}", f"store_{o}", row * len(members), 0.25)
    return MappingProblem(kernels, streams)

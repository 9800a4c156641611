"""When kernels run, for the placer's makespan estimate: the graph's schedule cut into phases.

Kernels that run at the same time and sit on one tile take turns on it (its contexts round-robin), so
they take the sum of their times; kernels that run at different times (a layer's projections, its
attention, FFN1, FFN2) can share a tile through its contexts at no cost. The placer tells the two apart
with each kernel's *window*, when it runs in the graph's schedule with a tile of its own (the cost
model's event schedule of the unplaced dataflow graph, ``attnc.cost.events``). The windows' ends cut
the time axis into segments; adjacent short segments are merged until at most ``MAX_PHASES`` remain, so
the CP-SAT model stays small. A kernel's work is spread over the phases its window overlaps, in
proportion. The makespan estimate of a placement is

    sum over phases j of max(length of j, max over tiles t of the work placed on t in j)

-- a phase takes its own length unless a tile has more work in it than that, then it stretches. It is
linear in the placement (one variable per phase), it charges stacking concurrent kernels and not
sharing a tile across phases, and a placement that gives every kernel its own tile meets the schedule.

Links are resources of the same kind: a stream moves its bytes in its *transfer window* -- between its
producer's finish and its consumer's start when the consumer waits for all of it (a one-token stream:
the schedule's gap is that transfer), else while both run -- and a link's work in a phase is the bytes
of the streams routed over it there over its bandwidth. Streams that cross one link at the same time
share it (the simulator's max-min fair flows), so their bursts add up; the same max over links joins
the max over tiles. Rates within capacity are a separate, hard limit; this term is about time.

A problem without windows (hand-made ones in tests and benchmarks) is one phase: every kernel is taken
as running all the time, and the estimate is the busiest tile's summed work.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnc.passes.placement.problem import MappingProblem

#: at most this many phases (each one integer variable and one constraint per tile in the CP-SAT model)
MAX_PHASES = 16


@dataclass(frozen=True)
class Phases:
    """Phase lengths (cycles) and, per kernel (problem order), its work per phase as (phase, cycles)."""

    lengths: tuple[float, ...]
    work: tuple[tuple[tuple[int, float], ...], ...]
    #: per stream (problem order), the bytes it moves in each phase as (phase, bytes)
    transfer: tuple[tuple[tuple[int, float], ...], ...] = ()

    def estimate(self, place: list[int], link_time: dict[tuple[object, int], float] | None = None) -> float:
        """The makespan estimate of a placement (kernel index -> tile); ``link_time``: each link's work
        per phase, (link, phase) -> cycles (``link_work``)."""
        busy: dict[tuple[int, int], float] = {}
        for k, t in enumerate(place):
            for j, w in self.work[k]:
                busy[t, j] = busy.get((t, j), 0.0) + w
        top = list(self.lengths)
        for (_t, j), w in [*busy.items(), *(link_time or {}).items()]:
            top[j] = max(top[j], w)
        return sum(top)

    def link_work(self, routes: list[list], capacity) -> dict[tuple[object, int], float]:
        """Each link's work per phase, (link, phase) -> cycles: the bytes routed over it in the phase over
        its bandwidth. ``routes``: per stream the path of tiles; ``capacity(a, b)``: a link's bytes/cycle."""
        out: dict[tuple[object, int], float] = {}
        for si, path in enumerate(routes):
            for a, b in zip(path, path[1:]):
                cap = capacity(a, b)
                for j, nb in self.transfer[si]:
                    out[(a, b), j] = out.get(((a, b), j), 0.0) + nb / cap
        return out


def phases_of(problem: MappingProblem, max_phases: int = MAX_PHASES) -> Phases:
    """The phases of ``problem``'s schedule (its kernels' windows), and each kernel's work in them."""
    ks = problem.kernels
    if not ks or any(k.window is None for k in ks):
        # no schedule: one phase as long as the longest kernel, every kernel and stream all of it
        return Phases((float(max((k.cycles for k in ks), default=0)),),
                      tuple(((0, float(k.cycles)),) if k.cycles > 0 else () for k in ks),
                      tuple(((0, float(st.bytes)),) if st.bytes > 0 else () for st in problem.streams))
    spans = []
    for k in ks:
        s, f = (float(v) for v in k.window)
        if f <= s:  # an instant in the schedule (a zero-time stage, a tiny transfer): its work just after
            f = s + max(1.0, float(k.cycles))
        spans.append((s, f))
    index = {k.name: i for i, k in enumerate(ks)}
    moves = [_transfer_window(spans[index[st.src]], spans[index[st.dst]]) for st in problem.streams]
    cuts = _merge(sorted({v for span in spans + moves for v in span}), max_phases)
    lengths = tuple(b - a for a, b in zip(cuts, cuts[1:]))
    # a kernel is busy at most all of its window: cycles beyond it (a DMA context's bytes at one channel's
    # share of DRAM, where the schedule ran its transfers on several channels at once) would put a floor
    # under every phase it spans that no placement can lower, and hide there the stacking of other kernels
    # that does stretch the run (two GEMMs that stream into each other, gated one after the other on a tile)
    work = tuple(_spread(min(float(k.cycles), span[1] - span[0]), span, cuts) for k, span in zip(ks, spans))
    transfer = tuple(_spread(float(st.bytes), span, cuts) for st, span in zip(problem.streams, moves))
    return Phases(lengths, work, transfer)


def _transfer_window(src: tuple[float, float], dst: tuple[float, float]) -> tuple[float, float]:
    """When a stream's bytes cross the links: the gap between its producer's finish and its consumer's
    start when there is one (the consumer waited for all of it), else from when both run until the
    producer is done (or, a producer done first, the consumer)."""
    if src[1] < dst[0]:
        return src[1], dst[0]
    a = max(src[0], dst[0])
    b = src[1] if src[1] > a else dst[1]
    return a, max(b, a + 1.0)


def _spread(amount: float, span: tuple[float, float], cuts: list[float]) -> tuple[tuple[int, float], ...]:
    """``amount`` spread over the phases ``span`` overlaps, in proportion."""
    s, f = span
    if amount <= 0:
        return ()
    parts = []
    for j, (a, b) in enumerate(zip(cuts, cuts[1:])):
        overlap = min(f, b) - max(s, a)
        if overlap > 0:
            parts.append((j, amount * overlap / (f - s)))
    return tuple(parts)


def _merge(cuts: list[float], max_phases: int) -> list[float]:
    """Drop cut points until at most ``max_phases`` segments remain: each time the shortest segment
    joins its shorter neighbour (ties: the earlier), so long phases keep their own ends."""
    cuts = list(cuts)
    if len(cuts) < 2:
        return [0.0, 1.0] if not cuts else [cuts[0], cuts[0] + 1.0]
    while len(cuts) - 1 > max(1, max_phases):
        lens = [b - a for a, b in zip(cuts, cuts[1:])]
        i = min(range(len(lens)), key=lambda j: (lens[j], j))
        if i == 0:
            drop = 1
        elif i == len(lens) - 1:
            drop = i
        else:
            drop = i if lens[i - 1] <= lens[i + 1] else i + 1
        del cuts[drop]
    return cuts

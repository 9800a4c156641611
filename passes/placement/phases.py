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

    def estimate(self, place: list[int]) -> float:
        """The makespan estimate of a placement (kernel index -> tile)."""
        busy: dict[tuple[int, int], float] = {}
        for k, t in enumerate(place):
            for j, w in self.work[k]:
                busy[t, j] = busy.get((t, j), 0.0) + w
        top = list(self.lengths)
        for (_t, j), w in busy.items():
            top[j] = max(top[j], w)
        return sum(top)


def phases_of(problem: MappingProblem, max_phases: int = MAX_PHASES) -> Phases:
    """The phases of ``problem``'s schedule (its kernels' windows), and each kernel's work in them."""
    ks = problem.kernels
    if not ks or any(k.window is None for k in ks):
        # no schedule: one phase as long as the longest kernel, every kernel all of it
        return Phases((float(max((k.cycles for k in ks), default=0)),),
                      tuple(((0, float(k.cycles)),) if k.cycles > 0 else () for k in ks))
    spans = []
    for k in ks:
        s, f = (float(v) for v in k.window)
        if f <= s:  # an instant in the schedule (a zero-time stage, a tiny transfer): its work just after
            f = s + max(1.0, float(k.cycles))
        spans.append((s, f))
    cuts = _merge(sorted({v for span in spans for v in span}), max_phases)
    lengths = tuple(b - a for a, b in zip(cuts, cuts[1:]))
    work = []
    for k, (s, f) in zip(ks, spans):
        parts = []
        for j, (a, b) in enumerate(zip(cuts, cuts[1:])):
            overlap = min(f, b) - max(s, a)
            if overlap > 0 and k.cycles > 0:
                parts.append((j, k.cycles * overlap / (f - s)))
        work.append(tuple(parts))
    return Phases(lengths, tuple(work))


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

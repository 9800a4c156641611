"""A tile's SRAM when kernels have SRAM phases, for the placers and the report.

A kernel of SRAM phase 0 holds its buffers for the whole run; kernels of different phases p >= 1 never hold
theirs at the same time (the hardware runs a tile's phases one after another), so they reuse the same
addresses. A tile therefore needs

    (its phase-0 bytes) + max over p >= 1 of (its phase-p bytes)

and fits when that is within its SRAM: for every p >= 1, phase 0 plus phase p fit. With phase 0 only this is
the plain sum. ``attnc.passes.placement.problem.validate`` checks the same rule with code of its own.
"""

from __future__ import annotations

from collections.abc import Iterable


def sram_need(buffers: Iterable[tuple[int, int]]) -> int:
    """SRAM bytes a tile needs for kernels given as (buffer bytes, SRAM phase)."""
    resident, phased = 0, {}
    for size, phase in buffers:
        if phase == 0:
            resident += size
        else:
            phased[phase] = phased.get(phase, 0) + size
    return resident + max(phased.values(), default=0)


class SramUse:
    """Per tile, the bytes its kernels hold by SRAM phase, updated as kernels come and go, and whether a kernel
    still fits. ``sizes`` and ``phases``: per kernel index; ``caps``: per tile index. Without phased kernels
    it is one sum per tile, as fast as counting bytes."""

    def __init__(self, caps: list[int], sizes: list[int], phases: list[int]) -> None:
        self.cap, self.size, self.phase = caps, sizes, phases
        self.resident = [0] * len(caps)
        # per tile: phase p >= 1 -> bytes (None: no kernel has a phase, the resident sums say everything)
        self.phased: list[dict[int, int]] | None = [{} for _ in caps] if any(phases) else None

    @classmethod
    def of(cls, caps: list[int], kernels, place: list[int] | None = None) -> SramUse:
        """The use of ``kernels`` (``KernelSpec``s) placed as ``place`` says (kernel -> tile; -1: not placed)."""
        use = cls(caps, [k.buffer_bytes for k in kernels], [k.phase for k in kernels])
        for k, t in enumerate(place or []):
            if t >= 0:
                use.add(t, k)
        return use

    def need(self, t: int) -> int:
        """The bytes tile ``t`` needs: resident plus its largest phase."""
        top = max(self.phased[t].values(), default=0) if self.phased is not None else 0
        return self.resident[t] + top

    def add(self, t: int, k: int, sign: int = 1) -> None:
        p = self.phase[k]
        if p == 0:
            self.resident[t] += sign * self.size[k]
        else:
            room = self.phased[t]
            room[p] = room.get(p, 0) + sign * self.size[k]
            if room[p] == 0:
                del room[p]

    def fits(self, t: int, k: int) -> bool:
        """Whether kernel ``k`` fits on tile ``t`` beside what is there."""
        p = self.phase[k]
        if p == 0:
            return self.need(t) + self.size[k] <= self.cap[t]
        return self.resident[t] + self.phased[t].get(p, 0) + self.size[k] <= self.cap[t]

    def left(self, t: int, k: int) -> int:
        """The bytes tile ``t`` would have left were ``k`` added (negative: it does not fit)."""
        return self.cap[t] - self._need_with(t, ((k, 1),))

    def fits_exchange(self, t: int, out: int, inn: int) -> bool:
        """Whether tile ``t`` fits once kernel ``out`` leaves it and ``inn`` joins it (a swap's one side)."""
        if self.phased is None:
            return self.resident[t] - self.size[out] + self.size[inn] <= self.cap[t]
        return self._need_with(t, ((out, -1), (inn, 1))) <= self.cap[t]

    def _need_with(self, t: int, changes) -> int:
        resident = self.resident[t]
        if self.phased is None:
            return resident + sum(sign * self.size[k] for k, sign in changes)
        phased = dict(self.phased[t])
        for k, sign in changes:
            p = self.phase[k]
            if p == 0:
                resident += sign * self.size[k]
            else:
                phased[p] = phased.get(p, 0) + sign * self.size[k]
        return resident + max(phased.values(), default=0)

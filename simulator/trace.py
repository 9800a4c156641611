"""Chrome trace-event JSON of a timing run: one track per tile (a track per slot on DMA tiles, which run
several transfers at once) and one per link. Perfetto (ui.perfetto.dev) and chrome://tracing open it.

Timestamps are microseconds at the array clock, so the trace reads in real time; each slice also carries
its cycles in ``args``.
"""

from __future__ import annotations

import json
import os

from attnc.errors import AttncError
from attnc.simulator.stats import Stats

TILES_PID = 1
LINKS_PID = 2


def trace_events(stats: Stats) -> list[dict]:
    us = 1.0 / stats.clock_mhz  # microseconds per cycle
    events: list[dict] = [
        {"ph": "M", "pid": TILES_PID, "name": "process_name", "args": {"name": f"tiles ({stats.arch})"}},
        {"ph": "M", "pid": LINKS_PID, "name": "process_name", "args": {"name": "links"}},
    ]
    tid = 0
    for t in stats.tiles:
        slots = sorted({s[0] for s in t.slices}) or [0]
        for slot in slots:
            tid += 1
            label = f"tile ({t.x},{t.y}) {t.kind}" + (f" ch{slot}" if len(slots) > 1 else "")
            events.append({"ph": "M", "pid": TILES_PID, "tid": tid, "name": "thread_name", "args": {"name": label}})
            events.append(
                {"ph": "M", "pid": TILES_PID, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}}
            )
            for s, name, start, end in t.slices:
                if s == slot:
                    events.append({
                        "ph": "X", "pid": TILES_PID, "tid": tid, "name": name, "cat": t.kind,
                        "ts": start * us, "dur": (end - start) * us,
                        "args": {"start_cycle": start, "cycles": end - start},
                    })  # fmt: skip
    for i, lk in enumerate(stats.links, start=1):
        label = f"link ({lk.src[0]},{lk.src[1]})->({lk.dst[0]},{lk.dst[1]})"
        events.append({"ph": "M", "pid": LINKS_PID, "tid": i, "name": "thread_name", "args": {"name": label}})
        for start, end in lk.intervals:
            events.append({
                "ph": "X", "pid": LINKS_PID, "tid": i, "name": "busy", "cat": "link",
                "ts": start * us, "dur": (end - start) * us,
                "args": {"streams": lk.streams, "start_cycle": start, "cycles": end - start},
            })  # fmt: skip
    return events


def write_trace(stats: Stats, path: str | os.PathLike[str]) -> None:
    """Write ``stats``' timeline as Chrome trace-event JSON to ``path``."""
    doc = {"traceEvents": trace_events(stats), "displayTimeUnit": "ns",
           "otherData": {"arch": stats.arch, "cycles": stats.cycles, "clock_mhz": stats.clock_mhz}}  # fmt: skip
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    except OSError as e:
        raise AttncError(f"{path}: cannot write the trace: {e.strerror or e}") from None

"""The timing model: a discrete-event simulation of the array, from the bitstream alone.

``simulate(bitstream)`` never touches tensor values (it is the timing-only mode, and the functional run
reports the same figures because it calls this). The model, in short (docs/simulator.md has the whole):

* each context's work comes from its body: MACs of matmul/contract/attention on the MAC array
  (``batch * ceil(M/rows) * ceil(N/cols) * K`` cycles plus a pipeline fill of ``rows + cols`` per
  kernel), elementwise and special-function work on ``vector_lanes`` lanes; data-movement ops
  (reshape, slice, ...) are buffer addressing and cost nothing;
* a context runs as a sequence of segments (its loop steps, grouped to at most ``MAX_SEGMENTS``);
  contexts on one tile time-multiplex it, round-robin between ready ones at segment granularity
  (a DMA tile runs ``dma_channels`` at once);
* an output port's ``tokens`` are emitted as the segments complete (a reducing context's as its result
  blocks complete: ``REDUCTION_LOOPS``); a consumer needs its share of an input's tokens before each
  segment (all of them first when the input is a weight);
* tokens cross their route's links as fluid flows: each link's bandwidth is shared max-min fairly
  between the flows on it, plus ``hop_latency`` per hop; DMA transfers share the DRAM bandwidth the
  same way after ``latency_cycles``;
* SRAM phases: a context of phase p >= 1 starts once its tile's contexts of phases 1..p-1 have finished,
  and nothing streams into a context before it has started that way (a spill stores what arrives and
  reads it back later).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from attnc.arch import Arch, parse_arch
from attnc.backend.bitstream import Bitstream, KernelConfig
from attnc.errors import AttncError
from attnc.simulator.io import store_descriptors
from attnc.simulator.stats import KernelStats, LinkStats, Stats, TileStats
from attnc.simulator.work import context_cycles, dtype_bytes, kernel_work, prod_dims

#: loop steps are grouped into at most this many segments per context: the round-robin and the
#: token emission need no finer grain, and it bounds the events of long sequences
MAX_SEGMENTS = 64
#: ... unless the context streams more than its buffers hold: then finer, so that a segment's share of what
#: it streams fits a quarter of its buffers (double-buffered, for each of two operands), up to this many
MAX_STREAMED_SEGMENTS = 16384
#: a DMA context runs a segment per token up to this many (beyond, a segment moves several: a token count no
#: compiled stream reaches, which bounds the events of a mangled one)
MAX_DMA_SEGMENTS = 16384
#: an any-order store (``_Kernel.any_order``) runs a segment per token it writes up to this many (a GEMM of
#: 2048x3072 f16 outputs reaches 24,576 tokens of 512 bytes into a 64 KiB store)
MAX_STORE_SEGMENTS = 1 << 16
#: a context is cut finer than MAX_STREAMED_SEGMENTS or MAX_DMA_SEGMENTS where a segment's share of its streams
#: would not fit its declared buffers (``_fine_segments``), up to this many: the unfused baseline on edge at seq
#: 4096 needs 26,496; at batch 64 and seq 2048 its spills would need 393,216 each (11.3M segments in all, 16x the
#: simulation), and keep the caps' grain (reported)
MAX_FINE_SEGMENTS = 1 << 16
#: the progress callback is called every this many events
PROGRESS_EVERY = 2000

DMA_KINDS = frozenset({"dma_load", "dma_store", "dma_spill"})
#: whether a configuration that holds more than its buffers or its tiles can is refused (``overflow_error``, the
#: default: the hardware could not run it) rather than timed with a warning; False is a measuring mode for tests
#: and probes that want to see how much an overflowing configuration held (docs/simulator.md, "The checks")
OVERFLOW_IS_ERROR = True


def overflow_error(lines: list[str]) -> AttncError:
    """The error for a configuration the hardware cannot hold: each context whose declared buffers cannot hold
    one segment's operands, and each tile whose contexts' input buffers held more than its SRAM (one line each,
    as the warnings give them)."""
    n = len(lines)
    return AttncError(f"simulate: TILES: the configuration holds more than the array's buffers can ({n} problem"
                      f"{'s' if n > 1 else ''}): " + "; ".join(lines))


# ---------------------------------------------------------------------------
# fluid flows: links and DRAM shared max-min fairly


@dataclass
class _Flow:
    remaining: float
    resources: tuple
    on_done: Callable[[float], None]
    rate: float = 0.0
    version: int = 0
    key: object = None


class _Fluid:
    """Flows over capacity-limited resources; rates are max-min fair and change only when a flow starts
    or ends, so each flow's completion is one (re)scheduled event."""

    def __init__(self, sim: _Sim, capacity: dict) -> None:
        self.sim = sim
        self.capacity = capacity
        self.flows: dict[int, _Flow] = {}
        self.last = 0.0
        self.next_id = 0
        self.users: dict = {r: 0 for r in capacity}
        # ties between equally constrained resources go to the first by name: ranked once, not per comparison
        self.rank: dict = {r: i for i, r in enumerate(sorted(capacity, key=str))}
        self.on: dict = {r: set() for r in capacity}  # resource -> the flows using it
        self.queues: dict = {}  # key -> transfers waiting behind the key's flow
        self.busy_since: dict = {}

    def add(self, nbytes: float, resources: tuple, on_done: Callable[[float], None], key=None) -> None:
        """A transfer of ``nbytes`` over ``resources``. Transfers with the same ``key`` (the tokens of one
        stream on one route) go in order, one after the other, as packets of a stream do."""
        now = self.sim.now
        if nbytes <= 0 or not resources:
            on_done(now)
            return
        if key is not None:
            queue = self.queues.get(key)
            if queue is not None:
                queue.append((float(nbytes), resources, on_done))
                return
            self.queues[key] = []
        self._advance(now)
        self._start(now, float(nbytes), resources, on_done, key)
        self._rebalance(now, resources)

    def _start(self, now: float, nbytes: float, resources: tuple, on_done, key) -> None:
        fid = self.next_id
        self.next_id += 1
        self.flows[fid] = _Flow(nbytes, resources, on_done, key=key)
        for r in resources:
            if self.users[r] == 0 and r not in self.busy_since:
                self.busy_since[r] = now
            self.users[r] += 1
            self.on[r].add(fid)

    def done(self, fid: int, version: int) -> None:
        flow = self.flows.get(fid)
        if flow is None or flow.version != version:
            return  # rescheduled since
        now = self.sim.now
        self._advance(now)
        del self.flows[fid]
        nxt = None
        if flow.key is not None:
            queue = self.queues[flow.key]
            if queue:
                nxt = queue.pop(0)
            else:
                del self.queues[flow.key]
        for r in flow.resources:
            self.users[r] -= 1
            self.on[r].discard(fid)
            if self.users[r] == 0 and nxt is None:
                self.sim.resource_idle(r, self.busy_since.pop(r), now)
        if nxt is not None:  # the next transfer of the stream takes the same resources at once
            self._start(now, nxt[0], nxt[1], nxt[2], flow.key)
        self._rebalance(now, flow.resources)
        flow.on_done(now)

    def _advance(self, now: float) -> None:
        dt = now - self.last
        if dt > 0:
            for f in self.flows.values():
                f.remaining -= f.rate * dt
        self.last = now

    def _parts(self, changed: tuple) -> tuple[dict[int, object], list]:
        """The flows connected to the ``changed`` resources through shared resources (only their rates can
        change), each mapped to the first changed resource whose part it is in, and the resources they use."""
        part: dict[int, object] = {}
        seen: set = set()
        used: list = []
        for r0 in changed:
            if r0 in seen:
                continue
            seen.add(r0)
            todo = [r0]
            while todo:
                r = todo.pop()
                if self.on[r]:
                    used.append(r)
                for fid in self.on[r]:
                    if fid not in part:
                        part[fid] = r0
                        for q in self.flows[fid].resources:
                            if q not in seen:
                                seen.add(q)
                                todo.append(q)
        return part, used

    def _rebalance(self, now: float, changed: tuple) -> None:
        # progressive filling: the most constrained resource fixes the rate of its flows, repeat. Max-min
        # fairness splits over connected components, so only the component of the changed resources is redone
        # (its bottlenecks come in the same order as in a global pass, so the rates are the same numbers).
        # Resources wait in a heap keyed by their fair share (left / unfixed users, ties by rank); a key that
        # moved since it was pushed is pushed again, so each round costs a log, not a pass over every flow.
        # A component is closed over its resources, so a resource's users are all of ``on[r]``; the flows a
        # round fixes all take the same share, so the order they are taken in does not change any number.
        part, used = self._parts(changed)
        flows, rank, on = self.flows, self.rank, self.on
        left = {r: self.capacity[r] for r in used}
        count = {r: len(on[r]) for r in used}
        heap = [(left[r] / count[r], rank[r], r) for r in used]
        heapq.heapify(heap)
        rates: dict[int, float] = {}
        while heap:
            key, rk, r = heapq.heappop(heap)
            if count[r] == 0:
                continue
            if key != left[r] / count[r]:
                heapq.heappush(heap, (left[r] / count[r], rk, r))
                continue
            share = max(key, 0.0)
            touched = set()
            for fid in on[r]:
                if fid in rates:
                    continue
                rates[fid] = share
                for q in flows[fid].resources:
                    left[q] -= share
                    count[q] -= 1
                    touched.add(q)
            for q in touched:
                if count[q] > 0:
                    heapq.heappush(heap, (left[q] / count[q], rank[q], q))
        # Only the first flow to finish in each part the change touched needs an event: when it fires, its part
        # is rebalanced and the next one gets its event (rescheduling every flow whose rate moved would cost an
        # event per flow per change, nearly all of them stale by the time they come up).
        first: dict = {}
        for fid in sorted(part):
            f = flows[fid]
            if rates[fid] != f.rate or f.version == 0:
                f.rate = rates[fid]
                f.version += 1
            eta = now + max(f.remaining, 0.0) / f.rate if f.rate > 0 else math.inf
            p = part[fid]
            if eta < first.get(p, (math.inf, 0))[0]:
                first[p] = (eta, fid)
        for eta, fid in first.values():
            self.sim.push(eta, self.done, fid, flows[fid].version)


# ---------------------------------------------------------------------------
# the simulation


@dataclass
class _InPort:
    stream: int
    tokens: int
    broadcast: bool
    received: int = 0
    producer: _Kernel | None = None  # None: a DRAM-side stream, not held on chip
    token_bytes: float = 0.0  # bytes one token puts in the consumer's buffer
    consumed: int = 0  # tokens released by finished segments
    forwarded: int = 0  # tokens passed on through the context's forwarded copies (as they started arriving)

    #: the share of the input read once segment i has ended, when the context's loops say otherwise than
    #: "evenly over the segments" (a ("repeat", P) loop reads its input in the first pass only)
    share: Callable[[int], tuple[int, int]] | None = None
    #: read in the first pass and kept to the end (a GEMM part's weight block, streamed in k-chunks)
    held: bool = False
    #: read a token as each result block's reduction ends (``_read_at_block_ends``): a ``share`` still in step
    #: with the producer's progress, as an evenly read stream is
    in_step: bool = False

    def need(self, segment: int, segments: int) -> int:
        """Tokens segment ``segment`` (0-based) of ``segments`` needs to have arrived: all of a weight's,
        else its share."""
        if self.broadcast:
            return self.tokens
        if self.share is not None:
            num, den = self.share(segment)
            return -(-num * self.tokens // den)
        return -(-(segment + 1) * self.tokens // segments)

    def released(self, segment: int, segments: int) -> int:
        """Tokens no segment after ``segment`` reads any more: segment i works on the tokens between i·T/S
        and (i+1)·T/S, so a token stays until the last segment that works on it ends (a one-token input, the
        whole tensor, until the context's last segment; a weight likewise)."""
        if self.broadcast or self.held:
            return self.tokens if segment + 1 >= segments else 0
        if self.share is not None:
            return self.need(segment, segments)
        return self.tokens if segment + 1 >= segments else (segment + 1) * self.tokens // segments


def _next_block(ports: list[_InPort]) -> _InPort | None:
    """The port whose token an any-order store writes next: of those with a token arrived and not yet written,
    the one with the most waiting (blocks leave about in the order they came), or None."""
    best, most = None, 0
    for p in ports:
        if p.producer is not None and p.received - p.consumed > most:
            best, most = p, p.received - p.consumed
    return best


#: per kind, the loop whose steps reduce into one result block (innermost: a block is final when it ends)
REDUCTION_LOOPS = {"gemm": "k", "attention": "key_block"}


def _result_blocks(cfg: KernelConfig, steps: int) -> int:
    """The result blocks of a context whose innermost loop is its kind's reduction (``REDUCTION_LOOPS``) over
    more than one step: its steps over that loop's trips; 0 for any other context (its outputs are final as
    its steps go)."""
    if not cfg.loops or REDUCTION_LOOPS.get(cfg.kind) != cfg.loops[-1][0] or cfg.loops[-1][1] <= 1:
        return 0
    return max(1, steps // cfg.loops[-1][1])


def _constant_load(src: KernelConfig) -> bool:
    """Whether ``src`` is a DMA load of a constant (a weight) read once (no ``repeat`` loop)."""
    return (not src.inputs and any(i.opcode == "constant" for i in src.body)
            and prod_dims(t for name, t in src.loops if name == "repeat") <= 1)  # fmt: skip


def _whole(p: _InPort) -> bool:
    """Whether a context holds all of an input at once: a weight (needed whole, or streamed in and kept), or a
    one-token stream."""
    return p.broadcast or p.held or p.tokens <= 1


def _whole_bytes(k: _Kernel) -> float:
    """Bytes of the on-chip inputs ``k`` holds whole (weights, one-token streams) until its last segment."""
    return sum(q.tokens * q.token_bytes for q in k.inputs if q.producer is not None and _whole(q))


def _span(p: _InPort, segments: int) -> int:
    """The most tokens of ``p`` one of the ``segments`` segments works on at once: what it needs beyond what
    the segments before it have released (the least credit that lets it run)."""
    needs = [p.need(i, segments) for i in range(segments)]
    freed = [0] + [p.released(i, segments) for i in range(segments - 1)]
    return max(max(b - a for a, b in zip(freed, needs)), 1)


def _repeat_share(loops: list[tuple[str, int]], segments: int) -> Callable[[int], tuple[int, int]]:
    """For loops ``outer..., ("repeat", P), inner...``: the share of the input read by the end of a segment.
    The first of the P passes reads it, the others stream what is held (a memory tile re-sending K/V)."""
    names = [n for n, _ in loops]
    j = names.index("repeat")
    outer, passes, inner = prod_dims(t for _, t in loops[:j]), max(loops[j][1], 1), prod_dims(t for _, t in loops[j + 1 :])
    steps = outer * passes * inner

    def share(i: int) -> tuple[int, int]:
        done = min(steps, -(-(i + 1) * steps // segments))  # steps finished when segment i ends
        o, rem = divmod(done, passes * inner)
        return (o * inner + min(rem, inner), max(outer * inner, 1))

    return share


@dataclass
class _Throttle:
    """Back-pressure of a producer on one consumer port (its own stream's, or one a consumer's forwarded copy
    of it reaches): at most ``depth`` of the port's tokens ahead of its consumption."""

    consumer: _Kernel
    port: _InPort
    depth: int
    stream: int  # the producer's output stream
    tokens: int  # the producer's tokens of the stream (its emission, scaled to the port's tokens)

    def credit(self) -> int:
        """The producer's tokens of the stream it may have sent so far: the port's released tokens plus the
        depth, in the producer's tokens."""
        room = self.port.consumed + self.depth
        return self.tokens if room >= self.port.tokens else room * self.tokens // self.port.tokens


@dataclass
class _Kernel:
    cfg: KernelConfig
    tile: _Tile
    stats: KernelStats
    segments: int
    durations: Callable[[int], int]
    is_dma: bool = False
    dma_bytes: int = 0
    inputs: list[_InPort] = field(default_factory=list)
    outputs: list[tuple[int, int, int]] = field(default_factory=list)  # (stream, tokens, bytes of the whole tensor)
    done: int = 0  # segments completed
    emitted: dict[int, int] = field(default_factory=dict)  # stream -> tokens emitted
    running: bool = False
    held: float = 0.0  # bytes in the input buffers: arrived, not yet released by a finished segment
    throttles: list[_Throttle] = field(default_factory=list)  # a throttled producer: its consumers' ports
    throttlers: list[_Kernel] = field(default_factory=list)  # the producers this context throttles
    credits: dict[int, list[_Throttle]] = field(default_factory=dict)  # output stream -> its throttles
    holds: list[tuple[_Kernel, int]] = field(default_factory=list)  # (producer, its stream) this context holds back
    #: outputs that are a copy of an input (K/V forwarded along a chain of fused kernels): input stream ->
    #: [output stream]; they leave as the input arrives, not as the context computes
    forwards: dict[int, list[int]] = field(default_factory=dict)
    made_of: dict[int, tuple[int, ...]] = field(default_factory=dict)  # a forwarded output -> the inputs it copies
    # SRAM phases (docs/simulator.md, "SRAM phases")
    phase: int = 0
    gates: int = 0  # contexts of lower nonzero phases on the tile still to finish: gated while > 0
    opens: list[_Kernel] = field(default_factory=list)  # the contexts this one's finishing helps open
    closed: int = 0  # gated contexts among those its outputs stream to: it waits while > 0
    watch: list[_Kernel] = field(default_factory=list)  # the gated contexts among them, as built
    waiters: list[_Kernel] = field(default_factory=list)  # the contexts that wait for this one to open
    #: a spill whose consumers start gated runs its two sides apart: the write segments done (the read
    #: side's are ``done``), and the DRAM bytes of each side; None: both sides in each segment, as any DMA
    written: int | None = None
    spill_bytes: tuple[int, int] = (0, 0)  # (read, written)
    #: a DMA store of several streamed inputs: each descriptor writes its block to its own DRAM address, so a
    #: segment writes whatever tokens have arrived, from any port, instead of its share of every port
    any_order: bool = False
    #: the result blocks a context that reduces finishes, each at the end of its reduction loop (a GEMM's
    #: output sub-block after its k-chunks, an attention row block after its key blocks); 0: its outputs are
    #: final step by step
    results: int = 0
    #: of a reducing context, the outputs that do not come out of its reduction (K/V it assembles from the
    #: parts a spill brings and passes on to its group): final step by step, not at a result block's end
    unreduced: frozenset[int] = frozenset()

    def ready(self) -> bool:
        if self.running or self.done >= self.segments or self.gates:
            return False
        if self.written is not None:
            return self.spill_side() is not None
        if self.closed:  # no data goes into a gated context's buffers
            return False
        i = self.done
        if self.any_order:
            # a store writes whichever block has arrived, a token a segment, from any of its ports
            return _next_block(self.inputs) is not None and not self.pending()
        for p in self.inputs:
            if p.received < p.need(i, self.segments):
                return False
        return not self.pending()

    def target(self, stream: int, tokens: int) -> int:
        """Tokens of an output the finished segments have produced: of a reducing context, those of its result
        blocks whose reduction has ended (a partial sum is not a result, whatever tokens it is cut into)."""
        if self.done >= self.segments:
            return tokens
        if self.results and stream not in self.unreduced:
            return self.done * self.results // self.segments * tokens // self.results
        return self.done * tokens // self.segments

    def pending(self) -> bool:
        """Whether a finished segment's output still waits for room in a consumer's buffers: its output buffer
        is full, so it does not start another segment (back-pressure). A reducing context's accumulators are
        double-buffered: one finished result block may drain while it computes the next."""
        return any(self.target(th.stream, th.tokens) - self.emitted[th.stream] > self._draining(th.stream, th.tokens)
                   for th in self.throttles)

    def _draining(self, stream: int, tokens: int) -> int:
        """Tokens of an output that may wait while the context computes on: one result block's."""
        return -(-tokens // self.results) if self.results and stream not in self.unreduced else 0

    def spill_side(self) -> str | None:
        """The side a split spill runs next: the read-back of what is written once its consumers are open,
        else the store of what has arrived (it waits for no consumer)."""
        if self.done < self.written and not self.closed and not self.pending():
            return "read"
        if self.written < self.segments and all(p.received >= p.need(self.written, self.segments) for p in self.inputs):
            return "write"
        return None


@dataclass
class _Tile:
    pos: tuple[int, int]
    slots: int
    stats: TileStats
    kernels: list[_Kernel] = field(default_factory=list)
    held: float = 0.0  # the contexts' input buffers, summed
    running: int = 0
    next_rr: int = 0
    free_slots: list[int] = field(default_factory=list)


class _Sim:
    def __init__(self, bs: Bitstream, arch: Arch, progress) -> None:
        self.bs, self.arch, self.progress = bs, arch, progress
        self.now = 0.0
        self.heap: list = []
        self.seq = 0
        self.events = 0
        self.stats = Stats(
            arch=arch.name, clock_mhz=arch.clock_mhz, total_macs_per_cycle=arch.total_macs_per_cycle,
            dram_bytes_per_cycle=arch.dram.bytes_per_cycle, energy_table=dict(arch.energy_pj),
        )  # fmt: skip
        self.links: dict[tuple, LinkStats] = {}
        capacity: dict = {"dram": float(arch.dram.bytes_per_cycle)}
        for t in arch.tiles:
            # a DMA context stages what it moves in its tile's buffer (written once, read once): the banks' ports
            # bound it (a tile without SRAM streams straight through)
            if t.sram_bytes_per_cycle > 0:
                capacity[("sram", t.pos)] = t.sram_bytes_per_cycle / 2
        for t in arch.tiles:
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                nxt = (t.x + dx, t.y + dy)
                if 0 <= nxt[0] < arch.width and 0 <= nxt[1] < arch.height:
                    capacity[(t.pos, nxt)] = float(arch.noc.link_bytes_per_cycle)
        self.fluid = _Fluid(self, capacity)
        self.stores = store_descriptors(bs)  # kernel id -> the store descriptors a DMA context claims
        self.kernels: dict[int, _Kernel] = {}
        self.tiles: list[_Tile] = []
        self.routes: dict[tuple[int, int], list] = {}  # (stream, src kernel) -> routes
        self.consumers: dict[int, list[tuple[_Kernel, _InPort]]] = {}
        self.total_segments = 0
        self.done_segments = 0
        self._depth_memo: dict[int, dict[int, int]] = {}
        self._build()

    # -- setup ------------------------------------------------------------

    def _build(self) -> None:
        bs, arch = self.bs, self.arch
        producers: dict[int, KernelConfig] = {}
        for tc in bs.tiles:
            for cfg in tc.contexts:
                for p in cfg.outputs:
                    producers.setdefault(p.stream, cfg)
        # bytes each (stream, consumer kernel) route carries, for ``_fine_segments``
        self._route_bytes: dict[tuple[int, int], int] = {}
        for r in bs.routes:
            self._route_bytes[r.stream, r.dst_kernel] = self._route_bytes.get((r.stream, r.dst_kernel), 0) + r.bytes
        seen: set[tuple[int, int]] = set()
        for tc in bs.tiles:
            where = f"tile ({tc.x},{tc.y})"
            if not (0 <= tc.x < arch.width and 0 <= tc.y < arch.height):
                raise AttncError(f"simulate: TILES: {where} is outside the {arch.width}x{arch.height} grid")
            if (tc.x, tc.y) in seen:
                raise AttncError(f"simulate: TILES: {where} is configured twice")
            seen.add((tc.x, tc.y))
            at = arch.tile(tc.x, tc.y)
            if tc.kind != at.kind:
                raise AttncError(
                    f"simulate: TILES: {where} is configured as {tc.kind} but the array has a {at.kind} tile there"
                )
            if len(tc.contexts) > at.contexts:
                raise AttncError(
                    f"simulate: TILES: {where} has {len(tc.contexts)} contexts, the tile holds {at.contexts}"
                )
            ts = TileStats(tc.x, tc.y, at.kind, at.macs_per_cycle, sram_bytes=at.sram_bytes)
            tile = _Tile((tc.x, tc.y), max(at.dma_channels, 1) if at.kind == "dma" else 1, ts)
            tile.free_slots = list(range(tile.slots))
            self.tiles.append(tile)
            self.stats.tiles.append(ts)
            for cfg in tc.contexts:
                if cfg.kernel in self.kernels:
                    raise AttncError(f"simulate: TILES: kernel id {cfg.kernel} appears twice")
                k = self._kernel(cfg, tile, at, producers)
                self.kernels[cfg.kernel] = k
                tile.kernels.append(k)
                ts.kernels.append(cfg.name)
                ts.buffer_bytes += sum(b.size for b in cfg.buffers)
                self.total_segments += k.segments
        for r in bs.routes:
            where = f"simulate: ROUTES: stream {r.stream} ('{r.name}')"
            for kid in (r.src_kernel, r.dst_kernel):
                if kid not in self.kernels:
                    raise AttncError(f"{where}: kernel {kid} is not configured on any tile")
            if not r.hops:
                raise AttncError(f"{where}: the route has no tiles")
            ends = (self.kernels[r.src_kernel].tile.pos, self.kernels[r.dst_kernel].tile.pos)
            if (tuple(r.hops[0]), tuple(r.hops[-1])) != ends:
                raise AttncError(
                    f"{where}: the path {tuple(r.hops[0])} -> {tuple(r.hops[-1])} does not join kernel "
                    f"{r.src_kernel}'s tile {ends[0]} to kernel {r.dst_kernel}'s tile {ends[1]}"
                )
            for a, b in zip(r.hops, r.hops[1:]):
                if (tuple(a), tuple(b)) not in self.fluid.capacity:
                    raise AttncError(f"{where}: hop {tuple(a)} -> {tuple(b)} is not a link of the mesh")
            self.routes.setdefault((r.stream, r.src_kernel), []).append(r)
        by_stream: dict[int, _Kernel] = {}
        for k in self.kernels.values():
            for p in k.cfg.outputs:
                by_stream.setdefault(p.stream, k)
        for k in self.kernels.values():
            for p in k.inputs:
                self.consumers.setdefault(p.stream, []).append((k, p))
                src = by_stream.get(p.stream)
                if src is not None and src is not k:
                    p.producer = src
                    p.token_bytes = self._token_bytes(src, k, p)
        for k in self.kernels.values():
            # a store of several streamed inputs (a GEMM grid's parts) runs a segment per token it writes
            streamed = [p for p in k.inputs if p.producer is not None and not _whole(p)]
            tokens = sum(p.tokens for p in k.inputs)
            if k.cfg.kind == "dma_store" and len(streamed) > 1 and len(streamed) == len(k.inputs) \
                    and tokens <= MAX_STORE_SEGMENTS:
                k.any_order = True
                self.total_segments += tokens - k.segments
                k.segments = k.stats.segments = tokens
        self.stats.kernels = [k.stats for k in self.kernels.values()]
        for tile in self.tiles:
            self._sram(tile)
        self._phases()
        self._banks()
        self._back_pressure()
        #: contexts whose buffers cannot hold one segment's operands, then tiles that held more than their SRAM
        self.too_much: list[str] = [line for k in self.kernels.values() if (line := self._too_small(k)) is not None]

    def _sram(self, tile: _Tile) -> None:
        """A configuration whose buffers the tile cannot hold cannot be loaded: refused, not timed.

        Resident (phase-0) buffers are held for the whole run; a phase p >= 1 holds its buffers only while it
        runs, so the tile needs its resident bytes plus those of its largest phase, every buffer lies inside
        its SRAM, and two buffers share addresses only when they belong to contexts of different nonzero
        phases (which never hold them at the same time)."""
        ts, (x, y) = tile.stats, tile.pos
        where = f"simulate: TILES: tile ({x},{y})"
        per_phase: dict[int, list[_Kernel]] = {}
        for k in tile.kernels:
            per_phase.setdefault(k.phase, []).append(k)

        def size(ks: list[_Kernel]) -> int:
            return sum(b.size for k in ks for b in k.cfg.buffers)

        resident = size(per_phase.get(0, []))
        peak = max((p for p in per_phase if p), key=lambda p: (size(per_phase[p]), -p), default=None)
        need = resident + (size(per_phase[peak]) if peak is not None else 0)
        if need > ts.sram_bytes:
            detail = ""
            if peak is not None:
                names = ", ".join(f"{k.cfg.kernel} '{k.cfg.name}'" for k in per_phase[peak])
                detail = f" ({resident} resident + {need - resident} in phase {peak}: kernels {names})"
            raise AttncError(f"{where}: its contexts' buffers need {need} bytes{detail}, the tile has {ts.sram_bytes}")
        spans = []
        for k in tile.kernels:
            for b in k.cfg.buffers:
                what = (f"buffer '{b.name}' [{b.address}, {b.address + b.size}) of kernel {k.cfg.kernel} "
                        f"'{k.cfg.name}' (phase {k.phase})")  # fmt: skip
                if b.address < 0 or b.address + b.size > ts.sram_bytes:
                    raise AttncError(f"{where}: {what} lies outside the tile's SRAM [0, {ts.sram_bytes})")
                if b.size > 0:
                    spans.append((b.address, b.address + b.size, k, what))
        spans.sort(key=lambda s: (s[0], s[1]))
        for i, (lo, hi, k, what) in enumerate(spans):
            for lo2, _, k2, what2 in spans[i + 1 :]:
                if lo2 >= hi:
                    break
                if k is k2 or k.phase == k2.phase or not k.phase or not k2.phase:
                    raise AttncError(f"{where}: {what} overlaps {what2}: only contexts of different nonzero "
                                     "phases may share SRAM addresses")  # fmt: skip

    def _phases(self) -> None:
        """The streams a phase allows, and the gates (a phase p >= 1 opens once its tile's phases 1..p-1 have
        finished) and back-pressure (nothing streams into a gated context) precomputed per context, so that
        ``ready`` only reads two counters."""
        kernels = list(self.kernels.values())
        for k in kernels:
            if not k.phase:
                continue
            for p in k.inputs:
                src = p.producer
                if src is not None and src.phase != k.phase and src.cfg.kind not in ("dma_load", "dma_spill"):
                    raise AttncError(
                        f"simulate: stream {p.stream} from kernel {src.cfg.kernel} '{src.cfg.name}' (phase "
                        f"{src.phase}) into kernel {k.cfg.kernel} '{k.cfg.name}' (phase {k.phase}): data crossing "
                        "phases goes through DRAM (a dma_spill), not a direct stream"
                    )
        for k in kernels:
            if k.cfg.kind not in ("dma_load", "dma_spill"):
                continue
            phases: dict[int, _Kernel] = {}
            for stream, _, _ in k.outputs:
                for c, p in self.consumers.get(stream, []):
                    if c is not k and p.producer is k and c.phase:
                        phases.setdefault(c.phase, c)
            if len(phases) > 1:
                names = ", ".join(f"kernel {c.cfg.kernel} '{c.cfg.name}' (phase {q})"
                                  for q, c in sorted(phases.items()))  # fmt: skip
                raise AttncError(
                    f"simulate: {k.cfg.kind} kernel {k.cfg.kernel} '{k.cfg.name}' feeds contexts of different phases "
                    f"({names}): a DMA context serves one phase (one context per consuming phase)"
                )
        for tile in self.tiles:
            for k in tile.kernels:
                for g in tile.kernels:
                    if k.phase and 1 <= g.phase < k.phase:
                        k.gates += 1
                        g.opens.append(k)
        if not any(k.gates for k in kernels):
            return  # nothing is ever gated: no back-pressure to set up
        for k in kernels:
            k.watch = [c for c in self._downstream(k) if c.gates]
            k.closed = len(k.watch)
            for c in k.watch:
                c.waiters.append(k)
            if k.cfg.kind == "dma_spill" and k.closed:
                # its store runs as its inputs arrive; only the read-back waits for the consumers
                k.written = 0
                self.total_segments += k.segments

    def _downstream(self, k: _Kernel) -> list[_Kernel]:
        """The contexts ``k``'s outputs put data into: its streams' consumers and, through a consumer's
        forwarded copies (which leave as they arrive), theirs."""
        out: list[_Kernel] = []
        seen = {k.cfg.kernel}
        todo = [(k, s) for s, _, _ in k.outputs]
        visited = {(src.cfg.kernel, s) for src, s in todo}
        while todo:
            src, stream = todo.pop()
            for c, _ in self.consumers.get(stream, []):
                if c is src:
                    continue
                if c.cfg.kernel not in seen:
                    seen.add(c.cfg.kernel)
                    out.append(c)
                for o in c.forwards.get(stream, []):
                    if (c.cfg.kernel, o) not in visited:
                        visited.add((c.cfg.kernel, o))
                        todo.append((c, o))
        return out

    def _token_bytes(self, src: _Kernel, dst: _Kernel, port: _InPort) -> float:
        """Bytes one token of ``port`` brings: what its route carries (the consumer's slice, every pass of
        a repeated load) over the port's tokens, or the producer's bytes per token without a route."""
        for r in self.routes.get((port.stream, src.cfg.kernel), []):
            if r.dst_kernel == dst.cfg.kernel and r.bytes:
                return r.bytes / port.tokens
        for stream, tokens, nbytes in src.outputs:
            if stream == port.stream:
                return nbytes / tokens
        return 0.0

    def _banks(self) -> None:
        """A buffer is interleaved over the first ``banks`` banks of its tile (the bitstream's field): its bytes
        are counted against the tile's SRAM, and its banks must exist. A buffer naming more banks than its tile
        has, or none, is refused: the configuration could not be loaded."""
        for k in self.kernels.values():
            at = self.arch.tile(*k.tile.pos)
            buffers = [b for b in k.cfg.buffers if b.size > 0]
            if not buffers:
                continue
            where = f"simulate: TILES: kernel {k.cfg.kernel} '{k.cfg.name}' on tile ({k.tile.pos[0]},{k.tile.pos[1]})"
            for b in buffers:
                if not 1 <= b.banks <= at.sram_banks:
                    raise AttncError(f"{where}: buffer '{b.name}' is interleaved over {b.banks} banks, "
                                     f"the tile has {at.sram_banks}")
            k.stats.buffer_banks = max(b.banks for b in buffers)

    def _back_pressure(self) -> None:
        """Throttle every context by the buffers of the contexts its streams fill, when that cannot deadlock.

        A producer's segment emits its share of each output's tokens; a consumer port of T tokens over S
        segments releases its tokens as its segments finish. The producer sends a finished segment's tokens only
        as far as ``depth`` tokens beyond what each streamed consumer port (tokens > 1, not a weight) has
        released, and starts no segment while some wait: ``depth`` is what the consumer's declared buffers hold
        for the port, never less than its span (``_depths``), so a consumer holds no more than it declares
        whenever its buffers hold one segment's operands (else ``_too_small`` names it). Weights (needed whole)
        are not throttled. A forwarded copy (it leaves a consumer as its input arrives) fills the buffers of the
        copy's consumers at its source's pace: the source is throttled by those too, in their tokens.

        Waits form a graph: a context waits for its producers (for a forwarded copy, for the copy's source),
        a throttled producer for its consumers; a spill that runs its two sides apart is two nodes, its store
        (``kid``: its producers wait for its room) and its read-back (``~kid``: its consumers wait for its data,
        and it waits for the store and the gate). A deadlock needs a cycle of waits that hold at once, hence a
        simple one. "The producer waits for its consumer, which waits for the producer" cannot hold at once:
        the depth is at least the consumer's span, so a producer held back by a consumer has sent all that its
        next segment needs. So producers are taken in kernel order and one is throttled only if its edges close
        no simple cycle of three or more contexts with a whole wait on it (``_reaches``). A fork-join through a
        whole wait (a consumer of the producer also reachable from it through a context that needs all of what
        it reads first) is such a cycle, and so is a producer whose consumer waits for another throttled
        producer whose other consumer waits for all of the first one: that producer is not throttled, and its
        consumers' buffers are unbounded (the SRAM check at the end says where they overflowed)."""
        kernels = self.kernels

        def roots(k: _Kernel, stream: int, seen: frozenset = frozenset()) -> set[int]:
            # the contexts whose segments send ``stream`` out of ``k``: ``k``, or up the chains of copies
            if stream not in k.made_of or k.cfg.kernel in seen:
                return {k.cfg.kernel}
            out: set[int] = set()
            for s in k.made_of[stream]:
                p = next((q for q in k.inputs if q.stream == s), None)
                if p is not None and p.producer is not None:
                    out |= roots(p.producer, s, seen | {k.cfg.kernel})
            return out

        # waits[a][b]: a waits for b; True when in step with its own progress (a streamed input it needs its
        # share of before each step), False when it needs all of b first (a one-token stream, a weight, an input
        # read in the first of P passes, the gate of an SRAM phase)
        # A spill whose consumers start gated runs its two sides apart (its store waits for its producers only, its
        # read-back for the store and the gate), so it is two nodes: ``kid`` the store, which its producers wait
        # on for credit, and ``~kid`` the read-back, which its consumers wait on for data
        def sender(kid: int) -> int:
            return ~kid if kernels[kid].written is not None else kid

        waits: dict[int, dict[int, bool]] = {k.cfg.kernel: {} for k in kernels.values()}
        waits.update({~k.cfg.kernel: {} for k in kernels.values() if k.written is not None})

        def wait(a: int, b: int, in_step: bool) -> None:
            if a != b:
                waits[a][b] = waits[a].get(b, True) and in_step

        for k in kernels.values():
            for p in k.inputs:
                if p.producer is not None:
                    for r in roots(p.producer, p.stream):
                        wait(k.cfg.kernel, sender(r), p.tokens > 1 and not p.broadcast and (p.share is None or p.in_step))
            for g in k.tile.kernels:
                if k.phase and 1 <= g.phase < k.phase:
                    wait(k.cfg.kernel, g.cfg.kernel, False)
            if k.written is not None:
                wait(~k.cfg.kernel, k.cfg.kernel, True)  # read segment i after write segment i
            for c in k.watch:  # it holds its data back until c opens
                for g in c.tile.kernels:
                    if 1 <= g.phase < c.phase:
                        wait(sender(k.cfg.kernel), g.cfg.kernel, False)
        for kid in sorted(kernels):
            src = kernels[kid]
            candidates = []
            for stream, tokens, _ in src.outputs:
                if stream in src.made_of:
                    continue  # a copy: its source's segments send it
                todo, seen = [(src, stream)], {(kid, stream)}
                while todo:
                    frm, s = todo.pop()
                    for c, p in self.consumers.get(s, []):
                        if c is frm or p.producer is not frm:
                            continue
                        if not _whole(p) and c is not src:
                            candidates.append((c, p, stream, tokens))
                        for o in c.forwards.get(s, []):
                            if (c.cfg.kernel, o) not in seen:
                                seen.add((c.cfg.kernel, o))
                                todo.append((c, o))
            if not candidates:
                continue
            extra: dict[int, bool] = {}
            for c, p, _, _ in candidates:
                extra[c.cfg.kernel] = extra.get(c.cfg.kernel, True) and (p.share is None or p.in_step)
            if any(self._reaches(c, sender(kid), waits, extra) for c in extra):
                continue  # back-pressure here could deadlock: unthrottled
            for c, in_step in extra.items():
                wait(sender(kid), c, in_step)
            src.stats.throttled = True
            for c, p, stream, tokens in candidates:
                depth = self._depths(c)[id(p)]
                th = _Throttle(c, p, depth, stream, tokens)
                src.throttles.append(th)
                src.credits.setdefault(stream, []).append(th)
                if src not in c.throttlers:
                    c.throttlers.append(src)
                if not any(h is src and hs == stream for h, hs in c.holds):
                    c.holds.append((src, stream))

    def _depths(self, c: _Kernel) -> dict[int, int]:
        """The credit, in tokens, each streamed on-chip input port of ``c`` (by ``id``) gives its producer: what
        ``c``'s declared buffers hold for the port, and never less than the tokens one of its segments works on.

        A segment works on its ``span`` of a port: the tokens it needs beyond those its predecessors released.
        Every port gets its span; what the double-buffered buffers hold beyond the inputs held whole (weights,
        one-token streams) and those spans goes to run-ahead (a producer fills the next tokens while a segment
        computes), a token at a time to the port with the fewest extra tokens so far (the smaller token first
        on a tie), while one fits: every port gets a second token before any gets a third, and a port whose
        tokens are large does not starve the others. So the streamed ports together hold at most the declared
        buffers less what is held whole. When the spans alone do not fit (the buffers cannot hold one segment's
        operands), the depth stays at the spans and ``_too_small`` names the context: the configuration needs
        more buffer than it declares. (Memoised: one consumer may throttle several producers.)"""
        got = self._depth_memo.get(c.cfg.kernel)
        if got is not None:
            return got
        streamed = [q for q in c.inputs if q.producer is not None and not _whole(q)]
        got = {id(q): _span(q, c.segments) for q in streamed}
        room = sum(b.size for b in c.cfg.buffers if b.double_buffered)
        left = room - _whole_bytes(c) - sum(got[id(q)] * q.token_bytes for q in streamed)
        # level by level (a level: one more token of every port still taking them), whole levels at once
        active = sorted((q for q in streamed if got[id(q)] < q.tokens), key=lambda q: q.token_bytes)
        while active and left > 0:
            cost = sum(q.token_bytes for q in active)
            levels = min(q.tokens - got[id(q)] for q in active)
            if cost > 0:
                levels = min(levels, int(left // cost))
            if levels:
                for q in active:
                    got[id(q)] += levels
                left -= levels * cost
            else:  # not a whole level: a token more for those that fit, smallest first; the rest take no more
                fits = []
                for q in active:
                    if q.token_bytes <= left:
                        got[id(q)] += 1
                        left -= q.token_bytes
                        fits.append(q)
                active = fits
            active = [q for q in active if got[id(q)] < q.tokens]
        self._depth_memo[c.cfg.kernel] = got
        return got

    def _too_small(self, k: _Kernel) -> str | None:
        """The line that reports a context that streams an input and whose declared buffers cannot hold what one
        of its segments works on: the inputs it holds whole and the span of each streamed input (the least its
        producers must be allowed to send, ``_depths``). The hardware could not run it; the compiler must
        declare more, or cut the inputs finer. None when they fit, or when it streams nothing (then only what
        it holds whole is at stake, which the tile check at the end of the run reports)."""
        streamed = [q for q in k.inputs if q.producer is not None and not _whole(q)]
        if not streamed:
            return None  # nothing to hold back: what it holds whole is the tile check's (``_overflow``)
        whole = _whole_bytes(k)
        tokens = sum(_span(q, k.segments) * q.token_bytes for q in streamed)
        declared = sum(b.size for b in k.cfg.buffers)
        if math.ceil(whole + tokens - 1e-6) <= declared:
            return None
        x, y = k.tile.pos
        return (f"kernel {k.cfg.kernel} '{k.cfg.name}' on tile ({x},{y}): one segment works on "
                f"{math.ceil(whole + tokens - 1e-6)} bytes of its inputs ({math.ceil(whole - 1e-6)} held whole + "
                f"{math.ceil(tokens - 1e-6)} of its streams' tokens), it declares {declared}")

    @staticmethod
    def _reaches(start: int, source: int, waits: dict[int, dict[int, bool]], extra: dict[int, bool]) -> bool:
        """Whether throttling ``source`` by its consumers ``extra`` could close a cycle of waits that deadlocks:
        a walk from consumer ``start`` back to ``source`` over the waits plus the new edges (other than
        ``start``'s direct wait for the source: "the source waits for its consumer, which waits for the source"
        cannot hold at once, the depth rules it out) with at least one wait that needs all of its producer.

        A cycle of in-step waits does not deadlock while the depths cover the grain along it: take its least
        advanced context (by the share of its steps done); its producers on the cycle have sent at least its
        share, and a throttled producer waits only for a consumer at least as far, which has released all but
        one step's share; the depth leaves room for the next step when it holds a consumer step beyond a
        producer's burst. The depth is what the consumer's buffers declare (``_depths``), no longer two bursts
        and a step by fiat, so a fork-join whose branches differ in grain by more than its buffers hold would
        hang on the hardware too: the run then ends in the deadlock error naming who waits for what, never in
        a time for buffers that do not exist. The compiler declares two tokens of each streamed input where
        its tiles have room (``size_stream_buffers``), which its fork-joins (GEMM grids, a spill between a GEMM
        and its layer norm) run with. A wait for all of a producer breaks the argument whatever the depths: the
        producer must run to its end, as far ahead of the consumers holding it back as it likes. A closed walk
        that passes a context twice is made of cycles of its own, each checked when its edges were added, but
        for a two-context loop (a throttled producer and its consumer): the depth rules those out, so none is
        checked, and the walk never steps straight back to the context it came from. Else a stage's whole wait
        on its load, and the load's wait on that stage, would mark every walk through the stage as needing all
        of a producer (on fused attention alone, a K stage throttled first left the V stage unthrottled)."""
        # a state: (context, every wait so far in step, the context the walk came from)
        stack = [(n, in_step and extra[start], start) for n, in_step in waits[start].items() if n != source]
        seen = set(stack)
        while stack:
            n, in_step, came = stack.pop()
            if n == source:
                if not in_step:
                    return True
                continue
            for m, step in waits[n].items():
                state = (m, in_step and step, n)
                if m != came and state not in seen:
                    seen.add(state)
                    stack.append(state)
        return False

    def _kernel(self, cfg: KernelConfig, tile: _Tile, at, producers) -> _Kernel:
        steps = prod_dims(trips for _, trips in cfg.loops) if cfg.loops else 1
        is_dma = at.kind == "dma" or cfg.kind in DMA_KINDS
        segments = max(1, min(steps, MAX_SEGMENTS))
        tokens = max(p.tokens for p in cfg.outputs + cfg.inputs) if cfg.outputs or cfg.inputs else 1
        if is_dma:
            # a DMA context moves its data token by token, whatever its loops say: at least a segment per token
            # (grouped 64 to a context, a store fed 1024 tokens released 16 at a time, and a load sent 16 at a
            # time into buffers that hold two), up to MAX_DMA_SEGMENTS
            segments = max(segments, min(tokens, MAX_DMA_SEGMENTS))
        room = sum(b.size for b in cfg.buffers)
        streamed = sum(prod_dims(p.shape) * dtype_bytes(p.dtype) for p in cfg.inputs if p.tokens > 1)
        if not is_dma and room > 0 and streamed > room:
            # the step grain is what the hardware runs at; grouping steps must not make a segment need more of a
            # stream at once than the context has room for (a GEMM part walking K in chunks holds one chunk),
            # and a segment takes at most one token of each streamed input, so that two tokens of room (what
            # lower-to-dataflow declares) double-buffer it: one worked on, the next arriving
            # (a whole number of segments per token of the finest, so that a segment does not straddle two tokens
            # and need both: the depth is what a segment works on, docs/simulator.md "Back-pressure")
            finest = max(p.tokens for p in cfg.inputs if p.tokens > 1)
            want = -(-max(-(-4 * streamed // room), finest) // finest) * finest
            segments = max(segments, min(steps, MAX_STREAMED_SEGMENTS, want))
        segments = self._fine_segments(cfg, segments, tokens if is_dma else steps, producers)
        st = KernelStats(cfg.kernel, cfg.name, cfg.kind, tile.pos, segments=segments)
        k = _Kernel(cfg, tile, st, segments, lambda i: 0, is_dma=is_dma, phase=cfg.phase)
        k.results = _result_blocks(cfg, steps)
        for p in cfg.inputs:
            src = producers.get(p.stream)
            # a weight (a constant loaded by DMA) is needed whole before the first step
            # (one re-read by a ("repeat", P) loop comes in P copies, each needed by its share of the steps),
            # unless a GEMM streams it in chunks of its reduction dimension: then it comes in several tokens,
            # each needed by its share of the steps like any stream (a fused attention keeps K/V whole)
            chunked = p.tokens > 1 and cfg.kind != "attention"
            weight = src is not None and _constant_load(src) and not chunked
            port = _InPort(p.stream, max(p.tokens, 1), weight)
            if src is None or src is cfg:
                port.received = port.tokens  # a DRAM-side stream (or one nothing produces) is there from the start
            k.inputs.append(port)
        # ("repeat", P) loops stream the context's outputs P times (a DMA context runs its descriptors P times)
        repeat = prod_dims(trips for name, trips in cfg.loops if name == "repeat")
        if not is_dma and repeat > 1:
            share = _repeat_share(list(cfg.loops), segments)
            for p, port in zip(cfg.inputs, k.inputs):
                # an input that comes again each pass (its producer repeats too: a stage passing keys it does not
                # keep through) is read evenly over every pass
                src = producers.get(p.stream)
                if src is None or prod_dims(t for name, t in src.loops if name == "repeat") != repeat:
                    port.share = share
        if not is_dma and repeat == 1:
            k.forwards, k.made_of = _forwards(cfg)
        if k.results:
            # a forwarded copy leaves as its input arrives (``_forward``), whatever this says
            k.unreduced = _unreduced_outputs(cfg) - k.made_of.keys()
        _hold_weight_block(cfg, k.inputs, segments)
        _read_at_block_ends(cfg, k.inputs, segments, k.results, steps)
        port_bytes = 0
        for p in cfg.outputs:
            # the port's shape is the whole tensor; each of its tokens carries 1/tokens of the bytes moved
            nbytes = prod_dims(p.shape) * dtype_bytes(p.dtype)
            k.outputs.append((p.stream, max(p.tokens, 1), nbytes * repeat))
            k.emitted[p.stream] = 0
            port_bytes += nbytes
        in_bytes = sum(prod_dims(p.shape) * dtype_bytes(p.dtype) for p in cfg.inputs)
        if is_dma:
            read, write = self._dma_bytes(cfg, in_bytes, port_bytes)
            # a ("repeat", P) loop runs the loads P times; a spill's store writes its input once
            read, write = read * repeat, write * (1 if cfg.kind == "dma_spill" else repeat)
            k.dma_bytes = read + write
            k.spill_bytes = (read, write)
            self.stats.dram_read_bytes += read
            self.stats.dram_write_bytes += write
            # the DMA tile stages the data in its buffer: written once, read once
            self.stats.sram_write_bytes += k.dma_bytes
            self.stats.sram_read_bytes += k.dma_bytes
            return k
        w = kernel_work(cfg, at)
        c = context_cycles(w, at)
        compute, fill = c.compute, c.fill
        self.stats.butterfly_ops += c.butterfly_ops
        self.stats.vector_ops += c.vector_ops
        self.stats.sfu_ops += c.sfu_ops
        self.stats.macs += w.macs
        st.macs = w.macs
        tile.stats.macs += w.macs
        # data arrives in the buffer and leaves from it, and each op reads its operands and writes its result
        self.stats.sram_write_bytes += w.sram_write + in_bytes
        self.stats.sram_read_bytes += w.sram_read + port_bytes
        # ... through the banks' ports: a context moves at most the tile's SRAM bytes per cycle (one context
        # runs at a time on a tile), so traffic beyond what its compute takes stalls it
        sram = w.sram_read + w.sram_write + in_bytes + port_bytes
        if sram and at.sram_bytes_per_cycle <= 0:
            raise AttncError(f"simulate: kernel {cfg.kernel} '{cfg.name}' on tile ({at.x},{at.y}) moves {sram} bytes "
                             "through SRAM, and the tile has no SRAM banks")  # fmt: skip
        sram_cycles = -(-sram // at.sram_bytes_per_cycle) if sram else 0
        st.sram_stall_cycles = max(0, sram_cycles - compute)
        work = max(compute, sram_cycles)

        def durations(i: int, c=work, s=segments, f=fill) -> int:
            return (i + 1) * c // s - i * c // s + (f if i == 0 else 0)

        k.durations = durations
        return k

    def _fine_segments(self, cfg: KernelConfig, segments: int, finest: int, producers) -> int:
        """``segments``, or more when then a segment would work on more of its on-chip streams than the context
        declares: the fewest that fit, a whole number of them per token of its busiest stream (so that no
        segment straddles two of its tokens), up to ``finest`` (its steps; a DMA context's tokens: the grain the
        hardware runs at) and ``MAX_FINE_SEGMENTS``. The caps MAX_STREAMED_SEGMENTS and MAX_DMA_SEGMENTS keep
        long streams cheap to simulate; a segment grouping more tokens than the buffers hold would be timed
        with buffers that do not exist (the unfused baseline's K, re-read per row block, on ``edge`` at seq
        4096: 1.57M tokens of 512 bytes, 96 a segment at 16384 segments, into 8 KiB). Contexts whose inputs are
        not read evenly over their steps (a ``repeat`` loop, a held weight block) keep their grain: their spans
        are not the even share this counts (``_too_small`` still reports them)."""
        declared = sum(b.size for b in cfg.buffers)
        names = [n for n, _ in cfg.loops]
        if declared <= 0 or "repeat" in names or (cfg.kind == "gemm" and names == ["m", "k"]):
            return segments
        whole, ports = 0.0, []  # bytes held whole; (tokens, bytes a token) of each on-chip stream
        for p in cfg.inputs:
            src = producers.get(p.stream)
            if src is None or src is cfg:
                continue  # a DRAM-side stream holds nothing on chip
            nbytes = self._route_bytes.get((p.stream, cfg.kernel)) or prod_dims(p.shape) * dtype_bytes(p.dtype)
            weight = _constant_load(src) and cfg.kind == "attention"
            if p.tokens <= 1 or weight:  # held whole, as ``_kernel`` reads it
                whole += nbytes
            else:
                ports.append((p.tokens, nbytes / p.tokens))

        def span(t: int, s: int) -> int:  # at most the tokens of t one of s even segments works on
            return t // s if t % s == 0 else 1 if s % t == 0 else -(-t // s) + 1

        def need(s: int) -> float:
            return whole + sum(span(t, s) * b for t, b in ports)

        if not ports or need(segments) <= declared:
            return segments
        busiest = max(t for t, _ in ports)
        top = min(finest, MAX_FINE_SEGMENTS)
        per = [g for g in range(1, math.isqrt(busiest) + 1) if busiest % g == 0]
        for s in sorted({busiest // g for g in per} | {g for g in per}):
            if s > top:
                break
            if s > segments and need(s) <= declared:
                return s
        return segments

    def _dma_bytes(self, cfg: KernelConfig, in_bytes: int, port_bytes: int) -> tuple[int, int]:
        """(DRAM bytes read, DRAM bytes written) by one pass of a DMA context's descriptors.

        A load reads through the load descriptors of its streams, a store writes through the store
        descriptor it claims on its tile (``store_descriptors``: another context there may store the same
        stream through its own); a ``dma_spill`` writes its inputs (one, or the parts of the value it stores)
        through the store descriptors it claims and reads the value back through the load descriptors of its
        output streams (one, or one per input), so it counts both. A context without descriptors moves its
        ports' bytes."""
        ins = {p.stream for p in cfg.inputs}
        outs = {p.stream for p in cfg.outputs}
        stored = sum(d.bytes for d in self.stores.get(cfg.kernel, []) if d is not None)
        if cfg.kind == "dma_spill":
            # one output (the stored value read back), or one per input (a spill between SRAM phases carrying
            # several streams, output i being input i)
            if not cfg.inputs or len(cfg.outputs) != 1 and len(cfg.outputs) != len(cfg.inputs):
                raise AttncError(
                    f"simulate: dma_spill kernel {cfg.kernel} '{cfg.name}' needs one or more input ports and one "
                    f"output port (or one per input), has {len(cfg.inputs)} and {len(cfg.outputs)}"
                )
            read = sum(d.bytes for d in self.bs.dma if d.stream in outs and d.direction == "load") or port_bytes
            return read, stored or in_bytes
        if cfg.kind == "dma_store":
            return 0, stored or in_bytes
        descs = [d for d in self.bs.dma if d.stream in ins | outs and d.direction == "load"]
        return sum(d.bytes for d in descs) if descs else port_bytes, 0

    # -- event machinery --------------------------------------------------

    def push(self, t: float, fn, *args) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, args))

    def resource_idle(self, r, start: float, end: float) -> None:
        if r == "dram" or r[0] == "sram":
            return
        lk = self._link(r)
        lk.busy_cycles += end - start
        lk.intervals.append((start, end))

    def _link(self, r) -> LinkStats:
        lk = self.links.get(r)
        if lk is None:
            lk = self.links[r] = LinkStats(r[0], r[1], self.arch.noc.link_bytes_per_cycle)
        return lk

    def run(self) -> Stats:
        for tile in self.tiles:
            self.schedule(tile)
        while self.heap:
            t, _, fn, args = heapq.heappop(self.heap)
            self.now = t
            self.events += 1
            fn(*args)
            if self.progress is not None and self.events % PROGRESS_EVERY == 0:
                self.progress(self.done_segments, self.total_segments)
        stuck = [k for k in self.kernels.values() if k.done < k.segments]
        if stuck:
            raise AttncError("simulate: the configuration deadlocks: " + "; ".join(self._waiting(k) for k in stuck[:3]))
        if self.progress is not None:
            self.progress(self.done_segments, self.total_segments)
        end = max((k.stats.end for k in self.kernels.values()), default=0.0)
        self.stats.cycles = math.ceil(end - 1e-6)
        for ks in self.stats.kernels:
            ks.peak_buffer_bytes = math.ceil(ks.peak_buffer_bytes - 1e-6)
        for tile, ts in zip(self.tiles, self.stats.tiles):
            ts.peak_buffer_bytes = math.ceil(ts.peak_buffer_bytes - 1e-6)
            if ts.peak_buffer_bytes > ts.sram_bytes:
                self.too_much.append(self._overflow(tile))
        # data a tile has no room for is data the hardware cannot hold: no time for it (docs/simulator.md, "What
        # the simulator refuses"), unless a probe asks to measure it (OVERFLOW_IS_ERROR off)
        if self.too_much and OVERFLOW_IS_ERROR:
            raise overflow_error(self.too_much)
        self.stats.warnings += [f"{line} (timed as if they fit)" for line in self.too_much]
        self.stats.events = self.events
        self.stats.links = [self.links[r] for r in sorted(self.links)]
        return self.stats

    def _overflow(self, tile: _Tile) -> str:
        """The line that reports a tile whose contexts' input buffers held more than its SRAM: the tile, the
        bytes, and each context that held data at the peak with its own peak and declared buffers."""
        ts = tile.stats
        held = sorted((k for k in tile.kernels if k.stats.peak_buffer_bytes > 0),
                      key=lambda k: -k.stats.peak_buffer_bytes)  # fmt: skip
        who = ", ".join(f"kernel {k.cfg.kernel} '{k.cfg.name}' held {k.stats.peak_buffer_bytes} (declares "
                        f"{sum(b.size for b in k.cfg.buffers)})" for k in held)  # fmt: skip
        return (f"tile ({ts.x},{ts.y}): its contexts' input buffers held {ts.peak_buffer_bytes} bytes at the peak, "
                f"the tile has {ts.sram_bytes} ({who})")

    def _waiting(self, k: _Kernel) -> str:
        who = f"kernel {k.cfg.kernel} '{k.cfg.name}'"
        if k.gates:
            lower = [g for g in k.tile.kernels if 1 <= g.phase < k.phase and g.done < g.segments]
            if lower:
                g = lower[0]
                return (f"{who} (phase {k.phase}) waits for kernel {g.cfg.kernel} '{g.cfg.name}' (phase {g.phase}) "
                        "on its tile to finish")  # fmt: skip
        gated = next((c for c in k.watch if c.gates), None)
        if gated is not None and (k.written is None or k.written >= k.segments):
            return (f"{who} holds its data back for kernel {gated.cfg.kernel} '{gated.cfg.name}' (phase "
                    f"{gated.phase}), which is not open yet")  # fmt: skip
        for p in k.inputs:
            if p.received < p.tokens:
                return (
                    f"kernel {k.cfg.kernel} '{k.cfg.name}' waits for stream {p.stream} "
                    f"({p.received} of {p.tokens} tokens arrived)"
                )
        for th in k.throttles:
            if k.emitted[th.stream] < k.target(th.stream, th.tokens) and k.emitted[th.stream] >= th.credit():
                return (
                    f"kernel {k.cfg.kernel} '{k.cfg.name}' is held back by kernel {th.consumer.cfg.kernel} "
                    f"'{th.consumer.cfg.name}' ({th.port.consumed} of its tokens released, depth {th.depth})"
                )
        return f"kernel {k.cfg.kernel} '{k.cfg.name}' never ran"

    # -- tiles and kernels ------------------------------------------------

    def schedule(self, tile: _Tile) -> None:
        n = len(tile.kernels)
        while tile.running < tile.slots and n:
            for j in range(n):
                k = tile.kernels[(tile.next_rr + j) % n]
                if k.ready():
                    tile.next_rr = (tile.next_rr + j + 1) % n
                    self.start(k)
                    break
            else:
                return

    def start(self, k: _Kernel) -> None:
        tile = k.tile
        tile.running += 1
        k.running = True
        slot = tile.free_slots.pop(0)
        side = k.spill_side() if k.written is not None else None  # a split spill: which of its sides runs
        i, now = (k.written if side == "write" else k.done), self.now
        if i == 0 and side != "read":
            k.stats.start = now
        if k.is_dma:
            total = k.dma_bytes if side is None else k.spill_bytes[side == "write"]
            share = (i + 1) * total // k.segments - i * total // k.segments

            def begin(_k=k, _slot=slot, _start=now, _share=share, _side=side):
                if _share <= 0:  # nothing to move: an event, not a call (a run of empty segments would nest)
                    self.push(self.now, self.finish, _k, _slot, _start, _side)
                    return
                staging = ("sram", _k.tile.pos)
                over = ("dram", staging) if staging in self.fluid.capacity else ("dram",)
                self.fluid.add(_share, over, lambda t: self.finish(_k, _slot, _start, _side))

            if i == 0 and self.arch.dram.latency_cycles:
                self.push(now + self.arch.dram.latency_cycles, begin)
            else:
                begin()
        else:
            self.push(now + k.durations(i), self.finish, k, slot, now)

    def finish(self, k: _Kernel, slot: int, start: float, side: str | None = None) -> None:
        now = self.now
        tile = k.tile
        tile.running -= 1
        tile.free_slots.append(slot)
        tile.free_slots.sort()
        k.running = False
        busy = now - start
        k.stats.busy_cycles += round(busy)
        tile.stats.busy_cycles += round(busy)
        sl = tile.stats.slices
        if sl and sl[-1][0] == slot and sl[-1][1] == k.cfg.name and abs(sl[-1][3] - start) < 1e-9:
            sl[-1] = (slot, k.cfg.name, sl[-1][2], now)
        elif busy > 0:
            sl.append((slot, k.cfg.name, start, now))
        if side == "write":
            k.written += 1
        else:
            k.done += 1
        self.done_segments += 1
        if k.done == k.segments:
            k.stats.end = now
        n = k.done if k.written is None else k.written  # segments that have read their inputs
        if k.any_order and (p := _next_block(k.inputs)) is not None:  # the token this segment wrote
            self._hold(k, -p.token_bytes)
            p.consumed += 1
        for p in ([] if k.any_order else k.inputs):
            if p.producer is None:
                continue
            upto = p.released(n - 1, k.segments)
            if upto > p.consumed:
                self._hold(k, -(upto - p.consumed) * p.token_bytes)
                p.consumed = upto
        if side != "write":  # a spill's stored value leaves only as it is read back
            self._emit_done(k)
        for src, stream in k.holds:  # the tokens released make room for what a held-back producer has ready
            self._send(src, stream)
        self.schedule(tile)
        for src in k.throttlers:  # ... and may let it go on
            if src.tile is not tile:
                self.schedule(src.tile)

    def _emit_done(self, k: _Kernel) -> None:
        """What ``k``'s finished segments let leave; once it has finished, the phases it gated may open."""
        self._send(k)
        if k.done == k.segments:
            for g in k.opens:  # a context of a higher phase on the tile may now hold its buffers
                g.gates -= 1
                if not g.gates:
                    self._open(g)

    def _send(self, k: _Kernel, only: int | None = None) -> None:
        """Send what ``k``'s finished segments have produced (of stream ``only``, or of all), as far as its
        consumers' buffers have room (the rest waits in its output buffer, and it starts no segment until that
        has left)."""
        for stream, tokens, nbytes in k.outputs:
            if stream in k.made_of or only is not None and stream != only:
                continue  # a copy leaves as its input arrives (deliver)
            target = k.target(stream, tokens)
            for th in k.credits.get(stream, ()):
                target = min(target, th.credit())
            new = target - k.emitted[stream]
            if new > 0:
                k.emitted[stream] = target
                self.emit(k, stream, new, nbytes / tokens)

    def _open(self, g: _Kernel) -> None:
        """``g`` is open: the contexts that held back their data for it may run (its own tile is rescheduled
        by the caller, whose context opened it)."""
        for w in g.waiters:
            w.closed -= 1
            if not w.closed and w.tile is not g.tile:
                self.schedule(w.tile)

    def _hold(self, k: _Kernel, nbytes: float) -> None:
        k.held += nbytes
        k.tile.held += nbytes
        if k.held > k.stats.peak_buffer_bytes:
            k.stats.peak_buffer_bytes = k.held
        if k.tile.held > k.tile.stats.peak_buffer_bytes:
            k.tile.stats.peak_buffer_bytes = k.tile.held

    def emit(self, k: _Kernel, stream: int, tokens: int, token_bytes: float, gate: _Gate | None = None) -> None:
        """``tokens`` new tokens of ``stream`` leave kernel ``k``: over each route to its consumer. ``gate``
        (a forwarded copy) holds their delivery until the copy's own input has arrived."""
        routes = self.routes.get((stream, k.cfg.kernel), [])
        routed = {r.dst_kernel for r in routes}
        for r in routes:
            dst = self.kernels[r.dst_kernel]
            port_tokens = max((p.tokens for p in dst.inputs if p.stream == stream), default=1)
            # a route carries what the consumer reads (one head of a projection, say)
            nbytes = r.bytes * tokens / port_tokens if r.bytes else token_bytes * tokens
            links = tuple((tuple(a), tuple(b)) for a, b in zip(r.hops, r.hops[1:]))
            for link in links:
                lk = self._link(link)
                lk.bytes += round(nbytes)
                if r.stream not in lk.streams:
                    lk.streams.append(r.stream)
            self.stats.noc_byte_hops += round(nbytes) * len(links)
            latency = len(links) * self.arch.noc.hop_latency
            arrival = _Gate()

            def arrived(t, _dst=dst, _tokens=tokens, _lat=latency, _arrival=arrival):
                def land(t_in, _t=t):
                    at = max(_t, t_in) + _lat
                    _arrival.open(at)
                    self.push(at, self.deliver, _dst, stream, _tokens)

                if gate is None:
                    land(t)
                else:
                    gate.after(land)

            # a consumer that forwards what it receives starts its copy now (cut-through): a copy
            # streams on as its bytes come in, it is not stored and sent again batch by batch
            self._forward(dst, stream, tokens, arrival)
            if gate is None:
                self.fluid.add(nbytes, links, arrived, key=(stream, k.cfg.kernel, r.dst_kernel))
            else:
                # a copy moves at its input's pace (never faster than its own links): it is charged to its
                # links but takes no share of them from other streams -- a chain's links are its own, and
                # keeping copies out of the fair sharing keeps a 64-member chain from being one
                # 64-flow rebalance at every batch
                alone = len(links) and nbytes / self.arch.noc.link_bytes_per_cycle
                for link in links:
                    self.resource_idle(link, self.now, self.now + alone)
                arrived(self.now + alone)
        # consumers without a route (on the same tile, or an unrouted stream) read the buffer directly
        for dst, _ in self.consumers.get(stream, []):
            if dst.cfg.kernel not in routed and dst is not k:
                self.deliver(dst, stream, tokens)
                self._forward(dst, stream, tokens, gate)
                routed.add(dst.cfg.kernel)

    def deliver(self, dst: _Kernel, stream: int, tokens: int) -> None:
        for p in dst.inputs:
            if p.stream == stream:
                new = min(p.tokens, p.received + tokens) - p.received
                p.received += new
                if p.producer is not None and new > 0:
                    self._hold(dst, new * p.token_bytes)
        self.schedule(dst.tile)

    def _forward(self, k: _Kernel, stream: int, tokens: int, gate: _Gate | None) -> None:
        """Tokens of ``stream`` on their way into ``k`` go on through the outputs that copy it, in step
        with their arrival (``gate`` opens when they have arrived)."""
        outs = k.forwards.get(stream)
        if not outs:
            return
        port = next(p for p in k.inputs if p.stream == stream)
        port.forwarded = min(port.tokens, port.forwarded + tokens)
        for out, total, nbytes in k.outputs:
            if out not in outs:
                continue
            # a copy of several inputs (concatenated) goes on as far as all of them have come
            ports = [q for q in k.inputs if q.stream in k.made_of.get(out, (stream,))] or [port]
            if all(q.forwarded >= q.tokens for q in ports):
                target = total
            else:
                target = min(q.forwarded * total // q.tokens for q in ports)
            new = target - k.emitted[out]
            if new > 0:
                k.emitted[out] = target
                self.emit(k, out, new, nbytes / total, gate)


class _Gate:
    """A time that is not known yet: callbacks wait for it (a forwarded copy waits for its input)."""

    __slots__ = ("time", "waiting")

    def __init__(self) -> None:
        self.time: float | None = None
        self.waiting: list[Callable[[float], None]] = []

    def open(self, t: float) -> None:
        self.time = t
        waiting, self.waiting = self.waiting, []
        for fn in waiting:
            fn(t)

    def after(self, fn: Callable[[float], None]) -> None:
        if self.time is not None:
            fn(self.time)
        else:
            self.waiting.append(fn)


def _hold_weight_block(cfg: KernelConfig, ports: list[_InPort], segments: int) -> None:
    """A GEMM part that holds its weight block (kind ``gemm``, loops ``("m", M), ("k", K)``: M row blocks, each
    walking K k-chunks) and receives the block in K tokens (its k-chunks, in order) reads them during its first
    row block, chunk k before step k, and keeps them to its end: the later row blocks reuse what it holds,
    as a ("repeat", M) loop's passes do. The port is the one the matmul's right operand comes from (through
    data movement); any other input is read in step as usual."""
    if cfg.kind != "gemm" or [n for n, _ in cfg.loops] != ["m", "k"]:
        return
    (_, rows), (_, chunks) = cfg.loops
    if rows <= 1 or chunks <= 1:
        return
    origin = {p.register: p.stream for p in cfg.inputs}
    rhs = None
    for ins in cfg.body:
        if ins.opcode in ("reshape", "slice") and ins.operands and ins.operands[0] in origin:
            for r in ins.results:
                origin[r] = origin[ins.operands[0]]
        elif ins.opcode == "matmul" and len(ins.operands) == 2:
            rhs = origin.get(ins.operands[1])
    share = _repeat_share([("repeat", rows), ("k", chunks)], segments)
    for p in ports:
        if p.stream == rhs and p.tokens == chunks and not p.broadcast:
            p.share, p.held = share, True


def _read_at_block_ends(cfg: KernelConfig, ports: list[_InPort], segments: int, results: int, steps: int) -> None:
    """A reducing context's input that only its epilogue reads (it reaches no matmul operand: a SwiGLU gate
    multiplied into the up projection's sub-blocks) and that comes in one token per result block is read as
    each block's reduction ends: token j by the segment that finishes block j, and released then. Needed at
    the block's first step, it would hold the block's producer (which sends it when its own block is done)
    back until the consumer's block had started."""
    if not results or not any(ins.opcode in ("matmul", "contract") for ins in cfg.body):
        return
    taint: dict[int, set[int]] = {p.register: {p.stream} for p in cfg.inputs}
    reduced: set[int] = set()
    for ins in cfg.body:
        came = set().union(*(taint.get(r, set()) for r in ins.operands))
        if ins.opcode in ("matmul", "contract"):
            reduced |= came
        for r in ins.results:
            taint[r] = came
    per_block = max(steps // results, 1)

    def share(i: int) -> tuple[int, int]:
        done = min(steps, -(-(i + 1) * steps // segments))  # steps finished when segment i ends
        return (done // per_block, results)

    for p in ports:
        if p.stream not in reduced and p.tokens == results and not p.broadcast and p.share is None and not p.held:
            p.share, p.in_step = share, True


#: the operations whose result a reducing context finishes only at the end of its reduction loop
REDUCING_OPCODES = frozenset({"matmul", "contract", "attention"})


def _unreduced_outputs(cfg: KernelConfig) -> frozenset[int]:
    """The output streams of a reducing context whose registers no reducing operation (``REDUCING_OPCODES``)
    reaches: data the context moves or reshapes (a fused attention's first member assembling K/V from the
    parts a spill brings, for the rest of its group). They are final as its steps go; held to its result
    blocks, they would hold the group's other members back until the first member's whole first row block
    had its queries, which their own unread queries keep from coming (a cycle of waits)."""
    reduced: set[int] = set()
    for ins in cfg.body:
        if ins.opcode in REDUCING_OPCODES or any(r in reduced for r in ins.operands):
            reduced.update(ins.results)
    return frozenset(p.stream for p in cfg.outputs if p.register not in reduced)


def _forwards(cfg: KernelConfig) -> tuple[dict[int, list[int]], dict[int, tuple[int, ...]]]:
    """Outputs whose register is an input's register, or a concatenation of inputs' registers, through
    reshapes, slices and concatenations only (a row strip passed on whole, or made of the parts a spill brings):
    input stream -> output streams, and output stream -> the input streams it is made of."""
    origin: dict[int, tuple[int, ...]] = {p.register: (p.stream,) for p in cfg.inputs}
    for ins in cfg.body:
        if (ins.opcode in ("reshape", "concat") or ins.opcode == "slice" and len(ins.operands) == 1) and ins.operands \
                and all(o in origin for o in ins.operands):
            for r in ins.results:
                origin[r] = tuple(s for o in ins.operands for s in origin[o])
    inputs = {p.register for p in cfg.inputs}
    out: dict[int, list[int]] = {}
    made: dict[int, tuple[int, ...]] = {}
    for p in cfg.outputs:
        if p.register in origin and p.register not in inputs:
            made[p.stream] = origin[p.register]
            for s in dict.fromkeys(origin[p.register]):
                out.setdefault(s, []).append(p.stream)
    return out, made


def simulate(
    bitstream: Bitstream, *, progress: Callable[[int, int], None] | None = None, functional: bool = False
) -> Stats:
    """Time ``bitstream`` on its embedded architecture, from the bitstream alone (no tensor values).

    ``progress(done, total)`` is called every ``PROGRESS_EVERY`` events and once at the end, counting
    segments of work. ``functional`` says whether the caller also ran the numpy model; the timing does
    not depend on values, so it is only recorded (``Stats.mode``) and a timing-only run gives the same
    cycles. Every problem with the configuration is one ``AttncError``.
    """
    arch = parse_arch(bitstream.arch_source, source_name="<bitstream ARCH>")
    try:
        stats = _Sim(bitstream, arch, progress).run()
    except (AttncError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # a last-resort guard, as the decoder has: the tests fail if it fires
        raise AttncError(f"simulate: timing model bug on this bitstream: {type(e).__name__}: {e}") from e
    stats.mode = "functional" if functional else "timing-only"
    return stats

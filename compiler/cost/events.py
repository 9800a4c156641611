"""When each kernel of the graph starts and finishes: an event schedule over the kernel graph
(:mod:`attnc.cost.graph`), and the bounds whose maximum is the graph's cycles.

Whole-graph cycles: a critical path through the kernel graph in which shared resources add up. It works
at kernel granularity (one start and one finish per kernel, one transfer per stream), not per token:

* a kernel whose inputs come in one token starts when its producers have finished and the data has
  crossed its route (``bytes / link bandwidth + hops * hop latency``; a consumer on the producer's tile
  reads the buffer);
* a streamed input (tokens > 1) lets it overlap its producer: the producer emits its tokens evenly over
  its steps (after its DMA latency or fill), a step needs its share of them (the first ceil(T/steps), the
  last all), so the kernel starts when its first share has arrived and ends no earlier than the steps
  from the first that needs them all after the last; a DMA kernel moves data token by token (at least as
  many steps as tokens);
* kernels sharing a tile add up: the tile's ready kernels take turns one step each (loop steps grouped
  into at most 64, the fill in the first), in context order -- the simulator's round-robin, evaluated
  per tile for the kernels present; a DMA tile's transfers hold its channels, a one-step transfer a
  channel of its own, transfers of several steps take turns on one (from the end of the holder's first
  step, which carries the DRAM latency);
* a forwarded copy (an output that is an input's register through reshapes only: fused attention
  members pass K/V down their group's chain) is timed by the input it copies, not by its kernel: its
  tokens start across their links as the input's leave their producer (cut-through) and are delivered no
  earlier than the input has arrived; its consumers become ready when the chain's source starts (or
  finishes, for one-token streams). A compute or memory context with a ``("repeat", P)`` loop needs
  before each step only the share of its input that its first passes read;
* transfers in flight together share the DRAM bandwidth (a DMA tile's transfers between them as many
  shares as it has channels: its round-robin), and streams crossing a link together share the link
  (processor sharing, the fluid form of the simulator's max-min fair flows); a later arrival pushes back
  what is still running, so finishes are revised, never fixed early. A stream's token batches cross a
  route one after the other (the simulator's FIFO per route): the first f of them are through once f of
  the stream's time on its links has passed;
* a source held back by a streamed consumer's buffers (the simulator's back-pressure, which holds every
  producer where it closes no cycle of waits with a wait for a whole tensor on it) runs at most ``depth``
  tokens ahead of what the consumer's finished steps released, plus the step it holds in its own output
  buffer: what a step needs beyond that is fetched only after the step before it, and the consumer waits
  for it (at the pace a DMA source gets from DRAM; a held-back compute producer keeps computing into its
  output buffer, and the consumer already waits for its compute, so it costs nothing here);
* the result is the latest finish, bounded from below by ``DRAM latency + DRAM bytes / bandwidth``, by
  the busiest link's ``bytes / link bandwidth`` and by the busiest tile's summed work.

With one token per stream these are the simulator's own rules evaluated per kernel instead of per
event, so the two agree closely and the check mostly guards the work and byte rules; with streamed
ports the overlap and back-pressure rules are coarser than the simulator's token-by-token gating
(within 10% on the tested shapes and the benchmark sweep, see tests/compiler/test_cost_model.py).
"""

from __future__ import annotations

import heapq
import math

from attnc.cost.graph import Edge, Node
from attnc.dialects.dataflow import DMA_KERNEL_KINDS

#: the simulator's grain of a kernel's steps: the first output token of a streamed kernel leaves after
#: one of at most this many steps
MAX_STEPS = 64

#: events of one time are taken in this order: finishes first (they send), then DMA transfers that reach
#: DRAM (their finish is known from then on), streamed sends, and kernels that become ready
DONE, JOIN, SEND, READY = 0, 1, 2, 3


class _RoundRobin:
    """A tile: its ready kernels take turns, one step each (a kernel's loop steps grouped into at most
    ``MAX_STEPS``, the pipeline fill in its first), in the order of their contexts on the tile, as the
    simulator's round-robin does. A kernel that arrives joins the rotation; the finish of every kernel
    on the tile is projected as if nothing else arrives, and updated in place when something does."""

    def __init__(self, finish: list[float], n_slots: int) -> None:
        self.finish = finish
        self.n = max(n_slots, 1)
        self.now = 0.0
        self.jobs: dict[int, list] = {}  # node -> [steps done, steps, work without fill, fill, position]
        self.running: tuple[int, float] | None = None  # (node, end of its current step)
        self.next_rr = 0

    @staticmethod
    def _step(job: list) -> float:
        i, steps, work, fill, _ = job
        return (i + 1) * work / steps - i * work / steps + (fill if i == 0 else 0.0)

    def _pick(self, jobs: dict, next_rr: int) -> int | None:
        if not jobs:
            return None
        return min(jobs, key=lambda n: ((jobs[n][4] - next_rr) % self.n, n))

    def _run(self, jobs: dict, running, next_rr: int, until: float, record: dict | None):
        """Run steps until ``until`` (``math.inf``: to the end); returns the state there."""
        t = self.now
        while True:
            if running is None:
                node = self._pick(jobs, next_rr)
                if node is None:
                    return jobs, None, next_rr
                next_rr = (jobs[node][4] + 1) % self.n
                running = (node, t + self._step(jobs[node]))
            node, end = running
            if end > until:
                return jobs, running, next_rr
            t = end
            jobs[node][0] += 1
            if jobs[node][0] >= jobs[node][1]:
                del jobs[node]
                if record is not None:
                    record[node] = end
            running = None

    def add(self, node: int, t: float, work: float, steps: int, fill: float, position: int) -> float:
        t = max(t, self.now)
        self.jobs, self.running, self.next_rr = self._run(self.jobs, self.running, self.next_rr, t, None)
        self.now = t
        self.jobs[node] = [0, max(steps, 1), max(work - fill, 0.0), fill, position]
        record: dict[int, float] = {}
        jobs = {n: list(j) for n, j in self.jobs.items()}
        self._run(jobs, self.running, self.next_rr, math.inf, record)
        for n, end in record.items():
            self.finish[n] = end
        return self.finish[node]


class _Shared:
    """A resource its users share at the same time (processor sharing: the fluid form of the simulator's
    max-min fair flows on a link or on DRAM). Users of one ``group`` (the transfers of one DMA tile) hold
    at most ``caps[group]`` shares between them (its channels: more transfers than channels take turns).
    A user's finish is projected as if nothing else arrives, by walking the resource from completion to
    completion; a later arrival only delays users still active, and their finishes are updated in place."""

    def __init__(self, finish, rate: float = 1.0, caps: dict | None = None) -> None:
        self.finish = finish
        self.rate = rate
        self.caps = caps or {}
        self.now = 0.0
        self.jobs: dict[int, list] = {}  # user -> [remaining work, group]

    def _rates(self, jobs: dict) -> dict:
        count: dict = {}
        for _, g in jobs.values():
            count[g] = count.get(g, 0) + 1
        w = {n: min(1.0, self.caps.get(g, math.inf) / count[g]) for n, (_, g) in jobs.items()}
        total = sum(w.values())
        return {n: self.rate * w[n] / total for n in jobs}

    def _run(self, jobs: dict, t: float, until: float, record: dict | None) -> None:
        while jobs:
            rates = self._rates(jobs)
            dt = min(r / rates[n] for n, (r, _) in jobs.items())
            step = min(dt, until - t)
            for n, job in jobs.items():
                job[0] -= rates[n] * step
            t += step
            for n in [n for n, (r, _) in jobs.items() if r <= 1e-9 * max(1.0, self.rate)]:
                del jobs[n]
                if record is not None:
                    record[n] = t
            if t >= until:
                return

    def add(self, node: int, t: float, work: float, group=None) -> float:
        t = max(t, self.now)
        self._run(self.jobs, self.now, t, None)
        self.now = t
        if work <= 0:
            self.finish[node] = t
            return t
        self.jobs[node] = [work, group]
        record: dict = {}
        self._run({n: list(j) for n, j in self.jobs.items()}, t, math.inf, record)
        for n, end in record.items():
            self.finish[n] = end
        return self.finish[node]


class EventSchedule:
    """Start and finish of every kernel by list scheduling over the kernel graph (see the module docstring).

    Events in time order: a kernel becomes ready (the inputs it needs first have arrived) and joins its
    tile (a DMA kernel takes a channel of its tile); a DMA transfer, its latency over, joins DRAM; a
    streaming producer's first tokens put its stream's bytes on their links; a kernel finishes and its
    one-token outputs join the links of their routes. A tile is a :class:`_RoundRobin`, DRAM and links are
    :class:`_Shared`, so a later arrival can push back the finish of a kernel or a transfer still
    running; an event whose time moved since it was queued is queued again.

    ``placed``: the kernels' tiles come from placement (array IR); else each kernel has a tile of its own.
    """

    def __init__(self, nodes: list[Node], arch, placed: bool) -> None:
        self.nodes = nodes
        self.link_bw = float(arch.noc.link_bytes_per_cycle)
        self.hop = arch.noc.hop_latency
        self.dram_bw = float(arch.dram.bytes_per_cycle)
        self.latency = arch.dram.latency_cycles
        n = len(nodes)
        self.out_edges: list[list[Edge]] = [[] for _ in nodes]
        self.missing = [0] * n  # inputs still to come; -1 once queued as ready
        for i, node in enumerate(nodes):
            for e in node.ins:
                self.out_edges[e.src].append(e)
                self.missing[i] += 1
        self.start = [0.0] * n
        self.finish = [0.0] * n
        self.tile_of = [nd.cost.tile if placed else ("own", i) for i, nd in enumerate(nodes)]
        self._resources()
        self.edges = [e for nd in nodes for e in nd.ins]
        self.edge_id = {id(e): k for k, e in enumerate(self.edges)}
        self.sent: list[dict[tuple, float]] = [{} for _ in self.edge_id]  # edge -> {link: end of its bytes on it}
        self.sent_at = [0.0] * len(self.edge_id)  # when its bytes joined the links
        self.links: dict = {}
        self.copies: dict[int, list[Edge]] = {}  # edge -> the forwarded copies of it (its consumer's outputs)
        for nd in nodes:
            for e in nd.ins:
                if e.via is not None:
                    self.copies.setdefault(id(e.via), []).append(e)
        self.heap: list[tuple[float, int, int]] = []

    def _resources(self) -> None:
        """The tiles (round-robin over their kernels), the DMA tiles' channels, and DRAM."""
        self.tiles: dict = {}
        self.free: dict = {}  # (DMA tile, channel) -> when it is free; a transfer holds one channel
        self.shared: dict = {}  # (DMA tile, channel) -> whether its holder runs in steps others can take turns with
        self.first_step: dict = {}  # (DMA tile, channel) -> when its holder's first step (the latency's) ends
        for i, nd in enumerate(self.nodes):
            if nd.cost.tile_kind == "dma":
                for c in range(max(nd.tile_params.dma_channels, 1)):
                    self.free[self.tile_of[i], c] = self.first_step[self.tile_of[i], c] = 0.0
                    self.shared[self.tile_of[i], c] = False
            else:
                self.tiles.setdefault(self.tile_of[i], _RoundRobin(self.finish, nd.contexts))
        # the transfers of a DMA tile share its channels: between them as many shares of DRAM as it has
        # channels (the tile's round-robin over its contexts, in fluid form)
        caps: dict = {}
        for ch in self.free:
            caps[ch[0]] = caps.get(ch[0], 0) + 1
        self.dram = _Shared(self.finish, self.dram_bw, caps)
        self.channel_of: dict[int, tuple] = {}

    # -----------------------------------------------------------------------
    # the run

    def run(self) -> dict[str, float]:
        """Schedule every kernel (their ``cost.start`` and ``cost.finish`` are set); returns the bounds
        whose maximum is the graph's cycles."""
        for i in range(len(self.nodes)):
            if self.missing[i] == 0:
                self._push(0.0, READY, i)
                self.missing[i] = -1
        handlers = {SEND: self._on_send, JOIN: self._on_join, DONE: self._on_done, READY: self._on_ready}
        while self.heap:
            key, what, i = heapq.heappop(self.heap)
            handlers[what](key, i)
        for i, nd in enumerate(self.nodes):
            nd.cost.start, nd.cost.finish = self.start[i], self.finish[i]
        return self._bounds()

    def _push(self, t: float, what: int, i: int) -> None:
        heapq.heappush(self.heap, (t, what, i))

    def _on_send(self, key: float, i: int) -> None:
        """A streamed (or forwarded) edge's bytes enter its links with its first tokens."""
        e = self.edges[i]
        t = self._first_out(e)
        if t > key + 1e-9:
            self._push(t, SEND, i)
        else:
            self._send(i, e, key)

    def _on_join(self, key: float, i: int) -> None:
        """A DMA transfer, its latency over, shares the DRAM bandwidth from now on."""
        nd = self.nodes[i]
        self.dram.add(i, key, nd.cost.dram_read_bytes + nd.cost.dram_write_bytes, self.channel_of[i][0])
        self.finish[i] = max(self.finish[i], self._ready_time(i)[1])
        for m in (i, *self.dram.jobs):
            ch = self.channel_of[m]
            self.free[ch] = max(self.free[ch], self.finish[m])
        self._push(self.finish[i], DONE, i)

    def _on_done(self, key: float, i: int) -> None:
        """A kernel finishes: its one-token outputs leave, and its streamed consumers' last steps learn
        their last token's time."""
        if self.finish[i] > key + 1e-9:  # its tile or DRAM took on more work since
            self._push(self.finish[i], DONE, i)
            return
        for e in self.out_edges[i]:
            if e.via is not None:
                continue  # a copy of an input: it goes with the input's producer (below)
            if self._streamed(e):
                # the consumer was queued when this kernel started; its last step waits for the
                # last token, which now has its final time
                self._last_token_in(e.dst)
            else:
                if e.hops:
                    self._send(self.edge_id[id(e)], e, self.finish[i])
                self._input_in(e.dst)
            for f, chain_streamed in self._forwarded(e, self._streamed(e)):
                if chain_streamed:  # queued when this kernel started, like ``e``'s consumer
                    self._last_token_in(f.dst)
                    continue
                # a copy leaves whole once what it copies has arrived whole
                if f.hops:
                    self._push(self._first_out(f), SEND, self.edge_id[id(f)])
                self._input_in(f.dst)

    def _on_ready(self, key: float, i: int) -> None:
        """A kernel whose inputs are in (streamed ones: starting to come) starts: a DMA transfer takes a
        channel of its tile, any other kernel joins its tile's round-robin."""
        nd = self.nodes[i]
        ready, f_at = self._ready_time(i)
        if ready > key + 1e-9:  # an input arrives later than when this was queued
            self._push(ready, READY, i)
            return
        if nd.cost.tile_kind == "dma" or nd.cost.kind in DMA_KERNEL_KINDS:
            if not self._take_channel(key, i):
                return
        else:
            self.tiles[self.tile_of[i]].add(i, key, nd.cost.cycles, min(nd.steps, MAX_STEPS), nd.cost.fill,
                                            nd.position)  # fmt: skip
            self.finish[i] = max(self.finish[i], f_at)
            self._push(self.finish[i], DONE, i)
        self.start[i] = key
        self._release_streams(i, key)

    def _take_channel(self, key: float, i: int) -> bool:
        """A DMA transfer takes a free channel of its tile; else a transfer of several steps takes turns
        with one of several steps (the tile's round-robin), and a one-step transfer waits for a channel
        of its own. False when it waits (queued again)."""
        nd = self.nodes[i]
        mine = [ch for ch in self.free if ch[0] == self.tile_of[i]]
        ch = min(mine, key=lambda c: (self.free[c], c))
        multi = min(nd.steps, MAX_STEPS) > 1
        if self.free[ch] > key + 1e-9:
            turns = [c for c in mine if self.shared[c]] if multi else []
            if not turns:
                self._push(self.free[ch], READY, i)
                return False
            # its first step waits for the end of a step of the transfer it takes turns with (the
            # first, which holds the channel through the DRAM latency)
            ch = min(turns, key=lambda c: (max(self.first_step[c], key), c))
            if self.first_step[ch] > key + 1e-9:
                self._push(self.first_step[ch], READY, i)
                return False
        else:
            self.shared[ch] = multi
            share = self.dram_bw / max(len(mine), 1)
            moved = nd.cost.dram_read_bytes + nd.cost.dram_write_bytes
            self.first_step[ch] = key + self.latency + moved / max(min(nd.steps, MAX_STEPS), 1) / share
        self.channel_of[i] = ch
        self.free[ch] = max(self.free[ch], key + self.latency)
        self.finish[i] = key + self.latency
        self._push(key + self.latency, JOIN, i)
        return True

    def _release_streams(self, i: int, s: float) -> None:
        """A streaming consumer may start while kernel ``i`` (started at ``s``) runs, and so may the
        consumers of the copies it forwards as the stream arrives."""
        for e in self.out_edges[i]:
            if e.via is not None or not self._streamed(e):
                continue
            for f in [e] + [f for f, chain_streamed in self._forwarded(e, True) if chain_streamed]:
                if f.hops:
                    self._push(self._first_out(f), SEND, self.edge_id[id(f)])
                self._input_in(f.dst, not_before=s)

    def _input_in(self, dst: int, not_before: float | None = None) -> None:
        """One more input of ``dst`` is in (or streaming); with the last one ``dst`` is queued as ready."""
        self.missing[dst] -= 1
        if self.missing[dst] == 0:
            ready = self._ready_time(dst)[0]
            self._push(ready if not_before is None else max(ready, not_before), READY, dst)
            self.missing[dst] = -1  # queued

    def _last_token_in(self, dst: int) -> None:
        """A streamed input's last token has its final time: a queued consumer's finish waits for it."""
        if self.missing[dst] < 0:
            self.finish[dst] = max(self.finish[dst], self._ready_time(dst)[1])

    # -----------------------------------------------------------------------
    # when data leaves and arrives

    @staticmethod
    def _streamed(e: Edge) -> bool:
        return e.tokens > 1 and not e.weight

    @staticmethod
    def _copied(e: Edge, need: int) -> int:
        """Tokens of the input a forwarded copy needs for ``need`` of its own: ⌊r·T/R⌋ of its T go on
        once r of the input's R have."""
        v = e.via
        return min(v.tokens, -(-need * v.tokens // max(e.tokens, 1)))

    def _left(self, e: Edge, need: int) -> float:
        """When ``need`` of the stream's tokens have left their producer (joined the links): evenly
        over the producer's steps after its DMA latency or fill; a forwarded copy as the input it copies
        leaves its own producer (cut-through: the copy streams on as the input comes in)."""
        if e.via is not None:
            return self._left(e.via, self._copied(e, need))
        p = self.nodes[e.src]
        steps = min(p.steps, MAX_STEPS)
        step = min(steps, -(-need * steps // e.tokens))  # the producer step after which they are out
        start, finish = self.start[e.src], self.finish[e.src]
        lead = min(p.lead, finish - start)
        return start + lead + step / steps * (finish - start - lead)

    def _first_out(self, e: Edge) -> float:
        """When a streaming producer emits its first tokens (all of them, if it runs one step)."""
        return self._left(e, 1)

    def _gate(self, e: Edge, need: int) -> float:
        """A forwarded copy over a route (even one of no links) is delivered no earlier than the input it
        copies has arrived (0 otherwise; a consumer without a route reads the buffer at once)."""
        if e.via is None or not e.routed:
            return 0.0
        v = e.via
        arrived = self._tokens_in(v, self._copied(e, need)) if self._streamed(v) else self._arrival(v)
        return arrived + e.hops * self.hop

    def _arrival(self, e: Edge) -> float:
        """When a one-token input has arrived whole."""
        done = self._left(e, e.tokens)
        if not e.hops:
            return max(done, self._gate(e, e.tokens))  # same tile: a buffer read
        links_done = self.sent[self.edge_id[id(e)]]
        if not links_done:  # not sent yet: as if alone on its links
            return max(done + e.bytes / self.link_bw + e.hops * self.hop, self._gate(e, e.tokens))
        return max(max(links_done.values()) + e.hops * self.hop, self._gate(e, e.tokens))

    def _tokens_in(self, e: Edge, need: int) -> float:
        """When ``need`` of a streamed input's tokens have reached the consumer: each step's (or input
        batch's) share crosses the links as one transfer, in order behind the ones before it."""
        if e.via is not None:
            batches = max(1, min(e.tokens, e.via.tokens if self._streamed(e.via) else 1))
        else:
            batches = min(self.nodes[e.src].steps, MAX_STEPS)
        step = min(batches, -(-need * batches // e.tokens))
        out = self._left(e, need)
        if not e.hops:
            return max(out, self._gate(e, need))
        out += e.bytes / min(batches, e.tokens) / self.link_bw + e.hops * self.hop
        k = self.edge_id[id(e)]
        if self.sent[k]:
            # the stream's bytes share their links with whatever else crosses them from its first
            # tokens on (``span`` cycles in all); its batches go one after the other (a FIFO per
            # route), so the first f of them are through once f of the span has passed
            span = max(self.sent[k].values()) - self.sent_at[k]
            out = max(out, self.sent_at[k] + step / batches * span + e.hops * self.hop)
        return max(out, self._gate(e, need))

    @staticmethod
    def _needs(nd: Node, tokens: int, segments: int) -> list[int]:
        """Tokens of an input each segment needs to have arrived: its share, or with a ("repeat", P)
        loop the share the steps up to the segment's end read, a repeated pass reading nothing new."""
        if nd.repeat is None:
            return [-(-(i + 1) * tokens // segments) for i in range(segments)]
        outer, passes, inner = nd.repeat
        total = outer * passes * inner
        out = []
        for i in range(segments):
            o, rem = divmod(min(total, -(-(i + 1) * total // segments)), passes * inner)
            out.append(-(-(o * inner + min(rem, inner)) * tokens // max(outer * inner, 1)))
        return out

    def _held_back(self, nd: Node, e: Edge, need: list[int]) -> float:
        """Cycles a consumer waits, over its run, for a source its buffers hold back: the source runs at
        most ``depth`` tokens ahead of what the consumer's finished steps released (the simulator's
        depth: two of the source's bursts plus the consumer's largest step share, or what fits in the
        consumer's buffers), so what a step needs beyond that is fetched only once the step before it
        has ended (at the pace the source gets from DRAM, or the link's if slower)."""
        while e.via is not None:  # a copy comes at the pace its chain's source is held to
            e = e.via
            nd = self.nodes[e.dst]
            need = self._needs(nd, e.tokens, min(nd.steps, MAX_STEPS))
        src = self.nodes[e.src]
        dma = src.cost.tile_kind == "dma" or src.cost.kind in DMA_KERNEL_KINDS
        if not src.throttled or not (dma or src.cost.tile_kind == "memory"):
            # a held-back compute producer keeps computing into its output buffer while the consumer frees
            # room, and the consumer already waits for its compute (``_tokens_in``): no prefetch is lost
            return 0.0
        src_steps = min(src.steps, MAX_STEPS)
        burst = -(-e.tokens // src_steps)
        chunk = max(b - a for a, b in zip([0, *need], need))
        token_bytes = e.bytes / e.tokens
        inputs = max(len(nd.ins), 1)  # the inputs that share the consumer's buffer room
        fit = int(nd.room / inputs // token_bytes) if token_bytes > 0 else 0
        depth = max(2 * burst + chunk - 1, fit)
        # the source runs whole steps of e.tokens / src_steps tokens: it sends as far as the allowance goes and
        # holds one step more in its own output buffer, so a step that needs more waits for the next steps
        grain = e.tokens / src_steps
        late = 0.0
        for j in range(1, len(need)):
            allowed = math.floor(((need[j - 2] if j >= 2 else 0) + depth) / grain + 1e-9) * grain + grain
            late += max(0.0, math.ceil(need[j] / grain - 1e-9) * grain - allowed)
        if not late:
            return 0.0
        per_token = token_bytes / self.link_bw if e.hops else 0.0
        if dma:
            # at the pace the transfer gets from DRAM (its share while it runs)
            start, finish = self.start[e.src], self.finish[e.src]
            lead = min(src.lead, finish - start)
            per_token = max(per_token, (finish - start - lead) / e.tokens)
        return late * per_token

    def _ready_time(self, i: int) -> tuple[float, float]:
        """(earliest start, earliest finish regardless of the tile) from the inputs."""
        nd = self.nodes[i]
        s_at, f_at = 0.0, 0.0
        steps = min(nd.steps, MAX_STEPS)
        for e in nd.ins:
            if not self._streamed(e):
                s_at = max(s_at, self._arrival(e))
                continue
            # a step needs its share of the tokens; the steps from the first that needs them all on
            # wait for the last
            need = self._needs(nd, e.tokens, steps)
            first = self._tokens_in(e, need[0])
            s_at = max(s_at, first)
            if steps > 1:
                per_step = (nd.cost.cycles - nd.cost.fill) / steps
                whole = next((j for j, n in enumerate(need) if n >= e.tokens), steps - 1)
                f_at = max(f_at, self._tokens_in(e, e.tokens) + (steps - whole) * per_step)
                f_at = max(f_at, first + nd.cost.cycles + self._held_back(nd, e, need))
        return s_at, f_at

    def _send(self, k: int, e: Edge, t: float) -> None:
        """The bytes of edge ``k`` join the links of its route at ``t``."""
        self.sent_at[k] = t
        for lk in e.links:
            res = self.links.setdefault(lk, _Shared({}, self.link_bw))  # its finishes are keyed by edge
            res.add(k, t, e.bytes)
            for other in res.jobs:  # every transfer still on this link may have been pushed back
                self.sent[other][lk] = res.finish[other]

    def _forwarded(self, e: Edge, chain_streamed: bool):
        """The copies of ``e``, of their copies, ...: (copy, whether it and every edge it copies stream)."""
        for f in self.copies.get(id(e), []):
            ok = chain_streamed and self._streamed(f)
            yield f, ok
            yield from self._forwarded(f, ok)

    # -----------------------------------------------------------------------
    # the result

    def _bounds(self) -> dict[str, float]:
        """The latest finish, and the lower bounds from DRAM, the busiest link and the busiest tile."""
        load: dict = {}
        for nd in self.nodes:
            for e in nd.ins:
                for lk in e.links:
                    load[lk] = load.get(lk, 0) + e.bytes
        busy: dict = {}
        for i, nd in enumerate(self.nodes):
            if nd.cost.tile_kind != "dma":
                busy[self.tile_of[i]] = busy.get(self.tile_of[i], 0) + nd.cost.cycles
        dram_bytes = sum(nd.cost.dram_read_bytes + nd.cost.dram_write_bytes for nd in self.nodes)
        return {
            "critical_path": max(self.finish, default=0.0),
            "dram": (self.latency + dram_bytes / self.dram_bw) if dram_bytes else 0.0,
            "link": max(load.values(), default=0) / self.link_bw,
            "tile": float(max(busy.values(), default=0)),
        }

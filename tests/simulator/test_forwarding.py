"""Streams that are a copy of an input (K/V forwarded along a chain of fused kernels) leave as the
input arrives; a ("repeat", P) context reads its input in the first pass only. Hand-built bitstreams on
``tiny`` (16 B/cycle links, 1 cycle per hop)."""

from __future__ import annotations

from attnc.backend.bitstream import Buffer, Instr
from attnc.simulator.timing import simulate

from test_dma import N, kernel, make, port, route

T = 16  # tokens per stream


def slow(kid, name, in_stream, out_stream, fwd_stream=None, work=4096):
    """A context doing ``work`` lane operations per run over T steps; with ``fwd_stream`` it also passes
    its input on unchanged (a reshape of the input register)."""
    body = [Instr("exp", [0], [1], {"dtype": "f32", "shape": [work]})]
    outputs = [port(1, out_stream, n=work, tokens=T)]
    if fwd_stream is not None:
        body.append(Instr("reshape", [0], [2], {"dtype": "f32", "shape": [N]}))
        outputs.append(port(2, fwd_stream, tokens=T))
    k = kernel(kid, name, "elementwise", [port(0, in_stream, tokens=T)], outputs, body, (("steps", T),))
    k.buffers = [Buffer("in", 0, 2 * 4 * N // T, 1, True)]  # two tokens of its input: one worked on, one arriving
    return k


def chain(forward: bool):
    """source (1,1) -> a (2,1) -> b (2,2): b's input is a's forwarded copy of the source's stream."""
    src = kernel(0, "src", "elementwise", [], [port(0, 1, tokens=T)],
                 [Instr("constant", [], [0], {"dtype": "f32", "shape": [N], "constant": 0})], (("steps", T),))
    a = slow(1, "a", 1, 10, fwd_stream=2 if forward else None)
    if not forward:  # the copy leaves with a's results instead: a second output fed by the exp
        a.outputs.append(port(1, 2, n=4096, tokens=T))
    b = slow(2, "b", 2, 11)
    return make({(1, 1): [src], (2, 1): [a], (2, 2): [b]},
                [route(1, 0, 1, [(1, 1), (2, 1)]), route(2, 1, 2, [(2, 1), (2, 2)], nbytes=4 * N)])


def test_a_forwarded_copy_leaves_as_it_arrives_not_as_the_kernel_computes():
    fwd, computed = simulate(chain(True)), simulate(chain(False))
    a_end = next(k.end for k in fwd.kernels if k.name == "a")
    b = next(k for k in fwd.kernels if k.name == "b")
    # b overlaps a almost entirely: it starts as soon as the first forwarded tokens arrive
    assert b.start < a_end / T * 2
    assert fwd.cycles < computed.cycles
    b_late = next(k for k in computed.kernels if k.name == "b")
    assert b_late.start >= a_end / T  # without forwarding b waits for a's first step at least


def test_a_repeating_context_reads_its_input_once_per_outer_step():
    # a memory-tile stage: 2 units x 4 passes x 2 blocks; its consumer needs all 16 of its tokens
    from attnc.simulator.timing import _repeat_share

    share = _repeat_share([("unit", 2), ("repeat", 4), ("block", 2)], 16)
    # steps 1-2 read the first unit's two blocks, steps 3-8 re-send them, step 9 starts the second unit
    assert [share(i) for i in range(16)] == [(1, 4), (2, 4)] + [(2, 4)] * 6 + [(3, 4), (4, 4)] + [(4, 4)] * 6

"""The functional simulator: every example and a few PyTorch-exported models give what the reference
interpreter gives; it imports no compiler module; bad bitstreams and bad inputs are one clear error;
random corruption of a bitstream never escapes as anything but AttncError."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnc.backend import bitstream as bsm
from attnc.pipeline import compile_to_bitstream
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.pipeline import DEFAULT_PIPELINE, run_pipeline
from attnc.simulator import functional, ops
from attnc.simulator.functional import run
from attnc.simulator.io import compare, random_inputs

EXAMPLES = Path(__file__).parents[2] / "examples"
#: where the greedy placement maps each example (causal_decoder's weight streams need CP-SAT on
#: edge for ~10 s; on cloud the heuristic maps it at once)
ARCH = {"attention23": "edge", "bert_layer": "edge", "gqa_block": "edge", "causal_decoder": "cloud"}


def build(module, arch: str) -> tuple[dict[str, np.ndarray] | None, bytes]:
    """(nothing, encoded bitstream) of an imported module after the default pipeline."""
    run_pipeline(module, DEFAULT_PIPELINE)
    return module, compile_to_bitstream(module, arch, heuristic_only=True)[0]


_CACHE: dict[str, tuple] = {}


def example(name: str, pipeline: str = DEFAULT_PIPELINE):
    """(reference outputs on the sparse IR, encoded bitstream, inputs) of an example."""
    if (name, pipeline) not in _CACHE:
        module = import_onnx(EXAMPLES / f"{name}.onnx")
        run_pipeline(module, pipeline)
        inputs = dict(np.load(EXAMPLES / f"{name}.inputs.npz"))
        reference = interpret(module, inputs)
        data, _ = compile_to_bitstream(module, ARCH[name], heuristic_only=True)
        _CACHE[name, pipeline] = (reference, data, inputs)
    return _CACHE[name, pipeline]


def assert_close(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for row in compare(got, want):
        assert row.ok, f"{row.name}: max abs {row.max_abs}, max rel {row.max_rel}"
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape


@pytest.mark.parametrize("name", sorted(ARCH))
def test_examples_match_the_reference_interpreter(name):
    reference, data, inputs = example(name)
    got = run(bsm.decode(data), inputs)
    assert_close(got, reference)


def test_outputs_go_through_dram_and_random_inputs_work():
    _, data, _ = example("bert_layer")
    b = bsm.decode(data)
    inputs = random_inputs(b, seed=3)
    module = import_onnx(EXAMPLES / "bert_layer.onnx")
    run_pipeline(module, DEFAULT_PIPELINE)
    assert_close(run(b, inputs), interpret(module, inputs))


def test_torch_exported_models_match():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    sys.path.insert(0, str(Path(__file__).parents[1] / "frontend"))
    try:
        from test_torch_export import MODELS, EXPORTERS  # the suite's own models
    finally:
        sys.path.pop(0)
    from attnc.frontend.torch import export_onnx, import_onnx_and_raise

    for model, exporter in [("bert", "torchscript-17"), ("gqa", "torchscript-18")]:
        factory, make_inputs, _ = MODELS[model]
        torch.manual_seed(0)
        mod = factory().eval()
        args = make_inputs()
        dynamo, opset = EXPORTERS[exporter]
        module = import_onnx_and_raise(export_onnx(mod, args, dynamo=dynamo, opset=opset), model)
        from attnc.ir import io_names, main_func

        names, _ = io_names(main_func(module))
        inputs = {n: a.numpy() for n, a in zip(names, args)}
        reference = interpret(module, inputs)
        data, _ = compile_to_bitstream(module, "cloud", heuristic_only=True)
        assert_close(run(bsm.decode(data), inputs), reference)


def test_the_simulator_imports_no_compiler_module(tmp_path):
    _, data, inputs = example("attention23")
    (tmp_path / "a.bit").write_bytes(data)
    np.savez(tmp_path / "in.npz", **inputs)
    code = f"""
import sys, json, numpy as np
from attnc.backend import bitstream
from attnc.simulator import functional, io, ops
bs = bitstream.read({str(tmp_path / 'a.bit')!r})
out = functional.run(bs, io.load_npz({str(tmp_path / 'in.npz')!r}))
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("attnc", "xdsl", "onnx", "torch")))))
"""
    mods = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    forbidden = ("attnc.interpreter", "attnc.dialects", "attnc.passes", "attnc.frontend", "attnc.pipeline",
                 "attnc.ir", "attnc.cost", "attnc.cli", "attnc.backend.emit", "xdsl", "onnx", "torch")  # fmt: skip
    assert not [m for m in mods if m.startswith(forbidden)], mods


# ---------------------------------------------------------------------------
# the pieces


def test_dtypes_and_payloads_round_trip():
    x = np.array([1.0, -2.5, 3.140625, np.inf], np.float32)
    assert np.array_equal(ops.from_bytes(ops.to_bytes(x, "bf16"), "bf16", [4]), ops.round_bf16(x))
    assert len(ops.to_bytes(x, "bf16")) == 8
    b = np.array([True, False, True])
    assert ops.to_bytes(b, "i1") == b"\x01\x00\x01"
    assert ops.from_bytes(b"\x01\x00\x02", "i1", [3]).tolist() == [True, False, True]
    assert ops.np_dtype("ui8") == np.uint8 and ops.np_dtype("si32") == np.int32 and ops.np_dtype("i64") == np.int64
    with pytest.raises(AttncError, match="dtype 'f8'"):
        ops.np_dtype("f8")


def test_strided_dram_access():
    dram = functional.Dram(64)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    dram.write(0, x, "f32", [2, 3], [3, 1], "t")
    assert np.array_equal(dram.read(0, "f32", [3, 2], [1, 3], "t"), x.T)  # a transposing descriptor
    assert np.array_equal(dram.read(20, "f32", [3], [-1], "t"), np.array([5, 4, 3], np.float32))
    with pytest.raises(AttncError, match="outside DRAM"):
        dram.read(60, "f32", [2], [1], "t")


def test_attention_opcode_matches_the_interpreter_semantics():
    from attnc.interpreter import attention as reference_attention

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 5, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 7, 8)).astype(np.float32) for _ in range(2))
    mask = rng.random((5, 7)) < 0.7
    for kw in [dict(scale=0.3, causal=True, causal_offset=2, softcap=0.0), dict(scale=0.3, causal=False, causal_offset=0, softcap=5.0)]:
        want = reference_attention(q, k, v, mask, **kw)
        params = {"dtype": "f32", "shape": [1, 4, 5, 8], "scale": kw["scale"], "causal_offset": kw["causal_offset"],
                  "softcap": kw["softcap"], **({"causal": 1} if kw["causal"] else {})}  # fmt: skip
        np.testing.assert_allclose(ops.execute("attention", [q, k, v, mask], params), want, rtol=1e-6, atol=1e-6)


def test_f16_attention_opcode_equals_the_interpreter_bit_for_bit():
    # one rule on both sides: f32 scores, statistics and output, one rounding (flat and online alike)
    from attnc.interpreter import attention as reference_attention

    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 4, 5, 8)).astype(np.float16)
    k, v = (rng.standard_normal((1, 2, 40, 8)).astype(np.float16) for _ in range(2))
    mask = rng.random((5, 40)) < 0.7
    base = {"dtype": "f16", "shape": [1, 4, 5, 8], "scale": 0.3, "causal": 1, "causal_offset": 2}
    for extra, key_block in (({}, 0), ({"fusion": "online", "key_block": 7}, 7)):
        want = reference_attention(q, k, v, mask, scale=0.3, causal=True, causal_offset=2, key_block=key_block)
        np.testing.assert_array_equal(ops.execute("attention", [q, k, v, mask], {**base, **extra}), want.astype(np.float16))


UNFUSED = """func.func @main(%q: tensor<1x2x8x8xf16>, %k: tensor<1x2x64x8xf16>, %v: tensor<1x2x64x8xf16>) -> (tensor<1x2x8x8xf16>) {
  %r = sparse.attention %q, %k, %v {scale = 0.35355339059327373 : f64, heads = 2 : i64, kv_heads = 2 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64} : tensor<1x2x8x8xf16>, tensor<1x2x64x8xf16>, tensor<1x2x64x8xf16> -> tensor<1x2x8x8xf16>
  func.return %r : tensor<1x2x8x8xf16>
}"""


def test_a_context_holds_f16_in_f32_and_rounds_at_its_ports():
    # unfused f16 attention: the QKᵀ kernel scales its f32 accumulator and runs the softmax on it in f32 (its
    # epilogue: the scores never leave the kernel), rounding once as the probabilities leave it; the PV kernel
    # accumulates in f32
    from attnc.ir import main_func, parse_module, set_io_names
    from attnc.pipeline import backend_passes

    module = parse_module(UNFUSED)
    set_io_names(main_func(module), ["q", "k", "v"], ["y"])
    run_pipeline(module, "canonicalize,fuse-attention{mode=unfused}")
    lowered = module.clone()
    run_pipeline(lowered, [p for p in backend_passes("tiny") if p.name != "place-route"])
    data, _ = compile_to_bitstream(module, "tiny", heuristic_only=True)
    rng = np.random.default_rng(0)
    x = {n: rng.standard_normal(s).astype(np.float16) for n, s in (("q", (1, 2, 8, 8)), ("k", (1, 2, 64, 8)), ("v", (1, 2, 64, 8)))}
    got = run(bsm.decode(data), x)["y"]
    np.testing.assert_array_equal(got, interpret(lowered, x)["y"])  # the oracle on the kernels, bit for bit
    f32 = np.float32
    q, k, v = (x[n].astype(f32) for n in "qkv")
    scores = (q @ np.swapaxes(k, -1, -2)) * f32(np.float16(0.35355339059327373))
    scores = scores + np.where(np.arange(64)[None] <= np.arange(8)[:, None], 0, -np.inf).astype(f32)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    p = (e / e.sum(-1, keepdims=True)).astype(np.float16).astype(f32)
    np.testing.assert_array_equal(got, (p @ v).astype(np.float16))
    # rounding the scores to f16 between QKᵀ and the softmax (a spilled score matrix) gives other probabilities
    spilled = scores.astype(np.float16).astype(f32)
    e = np.exp(spilled - spilled.max(-1, keepdims=True))
    assert not np.array_equal((e / e.sum(-1, keepdims=True)).astype(np.float16).astype(f32), p)


# ---------------------------------------------------------------------------
# errors


def test_bad_inputs_are_one_error_naming_the_key():
    _, data, inputs = example("bert_layer")
    b = bsm.decode(data)
    with pytest.raises(AttncError, match="missing input 'attention_mask'"):
        run(b, {"hidden_states": inputs["hidden_states"]})
    with pytest.raises(AttncError, match="unknown input.*'extra'"):
        run(b, {**inputs, "extra": np.zeros(1)})
    with pytest.raises(AttncError, match=r"'hidden_states' has shape \[16, 64\]"):
        run(b, {**inputs, "hidden_states": inputs["hidden_states"][0]})
    with pytest.raises(AttncError, match="'hidden_states' has dtype float64"):
        run(b, {**inputs, "hidden_states": inputs["hidden_states"].astype(np.float64)})


def _ctx(b, name):
    return next(c for t in b.tiles for c in t.contexts if c.name == name)


def test_broken_dataflow_is_one_error():
    # the attention lowered per head (no fuse-attention): QK, softmax and PV kernels to break
    _, data, inputs = example("attention23", "canonicalize,raise-attention")
    b = bsm.decode(data)
    cyc = copy.deepcopy(b)
    # make the first QK kernel also read the softmax's output: a cycle
    qk, sm = _ctx(cyc, "attn0_b0h0_qk"), _ctx(cyc, "attn0_b0h0_softmax")
    qk.inputs.append(bsm.Port(len(qk.inputs), sm.outputs[0].stream, "f32", [16, 16], 1))
    with pytest.raises(AttncError, match="cycle"):
        run(cyc, inputs)
    orphan = copy.deepcopy(b)
    _ctx(orphan, "attn0_b0h0_softmax").inputs[0].stream = 999
    with pytest.raises(AttncError, match="stream 999, which no context produces"):
        run(orphan, inputs)
    bad_op = copy.deepcopy(b)
    _ctx(bad_op, "attn0_b0h0_qk").body[-1].opcode = "frobnicate"
    with pytest.raises(AttncError, match="attn0_b0h0_qk.*unknown opcode 'frobnicate'"):
        run(bad_op, inputs)
    bad_reg = copy.deepcopy(b)
    _ctx(bad_reg, "attn0_b0h0_qk").body[0].operands = [77]
    with pytest.raises(AttncError, match="r77 is read before it is written"):
        run(bad_reg, inputs)
    bad_shape = copy.deepcopy(b)
    _ctx(bad_shape, "attn0_b0h0_qk").body[-1].params["shape"] = [16, 17]
    with pytest.raises(AttncError, match="attn0_b0h0_qk"):
        run(bad_shape, inputs)
    no_dma = copy.deepcopy(b)
    no_dma.dma = [d for d in no_dma.dma if d.direction == "store"]
    with pytest.raises(AttncError, match="no DMA load descriptor"):
        run(no_dma, inputs)


# ---------------------------------------------------------------------------
# fuzzing: random corruption never escapes as anything but AttncError


def _sections(data: bytes) -> list[tuple[int, bytes]]:
    header = bsm.read_header(data)
    return [(s.kind, data[s.offset : s.offset + s.length]) for s in header.sections]


def _simulate_bytes(data: bytes, inputs) -> None:
    """What `attnc simulate` does with a file's bytes."""
    run(bsm.decode(data), inputs)


def test_fuzzed_bitstreams_give_only_attnc_errors(monkeypatch):
    # a tighter bound on values and DRAM than real runs: a corrupted shape must not allocate gigabytes
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", str(1 << 20))  # attnc.limits.TENSOR_BYTES, and the DRAM image
    _, data, inputs = example("attention23")
    fingerprint = bsm.read_header(data).fingerprint
    sections = _sections(data)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000):
        kind = i % 3
        if kind == 0:  # raw flips: the CRCs catch them
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            case = bytes(buf)
        elif kind == 1:  # truncation
            case = data[: rng.randrange(len(data))]
        else:  # flips inside one section with its CRC recomputed: the decoder and simulator see them
            j = rng.choice([n for n, (k, _) in enumerate(sections) if bsm.SECTION_KINDS[k] != "ARCH"])
            body = bytearray(sections[j][1])
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(len(body))
                if rng.random() < 0.5:
                    body[pos] ^= 1 << rng.randrange(8)
                else:
                    body[pos] = rng.choice([0, 1, 2, 0xFF, 0x7F, 16, 64])
            mutated = list(sections)
            mutated[j] = (sections[j][0], bytes(body))
            case = bsm._assemble(fingerprint, mutated)
        try:
            _simulate_bytes(case, inputs)
            outcomes["ok"] += 1
        except AttncError:
            outcomes["error"] += 1
    assert outcomes["error"] > 1500  # most corruptions are caught; the rest still simulate


def test_fuzzed_records_give_only_attnc_errors(monkeypatch):
    """Random edits of the decoded records (registers, streams, shapes, params) that still encode."""
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", str(1 << 20))  # attnc.limits.TENSOR_BYTES, and the DRAM image
    _, data, inputs = example("attention23")
    base = bsm.decode(data)
    rng = random.Random(99)
    values = [0, 1, 2, 3, 5, 16, 64, -1, 999]
    for _ in range(250):
        b = copy.deepcopy(base)
        ctx = rng.choice([c for t in b.tiles for c in t.contexts])
        what = rng.randrange(6)
        if what == 0 and ctx.body:
            rng.choice(ctx.body).operands = [rng.choice(values[:6]) for _ in range(rng.randint(0, 3))]
        elif what == 1 and ctx.body:
            ins = rng.choice(ctx.body)
            key = rng.choice(list(ins.params))
            ins.params[key] = rng.choice([0, -3, 2.5, "x", [1, 2], [16, 16], [0], [70000]])
        elif what == 2 and (ctx.inputs or ctx.outputs):
            rng.choice(ctx.inputs + ctx.outputs).stream = rng.choice(values[:6])
        elif what == 3 and b.dma:
            d = rng.choice(b.dma)
            d.dram_address = rng.choice([0, 1, 4096, 1 << 30])
            d.shape = rng.choice([d.shape, [16], [1, 4, 16, 17]])
        elif what == 4 and b.io:
            rng.choice(b.io).dtype = rng.choice(["f16", "i1", "bf16", "q7"])
        elif what == 5 and b.constants:
            rng.choice(b.constants).data = b"\x00" * rng.choice([0, 3, 4, 256])
        try:
            encoded = bsm.encode(b)
            _simulate_bytes(encoded, inputs)
        except AttncError:
            pass


def test_spills_of_one_stream_sharing_a_dma_tile_each_write_their_own_region():
    """An encoder layer compiled for an edge array with a single DMA tile: every spill shares it, and the
    attention's output is spilled once for FFN1 and once for the residual, two spills reading one stream. Each
    writes through its own store descriptor; when both took the first one (matching by stream alone) the
    second read its region back unwritten and the layer was 0.57 from the interpreter."""
    from example_script import load_make_examples

    from attnc.arch import parse_arch, preset_text

    text = preset_text("edge").replace("dma:       {contexts: 4", "dma:       {contexts: 32")
    text = text.replace("  - D D D D D D\n  - S C", "  - D S S S S S\n  - S C").replace("  - D D D D D D\n", "  - S S S S S S\n")
    arch = parse_arch(text)
    assert len(arch.tiles_of("dma")) == 1
    model, inputs = load_make_examples().encoder(seq=128, hidden=128, heads=2, ffn=512, layers=1, half=True)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    want = interpret(module, inputs)
    bs = bsm.decode(compile_to_bitstream(module, arch, heuristic_only=True)[0])
    read_by_spills: dict[int, int] = {}
    for c in (c for t in bs.tiles for c in t.contexts if c.kind == "dma_spill"):
        for s in {p.stream for p in c.inputs}:
            read_by_spills[s] = read_by_spills.get(s, 0) + 1
    assert max(read_by_spills.values()) >= 2  # the case this test is about
    got = run(bs, inputs)
    for name, w in want.items():
        a, b = np.asarray(got[name], np.float64), np.asarray(w, np.float64)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-3


def test_stores_of_a_gemm_grids_row_blocks_each_write_their_region_of_the_output():
    """A GEMM grid's output leaves in one store per grid row (``dram_offset``): each store descriptor writes its
    row block at the output's address plus its offset, the descriptors tile the output exactly, and the output
    read back from DRAM is the interpreter's. Swapping two of the descriptors' addresses puts row blocks in each
    other's places, which the comparison sees."""
    from onnx import TensorProto, helper, numpy_helper

    seq, k, n = 512, 768, 768
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, n])], [w])  # fmt: skip
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    run_pipeline(module, DEFAULT_PIPELINE)
    inputs = {"x": rng.standard_normal((seq, k)).astype(np.float32)}
    want = interpret(module, inputs)
    bs = bsm.decode(compile_to_bitstream(module, "cloud", heuristic_only=True)[0])
    (y,) = [e for e in bs.io if e.direction == "output"]
    stores = sorted((d for d in bs.dma if d.direction == "store"), key=lambda d: d.dram_address)
    assert len(stores) > 1
    assert stores[0].dram_address == y.dram_address and sum(d.bytes for d in stores) == y.bytes
    assert all(b.dram_address == a.dram_address + a.bytes for a, b in zip(stores, stores[1:]))
    assert_close(run(bs, inputs), want)
    swapped = copy.deepcopy(bs)
    a, b = (d for d in swapped.dma if d.direction == "store" and d.dram_address in (stores[0].dram_address,
                                                                                    stores[1].dram_address))
    a.dram_address, b.dram_address = b.dram_address, a.dram_address
    assert not all(row.ok for row in compare(run(swapped, inputs), want))

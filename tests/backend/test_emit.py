"""Array IR -> bitstream: every example compiles, and the bitstream says what the IR says."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnc.arch import load_arch
from attnc.backend import bitstream as bs
from attnc.backend.emit import emit_bitstream
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.pipeline import run_pipeline

EXAMPLES = Path(__file__).parents[2] / "examples"
NAMES = ["attention23", "bert_layer", "causal_decoder", "gqa_block"]


#: the decoder's weight streams saturate links on edge: CP-SAT needs the default budget to
#: spread its DMA loads over DMA tiles (the greedy heuristic alone leaves a link over capacity)
TIME_LIMIT = {"causal_decoder": 10.0}


def compiled(name: str, arch: str = "edge"):
    # (tile and fuse-elementwise cut the GEMMs and the decoder's GELU into what edge's tiles hold: lowered
    # alone, its erf and mul kernels hold a [16, 256] activation whole, which placement refuses)
    module = import_onnx(EXAMPLES / f"{name}.onnx")
    limit = TIME_LIMIT.get(name, 2.0)
    run_pipeline(module, f"canonicalize,raise-attention,tile{{arch={arch}}},fuse-elementwise{{arch={arch}}},"
                         f"lower-to-dataflow{{arch={arch}}},place-route{{arch={arch} time-limit={limit}}}")  # fmt: skip
    return module, load_arch(arch)


@pytest.mark.parametrize("name", NAMES)
def test_examples_round_trip_through_the_bitstream(name):
    module, arch = compiled(name)
    b = emit_bitstream(module, arch, {"model": name})
    data = bs.encode(b)
    assert bs.decode(data, expect_arch=arch) == b
    assert bs.encode(b) == data  # deterministic
    kernels = [c for t in b.tiles for c in t.contexts]
    assert sorted(c.kernel for c in kernels) == list(range(len(kernels)))
    # every stream that crosses tiles has a route from its producer's tile to its consumer's
    where = {c.kernel: (t.x, t.y) for t in b.tiles for c in t.contexts}
    for r in b.routes:
        assert r.hops[0] == where[r.src_kernel] and r.hops[-1] == where[r.dst_kernel]
    # the I/O table matches the model; every DMA descriptor points inside DRAM data that exists
    model_io = {e.name for e in b.io}
    inputs = dict(np.load(EXAMPLES / f"{name}.inputs.npz"))
    assert set(inputs) <= model_io
    assert all(d.dram_address >= 0 and d.bytes > 0 for d in b.dma)


def test_weights_are_constants_with_their_exact_bytes():
    module, arch = compiled("bert_layer")
    b = emit_bitstream(module, arch)
    weights = [c for c in b.constants if c.shape == [64, 64]]
    assert len(weights) == 4 and all(len(c.data) == 64 * 64 * 4 for c in weights)
    loads = [d for d in b.dma if d.direction == "load" and d.shape == [64, 64]]
    addresses = sorted(d.dram_address for d in loads)
    top = max(e.dram_address + e.bytes for e in b.io)
    assert addresses[0] >= top and len(set(addresses)) == 4


def test_an_unplaced_module_or_another_arch_is_refused():
    module = import_onnx(EXAMPLES / "attention23.onnx")
    with pytest.raises(AttncError, match="run place-route first"):
        emit_bitstream(module, load_arch("edge"))
    module, _ = compiled("attention23", "edge")
    with pytest.raises(AttncError, match="placed for arch 'edge', not 'cloud'"):
        emit_bitstream(module, load_arch("cloud"))


def test_compile_and_inspect_on_the_command_line(tmp_path):
    out = tmp_path / "bert.bit"
    attnc = [str(Path(sys.executable).parent / "attnc")]
    r = subprocess.run(attnc + ["compile", str(EXAMPLES / "bert_layer.onnx"), "-o", str(out), "--arch", "edge",
                                "--time-limit", "2", "--report"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for fragment in ("tile kind", "compute", "links:", "solver:", "lower bound", "picture:"):
        assert fragment in r.stdout
    assert out.with_suffix(".svg").read_text().startswith("<?xml")
    r = subprocess.run(attnc + ["inspect", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"header", "arch", "meta", "tiles", "routes", "dma", "constants", "io"} <= set(doc)
    assert doc["meta"]["model"] == "bert_layer.onnx"


def test_weights_lie_above_the_spills_in_dram():
    # SRAM phases put spills and weight loads in one configuration: a weight written over a spill's region
    # would corrupt one of them (a BERT layer on cloud came out 0.44 off the reference interpreter)
    module = import_onnx(EXAMPLES / "gqa_block.onnx")
    run_pipeline(module, "canonicalize,raise-attention,fuse-attention,tile{arch=edge share-sram=on},"
                         "fuse-elementwise{arch=edge},lower-to-dataflow{arch=edge},place-route{arch=edge time-limit=2.0}")
    b = emit_bitstream(module, load_arch("edge"))
    assert any(c.kind == "dma_spill" for t in b.tiles for c in t.contexts) and b.constants
    regions = sorted({(d.dram_address, d.bytes) for d in b.dma} | {(e.dram_address, e.bytes) for e in b.io})
    assert all(a + n <= b_ for (a, n), (b_, _) in zip(regions, regions[1:]))
    inputs = dict(np.load(EXAMPLES / "gqa_block.inputs.npz"))
    from attnc.interpreter import interpret
    from attnc.simulator.functional import run

    ref = interpret(import_onnx(EXAMPLES / "gqa_block.onnx"), inputs)
    out = run(bs.decode(bs.encode(b)), inputs)
    for name, want in ref.items():
        np.testing.assert_allclose(out[name], want, rtol=1e-3, atol=1e-3)

"""Writes the seed cases of tests/fuzz/corpus/: the hostile inputs of issue 13, each with its sidecar.

    python tests/fuzz/make_corpus.py [CORPUS_DIR]

Sidecar keys (``<name>.json`` next to ``<name><ext>``): ``argv`` (placeholders as in fuzzlib), ``ext``,
``expect`` (verdicts allowed; default ok or clean), ``forbid`` (strings the output must not contain),
``require`` (strings stderr must contain), ``unchanged`` (the case file must be left as it was),
``npz_plain`` (the output npz's member names must be plain names, no path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import CORPUS, EXAMPLES, SMALL_MLIR, billion_laughs
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
vi = helper.make_tensor_value_info
FAST = ["--heuristic-only", "--time-limit", "2"]


def model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] = ()) -> bytes:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def i64(name: str, values: Any) -> Any:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def cases() -> dict[str, tuple[bytes | None, str, dict[str, Any]]]:
    a23 = ["{examples}/attention23.onnx"]
    out: dict[str, tuple[bytes | None, str, dict[str, Any]]] = {}

    def add(name: str, data: bytes | None, ext: str, argv: list[str], **extra: Any) -> None:
        out[name] = (data, ext, {"argv": argv, **extra})

    # 1. unbounded memory from small files
    laughs = billion_laughs(9, 9).encode()
    add("arch/billion-laughs", laughs, ".yaml", ["compile", *a23, "--arch", "{case}", "-o", "{tmp}/o.bit", *FAST],
        note="YAML alias chain expanding to 9^9 nodes")
    add("arch/laughs-unknown-datatype", billion_laughs(5, 9, "lol" * 20).encode(), ".yaml",
        ["compile", *a23, "--arch", "{case}", "-o", "{tmp}/o.bit", *FAST], note="a 3.85 MB repr in one message")
    bit = _a23_bit()
    if bit is not None:
        from attnc.backend import bitstream as B

        h = B.read_header(bit)
        secs = [(s.kind, laughs if s.name == "ARCH" else bit[s.offset: s.offset + s.length]) for s in h.sections]
        lb = B._assemble(h.fingerprint, secs)
        add("bitstream/laughs-inspect", lb, ".bit", ["inspect", "{case}"], note="billion laughs as embedded arch")
        add("bitstream/laughs-simulate", lb, ".bit", ["simulate", "{case}", "--timing-only"],
            note="billion laughs as embedded arch")
        bs = B.decode(bit)
        bs.io[0].shape = [1000, 1000, 1000]
        try:
            add("bitstream/io-shape-vs-bytes", B.encode(bs), ".bit", ["simulate", "{case}", "-o", "{tmp}/o.npz"],
                note="IO shape of 10^9 elements, byte count of the original")
        except B.BitstreamError:
            pass
    add("onnx/input-1e9", model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, [10**9])],
                                [vi("y", F, [10**9])]), ".onnx",
        ["interpret", "{case}", "-o", "{tmp}/o.npz"], note="random inputs from a declared 10^9-element shape")
    add("onnx/constant-of-shape-30000",
        model([helper.make_node("ConstantOfShape", ["s"], ["z"], value=helper.make_tensor("v", F, [1], [1.0])),
               helper.make_node("Add", ["x", "z"], ["y"])],
              [vi("x", F, [1])], [vi("y", F, [30000, 30000])], [i64("s", [30000, 30000])]), ".onnx",
        ["compile", "{case}", "-o", "{tmp}/o.mlir"], note="folding a 3.6 GB constant")
    add("onnx/range-6e8",
        model([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=F),
               helper.make_node("Add", ["x", "rf"], ["y"])],
              [vi("x", F, [1])], [vi("y", F, [600000000])], [i64("a", 0), i64("b", 600000000), i64("d", 1)]),
        ".onnx", ["compile", "{case}", "-o", "{tmp}/o.mlir"], note="folding Range(0, 6e8)")
    add("onnx/range-computed-bounds",
        model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "z"], ["n"], axis=0),
               helper.make_node("Range", ["z", "n", "o"], ["r"])],
              [vi("x", F, [600000000])], [vi("r", TensorProto.INT64, ["k"])], [i64("z", 0), i64("o", 1)]),
        ".onnx", ["interpret", "{case}", "-o", "{tmp}/o.npz"],
        note="Range whose bound comes from Shape->Gather; ONNX data propagation must not materialise it")
    add("onnx/matmul-1e9",
        model([helper.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", F, [10**9, 10**9]), vi("b", F, [10**9, 10**9])],
              [vi("y", F, [10**9, 10**9])]), ".onnx", ["compile", "{case}", "-o", "{tmp}/o.bit", *FAST],
        note="a 10^9 x 10^9 MatMul")
    # 3. internal errors
    add("mlir/negative-dim", SMALL_MLIR.replace("2x3xf32", "-2x3xf32").encode(), ".mlir",
        ["interpret", "{case}", "-o", "{tmp}/o.npz"])
    add("mlir/unknown-dim", SMALL_MLIR.replace("2x3xf32", "?x3xf32").encode(), ".mlir",
        ["compile", "{case}", "-o", "{tmp}/o.bit", *FAST])
    add("mlir/unknown-dim-interpret", SMALL_MLIR.replace("2x3xf32", "?x3xf32").encode(), ".mlir",
        ["interpret", "{case}", "-o", "{tmp}/o.npz"])
    add("mlir/nested-3000", ("builtin.module {" * 3000 + "}" * 3000 + "\n").encode(), ".mlir",
        ["opt", "{case}"], note="RecursionError")
    add("mlir/huge-dims", SMALL_MLIR.replace("2x3", "1000000000x1000000000").encode(), ".mlir",
        ["interpret", "{case}", "-o", "{tmp}/o.npz"], note="Maximum allowed dimension exceeded / MemoryError")
    pipe = "canonicalize,raise-attention,fuse-attention,tile{%s}"
    add("pipeline/tile-members-neg", None, "", ["compile", *a23, "-p", pipe % "members=-5", "-o", "{tmp}/o.mlir"])
    add("pipeline/tile-key-block-neg", None, "", ["compile", *a23, "-p", pipe % "key-block=-1", "-o", "{tmp}/o.mlir"])
    add("options/seed-negative", None, "", ["interpret", *a23, "-o", "{tmp}/o.npz", "--seed", "-1"])
    add("options/seed-1e23", None, "", ["interpret", *a23, "-o", "{tmp}/o.npz", "--seed", str(10**23)])
    add("options/simulate-seed-negative", None, "", ["simulate", "{a23bit}", "--timing-only", "--seed", "-1"])
    add("options/output-is-directory", None, "", ["compile", *a23, "-o", "{tmp}", *FAST], expect=["clean"])
    add("options/output-missing-parent", None, "", ["compile", *a23, "-o", "{tmp}/no/such/o.bit", *FAST],
        expect=["clean"])
    # 2. clobbered files
    add("onnx/interpret-onto-model", (EXAMPLES / "attention23.onnx").read_bytes(), ".onnx",
        ["interpret", "{case}", "-o", "{case}"], expect=["clean"], unchanged=True)
    add("npz/interpret-onto-inputs", (EXAMPLES / "attention23.inputs.npz").read_bytes(), ".npz",
        ["interpret", *a23, "--inputs", "{case}", "-o", "{case}"], expect=["clean"], unchanged=True)
    if bit is not None:
        for opt in ("-o", "--stats", "--trace"):
            add(f"bitstream/simulate-onto-self{opt.replace('-', '_')}", bit, ".bit",
                ["simulate", "{case}", opt, "{case}"], expect=["clean"], unchanged=True)
    # 6. smaller things
    for tag, name in (("newline", "n\nattnc: error: forged line"), ("bidi", "abc\u202edef")):
        for why, op, attrs in (("unsupported", "Hardmax", {}), ("shape-inference", "Transpose", {"perm": [5]})):
            add(f"onnx/node-name-{tag}-{why}", model([helper.make_node(op, ["x"], ["y"], name=name, **attrs)],
                                                    [vi("x", F, [2, 2])], [vi("y", F, [2, 2])]), ".onnx",
                ["compile", "{case}", "-o", "{tmp}/o.mlir"], expect=["clean"],
                note=f"a node name in the {why} message")
        add(f"onnx/input-name-{tag}", model([helper.make_node("Relu", [name], ["y"])],
                                           [vi(name, F, [2])], [vi("y", F, [2])]), ".onnx",
            ["interpret", "{case}", "--inputs", "{examples}/attention23.inputs.npz", "-o", "{tmp}/o.npz"],
            expect=["clean"])
    add("onnx/output-dotdot", model([helper.make_node("Relu", ["x"], ["../evil"])], [vi("x", F, [2])],
                                    [vi("../evil", F, [2])]), ".onnx",
        ["interpret", "{case}", "-o", "{tmp}/o.npz"], npz_plain=True)
    passwd = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    add("arch/size-400-digits", _preset_with("4 KiB", "9" * 400 + " KiB"), ".yaml",
        ["compile", *a23, "--arch", "{case}", "-o", "{tmp}/o.bit", *FAST], expect=["clean"],
        note="found by benchmarks/fuzz.py: OverflowError converting float infinity in arch size()")
    if bit is not None:
        add("bitstream/read-under-4gib-cap", bit, ".bit", ["inspect", "{case}"], expect=["ok"],
            env={"ATTNC_MAX_FILE_BYTES": ""},
            note="found by benchmarks/fuzz.py: reading any bitstream asks for a FILE_BYTES-sized buffer (4 GiB)")
    add("arch/passwd-like", passwd, ".yaml", ["compile", *a23, "--arch", "{case}", "-o", "{tmp}/o.bit", *FAST],
        expect=["clean"], forbid=["root:x:0", "/bin/bash", "nologin"])
    add("npz/not-a-zip", b"this is not a zip file at all\n" * 4, ".npz",
        ["interpret", *a23, "--inputs", "{case}", "-o", "{tmp}/o.npz"], expect=["clean"], forbid=["pickled"])
    add("options/time-limit-nan", None, "", ["compile", *a23, "-o", "{tmp}/o.bit", "--time-limit", "nan"],
        expect=["clean"], require=["--time-limit"])
    garbage = b"\x08\x07garbage that is not an onnx model"
    add("pipeline/fuse-attention-mode-bogus", garbage, ".onnx",
        ["compile", "{case}", "-p", "fuse-attention{mode=bogus}", "-o", "{tmp}/o.bit", *FAST],
        expect=["clean"], require=["-p/--pipeline"], note="pipeline options are checked before the import")
    add("pipeline/tile-arch-nosuch", garbage, ".onnx",
        ["compile", "{case}", "-p", "canonicalize,tile{arch=nosuch}", "-o", "{tmp}/o.mlir"],
        expect=["clean"], require=["-p/--pipeline"], note="pipeline options are checked before the import")
    return out


def _preset_with(old: str, new: str) -> bytes:
    from attnc.arch import preset_text

    return preset_text("tiny").replace(old, new, 1).encode()


def _a23_bit() -> bytes | None:
    import tempfile

    from fuzzlib import a23_bitstream

    with tempfile.TemporaryDirectory() as d:
        return a23_bitstream(Path(d)).read_bytes()


def main(corpus: Path) -> None:
    for name, (data, ext, side) in cases().items():
        kind, stem = name.split("/")
        d = corpus / kind
        d.mkdir(parents=True, exist_ok=True)
        if data is not None:
            (d / (stem + ext)).write_bytes(data)
        text = json.dumps({"kind": kind, "ext": ext, **side}, indent=1, ensure_ascii=True)
        (d / (stem + ".json")).write_text(text + "\n")
        print(f"{d / stem}{ext or '.json'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)

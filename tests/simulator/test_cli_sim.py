"""`attnc simulate` and `attnc run`: outputs, summaries, exit codes, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnc.cli import run
from cli_helpers import assert_user_error, call

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def bert_bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bit") / "bert.bit"
    assert run(["compile", str(EXAMPLES / "bert_layer.onnx"), "-o", str(path), "--heuristic-only"]) == 0
    return path


def test_simulate_writes_the_interpreters_outputs(bert_bit: Path, tmp_path: Path, capsys) -> None:
    inputs = EXAMPLES / "bert_layer.inputs.npz"
    code, out, err = call(capsys, "simulate", bert_bit, "--inputs", inputs, "-o", tmp_path / "sim.npz")
    assert code == 0, err
    from attnc.backend.bitstream import read

    bs = read(bert_bit)
    shape = f"{sum(len(t.contexts) for t in bs.tiles)} contexts on {len(bs.tiles)} tiles"
    assert shape in out and "output: float32[1, 16, 64]" in out
    assert call(capsys, "interpret", EXAMPLES / "bert_layer.onnx", "--inputs", inputs, "-o", tmp_path / "ref.npz")[0] == 0
    sim, ref = np.load(tmp_path / "sim.npz"), np.load(tmp_path / "ref.npz")
    assert sorted(sim.files) == sorted(ref.files) == ["output"]
    np.testing.assert_allclose(sim["output"], ref["output"], rtol=1e-4, atol=1e-5)


def test_simulate_without_inputs_uses_seeded_random_inputs(bert_bit: Path, capsys) -> None:
    code, out, err = call(capsys, "simulate", bert_bit)
    assert code == 0 and "random inputs (seed 0)" in err and "hidden_states [1, 16, 64] float32" in err
    again = call(capsys, "simulate", bert_bit)[1]
    assert again.split("outputs:")[1] == out.split("outputs:")[1]  # deterministic (wall times aside)


def test_simulate_errors(bert_bit: Path, tmp_path: Path, capsys) -> None:
    good = dict(np.load(EXAMPLES / "bert_layer.inputs.npz"))
    np.savez(tmp_path / "missing.npz", hidden_states=good["hidden_states"])
    assert_user_error(*call(capsys, "simulate", bert_bit, "--inputs", tmp_path / "missing.npz")[::2],
                      "missing.npz", "missing input 'attention_mask'")  # fmt: skip
    np.savez(tmp_path / "shape.npz", **{**good, "hidden_states": good["hidden_states"][0]})
    assert_user_error(*call(capsys, "simulate", bert_bit, "--inputs", tmp_path / "shape.npz")[::2],
                      "'hidden_states' has shape [16, 64]")  # fmt: skip
    np.savez(tmp_path / "dtype.npz", **{**good, "attention_mask": good["attention_mask"].astype(np.int64)})
    assert_user_error(*call(capsys, "simulate", bert_bit, "--inputs", tmp_path / "dtype.npz")[::2],
                      "'attention_mask' has dtype int64")  # fmt: skip
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert_user_error(*call(capsys, "simulate", bert_bit, "--inputs", tmp_path / "junk.npz")[::2], "cannot read as .npz")
    data = bert_bit.read_bytes()
    (tmp_path / "cut.bit").write_bytes(data[: len(data) // 2])
    assert_user_error(*call(capsys, "simulate", tmp_path / "cut.bit")[::2], "cut.bit")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x40
    (tmp_path / "flip.bit").write_bytes(bytes(flipped))
    assert_user_error(*call(capsys, "simulate", tmp_path / "flip.bit")[::2], "flip.bit")
    assert not (tmp_path / "out.npz").exists()


def test_run_compares_with_the_reference_and_onnxruntime(capsys) -> None:
    code, out, err = call(capsys, "run", EXAMPLES / "attention23.onnx", "--arch", "edge", "--heuristic-only",
                          "--inputs", EXAMPLES / "attention23.inputs.npz")  # fmt: skip
    assert code == 0, err
    assert "simulator vs reference interpreter:" in out and "Y: max abs" in out and "(ok," in out
    pytest.importorskip("onnxruntime")
    assert "simulator vs onnxruntime:" in out


def test_run_exits_1_when_the_simulator_disagrees(monkeypatch, capsys) -> None:
    from attnc.simulator import ops

    # a wrong softmax, whether the attention runs fused (one instruction) or as separate kernels
    for name in ("softmax", "attention"):
        monkeypatch.setitem(ops.OPS, name, lambda args, params, real=ops.OPS[name]: real(args, params) * 1.5)
    code, out, err = call(capsys, "run", EXAMPLES / "attention23.onnx", "--heuristic-only")
    assert code == 1 and "MISMATCH" in out and "disagrees with the reference" in err


def test_run_errors(tmp_path: Path, capsys) -> None:
    assert_user_error(*call(capsys, "run", EXAMPLES / "bert_layer.onnx", "--arch", "nowhere")[::2], "--arch 'nowhere'")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3, np.float32))
    assert_user_error(*call(capsys, "run", EXAMPLES / "bert_layer.onnx", "--inputs", tmp_path / "bad.npz")[::2],
                      "unknown input(s) 'x'")  # fmt: skip


def test_simulate_stats_trace_plot_and_timing_only(bert_bit: Path, tmp_path: Path, capsys) -> None:
    import json

    code, out, err = call(capsys, "simulate", bert_bit, "--stats", tmp_path / "s.json", "--trace", tmp_path / "t.json",
                          "--plot", tmp_path / "plots")  # fmt: skip
    assert code == 0, err
    assert "cycles = " in out and "energy" in out and "outputs:" in out
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["cycles"] > 0 and stats["tiles"] and stats["links"] and "energy_pj" in stats
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["heatmap.png", "timeline.png"]
    code, out, err = call(capsys, "simulate", bert_bit, "--timing-only", "--stats", tmp_path / "s2.json")
    assert code == 0 and "outputs:" not in out and "random inputs" not in err
    assert json.loads((tmp_path / "s2.json").read_text())["cycles"] == stats["cycles"]
    assert_user_error(*call(capsys, "simulate", bert_bit, "--timing-only", "-o", tmp_path / "o.npz")[::2], "--timing-only")


def test_run_prints_the_timing_figures(capsys) -> None:
    code, out, err = call(capsys, "run", EXAMPLES / "bert_layer.onnx", "--heuristic-only")
    assert code == 0, err
    for fragment in ("cycles = ", " us at ", "MHz", "energy", "utilisation", "DRAM"):
        assert fragment in out

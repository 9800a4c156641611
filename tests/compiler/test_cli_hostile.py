"""Hostile input at the command line (issue 13): outputs that would clobber inputs or special files,
option values out of range, npz keys from the model, one escaped and bounded error line, the same exit
status with --debug and ATTNC_DEBUG, resource exhaustion as a user error, and file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from attnc import cli, limits
from attnc.errors import AttncError
from cli_helpers import assert_user_error, call

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MODEL = """builtin.module {
  func.func @main(%x: tensor<2x3xf32> {attnc.name = "x"}) -> (tensor<2x3xf32> {attnc.name = "OUT"}) {
    %a = sparse.neg %x : tensor<2x3xf32> -> tensor<2x3xf32>
    func.return %a : tensor<2x3xf32>
  }
}
"""


def _model(tmp_path: Path, out_name: str = "y") -> Path:
    path = tmp_path / "m.mlir"
    path.write_text(MODEL.replace("OUT", out_name))
    return path


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model or a bitstream fails the test: the refusals must come before any work."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(cli, "load_model", boom)
    from attnc.backend import bitstream

    monkeypatch.setattr(bitstream, "read", boom)


def _no_temp_files(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# 1. clobbered files


def test_output_same_as_model_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    model = _model(tmp_path)
    before = model.read_bytes()
    code, _, err = call(capsys, "interpret", model, "-o", model)
    assert_user_error(code, err, "-o/--output", "same file as MODEL")
    code, _, err = call(capsys, "compile", model, "-o", model)
    assert_user_error(code, err, "-o/--output", "same file as MODEL")
    assert model.read_bytes() == before


def test_output_linked_to_an_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              no_work: None) -> None:  # fmt: skip
    model = _model(tmp_path)
    link = tmp_path / "link.mlir"
    link.symlink_to(model)
    code, _, err = call(capsys, "compile", model, "-o", link)
    assert_user_error(code, err, "same file as MODEL")
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros((2, 3), np.float32))
    hard = tmp_path / "hard.npz"
    os.link(inputs, hard)
    code, _, err = call(capsys, "interpret", model, "--inputs", inputs, "-o", hard)
    assert_user_error(code, err, "same file as --inputs")
    assert np.load(inputs)["x"].shape == (2, 3)


@pytest.mark.parametrize("option", ["-o", "--stats", "--trace"])
def test_simulate_outputs_onto_the_bitstream_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         no_work: None, option: str) -> None:  # fmt: skip
    bit = tmp_path / "x.bit"
    bit.write_bytes(b"not decoded: refused before")
    code, _, err = call(capsys, "simulate", bit, option, bit)
    assert_user_error(code, err, option, "same file as FILE.bit")
    assert bit.read_bytes() == b"not decoded: refused before"


def test_simulate_plot_dir_and_duplicate_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 no_work: None) -> None:  # fmt: skip
    bit = tmp_path / "timeline.png"
    bit.write_bytes(b"x")
    code, _, err = call(capsys, "simulate", bit, "--plot", tmp_path)
    assert_user_error(code, err, "--plot", "same file as FILE.bit")
    code, _, err = call(capsys, "simulate", bit, "--plot", bit)
    assert_user_error(code, err, "--plot", "is a file")
    code, _, err = call(capsys, "simulate", bit, "--stats", tmp_path / "a.json", "--trace", tmp_path / "a.json")
    assert_user_error(code, err, "--trace", "also the file of --stats")


def test_special_files_and_directories_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   no_work: None) -> None:  # fmt: skip
    model = _model(tmp_path)
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path)
    assert_user_error(code, err, "-o/--output", "is a directory")
    fifo = tmp_path / "out.npz"
    os.mkfifo(fifo)
    code, _, err = call(capsys, "interpret", model, "-o", fifo)
    assert_user_error(code, err, "-o/--output", "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    code, _, err = call(capsys, "interpret", model, "-o", os.devnull)
    assert_user_error(code, err, "not a regular file")


def test_missing_or_read_only_directory_is_refused_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   no_work: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = _model(tmp_path)
    code, _, err = call(capsys, "compile", model, "-o", tmp_path / "nosuch" / "out.bit")
    assert_user_error(code, err, "-o/--output", "does not exist")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    code, _, err = call(capsys, "compile", model, "-o", tmp_path / "out.bit")
    assert_user_error(code, err, "-o/--output", "not writable")
    code, _, err = call(capsys, "compile", model, "-o", tmp_path / "out.bit", "--dump-ir-after-all", tmp_path / "ir")
    assert_user_error(code, err, "not writable")


def test_dump_dir_would_overwrite_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    model = tmp_path / "00-input.mlir"
    model.write_text(MODEL.replace("OUT", "y"))
    code, _, err = call(capsys, "opt", model, "--dump-ir-after-all", tmp_path)
    assert_user_error(code, err, "--dump-ir-after-all", "same file as FILE")


def test_outputs_get_the_users_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path)
    old = os.umask(0o022)
    try:
        code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "out.npz")
        assert code == 0, err
        code, _, err = call(capsys, "opt", model, "-o", tmp_path / "out.mlir")
        assert code == 0, err
    finally:
        os.umask(old)
    for name in ("out.npz", "out.mlir"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    _no_temp_files(tmp_path)


# ---------------------------------------------------------------------------
# 2. option values, npz keys


@pytest.mark.parametrize("seed", ["-1", str(10**23), str(2**31)])
@pytest.mark.parametrize("command", ["compile", "interpret", "run"])
def test_seed_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None, command: str,
                           seed: str) -> None:  # fmt: skip
    model = _model(tmp_path)
    extra = ["-o", tmp_path / ("o.bit" if command == "compile" else "o.npz")] if command != "run" else []
    code, _, err = call(capsys, command, model, *extra, "--seed", seed)
    assert_user_error(code, err, "--seed")


def test_simulate_seed_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    bit = tmp_path / "x.bit"
    bit.write_bytes(b"x")
    code, _, err = call(capsys, "simulate", bit, "--seed", "-1")
    assert_user_error(code, err, "--seed")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e9"])
def test_time_limit_must_be_finite_and_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None,
                                                value: str) -> None:  # fmt: skip
    model = _model(tmp_path)
    code, _, err = call(capsys, "compile", model, "-o", tmp_path / "o.bit", "--time-limit", value)
    assert_user_error(code, err, "--time-limit")


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", ""])
def test_output_names_never_become_npz_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(AttncError, match="npz key"):
        cli.save_npz(str(tmp_path / "o.npz"), {name: np.zeros(2)})
    assert not (tmp_path / "o.npz").exists()
    _no_temp_files(tmp_path)


def test_npz_names_np_savez_cannot_take(tmp_path: Path) -> None:
    cli.save_npz(str(tmp_path / "o.npz"), {"file": np.ones(2), "x.y": np.zeros(3)})
    with np.load(tmp_path / "o.npz") as z:
        assert sorted(z.files) == ["file", "x.y"] and z["file"].tolist() == [1.0, 1.0]


def test_interpret_refuses_a_path_output_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path, "../evil")
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert_user_error(code, err, "'../evil'", "npz key")
    assert not (tmp_path / "o.npz").exists()
    assert not (tmp_path.parent / "evil.npy").exists()


# ---------------------------------------------------------------------------
# 3. --debug and ATTNC_DEBUG; 4. the error line


def _raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def load_model(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(cli, "load_model", load_model)


FAILURES = [
    AttncError("plain"),
    MemoryError(),
    RecursionError("maximum recursion depth exceeded"),
    ValueError("Maximum allowed dimension exceeded"),
    ZeroDivisionError("a bug"),
]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda e: type(e).__name__)
def test_debug_env_is_the_debug_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:  # fmt: skip
    model = _model(tmp_path)
    _raising(monkeypatch, exc)
    args = ["interpret", model, "-o", tmp_path / "o.npz"]
    plain, _, _ = call(capsys, *args)
    option, _, err_option = call(capsys, "--debug", *args)
    monkeypatch.setenv("ATTNC_DEBUG", "1")
    env, _, err_env = call(capsys, *args)
    assert plain == option == env == (1 if isinstance(exc, ZeroDivisionError) else 2)
    assert "Traceback" in err_option and "Traceback" in err_env
    assert err_option.splitlines()[-1] == err_env.splitlines()[-1]


def test_debug_with_an_unprintable_traceback_keeps_the_status(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = _model(tmp_path)
    _raising(monkeypatch, AttncError("x"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot print")

    monkeypatch.setattr(cli.traceback, "print_exc", broken)
    monkeypatch.setenv("ATTNC_DEBUG", "1")
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert code == 2 and err.splitlines()[-1] == "attnc: error: x"


@pytest.mark.parametrize("exc", FAILURES[1:4], ids=lambda e: type(e).__name__)
def test_resource_exhaustion_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:  # fmt: skip
    model = _model(tmp_path)
    _raising(monkeypatch, exc)
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert_user_error(code, err)
    assert "internal" not in err


def test_a_bug_is_still_an_internal_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = _model(tmp_path)
    _raising(monkeypatch, ZeroDivisionError("x\n" * 500))
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert code == 1 and err.count("\n") == 1 and len(err) <= limits.MESSAGE_CHARS + 1
    assert err.startswith("attnc: internal error: ZeroDivisionError") and err.rstrip().endswith("traceback)")


@pytest.mark.parametrize("hostile", ["a\nattnc: error: forged", "a\rb", "\x1b[31mred", "abc\u202eevil", "x" * 100_000])
def test_error_line_is_escaped_and_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, hostile: str) -> None:  # fmt: skip
    model = _model(tmp_path)
    _raising(monkeypatch, AttncError(f"node {hostile}: bad"))
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert_user_error(code, err)
    line = err[:-1]
    assert len(line) <= limits.MESSAGE_CHARS
    assert not any(c in line for c in "\r\x1b\u202e")
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz", "--seed", hostile)
    assert_user_error(code, err, "--seed")
    assert len(err) <= limits.MESSAGE_CHARS + 1 and not any(c in err[:-1] for c in "\r\x1b\u202e")


# ---------------------------------------------------------------------------
# 5. interrupts (the real SIGINT during CP-SAT is in test_cli_interrupt.py)


def test_interrupt_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = _model(tmp_path)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)  # Ctrl-C while the npz is half written
    code, _, err = call(capsys, "interpret", model, "-o", tmp_path / "o.npz")
    assert code == 130 and err.strip().endswith("attnc: interrupted")
    assert not (tmp_path / "o.npz").exists()
    _no_temp_files(tmp_path)


def test_atomic_output_removes_its_temp_file_on_interrupt(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), cli.atomic_output(str(tmp_path / "o.txt")) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_debug_after_the_command_is_the_debug_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    # `attnc interpret --debug ...` was a usage error (exit 2) where ATTNC_DEBUG=1 showed the bug (exit 1)
    model = _model(tmp_path)
    _raising(monkeypatch, ZeroDivisionError("a bug"))
    code, _, err = call(capsys, "interpret", model, "--debug", "-o", tmp_path / "o.npz")
    assert code == 1 and "Traceback" in err
    monkeypatch.setenv("ATTNC_DEBUG", "1")
    assert call(capsys, "interpret", model, "-o", tmp_path / "o.npz")[0] == 1

"""Hostile architecture files (issue 13): bounded time and memory, short messages that quote no file content."""

from __future__ import annotations

import pytest

from attnc.arch import load_arch, parse_arch, preset_text
from attnc.errors import AttncError


def laughs(depth: int, width: int = 9) -> str:
    """A "billion laughs" alias chain: width**depth nodes from a few hundred bytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_expansion():
    text = laughs(20)
    assert len(text) < 2000
    with pytest.raises(AttncError, match="ATTNC_MAX_ARCH_NODES") as e:
        parse_arch(text, source_name="laughs.yaml")
    assert len(str(e.value)) < 300


def test_alias_expansion_in_a_field_gives_a_short_message():
    # below the node limit, but the unknown-datatype message used to print the whole expanded value
    text = preset_text("tiny").replace("datatypes: [", "x: &x [" + ", ".join(["[a, b, c, d, e, f, g, h]"] * 8)
                                        + "]\ny: &y [" + ", ".join(["*x"] * 40) + "]\ndatatypes: [*y, ", 1)
    text = text.replace("\nx: &x", "\nzz_defs:\n  - &x").replace("\ny: &y", "\n  - &y")
    with pytest.raises(AttncError) as e:
        parse_arch(text, source_name="big.yaml")
    assert len(str(e.value)) < 300


def test_node_limit_is_overridable(monkeypatch):
    monkeypatch.setenv("ATTNC_MAX_ARCH_NODES", "50")
    with pytest.raises(AttncError, match="more than 50 nodes"):
        parse_arch(preset_text("edge"), source_name="edge.yaml")
    monkeypatch.delenv("ATTNC_MAX_ARCH_NODES")
    assert parse_arch(preset_text("edge")).name == "edge"


def test_recursive_alias_and_deep_nesting():
    with pytest.raises(AttncError, match="recursive"):
        parse_arch("a: &a [*a]\n")
    with pytest.raises(AttncError, match="nested too deeply"):
        parse_arch("[" * 5000 + "\n")


def test_file_size_checked_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "big.yaml"
    p.write_text(preset_text("tiny") + "#" * 5000 + "\n")
    monkeypatch.setenv("ATTNC_MAX_ARCH_BYTES", "4096")
    with pytest.raises(AttncError, match="ATTNC_MAX_ARCH_BYTES"):
        load_arch(str(p))


def test_non_arch_file_is_not_echoed(tmp_path):
    secret = "root:x:0:0:root:/root:/bin/bash-SECRET-TOKEN\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    p = tmp_path / "passwd"
    p.write_text(secret)
    with pytest.raises(AttncError, match="not an architecture description") as e:
        load_arch(str(p))
    assert "SECRET" not in str(e.value) and "bin/bash" not in str(e.value)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AttncError, match="not UTF-8") as e:
        load_arch(str(p))
    assert "garbage" not in str(e.value)


def test_untrusted_values_are_escaped_and_shortened():
    text = preset_text("tiny").replace("datatypes: [", "datatypes: ['\u202eevil\nattnc: error: forged" + "x" * 5000 + "', ", 1)
    with pytest.raises(AttncError) as e:
        parse_arch(text)
    msg = str(e.value)
    assert "\n" not in msg and "\u202e" not in msg and len(msg) < 300
    with pytest.raises(AttncError, match="cannot read a value|integer of"):
        parse_arch(preset_text("tiny").replace("clock_mhz:", "clock_mhz: " + "9" * 6000 + "\nold_clock:", 1))


def test_huge_size_string_is_a_clean_error():
    # found by fuzzing: '999...9 KiB' is float infinity (OverflowError in int())
    text = preset_text("tiny").replace("sram: 4 KiB", "sram: " + "9" * 400 + " KiB", 1)
    with pytest.raises(AttncError, match="must be at most"):
        parse_arch(text)

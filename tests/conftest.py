"""Shared pytest hooks and fixtures."""

from __future__ import annotations

import pytest

CONFORMANCE_MODULE = "test_onnx_conformance.py"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """One line with the ONNX conformance score (works with xdist: reports reach the controller)."""
    stats = terminalreporter.stats

    def count(key: str, reason: str | None = None) -> int:
        return sum(
            1
            for r in stats.get(key, [])
            if CONFORMANCE_MODULE in getattr(r, "nodeid", "")
            and getattr(r, "when", "call") in ("call", "setup")
            and (reason is None or reason in _skip_reason(r))
        )

    passed, failed = count("passed"), count("failed") + count("error")
    excluded = count("skipped", "exclude pattern")
    if passed or failed or excluded:
        terminalreporter.write_line(f"onnx conformance: {passed} passed, {failed} failed, {excluded} excluded")

"""Resource limits: how much attnc will allocate on behalf of an input file, checked before allocating.

A small file can declare a huge tensor, a YAML alias chain can expand without end, a bitstream can declare
sizes its bytes do not hold. Every such size is checked against a named limit here before any memory is
taken, and exceeding one is an ``AttncError`` naming the file, node or field and the limit, with the
environment variable that raises it. docs/cli.md lists them.

    limits.check_bytes(n, "input 'x'", limits.TENSOR_BYTES)

Each limit reads its environment variable when it is checked (so a test or a long-running host can change
it); an unset or empty variable means the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from attnc.errors import AttncError


@dataclass(frozen=True)
class Limit:
    name: str  # what is limited, for messages
    env: str  # the environment variable that overrides it
    default: int
    unit: str = "bytes"

    def value(self) -> int:
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default
        try:
            v = int(raw, 0)
        except ValueError:
            raise AttncError(f"{self.env}={raw!r}: expected a whole number of {self.unit}") from None
        if v <= 0:
            raise AttncError(f"{self.env}={raw!r}: must be positive")
        return v


GiB, MiB = 1 << 30, 1 << 20

#: largest tensor the reference interpreter, the functional simulator or a random input will materialise
TENSOR_BYTES = Limit("tensor size", "ATTNC_MAX_TENSOR_BYTES", 1 * GiB)
#: largest constant the frontend folds at compile time (a larger one stays an op in the graph)
FOLD_BYTES = Limit("folded constant size", "ATTNC_MAX_FOLD_BYTES", 64 * MiB)
#: largest architecture file, and the most YAML nodes it may expand to (aliases included)
ARCH_FILE_BYTES = Limit("architecture file size", "ATTNC_MAX_ARCH_BYTES", 1 * MiB)
ARCH_NODES = Limit("architecture YAML nodes", "ATTNC_MAX_ARCH_NODES", 100_000, "nodes")
#: largest model or bitstream file attnc reads into memory
FILE_BYTES = Limit("input file size", "ATTNC_MAX_FILE_BYTES", 4 * GiB)
#: most elements a tensor type in the IR may declare (shapes beyond it are refused at import)
TENSOR_ELEMENTS = Limit("tensor elements", "ATTNC_MAX_TENSOR_ELEMENTS", 1 << 40, "elements")

#: the longest error message line attnc prints (untrusted text inside it is shortened to fit)
MESSAGE_CHARS = 300


def check(amount: int, what: str, limit: Limit) -> None:
    """Raise an AttncError if ``amount`` (of ``limit``'s unit) exceeds the limit; ``what`` names the thing."""
    cap = limit.value()
    if amount > cap:
        raise AttncError(
            f"{what}: {amount:,} {limit.unit} exceeds the {limit.name} limit of {cap:,} {limit.unit} "
            f"(set {limit.env} to raise it)"
        )


def shown(text: object, width: int = 60) -> str:
    """Untrusted text (a node name, a file's value) as it may appear in a message: control and
    bidirectional characters escaped, at most ``width`` characters, quoted."""
    s = str(text)
    out = []
    for ch in s:
        cp = ord(ch)
        if cp < 0x20 or cp == 0x7F or 0x80 <= cp < 0xA0 or 0x200E <= cp <= 0x200F or 0x202A <= cp <= 0x202E \
                or 0x2066 <= cp <= 0x2069:  # fmt: skip
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    s = "".join(out)
    if len(s) > width:
        s = s[: width - 3] + "..."
    return f"'{s}'"

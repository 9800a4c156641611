"""Writing an output file so that it is never seen half-written: the one mechanism the CLI's outputs and the
simulator's plots share."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """A temporary file beside ``path`` (its descriptor, which the caller closes, and its name), with a new
    file's permissions (0666 less the umask, not mkstemp's 0600); renamed onto ``path`` if the block succeeds,
    removed if it does not (an error or an interrupt leaves neither a half-written output nor the temporary)."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        yield fd, tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

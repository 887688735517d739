"""Writing a small file whole or not at all (a signature, a public key)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file renamed over it, then fsynced."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

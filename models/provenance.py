"""What a new version's manifest records of where it came from: the code revision, who
made it, and the input ranges its data held."""

from __future__ import annotations

import getpass
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.schema import Feature, InputSchema


def input_schema(names: Sequence[str], X: np.ndarray) -> InputSchema:
    """Features ``names``, each bounded by what the rows ``X`` (n, features) hold."""
    # Shortest decimal that round-trips the float32 (4.3, not 4.300000190734863), so a
    # request carrying the training set's extreme value is not judged out of range.
    def bound(v: np.float32) -> float:
        return float(np.format_float_positional(v, unique=True))

    lo, hi = X.min(axis=0), X.max(axis=0)
    return InputSchema(tuple(Feature(n, "float32", bound(lo[i]), bound(hi[i]))
                             for i, n in enumerate(names)))


def code_revision() -> str:
    """The git revision of this streamserve ("unknown" outside a checkout), for lineage."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def user() -> str:
    """``user@host``: who made the version, for the lineage."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname() or 'unknown'}"

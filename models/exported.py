"""Functions exported with ``jax.export`` (``models.formats.from_jax`` registers them):
deserialized from their version's parameters and called as they are.

The serialized function is the uint8 parameter ``EXPORTED``, so its bytes are hashed and
signed like any parameter and deserialized only after both are verified; the other
parameters are the arrays of ``f(params, x)`` (none for ``f(x)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pipeline.errors import StreamserveError

ARCHITECTURE = "exported"
EXPORTED = "exported"  # the parameter that holds the serialized function


class ExportError(StreamserveError, ValueError):
    """Bytes that are no function ``jax.export`` can read."""


def deserialize(serialized: bytes) -> Any:
    from jax import export  # JAX: imported when a version needs it, not by every command

    try:
        return export.deserialize(bytearray(serialized))
    except Exception as e:  # noqa: BLE001 - corrupt bytes raise anything
        raise ExportError(f"the file is not a function jax.export can read ({e!r}); write it "
                          f"with jax.export.export(jax.jit(f))(...).serialize()") from None


def apply_of(exported: Any, takes_params: bool) -> Callable[[Mapping[str, Any], Any], Any]:
    """``(params, x) -> probabilities`` of a deserialized export."""
    if takes_params:
        return lambda params, x: exported.call(dict(params), x)
    return lambda params, x: exported.call(x)


def split(params: Mapping[str, np.ndarray]) -> tuple[Callable, dict[str, np.ndarray]]:
    """A version's parameters as its function and the arrays that function takes."""
    arrays = {k: v for k, v in params.items() if k != EXPORTED}
    return apply_of(deserialize(bytes(params[EXPORTED])), bool(arrays)), arrays

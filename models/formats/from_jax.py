"""Functions exported with ``jax.export``: how Flax, Equinox, Haiku or plain JAX models
arrive. The worker calls the deserialized function; it never imports the user's code.

The file is ``Exported.serialize()`` of ``f(params, x)``, with ``params`` a dict of arrays
(``--params``: an ``.npz`` of them), or of ``f(x)`` with the parameters baked in. ``x`` is
float32 ``(batch, features)``, or ``(batch, *shape)`` for a tensor per row (an image),
with a symbolic batch dimension (``jax.export.symbolic_shape("b, 4")``), so one export
serves every padding bucket; the
result is float32 ``(batch, columns)``: class probabilities, or a regressor's values
(``--kind regressor``). The serialized function
travels among the version's parameters (``models.exported``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.exported import ARCHITECTURE, EXPORTED, ExportError, apply_of, deserialize
from models.formats.converted import Converted
from models.formats.errors import ConversionError


def load(path: Path, params: Path | None = None) -> Converted:
    arrays = {}
    if params is not None:
        try:
            with np.load(params, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as e:
            raise ConversionError(f"--params {params} is not an .npz of arrays ({e}); write "
                                  f"it with numpy.savez") from None
    return convert(path.read_bytes(), arrays)


def convert(serialized: bytes, params: Mapping[str, np.ndarray]) -> Converted:
    """The bytes of ``Exported.serialize()`` and the parameters the function takes."""
    import jax

    if EXPORTED in params:
        raise ConversionError(f"a parameter is named {EXPORTED!r}, the name streamserve keeps "
                              f"for the function itself: rename it")
    try:
        exported = deserialize(serialized)
    except ExportError as e:
        raise ConversionError(str(e)) from None
    arrays = {k: np.asarray(v) for k, v in params.items()}
    shape, width = _check_signature(exported, arrays)
    call = apply_of(exported, bool(arrays))
    tensor = len(shape) > 1
    return Converted("jax", f"jax {jax.__version__}", ARCHITECTURE,
                     {**arrays, EXPORTED: np.frombuffer(serialized, np.uint8)}, math.prod(shape),
                     width, lambda x: np.asarray(call(arrays, x.reshape(len(x), *shape))),
                     features=("input",) if tensor else None, input_shape=shape if tensor else (),
                     details={"platforms": list(exported.platforms)})


def convert_function(function: Any, params: Mapping[str, np.ndarray],
                     input_shape: Sequence[int]) -> Converted:
    """A JAX function ``f(params, x)`` (``f(x)`` when ``params`` is empty), exported here with
    a symbolic batch for float32 rows of ``input_shape``, then served as its export."""
    import jax
    from jax import export

    arrays = {k: np.asarray(v) for k, v in params.items()}
    row = tuple(int(d) for d in input_shape)
    x = jax.ShapeDtypeStruct((*export.symbolic_shape("b"), *row), np.float32)
    specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in arrays.items()}
    try:
        exported = export.export(jax.jit(function))(*((specs, x) if arrays else (x,)))
    except Exception as e:  # noqa: BLE001 - tracing the user's function raises anything
        raise ConversionError(f"the function cannot be exported for float32 rows of shape "
                              f"{list(row)}{' with its params' if arrays else ''} ({e}); it "
                              f"must be f(params, x) (or f(x)) traceable by jax.jit") from None
    return convert(bytes(exported.serialize()), arrays)


def _check_signature(exported: Any, params: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], int]:
    """The shape of a row and the answer columns of ``f(params, x)``, once its signature
    is one streamserve serves."""
    *param_avals, x = exported.in_avals
    if len(param_avals) != len(params):
        raise ConversionError(
            f"the exported function takes {len(param_avals)} parameter arrays, and --params holds "
            f"{len(params)}: export f(params, x) with the arrays of the --params file, or f(x)")
    for (name, array), aval in zip(sorted(params.items()), param_avals, strict=True):
        if array.shape != aval.shape or array.dtype != aval.dtype:
            raise ConversionError(f"--params {name} is {array.dtype}{list(array.shape)}, but the "
                                  f"exported function takes {aval.dtype}{list(aval.shape)} there")
    if (len(x.shape) < 2 or isinstance(x.shape[0], int)
            or not all(isinstance(d, int) for d in x.shape[1:])):
        raise ConversionError(
            f"the exported function takes x of shape {x.shape}: export it with a symbolic batch "
            f"and a fixed row shape, jax.export.symbolic_shape('b, F') (or 'b, H, W')")
    if x.dtype != np.float32:
        raise ConversionError(f"the exported function takes x as {x.dtype}: export it for "
                              f"float32 rows")
    outs = exported.out_avals
    if (len(outs) != 1 or len(outs[0].shape) != 2 or outs[0].shape[0] != x.shape[0]
            or not isinstance(outs[0].shape[1], int) or outs[0].dtype != np.float32):
        raise ConversionError(
            f"the exported function returns {[f'{o.dtype}{o.shape}' for o in outs]}: it must "
            f"return one float32 array, shape (b, classes) of class probabilities or (b, "
            f"targets) of a regressor's values")
    return tuple(int(d) for d in x.shape[1:]), int(outs[0].shape[1])

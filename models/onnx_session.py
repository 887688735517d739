"""ONNX models, run by onnxruntime behind the serving interface JAX models have: one
runner per padding bucket, warmed before serving, called from the model thread.

A graph is not converted to JAX (its operators are many); it runs as it is, on CPU. The
model file travels among the version's parameters as the uint8 array ``MODEL``, hashed
and signed like any parameter, and is loaded only after both are verified. It takes one
float32 input ``(batch, features)``, or ``(batch, *shape)`` for a tensor per row (an
image), and gives float32 answers ``(batch, columns)``: class
probabilities or a regressor's values, the output named ``probabilities`` (or
``variable``, skl2onnx's name for a regressor's), or its only such output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import StreamserveError

ARCHITECTURE = "onnx"
MODEL = "onnx"  # the parameter that holds the model file's bytes

Runner = Callable[[Any, np.ndarray], np.ndarray]  # (unused params, rows) -> answers


class OnnxModelError(StreamserveError, ValueError):
    """An ONNX model onnxruntime cannot run, or whose inputs or outputs are not a
    classifier's or a regressor's of rows."""


def session(model: bytes) -> Any:
    """An onnxruntime session of ``model`` on the CPU; the library is imported here, so only
    a worker that serves an ONNX version needs it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxModelError("serving an ONNX model needs onnxruntime, which is not installed: "
                             "run pip install -e '.[models]' (or scripts/setup.sh)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are for graph authors
    try:
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types, not exported
        raise OnnxModelError(f"onnxruntime cannot load the model ({str(e).strip()[:300]}); "
                             f"check it with onnx.checker.check_model") from None


def signature(running: Any) -> tuple[str, str, tuple[int, ...], int]:
    """The input and output names, the input's shape per row and the answer columns of a
    session; an error saying what to change when the model is not a classifier or
    regressor of rows."""
    inputs = running.get_inputs()
    if len(inputs) != 1:
        raise OnnxModelError(f"the ONNX model takes {len(inputs)} inputs "
                             f"({', '.join(i.name for i in inputs)}): serve a model of one "
                             f"float32 input of shape (batch, features)")
    x = inputs[0]
    if (x.type != "tensor(float)" or len(x.shape) < 2
            or not all(isinstance(d, int) for d in x.shape[1:])):
        raise OnnxModelError(f"the ONNX model's input {x.name} is {x.type} {x.shape}: export it "
                             f"for float32 rows of a fixed shape, (batch, features) or "
                             f"(batch, *shape)")
    if isinstance(x.shape[0], int):
        raise OnnxModelError(f"the ONNX model's input {x.name} takes batches of {x.shape[0]} "
                             f"rows only: export it with a dynamic batch dimension")
    outputs = [o for o in running.get_outputs()
               if o.type == "tensor(float)" and len(o.shape) == 2 and isinstance(o.shape[1], int)]
    named = [o for o in outputs if o.name in ("probabilities", "variable")]
    chosen = named or outputs
    if len(chosen) != 1:
        listed = ", ".join(f"{o.name} {o.type} {o.shape}" for o in running.get_outputs())
        raise OnnxModelError(f"the ONNX model's outputs ({listed}) hold no single float32 "
                             f"(batch, columns) tensor: name the class probabilities "
                             f"'probabilities' (skl2onnx: options={{'zipmap': False}}), or a "
                             f"regressor's values 'variable'")
    return x.name, chosen[0].name, tuple(int(d) for d in x.shape[1:]), int(chosen[0].shape[1])


def opened(model: bytes) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...], int]:
    """``model`` ready to run: rows -> answers, its input's shape per row and its answer
    columns."""
    running = session(model)
    x_name, out_name, shape, width = signature(running)
    return lambda x: running.run([out_name], {x_name: x})[0], shape, width


def runners(params: Mapping[str, np.ndarray], buckets: Sequence[int], shape: Sequence[int],
            width: int) -> dict[int, Runner]:
    """One runner per padding bucket, all sharing one session (onnxruntime sizes each run by
    its input), each checked to give (bucket, width) for rows of ``shape``."""
    run, takes, gives = opened(bytes(params[MODEL]))
    if (takes, gives) != (tuple(shape), width):
        raise OnnxModelError(f"the ONNX model maps rows of shape {list(takes)} to {gives} "
                             f"columns, but its manifest lists {list(shape)} and {width}: the "
                             f"registry entry is inconsistent, register the model again")
    for bucket in buckets:
        out = run(np.zeros((bucket, *shape), np.float32)).shape
        if out != (bucket, width):
            raise OnnxModelError(f"the ONNX model gives {list(out)} for a batch of {bucket}: "
                                 f"export it with a dynamic batch dimension")
    return dict.fromkeys(buckets, lambda _, x: run(x))

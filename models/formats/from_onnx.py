"""ONNX model files (``.onnx``: PyTorch's exporter, skl2onnx, tf2onnx...) registered as they
are, to run with onnxruntime (``models.onnx_session``): the graph's operators are too many
to convert, so ``models show`` names its architecture ``onnx``, not a JAX one.

The check at registration is the one a worker makes at load: one float32 input of
``(batch, features)``, or ``(batch, *shape)`` for a tensor per row (an image: the
version reads one tensor, named as the graph's input), a float32 ``(batch, columns)``
output of class probabilities or a regressor's values (the file does not say which:
``--kind``); the library's own predictor is the session itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from models import onnx_session
from models.formats.converted import Converted
from models.formats.errors import ConversionError, need


def load(path: Path) -> Converted:
    return convert(path.read_bytes())


def convert(model: bytes) -> Converted:
    """The bytes of an ONNX model (``ModelProto.SerializeToString()``)."""
    onnx = need("onnx")
    try:
        proto = onnx.load_model_from_string(model)
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - a corrupt protobuf raises anything
        raise ConversionError(f"the file is not an ONNX model onnx {onnx.__version__} accepts "
                              f"({str(e).strip()[:300]}); export it again") from None
    try:
        run, shape, width = onnx_session.opened(model)
    except onnx_session.OnnxModelError as e:
        raise ConversionError(str(e)) from None
    onnxruntime = need("onnxruntime")
    tensor = len(shape) > 1
    return Converted("onnx", f"onnxruntime {onnxruntime.__version__}", onnx_session.ARCHITECTURE,
                     {onnx_session.MODEL: np.frombuffer(model, np.uint8)}, math.prod(shape),
                     width, lambda x: run(x.reshape(len(x), *shape)),
                     features=(proto.graph.input[0].name,) if tensor else None,
                     input_shape=shape if tensor else (),
                     details={"runtime": "onnxruntime", "opset": max(
                         (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                         default=0), "producer": proto.producer_name or "unknown"})

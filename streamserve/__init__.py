"""streamserve's public face for users' code: send requests, await their answers.

    from streamserve import StreamClient, DeadLetterError

    async with StreamClient.from_env(timeout=10) as client:
        prediction = await client.predict("iris", features)

A model trained elsewhere (XGBoost, LightGBM, scikit-learn) becomes a signed version
with ``register``, as ``streamserve models register`` does from the command line:

    from streamserve import register

    register("fraud", fitted_model, features=names, reference=training_rows)

Everything a user's application needs is re-exported here, so it never imports the
project's internal packages (``pipeline``, ``agents``, ``models``), whose names would
collide with the folders most ML projects already have. Each name keeps its home; this
module only lists the public ones.
"""

from typing import Any

from agents.client.stream import StreamClient
from agents.client.sync import SyncStreamClient
from pipeline.client import (
    ClientClosed,
    DeadLetterError,
    Outcome,
    PredictionTimeout,
    PredictRequest,
    RequestNotSent,
    StreamClientError,
)
from pipeline.config import ConfigError, Settings
from pipeline.errors import StreamserveError
from models.formats.errors import ConversionError
from pipeline.replies import DeadLetter, MalformedReply, Output, Prediction

__all__ = [
    "ClientClosed",
    "ConfigError",
    "ConversionError",
    "DeadLetter",
    "DeadLetterError",
    "MalformedReply",
    "Outcome",
    "Output",
    "Prediction",
    "PredictionTimeout",
    "PredictRequest",
    "RequestNotSent",
    "register",
    "Settings",
    "StreamClient",
    "StreamClientError",
    "StreamserveError",
    "SyncStreamClient",
]


def __getattr__(name: str) -> Any:
    # ``register`` converts with JAX and the model libraries: loaded on first use, so a
    # client that only sends requests never imports them.
    if name == "register":
        from models.external import register

        return register
    raise AttributeError(f"module 'streamserve' has no attribute {name!r}")

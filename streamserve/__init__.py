"""streamserve's public face for users' code: send requests, await their answers.

    from streamserve import StreamClient, DeadLetterError

    async with StreamClient.from_env(timeout=10) as client:
        prediction = await client.predict("iris", features)

Everything a user's application needs is re-exported here, so it never imports the
project's internal packages (``pipeline``, ``agents``, ``models``), whose names would
collide with the folders most ML projects already have. Each name keeps its home; this
module only lists the public ones.
"""

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
from pipeline.replies import DeadLetter, MalformedReply, Output, Prediction

__all__ = [
    "ClientClosed",
    "ConfigError",
    "DeadLetter",
    "DeadLetterError",
    "MalformedReply",
    "Outcome",
    "Output",
    "Prediction",
    "PredictionTimeout",
    "PredictRequest",
    "RequestNotSent",
    "Settings",
    "StreamClient",
    "StreamClientError",
    "StreamserveError",
    "SyncStreamClient",
]

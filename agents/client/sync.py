"""The client library's blocking twin: ``SyncStreamClient``, for scripts and notebooks.

It wraps a ``StreamClient`` (``agents.client.stream``) whose event loop runs in a thread of
its own, so its calls block and it works where a loop already runs (as in Jupyter); apart
so that the asyncio client runs on its caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, Self, TypeVar

from agents.client.stream import StreamClient
from pipeline.client import ClientClosed, Outcome, PredictRequest
from pipeline.config import Settings
from pipeline.replies import Prediction

T = TypeVar("T")


class SyncStreamClient:
    """``StreamClient`` for scripts and notebooks: blocking calls, with the client's event
    loop in a background thread (so it works where a loop already runs, as in Jupyter).

    ``with SyncStreamClient(settings) as client: client.predict("iris", {...})``. Same
    arguments, methods and errors as ``StreamClient``; ``stream`` returns an iterator.
    """

    def __init__(self, settings: Settings | None = None, **options: Any) -> None:
        self._client = StreamClient(settings, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"streamserve-client-{self._client.id_prefix}")
        self._thread.start()
        self._closed = False
        try:
            self._run(self._client.start)
        except BaseException:
            self._closed = True
            self._stop_loop()
            raise

    @classmethod
    def from_env(cls, **options: Any) -> SyncStreamClient:
        return cls(Settings.from_env(), **options)

    @property
    def settings(self) -> Settings:
        return self._client.settings

    @property
    def id_prefix(self) -> str:
        return self._client.id_prefix

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def predict(self, model: str, features: Mapping[str, float], **options: Any) -> Prediction:
        return self._run(self._client.predict, model, features, **options)

    def predict_request(self, request: PredictRequest, **options: Any) -> Prediction:
        return self._run(self._client.predict_request, request, **options)

    def predict_many(self, model: str, rows: Iterable[Mapping[str, float]],
                     **options: Any) -> list[Any]:
        return self._run(self._client.predict_many, model, list(rows), **options)

    def send_raw(self, value: bytes, **options: Any) -> Prediction:
        return self._run(self._client.send_raw, value, **options)

    def send_label(self, request_id: str, truth: str | float, **options: Any) -> None:
        return self._run(self._client.send_label, request_id, truth, **options)

    def stream(self, requests: Iterable[PredictRequest], **options: Any) -> Iterator[Outcome]:
        """Outcomes as they settle. ``requests`` is iterated on the client's thread."""
        outcomes = self._client.stream(requests, **options)
        try:
            while (outcome := self._run(_next, outcomes)) is not None:
                yield outcome
        finally:
            if not self._closed:
                self._run(outcomes.aclose)

    def close(self) -> None:
        if not self._closed:
            try:
                self._run(self._client.close)
            finally:
                self._closed = True
                self._stop_loop()

    def _run(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise ClientClosed("the client is closed; start a new one")
        future = asyncio.run_coroutine_threadsafe(function(*args, **kwargs), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: stop the work too
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _next(outcomes: AsyncIterator[Outcome]) -> Outcome | None:
    # StopAsyncIteration cannot cross run_coroutine_threadsafe's future: None ends instead.
    return await anext(outcomes, None)

"""The client library's pure part: requests, how their replies are awaited, and its errors.

A client produces a request keyed by its id to ``<prefix>.requests`` and waits for the one
reply the worker writes for it: a prediction on ``<prefix>.predictions`` or a dead letter on
``<prefix>.deadletter``. This module holds everything about that which needs no broker;
the replies themselves (``Prediction``, ``DeadLetter``) and their parser are
``pipeline.replies``; the Kafka I/O is ``agents/client/stream.py`` (``StreamClient``) and
``agents/client/sync.py`` (``SyncStreamClient``).

Exceptions a caller handles::

    StreamClientError                the root: every failure of one request
     ├── DeadLetterError             the worker refused the request: .reason (a stable code),
     │                               .error (what to fix), .dead_letter (the whole message)
     ├── PredictionTimeout           no reply within the timeout (also a TimeoutError)
     ├── RequestNotSent              Kafka did not take the request (delivery failed)
     └── ClientClosed                the client closed, or its reply reader failed, first

Programming errors (a feature that is not a number, a request id used twice at once)
raise ``ValueError`` or ``TypeError`` at once, before anything is sent.
"""

from __future__ import annotations

import math
import numbers
import secrets
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import orjson

from pipeline.decode import MAX_ID_LENGTH, MAX_NAME_LENGTH
from pipeline.errors import StreamserveError
from pipeline.replies import DeadLetter, Prediction, Reply, SourcePosition

# ---------------------------------------------------------------------------------------------
# Errors


class StreamClientError(StreamserveError):
    """A request got no prediction; the subclass says why."""


class DeadLetterError(StreamClientError):
    """The worker answered with a dead letter instead of a prediction."""

    def __init__(self, dead_letter: DeadLetter) -> None:
        self.dead_letter = dead_letter
        where = f" (request {dead_letter.id})" if dead_letter.id else ""
        super().__init__(f"{dead_letter.reason}{where}: {dead_letter.error}")

    @property
    def reason(self) -> str:
        """The stable reason code, e.g. ``unknown_model`` (``pipeline.rejections.Reason``)."""
        return self.dead_letter.reason

    @property
    def error(self) -> str:
        """The worker's sentence: what is wrong and how to fix it."""
        return self.dead_letter.error


class PredictionTimeout(StreamClientError, TimeoutError):
    """No reply came within the timeout. The request may still be served later; its reply
    is then ignored (the id is no longer awaited)."""

    def __init__(self, request_id: str, timeout: float, topic: str) -> None:
        self.request_id, self.timeout = request_id, timeout
        super().__init__(
            f"no reply to request {request_id} within {timeout:g} s; check that a worker serves "
            f"{topic} (`streamserve status`, its consumer lag), or pass a longer timeout")


class RequestNotSent(StreamClientError):
    """Kafka did not accept the request, so no worker will answer it."""


class ClientClosed(StreamClientError):
    """The client was closed, or its reply reader failed, before the reply came."""


# ---------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """One request. ``id`` None: the client makes one up.

    ``features`` maps each of the model's feature names to a finite number (the tabular
    form); for a model that reads one tensor per row, the tensor's name to an array of its
    shape (nested lists or a numpy array), sent in the Open Inference Protocol form. The
    values are checked and copied here, so a bad row fails before anything is sent.
    ``deadline_ms``: the worker dead-letters the request when it cannot answer within this
    many milliseconds of the request's timestamp: ``arrived_late`` when the time had passed
    before a worker took it, ``deadline_exceeded`` otherwise.
    """

    model: str
    features: Mapping[str, float | np.ndarray]
    version: str | None = None
    id: str | None = None
    deadline_ms: int | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        _check_name("model", self.model)
        if self.version is not None:
            _check_name("version", self.version)
        if self.tenant is not None:
            _check_name("tenant", self.tenant)
        if self.id is not None:
            check_request_id(self.id)
        if self.deadline_ms is not None and (
                isinstance(self.deadline_ms, bool) or not isinstance(self.deadline_ms, int)
                or self.deadline_ms <= 0):
            raise ValueError(f"deadline_ms must be a positive whole number of milliseconds, "
                             f"got {self.deadline_ms!r}")
        object.__setattr__(self, "features", _checked_features(self.features))

    def encode(self) -> bytes:
        """The request JSON (contract); the id must be set (``with_id``)."""
        if self.id is None:
            raise ValueError("the request has no id yet; give it one with .with_id(...)")
        # A tensor is a request's only entry (_checked_features): the first says which form.
        first = next(iter(self.features.values()), None)
        tensor = first if isinstance(first, np.ndarray) else None
        if tensor is None:
            body: dict[str, Any] = {"id": self.id, "model": self.model, "features": self.features}
        else:
            [name] = self.features
            body = {"id": self.id, "model_name": self.model, "inputs": [
                {"name": name, "shape": [1, *tensor.shape], "datatype": "FP32",
                 "data": tensor.reshape(-1).tolist()}]}
        if self.version is not None:
            body["model_version" if tensor is not None else "version"] = self.version
        if self.deadline_ms is not None:
            body["deadline_ms"] = self.deadline_ms
        if self.tenant is not None:
            body["tenant"] = self.tenant
        return orjson.dumps(body)

    def with_id(self, request_id: str) -> PredictRequest:
        # A copy with only the id set: replace() would check and copy every feature again.
        request = object.__new__(type(self))
        for name in self.__slots__:
            object.__setattr__(request, name, getattr(self, name))
        object.__setattr__(request, "id", check_request_id(request_id))
        return request


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} "
                         f"characters, got {value!r}")


def check_request_id(request_id: object) -> str:
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
        raise ValueError(f"a request id must be a non-empty string of at most {MAX_ID_LENGTH} "
                         f"characters, got {request_id!r}")
    return request_id


_FLOAT, _STR = {float}, {str}


def _checked_features(features: object) -> dict[str, float | np.ndarray]:
    if not isinstance(features, Mapping):
        raise TypeError(f"features must be a mapping of feature name to number, such as "
                        f"{{'sepal_length': 5.1, ...}}, got {type(features).__name__}; for a "
                        f"row in the model's feature order use dict(zip(names, row))")
    # The usual request, named plain floats, checked in passes that run in C: a sum of
    # finite numbers is finite unless it overflows, and then the loop below decides (a
    # client sending thousands of requests a second spent 19 µs a request of 32 features
    # in that loop, 4 in these passes).
    if (set(map(type, features.values())) == _FLOAT and set(map(type, features)) == _STR
            and math.isfinite(sum(features.values()))):
        return dict(features)
    checked: dict[str, float | np.ndarray] = {}
    for name, value in features.items():
        if not isinstance(name, str):
            raise TypeError(f"feature names must be strings, got {name!r}")
        if isinstance(value, list | tuple | np.ndarray):
            checked[name] = _tensor(name, value)
            continue
        # A plain float, the usual case, skips the abstract-class checks (several times
        # slower than the rest of the loop).
        number = value if type(value) is float else _number(name, value)
        if not math.isfinite(number):
            # JSON has no NaN or infinity (orjson would write null): refuse it here, as the
            # worker would (non_finite), rather than send something else.
            raise ValueError(f"feature {name!r} is {number}: features must be finite numbers")
        checked[name] = number
    if len(checked) > 1 and any(isinstance(v, np.ndarray) for v in checked.values()):
        raise ValueError(f"a request holds one tensor or named numbers, not both: "
                         f"{', '.join(checked)}")
    return checked


def _tensor(name: str, value: object) -> np.ndarray:
    """A tensor input: an array of finite numbers (its shape is the model's per row)."""
    try:
        array = np.array(value, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"tensor {name!r} must be an array of numbers (nested lists of one "
                        f"shape, or a numpy array)") from None
    if array.ndim == 0 or array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"tensor {name!r} must hold finite numbers in at least one dimension")
    return array


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"feature {name!r} is {value!r}: every feature must be a number")
    return float(value)


def raw_request_key(value: bytes) -> bytes | None:
    """The key a raw request is produced with: its id when it has a readable one (so a
    repeat reaches the same worker, as keyed requests do), else None."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id.encode() if isinstance(request_id, str) and request_id else None


class RequestIds:
    """Request ids ``<prefix>-<32 hex digits>``: unique without coordination, and the prefix
    (``client-<8 hex>`` by default, one per client) finds a client's own requests again, e.g.
    ``streamserve verify --id-prefix``."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else f"client-{secrets.token_hex(4)}"
        # The prefix, a dash and 32 hex digits must fit the worker's id limit.
        if not self.prefix or len(self.prefix) > MAX_ID_LENGTH - 33:
            raise ValueError(f"id_prefix must be 1 to {MAX_ID_LENGTH - 33} characters, "
                             f"got {self.prefix!r}")

    def next(self) -> str:
        # 128 random bits, as a uuid4's, without building the UUID (2.1 against 0.6 µs):
        # unpredictable, so no one can take an id a client is about to send.
        return f"{self.prefix}-{secrets.token_hex(16)}"


def choose_partition(key: bytes, partitions: Sequence[int]) -> int:
    """A stable choice of one of ``partitions`` for ``key``: repeats of an id go to the same
    partition, hence the same worker (which then knows them as repeats)."""
    return partitions[zlib.crc32(key) % len(partitions)]


def requested_partitions(chosen: Collection[int] | None, available: Collection[int]) -> list[int]:
    """The request partitions a client writes to: ``chosen``, checked against the topic's,
    or all of them."""
    if chosen is None:
        return sorted(available)
    unknown = sorted(set(chosen) - set(available))
    if not chosen or unknown:
        raise ValueError(f"partitions {sorted(chosen)} must name at least one of the requests "
                         f"topic's partitions {sorted(available)}; unknown: {unknown}")
    return sorted(set(chosen))


def reply_partitions(request_partitions: Iterable[int], reply_topic_partitions: int) -> list[int]:
    """The partitions of a reply topic that replies to ``request_partitions`` land on: the
    worker writes a reply to its request's partition number (modulo the reply topic's
    partition count, should it have fewer)."""
    return sorted({p % reply_topic_partitions for p in request_partitions})


# ---------------------------------------------------------------------------------------------
# Outcomes of many requests


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request of a stream and how it ended: ``prediction`` or ``error``, never both."""

    request: PredictRequest
    prediction: Prediction | None = None
    error: StreamClientError | None = None

    def __post_init__(self) -> None:
        if (self.prediction is None) == (self.error is None):
            raise ValueError("an outcome holds a prediction or an error, exactly one of them")

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self) -> Prediction:
        """The prediction, or raise the error."""
        if self.error is not None:
            raise self.error
        assert self.prediction is not None
        return self.prediction


# ---------------------------------------------------------------------------------------------
# Who waits for which reply


class Waiter(Protocol):
    """What ``PendingReplies`` settles: an ``asyncio.Future`` or a ``concurrent.futures.Future``."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class _Waiting:
    waiter: Waiter
    sent_at: float


@dataclass
class PendingReplies:
    """The requests a client awaits, and the futures their replies settle.

    A request with an id is awaited by its id (every reply names it). A raw request, whose
    id may be unreadable, is awaited by where it was written (every reply's source
    headers name that): known only once Kafka acknowledged it, so while raw requests are
    unacknowledged, replies nobody claims are kept (the newest ``keep_unclaimed``) in case
    one answers a raw request whose acknowledgement is still on its way.

    A reply nobody awaits (another client's, a repeat, one that came after its timeout) is
    ignored. ``clock``: monotonic seconds, for round-trip times.
    """

    clock: Callable[[], float] = time.monotonic
    keep_unclaimed: int = 10_000
    _by_id: dict[str, _Waiting] = field(default_factory=dict, init=False)
    _by_source: dict[SourcePosition, _Waiting] = field(default_factory=dict, init=False)
    _raw_unacknowledged: int = field(default=0, init=False)
    _unclaimed: OrderedDict[SourcePosition, Reply] = field(default_factory=OrderedDict, init=False)

    def __len__(self) -> int:
        return len(self._by_id) + len(self._by_source) + self._raw_unacknowledged

    def expect(self, request_id: str, waiter: Waiter) -> None:
        """Await the reply to ``request_id``; call before the request is sent."""
        if request_id in self._by_id:
            raise ValueError(f"request id {request_id!r} is already awaiting its reply; a worker "
                             "dead-letters a repeated id as duplicate_request: use a new id")
        self._by_id[request_id] = _Waiting(waiter, self.clock())

    def forget(self, request_id: str) -> None:
        """Stop awaiting ``request_id`` (answered, timed out or abandoned)."""
        self._by_id.pop(request_id, None)

    def raw_sending(self) -> float:
        """A raw request is about to be sent; returns its send time for ``expect_at``. Follow
        with ``expect_at`` once Kafka acknowledged it, or ``raw_failed`` if it did not."""
        self._raw_unacknowledged += 1
        return self.clock()

    def expect_at(self, source: SourcePosition, waiter: Waiter, sent_at: float) -> None:
        """Await the reply to the raw request Kafka acknowledged at ``source``."""
        self._raw_acknowledged()
        early = self._unclaimed.pop(source, None)
        if self._raw_unacknowledged == 0:
            self._unclaimed.clear()
        if waiter.done():  # timed out or cancelled while the acknowledgement was on its way
            return
        waiting = _Waiting(waiter, sent_at)
        if early is not None:
            _settle(waiting, early, self.clock())
        else:
            self._by_source[source] = waiting

    def raw_failed(self) -> None:
        self._raw_acknowledged()
        if self._raw_unacknowledged == 0:
            self._unclaimed.clear()

    def forget_at(self, source: SourcePosition) -> None:
        self._by_source.pop(source, None)

    def wants(self, key: bytes | None, source: SourcePosition | None) -> bool:
        """Whether a reply keyed ``key`` from ``source`` may be awaited: a cheap check made
        before parsing it, since most replies on a busy topic are other clients'."""
        if self._raw_unacknowledged or (source is not None and source in self._by_source):
            return True
        return key is not None and key.decode("utf-8", "replace") in self._by_id

    def settle(self, reply: Reply) -> bool:
        """Settle the future awaiting ``reply``: its result is the prediction; a dead letter
        sets ``DeadLetterError``. True when someone awaited it."""
        waiting = self._by_source.pop(reply.source, None) if reply.source is not None else None
        if waiting is None and reply.id is not None:
            waiting = self._by_id.pop(reply.id, None)
        if waiting is None:
            if self._raw_unacknowledged and reply.source is not None:
                self._unclaimed[reply.source] = reply
                while len(self._unclaimed) > self.keep_unclaimed:
                    self._unclaimed.popitem(last=False)
            return False
        return _settle(waiting, reply, self.clock())

    def fail_all(self, error: StreamClientError) -> int:
        """Fail every awaited request with ``error`` (the client is closing); how many."""
        failed = 0
        for waiting in [*self._by_id.values(), *self._by_source.values()]:
            if not waiting.waiter.done():
                waiting.waiter.set_exception(error)
                failed += 1
        self._by_id.clear()
        self._by_source.clear()
        self._unclaimed.clear()
        return failed

    def _raw_acknowledged(self) -> None:
        if self._raw_unacknowledged <= 0:
            raise RuntimeError("expect_at/raw_failed without a raw_sending before it")
        self._raw_unacknowledged -= 1


def _settle(waiting: _Waiting, reply: Reply, now: float) -> bool:
    if waiting.waiter.done():  # cancelled: its caller stopped waiting
        return False
    reply = replace(reply, round_trip_ms=1000 * (now - waiting.sent_at))
    if isinstance(reply, DeadLetter):
        waiting.waiter.set_exception(DeadLetterError(reply))
    else:
        waiting.waiter.set_result(reply)
    return True


"""Which requests to sample (e.g. for payload logging), decided by request id alone.

The choice is a hash of the id, not a random draw, so a replayed or redelivered
request makes the same choice and every worker agrees without coordination.
"""

from __future__ import annotations

import hashlib

_SPAN = 2**64


def sampled(request_id: str, rate: float) -> bool:
    """True for about ``rate`` of all ids: blake2b-64 of the UTF-8 id, as a fraction of 2**64, < rate.

    ``rate`` 0 never samples and 1 always does; a rate outside [0, 1] raises ValueError.
    Costs about 2 µs per call (timeit, CPython 3.11, an id of 8 characters; 2.6 µs at
    the 256-character id limit), so it can run per prediction.
    """
    if not 0.0 <= rate <= 1.0:  # NaN fails this too
        raise ValueError(f"the sampling rate must be between 0 and 1, got {rate!r}; "
                         "e.g. 0.01 samples one request in a hundred")
    # surrogatepass: json (decode's fallback parser) admits lone surrogates in ids.
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    # Compared as integer < float, which Python does exactly: 2**64 - 1 < 1.0 * 2**64,
    # so rate 1 always samples (the float fraction would round up to 1.0 and miss).
    return int.from_bytes(digest, "big") < rate * _SPAN

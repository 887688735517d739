"""Adaptive batching: when to run a batch, and how many of the queued rows to put in it.

Modelled on BentoML's adaptive batcher (an online linear cost model, latency ≈ a·n + b)
and Triton's dynamic batcher (wait up to a queueing delay for a fuller batch). Pure:
the caller passes its monotonic clock reading as ``now`` (seconds), so tests and
simulations advance time by hand and nothing here ever sleeps or reads a clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.batching import choose_bucket

# A full fit needs observed sizes to spread by at least ~3% of their mean (std/mean);
# one size alone (say, only full batches under heavy load) fixes the level, not the slope.
_MIN_RELATIVE_VARIANCE = 1e-3


class CostModel:
    """Seconds per model call for a padded batch of ``n`` rows: ``per_row·n + fixed``.

    Fitted online by exponentially weighted least squares: each observation multiplies the
    weight of all earlier ones by ``forgetting``, so the fit follows drift (a warmer cache,
    a noisier neighbour) within about ``1 / (1 - forgetting)`` calls. Until the observed
    sizes differ, the slope stays at the prior (or the last good fit) and only the level is
    fitted. A fit that says a row costs less than nothing, or a call has negative overhead,
    is noise: that coefficient is clamped to zero and the other refitted alone.
    """

    __slots__ = ("_n", "_nn", "_ny", "_w", "_y", "fixed", "forgetting", "per_row")

    def __init__(self, prior_per_row: float, prior_fixed: float, forgetting: float = 0.98) -> None:
        if not (prior_per_row >= 0 and prior_fixed >= 0 and prior_per_row + prior_fixed > 0):
            raise ValueError(
                f"the prior must be non-negative and not all zero, got per_row={prior_per_row}, "
                f"fixed={prior_fixed}; err on the slow side, the fit corrects it")
        if not 0 < forgetting <= 1:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        self.forgetting = forgetting
        self.per_row = float(prior_per_row)
        self.fixed = float(prior_fixed)
        # Weighted sums of 1, n, n², y and n·y over the observations.
        self._w = self._n = self._nn = self._y = self._ny = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """Record that a call at padded size ``n`` took ``seconds``, and refit."""
        if n < 1 or not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(
                f"an observation needs n >= 1 and finite seconds >= 0, got n={n}, seconds={seconds}")
        f = self.forgetting
        self._w = f * self._w + 1.0
        self._n = f * self._n + n
        self._nn = f * self._nn + n * n
        self._y = f * self._y + seconds
        self._ny = f * self._ny + n * seconds
        mean_n, mean_y = self._n / self._w, self._y / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        if var_n > _MIN_RELATIVE_VARIANCE * mean_n * mean_n:
            per_row = (self._ny / self._w - mean_n * mean_y) / var_n
        else:
            per_row = self.per_row
        fixed = mean_y - per_row * mean_n
        if per_row < 0:
            per_row, fixed = 0.0, mean_y
        elif fixed < 0:
            per_row, fixed = self._ny / self._nn, 0.0
        self.per_row, self.fixed = per_row, fixed

    def predict(self, n: int) -> float:
        """Predicted seconds for one call at padded size ``n``."""
        return self.per_row * n + self.fixed


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with the queue now.

    ``take`` rows (the oldest first) run now at padded size ``bucket``; when ``take`` is 0
    nothing runs, ``bucket`` is 0, and the caller asks again after ``wait`` seconds or on
    the next arrival, whichever comes first.
    """

    take: int
    wait: float
    bucket: int


class BatchPolicy:
    """Decide, from the queue length and its oldest arrival, whether to run a batch now.

    The rule:

    1. ``queued >= largest bucket``: run the largest bucket now; waiting cannot fill it more.
    2. Otherwise wait while the oldest request can still wait: serving starts at
       ``oldest_arrival + budget - predict(largest)``. Starting one call's worst-case
       duration early means the worker is free again by the oldest's budget, so rows left
       behind (or arriving meanwhile) can still start in time.
    3. When serving ``queued`` rows that are not a bucket size: pad to the next bucket if at
       most ``max_padding`` of its rows are padding. Else run the largest bucket below
       ``queued`` unpadded and leave the rest queued, unless the rest, taken to be as old
       as the oldest (the policy does not see their arrivals), would then start after the
       budget: then pad all of them anyway. Correctness over padding.
    """

    __slots__ = ("buckets", "budget", "cost", "max_padding")

    def __init__(self, buckets: Sequence[int], budget: float, cost: CostModel,
                 max_padding: float = 0.1) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"buckets must be distinct positive sizes in ascending order, got {buckets}")
        if not budget > 0:
            raise ValueError(f"budget is the queueing delay allowed, in seconds, and must be positive, got {budget}")
        if not 0 <= max_padding < 1:
            raise ValueError(
                f"max_padding is the fraction of a bucket that may be padding, in [0, 1), got {max_padding}")
        self.buckets = tuple(buckets)
        self.budget = budget
        self.cost = cost
        self.max_padding = max_padding

    def decide(self, queued: int, oldest_arrival: float, now: float) -> Decision:
        """``queued`` rows wait, the oldest since ``oldest_arrival``; it is ``now``."""
        if queued < 1:
            raise ValueError(f"decide needs at least one queued row, got {queued}; wait for an arrival instead")
        largest = self.buckets[-1]
        if queued >= largest:
            return Decision(take=largest, wait=0.0, bucket=largest)
        start_by = oldest_arrival + self.budget
        serve_at = start_by - self.cost.predict(largest)
        if now < serve_at:
            return Decision(take=0, wait=serve_at - now, bucket=0)
        up = choose_bucket(queued, self.buckets)
        if padding_waste(queued, up) <= self.max_padding:
            return Decision(take=queued, wait=0.0, bucket=up)
        below = bisect.bisect_right(self.buckets, queued)
        if below == 0 or now + self.cost.predict(self.buckets[below - 1]) > start_by:
            return Decision(take=queued, wait=0.0, bucket=up)
        down = self.buckets[below - 1]
        return Decision(take=down, wait=0.0, bucket=down)


def padding_waste(rows: int, bucket: int) -> float:
    """The fraction of a call at ``bucket`` spent on padding when it carries ``rows`` real rows."""
    if not 1 <= rows <= bucket:
        raise ValueError(f"a bucket of {bucket} carries 1 to {bucket} rows, got {rows}")
    return (bucket - rows) / bucket

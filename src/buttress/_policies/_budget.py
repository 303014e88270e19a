"""RetryBudget: retries across many calls stay a bounded fraction of recent traffic.

Per-call retry limits do not bound load: when a dependency fails every request, each call
still makes ``1 + max_retries`` attempts, multiplying the load on what is already
struggling. A budget shared by all the calls to that dependency caps the retries at a
fraction of the recent calls (plus a small floor so that quiet clients can still retry),
the scheme of Finagle's and Linkerd's retry budgets.
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
from dataclasses import dataclass
from datetime import timedelta

from buttress import _clock, _settings
from buttress._errors import ConfigurationError, SharedSettingsError, SharedStateError
from buttress._redis import FleetStore, syncer

from ._fleet_budget import BudgetLink, BudgetReply
from ._window import Window

__all__ = ["RetryBudget", "RetryBudgetStats"]

_CALLS, _RETRIES = 0, 1


@dataclass(frozen=True, slots=True)
class RetryBudgetStats:
    """A snapshot of a :class:`RetryBudget` over its window.

    Attributes:
        calls: calls counted in the window (first attempts; retries are not calls).
        retries: retries spent in the window.
        available: retries that may still be spent now.
        exhausted: retries refused since the budget was created.
    """

    calls: int
    retries: int
    available: int
    exhausted: int


class RetryBudget:
    """A share of recent calls that may be retried, for ``@retry(budget=...)``.

    Over any ``window`` seconds, the retries of all the calls sharing this budget stay
    within ``ratio * calls + min_per_second * window``, where ``calls`` counts the calls
    started in that window (a retry is not a call). Share one budget between every
    function that calls the same dependency.

    ``@retry`` consults the budget only when it is about to schedule a retry (after its own
    attempt and deadline checks); when the budget is spent it gives up at once and
    re-raises the last error, emitting :class:`RetryBudgetExhausted`. Thread safe and
    usable from any number of event loops; reads time through the ``buttress`` clock.

    Args:
        ratio: retries allowed per call, on average (0.2: one retry per five calls).
        min_per_second: a floor of retries per second allowed whatever the traffic, so a
            client making few calls can still retry.
        window: seconds over which calls and retries are counted, kept in ten buckets
            (so they leave the count in steps of ``window / 10``).
        store: a :class:`~buttress.FleetStore`: the budget then holds for the fleet,
            every process that uses ``name`` in it (see :doc:`/decorators/shared-state`).
        name: the shared name; required with ``store``.

    Raises:
        ConfigurationError: for a negative ratio or floor, or a window that is not
            positive; a ``store`` without a ``name``, or the reverse.
        SharedSettingsError: this process, or another one in Redis, uses ``name`` with
            other settings (raised by ``try_spend`` once Redis says so).
        SharedStateError: from ``try_spend``, when Redis is unreachable and the store
            has ``fail_open=False``.
    """

    __slots__ = (
        "__weakref__",
        "_exhausted",
        "_fleet",
        "_fleet_error",
        "_lock",
        "_slice",
        "_slice_end",
        "_slice_start",
        "_tally",
        "_window",
        "min_per_second",
        "name",
        "ratio",
        "store",
        "window",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 3,
        *,
        window: float | timedelta = 10.0,
        store: FleetStore | None = None,
        name: str | None = None,
    ) -> None:
        self.ratio = _settings.number(ratio, "ratio", minimum=0.0)
        self.min_per_second = _settings.number(min_per_second, "min_per_second", minimum=0.0)
        self.window = _settings.seconds(window, "window", allow_zero=False)
        self._lock = threading.Lock()
        self._window = Window(self.window, 2)
        self._exhausted = 0
        # Calls are counted without the lock: every call of the current slice of the
        # window ticks one shared counter (``next()`` on an ``itertools.count`` is one C
        # call, atomic under the GIL); the lock is taken once per slice, to fold the
        # slice's tally into the window, and by readers, which fold it first.
        self._tally = itertools.count()
        self._slice = -1
        self._slice_start = self._slice_end = -math.inf
        self.store = store
        self.name = name
        self._fleet: BudgetLink | None = None
        self._fleet_error: BaseException | None = None
        if store is None:
            if name is not None:
                raise ConfigurationError("name has no effect without store=")
            return
        if not isinstance(store, FleetStore):
            raise ConfigurationError(f"store must be a FleetStore, got {store!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"a RetryBudget with store= needs name=, the name every process that "
                f"shares it gives it, as a non-empty str; got {name!r}"
            )
        contract = {
            "ratio": self.ratio,
            "min_per_second": self.min_per_second,
            "window": self.window,
        }
        state = store.shared("retry_budget", name, contract)
        self._fleet = BudgetLink(self, state, window=self.window)
        syncer(store).add(self._fleet)

    def __repr__(self) -> str:
        shared = "" if self.store is None else f", name={self.name!r}, store={self.store!r}"
        return (
            f"RetryBudget(ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
            f"window={self.window:g}{shared})"
        )

    def _allowance(self) -> float:
        # The lock is held and the window is current.
        return self.ratio * self._window.totals[_CALLS] + self.min_per_second * self.window

    def record_call(self) -> None:
        """Count one call (its first attempt); every call sharing the budget does this."""
        now = _clock.monotonic()
        # The success path of every call: no lock, one clock read and one tick.
        if self._slice_start <= now < self._slice_end:
            next(self._tally)
        else:
            self._new_slice(now)

    def _new_slice(self, now: float) -> None:
        with self._lock:
            self._fold()
            window = self._window
            epoch = window.slice_of(now)
            window.add(epoch, _CALLS, 1)
            per_second = window.buckets / window.seconds
            self._slice = epoch
            self._slice_start = epoch / per_second
            self._slice_end = (epoch + 1) / per_second

    def _fold(self) -> None:
        # The lock is held. Swap in a fresh tally, then read the old one: ``next()``
        # returns how many calls ticked it. A call that read the old tally just before
        # the swap and ticks it just after is lost: one call, not worth a lock per call.
        tally, self._tally = self._tally, itertools.count()
        calls = next(tally)
        if calls:
            self._window.add(self._slice, _CALLS, calls)

    def try_spend(self) -> bool:
        """Spend one retry if the budget allows it; ``False`` (and counted) if it is spent.

        Shared, it spends from this replica's share of what the fleet may still spend.
        """
        now = _clock.monotonic()
        with self._lock:
            self._fold()
            bucket = self._window.bucket(now)
            fleet = self._fleet
            if fleet is not None:
                if self._fleet_error is not None:
                    raise copy.copy(self._fleet_error)  # fresh: no traceback piles up
                fleet.dirty = True
            if fleet is not None and fleet.shared and fleet.share is not None:
                calls, retries = self._window.totals
                allowed = fleet.share + self.ratio * max(0, calls - fleet.base_calls)
                over = retries - fleet.base_retries + 1 > allowed + 1e-9
            else:
                # The epsilon keeps float error (0.1 * 30 calls) from refusing an earned
                # retry.
                over = self._window.totals[_RETRIES] + 1 > self._allowance() + 1e-9
            if over:
                self._exhausted += 1
                return False
            bucket[_RETRIES] += 1
            self._window.totals[_RETRIES] += 1
            return True

    def stats(self) -> RetryBudgetStats:
        """A frozen snapshot of the counts in the current window (shared: the fleet's, as
        of the last sync, with this replica's since)."""
        with self._lock:
            self._fold()
            self._window.touch(_clock.monotonic())
            calls, retries = self._window.totals
            fleet = self._fleet
            if fleet is not None and fleet.shared and fleet.share is not None:
                calls += fleet.others_calls
                retries += fleet.others_retries
            allowance = self.ratio * calls + self.min_per_second * self.window
            available = max(0, math.floor(allowance - retries))
            return RetryBudgetStats(
                calls=calls, retries=retries, available=available, exhausted=self._exhausted
            )

    # --- the fleet: called by the store's sync thread ---------------------------------

    def _totals(self) -> tuple[int, int]:
        """This replica's ``(calls, retries)`` over the window, for its report."""
        with self._lock:
            self._fold()
            self._window.touch(_clock.monotonic())
            calls, retries = self._window.totals
            return calls, retries

    def _follow(self, reply: BudgetReply) -> None:
        """Take this replica's share of what the fleet may still spend (a sync's reply)."""
        fleet = self._fleet
        assert fleet is not None
        allowance = self.ratio * reply.calls + self.min_per_second * self.window
        with self._lock:
            self._fleet_error = None
            fleet.others_calls = reply.calls - reply.sent_calls
            fleet.others_retries = reply.retries - reply.sent_retries
            fleet.base_calls, fleet.base_retries = reply.sent_calls, reply.sent_retries
            left = max(0.0, allowance - reply.retries)
            # At least one retry while the fleet has one: shares of a fraction each
            # would strand it.
            fleet.share = max(left / reply.active, min(left, 1.0))

    def _fleet_changed(self, shared: bool, error: BaseException | None, first: bool) -> None:
        """Redis answers again, or not: raise ``error`` from :meth:`try_spend` when the
        store says so, else spend from this replica's own budget meanwhile."""
        with self._lock:
            blocking = not shared and isinstance(error, (SharedStateError, SharedSettingsError))
            self._fleet_error = error if blocking else None

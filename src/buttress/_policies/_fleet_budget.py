"""A retry budget shared by a fleet through Redis: the script and the budget's link.

Each replica's :class:`~._budget.RetryBudget` counts its calls and retries over its own
window, as without a store. The store's sync thread (:mod:`buttress._redis._sync`)
reports those totals every few ms with :data:`SCRIPT`, which records them under the
replica's id, drops reports older than the window (a replica that stopped), and returns
the fleet's sums and how many replicas report. From these the replica takes its share of
what the fleet may still spend, ``(ratio * calls + floor - retries) / replicas`` (at
least one retry while the fleet has one left), plus ``ratio`` per call it makes until the
next sync: so the fleet's retries stay within ``ratio * fleet calls + floor`` (give or
take one per replica) while no replica waits on Redis to decide. A replica that retries
alone takes a share of what is left at every sync, every few ms, so it soon has most of
it.

Reports are absolute (a replica's totals, not what changed), so a sync that is lost
loses nothing. Key: ``<namespace>:{retry_budget:<name>}:reports``, a hash of replica id
to ``"calls retries time"``; it expires when no replica has reported for a while.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Protocol

from buttress._redis import Link, Script, SharedState

__all__ = ["SCRIPT", "BudgetLink", "BudgetReply"]

_LUA: Final = r"""
local key = KEYS[1]
local id, calls, retries = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fresh, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HSET', key, id, string.format('%d %d %d', calls, retries, now))
local reports = redis.call('HGETALL', key)
local total_calls, total_retries, active = 0, 0, 0
local stale = {}
for i = 1, #reports, 2 do
  local c, r, at = string.match(reports[i + 1], '^(%d+) (%d+) (%d+)$')
  if c and now - tonumber(at) <= fresh then
    total_calls = total_calls + tonumber(c)
    total_retries = total_retries + tonumber(r)
    active = active + 1
  else
    stale[#stale + 1] = reports[i]
  end
end
if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
redis.call('PEXPIRE', key, ttl)
return {total_calls, total_retries, active}
"""

#: One round trip per sync: this replica's totals in, the fleet's out.
SCRIPT: Final = Script("buttress.retry_budget.sync", _LUA)


class BudgetReply(NamedTuple):
    """What one sync learned: the fleet's totals over the window, and this replica's
    totals that went into them."""

    calls: int
    retries: int
    #: Replicas that reported within the window (at least 1: this one).
    active: int
    sent_calls: int
    sent_retries: int


class _Owner(Protocol):
    _lock: threading.Lock

    def _totals(self) -> tuple[int, int]: ...

    def _follow(self, reply: BudgetReply) -> None: ...

    def _fleet_changed(self, shared: bool, error: BaseException | None, first: bool) -> None: ...


class BudgetLink(Link):
    """A replica's side of a shared budget: its last report, and its share until the next.

    The budget reads :attr:`share`, :attr:`base_calls` and :attr:`base_retries` under its
    own lock; :meth:`apply` writes them there (through the budget's ``_follow``).
    """

    __slots__ = (
        "_args",
        "_id",
        "_sent",
        "base_calls",
        "base_retries",
        "dirty",
        "keys",
        "others_calls",
        "others_retries",
        "share",
    )

    def __init__(self, owner: _Owner, state: SharedState, *, window: float) -> None:
        super().__init__(state, owner)
        self._owner: weakref.ref[_Owner]  # type: ignore[assignment]  # the narrower kind
        self.keys = (state.key("reports"),)
        window_ms = max(1, math.ceil(window * 1000))
        self._args = (window_ms, 2 * window_ms + 60_000)
        self._sent = (0, 0)
        self._id = (0, "")
        #: Retries this replica may spend beyond :attr:`base_retries` (plus ``ratio`` per
        #: call beyond :attr:`base_calls`); ``None`` before the first sync.
        self.share: float | None = None
        self.base_calls = 0
        self.base_retries = 0
        #: The other replicas' totals at the last sync (for ``stats()``).
        self.others_calls = 0
        self.others_retries = 0
        #: A retry was asked for since the last sync: report at the next visit.
        self.dirty = False

    def pending(self) -> bool:
        return self.dirty

    def take(self) -> tuple[Script, Sequence[str], Sequence[Any]]:
        self.dirty = False
        owner = self._owner()
        calls, retries = (0, 0) if owner is None else owner._totals()
        self._sent = (calls, retries)
        return SCRIPT, self.keys, (self._replica(), calls, retries, *self._args)

    def apply(self, reply: Any) -> None:
        owner = self._owner()
        if owner is not None:
            calls, retries, active = (int(value) for value in reply)
            owner._follow(BudgetReply(calls, retries, max(1, active), *self._sent))

    def _replica(self) -> str:
        """This budget's id in the reports: one per process and budget (a forked child
        gets its own), the same from one sync to the next."""
        pid = os.getpid()
        if self._id[0] != pid:
            self._id = (pid, f"{pid}-{uuid.uuid4().hex[:12]}")
        return self._id[1]

"""A circuit breaker's state kept in Redis for a fleet: the script and the breaker's link.

Every replica's :class:`~._breaker.CircuitBreaker` of one name decides its calls from a
local copy of the fleet's state, and counts their outcomes locally. The store's sync
thread (:mod:`buttress._redis._sync`) sends the counts every few ms with :data:`SCRIPT`,
which, in one round trip:

* adds them to the fleet's sliding window (ten buckets of server time, ``TIME``), if
  they belong to the fleet's current generation (counts of a call admitted before the
  last transition are ignored, as in one process);
* applies the breaker's rules to the fleet's totals: closed opens on the ratios, open
  turns half-open once ``open_for`` has passed, half-open trials close or reopen it;
* grants half-open trial permits to the replicas that asked for one, at most
  ``half_open_calls`` for the whole fleet (a permit whose trial never reports back
  returns to the pool after ``open_for``);
* returns the state, which the replica copies (and announces as a transition, so every
  replica's events and metrics see it).

Keys (one hash tag, so one Cluster slot): ``<namespace>:{circuit_breaker:<name>}:state``,
a hash of the state machine, and ``...:window``, a hash of the window's buckets
(``c:<slice>``, ``f:<slice>``, ``s:<slice>``: calls, failures, slow calls). Both expire
when no replica has synced for a while.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, Protocol

from buttress._redis import Link, Script, SharedState

__all__ = ["SCRIPT", "BreakerLink", "FleetReply"]

_LUA: Final = r"""
local state_key, window_key = KEYS[1], KEYS[2]
local gen_in = tonumber(ARGV[1])
local calls, fails, slows = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tdone, tfail, tslow = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local want, command = tonumber(ARGV[8]), ARGV[9]
local ratio, minimum = tonumber(ARGV[10]), tonumber(ARGV[11])
local window, open_for = tonumber(ARGV[12]), tonumber(ARGV[13])
local planned, slow_ratio = tonumber(ARGV[14]), tonumber(ARGV[15])
local slow_label, window_label = ARGV[16], ARGV[17]
local buckets, ttl = tonumber(ARGV[18]), tonumber(ARGV[19])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local flat = redis.call('HGETALL', state_key)
local s = {}
for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
local state = s.state or 'closed'
local gen = tonumber(s.gen or '0')
local retry_at = tonumber(s.retry_at or '-1')
local permits = tonumber(s.permits or '0')
local lease = tonumber(s.lease or '0')
local done = tonumber(s.done or '0')
local failed = tonumber(s.failed or '0')
local slowed = tonumber(s.slowed or '0')
local reason = s.reason or ''
local forced = s.forced == '1'

local epoch = math.floor(now * buckets / window)
local totals = {c = 0, f = 0, s = 0}
local cells = redis.call('HGETALL', window_key)
local stale = {}
for i = 1, #cells, 2 do
  local kind, at = string.match(cells[i], '^(%a):(%-?%d+)$')
  if kind and tonumber(at) > epoch - buckets then
    totals[kind] = totals[kind] + tonumber(cells[i + 1])
  else
    stale[#stale + 1] = cells[i]
  end
end
if #stale > 0 then redis.call('HDEL', window_key, unpack(stale)) end

local function move(new, why)
  redis.call('DEL', window_key)
  totals = {c = 0, f = 0, s = 0}
  permits = 0
  if new == 'half_open' then permits = planned end
  lease, done, failed, slowed = 0, 0, 0, 0
  if new == 'open' then
    retry_at = now + open_for
    reason = why
  else
    retry_at = -1
    reason = ''
  end
  if new ~= state then
    state = new
    gen = gen + 1
  end
end

local function verdict(n, f, sl)
  if f > 0 and f >= ratio * n then
    return string.format('%d of %d calls failed', f, n)
  end
  if slow_ratio > 0 and sl > 0 and sl >= slow_ratio * n then
    return string.format('%d of %d calls took %ss or longer', sl, n, slow_label)
  end
  return ''
end

if command == 'reset' then
  forced = false
  move('closed', '')
elseif command == 'force_open' then
  forced = true
  move('open', 'forced open')
  retry_at = -1
end

if state == 'open' and not forced and retry_at >= 0 and now >= retry_at then
  move('half_open', '')
end

if state == 'closed' and calls > 0 and (gen_in < 0 or gen_in == gen) then
  local slice = tostring(epoch)
  redis.call('HINCRBY', window_key, 'c:' .. slice, calls)
  totals.c = totals.c + calls
  if fails > 0 then
    redis.call('HINCRBY', window_key, 'f:' .. slice, fails)
    totals.f = totals.f + fails
  end
  if slows > 0 then
    redis.call('HINCRBY', window_key, 's:' .. slice, slows)
    totals.s = totals.s + slows
  end
  if totals.c >= minimum then
    local why = verdict(totals.c, totals.f, totals.s)
    if why ~= '' then move('open', why .. ' within ' .. window_label .. 's') end
  end
elseif state == 'half_open' and tdone > 0 and gen_in == gen then
  done = done + tdone
  failed = failed + tfail
  slowed = slowed + tslow
  local why = verdict(planned, failed, slowed)
  if why ~= '' then
    move('open', why .. ' in half-open trials')
  elseif done >= planned then
    move('closed', '')
  end
end

local granted = 0
if state == 'half_open' then
  if permits <= 0 and done < planned and lease > 0 and now >= lease then
    permits = planned - done  -- trials that never reported back: others may try
  end
  if want > 0 and permits > 0 then
    granted = math.min(want, permits)
    permits = permits - granted
    lease = now + open_for
  end
end

redis.call('HSET', state_key,
  'state', state, 'gen', gen, 'retry_at', string.format('%d', retry_at),
  'permits', permits, 'lease', string.format('%d', lease), 'done', done,
  'failed', failed, 'slowed', slowed, 'reason', reason, 'forced', forced and '1' or '0')
redis.call('PEXPIRE', state_key, ttl)
redis.call('PEXPIRE', window_key, ttl)

local retry_in = -1
if state == 'open' and retry_at >= 0 then retry_in = math.max(0, retry_at - now) end
local c, f, sl = totals.c, totals.f, totals.s
if state == 'half_open' then
  c, f, sl = done, failed, slowed
elseif state == 'open' then
  c, f, sl = 0, 0, 0
end
return {state, gen, retry_in, reason, granted, c, f, sl, forced and 1 or 0}
"""

#: The one round trip of a sync: counts in, rules applied, state out (see the module).
SCRIPT: Final = Script("buttress.circuit_breaker.sync", _LUA)


class FleetReply(NamedTuple):
    """The script's reply, decoded."""

    state: str
    generation: int
    #: Seconds until an open breaker admits a trial (``None``: not open, or forced).
    retry_in: float | None
    reason: str
    #: Half-open trial permits granted to this replica.
    granted: int
    calls: int
    failures: int
    slow_calls: int
    forced: bool


def decode(reply: Sequence[Any]) -> FleetReply:
    """The script's raw reply as a :class:`FleetReply`."""
    state, gen, retry_in, reason, granted, calls, failures, slow, forced = reply
    return FleetReply(
        state.decode() if isinstance(state, bytes) else str(state),
        int(gen),
        None if int(retry_in) < 0 else int(retry_in) / 1000,
        reason.decode() if isinstance(reason, bytes) else str(reason),
        int(granted),
        int(calls),
        int(failures),
        int(slow),
        bool(int(forced)),
    )


class _Owner(Protocol):
    """What the link asks of its breaker (all of it under the breaker's lock)."""

    _lock: threading.Lock

    def _follow(self, reply: FleetReply) -> None: ...

    def _fleet_changed(self, shared: bool, error: BaseException | None, first: bool) -> None: ...


class BreakerLink(Link):
    """The counts one replica owes the fleet, and where its breaker's state lives.

    The breaker writes the counters under its own lock; the sync thread takes them under
    the same lock (:meth:`take`) and hands the reply back (:meth:`apply`).
    """

    __slots__ = (
        "_args",
        "calls",
        "command",
        "counts",
        "failures",
        "generation",
        "keys",
        "retry_wait",
        "slow",
        "trial_failures",
        "trial_slow",
        "trials",
        "want",
    )

    def __init__(
        self,
        owner: _Owner,
        state: SharedState,
        *,
        failure_ratio: float,
        minimum_calls: int,
        window: float,
        open_for: float,
        half_open_calls: int,
        slow_call_duration: float | None,
        slow_call_ratio: float,
        retry_wait: float,
    ) -> None:
        super().__init__(state, owner)
        self._owner: weakref.ref[_Owner]  # type: ignore[assignment]  # the narrower kind
        self.keys = (state.key("state"), state.key("window"))
        window_ms = max(1, math.ceil(window * 1000))
        open_ms = max(1, math.ceil(open_for * 1000))
        self._args = (
            repr(failure_ratio),
            minimum_calls,
            window_ms,
            open_ms,
            half_open_calls,
            repr(slow_call_ratio) if slow_call_duration is not None else "0",
            f"{slow_call_duration or 0:g}",
            f"{window:g}",
            10,
            2 * (window_ms + open_ms) + 60_000,
        )
        #: A refused caller may try again after this long (the next sync's answer).
        self.retry_wait = retry_wait
        #: The fleet's generation this replica's copy belongs to (-1: not synced yet).
        self.generation = -1
        self.calls = self.failures = self.slow = 0
        self.trials = self.trial_failures = self.trial_slow = 0
        #: Refused calls that wanted a half-open trial permit since the last sync.
        self.want = 0
        #: ``"reset"`` or ``"force_open"`` to send with the next sync, or ``""``.
        self.command = ""
        #: The fleet's ``(calls, failures, slow_calls)`` as of the last sync.
        self.counts = (0, 0, 0)

    def forget(self) -> None:
        """Drop the counts not sent yet (the lock is held): a transition made them moot."""
        self.calls = self.failures = self.slow = 0
        self.trials = self.trial_failures = self.trial_slow = 0

    def pending(self) -> bool:
        return bool(self.calls or self.trials or self.want or self.command)

    def take(self) -> tuple[Script, Sequence[str], Sequence[Any]]:
        owner = self._owner()
        lock = owner._lock if owner is not None else threading.Lock()
        with lock:
            args = (
                self.generation,
                self.calls,
                self.failures,
                self.slow,
                self.trials,
                self.trial_failures,
                self.trial_slow,
                self.want,
                self.command,
                *self._args,
            )
            self.forget()
            self.want = 0
            self.command = ""
        return SCRIPT, self.keys, args

    def apply(self, reply: Any) -> None:
        owner = self._owner()
        if owner is not None:
            owner._follow(decode(reply))

"""The store's Redis commands and Lua scripts.

Every key of one cached call shares the hash tag ``{digest}`` (see
``RedisStore.key_name``), so each script and command below touches one hash slot and runs
unchanged on a single server, behind Sentinel and on a Redis Cluster:

* ``<entry>``: the sealed value;
* ``<entry>:lock``: the token of the process computing it (``SET NX PX``);
* ``<entry>:waiting``: set by processes waiting for that computation;
* ``<entry>:done``: a one-item list the holder pushes its token to when it stores the value
  or lets go, if anyone is waiting; waiters block on it with ``BLMOVE`` (moving the item
  to the same list, so every waiter sees it) instead of polling.

Round trips: a hit is one ``EVALSHA`` (:data:`LOOKUP`); a miss is :data:`LOOKUP`, which
takes the lock when nothing is stored, then :data:`STORE`, which writes the value and lets
go of the lock: two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, final

from buttress._redis import Call, Script

__all__ = [
    "ACQUIRE",
    "CLEAR",
    "DELETE",
    "GET",
    "LOOKUP",
    "RELEASE",
    "RELEASE_ALL",
    "RENEW",
    "RENEW_ALL",
    "SET",
    "STORE",
    "WAIT_THEN_GET",
]

#: Keys deleted per UNLINK when a function's entries are cleared.
SCAN_BATCH: Final = 500

GET: Final = Call("get")
DELETE: Final = Call("delete")

#: Read the entry; when there is none, take the lock in the same round trip.
#: KEYS: entry. ARGV: token, the lock's first lifetime (ms).
#: Returns the value, 1 (the lock is ours: nothing is stored) or 2 (another holds it).
#: The hit path of every read, so it is lean: one key and a bulk reply. The lock and the
#: wake-up list are named from the entry's key (same hash tag, so same slot on a cluster,
#: where a script may touch its keys' slot); the other scripts declare every key.
LOOKUP: Final = Script(
    "lookup",
    """
local value = redis.call('get', KEYS[1])
if value then
    return value
end
if redis.call('set', KEYS[1] .. ':lock', ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('del', KEYS[1] .. ':done')
    return 1
end
return 2
""",
)

#: Take the lock if free, reading the entry in the same round trip; if another process
#: holds it, say so and how long it has left, and flag that someone waits.
#: KEYS: lock, entry, done, waiting. ARGV: token, first lifetime (ms), flag lifetime (ms).
#: Returns {1, value or false} or {0, value or false, milliseconds the lock has left}.
ACQUIRE: Final = Script(
    "acquire",
    """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('del', KEYS[3])
    return {1, redis.call('get', KEYS[2])}
end
redis.call('set', KEYS[4], '1', 'PX', ARGV[3])
return {0, redis.call('get', KEYS[2]), redis.call('pttl', KEYS[1])}
""",
)

# Shared by STORE and RELEASE: let go of the lock if it is still ours, and wake whoever
# waits. KEYS[2] = lock, KEYS[3] = done, KEYS[4] = waiting; ARGV[3] = token,
# ARGV[4] = the wake-up's lifetime (ms).
_LET_GO: Final = """
if redis.call('get', KEYS[2]) == ARGV[3] then
    redis.call('del', KEYS[2])
    if redis.call('del', KEYS[4]) == 1 then
        redis.call('del', KEYS[3])
        redis.call('rpush', KEYS[3], ARGV[3])
        redis.call('pexpire', KEYS[3], ARGV[4])
    end
    return 1
end
return 0
"""

#: Store the value, and let go of the lock if still ours: one round trip.
#: KEYS: entry, lock, done, waiting. ARGV: value, px or '', token, wake-up lifetime (ms).
STORE: Final = Script(
    "store",
    """
if ARGV[2] == '' then
    redis.call('set', KEYS[1], ARGV[1])
else
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""
    + _LET_GO,
)

#: Let go of the lock without a value (the computation failed or was cancelled).
#: KEYS: entry (unused), lock, done, waiting. ARGV: '', '', token, wake-up lifetime (ms).
RELEASE: Final = Script("release", _LET_GO)

#: Extend the lock if still ours. KEYS: lock. ARGV: token, lifetime (ms).
RENEW: Final = Script(
    "renew",
    """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
""",
)


@final
class _Set:
    """``SET name blob [PX px]``."""

    __slots__ = ()

    def run(self, client: Any, name: str, blob: bytes, px: int | None) -> None:
        client.set(name, blob, px=px)

    async def arun(self, client: Any, name: str, blob: bytes, px: int | None) -> None:
        await client.set(name, blob, px=px)


@final
class _WaitThenGet:
    """``BLMOVE done done RIGHT LEFT timeout`` then ``GET entry``, pipelined: wait up to
    ``timeout`` seconds for an item in ``done`` (put back, so that every waiter sees it),
    and read the entry the moment the wait ends: the server runs the GET right after the
    BLMOVE returns, so waking and reading cost one round trip. Returns the entry's bytes.
    """

    __slots__ = ()

    def run(self, client: Any, done: str, name: str, timeout: float) -> Any:
        pipe = client.pipeline(transaction=False)
        pipe.blmove(done, done, timeout, "RIGHT", "LEFT")
        pipe.get(name)
        return pipe.execute()[1]

    async def arun(self, client: Any, done: str, name: str, timeout: float) -> Any:
        pipe = client.pipeline(transaction=False)
        pipe.blmove(done, done, timeout, "RIGHT", "LEFT")
        pipe.get(name)
        return (await pipe.execute())[1]


@final
class _Clear:
    """Delete every key matching a pattern (on every node of a cluster), in batches."""

    __slots__ = ()

    def run(self, client: Any, pattern: str) -> None:
        batch: list[bytes] = []
        for name in client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                client.unlink(*batch)  # a cluster client splits it by slot
                batch.clear()
        if batch:
            client.unlink(*batch)

    async def arun(self, client: Any, pattern: str) -> None:
        batch: list[bytes] = []
        async for name in client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)


@final
class _Pipelined:
    """One script over many key sets: ``run(client, [(keys, args), ...])`` returns each
    result (sync clients only: the lock keeper's thread uses it). One pipeline, so one
    round trip, on a server; on a cluster, whose pipelines run no scripts, one call each.
    """

    __slots__ = ("script",)

    def __init__(self, script: Script) -> None:
        self.script = script

    def run(self, client: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        import redis.cluster

        if isinstance(client, redis.cluster.RedisCluster):
            return [self.script.run(client, keys, args) for keys, args in calls]
        pipe = client.pipeline(transaction=False)
        lua = self.script.lua
        for keys, args in calls:
            pipe.eval(lua, len(keys), *keys, *args)  # EVAL: a pipeline cannot load scripts
        return list(pipe.execute())

    async def arun(self, client: Any, calls: Sequence[Any]) -> list[Any]:
        raise NotImplementedError("the lock keeper works from a thread")


SET: Final = _Set()
WAIT_THEN_GET: Final = _WaitThenGet()
CLEAR: Final = _Clear()
#: RENEW for many locks at once.
RENEW_ALL: Final = _Pipelined(RENEW)
#: RELEASE for many locks at once.
RELEASE_ALL: Final = _Pipelined(RELEASE)

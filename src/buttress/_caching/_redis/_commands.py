"""The store's Redis commands, on a sync client, an asyncio client, or in worker threads.

Each class offers the same operations (read, write, delete, the lock's scripts, clearing a
function's keys); the store picks the one that fits the caller (:mod:`._connection`).
Scripts run by ``EVALSHA`` through redis-py's ``register_script``, which loads them again
when the server has lost them (a restart, ``SCRIPT FLUSH``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast, final

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    import redis as redis_module
    import redis.asyncio as redis_asyncio

__all__ = [
    "ACQUIRE",
    "RELEASE",
    "RENEW",
    "STORE",
    "AnyAsyncCommands",
    "AsyncCommands",
    "SyncCommands",
    "ThreadCommands",
]

#: Keys deleted per UNLINK when a function's entries are cleared.
SCAN_BATCH: Final = 500

# KEYS[1] = lock, ARGV[1] = token, ARGV[2] = milliseconds
RENEW: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
# Take the lock if free and read the entry: one command, one round trip.
# KEYS[1] = lock, KEYS[2] = entry, ARGV[1] = token, ARGV[2] = milliseconds
ACQUIRE: Final = """
local taken = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return {taken and 1 or 0, redis.call('get', KEYS[2])}
"""
# Store the value and let go of the lock if still ours: one command, one round trip.
# KEYS[1] = entry, KEYS[2] = lock, ARGV[1] = value, ARGV[2] = milliseconds or '', ARGV[3] = token
STORE: Final = """
if ARGV[2] == '' then
    redis.call('set', KEYS[1], ARGV[1])
else
    redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.call('get', KEYS[2]) == ARGV[3] then
    redis.call('del', KEYS[2])
end
return 1
"""


@final
class SyncCommands:
    """The store's Redis commands on a sync client (thread-safe: a connection pool)."""

    __slots__ = ("acquire_script", "client", "release_script", "renew_script", "store_script")

    def __init__(self, client: redis_module.Redis) -> None:
        self.client = client
        # EVALSHA, loading the script again if the server lost it (a restart)
        self.renew_script = client.register_script(RENEW)
        self.release_script = client.register_script(RELEASE)
        self.acquire_script = client.register_script(ACQUIRE)
        self.store_script = client.register_script(STORE)

    def get(self, name: str) -> bytes | None:
        return cast("bytes | None", self.client.get(name))  # decode_responses is off

    def set(self, name: str, blob: bytes, px: int | None) -> None:
        self.client.set(name, blob, px=px)

    def delete(self, name: str) -> bool:
        return bool(self.client.delete(name))

    def acquire(self, lock: str, token: str, px: int, name: str) -> tuple[bool, bytes | None]:
        """Take the lock if free, and read the entry, in one round trip."""
        taken, blob = self.acquire_script(keys=[lock, name], args=[token, px])
        return bool(taken), blob

    def renew(self, lock: str, token: str, px: int) -> bool:
        return bool(self.renew_script(keys=[lock], args=[token, px]))

    def renew_all(self, locks: list[tuple[str, str]], px: int) -> list[bool]:
        """Extend every ``(lock, token)`` still ours, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for lock, token in locks:
            pipe.eval(RENEW, 1, lock, token, px)  # EVAL: a pipeline would check EVALSHAs
        return [bool(result) for result in pipe.execute()]

    def release(self, lock: str, token: str) -> bool:
        return bool(self.release_script(keys=[lock], args=[token]))

    def set_and_release(
        self, name: str, blob: bytes, px: int | None, lock: str, token: str
    ) -> None:
        """Store the value and let go of its lock, in one round trip."""
        self.store_script(keys=[name, lock], args=[blob, "" if px is None else px, token])

    def clear(self, pattern: str) -> None:
        batch: list[bytes] = []
        for name in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def close(self) -> None:
        self.client.close()


@final
class AsyncCommands:
    """The same commands on a ``redis.asyncio`` client, inside one asyncio loop."""

    __slots__ = (
        "acquire_script",
        "client",
        "keeper",
        "release_script",
        "renew_script",
        "store_script",
    )

    def __init__(self, client: redis_asyncio.Redis) -> None:
        self.client = client
        self.renew_script = client.register_script(RENEW)
        self.release_script = client.register_script(RELEASE)
        self.acquire_script = client.register_script(ACQUIRE)
        self.store_script = client.register_script(STORE)
        self.keeper: asyncio.Task[None] | None = None

    async def get(self, name: str) -> bytes | None:
        return cast("bytes | None", await self.client.get(name))

    async def set(self, name: str, blob: bytes, px: int | None) -> None:
        await self.client.set(name, blob, px=px)

    async def delete(self, name: str) -> bool:
        return bool(await self.client.delete(name))

    async def acquire(
        self, lock: str, token: str, px: int, name: str
    ) -> tuple[bool, bytes | None]:
        taken, blob = await self.acquire_script(keys=[lock, name], args=[token, px])
        return bool(taken), blob

    async def renew(self, lock: str, token: str, px: int) -> bool:
        return bool(await self.renew_script(keys=[lock], args=[token, px]))

    async def release(self, lock: str, token: str) -> bool:
        return bool(await self.release_script(keys=[lock], args=[token]))

    async def set_and_release(
        self, name: str, blob: bytes, px: int | None, lock: str, token: str
    ) -> None:
        await self.store_script(keys=[name, lock], args=[blob, "" if px is None else px, token])

    async def clear(self, pattern: str) -> None:
        batch: list[bytes] = []
        async for name in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(name)
            if len(batch) >= SCAN_BATCH:
                await self.client.unlink(*batch)
                batch.clear()
        if batch:
            await self.client.unlink(*batch)

    async def close(self) -> None:
        await self.client.aclose()


@final
class ThreadCommands:
    """The sync commands in anyio worker threads: how coroutines use Redis on trio."""

    __slots__ = ("sync",)

    def __init__(self, sync: SyncCommands) -> None:
        self.sync = sync

    async def get(self, name: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self.sync.get, name)

    async def set(self, name: str, blob: bytes, px: int | None) -> None:
        await anyio.to_thread.run_sync(self.sync.set, name, blob, px)

    async def delete(self, name: str) -> bool:
        return await anyio.to_thread.run_sync(self.sync.delete, name)

    async def acquire(
        self, lock: str, token: str, px: int, name: str
    ) -> tuple[bool, bytes | None]:
        return await anyio.to_thread.run_sync(self.sync.acquire, lock, token, px, name)

    async def renew(self, lock: str, token: str, px: int) -> bool:
        return await anyio.to_thread.run_sync(self.sync.renew, lock, token, px)

    async def release(self, lock: str, token: str) -> bool:
        return await anyio.to_thread.run_sync(self.sync.release, lock, token)

    async def set_and_release(
        self, name: str, blob: bytes, px: int | None, lock: str, token: str
    ) -> None:
        await anyio.to_thread.run_sync(self.sync.set_and_release, name, blob, px, lock, token)

    async def clear(self, pattern: str) -> None:
        await anyio.to_thread.run_sync(self.sync.clear, pattern)

    async def close(self) -> None:
        return None  # the sync client belongs to the store: store.close() closes it


AnyAsyncCommands = AsyncCommands | ThreadCommands

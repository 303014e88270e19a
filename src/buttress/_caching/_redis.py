"""RedisStore: one cache and one single-flight shared by every replica, through Redis.

Plain functions use redis-py's sync client; coroutine functions use ``redis.asyncio``
with one client per event loop (its connections belong to the loop that opened them).
``redis.asyncio`` runs on asyncio only: on trio, the store runs the sync client in anyio
worker threads instead. ``redis`` itself is imported when a store is made, never before.

What lives where:

* an entry is one Redis string, ``{namespace}:{version}:{module.qualname}:{digest}``,
  holding the sealed value (see :mod:`._codec`) and expiring by itself (``PX``) when the
  decorator's retention (ttl plus stale windows) has passed;
* a computation in progress holds ``<entry key>:lock`` (``SET NX PX lock_ttl`` with a
  random token), renewed by the store's watchdog thread while the computation runs and
  deleted (if still ours) in the same round trip that stores the value.

The decisions of the cross-process flight are one plain generator (:meth:`_plan`): it
says which Redis command to run or how long to sleep next, and two drivers run it, one
blocking, one awaiting. Waiting for another process polls with jittered exponential
backoff (2 ms doubling to 50 ms): a waiter costs a few commands per second, never a busy
loop, and needs no connection of its own, unlike a pub/sub subscription per waiting key.

Failures: a connection error or a timeout marks the server down for a second, during
which operations fail at once instead of each paying the timeout; then the next call
tries again, so caching resumes by itself when Redis is back. With ``fail_open`` (the
default) the error goes out as it is and ``@cache_result`` survives it (counted,
reported, the call runs uncached); otherwise it goes out as
:class:`~buttress.RedisStoreError`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle
import random
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast, final

import anyio
import anyio.to_thread

from buttress import _clock, _settings
from buttress._errors import (
    ConfigurationError,
    RedisStoreError,
    RefusedValueError,
    UnencodableResultError,
)
from buttress._events import CacheStoreFailed, events

from ._codec import Envelope, Refused, Serializer
from ._keys import CacheKey, CacheScope
from ._local import LocalTable
from ._store import CacheEntry, CacheStore
from ._values import freeze

if TYPE_CHECKING:
    import redis as redis_module
    import redis.asyncio as redis_asyncio

__all__ = ["RedisStore", "RedisStoreStats"]

#: After a Redis failure, operations fail at once for this long (real seconds).
_RETRY_AFTER: Final = 1.0
#: A waiter's first poll, its growth and its ceiling (real seconds).
_FIRST_POLL: Final = 0.002
_MAX_POLL: Final = 0.05
#: Two readings of one stored stamp differ by clock drift only; a newer entry by more.
_SAME_STAMP: Final = 1e-3
_SCAN_BATCH: Final = 500
_DIGEST_GLOB: Final = "?" * 64  # key.digest() is 64 hex characters

# KEYS[1] = lock, ARGV[1] = token, ARGV[2] = milliseconds
_RENEW: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
# Take the lock if free and read the entry: one command, one round trip.
# KEYS[1] = lock, KEYS[2] = entry, ARGV[1] = token, ARGV[2] = milliseconds
_ACQUIRE_SCRIPT: Final = """
local taken = redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return {taken and 1 or 0, redis.call('get', KEYS[2])}
"""
# Store the value and let go of the lock if still ours: one command, one round trip.
# KEYS[1] = entry, KEYS[2] = lock, ARGV[1] = value, ARGV[2] = milliseconds or '', ARGV[3] = token
_STORE_SCRIPT: Final = """
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

# The flight's commands: (what, argument)
_GET: Final = "get"
_ACQUIRE: Final = "acquire"
_SLEEP: Final = "sleep"
_Plan = Generator[tuple[str, Any], Any, tuple[CacheEntry | None, bool]]


@dataclass(frozen=True, slots=True)
class RedisStoreStats:
    """A snapshot of one :class:`RedisStore`'s counters (``store.stats()``).

    Attributes:
        local_hits: reads answered by the in-process layer (``local_ttl``).
        reads: values read from Redis (hits there; absent keys not counted).
        writes: values written to Redis.
        refused: values read from Redis and refused (bad signature, garbage, a pickle
            payload where the safe codec is in use); each was treated as a miss.
        failures: Redis operations that failed (down, slower than ``timeout``, an error
            reply), not counting those skipped while Redis was marked down.
        skipped: operations not attempted because Redis failed less than a second ago.
        waits: computations this process left to another process holding the lock.
        takeovers: locks taken after waiting, because the holder finished without
            storing a value, failed, or died and its lock expired.
    """

    local_hits: int
    reads: int
    writes: int
    refused: int
    failures: int
    skipped: int
    waits: int
    takeovers: int


class _Counters:
    # Bumped without a lock, like the decorator's: a lost increment under thread
    # contention is affordable, a lock on every read is not.
    __slots__ = (
        "failures",
        "local_hits",
        "reads",
        "refused",
        "skipped",
        "takeovers",
        "waits",
        "writes",
    )

    def __init__(self) -> None:
        self.local_hits = self.reads = self.writes = self.refused = 0
        self.failures = self.skipped = self.waits = self.takeovers = 0


# --- the commands, blocking and awaiting ---------------------------------------------------


@final
class _SyncOps:
    """The store's Redis commands on a sync client (thread-safe: a connection pool)."""

    __slots__ = ("acquire_script", "client", "release_script", "renew_script", "store_script")

    def __init__(self, client: redis_module.Redis) -> None:
        self.client = client
        # EVALSHA, loading the script again if the server lost it (a restart)
        self.renew_script = client.register_script(_RENEW)
        self.release_script = client.register_script(_RELEASE)
        self.acquire_script = client.register_script(_ACQUIRE_SCRIPT)
        self.store_script = client.register_script(_STORE_SCRIPT)

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
            pipe.eval(_RENEW, 1, lock, token, px)  # EVAL: a pipeline would check EVALSHAs
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
        for name in self.client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def close(self) -> None:
        self.client.close()


@final
class _AsyncOps:
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
        self.renew_script = client.register_script(_RENEW)
        self.release_script = client.register_script(_RELEASE)
        self.acquire_script = client.register_script(_ACQUIRE_SCRIPT)
        self.store_script = client.register_script(_STORE_SCRIPT)
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
        async for name in self.client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                await self.client.unlink(*batch)
                batch.clear()
        if batch:
            await self.client.unlink(*batch)

    async def close(self) -> None:
        await self.client.aclose()


@final
class _ThreadOps:
    """The sync commands in anyio worker threads: how coroutines use Redis on trio."""

    __slots__ = ("sync",)

    def __init__(self, sync: _SyncOps) -> None:
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


_AnyAsyncOps = _AsyncOps | _ThreadOps


@final
class _Watchdog:
    """Renews every computation lock one store holds, from one thread.

    A thread rather than a task per computation: it costs a computation nothing to
    register, and it keeps renewing while a coroutine blocks its event loop with CPU
    work (a model running in ``async def``), where a renewal task would starve and let
    another replica take over and compute the same key again. Started on demand; it
    stops after ``lock_ttl`` without locks to renew, or on ``store.close()``.
    """

    __slots__ = ("_closed", "_condition", "_held", "_store", "_thread")

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._held: dict[str, str] = {}  # lock -> token
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, lock: str, token: str) -> None:
        with self._condition:
            self._held[lock] = token
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"buttress-redis-watchdog-{next(_WATCHDOGS)}",
                    daemon=True,
                )
                self._thread.start()

    def token(self, lock: str) -> str | None:
        """The token of ``lock`` if this store holds it."""
        return self._held.get(lock)

    def drop(self, lock: str, token: str) -> bool:
        """Stop renewing ``lock``; whether it was still held (so still to be released)."""
        with self._condition:
            if self._held.get(lock) != token:
                return False
            del self._held[lock]
            return True

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._condition:
            self._closed = False

    def _closing(self) -> bool:
        return self._closed

    def _run(self) -> None:
        store = self._store
        interval = store.lock_ttl / 3
        idle = 0.0
        with self._condition:
            try:
                while not self._condition.wait_for(self._closing, interval):
                    if not self._held:
                        idle += interval
                        if idle >= store.lock_ttl:
                            break
                        continue
                    idle = 0.0
                    locks = list(self._held.items())
                    self._condition.release()  # no lock held across the round trip
                    try:
                        kept = store._renew_all(locks)
                    finally:
                        self._condition.acquire()
                    for (lock, token), ours in zip(locks, kept, strict=True):
                        if not ours and self._held.get(lock) == token:
                            del self._held[lock]  # expired and maybe taken: not ours now
            finally:
                self._thread = None


_WATCHDOGS: Final = itertools.count(1)


def _wall() -> float:
    """Wall-clock seconds, the time base every replica shares for stored stamps.

    Moved by buttress's fake clock as it moves the monotonic one, so that a test's
    ``advance()`` ages entries read back from Redis too; with the real clock it is
    exactly ``time.time()``.
    """
    monotonic = _clock.monotonic
    if monotonic is time.monotonic:
        return time.time()
    return time.time() + (monotonic() - time.monotonic())


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this task, or ``None`` (trio, also as an asyncio guest)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if asyncio.current_task(loop) is not None else None


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _silent_scope(_key: Hashable) -> CacheScope:
    # Copies leaving the in-process layer are not entries leaving the cache (Redis still
    # has them): nothing to report to the function.
    return _LOCAL_SCOPE


_LOCAL_SCOPE: Final = CacheScope("<RedisStore local layer>")


@final
class RedisStore(CacheStore):
    """A cache store in Redis, shared by every process that points at the same server.

    Use it as ``@cache_result(ttl=30, store=RedisStore("redis://cache:6379/0"))``. Every
    replica then reads what any of them computed, and concurrent misses of one key across
    all of them cause one computation: the process that computes holds a lock key, the
    others wait for its value (and take over if it dies).

    Args:
        url: where Redis is (``redis://``, ``rediss://`` or ``unix://``); the store opens
            its own clients from it: a sync one for plain functions and one
            ``redis.asyncio`` client per event loop for coroutine functions.
        client: a ``redis.Redis`` or ``redis.asyncio.Redis`` you already have, instead of
            ``url``. A sync client also serves coroutine functions (in worker threads);
            an asyncio client serves coroutine functions on asyncio only. Its own
            timeouts and retries apply, not ``timeout``.
        namespace: the first part of every key, to share one Redis between applications.
        version: the second part: bump it when a function's output changes (a new model)
            so that no replica reads values computed by the old code.
        local_ttl: seconds (or a ``timedelta``) each process keeps a value it read or
            wrote in a small in-process layer in front of Redis, so hot keys cost no round
            trip; ``None`` (default) reads Redis every time. It bounds how long a replica
            may serve a value another replica has invalidated.
        local_maxsize: entries the in-process layer holds at most (least recently used go).
        timeout: seconds a Redis operation may take (waiting for a free connection,
            connecting, the reply) before it counts as failed; applies to the clients the
            store opens from ``url``.
        max_connections: connections each client the store opens may hold (the sync one,
            and each event loop's); more concurrent operations wait for a free one.
        fail_open: when Redis is down, slow or returns something the store refuses,
            run the call uncached (counted in ``fn.cache.stats().store_errors``, reported
            as ``CacheStoreFailed``, logged at most once a minute). ``False`` raises
            :class:`~buttress.RedisStoreError` instead.
        serializer: ``None`` (default) for the safe codec (JSON-like values, bytes, numpy
            arrays, pydantic models; nothing is ever unpickled); ``"pickle"`` for any
            picklable value, which requires ``signing_key``; or an object with
            ``dumps(value) -> bytes`` and ``loads(bytes)``, which must be safe on
            untrusted bytes unless ``signing_key`` is given.
        signing_key: a secret (at least 16 bytes, ``bytes`` or ``str``) shared by the
            replicas: every value is signed with HMAC-SHA256 over its key and bytes, and a
            value whose signature does not verify is refused before it is decoded.
        early_refresh_beta: probabilistic early refresh (XFetch): a read of a fresh value
            triggers its recomputation with probability ``exp(-left / (duration * beta))``
            (``left``: seconds until expiry, ``duration``: how long the computation took),
            while everyone else keeps being served the current value. ``1.0`` is the
            paper's choice, larger refreshes earlier, ``0`` (default) disables it.
        lock_ttl: seconds the computation lock lives without renewal (renewed every third
            of it while the computation runs): how long others wait before taking over
            from a process that died holding it.

    Raises:
        ConfigurationError: for a setting that cannot work.
        ModuleNotFoundError: redis-py is not installed (``pip install 'buttress[redis]'``).

    Caveats: values are visible to anyone who can read the Redis keys (sign them against
    tampering; encrypt at the network level with ``rediss://``). Errors are never cached
    or shared across processes: when the computing process fails, the others compute
    themselves, one at a time. Call :meth:`close` (closes the sync client, stops the
    watchdog thread) and ``await`` :meth:`aclose` in each event loop you used it in when
    you are done; a loop that ends through ``asyncio.run`` closes its client by itself.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        namespace: str = "buttress",
        version: str | int = "1",
        local_ttl: float | timedelta | None = None,
        local_maxsize: int = 1024,
        timeout: float | timedelta = 0.25,
        max_connections: int = 100,
        fail_open: bool = True,
        serializer: str | Serializer | None = None,
        signing_key: bytes | str | None = None,
        early_refresh_beta: float = 0.0,
        lock_ttl: float | timedelta = 5.0,
    ) -> None:
        try:
            import redis
            import redis.asyncio
            import redis.asyncio.retry
            import redis.retry
            from redis.backoff import NoBackoff
        except ModuleNotFoundError as exc:  # pragma: no cover - redis is in the test extra
            raise ModuleNotFoundError(
                "RedisStore needs redis-py: pip install 'buttress[redis]'", name="redis"
            ) from exc
        self._redis = redis
        if url is not None and client is not None:
            raise ConfigurationError("give RedisStore either url or client, not both")
        if client is not None and not isinstance(client, (redis.Redis, redis.asyncio.Redis)):
            raise ConfigurationError(
                f"client must be a redis.Redis or redis.asyncio.Redis, got {client!r}"
            )
        if url is None and client is None:
            url = "redis://127.0.0.1:6379/0"
        if url is not None and not isinstance(url, str):
            raise ConfigurationError(f"url must be a str like 'redis://host:6379/0', got {url!r}")
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ConfigurationError(
                f"namespace must be a non-empty str without spaces, got {namespace!r}"
            )
        if isinstance(version, bool) or not isinstance(version, (str, int)) or version == "":
            raise ConfigurationError(f"version must be a non-empty str or an int, got {version!r}")
        self.namespace = namespace
        self.version = str(version)
        self.timeout = _settings.seconds(timeout, "timeout", allow_zero=False)
        self.lock_ttl = _settings.seconds(lock_ttl, "lock_ttl", allow_zero=False)
        if self.lock_ttl < 0.05:
            raise ConfigurationError(f"lock_ttl must be at least 0.05 s, got {lock_ttl!r}")
        self.local_ttl = _settings.optional_seconds(local_ttl, "local_ttl", allow_zero=False)
        self.early_refresh_beta = _settings.number(
            early_refresh_beta, "early_refresh_beta", minimum=0
        )
        self.fail_open = bool(fail_open)
        key = _signing_key(signing_key)
        if (
            isinstance(serializer, str) and serializer != "pickle"
        ) or not isinstance(serializer, (str, Serializer, type(None))):
            raise ConfigurationError(
                "serializer must be None, 'pickle' or an object with dumps() and loads(), "
                f"got {serializer!r}"
            )
        if (serializer == "pickle" or serializer is pickle) and key is None:
            raise ConfigurationError(
                "serializer='pickle' needs signing_key=: unpickling bytes read from Redis "
                "runs whatever code they name, so only values this deployment signed are "
                "ever unpickled"
            )
        self._envelope = Envelope(serializer, key)
        self._local: LocalTable | None = None
        if self.local_ttl is not None:
            self._local = LocalTable(
                _settings.positive_int(local_maxsize, "local_maxsize"), None, _silent_scope
            )
        self._counters = _Counters()
        self._lock = threading.Lock()
        self._url = url
        self._user_client = client
        self.max_connections = _settings.positive_int(max_connections, "max_connections")
        # one retry, at once, on a broken connection only: a pooled connection that died
        # with a restarted server is replaced without failing the call; a timeout is not
        # retried, so an operation costs at most about ``timeout``. Each client kind gets
        # its own Retry class: redis-py 8.2 warns when the asyncio client is handed the
        # sync one.
        self._client_options: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
        }
        self._sync_retry = redis.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        )
        self._async_retry = redis.asyncio.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        )
        self._sync: _SyncOps | None = None
        if client is not None and isinstance(client, redis.Redis):
            self._sync = _SyncOps(client)
        # renewal needs a sync client: absent only when given a redis.asyncio client alone
        self._watchdog: _Watchdog | None = (
            None if client is not None and self._sync is None else _Watchdog(self)
        )
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncOps]
        self._loops = weakref.WeakKeyDictionary()
        self._down_until = 0.0
        self._errors: tuple[type[BaseException], ...] = (
            redis.RedisError,
            OSError,
            asyncio.TimeoutError,
        )
        self._outage_errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
            asyncio.TimeoutError,
        )
        self.address = self._address()

    def _address(self) -> str:
        if self._user_client is not None:
            kwargs = self._user_client.connection_pool.connection_kwargs
        else:
            assert self._url is not None
            try:
                kwargs = self._redis.connection.parse_url(self._url)  # type: ignore[no-untyped-call]
            except ValueError as exc:
                raise ConfigurationError(f"url is not a Redis URL: {exc}") from None
        if "path" in kwargs:
            return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    def __repr__(self) -> str:
        return (
            f"RedisStore({self.address!r}, namespace={self.namespace!r}, "
            f"version={self.version!r}, local_ttl={self.local_ttl!r})"
        )

    # --- naming -------------------------------------------------------------------------

    def _prefix(self, scope: CacheScope) -> str:
        return f"{self.namespace}:{self.version}:{scope.qualified_name}:"

    def key_name(self, key: CacheKey) -> str:
        """The Redis key holding the entry of ``key`` (its lock is this plus ``:lock``).

        Raises:
            UnkeyableArgumentError: an argument has no encoding stable across processes.
        """
        return self._prefix(key.scope) + key.digest()

    # --- statistics and lifecycle -------------------------------------------------------

    def stats(self) -> RedisStoreStats:
        """A frozen snapshot of this store's counters."""
        c = self._counters
        return RedisStoreStats(
            local_hits=c.local_hits,
            reads=c.reads,
            writes=c.writes,
            refused=c.refused,
            failures=c.failures,
            skipped=c.skipped,
            waits=c.waits,
            takeovers=c.takeovers,
        )

    def close(self) -> None:
        """Close the sync client the store opened (a ``client=`` you gave stays open).

        The store stays usable: it opens a new client when it next needs one.
        """
        if self._watchdog is not None:
            self._watchdog.close()
        if self._user_client is not None:
            return
        with self._lock:
            ops, self._sync = self._sync, None
        if ops is not None:
            ops.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client the store opened for the running loop."""
        loop = _running_asyncio_loop()
        if loop is None:
            return
        with self._lock:
            ops = self._loops.pop(loop, None)
        if ops is None:
            return
        if ops.keeper is not None:
            ops.keeper.cancel()
        if self._user_client is None:
            await ops.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
        self.close()

    # --- clients ------------------------------------------------------------------------

    def _sync_ops(self, operation: str) -> _SyncOps:
        ops = self._sync
        if ops is not None:
            return ops
        if self._url is None:
            raise RedisStoreError(
                "this RedisStore was given a redis.asyncio client, which cannot serve a "
                "plain function (or coroutines on trio): give it url= (it then opens both "
                "kinds of client) or a redis.Redis client",
                operation=operation,
                address=self.address,
            )
        with self._lock:
            if self._sync is None:
                pool = self._redis.BlockingConnectionPool.from_url(
                    self._url,
                    max_connections=self.max_connections,
                    timeout=self.timeout,
                    retry=self._sync_retry,
                    **self._client_options,
                )
                self._sync = _SyncOps(self._redis.Redis.from_pool(pool))
            return self._sync

    def _async_ops(self, operation: str) -> _AnyAsyncOps:
        loop = _running_asyncio_loop()
        if loop is None:  # trio: redis.asyncio needs asyncio, so use threads
            return _ThreadOps(self._sync_ops(operation))
        ops = self._loops.get(loop)
        if ops is not None:
            return ops
        user = self._user_client
        if user is not None and isinstance(user, self._redis.Redis):
            return _ThreadOps(self._sync_ops(operation))
        with self._lock:
            ops = self._loops.get(loop)
            if ops is None:
                if user is not None:
                    ops = _AsyncOps(user)
                else:
                    assert self._url is not None
                    pool = self._redis.asyncio.BlockingConnectionPool.from_url(
                        self._url,
                        max_connections=self.max_connections,
                        timeout=self.timeout,
                        retry=self._async_retry,
                        **self._client_options,
                    )
                    ops = _AsyncOps(self._redis.asyncio.Redis.from_pool(pool))
                    # redis.asyncio connections belong to this loop: close them when it
                    # shuts down (asyncio.run cancels what is left, which runs this)
                    ops.keeper = loop.create_task(self._keep(loop, ops))
                self._loops[loop] = ops
        return ops

    async def _keep(self, loop: asyncio.AbstractEventLoop, ops: _AsyncOps) -> None:
        try:
            await asyncio.Event().wait()  # until the loop cancels it on shutdown
        finally:
            with self._lock:
                mine = self._loops.get(loop) is ops  # aclose() may have closed it already
                if mine:
                    del self._loops[loop]
            if mine:
                await ops.close()

    # --- failures -----------------------------------------------------------------------

    def _check(self, operation: str) -> None:
        """Fail at once while Redis is marked down (real time: outages are real)."""
        until = self._down_until
        if until and time.monotonic() < until:
            self._counters.skipped += 1
            skipped = ConnectionError(
                f"Redis at {self.address} failed less than {_RETRY_AFTER:g} s ago; "
                "not tried again yet"
            )
            self._raise(operation, skipped, count=False)

    def _failed(self, operation: str, exc: BaseException) -> BaseException:
        self._counters.failures += 1
        if isinstance(exc, self._outage_errors):
            self._down_until = time.monotonic() + _RETRY_AFTER
        return self._failure(operation, exc)

    def _succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0

    def _failure(self, operation: str, exc: BaseException) -> BaseException:
        """What to raise for ``exc``: itself (fail open), or a RedisStoreError."""
        if self.fail_open:
            return exc
        return RedisStoreError(
            f"RedisStore could not {operation} at {self.address} and fail_open=False: "
            f"{exc!r}",
            operation=operation,
            address=self.address,
        )

    def _raise(self, operation: str, exc: BaseException, *, count: bool = True) -> NoReturn:
        failure = self._failed(operation, exc) if count else self._failure(operation, exc)
        if failure is exc:
            raise exc
        raise failure from exc

    def _call(self, operation: str, command: Callable[..., Any], *args: Any) -> Any:
        self._check(operation)
        try:
            result = command(*args)
        except self._errors as exc:
            self._raise(operation, exc)
        self._succeeded()
        return result

    async def _acall(
        self, operation: str, command: Callable[..., Awaitable[Any]], *args: Any
    ) -> Any:
        self._check(operation)
        try:
            result = await command(*args)
        except self._errors as exc:
            self._raise(operation, exc)
        self._succeeded()
        return result

    # --- values -------------------------------------------------------------------------

    def _local_get(self, key: CacheKey) -> CacheEntry | None:
        table = self._local
        if table is None:
            return None
        now = _clock.monotonic()
        pair = (key.scope, key.parts)
        entry = table.live(pair, now)
        # an expired copy is no answer: another replica may have stored a fresh value
        if entry is None or entry.expires <= now:
            return None
        table.touch(pair)
        self._counters.local_hits += 1
        return entry

    def _local_put(self, key: CacheKey, entry: CacheEntry) -> None:
        if self._local is not None:
            assert self.local_ttl is not None
            until = _clock.monotonic() + self.local_ttl
            self._local.put((key.scope, key.parts), entry, until)

    def _open(self, key: CacheKey, name: str, blob: bytes) -> CacheEntry:
        """The entry in ``blob``; raises ``Refused``."""
        value, stored_wall, ttl, duration = self._envelope.open(name.encode(), blob)
        frozen, arrays, size = freeze(value)
        entry = CacheEntry(
            frozen,
            stored_at=_clock.monotonic() - (_wall() - stored_wall),
            ttl=ttl,
            duration=duration,
            size=size,
            arrays=arrays,
        )
        self._counters.reads += 1
        self._local_put(key, entry)
        return entry

    def _read(self, key: CacheKey, name: str, blob: bytes | None) -> CacheEntry | None:
        """For get: the entry, or a refusal raised as the store's failure."""
        if blob is None:
            return None
        try:
            return self._open(key, name, blob)
        except Refused as refused:
            reason = refused.reason
        self._counters.refused += 1
        error = RefusedValueError(
            f"refused the value at {name!r}: {reason}", key=name, reason=reason
        )
        failure = self._failure("get", error)
        raise failure from (None if failure is error else error)

    def _read_quietly(
        self, key: CacheKey, name: str, blob: bytes | None
    ) -> CacheEntry | None:
        """For the flight: the entry, or ``None`` for a refused value (counted, reported)."""
        if blob is None:
            return None
        try:
            return self._open(key, name, blob)
        except Refused as refused:
            self._counters.refused += 1
            if events.active:
                error = RefusedValueError(
                    f"refused the value at {name!r}: {refused.reason}",
                    key=name,
                    reason=refused.reason,
                )
                events.emit(
                    CacheStoreFailed(
                        function=key.scope.function,
                        store=self.name,
                        operation="flight",
                        error=error,
                    )
                )
            return None

    def _seal(self, key: CacheKey, name: str, entry: CacheEntry) -> bytes:
        try:
            return self._envelope.seal(
                name.encode(),
                entry.value,
                stored_wall=_wall() - (_clock.monotonic() - entry.stored_at),
                ttl=entry.ttl,
                duration=entry.duration,
                function=key.scope.function,
            )
        except UnencodableResultError as exc:
            self._raise("set", exc, count=False)

    @staticmethod
    def _px(keep: float | None) -> int | None:
        return None if keep is None else max(1, math.ceil(keep * 1000))

    # --- the protocol, sync -------------------------------------------------------------

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        ops = self._sync_ops("get")
        return self._read(key, name, self._call("get", ops.get, name))

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        ops = self._sync_ops("set")
        lock, token = self._held(name)
        if token is None:
            self._call("set", ops.set, name, blob, self._px(keep))
        else:  # inside this store's flight: the value and the lock's release travel together
            self._call("set", ops.set_and_release, name, blob, self._px(keep), lock, token)
            self._dropped(lock, token)
        self._counters.writes += 1

    def _held(self, name: str) -> tuple[str, str | None]:
        lock = name + ":lock"
        watchdog = self._watchdog
        return lock, None if watchdog is None else watchdog.token(lock)

    def _dropped(self, lock: str, token: str) -> bool:
        """Forget a lock this store held; whether it still needed releasing."""
        watchdog = self._watchdog
        return watchdog is None or watchdog.drop(lock, token)

    def _renew_all(self, locks: list[tuple[str, str]]) -> list[bool]:
        """For the watchdog: extend ``locks``; a failure keeps them (it expires them)."""
        px = self._px(self.lock_ttl)
        assert px is not None
        try:
            return self._sync_ops("flight").renew_all(locks, px)
        except self._errors as exc:
            self._failed("flight", exc)
            return [True] * len(locks)

    def delete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        ops = self._sync_ops("delete")
        return bool(self._call("delete", ops.delete, name)) or local

    def clear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        ops = self._sync_ops("clear")
        self._call("clear", ops.clear, _glob_escape(self._prefix(scope)) + _DIGEST_GLOB)

    def _clear_local(self, scope: CacheScope) -> None:
        if self._local is not None:
            self._local.clear(lambda pair: pair[0] is scope)  # type: ignore[index]

    # --- the protocol, async ------------------------------------------------------------

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        ops = self._async_ops("get")
        return self._read(key, name, await self._acall("get", ops.get, name))

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        ops = self._async_ops("set")
        lock, token = self._held(name)
        if token is None:
            await self._acall("set", ops.set, name, blob, self._px(keep))
        else:
            px = self._px(keep)
            await self._acall("set", ops.set_and_release, name, blob, px, lock, token)
            self._dropped(lock, token)
        self._counters.writes += 1

    async def adelete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        ops = self._async_ops("delete")
        return bool(await self._acall("delete", ops.delete, name)) or local

    async def aclear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        ops = self._async_ops("clear")
        await self._acall("clear", ops.clear, _glob_escape(self._prefix(scope)) + _DIGEST_GLOB)

    # --- the flight ---------------------------------------------------------------------

    def _plan(
        self, key: CacheKey, name: str, current: CacheEntry | None
    ) -> _Plan:
        """The cross-process flight's decisions: returns ``(entry to serve, lock held)``.

        Take the lock (reading the entry in the same round trip); holding it, serve a
        value that appeared meanwhile, or compute. When another process holds it: serve
        ``current`` if there is one, else poll with backoff until a fresh value appears
        (serve it) or the lock is free (take it).
        """
        acquired, blob = yield (_ACQUIRE, None)
        waited = False
        delay = _FIRST_POLL
        while True:
            if acquired:
                found = self._read_quietly(key, name, blob)
                if found is not None and self._newer(found, current):
                    return found, True  # stored just before we took the lock
                if waited:
                    self._counters.takeovers += 1  # and no value came: we compute
                return None, True
            if current is not None:
                return current, False  # someone is refreshing it: serve what we have
            if not waited:
                self._counters.waits += 1
                waited = True
            yield (_SLEEP, delay * (0.75 + random.random() / 2))
            delay = min(delay * 2, _MAX_POLL)
            found = self._read_quietly(key, name, (yield (_GET, None)))
            if found is not None and found.expires > _clock.monotonic():
                return found, False
            acquired, blob = yield (_ACQUIRE, None)

    @staticmethod
    def _newer(found: CacheEntry, current: CacheEntry | None) -> bool:
        if found.expires <= _clock.monotonic():
            return False
        return current is None or found.stored_at > current.stored_at + _SAME_STAMP

    def _run(self, plan: _Plan, ops: _SyncOps, name: str, lock: str, token: str) -> Any:
        px = self._px(self.lock_ttl)
        answer: Any = None
        try:
            while True:
                command, argument = plan.send(answer)
                if command == _SLEEP:
                    time.sleep(argument)  # real time: the lock's expiry in Redis is real
                    answer = None
                elif command == _GET:
                    answer = self._call("flight", ops.get, name)
                else:
                    answer = self._call("flight", ops.acquire, lock, token, px, name)
        except StopIteration as done:
            return done.value

    async def _arun(
        self, plan: _Plan, ops: _AnyAsyncOps, name: str, lock: str, token: str
    ) -> Any:
        px = self._px(self.lock_ttl)
        answer: Any = None
        try:
            while True:
                command, argument = plan.send(answer)
                if command == _SLEEP:
                    await anyio.sleep(argument)  # real time: the lock's expiry is real
                    answer = None
                elif command == _GET:
                    answer = await self._acall("flight", ops.get, name)
                else:
                    answer = await self._acall("flight", ops.acquire, lock, token, px, name)
        except StopIteration as done:
            return done.value

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        """Take the key's lock across processes, or wait for its holder's value."""
        name = self.key_name(key)
        lock = name + ":lock"
        token = secrets.token_hex(16)
        ops = self._sync_ops("flight")
        try:
            found, held = self._run(self._plan(key, name, current), ops, name, lock, token)
        except BaseException:
            self._release(ops.release, lock, token)  # in case it was taken before the failure
            raise
        if not held:
            yield found
            return
        assert self._watchdog is not None  # a sync client exists, so a watchdog does
        self._watchdog.hold(lock, token)
        try:
            yield found
        finally:
            if self._dropped(lock, token):  # not already released along with the value
                self._release(ops.release, lock, token)

    def _release(self, release: Callable[[str, str], Any], lock: str, token: str) -> None:
        # Never raised: the value is computed (and stored) by now, and a lock that could
        # not be deleted expires by itself within lock_ttl. Counted as a failure.
        if self._down_until and time.monotonic() < self._down_until:
            return
        try:
            release(lock, token)
        except self._errors as exc:
            self._failed("flight", exc)

    async def _arelease(
        self, release: Callable[[str, str], Awaitable[Any]], lock: str, token: str
    ) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            return
        try:
            await release(lock, token)
        except self._errors as exc:
            self._failed("flight", exc)

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        """Async :meth:`flight`: waits with ``anyio.sleep``; the watchdog renews."""
        name = self.key_name(key)
        lock = name + ":lock"
        token = secrets.token_hex(16)
        ops = self._async_ops("flight")
        try:
            found, held = await self._arun(self._plan(key, name, current), ops, name, lock, token)
        except BaseException:
            with anyio.CancelScope(shield=True):  # in case it was taken before the failure
                await self._arelease(ops.release, lock, token)
            raise
        if not held:
            yield found
            return
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.hold(lock, token)
            try:
                yield found
            finally:
                if self._dropped(lock, token):
                    with anyio.CancelScope(shield=True):
                        await self._arelease(ops.release, lock, token)
            return
        # given only a redis.asyncio client: no thread can renew, so a task does
        try:
            error: BaseException | None = None
            async with anyio.create_task_group() as group:
                group.start_soon(self._arenew, ops, lock, token)
                try:
                    yield found
                except BaseException as exc:
                    # raised outside the task group, so it is not wrapped in a group
                    error = exc
                finally:
                    group.cancel_scope.cancel()
            if error is not None:
                try:
                    raise error
                finally:
                    error = None
        finally:
            with anyio.CancelScope(shield=True):
                await self._arelease(ops.release, lock, token)

    async def _arenew(self, ops: _AnyAsyncOps, lock: str, token: str) -> None:
        px = self._px(self.lock_ttl)
        assert px is not None
        while True:
            await anyio.sleep(self.lock_ttl / 3)
            try:
                if not await ops.renew(lock, token, px):
                    return
            except self._errors as exc:
                self._failed("flight", exc)


def _signing_key(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, (bytes, bytearray)):
        raise ConfigurationError(f"signing_key must be bytes or str, got {type(value).__name__}")
    if len(value) < 16:
        raise ConfigurationError(
            "signing_key must be at least 16 bytes (use secrets.token_bytes(32)), "
            f"got {len(value)}"
        )
    return bytes(value)

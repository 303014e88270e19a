"""RedisStore: one cache and one single-flight shared by every replica, through Redis.

An entry is one Redis string, ``{namespace}:{version}:{module.qualname}:{{digest}}``,
holding the sealed value (see :mod:`buttress._caching._codec`) and expiring by itself
(``PX``) when the decorator's retention (ttl plus stale windows) has passed. The braces make
the digest the key's hash tag: the entry, its lock and the keys waiters block on share a
slot on a Redis Cluster. The store's parts:

* :mod:`buttress._redis`: the connection (clients for a server, a Cluster or Sentinel;
  timeouts; failing fast after an outage; failing open or closed);
* :mod:`._commands`: the Redis commands and Lua scripts the store runs;
* :mod:`._flight`: which replica computes a key, and how the others wait for it;
* :mod:`._keeper`: the thread that renews the locks of running computations, and
  releases those it could not release while Redis was down;
* this module: settings, key names, values in and out (codec, signing, the optional
  in-process layer), and the :class:`~buttress.CacheStore` protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle
import secrets
import threading
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from datetime import timedelta
from typing import Any, Final, final

import anyio

from buttress import _clock, _settings
from buttress._caching._codec import Envelope, Refused, Serializer
from buttress._caching._keys import CacheKey, CacheScope
from buttress._caching._local import LocalTable
from buttress._caching._store import CacheEntry, CacheStore
from buttress._caching._values import freeze
from buttress._errors import (
    ConfigurationError,
    RedisStoreError,
    RefusedValueError,
    UnencodableResultError,
)
from buttress._events import CacheStoreFailed, events
from buttress._redis import RETRY_AFTER, RedisConnection, running_asyncio_loop

from . import _flight
from ._commands import (
    ACQUIRE,
    CLEAR,
    DELETE,
    GET,
    LOOKUP,
    RELEASE,
    RELEASE_ALL,
    RENEW,
    RENEW_ALL,
    SET,
    STORE,
    WAIT_THEN_GET,
)
from ._keeper import LockKeeper
from ._stats import Counters, RedisStoreStats

__all__ = ["RedisStore"]

_DIGEST_GLOB: Final = "{" + "?" * 64 + "}"  # key.digest() is 64 hex characters
#: A lock that could not be released is retried for this long by an asyncio task.
_RELEASE_FOR: Final = 60.0


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


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _silent_scope(_key: Hashable) -> CacheScope:
    # Copies leaving the in-process layer are not entries leaving the cache (Redis still
    # has them): nothing to report to the function.
    return _LOCAL_SCOPE


_LOCAL_SCOPE: Final = CacheScope("<RedisStore local layer>")


def _unsupported(exc: BaseException) -> bool:
    """Whether ``exc`` says the server does not run a command: it does not know it
    (BLMOVE before Redis 6.2), or an ACL forbids it (as some managed services do)."""
    if isinstance(exc, RedisStoreError) and exc.__cause__ is not None:
        exc = exc.__cause__
    import redis

    text = str(exc).lower()
    return isinstance(exc, redis.ResponseError) and (
        "unknown command" in text or "no permissions" in text or "noperm" in text
    )


@final
class RedisStore(CacheStore):
    """A cache store in Redis, shared by every process that points at the same server.

    Use it as ``@cache_result(ttl=30, store=RedisStore("redis://cache:6379/0"))``. Every
    replica then reads what any of them computed, and concurrent misses of one key across
    all of them cause one computation: the process that computes holds a lock key, the
    others wait for its value (and take over if it dies).

    Args:
        url: where Redis is: one server (``redis://``, ``rediss://`` or ``unix://``), a
            Redis Cluster (``redis+cluster://host:port[,host:port...]``) or the master
            Sentinel names (``redis+sentinel://host:26379[,host:26379...]/service[/db]``).
            The store opens its own clients from it: a sync one for plain functions and
            one ``redis.asyncio`` client per event loop for coroutine functions.
        client: a redis-py client you already have, instead of ``url``: ``redis.Redis``
            (also from ``Sentinel.master_for``), ``redis.asyncio.Redis``,
            ``redis.cluster.RedisCluster`` or ``redis.asyncio.cluster.RedisCluster``. A
            sync client also serves coroutine functions (in worker threads); an asyncio
            client serves coroutine functions on asyncio only. Its own timeouts and
            retries apply, not ``timeout``.
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
            store opens from ``url``. It also bounds the first lifetime of a computation
            lock (twice this, at most ``lock_ttl``): a lock whose owner gave up (Redis
            hung, and ran the command later) holds nobody up much longer than that.
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
        lock_ttl: seconds the computation lock of a running computation lives without
            renewal (renewed every third of it while the computation runs): how long
            others wait before taking over from a process that died holding it.

    Raises:
        ConfigurationError: for a setting that cannot work.
        ModuleNotFoundError: redis-py is not installed (``pip install 'buttress[redis]'``).

    Caveats: functions are known to the store by name (``module.qualname``), so a closure
    that captured a value no other process can compare is refused by ``@cache_result``
    unless given ``name=`` (closures of one factory must never read each other's
    entries). Values are visible to anyone who can read the Redis keys (sign them against
    tampering; encrypt at the network level with ``rediss://``). Errors are never cached
    or shared across processes: when the computing process fails, the others compute
    themselves, one at a time. Call :meth:`close` (closes the sync client, stops the
    lock keeper thread) and ``await`` :meth:`aclose` in each event loop you used it in when
    you are done; a loop that ends through ``asyncio.run`` closes its client by itself.
    """

    name = "redis"
    shared_between_processes = True

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
        #: the lifetime of a lock just taken, until the lock keeper first extends it
        self.first_lock_ttl = min(self.lock_ttl, max(2 * self.timeout, 0.05))
        self.lock_px = _px(self.lock_ttl)
        self.first_lock_px = _px(self.first_lock_ttl)
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
        self._local: LocalTable[CacheEntry] | None = None
        if self.local_ttl is not None:
            self._local = LocalTable(
                _settings.positive_int(local_maxsize, "local_maxsize"), None, _silent_scope
            )
        self.counters = Counters()
        self.max_connections = _settings.positive_int(max_connections, "max_connections")
        self.connection = RedisConnection(
            url,
            client=client,
            timeout=self.timeout,
            max_connections=self.max_connections,
            fail_open=self.fail_open,
        )
        self.address = self.connection.address
        self._lock = threading.Lock()
        # the computation locks this store holds: lock -> token
        self._tokens: dict[str, str] = {}
        # renewal from a thread needs a sync client: absent only with an asyncio client alone
        self._keeper: LockKeeper | None = (
            LockKeeper(self) if self.connection.serves_threads else None
        )
        # waiters block on the holder's wake-up (BLMOVE) unless the server lacks it, and
        # at most half the connections block at once (the others serve everyone else)
        self._wakeups = True
        self._blocking = 0
        self._max_blocking = max(1, self.max_connections // 2)
        self._releases: set[asyncio.Task[None]] = set()
        # lock tokens: a random prefix for this store and a counter, unique everywhere
        # without a call to the OS's random source on every read
        self._token_prefix = secrets.token_hex(12)
        self._tokens_made = itertools.count()

    def __repr__(self) -> str:
        return (
            f"RedisStore({self.address!r}, namespace={self.namespace!r}, "
            f"version={self.version!r}, local_ttl={self.local_ttl!r})"
        )

    # --- naming -------------------------------------------------------------------------

    def _prefix(self, scope: CacheScope) -> str:
        return f"{self.namespace}:{self.version}:{scope.qualified_name}:"

    def key_name(self, key: CacheKey) -> str:
        """The Redis key holding the entry of ``key``.

        ``{namespace}:{version}:{module.qualname}:{{digest}}``: the digest in braces is
        the hash tag, so the keys of one entry share a Redis Cluster slot: its lock is
        this plus ``:lock``, and waiters use this plus ``:waiting`` and ``:done``.

        Raises:
            UnkeyableArgumentError: an argument has no encoding stable across processes.
        """
        return self._prefix(key.scope) + "{" + key.digest() + "}"

    # --- statistics and lifecycle -------------------------------------------------------

    def stats(self) -> RedisStoreStats:
        """A frozen snapshot of this store's counters."""
        return self.counters.snapshot(self.connection.failures, self.connection.skipped)

    def close(self) -> None:
        """Close the sync client the store opened (a ``client=`` you gave stays open),
        and stop its lock keeper thread.

        The store stays usable: it opens a new client when it next needs one.
        """
        if self._keeper is not None:
            self._keeper.close()
        self.connection.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client the store opened for the running loop."""
        await self.connection.aclose()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
        self.close()

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
        self.counters.local_hits += 1
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
        self.counters.reads += 1
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
        self.counters.refused += 1
        error = RefusedValueError(
            f"refused the value at {name!r}: {reason}", key=name, reason=reason
        )
        failure = self.connection.failed("get", error)
        raise failure from (None if failure is error else error)

    def read_quietly(self, key: CacheKey, name: str, blob: bytes | None) -> CacheEntry | None:
        """For the flight: the entry, or ``None`` for a refused value (counted, reported)."""
        if blob is None:
            return None
        try:
            return self._open(key, name, blob)
        except Refused as refused:
            self.counters.refused += 1
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
            self.connection.raise_("set", exc, count=False)

    # --- the protocol, sync -------------------------------------------------------------

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        return self._read(key, name, self.connection.call("get", GET, name))

    def get_or_lead(
        self, key: CacheKey
    ) -> tuple[CacheEntry | None, AbstractContextManager[CacheEntry | None] | None]:
        """Read the entry; when there is none, take the computation's lock in the same
        round trip (one ``EVALSHA``): a miss then costs two round trips with the write."""
        entry = self._local_get(key)
        if entry is not None:
            return entry, None
        name = self.key_name(key)
        token = self._token()
        connection = self.connection
        connection.check("get")
        try:
            reply = connection.call("get", LOOKUP, (name,), (token, self.first_lock_px))
        except BaseException:
            self._abandon(name, token)  # the lock may be ours, the reply lost
            raise
        return self._looked_up(key, name, reply, self._holding, token)

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        token = self._tokens.get(name + ":lock")
        if token is None:
            self.connection.call("set", SET, name, blob, _optional_px(keep))
        else:  # inside this store's flight: the value and the lock's release travel together
            args = self._store_args(blob, keep, token)
            self.connection.call("set", STORE, self._entry_keys(name), args)
            self._let_go(name, token)
        self.counters.writes += 1

    def delete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        return bool(self.connection.call("delete", DELETE, name)) or local

    def clear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        self.connection.call("clear", CLEAR, self._pattern(scope))

    def _clear_local(self, scope: CacheScope) -> None:
        if self._local is not None:
            self._local.clear(lambda pair: pair[0] is scope)  # type: ignore[index]

    def _pattern(self, scope: CacheScope) -> str:
        return _glob_escape(self._prefix(scope)) + _DIGEST_GLOB

    # --- the protocol, async ------------------------------------------------------------

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        return self._read(key, name, await self.connection.acall("get", GET, name))

    async def aget_or_lead(
        self, key: CacheKey
    ) -> tuple[CacheEntry | None, AbstractAsyncContextManager[CacheEntry | None] | None]:
        """Async :meth:`get_or_lead`."""
        entry = self._local_get(key)
        if entry is not None:
            return entry, None
        name = self.key_name(key)
        token = self._token()
        connection = self.connection
        connection.check("get")
        try:
            reply = await connection.acall("get", LOOKUP, (name,), (token, self.first_lock_px))
        except BaseException:
            self._abandon(name, token)  # the lock may be ours, the reply lost
            raise
        return self._looked_up(key, name, reply, self._aholding, token)

    def _looked_up(
        self, key: CacheKey, name: str, reply: Any, holding: Any, token: str
    ) -> tuple[CacheEntry | None, Any]:
        """What LOOKUP's reply means: the value, the lock (held by ``holding``), or
        neither (another process computes the key: the flight waits for it)."""
        if isinstance(reply, bytes):
            return self._read(key, name, reply), None
        if reply == 1:
            return None, holding(name, token)
        return None, None

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        token = self._tokens.get(name + ":lock")
        if token is None:
            await self.connection.acall("set", SET, name, blob, _optional_px(keep))
        else:
            args = self._store_args(blob, keep, token)
            await self.connection.acall("set", STORE, self._entry_keys(name), args)
            self._let_go(name, token)
        self.counters.writes += 1

    async def adelete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        return bool(await self.connection.acall("delete", DELETE, name)) or local

    async def aclear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        await self.connection.acall("clear", CLEAR, self._pattern(scope))

    # --- script arguments ---------------------------------------------------------------

    def _token(self) -> str:
        return f"{self._token_prefix}-{next(self._tokens_made)}"

    @staticmethod
    def _entry_keys(name: str) -> tuple[str, str, str, str]:
        return name, name + ":lock", name + ":done", name + ":waiting"

    def _store_args(self, blob: bytes, keep: float | None, token: str) -> tuple[Any, ...]:
        px = _optional_px(keep)
        return blob, "" if px is None else px, token, self.lock_px

    # --- the flight (decided in ._flight) -----------------------------------------------

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        """Take the key's lock across processes, or wait for its holder's value."""
        name = self.key_name(key)
        token = self._token()
        found, held = _flight.run(_flight.plan(self, key, current), self, key, name, token)
        if not held:
            yield found
            return
        with self._holding(name, token):
            yield found

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        """Async :meth:`flight`."""
        name = self.key_name(key)
        token = self._token()
        found, held = await _flight.arun(
            _flight.plan(self, key, current), self, key, name, token
        )
        if not held:
            yield found
            return
        async with self._aholding(name, token):
            yield found

    # The flight's steps, for its drivers.

    def acquire(
        self, key: CacheKey, name: str, token: str
    ) -> tuple[bool, CacheEntry | None, float]:
        """``Lead``: take the lock if free, reading the entry in the same round trip."""
        connection = self.connection
        connection.check("flight")
        keys = (name + ":lock", name, name + ":done", name + ":waiting")
        try:
            reply = connection.call("flight", ACQUIRE, keys, self._acquire_args(token))
        except BaseException:
            self._abandon(name, token)
            raise
        return self._acquired(key, name, reply)

    async def aacquire(
        self, key: CacheKey, name: str, token: str
    ) -> tuple[bool, CacheEntry | None, float]:
        """Async :meth:`acquire`."""
        connection = self.connection
        connection.check("flight")
        keys = (name + ":lock", name, name + ":done", name + ":waiting")
        try:
            reply = await connection.acall("flight", ACQUIRE, keys, self._acquire_args(token))
        except BaseException:
            self._abandon(name, token)
            raise
        return self._acquired(key, name, reply)

    def _acquire_args(self, token: str) -> tuple[str, int, int]:
        return token, self.first_lock_px, self.lock_px

    def _acquired(
        self, key: CacheKey, name: str, reply: list[Any]
    ) -> tuple[bool, CacheEntry | None, float]:
        found = self.read_quietly(key, name, reply[1])
        if reply[0] == 1:
            return True, found, 0.0
        return False, found, max(int(reply[2]), 0) / 1000

    def read_for_flight(self, key: CacheKey, name: str) -> CacheEntry | None:
        """``Read``: the entry, a refused value counted and taken for none."""
        return self.read_quietly(key, name, self.connection.call("flight", GET, name))

    async def aread_for_flight(self, key: CacheKey, name: str) -> CacheEntry | None:
        return self.read_quietly(key, name, await self.connection.acall("flight", GET, name))

    def wait_limit(self) -> float | None:
        """How long one blocking wait may last, or ``None``: poll instead (the server
        lacks BLMOVE, or half the connections already block)."""
        if not self._wakeups or self._blocking >= self._max_blocking:
            return None
        limit = self.connection.blocking_limit
        return self.lock_ttl if limit is None else limit

    def block(self, key: CacheKey, name: str, seconds: float) -> CacheEntry | None:
        """``Wait`` for the holder's wake-up, at most ``seconds``; the entry, read as the
        wait ends (in the same round trip)."""
        with self._lock:
            self._blocking += 1
        try:
            blob = self.connection.call("flight", WAIT_THEN_GET, name + ":done", name, seconds)
        except BaseException as exc:
            if not _unsupported(exc):
                raise
            self._wakeups = False  # the server does not let us block: poll from now on
            return None
        finally:
            with self._lock:
                self._blocking -= 1
        return self.read_quietly(key, name, blob)

    async def ablock(self, key: CacheKey, name: str, seconds: float) -> CacheEntry | None:
        """Async :meth:`block`."""
        with self._lock:
            self._blocking += 1
        try:
            blob = await self.connection.acall(
                "flight", WAIT_THEN_GET, name + ":done", name, seconds
            )
        except BaseException as exc:
            if not _unsupported(exc):
                raise
            self._wakeups = False
            return None
        finally:
            with self._lock:
                self._blocking -= 1
        return self.read_quietly(key, name, blob)

    # --- holding a lock -----------------------------------------------------------------

    @contextmanager
    def _holding(self, name: str, token: str) -> Iterator[None]:
        """Hold the lock just taken while the caller computes and stores (the lock keeper
        renews it); let it go unless it went with the value."""
        lock = name + ":lock"
        keeper = self._keeper
        assert keeper is not None  # a sync client exists, so a keeper does
        self._tokens[lock] = token
        keeper.hold(name, lock, token)
        try:
            yield None
        finally:
            if self._let_go(name, token):  # not already released along with the value
                self._release(name, token)

    @asynccontextmanager
    async def _aholding(self, name: str, token: str) -> AsyncIterator[None]:
        """Async :meth:`_holding`; given only an asyncio client, a task renews."""
        lock = name + ":lock"
        self._tokens[lock] = token
        try:
            keeper = self._keeper
            if keeper is not None:
                keeper.hold(name, lock, token)
                yield None
                return
            error: BaseException | None = None
            async with anyio.create_task_group() as group:
                group.start_soon(self._arenew, lock, token)
                try:
                    yield None
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
            if self._let_go(name, token):
                with anyio.CancelScope(shield=True):
                    await self._arelease(name, token)

    def _let_go(self, name: str, token: str) -> bool:
        """Forget a lock this store held; whether it still needed releasing."""
        lock = name + ":lock"
        with self._lock:
            if self._tokens.get(lock) != token:
                return False
            del self._tokens[lock]
        if self._keeper is not None:
            self._keeper.drop(lock, token)
        return True

    def _release(self, name: str, token: str) -> None:
        # Never raised: the value is computed (and stored) by now. While Redis is down,
        # the lock keeper releases it once Redis answers again.
        if not self.connection.down:
            done, _ = self.connection.try_call("flight", RELEASE, *self._release_call(name, token))
            if done:
                return
        self._abandon(name, token)

    async def _arelease(self, name: str, token: str) -> None:
        if not self.connection.down:
            done, _ = await self.connection.atry_call(
                "flight", RELEASE, *self._release_call(name, token)
            )
            if done:
                return
        self._abandon(name, token)

    def _release_call(self, name: str, token: str) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return self._entry_keys(name), ("", "", token, self.lock_px)

    def _abandon(self, name: str, token: str) -> None:
        """A lock this store may hold and could not release: release it once Redis
        answers again (a command whose reply was lost may still run later)."""
        self._let_go(name, token)
        if self._keeper is not None:
            self._keeper.settle(name, name + ":lock", token)
            return
        loop = running_asyncio_loop()
        if loop is not None:  # given only an asyncio client: a task does it
            task = loop.create_task(self._release_later(name, token))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release_later(self, name: str, token: str) -> None:
        give_up = time.monotonic() + _RELEASE_FOR
        while time.monotonic() < give_up:
            await asyncio.sleep(RETRY_AFTER if self.connection.down else self.timeout)
            done, _ = await self.connection.atry_call(
                "flight", RELEASE, *self._release_call(name, token)
            )
            if done:
                return

    # For the lock keeper's thread.

    def renew_all(self, locks: list[tuple[str, str]]) -> list[bool] | None:
        """Extend ``locks`` (``(lock, token)``) to ``lock_ttl``; ``None`` if Redis failed."""
        if not locks:
            return []
        calls = [((lock,), (token, self.lock_px)) for lock, token in locks]
        done, results = self.connection.try_call("flight", RENEW_ALL, calls)
        return [bool(result) for result in results] if done else None

    def release_all(self, locks: list[tuple[str, str]]) -> bool:
        """Release ``locks`` (``(entry name, token)``), those still ours; whether Redis
        answered."""
        if not locks:
            return True
        calls = [self._release_call(name, token) for name, token in locks]
        done, _ = self.connection.try_call("flight", RELEASE_ALL, calls)
        return done

    async def _arenew(self, lock: str, token: str) -> None:
        await anyio.sleep(self.first_lock_ttl / 3)
        while True:
            done, ours = await self.connection.atry_call(
                "flight", RENEW, (lock,), (token, self.lock_px)
            )
            if done and not ours:
                return
            await anyio.sleep(self.lock_ttl / 3 if done else self.first_lock_ttl / 3)


def _px(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _optional_px(keep: float | None) -> int | None:
    return None if keep is None else _px(keep)


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

"""RedisStore: one cache and one single-flight shared by every replica, through Redis.

An entry is one Redis string, ``{namespace}:{version}:{module.qualname}:{digest}``,
holding the sealed value (see :mod:`.._codec`) and expiring by itself (``PX``) when the
decorator's retention (ttl plus stale windows) has passed. The store's parts:

* :mod:`._connection`: the clients (sync, one asyncio client per loop, worker threads on
  trio) and what happens when Redis fails (fail fast for a second, fail open or closed);
* :mod:`._commands`: the Redis commands and Lua scripts the store runs;
* :mod:`._flight`: which replica computes a key, and how the others wait for it;
* :mod:`._keeper`: the thread that renews the locks of running computations;
* this module: settings, key names, values in and out (codec, signing, the optional
  in-process layer), and the :class:`~buttress.CacheStore` protocol.
"""

from __future__ import annotations

import math
import pickle
import secrets
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any, Final, final

import anyio

from buttress import _clock, _settings
from buttress._caching._codec import Envelope, Refused, Serializer
from buttress._caching._keys import CacheKey, CacheScope
from buttress._caching._local import LocalTable
from buttress._caching._store import CacheEntry, CacheStore
from buttress._caching._values import freeze
from buttress._errors import ConfigurationError, RefusedValueError, UnencodableResultError
from buttress._events import CacheStoreFailed, events

from . import _flight
from ._commands import AnyAsyncCommands
from ._connection import RedisConnection
from ._keeper import LockKeeper
from ._stats import Counters, RedisStoreStats

__all__ = ["RedisStore"]

_DIGEST_GLOB: Final = "?" * 64  # key.digest() is 64 hex characters


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
    lock keeper thread) and ``await`` :meth:`aclose` in each event loop you used it in when
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
        #: the lock's lifetime in milliseconds, as Redis takes it
        self.lock_px = max(1, math.ceil(self.lock_ttl * 1000))
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
        self.counters = Counters()
        self.max_connections = _settings.positive_int(max_connections, "max_connections")
        self.connection = RedisConnection(
            url,
            client=client,
            timeout=self.timeout,
            max_connections=self.max_connections,
            fail_open=self.fail_open,
            counters=self.counters,
        )
        self.address = self.connection.address
        # renewal needs a sync client: absent only when given a redis.asyncio client alone
        self._keeper: LockKeeper | None = (
            LockKeeper(self) if self.connection.can_block else None
        )

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
        return self.counters.snapshot()

    def close(self) -> None:
        """Close the sync client the store opened (a ``client=`` you gave stays open).

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

    @staticmethod
    def _px(keep: float | None) -> int | None:
        return None if keep is None else max(1, math.ceil(keep * 1000))

    # --- the protocol, sync -------------------------------------------------------------

    def get(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        ops = self.connection.sync("get")
        return self._read(key, name, self.connection.call("get", ops.get, name))

    def set(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        connection = self.connection
        ops = connection.sync("set")
        lock, token = self._held(name)
        if token is None:
            connection.call("set", ops.set, name, blob, self._px(keep))
        else:  # inside this store's flight: the value and the lock's release travel together
            connection.call("set", ops.set_and_release, name, blob, self._px(keep), lock, token)
            self._dropped(lock, token)
        self.counters.writes += 1

    def _held(self, name: str) -> tuple[str, str | None]:
        lock = name + ":lock"
        keeper = self._keeper
        return lock, None if keeper is None else keeper.token(lock)

    def _dropped(self, lock: str, token: str) -> bool:
        """Forget a lock this store held; whether it still needed releasing."""
        keeper = self._keeper
        return keeper is None or keeper.drop(lock, token)

    def renew_all(self, locks: list[tuple[str, str]]) -> list[bool]:
        """For the keeper: extend ``locks``; a failure keeps them (it expires them)."""
        try:
            return self.connection.sync("flight").renew_all(locks, self.lock_px)
        except self.connection.errors as exc:
            self.connection.failed("flight", exc)
            return [True] * len(locks)

    def delete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        ops = self.connection.sync("delete")
        return bool(self.connection.call("delete", ops.delete, name)) or local

    def clear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        ops = self.connection.sync("clear")
        pattern = _glob_escape(self._prefix(scope)) + _DIGEST_GLOB
        self.connection.call("clear", ops.clear, pattern)

    def _clear_local(self, scope: CacheScope) -> None:
        if self._local is not None:
            self._local.clear(lambda pair: pair[0] is scope)  # type: ignore[index]

    # --- the protocol, async ------------------------------------------------------------

    async def aget(self, key: CacheKey) -> CacheEntry | None:
        entry = self._local_get(key)
        if entry is not None:
            return entry
        name = self.key_name(key)
        ops = self.connection.async_("get")
        return self._read(key, name, await self.connection.acall("get", ops.get, name))

    async def aset(self, key: CacheKey, entry: CacheEntry, keep: float | None) -> None:
        name = self.key_name(key)
        blob = self._seal(key, name, entry)
        self._local_put(key, entry)
        connection = self.connection
        ops = connection.async_("set")
        lock, token = self._held(name)
        if token is None:
            await connection.acall("set", ops.set, name, blob, self._px(keep))
        else:
            px = self._px(keep)
            await connection.acall("set", ops.set_and_release, name, blob, px, lock, token)
            self._dropped(lock, token)
        self.counters.writes += 1

    async def adelete(self, key: CacheKey) -> bool:
        name = self.key_name(key)
        local = self._local is not None and self._local.delete((key.scope, key.parts))
        ops = self.connection.async_("delete")
        return bool(await self.connection.acall("delete", ops.delete, name)) or local

    async def aclear(self, scope: CacheScope) -> None:
        self._clear_local(scope)
        ops = self.connection.async_("clear")
        pattern = _glob_escape(self._prefix(scope)) + _DIGEST_GLOB
        await self.connection.acall("clear", ops.clear, pattern)

    # --- the flight (decided in ._flight) -----------------------------------------------

    @contextmanager
    def flight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> Iterator[CacheEntry | None]:
        """Take the key's lock across processes, or wait for its holder's value."""
        name = self.key_name(key)
        lock = name + ":lock"
        token = secrets.token_hex(16)
        ops = self.connection.sync("flight")
        try:
            found, held = _flight.run(
                _flight.plan(self, key, current), self, ops, name, lock, token
            )
        except BaseException:
            self._release(ops.release, lock, token)  # in case it was taken before the failure
            raise
        if not held:
            yield found
            return
        assert self._keeper is not None  # a sync client exists, so a keeper does
        self._keeper.hold(lock, token)
        try:
            yield found
        finally:
            if self._dropped(lock, token):  # not already released along with the value
                self._release(ops.release, lock, token)

    def _release(self, release: Any, lock: str, token: str) -> None:
        # Never raised: the value is computed (and stored) by now, and a lock that could
        # not be deleted expires by itself within lock_ttl. Counted as a failure.
        if self.connection.down:
            return
        try:
            release(lock, token)
        except self.connection.errors as exc:
            self.connection.failed("flight", exc)

    async def _arelease(self, release: Any, lock: str, token: str) -> None:
        if self.connection.down:
            return
        try:
            await release(lock, token)
        except self.connection.errors as exc:
            self.connection.failed("flight", exc)

    @asynccontextmanager
    async def aflight(
        self, key: CacheKey, current: CacheEntry | None = None
    ) -> AsyncIterator[CacheEntry | None]:
        """Async :meth:`flight`: waits with ``anyio.sleep``; the keeper renews."""
        name = self.key_name(key)
        lock = name + ":lock"
        token = secrets.token_hex(16)
        ops = self.connection.async_("flight")
        try:
            found, held = await _flight.arun(
                _flight.plan(self, key, current), self, ops, name, lock, token
            )
        except BaseException:
            with anyio.CancelScope(shield=True):  # in case it was taken before the failure
                await self._arelease(ops.release, lock, token)
            raise
        if not held:
            yield found
            return
        keeper = self._keeper
        if keeper is not None:
            keeper.hold(lock, token)
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

    async def _arenew(self, ops: AnyAsyncCommands, lock: str, token: str) -> None:
        while True:
            await anyio.sleep(self.lock_ttl / 3)
            try:
                if not await ops.renew(lock, token, self.lock_px):
                    return
            except self.connection.errors as exc:
                self.connection.failed("flight", exc)


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

"""The store's way to Redis: its clients, and what happens when Redis fails.

Clients: plain functions use redis-py's sync client; coroutine functions use
``redis.asyncio``, one client per event loop (its connections belong to the loop that
opened them), closed when that loop shuts down. ``redis.asyncio`` runs on asyncio only: on
trio, and when the user gave a sync client, coroutines run the sync client's commands in
anyio worker threads. ``redis`` itself is imported when a connection is made, never
before.

Failures: a connection error or a timeout marks the server down for a second, during which
operations fail at once instead of each paying the timeout; then the next call tries again,
so caching resumes by itself when Redis is back. With ``fail_open`` the error goes out as
it is (the decorator survives it); otherwise it goes out as
:class:`~buttress.RedisStoreError`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, final

from buttress._errors import ConfigurationError, RedisStoreError

from ._commands import AnyAsyncCommands, AsyncCommands, SyncCommands, ThreadCommands
from ._stats import Counters

__all__ = ["RETRY_AFTER", "RedisConnection", "running_asyncio_loop"]

#: After a Redis failure, operations fail at once for this long (real seconds).
RETRY_AFTER: Final = 1.0


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this task, or ``None`` (trio, also as an asyncio guest)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if asyncio.current_task(loop) is not None else None


@final
class RedisConnection:
    """The clients of one store, their settings, and the store's view of Redis's health.

    Args:
        url: where Redis is; the connection opens its own clients from it.
        client: a ``redis.Redis`` or ``redis.asyncio.Redis`` to use instead.
        timeout: seconds an operation may take on the clients opened from ``url``.
        max_connections: connections each client opened from ``url`` may hold.
        fail_open: raise Redis's own errors (``True``) or ``RedisStoreError``.
        counters: where failures and skipped operations are counted.
    """

    __slots__ = (
        "_async_retry",
        "_client_options",
        "_counters",
        "_down_until",
        "_errors",
        "_lock",
        "_loops",
        "_outage_errors",
        "_redis",
        "_sync",
        "_sync_retry",
        "_url",
        "_user_client",
        "address",
        "fail_open",
        "max_connections",
        "timeout",
    )

    def __init__(
        self,
        url: str | None,
        *,
        client: Any,
        timeout: float,
        max_connections: int,
        fail_open: bool,
        counters: Counters,
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
        self._url = url
        self._user_client = client
        self.timeout = timeout
        self.max_connections = max_connections
        self.fail_open = fail_open
        self._counters = counters
        self._lock = threading.Lock()
        # one retry, at once, on a broken connection only: a pooled connection that died
        # with a restarted server is replaced without failing the call; a timeout is not
        # retried, so an operation costs at most about ``timeout``. Each client kind gets
        # its own Retry class: redis-py 8.2 warns when the asyncio client is handed the
        # sync one.
        self._client_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        self._sync_retry = redis.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        )
        self._async_retry = redis.asyncio.retry.Retry(
            NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        )
        self._sync: SyncCommands | None = None
        if client is not None and isinstance(client, redis.Redis):
            self._sync = SyncCommands(client)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncCommands]
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

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a failing Redis operation raises (redis-py's errors, OS errors, timeouts)."""
        return self._errors

    @property
    def can_block(self) -> bool:
        """Whether a sync client exists or can be opened (a thread can then renew locks)."""
        return self._sync is not None or self._url is not None

    # --- clients ------------------------------------------------------------------------

    def sync(self, operation: str) -> SyncCommands:
        """The commands on the sync client (opened on first use)."""
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
                self._sync = SyncCommands(self._redis.Redis.from_pool(pool))
            return self._sync

    def async_(self, operation: str) -> AnyAsyncCommands:
        """The commands for a coroutine: this loop's asyncio client, or worker threads."""
        loop = running_asyncio_loop()
        if loop is None:  # trio: redis.asyncio needs asyncio, so use threads
            return ThreadCommands(self.sync(operation))
        ops = self._loops.get(loop)
        if ops is not None:
            return ops
        user = self._user_client
        if user is not None and isinstance(user, self._redis.Redis):
            return ThreadCommands(self.sync(operation))
        with self._lock:
            ops = self._loops.get(loop)
            if ops is None:
                if user is not None:
                    ops = AsyncCommands(user)
                else:
                    assert self._url is not None
                    pool = self._redis.asyncio.BlockingConnectionPool.from_url(
                        self._url,
                        max_connections=self.max_connections,
                        timeout=self.timeout,
                        retry=self._async_retry,
                        **self._client_options,
                    )
                    ops = AsyncCommands(self._redis.asyncio.Redis.from_pool(pool))
                    # redis.asyncio connections belong to this loop: close them when it
                    # shuts down (asyncio.run cancels what is left, which runs this)
                    ops.keeper = loop.create_task(self._keep(loop, ops))
                self._loops[loop] = ops
        return ops

    async def _keep(self, loop: asyncio.AbstractEventLoop, ops: AsyncCommands) -> None:
        try:
            await asyncio.Event().wait()  # until the loop cancels it on shutdown
        finally:
            with self._lock:
                mine = self._loops.get(loop) is ops  # aclose() may have closed it already
                if mine:
                    del self._loops[loop]
            if mine:
                await ops.close()

    def close(self) -> None:
        """Close the sync client opened from the url (a ``client=`` given stays open)."""
        if self._user_client is not None:
            return
        with self._lock:
            ops, self._sync = self._sync, None
        if ops is not None:
            ops.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client opened for the running loop."""
        loop = running_asyncio_loop()
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

    # --- failures -----------------------------------------------------------------------

    @property
    def down(self) -> bool:
        """Whether Redis failed less than :data:`RETRY_AFTER` seconds ago."""
        until = self._down_until
        return bool(until) and time.monotonic() < until

    def check(self, operation: str) -> None:
        """Fail at once while Redis is marked down (real time: outages are real)."""
        until = self._down_until
        if until and time.monotonic() < until:
            self._counters.skipped += 1
            skipped = ConnectionError(
                f"Redis at {self.address} failed less than {RETRY_AFTER:g} s ago; "
                "not tried again yet"
            )
            self.raise_(operation, skipped, count=False)

    def failed(self, operation: str, exc: BaseException) -> BaseException:
        """Count a failure (an outage marks Redis down); what to raise for it."""
        self._counters.failures += 1
        if isinstance(exc, self._outage_errors):
            self._down_until = time.monotonic() + RETRY_AFTER
        return self.failure(operation, exc)

    def succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0

    def failure(self, operation: str, exc: BaseException) -> BaseException:
        """What to raise for ``exc``: itself (fail open), or a RedisStoreError."""
        if self.fail_open:
            return exc
        return RedisStoreError(
            f"RedisStore could not {operation} at {self.address} and fail_open=False: "
            f"{exc!r}",
            operation=operation,
            address=self.address,
        )

    def raise_(self, operation: str, exc: BaseException, *, count: bool = True) -> NoReturn:
        failure = self.failed(operation, exc) if count else self.failure(operation, exc)
        if failure is exc:
            raise exc
        raise failure from exc

    def call(self, operation: str, command: Callable[..., Any], *args: Any) -> Any:
        """Run one command, counting its failure (raised as :meth:`failure` says)."""
        self.check(operation)
        try:
            result = command(*args)
        except self._errors as exc:
            self.raise_(operation, exc)
        self.succeeded()
        return result

    async def acall(
        self, operation: str, command: Callable[..., Awaitable[Any]], *args: Any
    ) -> Any:
        """:meth:`call` for a coroutine command."""
        self.check(operation)
        try:
            result = await command(*args)
        except self._errors as exc:
            self.raise_(operation, exc)
        self.succeeded()
        return result

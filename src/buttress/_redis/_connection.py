"""One way to Redis for every feature that keeps state there: clients, timeouts, failures.

:class:`RedisConnection` turns what the user gave (a URL of a server, a Cluster or a
Sentinel-managed master, or a redis-py client of any of those kinds) into clients, and
runs :mod:`commands <._commands>` on them with one policy for failures:

* plain functions use a sync client; coroutines use a ``redis.asyncio`` client of their
  own event loop (its connections belong to that loop and are closed when it shuts down);
  on trio, or given only a sync client, coroutines run the sync client's commands in
  anyio worker threads; given only an asyncio client, plain functions cannot be served;
* clients opened from a URL time out after ``timeout`` (connecting, waiting for a pooled
  connection, the reply) and retry once, at once, a connection that broke (a restarted
  server), never a timeout; a cluster client keeps redis-py's own handling of redirections
  and node failures; a client given keeps its own settings;
* a connection error or a timeout marks Redis down for :data:`RETRY_AFTER` seconds, during
  which operations fail at once instead of each paying the timeout; the next operation
  after that tries again, so work resumes by itself once Redis is back (a failover
  included);
* with ``fail_open`` the error goes out as it is, for the caller to survive; otherwise as
  the owner's error (:class:`~buttress.RedisStoreError` for the cache).

``redis`` itself is imported when a connection is made, never before.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, NoReturn, final

import anyio
import anyio.to_thread

from buttress._errors import ConfigurationError, RedisStoreError

from ._commands import Command
from ._topology import Topology, describe_client, parse_url

__all__ = ["RETRY_AFTER", "RedisConnection", "running_asyncio_loop"]

#: After a Redis failure, operations fail at once for this long (real seconds).
RETRY_AFTER: Final = 1.0

#: Messages of redis-py's errors for a full connection pool: a local limit, not an outage.
_POOL_FULL: Final = ("Too many connections", "No connection available")


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this task, or ``None`` (trio, also as an asyncio guest)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop if asyncio.current_task(loop) is not None else None


@final
class _LoopClient:
    """One event loop's asyncio client (and the sentinels' clients it asks), and the task
    that closes them with the loop."""

    __slots__ = ("client", "helpers", "keeper")

    def __init__(self, client: Any, helpers: list[Any]) -> None:
        self.client = client
        self.helpers = helpers
        self.keeper: asyncio.Task[None] | None = None


@final
class RedisConnection:
    """Clients for one Redis deployment, and one policy for its failures.

    Args:
        url: a server (``redis://``, ``rediss://``, ``unix://``), a Cluster
            (``redis+cluster://host:port[,host:port...]``) or a Sentinel-managed master
            (``redis+sentinel://host:26379[,...]/service[/db]``); see
            :mod:`._topology`. ``None`` with no ``client``: ``redis://127.0.0.1:6379/0``.
        client: a ``redis.Redis``, ``redis.asyncio.Redis``, ``redis.cluster.RedisCluster``
            or ``redis.asyncio.cluster.RedisCluster`` to use instead (its own timeouts
            and retries apply).
        timeout: seconds an operation may take on the clients opened from ``url``.
        max_connections: connections each client opened from ``url`` may hold (per
            cluster node).
        fail_open: raise Redis's own errors (the caller survives them), or ``error``.
        owner: who uses the connection, for messages (``"RedisStore"``).
        error: the error raised with ``fail_open=False``; it is built as
            ``error(message, operation=..., address=...)``.

    Attributes:
        kind: ``"server"``, ``"cluster"`` or ``"sentinel"``.
        address: where Redis is, for messages (never a password).
        failures: operations that failed (not counting those skipped while down).
        skipped: operations not attempted because Redis failed less than
            :data:`RETRY_AFTER` seconds ago.
    """

    __slots__ = (
        "_down_until",
        "_errors",
        "_lock",
        "_loops",
        "_options",
        "_outage_errors",
        "_redis",
        "_sync",
        "_sync_helpers",
        "_topology",
        "_user_client",
        "_user_is_async",
        "address",
        "error",
        "fail_open",
        "failures",
        "kind",
        "max_connections",
        "owner",
        "skipped",
        "timeout",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        timeout: float = 0.25,
        max_connections: int = 100,
        fail_open: bool = True,
        owner: str = "RedisStore",
        error: Callable[..., Exception] = RedisStoreError,
    ) -> None:
        try:
            import redis
            import redis.asyncio
        except ModuleNotFoundError as exc:  # pragma: no cover - redis is in the test extra
            raise ModuleNotFoundError(
                f"{owner} needs redis-py: pip install 'buttress[redis]'", name="redis"
            ) from exc
        if url is not None and client is not None:
            raise ConfigurationError(f"give {owner} either url or client, not both")
        self._redis = redis
        self.owner = owner
        self.error = error
        self.timeout = timeout
        self.max_connections = max_connections
        self.fail_open = fail_open
        self.failures = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._user_client = client
        self._user_is_async = False
        if client is not None:
            self.kind, self._user_is_async, self.address = describe_client(client)
        else:
            self._topology = parse_url("redis://127.0.0.1:6379/0" if url is None else url)
            self.kind, self.address = self._topology.kind, self._topology.address
        self._options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        self._sync: Any = None if self._user_is_async else client
        self._sync_helpers: list[Any] = []
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient]
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

    def __repr__(self) -> str:
        return f"<RedisConnection {self.kind} {self.address}>"

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a failing Redis operation raises (redis-py's errors, OS errors, timeouts)."""
        return self._errors

    @property
    def serves_threads(self) -> bool:
        """Whether a sync client exists or can be opened (plain functions, threads)."""
        return self._user_client is None or not self._user_is_async

    @property
    def blocking_limit(self) -> float | None:
        """The longest a blocking command (``BLMOVE``) may wait so that its reply still
        comes within the client's socket timeout (``None``: no socket timeout)."""
        if self._user_client is None:
            return self.timeout / 2
        timeout = _socket_timeout(self._user_client)
        return None if timeout is None else timeout / 2

    # --- clients ------------------------------------------------------------------------

    def sync_client(self, operation: str) -> Any:
        """The sync client (opened from the url on first use)."""
        client = self._sync
        if client is not None:
            return client
        if self._topology is None:
            raise self.error(
                f"this {self.owner} was given a redis.asyncio client, which cannot serve a "
                "plain function (or coroutines on trio): give it url= (it then opens both "
                "kinds of client) or a sync client (redis.Redis, redis.cluster.RedisCluster)",
                operation=operation,
                address=self.address,
            )
        with self._lock:
            if self._sync is None:
                self._sync, self._sync_helpers = self._open(self._topology, asynchronous=False)
            return self._sync

    def async_client(self, operation: str) -> Any:
        """This event loop's asyncio client, or ``None``: run the sync client's commands
        in worker threads (on trio, or given only a sync client)."""
        loop = running_asyncio_loop()
        if loop is None:  # trio: redis.asyncio needs asyncio
            return None
        opened = self._loops.get(loop)
        if opened is not None:
            return opened.client
        if self._user_client is not None and not self._user_is_async:
            return None
        with self._lock:
            opened = self._loops.get(loop)
            if opened is None:
                if self._user_client is not None:
                    opened = _LoopClient(self._user_client, [])
                else:
                    assert self._topology is not None
                    opened = _LoopClient(*self._open(self._topology, asynchronous=True))
                    # redis.asyncio connections belong to this loop: close them when it
                    # shuts down (asyncio.run cancels what is left, which runs this)
                    opened.keeper = loop.create_task(self._keep(loop, opened))
                self._loops[loop] = opened
        return opened.client

    def _open(self, topology: Topology, *, asynchronous: bool) -> tuple[Any, list[Any]]:
        """A new client for ``topology``, with this connection's timeouts and limits, and
        the clients it uses to find the server (the sentinels'), to close with it."""
        redis = self._redis
        options = dict(self._options)
        options.update(
            {key: value for key, value in topology.options.items() if key != "sentinel_password"}
        )
        from redis.backoff import NoBackoff

        if asynchronous:
            import redis.asyncio.retry

            retry: Any = redis.asyncio.retry.Retry(
                NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
            )
        else:
            import redis.retry

            retry = redis.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        if topology.kind == "cluster":
            if asynchronous:
                import redis.asyncio.cluster as cluster
            else:
                import redis.cluster as cluster  # type: ignore[no-redef]
            nodes = [cluster.ClusterNode(host, port) for host, port in topology.nodes]
            client = cluster.RedisCluster(
                startup_nodes=nodes, max_connections=self.max_connections, **options
            )
            return client, []
        if topology.kind == "sentinel":
            if asynchronous:
                import redis.asyncio.sentinel as sentinel
            else:
                import redis.sentinel as sentinel  # type: ignore[no-redef]
            watchers: dict[str, Any] = dict(self._options)
            if "sentinel_password" in topology.options:
                watchers["password"] = topology.options["sentinel_password"]
            manager = sentinel.Sentinel(list(topology.nodes), sentinel_kwargs=watchers)
            assert topology.service is not None
            client = manager.master_for(
                topology.service,
                max_connections=self.max_connections,
                retry=retry,
                **options,
            )
            return client, list(manager.sentinels)
        assert topology.url is not None
        module = redis.asyncio if asynchronous else redis
        pool = module.BlockingConnectionPool.from_url(
            topology.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            retry=retry,
            **self._options,
        )
        return module.Redis.from_pool(pool), []

    async def _keep(self, loop: asyncio.AbstractEventLoop, opened: _LoopClient) -> None:
        try:
            await asyncio.Event().wait()  # until the loop cancels it on shutdown
        finally:
            with self._lock:
                mine = self._loops.get(loop) is opened  # aclose() may have closed it already
                if mine:
                    del self._loops[loop]
            if mine:
                await _aclose_clients(opened)

    def close(self) -> None:
        """Close the sync client opened from the url (a client given stays open).

        The connection stays usable: it opens a new client when it next needs one.
        """
        if self._user_client is not None:
            return
        with self._lock:
            client, self._sync = self._sync, None
            helpers, self._sync_helpers = self._sync_helpers, []
        for opened in [client, *helpers] if client is not None else helpers:
            opened.close()

    async def aclose(self) -> None:
        """Close the asyncio client opened for the running loop (a client given stays
        open)."""
        loop = running_asyncio_loop()
        if loop is None:
            return
        with self._lock:
            opened = self._loops.pop(loop, None)
        if opened is None:
            return
        if opened.keeper is not None:
            opened.keeper.cancel()
        if self._user_client is None:
            await _aclose_clients(opened)

    # --- running commands ---------------------------------------------------------------

    def call(self, operation: str, command: Command, *args: Any) -> Any:
        """Run ``command`` on the sync client; a failure is counted and raised as
        :meth:`failure` says."""
        self.check(operation)
        client = self.sync_client(operation)
        try:
            result = command.run(client, *args)
        except self._errors as exc:
            self.raise_(operation, exc)
        self.succeeded()
        return result

    async def acall(self, operation: str, command: Command, *args: Any) -> Any:
        """Run ``command`` from a coroutine: on this loop's asyncio client, or on the sync
        client in a worker thread."""
        self.check(operation)
        client = self.async_client(operation)
        try:
            if client is None:
                sync = self.sync_client(operation)
                result = await anyio.to_thread.run_sync(command.run, sync, *args)
            else:
                result = await command.arun(client, *args)
        except self._errors as exc:
            self.raise_(operation, exc)
        self.succeeded()
        return result

    def try_call(self, operation: str, command: Command, *args: Any) -> tuple[bool, Any]:
        """Run ``command`` on the sync client even while Redis is marked down, never
        raising its failure (counted): ``(True, result)`` or ``(False, None)``. For work
        off the callers' path, such as releasing a lock once Redis answers again."""
        try:
            result = command.run(self.sync_client(operation), *args)
        except self._errors as exc:
            self.failed(operation, exc)
            return False, None
        self.succeeded()
        return True, result

    async def atry_call(self, operation: str, command: Command, *args: Any) -> tuple[bool, Any]:
        """:meth:`try_call` from a coroutine."""
        try:
            client = self.async_client(operation)
            if client is None:
                sync = self.sync_client(operation)
                result = await anyio.to_thread.run_sync(command.run, sync, *args)
            else:
                result = await command.arun(client, *args)
        except self._errors as exc:
            self.failed(operation, exc)
            return False, None
        self.succeeded()
        return True, result

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
            self.skipped += 1
            skipped = ConnectionError(
                f"Redis at {self.address} failed less than {RETRY_AFTER:g} s ago; "
                "not tried again yet"
            )
            self.raise_(operation, skipped, count=False)

    def failed(self, operation: str, exc: BaseException) -> BaseException:
        """Count a failure (an outage marks Redis down); what to raise for it."""
        self.failures += 1
        if isinstance(exc, self._outage_errors) and not any(
            text in str(exc) for text in _POOL_FULL
        ):
            self._down_until = time.monotonic() + RETRY_AFTER
        return self.failure(operation, exc)

    def succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0

    def failure(self, operation: str, exc: BaseException) -> BaseException:
        """What to raise for ``exc``: itself (fail open), or the owner's error."""
        if self.fail_open:
            return exc
        return self.error(
            f"{self.owner} could not {operation} at {self.address} and fail_open=False: "
            f"{exc!r}",
            operation=operation,
            address=self.address,
        )

    def raise_(self, operation: str, exc: BaseException, *, count: bool = True) -> NoReturn:
        """Raise what :meth:`failure` says for ``exc`` (counted with :meth:`failed`)."""
        failure = self.failed(operation, exc) if count else self.failure(operation, exc)
        if failure is exc:
            raise exc
        raise failure from exc


def _socket_timeout(client: Any) -> float | None:
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        value = pool.connection_kwargs.get("socket_timeout")
    else:  # a cluster client
        value = getattr(client, "socket_timeout", None)
        if value is None:
            nodes = getattr(client, "nodes_manager", None)
            value = getattr(nodes, "connection_kwargs", {}).get("socket_timeout")
    return None if value is None else float(value)


async def _aclose_clients(opened: _LoopClient) -> None:
    for client in [opened.client, *opened.helpers]:
        close = getattr(client, "aclose", None)
        await (close() if close is not None else client.close())


"""FleetStore: state that every replica shares through Redis (limits, breakers, budgets).

A feature that keeps fleet-wide state (a shared ``@rate_limit``, a shared breaker, a
shared retry budget) asks the store for a :class:`SharedState`, one per ``(kind, name)``:

* its keys share one hash tag, ``{namespace}:{kind:name}:suffix``, so a script touching
  all of them runs on a single server, behind Sentinel and on a Redis Cluster alike
  (never ``CROSSSLOT``), while different names spread over a cluster's masters;
* :meth:`SharedState.run` (sync) and :meth:`SharedState.arun` (async) run one
  :class:`~._commands.Script` on its keys: one round trip, atomic on the server;
* names are the contract: before its first script, a process records the settings it
  uses under the name (the first process to use a name writes them; the others compare)
  and a difference raises :class:`~buttress.SharedSettingsError` naming the setting;
* outages: when Redis fails, ``run`` returns :data:`LOST` (``fail_open=True``) so the
  feature decides alone, on its local fallback, or raises
  :class:`~buttress.SharedStateError` (``fail_open=False``); either way the first
  failure emits :class:`~buttress.SharedStateLost` and the first success after it
  :class:`~buttress.SharedStateRestored`. Recovery needs nothing: the connection fails
  fast for :data:`~._connection.RETRY_AFTER` seconds after a failure, then the next
  call tries Redis again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final, Protocol, final

from buttress import _settings
from buttress._errors import ConfigurationError, SharedSettingsError, SharedStateError
from buttress._events import SharedStateLost, SharedStateRestored, events

from ._commands import Script, hash_tag
from ._connection import RedisConnection

__all__ = ["CLAIM", "LOST", "FleetStore", "SharedState", "setting_text"]


@final
class _Lost:
    """The answer of a script run while Redis is unreachable (fail open)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LOST"

    def __bool__(self) -> bool:
        return False


#: What :meth:`SharedState.run` returns instead of raising when Redis failed and the
#: store fails open: decide locally this time.
LOST: Final = _Lost()

#: Record the settings under a name, or return those recorded (``HGETALL``) when a
#: process recorded them first. KEYS[1]: the settings hash; ARGV: field, value, ...
CLAIM: Final = Script(
    "claim",
    """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
  return {}
end
return redis.call('HGETALL', KEYS[1])
""",
)


def setting_text(value: object) -> str:
    """The form a setting is recorded and compared in: the same in every process
    (``200`` and ``200.0`` are equal; floats keep every digit)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else str(value)
    raise ConfigurationError(f"a shared setting must be a number, str or None, got {value!r}")


@final
class SharedState:
    """One ``(kind, name)`` in a :class:`FleetStore`: its keys, its scripts, its outages.

    Made by :meth:`FleetStore.shared`; one per store and name, shared by every object of
    this process that uses the name. Thread safe and loop agnostic.

    Attributes:
        store: the store.
        kind: what is shared (``"rate_limit"``, ``"circuit_breaker"``, ``"retry_budget"``).
        name: the shared name.
        settings: the settings recorded under the name, as text.
        function: the label its events carry (the ``function`` of every event).
    """

    __slots__ = (
        "_claimed",
        "_lock",
        "_lost_at",
        "_refused",
        "function",
        "kind",
        "name",
        "settings",
        "settings_key",
        "store",
    )

    def __init__(
        self, store: FleetStore, kind: str, name: str, settings: dict[str, str], function: str
    ) -> None:
        self.store = store
        self.kind = kind
        self.name = name
        self.settings = settings
        self.function = function
        self.settings_key = self.key("settings")
        self._lock = threading.Lock()
        self._claimed = False
        self._refused: SharedSettingsError | None = None
        self._lost_at: float | None = None

    def __repr__(self) -> str:
        state = "lost" if self._lost_at is not None else "shared"
        return f"<SharedState {self.kind} {self.name!r} at {self.store.address} ({state})>"

    def key(self, suffix: str) -> str:
        """The Redis key ``suffix`` of this name: ``{namespace}:{kind:name}:suffix``."""
        return self.store.key(self.kind, self.name, suffix)

    @property
    def lost(self) -> bool:
        """Whether the last attempt to reach Redis for this name failed."""
        return self._lost_at is not None

    # --- running scripts ----------------------------------------------------------------

    def run(self, operation: str, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` on ``keys`` (all of this name's, from :meth:`key`) in one round
        trip, from a plain function or a thread.

        Returns:
            the script's reply, or :data:`LOST` when Redis failed (or failed less than a
            second ago) and the store fails open.

        Raises:
            SharedSettingsError: another process uses the name with other settings.
            SharedStateError: Redis failed and the store has ``fail_open=False``.
        """
        connection = self.store.connection
        try:
            if not self._claimed:
                reply = connection.call("claim", CLAIM, [self.settings_key], self._pairs())
                self._claimed_by(reply)
            reply = connection.call(operation, script, keys, args)
        except SharedStateError as exc:
            self._lose(exc)
            raise
        except connection.errors as exc:
            self._lose(exc)
            return LOST
        if self._lost_at is not None:
            self._restore()
        return reply

    async def arun(
        self, operation: str, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """:meth:`run` from a coroutine: on this event loop's asyncio client (or the sync
        client in a worker thread on trio); the event loop never blocks."""
        connection = self.store.connection
        try:
            if not self._claimed:
                reply = await connection.acall("claim", CLAIM, [self.settings_key], self._pairs())
                self._claimed_by(reply)
            reply = await connection.acall(operation, script, keys, args)
        except SharedStateError as exc:
            self._lose(exc)
            raise
        except connection.errors as exc:
            self._lose(exc)
            return LOST
        if self._lost_at is not None:
            self._restore()
        return reply

    # --- the steps both share -----------------------------------------------------------

    def _pairs(self) -> list[str]:
        if self._refused is not None:
            raise self._refused
        return [text for pair in sorted(self.settings.items()) for text in pair]

    def _claimed_by(self, reply: Any) -> None:
        """Compare the settings recorded under the name (the claim's reply) with ours."""
        if reply:
            recorded = {
                _text(field): _text(value)
                for field, value in zip(reply[::2], reply[1::2], strict=True)
            }
            for setting in sorted(recorded.keys() | self.settings.keys()):
                theirs, ours = recorded.get(setting), self.settings.get(setting)
                if theirs != ours:
                    self._refused = _settings_error(
                        self.kind, self.name, setting, theirs, ours, self.store.address
                    )
                    raise self._refused
        self._claimed = True

    def _lose(self, error: BaseException) -> None:
        with self._lock:
            if self._lost_at is not None:
                return
            self._lost_at = time.monotonic()
            # Redis may come back empty (restarted): record the settings again then
            self._claimed = False
        if events.notable():
            events.emit(
                SharedStateLost(
                    function=self.function,
                    kind=self.kind,
                    name=self.name,
                    address=self.store.address,
                    error=error,
                )
            )

    def _restore(self) -> None:
        with self._lock:
            lost_at, self._lost_at = self._lost_at, None
        if lost_at is not None and events.notable():
            events.emit(
                SharedStateRestored(
                    function=self.function,
                    kind=self.kind,
                    name=self.name,
                    address=self.store.address,
                    lost_for=time.monotonic() - lost_at,
                )
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _settings_error(
    kind: str, name: str, setting: str, recorded: str | None, given: str | None, where: str
) -> SharedSettingsError:
    theirs = "no such setting" if recorded is None else f"{setting}={recorded}"
    ours = "no such setting" if given is None else f"{setting}={given}"
    return SharedSettingsError(
        f"the shared {kind} {name!r} is used with {theirs} (recorded at {where} by the first "
        f"process that used the name), but this process has {ours}: one name means one "
        f"{kind} with one set of settings. Give these settings another name=, or drop the "
        f"record with FleetStore.forget({kind!r}, {name!r}) once no process uses the old ones",
        kind=kind,
        name=name,
        setting=setting,
        recorded=recorded,
        given=given,
    )


class _Stoppable(Protocol):
    def close(self) -> None: ...


@final
class FleetStore:
    """Where replicas keep the state they share: shared rate limits (and breakers, retry
    budgets) live in the Redis they all reach.

    Use it as ``@rate_limit(200, per=1, store=FleetStore("redis://redis:6379/0"))``: the
    limit then holds across every process that uses the same name.

    Args:
        url: where Redis is: one server (``redis://``, ``rediss://``, ``unix://``), a
            Redis Cluster (``redis+cluster://host:port[,host:port...]``) or the master
            Sentinel names (``redis+sentinel://host:26379[,...]/service[/db]``), as for
            :class:`~buttress.RedisStore`.
        client: a redis-py client instead of ``url`` (``redis.Redis``, also from
            ``Sentinel.master_for``; ``redis.asyncio.Redis``;
            ``redis.cluster.RedisCluster``; ``redis.asyncio.cluster.RedisCluster``); its
            own timeouts apply.
        namespace: the first part of every key, to share one Redis between applications.
        timeout: seconds (or a ``timedelta``) a Redis operation may take before it counts
            as failed, on the clients opened from ``url``.
        max_connections: connections each client opened from ``url`` may hold.
        fail_open: when Redis is unreachable, each process decides alone (a shared rate
            limit admits on its local share) until Redis answers again. ``False`` raises
            :class:`~buttress.SharedStateError` instead.

    Raises:
        ConfigurationError: for a setting that cannot work.
        ModuleNotFoundError: redis-py is not installed (``pip install 'buttress[redis]'``).

    Call :meth:`close` (and ``await`` :meth:`aclose` in each event loop you used it in)
    when done; a loop that ends through ``asyncio.run`` closes its client by itself.
    """

    __slots__ = (
        "_lock",
        "_shared",
        "_syncer",
        "address",
        "connection",
        "fail_open",
        "namespace",
        "timeout",
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        namespace: str = "buttress",
        timeout: float | timedelta = 0.25,
        max_connections: int = 100,
        fail_open: bool = True,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ConfigurationError(
                f"namespace must be a non-empty str without spaces, got {namespace!r}"
            )
        if not isinstance(fail_open, bool):
            raise ConfigurationError(f"fail_open must be True or False, got {fail_open!r}")
        self.namespace = namespace
        self.timeout = _settings.seconds(timeout, "timeout", allow_zero=False)
        self.fail_open = fail_open
        self.connection = RedisConnection(
            url,
            client=client,
            timeout=self.timeout,
            max_connections=_settings.positive_int(max_connections, "max_connections"),
            fail_open=fail_open,
            owner="FleetStore",
            error=SharedStateError,
        )
        self.address = self.connection.address
        self._lock = threading.Lock()
        self._shared: dict[tuple[str, str], SharedState] = {}
        # The thread that syncs shared breakers and budgets (``_sync.syncer``), if any.
        self._syncer: _Stoppable | None = None

    def __repr__(self) -> str:
        return f"FleetStore({self.address!r}, namespace={self.namespace!r})"

    def key(self, kind: str, name: str, suffix: str) -> str:
        """``{namespace}:{kind:name}:suffix``: every key of one name in one hash slot."""
        return f"{self.namespace}:{hash_tag(f'{kind}:{name}')}:{suffix}"

    def shared(
        self,
        kind: str,
        name: str,
        settings: Mapping[str, object],
        *,
        function: str | None = None,
    ) -> SharedState:
        """The :class:`SharedState` of ``name``, recording ``settings`` as its contract.

        ``settings`` are what every process must agree on (numbers, strings, ``None``;
        compared as :func:`setting_text`). No I/O: the record is written or compared in
        Redis before the name's first script runs. In this process the same name with
        other settings is refused here, at once.

        Raises:
            ConfigurationError: ``kind`` or ``name`` is not a non-empty str.
            SharedSettingsError: this process already uses the name with other settings.
        """
        if not isinstance(kind, str) or not kind.isidentifier():
            raise ConfigurationError(f"kind must be an identifier, got {kind!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty str, got {name!r}")
        texts = {str(setting): setting_text(value) for setting, value in settings.items()}
        with self._lock:
            known = self._shared.get((kind, name))
            if known is None:
                known = SharedState(self, kind, name, texts, function or name)
                self._shared[kind, name] = known
                return known
        if known.settings != texts:
            setting = min(
                s for s in known.settings.keys() | texts.keys()
                if known.settings.get(s) != texts.get(s)
            )
            raise _settings_error(
                kind, name, setting, known.settings.get(setting), texts.get(setting),
                "this process",
            )
        return known

    def forget(self, kind: str, name: str) -> bool:
        """Delete the settings recorded for ``name`` (and nothing else), so that the next
        process to use it records its own. Returns whether there was a record.

        Raises:
            SharedStateError: Redis is unreachable (whatever ``fail_open`` says).
        """
        key = self.key(kind, name, "settings")
        try:
            client = self.connection.sync_client("forget")
            removed = client.delete(key)
        except self.connection.errors as exc:
            raise SharedStateError(
                f"FleetStore could not forget {kind} {name!r} at {self.address}: {exc!r}",
                operation="forget",
                address=self.address,
            ) from exc
        with self._lock:
            known = self._shared.get((kind, name))
        if known is not None:
            known._claimed = False
            known._refused = None
        return bool(removed)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread that syncs shared breakers and budgets, and close the sync
        client the store opened (a ``client=`` you gave stays open). The store stays
        usable: it opens a new client, and starts the thread again, when it next needs
        them."""
        syncer = self._syncer
        if syncer is not None:
            syncer.close()
        self.connection.close()

    async def aclose(self) -> None:
        """Close the ``redis.asyncio`` client the store opened for the running loop."""
        await self.connection.aclose()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> FleetStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
        self.close()

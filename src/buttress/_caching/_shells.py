"""The two shells of ``@cache_result``: a ``def`` and an ``async def`` wrapper.

Each shell builds the key, answers a fresh hit on the in-process table itself (the hit
path is written out: one key, usually the ``args`` tuple itself, one dict lookup, one
clock read), and hands everything else to the engine (:meth:`Engine.plan`), whose steps it
carries out: blocking this thread, or awaiting without blocking the loop. In a coroutine
function, joining a running flight of a key with nothing stored is written out too: a
stampede's thousands of waiters would each pay for a generator otherwise.

Shells decide nothing. The async one shields leaving a store's flight from the caller's
cancellation (:func:`aenter`, :func:`aleave_flight`): leaving releases what other
processes wait on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, cast

import anyio

from buttress import _clock
from buttress._errors import is_fatal
from buttress._events import CacheAccess, events

from ._core import CacheCore
from ._engine import Answer, Engine
from ._flight import Flight, ThreadFlight
from ._handle import CacheHandle
from ._keys import BindError
from ._policy import Policy
from ._steps import Compute, Lead, Read, Release, Wait, Write
from ._store import CacheEntry, CacheStore, Entry
from ._values import copy_arrays

__all__ = ["aenter", "aleave_flight", "async_shell", "sync_shell"]

#: How long a coroutine may take to leave a store's flight (release a lock that other
#: processes wait on) once it is cancelled; past it, the store is counted as failed and a
#: lock left behind expires by itself (``RedisStore(lock_ttl=...)``).
LEAVE_GRACE: Final = 5.0

Shell = Callable[[Callable[..., Any]], Callable[..., Any]]


def _exc_info(
    exc: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if exc is None:
        return None, None, None
    return type(exc), exc, exc.__traceback__


def _outcome(value: Any, error: BaseException | None) -> Any:
    """Return ``value`` or raise ``error``: the end of every call the engine answers."""
    if error is None:
        return value
    try:
        raise error
    finally:
        error = None  # no cycle through this frame's locals


# --- def --------------------------------------------------------------------------------


def sync_shell(policy: Policy, handle: CacheHandle[Any, Any]) -> Shell:
    def build(fn: Callable[..., Any]) -> Callable[..., Any]:
        core = CacheCore(policy, fn)
        handle._bind(core)
        builder = core.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        plan, flights = Engine(core).plan, core.thread_flights
        store = cast("CacheStore", core.store)  # the engine asks for it only when there is one
        keep = policy.keep
        counters = core.counters
        name = core.name
        copying = policy.copy_arrays
        table = core.table

        def resolve(
            key: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            """Carry out the engine's steps for one call, blocking this thread."""
            steps = plan(key, entry, flights, ThreadFlight)
            reply: Any = None
            failure: BaseException | None = None
            while True:
                try:
                    step = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as end:
                    return _outcome(*end.value)
                reply = failure = None
                try:
                    if isinstance(step, Compute):
                        reply = fn(*args, **kwargs)
                    elif isinstance(step, Wait):
                        step.on.wait()
                    elif isinstance(step, Read):
                        if step.lead:
                            entry, led = store.get_or_lead(step.key)
                            if led is not None:
                                led.__enter__()
                            reply = entry, led
                        else:
                            reply = store.get(step.key), None
                    elif isinstance(step, Write):
                        store.set(step.key, step.entry, keep)
                    elif isinstance(step, Lead):
                        manager = store.flight(step.key, step.current)
                        reply = (manager, manager.__enter__())
                    else:
                        assert isinstance(step, Release), step
                        step.held.__exit__(*_exc_info(step.error))
                except BaseException as exc:
                    failure = exc

        if table is None:

            def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = core.key(args, kwargs)
                except BindError:
                    return fn(*args, **kwargs)  # let the function say what is wrong
                return resolve(key, None, args, kwargs)

            return cache_wrapper_store

        lookup = table.data.get
        touch = table.data.move_to_end

        def cache_wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs or len(args) != arity:
                try:
                    key: Hashable = bind(args, kwargs)
                except BindError:
                    return fn(*args, **kwargs)
            else:
                key = args + tail if tail else args
            try:
                entry = lookup(key)
            except TypeError:  # something unhashable: make it canonical
                key = bind(args, kwargs)
                entry = lookup(key)
            if entry is not None and entry.expires > _clock.monotonic():
                try:
                    touch(key)
                except KeyError:  # evicted by another thread just now
                    pass
                counters.hits += 1
                if events.active:
                    events.emit(CacheAccess(function=name, result="hit"))
                if copying and entry.arrays:
                    return copy_arrays(entry.value)
                return entry.value
            return resolve(key, entry, args, kwargs)

        return cache_wrapper

    return build


# --- async def ----------------------------------------------------------------------------


def async_shell(policy: Policy, handle: CacheHandle[Any, Any]) -> Shell:
    def build(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        core = CacheCore(policy, fn)
        handle._bind(core)
        engine = Engine(core)
        builder = core.builder
        arity, tail, bind = builder.arity, builder.tail, builder.build
        plan, flights = engine.plan, core.flights.table
        store = cast("CacheStore", core.store)  # the engine asks for it only when there is one
        keep = policy.keep
        counters = core.counters
        name = core.name
        copying = policy.copy_arrays
        table = core.table

        async def resolve(
            key: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            """Carry out the engine's steps for one call, waiting without blocking the loop.

            Cancelled during a step, the cancellation goes to the engine like any error
            (it settles what it holds) and comes back out of here unchanged; leaving a
            store's flight is shielded from it (:func:`aleave_flight`).
            """
            steps = plan(key, entry, flights(), Flight)
            reply: Any = None
            failure: BaseException | None = None
            while True:
                try:
                    step = steps.send(reply) if failure is None else steps.throw(failure)
                except StopIteration as end:
                    return _outcome(*end.value)
                reply = failure = None
                try:
                    if isinstance(step, Compute):
                        reply = await fn(*args, **kwargs)
                    elif isinstance(step, Wait):
                        await step.on.wait()
                    elif isinstance(step, Read):
                        if step.lead:
                            entry, led = await store.aget_or_lead(step.key)
                            reply = entry, None if led is None else (await aenter(led))[0]
                        else:
                            reply = await store.aget(step.key), None
                    elif isinstance(step, Write):
                        await store.aset(step.key, step.entry, keep)
                    elif isinstance(step, Lead):
                        reply = await aenter(store.aflight(step.key, step.current))
                    else:
                        assert isinstance(step, Release), step
                        await aleave_flight(step.held, step.error)
                except BaseException as exc:
                    failure = exc

        if table is None:

            async def cache_wrapper_store(*args: Any, **kwargs: Any) -> Any:
                try:
                    key = core.key(args, kwargs)
                except BindError:
                    return await fn(*args, **kwargs)
                return await resolve(key, None, args, kwargs)

            return cache_wrapper_store

        lookup = table.data.get
        touch = table.data.move_to_end
        joining = policy.single_flight
        joined, left = engine.joined, engine.left

        async def cache_wrapper(*args: Any, **kwargs: Any) -> Any:
            # The hit path, written out: building the key and finding a fresh entry cost
            # about as much as the await itself.
            if kwargs or len(args) != arity:
                try:
                    key: Hashable = bind(args, kwargs)
                except BindError:
                    return await fn(*args, **kwargs)
            else:
                key = args + tail if tail else args
            try:
                entry = lookup(key)
            except TypeError:
                key = bind(args, kwargs)
                entry = lookup(key)
            if entry is not None and entry.expires > _clock.monotonic():
                try:
                    touch(key)
                except KeyError:
                    pass
                counters.hits += 1
                if events.active:
                    events.emit(CacheAccess(function=name, result="hit"))
                if copying and entry.arrays:
                    return copy_arrays(entry.value)
                return entry.value
            if entry is None and joining:
                # A stampede's path, written out like the hit: for a key with nothing stored
                # and a flight running in this loop, plan() would decide to join (a flight of
                # this loop is never this caller's own), and each of thousands of waiters
                # would pay for a generator. What the wait brought is the engine's to say.
                flight = flights().get(key)
                if flight is not None:
                    answer: Answer | None
                    try:
                        await flight.waiter().wait()
                    except BaseException as exc:
                        answer = left(exc)
                    else:
                        answer = joined(flight)
                    if answer is not None:
                        if answer[1] is None:
                            return answer[0]
                        raise answer[1]
                    entry = lookup(key)  # abandoned by its cancelled leader: decide again
            return await resolve(key, entry, args, kwargs)

        return cache_wrapper

    return build


# --- entering and leaving a store's flight from a coroutine ---------------------------------


async def aenter(
    manager: AbstractAsyncContextManager[CacheEntry | None],
) -> tuple[tuple[Any, anyio.CancelScope], CacheEntry | None]:
    """Enter a store's flight (``store.aflight(...)``, or what ``aget_or_lead`` led)
    inside a cancel scope that spans the flight.

    Returns what the engine's ``Lead`` step expects: something to leave by (the manager
    and the scope, for :func:`aleave_flight`) and the entry the flight found.
    """
    # The scope is opened before the flight and closed after it, so that scopes a store
    # opens inside its flight (a task group renewing its lock) stay nested in it.
    scope = anyio.CancelScope()
    scope.__enter__()
    try:
        found = await manager.__aenter__()
    except BaseException as exc:
        scope.__exit__(type(exc), exc, exc.__traceback__)  # not cancelled: swallows nothing
        raise
    return (manager, scope), found


async def aleave_flight(held: tuple[Any, anyio.CancelScope], error: BaseException | None) -> None:
    """Leave a store's flight entered by :func:`aenter`, shielded.

    Leaving releases what the flight holds (a lock other processes wait on for up to its
    lifetime), also when the call was cancelled: within a cancelled scope (trio, anyio)
    every await raises at once, so the store could not release it. The flight's scope is
    shielded from the caller's cancellation for at most :data:`LEAVE_GRACE` seconds; past
    that the leave is cut short and reported as the store's ``TimeoutError``.
    """
    manager, scope = held
    scope.shield = True
    scope.deadline = anyio.current_time() + LEAVE_GRACE
    try:
        await manager.__aexit__(*_exc_info(error))
    except BaseException as exc:
        if scope.__exit__(type(exc), exc, exc.__traceback__):
            pass  # the grace ran out: our own cancellation, caught
        elif not (
            scope.cancel_called and is_fatal(exc) and error is not None and is_fatal(error)
        ):
            raise
        # else the grace ran out too, but anyio on asyncio does not swallow the scope's
        # own cancellation once the task was cancelled inside it (it cannot tell it from
        # a native Task.cancel()): dropped, since the call raises its own cancellation
    else:
        scope.__exit__(None, None, None)
        if not scope.cancel_called:
            return
    raise TimeoutError(f"leaving the cache store's flight took longer than {LEAVE_GRACE:g}s")

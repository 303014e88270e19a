"""What every decorator of the package promises, checked on all of them at once.

Honest wrappers (name, signature, ``iscoroutinefunction``), bare and called forms, streams
(generator functions wrapped as generator functions of the same kind, or refused naming
the decorator), and methods of every kind. Decorators that need a
setting (a duration, a limit) have no bare form; they are checked in their called form.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import buttress

#: (name, called form, has a bare form, supports plain functions)
DECORATORS: list[tuple[str, Callable[[], Any], bool, bool]] = [
    ("retry", lambda: buttress.retry(max_retries=1), True, True),
    ("cache_result", lambda: buttress.cache_result(ttl=5), True, True),
    ("validate_input", lambda: buttress.validate_input(), True, True),
    ("validate_output", lambda: buttress.validate_output(), True, True),
    ("memory_guard", lambda: buttress.memory_guard(max_percent=100), True, True),
    ("monitor", lambda: buttress.monitor(name="common"), True, True),
    ("circuit_breaker", lambda: buttress.circuit_breaker(), True, True),
    ("fallback", lambda: buttress.fallback(0), True, True),
    ("bulkhead", lambda: buttress.bulkhead(4), False, True),
    ("rate_limit", lambda: buttress.rate_limit(1000), False, True),
    ("timeout", lambda: buttress.timeout(5), False, False),
    ("hedge", lambda: buttress.hedge(1.0), False, False),
    ("policy", lambda: buttress.policy(retry=1, cache=5, bulkhead=4), False, True),
]
IDS = [entry[0] for entry in DECORATORS]


def sync_target(x: int, *, scale: int = 2) -> int:
    return x * scale


async def async_target(x: int, *, scale: int = 2) -> int:
    return x * scale


def forms(name: str, called: Callable[[], Any], bare: bool) -> list[Callable[[Any], Any]]:
    result = [lambda fn: called()(fn)]
    if bare:
        result.append(getattr(buttress, name))
    return result


@pytest.mark.parametrize(("name", "called", "bare", "sync_ok"), DECORATORS, ids=IDS)
def test_wrappers_are_honest(
    name: str, called: Callable[[], Any], bare: bool, sync_ok: bool
) -> None:
    targets = [sync_target, async_target] if sync_ok else [async_target]
    for decorate in forms(name, called, bare):
        for target in targets:
            wrapped = decorate(target)
            assert wrapped.__name__ == target.__name__, name
            assert wrapped.__doc__ == target.__doc__, name
            assert inspect.signature(wrapped) == inspect.signature(target), name
            assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(target)


#: The decorators that take streams: (generator functions, async-generator functions).
STREAMS: dict[str, tuple[bool, bool]] = {
    "retry": (True, True),
    "cache_result": (False, False),
    "validate_input": (True, True),
    "validate_output": (False, False),
    "memory_guard": (True, True),
    "monitor": (True, True),
    "circuit_breaker": (True, True),
    "fallback": (True, True),
    "bulkhead": (True, True),
    "rate_limit": (True, True),
    "timeout": (False, True),
    "hedge": (False, False),
    "policy": (False, False),  # its cache layer refuses them
}


def test_every_decorator_says_whether_it_takes_streams() -> None:
    assert set(STREAMS) == set(IDS)


@pytest.mark.parametrize(("name", "called", "bare", "sync_ok"), DECORATORS, ids=IDS)
def test_streams_are_wrapped_as_streams_or_refused_naming_the_decorator(
    name: str, called: Callable[[], Any], bare: bool, sync_ok: bool
) -> None:
    def generator(x: int, *, scale: int = 2) -> Any:
        yield x

    async def async_generator(x: int, *, scale: int = 2) -> Any:
        yield x

    shown = "cache_result" if name == "policy" else name  # a policy's layers speak for it
    checks = (inspect.isgeneratorfunction, inspect.isasyncgenfunction)
    targets = (generator, async_generator)
    for target, supported, kind in zip(targets, STREAMS[name], checks, strict=True):
        if supported:
            wrapped = called()(target)
            assert kind(wrapped), name
            assert not inspect.iscoroutinefunction(wrapped), name
            assert wrapped.__name__ == target.__name__, name
            assert inspect.signature(wrapped) == inspect.signature(target), name
        else:
            with pytest.raises(TypeError, match=rf"@{shown} cannot decorate .*generator"):
                called()(target)


@pytest.mark.parametrize(("name", "called", "bare", "sync_ok"), DECORATORS, ids=IDS)
def test_plain_functions_are_run_or_refused_clearly(
    name: str, called: Callable[[], Any], bare: bool, sync_ok: bool
) -> None:
    if sync_ok:
        assert called()(sync_target)(3) == 6
    else:
        with pytest.raises(TypeError, match=r"coroutine function|async"):
            called()(sync_target)


@pytest.mark.parametrize(("name", "called", "bare", "sync_ok"), DECORATORS, ids=IDS)
@pytest.mark.anyio
async def test_methods_of_every_kind(
    name: str, called: Callable[[], Any], bare: bool, sync_ok: bool
) -> None:
    class Service:
        factor = 5

        @called()
        async def method(self, x: int) -> int:
            return x * 2

        @classmethod
        @called()
        async def inner_classmethod(cls, x: int) -> int:
            return x * cls.factor

        @called()
        @classmethod
        async def outer_classmethod(cls, x: int) -> int:
            return x * cls.factor

        @staticmethod
        @called()
        async def inner_staticmethod(x: int) -> int:
            return x + 1

        @called()
        @staticmethod
        async def outer_staticmethod(x: int) -> int:
            return x + 1

    service = Service()
    assert await service.method(3) == 6
    assert await Service.inner_classmethod(3) == await service.outer_classmethod(3) == 15
    assert await Service.inner_staticmethod(3) == await service.outer_staticmethod(3) == 4

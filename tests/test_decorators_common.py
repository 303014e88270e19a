"""What every decorator of the package promises, checked on all of them at once.

Honest wrappers (name, signature, ``iscoroutinefunction``), bare and called forms, the
generator refusal naming the decorator, and methods of every kind. Decorators that need a
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


@pytest.mark.parametrize(("name", "called", "bare", "sync_ok"), DECORATORS, ids=IDS)
def test_generators_are_refused_naming_the_decorator(
    name: str, called: Callable[[], Any], bare: bool, sync_ok: bool
) -> None:
    def generator(x: int) -> Any:
        yield x

    async def async_generator(x: int) -> Any:
        yield x

    shown = "timeout" if name == "policy" else name  # a policy's layers speak for it
    for target in (generator, async_generator):
        with pytest.raises(TypeError, match=rf"@\w+ cannot decorate|@{shown}"):
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

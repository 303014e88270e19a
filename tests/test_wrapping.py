"""The wrapping core: one classification of targets, honest wrappers, methods, refusals.

Checked through @retry, the decorator that exists for every kind of target, and through
`_wrapping.wrap` directly for what no decorator exposes.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import pytest

from buttress import retry
from buttress._wrapping import function_name, is_async_callable, stream_kind, wrap


async def async_function(x: int, *, y: str = "a") -> str:
    return f"{x}{y}"


def sync_function(x: int, *, y: str = "a") -> str:
    return f"{x}{y}"


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x * 2


class SyncCallable:
    def __call__(self, x: int) -> int:
        return x * 2


def generator_function() -> Any:
    yield 1


async def async_generator_function() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (async_function, True),
        (sync_function, False),
        (functools.partial(async_function, 1), True),
        (functools.partial(functools.partial(async_function, 1), y="b"), True),
        (functools.partial(sync_function, 1), False),
        (AsyncCallable(), True),
        (SyncCallable(), False),
        (lambda: None, False),
        (len, False),
        (AsyncCallable, False),  # calling the class builds an instance, not a coroutine
    ],
)
def test_classification(target: Any, expected: bool) -> None:
    assert is_async_callable(target) is expected


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction is 3.12+")
def test_marked_coroutine_function_is_async() -> None:
    def returns_awaitable(x: int) -> Any:
        return async_function(x)

    marked = inspect.markcoroutinefunction(returns_awaitable)  # type: ignore[attr-defined]
    assert is_async_callable(marked)
    wrapped = retry(marked)
    assert inspect.iscoroutinefunction(wrapped)


@pytest.mark.parametrize(
    "target", [generator_function, async_generator_function], ids=["gen", "asyncgen"]
)
def test_generators_are_refused_naming_the_decorator(target: Callable[..., Any]) -> None:
    with pytest.raises(TypeError, match=r"@spy cannot decorate .*generator.*: no streams"):
        wrap(target, "spy", sync=lambda fn: fn, async_=lambda fn: fn, stream_why="no streams")


@pytest.mark.parametrize(
    ("target", "kind"),
    [(generator_function, "sync"), (async_generator_function, "async")],
    ids=["gen", "asyncgen"],
)
def test_streams_go_to_the_stream_factory_of_their_kind(
    target: Callable[..., Any], kind: str
) -> None:
    built: list[str] = []

    def factory(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def build(fn: Callable[..., Any]) -> Callable[..., Any]:
            built.append(name)
            return fn

        return build

    wrap(
        target,
        "spy",
        sync=factory("plain"),
        async_=factory("coroutine"),
        stream=factory("sync"),
        astream=factory("async"),
    )
    assert built == [kind]


def test_stream_kinds_are_seen_through_partials_methods_and_callable_objects() -> None:
    class Tokens:
        async def __call__(self, n: int) -> Any:
            yield n

        def lines(self) -> Any:
            yield "a"

    assert stream_kind(functools.partial(async_generator_function)) == "async"
    assert stream_kind(Tokens()) == "async"
    assert stream_kind(Tokens().lines) == "sync"
    assert stream_kind(generator_function) == "sync"
    assert stream_kind(lambda: None) is None
    assert stream_kind(Tokens) is None


def test_generators_allowed_when_the_decorator_says_so() -> None:
    wrapped = wrap(
        generator_function,
        "spy",
        sync=lambda fn: lambda *a, **k: fn(*a, **k),
        async_=None,
        allow_generators=True,
    )
    assert list(wrapped()) == [1]


def test_non_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="@retry needs a callable"):
        retry(42)  # type: ignore[call-overload]


def test_a_decorator_may_refuse_one_kind() -> None:
    async_only = functools.partial(wrap, sync=None, async_=lambda fn: fn)
    with pytest.raises(TypeError, match=r"not one: losers must be cancelled$"):
        async_only(sync_function, "hedge", why="losers must be cancelled")
    with pytest.raises(TypeError, match=r"@hedge needs a coroutine function \(async def\), and"):
        async_only(sync_function, "hedge")
    sync_only = functools.partial(wrap, sync=lambda fn: fn, async_=None)
    with pytest.raises(TypeError, match="@spy needs a plain function, and async_function is"):
        sync_only(async_function, "spy")


@pytest.mark.parametrize("target", [async_function, sync_function])
@pytest.mark.parametrize("form", ["bare", "called"])
def test_wrappers_are_honest(target: Callable[..., Any], form: str) -> None:
    wrapped = retry(target) if form == "bare" else retry(max_retries=1)(target)
    assert wrapped is not target
    assert wrapped.__name__ == target.__name__
    assert wrapped.__qualname__ == target.__qualname__
    assert wrapped.__module__ == target.__module__
    assert wrapped.__wrapped__ is target  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(target)
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(target)


def test_wrapper_of_a_partial_keeps_its_signature() -> None:
    target = functools.partial(async_function, 1)
    wrapped = retry(target)
    assert inspect.signature(wrapped) == inspect.signature(target)
    assert inspect.iscoroutinefunction(wrapped) == inspect.iscoroutinefunction(target) is True


def test_wrapper_of_an_async_callable_object_is_a_coroutine_function() -> None:
    # inspect.iscoroutinefunction(instance) is False even though calling it returns a
    # coroutine; the wrapper tells the truth about what calling it returns.
    wrapped = retry(AsyncCallable())
    assert inspect.iscoroutinefunction(wrapped)
    assert list(inspect.signature(wrapped).parameters) == ["x"]


def test_inner_handles_carry_through_to_the_outer_wrapper() -> None:
    inner = wrap(sync_function, "spy", sync=lambda fn: lambda *a, **k: fn(*a, **k),
                 async_=None, attributes={"handle": "the handle"})
    outer = retry(inner)
    assert outer.handle == "the handle"  # type: ignore[attr-defined]


def test_function_name() -> None:
    assert function_name(sync_function) == "sync_function"
    assert function_name(functools.partial(sync_function, 1)) == "sync_function"
    assert function_name(AsyncCallable()) == "AsyncCallable"
    assert function_name(Service.method) == "Service.method"


class Service:
    """Methods of every kind, decorated in both stacking orders."""

    factor = 10

    def __init__(self) -> None:
        self.factor = 3

    @retry
    def method(self, x: int) -> int:
        return x * self.factor

    @retry
    async def amethod(self, x: int) -> int:
        return x * self.factor

    @classmethod
    @retry
    def class_inner(cls, x: int) -> int:
        return x * cls.factor

    @retry
    @classmethod
    def class_outer(cls, x: int) -> int:
        return x * cls.factor

    @classmethod
    @retry
    async def aclass_inner(cls, x: int) -> int:
        return x * cls.factor

    @retry
    @classmethod
    async def aclass_outer(cls, x: int) -> int:
        return x * cls.factor

    @staticmethod
    @retry
    def static_inner(x: int) -> int:
        return x + 1

    @retry
    @staticmethod
    def static_outer(x: int) -> int:
        return x + 1

    @staticmethod
    @retry
    async def astatic_inner(x: int) -> int:
        return x + 1

    @retry
    @staticmethod
    async def astatic_outer(x: int) -> int:
        return x + 1


def test_sync_methods_of_every_kind() -> None:
    service = Service()
    assert service.method(2) == 6
    assert Service.class_inner(2) == service.class_inner(2) == 20
    assert Service.class_outer(2) == service.class_outer(2) == 20
    assert Service.static_inner(2) == service.static_inner(2) == 3
    assert Service.static_outer(2) == service.static_outer(2) == 3
    assert isinstance(inspect.getattr_static(Service, "class_outer"), classmethod)
    assert isinstance(inspect.getattr_static(Service, "static_outer"), staticmethod)


@pytest.mark.anyio
async def test_async_methods_of_every_kind() -> None:
    service = Service()
    assert await service.amethod(2) == 6
    assert await Service.aclass_inner(2) == await service.aclass_inner(2) == 20
    assert await Service.aclass_outer(2) == await service.aclass_outer(2) == 20
    assert await Service.astatic_inner(2) == 3
    assert await Service.astatic_outer(2) == 3
    for name in ("amethod", "aclass_inner", "aclass_outer", "astatic_inner", "astatic_outer"):
        assert inspect.iscoroutinefunction(getattr(service, name)), name
    for name in ("method", "class_inner", "class_outer", "static_inner", "static_outer"):
        assert not inspect.iscoroutinefunction(getattr(service, name)), name
    assert list(inspect.signature(service.amethod).parameters) == ["x"]
    assert list(inspect.signature(Service.aclass_outer).parameters) == ["x"]

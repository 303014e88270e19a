"""Handles under their decorators' own names, a policy's handles, settings declared once.

Each decorator with state hangs its handle on the wrapper under the name the decorator
has in ``policy()`` (``fn.cache``, ``fn.circuit_breaker``, ``fn.rate_limit``...), with the
older names kept as aliases (``fn.breaker``, ``fn.limiter``). A function decorated by a
policy carries the handles of the layers it stacks, and ``fn.policy``. The decorators used
bare or called declare their settings once, in one constructor; their signature, their
errors and ``policy()``'s shorthands come from it.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable
from typing import Any

import pytest

import buttress
from buttress import _registry
from buttress._memory_guard import MemoryGuard
from buttress._monitoring._decorator import _Settings as MonitorSettings
from buttress._policies._breaker import _Settings as BreakerSettings
from buttress._retry import _Retrier
from buttress._validation._decorators import _InputSettings, _OutputSettings


async def coroutine(x: int) -> int:
    return x


def plain(x: int) -> int:
    return x


#: (decorator, the names of its handle, the handle's class)
HANDLES: list[tuple[Callable[[Any], Any], tuple[str, ...], type]] = [
    (buttress.cache_result(ttl=5), ("cache",), buttress.CacheHandle),
    (buttress.circuit_breaker(), ("circuit_breaker", "breaker"), buttress.CircuitBreaker),
    (buttress.bulkhead(2), ("bulkhead",), buttress.Bulkhead),
    (buttress.rate_limit(100), ("rate_limit", "limiter"), buttress.RateLimiter),
    (buttress.hedge(1.0), ("hedge",), buttress.Hedger),
    (buttress.memory_guard(max_percent=100), ("memory_guard",), buttress.MemoryGuard),
    (buttress.monitor("handles"), ("monitor",), buttress.MonitorHandle),
    (buttress.batch(max_size=4), ("batch", "batcher"), buttress.Batcher),
]


@pytest.mark.parametrize(
    ("decorator", "names", "kind"), HANDLES, ids=[names[0] for _, names, _ in HANDLES]
)
def test_each_handle_is_under_its_decorators_name_and_its_aliases(
    decorator: Callable[[Any], Any], names: tuple[str, ...], kind: type
) -> None:
    wrapped = decorator(coroutine)
    handles = [getattr(wrapped, name) for name in names]
    assert isinstance(handles[0], kind)
    assert all(handle is handles[0] for handle in handles)


def test_the_aliases_are_the_same_objects_the_new_names_give() -> None:
    @buttress.rate_limit(5, burst=2)
    def limited() -> None:
        pass

    limited()
    assert limited.rate_limit.stats().admitted == 1
    assert limited.limiter is limited.rate_limit

    @buttress.circuit_breaker(name="handles-alias")
    def guarded() -> None:
        pass

    assert guarded.circuit_breaker is guarded.breaker
    assert guarded.circuit_breaker.name == "handles-alias"


# --- policy() ------------------------------------------------------------------------------


def test_a_policy_function_carries_the_handles_of_its_layers_and_the_policy() -> None:
    stack = buttress.policy(
        monitor="handles_policy",
        cache=60,
        retry=2,
        circuit_breaker=True,
        bulkhead=3,
        rate_limit=1000,
        memory_guard={"max_percent": 100},
    )
    fn = stack(plain)
    assert fn.policy is stack
    assert isinstance(fn.monitor, buttress.MonitorHandle)
    assert isinstance(fn.cache, buttress.CacheHandle)
    assert isinstance(fn.circuit_breaker, buttress.CircuitBreaker)
    assert fn.breaker is fn.circuit_breaker
    assert isinstance(fn.bulkhead, buttress.Bulkhead)
    assert isinstance(fn.rate_limit, buttress.RateLimiter)
    assert fn.limiter is fn.rate_limit
    assert isinstance(fn.memory_guard, buttress.MemoryGuard)
    # The handles are the layers' own: they see the calls.
    assert fn(3) == 3
    assert fn(3) == 3
    assert fn.cache.stats().hits == 1
    assert fn.monitor.stats().calls == 2
    assert fn.bulkhead.stats().admitted == 1
    assert fn.rate_limit.stats().admitted == 1


def test_a_layer_the_policy_does_not_stack_has_no_handle() -> None:
    fn = buttress.policy(retry=2)(plain)
    assert fn.policy.layers == ("retry",)
    for name in ("cache", "circuit_breaker", "breaker", "bulkhead", "rate_limit", "monitor"):
        with pytest.raises(AttributeError):
            getattr(fn, name)


def test_policy_on_classmethods_and_staticmethods_keeps_the_handles() -> None:
    stack = buttress.policy(cache=60)

    class Model:
        @stack
        @classmethod
        def build(cls, x: int) -> int:
            return x

        @stack
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

    assert Model.build(2) == 2
    assert Model.build.policy is stack
    assert Model.build.cache.stats().misses == 1
    assert Model.double(2) == 4
    assert Model.double.policy is stack
    assert Model.double.cache.stats().misses == 1


# --- settings declared once ---------------------------------------------------------------

#: (decorator, the constructor declaring its settings, whether a bare use passes ``fn``)
DECLARED: list[tuple[Callable[..., Any], Callable[..., Any], bool]] = [
    (buttress.retry, _Retrier, True),
    (buttress.circuit_breaker, BreakerSettings, True),
    (buttress.memory_guard, MemoryGuard, True),
    (buttress.monitor, MonitorSettings, False),
    (buttress.validate_input, _InputSettings, True),
    (buttress.validate_output, _OutputSettings, False),
]


@pytest.mark.parametrize(
    ("decorator", "declaration", "takes_fn"), DECLARED, ids=[d.__name__ for d, _, _ in DECLARED]
)
def test_the_signature_is_the_declarations(
    decorator: Callable[..., Any], declaration: Callable[..., Any], takes_fn: bool
) -> None:
    shown = list(inspect.signature(decorator).parameters.values())
    declared = list(inspect.signature(declaration).parameters.values())
    if takes_fn:
        first, *shown = shown
        assert (first.name, first.kind, first.default) == (
            "fn",
            inspect.Parameter.POSITIONAL_ONLY,
            None,
        )
    assert shown == declared
    assert decorator.__module__.startswith("buttress.")
    assert decorator.__doc__
    assert "Args:" in decorator.__doc__


@pytest.mark.parametrize(
    "decorator",
    [buttress.retry, buttress.circuit_breaker, buttress.memory_guard, buttress.monitor],
    ids=lambda decorator: decorator.__name__,
)
def test_an_unknown_setting_is_a_type_error_naming_the_decorator(
    decorator: Callable[..., Any],
) -> None:
    with pytest.raises(TypeError, match=rf"^{decorator.__name__}\(\): .*'max_retry'"):
        decorator(max_retry=3)


def test_the_function_and_keywords_together_still_decorate() -> None:
    # Untyped, but it worked before the settings were declared once, so it still does.
    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        raise ValueError(x)

    wrapped = buttress.retry(flaky, max_retries=2, base_delay=0, jitter=None)
    with pytest.raises(ValueError, match="7"):
        wrapped(7)
    assert calls == [7, 7, 7]
    named = buttress.monitor(plain, log_level="DEBUG")
    assert named(1) == 1
    assert named.monitor.name == plain.__qualname__
    with pytest.raises(TypeError, match=r"takes the function to decorate and keywords only"):
        buttress.retry(plain, 3)


def test_settings_are_checked_when_the_decorator_is_called() -> None:
    with pytest.raises(buttress.ConfigurationError, match="max_retries"):
        buttress.retry(max_retries=-1)
    with pytest.raises(buttress.ConfigurationError, match="name must be a non-empty str"):
        buttress.monitor(3)  # neither a name nor a function


def test_bare_and_called_forms_build_the_same_wrapper() -> None:
    for bare, called in (
        (buttress.retry(plain), buttress.retry()(plain)),
        (buttress.monitor(plain), buttress.monitor()(plain)),
        (buttress.validate_output(plain), buttress.validate_output()(plain)),
    ):
        assert bare(4) == called(4) == 4
        assert bare.__wrapped__ is called.__wrapped__ is plain


# --- the registry of live objects -----------------------------------------------------------


def test_breakers_register_in_the_core_registry_and_leave_it_when_unused() -> None:
    @buttress.circuit_breaker(name="handles-registry")
    def guarded() -> None:
        pass

    assert guarded.circuit_breaker in _registry.breakers.live()
    del guarded
    gc.collect()
    assert all(breaker.name != "handles-registry" for breaker in _registry.breakers.live())

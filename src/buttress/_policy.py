"""policy(): one decorator that stacks the others in the canonical order.

This is the composition layer: it imports every feature and no feature imports it.

The order (outermost first), explained in docs/decorators/policy.md::

    monitor > validate_input > fallback > timeout > cache_result > batch > retry
            > circuit_breaker > bulkhead > rate_limit > memory_guard > attempt_timeout
            > validate_output > function

With ``batch``, the layers above it are per item (they wrap ``fn.one``) and the layers
below it per batch call (they wrap the batch function).

Each layer is switched on by its keyword: ``True`` for the decorator's defaults, a
``dict`` of its keyword arguments, or a shorthand for its main setting (``timeout=5``,
``retry=3``, ``bulkhead=10``). :func:`policy` only composes: every setting is checked by
the decorator it belongs to, when the policy is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, final, overload

from ._batching import Batcher
from ._batching import batch as _batch
from ._caching import CacheHandle, cache_result
from ._declare import keywords_of, suggests_keywords
from ._errors import ConfigurationError
from ._memory_guard import MemoryGuard, memory_guard
from ._monitoring import MonitorHandle, monitor
from ._policies import (
    Bulkhead,
    CircuitBreaker,
    RateLimiter,
    bulkhead,
    circuit_breaker,
    fallback,
    rate_limit,
    timeout,
)
from ._retry import retry
from ._settings import unexpected_keyword
from ._validation import validate_input, validate_output

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Policy", "PolicyFunction", "PolicyMethod", "policy"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
PH = ParamSpec("PH")
T = TypeVar("T")
T2 = TypeVar("T2")
T_co = TypeVar("T_co", covariant=True)
S = TypeVar("S")

Setting = bool | Mapping[str, Any] | int | float | str | timedelta | None
Decorator = Callable[[Callable[..., Any]], Any]


def _keywords(
    factory: Callable[..., Decorator],
    shorthand: str | None,
    passes_to: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """Build a layer from ``True``, a dict of keyword arguments, or the shorthand value.

    ``passes_to`` is the decorator a ``factory`` taking ``**settings`` passes them on to:
    the keywords a dict may hold are then its own and that decorator's.
    """
    takes = _accepted(factory, passes_to)

    def build(layer: str, setting: Setting) -> Decorator:
        if setting is True:
            return factory()
        if isinstance(setting, Mapping):
            if takes is not None:
                for keyword in setting:
                    if keyword not in takes:  # a typo: suggest the setting meant
                        raise unexpected_keyword(f"policy({layer}={{...}})", keyword, takes)
            return factory(**setting)
        if shorthand is not None and not isinstance(setting, bool):
            return factory(**{shorthand: setting})
        accepted = "True or a dict of its keyword arguments"
        if shorthand is not None:
            accepted += f", or its {shorthand!r} alone"
        raise ConfigurationError(f"policy(): {layer} must be {accepted}; got {setting!r}")

    return build


def _accepted(
    factory: Callable[..., Any], passes_to: Callable[..., Any] | None
) -> frozenset[str] | None:
    """The keywords a layer's dict may hold; ``None`` when any may be right."""
    signature = inspect.signature(factory)
    accepted = keywords_of(signature)
    if accepted is not None or passes_to is None:
        return accepted
    inner = keywords_of(inspect.signature(passes_to))
    if inner is None:
        return None
    named = keywords_of(
        signature.replace(
            parameters=[
                parameter
                for parameter in signature.parameters.values()
                if parameter.kind is not parameter.VAR_KEYWORD
            ]
        )
    )
    return inner | (named or frozenset())


# validate_output and fallback take their main setting positionally.


def _validate_output(spec: Any = None, **settings: Any) -> Decorator:
    return validate_output(spec, **settings) if spec is not None else validate_output(**settings)


_NO_VALUE = object()


def _fallback(value: Any = _NO_VALUE, **settings: Any) -> Decorator:
    if value is _NO_VALUE:
        return fallback(**settings)  # type: ignore[no-any-return]
    # Through factory=, so that a callable value is answered, not taken for the target.
    return fallback(factory=lambda error: value, **settings)  # type: ignore[no-any-return]


#: The layers, outermost first: (keyword, builder).
_LAYERS: tuple[tuple[str, Callable[[str, Setting], Decorator]], ...] = (
    ("monitor", _keywords(monitor, "name")),
    ("validate", _keywords(validate_input, None)),
    ("fallback", _keywords(_fallback, "value", fallback)),
    ("timeout", _keywords(timeout, "seconds")),
    ("cache", _keywords(cache_result, "ttl")),
    ("batch", _keywords(_batch, "max_size")),
    ("retry", _keywords(retry, "max_retries")),
    ("circuit_breaker", _keywords(circuit_breaker, "name")),
    ("bulkhead", _keywords(bulkhead, "max_concurrent")),
    ("rate_limit", _keywords(rate_limit, "rate")),
    ("memory_guard", _keywords(memory_guard, None)),
    ("attempt_timeout", _keywords(timeout, "seconds")),
    ("validate_output", _keywords(_validate_output, "spec", validate_output)),
)

#: The keyword of each layer, outermost first.
ORDER: tuple[str, ...] = tuple(name for name, _ in _LAYERS)


@dataclass(frozen=True)
class _Layer:
    name: str
    setting: Setting
    build: Callable[[str, Setting], Decorator]

    def decorator(self) -> Decorator:
        return self.build(self.name, self.setting)

    def __repr__(self) -> str:
        if self.setting is True:
            return self.name
        if isinstance(self.setting, Mapping):
            inner = ", ".join(f"{key}={value!r}" for key, value in self.setting.items())
        else:
            inner = repr(self.setting)
        return f"{self.name}({inner})"


class _Handles(Protocol[PH, T_co]):
    """The handles of a policy's layers, each under its layer's keyword and typed.

    Only the layers the policy stacks have one: reading another raises
    ``AttributeError``, as reading any attribute a function lacks does (``fn.policy.layers``
    lists the layers). ``cache`` takes the arguments ``PH`` of the function as defined
    (``self`` first, for a method).
    """

    @property
    def policy(self) -> Policy:
        """The policy that decorated the function."""
        ...

    @property
    def monitor(self) -> MonitorHandle: ...

    @property
    def cache(self) -> CacheHandle[PH, T_co]: ...

    @property
    def circuit_breaker(self) -> CircuitBreaker: ...

    @property
    def breaker(self) -> CircuitBreaker:
        """The same as ``circuit_breaker``."""
        ...

    @property
    def bulkhead(self) -> Bulkhead: ...

    @property
    def rate_limit(self) -> RateLimiter: ...

    @property
    def limiter(self) -> RateLimiter:
        """The same as ``rate_limit``."""
        ...

    @property
    def memory_guard(self) -> MemoryGuard: ...

    @property
    def batch(self) -> Batcher:
        """With ``batch``: the batcher's handle (``stats()``)."""
        ...

    @property
    def batcher(self) -> Batcher:
        """The same as ``batch``."""
        ...

    @property
    def one(self) -> Callable[..., Any]:
        """With ``batch``: the single-item call, through the layers above ``batch``."""
        ...


class PolicyFunction(_Handles[P, T_co], Protocol[P, T_co]):
    """A function decorated with a :class:`Policy`: callable as before, plus the handles.

    ``fn.cache``, ``fn.circuit_breaker``, ``fn.bulkhead``, ``fn.rate_limit``,
    ``fn.memory_guard`` and ``fn.monitor`` are the handles of the layers of those names,
    typed as each decorator types its own; ``fn.policy`` is the policy. A layer the policy
    does not stack has no handle: reading it raises ``AttributeError``.

    Looked up on an instance, a decorated method is a :class:`PolicyMethod`: called
    without ``self``, while its ``.cache`` still takes ``self`` first.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None, /) -> Self: ...

    @overload
    def __get__(
        self: PolicyFunction[Concatenate[S, P2], T2],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> PolicyMethod[P2, T2, Concatenate[S, P2]]: ...


class PolicyMethod(_Handles[PH, T_co], Protocol[P, T_co, PH]):
    """A method decorated with a :class:`Policy`, looked up on an instance."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T_co: ...


#: The handles of layers that stand above ``batch`` (on ``fn.one``), copied onto the
#: batch function so that ``fn.cache`` works with or without batching.
_ITEM_HANDLES = ("monitor", "cache")


def _stack(layers: tuple[_Layer, ...], fn: Any) -> Any:
    for layer in reversed(layers):
        fn = layer.decorator()(fn)
    return fn


@final
class Policy:
    """A stack of buttress decorators in the canonical order; apply it like a decorator.

    ``repr()`` shows the stack, outermost first; :attr:`layers` names the layers.

    Each function it decorates gets decorators of its own, built from the same settings:
    two functions under one policy do not share a cache, a bulkhead's slots or a rate
    limiter's starts. Breakers given the same ``name`` share their state, as they do
    everywhere; to share a bulkhead or a limiter, apply that decorator object yourself.
    """

    __slots__ = ("_layers",)

    def __init__(self, layers: tuple[_Layer, ...]) -> None:
        self._layers = layers

    @property
    def layers(self) -> tuple[str, ...]:
        """The keywords of the layers switched on, outermost first."""
        return tuple(layer.name for layer in self._layers)

    def __call__(self, fn: Callable[P, T], /) -> PolicyFunction[P, T]:
        """Decorate ``fn`` with a fresh decorator per layer; it carries the layers' handles.

        With ``batch``, ``fn`` is a batch function (a list of items in, one result per
        item out): the layers below ``batch`` wrap it, each batch call going through
        them; the layers above wrap ``fn.one``, the single-item call.
        """
        names = self.layers
        if "batch" not in names:
            wrapped = _stack(self._layers, fn)
        else:
            cut = names.index("batch")
            wrapped = self._layers[cut].decorator()(_stack(self._layers[cut + 1 :], fn))
            inner = getattr(wrapped, "__func__", wrapped)
            one = inner.one = _stack(self._layers[:cut], inner.one)
            for handle in _ITEM_HANDLES:  # reachable on the batch function too
                if hasattr(one, handle):
                    setattr(inner, handle, getattr(one, handle))
        # Each layer's wrapper copies the handles of those below it (functools.wraps), so
        # the outermost has them all; a classmethod or staticmethod holds them on __func__.
        getattr(wrapped, "__func__", wrapped).policy = self
        return wrapped  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return "policy(" + " > ".join(repr(layer) for layer in self._layers) + ")"


@suggests_keywords
def policy(
    *,
    monitor: Setting = None,
    validate: Setting = None,
    fallback: Any = None,
    timeout: Setting = None,
    cache: Setting = None,
    batch: Setting = None,
    retry: Setting = None,
    circuit_breaker: Setting = None,
    bulkhead: Setting = None,
    rate_limit: Setting = None,
    memory_guard: Setting = None,
    attempt_timeout: Setting = None,
    validate_output: Any = None,
) -> Policy:
    """One decorator made of the others, stacked in the order that makes them work together.

    Each keyword switches one layer on (``None`` or ``False``, the default, leaves it
    out): ``True`` uses the decorator's defaults, a ``dict`` is passed as its keyword
    arguments, and a plain value is its main setting:

    ========================  ================================  ========================
    keyword                   decorator                         plain value means
    ========================  ================================  ========================
    ``monitor``               ``@monitor``                      ``name``
    ``validate``              ``@validate_input``               (``True`` or a dict)
    ``fallback``              ``@fallback``                     ``value``
    ``timeout``               ``@timeout`` around everything    ``seconds``
    ``cache``                 ``@cache_result``                 ``ttl``
    ``batch``                 ``@batch``                        ``max_size``
    ``retry``                 ``@retry``                        ``max_retries``
    ``circuit_breaker``       ``@circuit_breaker``              ``name``
    ``bulkhead``              ``@bulkhead``                     ``max_concurrent``
    ``rate_limit``            ``@rate_limit``                   ``rate`` (per second)
    ``memory_guard``          ``@memory_guard``                 (``True`` or a dict)
    ``attempt_timeout``       ``@timeout`` around each attempt  ``seconds``
    ``validate_output``       ``@validate_output``              the spec
    ========================  ================================  ========================

    Outermost first: monitoring sees every call as the caller does; bad input fails
    before anything else and is never retried; the fallback answers for everything below
    it; the total timeout bounds retries and waits; a cache hit skips the rest and one
    single-flight leader retries for all its followers; the breaker counts each attempt;
    the bulkhead and rate limit admit attempts; the memory guard admits work just before
    it allocates; the attempt timeout bounds one attempt; output validation, innermost,
    makes an invalid result a failed attempt (retried when its error is in ``retry``'s
    ``exceptions``, counted by the breaker, never cached).

    With ``batch``, the policy decorates a batch function (it takes a list of items and
    returns one result per item) and returns it as ``@batch`` does, with ``fn.one(item)``:
    the layers above ``batch`` (monitor, validate, fallback, timeout, cache) wrap
    ``fn.one`` and work per item: a cache hit never enters a batch, identical concurrent
    items share one slot, bad input never joins a batch, the total timeout bounds a
    caller's whole wait. The layers below wrap the batch function and work per batch call:
    one retry re-sends the batch, the breaker counts batches, the bulkhead and rate limit
    admit batches, ``validate_output`` checks the whole result (give it a spec for the
    list). ``fn.cache`` and ``fn.monitor`` reach the handles of the per-item layers,
    ``fn.batcher`` the batcher's.

    Raises:
        ConfigurationError: a layer's setting is of the wrong kind, or a decorator
            refuses its settings (each decorator checks its own, as when used alone).
        TypeError: when applied, a layer refuses the function (``timeout`` and
            ``attempt_timeout`` need a coroutine function or an async generator;
            ``cache`` refuses streams).

    Generator and async-generator functions (streams) are decorated in the same order,
    each layer applying its rule for streams: the stream is admitted through every layer
    when it is first iterated, retried while no item has reached the caller, bounded by
    ``timeout`` (``first_item``, ``idle``, ``seconds``), counted once by the breaker, and
    holds its bulkhead slot and memory reservation until it ends.
    """
    settings = {
        "monitor": monitor,
        "validate": validate,
        "fallback": fallback,
        "timeout": timeout,
        "cache": cache,
        "batch": batch,
        "retry": retry,
        "circuit_breaker": circuit_breaker,
        "bulkhead": bulkhead,
        "rate_limit": rate_limit,
        "memory_guard": memory_guard,
        "attempt_timeout": attempt_timeout,
        "validate_output": validate_output,
    }
    layers = tuple(
        _Layer(name, settings[name], build)
        for name, build in _LAYERS
        if settings[name] is not None and settings[name] is not False
    )
    for layer in layers:
        layer.decorator()  # every setting is checked now, not at the first decoration
    return Policy(layers)

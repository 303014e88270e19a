"""Binding a call to a signature: the one reader and its three consumers.

``buttress._signature`` reads a callable's signature once; ``@cache_result`` (keys),
``@validate_input`` and ``@monitor`` (input summaries) bind and name arguments through it.
Each section checks one edge case on the reader itself and on every consumer, so that a
rule they share is seen to be shared, and each consumer's own policy (defaults filled,
skipped or left out; the receiver keyed on or left out) is seen where it differs.
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cache_support import calls_of as counted
from _monitor_support import Records, capture, fresh_monitoring
from buttress import (
    ArraySpec,
    ConfigurationError,
    InputValidationError,
    UnkeyableArgumentError,
    ValidationFailed,
    cache_result,
    circuit_breaker,
    events,
    flush_monitoring,
    monitor,
    retry,
    validate_input,
    validate_output,
)
from buttress._caching._keys import KeyBuilder
from buttress._signature import MISSING, _read, signature_of

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover - exercised on 3.10 only
    from typing_extensions import Self


@pytest.fixture
def records() -> Iterator[Records]:
    with fresh_monitoring(), capture() as handler:
        yield handler


def inputs(records: Records) -> list[Any]:
    assert flush_monitoring()
    return [r.inputs for r in records]  # type: ignore[attr-defined]


# --- the reader: kinds of parameters and binding as Python binds -----------------------


def mixed(a, /, b, *rest, c, d=0, **options):  # type: ignore[no-untyped-def]
    return {"a": a, "b": b, "rest": rest, "c": c, "d": d, "options": options}


def plain(a, b=2):  # type: ignore[no-untyped-def]
    return {"a": a, "b": b}


def positional_only(a, b=2, /):  # type: ignore[no-untyped-def]
    return {"a": a, "b": b}


def keyword_only(*, x, y=1):  # type: ignore[no-untyped-def]
    return {"x": x, "y": y}


def variadic(*args, **kwargs):  # type: ignore[no-untyped-def]
    return {"args": args, "kwargs": kwargs}


def shadowed(a, /, **options):  # type: ignore[no-untyped-def]
    return {"a": a, "options": options}


def nothing():  # type: ignore[no-untyped-def]
    return {}


FUNCTIONS = [mixed, plain, positional_only, keyword_only, variadic, shadowed, nothing]


def test_the_parameters_as_read() -> None:
    signature = signature_of(mixed)
    assert signature.readable
    assert signature.names == ("a", "b", "c", "d")
    assert signature.positional == 2
    assert dict(signature.keywords) == {"b": 1, "c": 2, "d": 3}
    assert signature.positional_only == {"a"}
    assert (signature.var_positional, signature.var_keyword) == ("rest", "options")
    assert [signature.position(name) for name in ("a", "b", "c", "d", "zz")] == [
        0,
        1,
        None,
        None,
        None,
    ]
    assert signature.receiver is None


def bound_like_python(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What binding gives, in the shape of the functions above (each returns its locals)."""
    signature = signature_of(fn)
    values, extra, extra_keywords = signature.bind(args, kwargs)
    result = {
        name: signature.defaults[index] if value is MISSING else value
        for index, (name, value) in enumerate(zip(signature.names, values, strict=True))
    }
    if signature.var_positional is not None:
        result[signature.var_positional] = extra
    if signature.var_keyword is not None:
        result[signature.var_keyword] = extra_keywords
    return result


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(FUNCTIONS),
    st.lists(st.integers(), max_size=5).map(tuple),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d", "x", "y", "zz"]), st.integers()),
)
def test_binding_agrees_with_python(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    signature = signature_of(fn)
    try:
        expected = fn(*args, **kwargs)
    except TypeError:
        assert not signature.fits(args, kwargs)
        return
    assert signature.fits(args, kwargs)
    assert bound_like_python(fn, args, kwargs) == expected


def test_display_names() -> None:
    signature = signature_of(mixed)
    assert [signature.argument_name(i) for i in range(4)] == ["a", "b", "rest[0]", "rest[1]"]
    assert signature.keyword_name("c") == "c"
    assert signature.keyword_name("zz") == "zz"
    assert signature.keyword_name("a") == "options['a']"  # not the positional-only a
    assert signature_of(plain).keyword_name("a") == "a"
    assert signature_of(plain).argument_name(2) == "args[0]"  # a call that does not fit


# --- read once, shared by a stack ----------------------------------------------------------


def test_a_stack_of_decorators_reads_the_signature_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    original = inspect.signature

    def counting(target: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        reads.append(target)
        return original(target, *args, **kwargs)

    def predict(x: int, *, scale: float = 1.0) -> float:
        return x * scale

    monkeypatch.setattr(inspect, "signature", counting)
    stacked = monitor(
        validate_input(cache_result(retry(max_retries=1)(circuit_breaker()(predict))))
    )
    assert stacked("2") == 2.0
    monkeypatch.undo()
    assert [target for target in reads if inspect.unwrap(target) is predict] == [predict]
    assert signature_of(stacked) is signature_of(predict)


def test_what_was_read_goes_with_the_function() -> None:
    def make() -> Callable[[int], int]:
        def short_lived(x: int) -> int:
            return x

        return short_lived

    fn = make()
    signature_of(fn)
    key = id(fn)
    assert key in _read
    del fn
    gc.collect()
    assert key not in _read or _read[key][0]() is not None  # dropped (or the id reused)


def test_callables_that_cannot_be_weakly_referenced_are_read_anyway() -> None:
    calls: list[int] = []

    class Slotted:
        __slots__ = ()

        def __call__(self, x: int) -> int:
            calls.append(x)
            return x

    target = Slotted()
    with pytest.raises(TypeError):
        __import__("weakref").ref(target)
    assert signature_of(target).names == ("x",)
    f = cache_result(target)
    assert f(1) == f(x=1) == 1
    assert calls == [1]


# --- a call that does not fit: the function's own TypeError, and nothing else ------------


MISFITS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),  # a required argument missing
    (("x", 2, 3), {}),  # one too many
    (("x",), {"c": 3}),  # an unknown keyword
    (("x",), {"a": 1}),  # one argument given twice
    ((), {"b": "y"}),  # missing, with a bad value passed
]


def own_error(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    with pytest.raises(TypeError) as caught:
        fn(*args, **kwargs)
    assert type(caught.value) is TypeError
    return str(caught.value)


@pytest.mark.parametrize(("args", "kwargs"), MISFITS)
def test_a_call_that_does_not_fit_raises_the_functions_own_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], records: Records
) -> None:
    def f(a: int, b: int = 2) -> int:
        return a + b

    expected = own_error(f, args, kwargs)
    cached = cache_result(f)
    validated_one = validate_input(a=int)(f)  # the walk unrolled for one argument
    validated = validate_input(f)  # the walk over several
    monitored = monitor(f)
    stacked = monitor(validate_input(cache_result(f)))
    failures: list[ValidationFailed] = []
    with events.subscribe(failures.append, ValidationFailed):
        for decorated in (cached, validated_one, validated, monitored, stacked):
            assert own_error(decorated, args, kwargs) == expected
    assert failures == []  # validation saw nothing to report
    stats = cached.cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (0, 0, 0)  # not read, stored, counted
    assert flush_monitoring()
    assert [(r.outcome, r.error_type) for r in records] == [  # type: ignore[attr-defined]
        ("error", "TypeError"),
        ("error", "TypeError"),
    ]


def test_misfits_with_star_arguments_are_the_functions_too() -> None:
    @validate_input
    def f(a: int, /, *rest: int, c: int) -> int:
        return a + sum(rest) + c

    with pytest.raises(TypeError, match="keyword-only argument: 'c'"):
        f("x", "y")  # type: ignore[arg-type, call-arg]
    with pytest.raises(InputValidationError) as caught:
        f("x", "y", c=1)  # type: ignore[arg-type]
    assert [(p.argument, p.path) for p in caught.value.errors] == [("a", ()), ("rest", (0,))]


@pytest.mark.anyio
async def test_async_calls_that_do_not_fit_raise_their_own_error() -> None:
    async def f(a: int) -> int:
        return a

    for decorated in (cache_result(f), validate_input(f), monitor(f)):
        with pytest.raises(TypeError, match="positional argument"):
            await decorated("x", 2)


def test_the_cache_handle_has_no_function_to_ask_and_raises_itself() -> None:
    @cache_result
    def f(a: int, b: int = 2) -> int:
        return a + b

    with pytest.raises(TypeError, match="do not fit the signature"):
        f.cache.invalidate(1, 2, 3)  # type: ignore[call-arg]


# --- defaults: filled by the cache, not validated, left out of the record ----------------


def test_defaults_fill_the_cache_key() -> None:
    f, calls = counted(lambda a, b=2: a + b)
    assert [f(1, b=2), f(1, 2), f(b=2, a=1), f(1), f(a=1)] == [3] * 5
    assert len(calls) == 1
    assert f(1, 3) == 4
    assert len(calls) == 2


def test_keyword_only_defaults_and_var_arguments_in_the_key() -> None:
    def g(a: int, *rest: int, scale: int = 1, **options: int) -> int:
        return (a + sum(rest) + sum(options.values())) * scale

    f, calls = counted(g)
    assert f(1) == f(1, scale=1) == 1
    assert len(calls) == 1
    assert f(1, 2) == 3  # *rest differs
    assert f(1, x=2) == 3  # **options differ
    assert f(1, x=2) == f(1, **dict(x=2))  # noqa: C408 - the mapping form on purpose
    assert len(calls) == 3
    assert f(1, y=2) == 3  # another name in **options is another key
    assert len(calls) == 4


def test_keyword_only_defaults_on_the_fast_path() -> None:
    def g(a: int, *, scale: int = 2) -> int:
        return a * scale

    f, calls = counted(g)
    assert f(3) == f(3, scale=2) == f(a=3) == 6
    assert len(calls) == 1
    assert f(3, scale=3) == 9
    assert len(calls) == 2


def test_defaults_are_not_validated_and_binding_errors_stay_the_functions() -> None:
    @validate_input
    def call(x: int, y: int = "not an int") -> Any:  # type: ignore[assignment]
        return x, y

    assert call(1) == (1, "not an int")
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        call()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        call(1, z=2)  # type: ignore[call-arg]


def test_defaults_are_left_out_of_the_record(records: Records) -> None:
    @monitor
    def f(a: int, b: int = 2, *, c: str = "") -> int:
        return a + b

    f(1)
    f(1, b=2)
    f(1, 2, c="x")
    assert inputs(records) == [
        {"a": {"type": "int"}},
        {"a": {"type": "int"}, "b": {"type": "int"}},
        {"a": {"type": "int"}, "b": {"type": "int"}, "c": {"type": "str", "length": 1}},
    ]


# --- positional-only, keyword-only, *args and **kwargs -----------------------------------


def test_positional_only_parameters_in_the_key() -> None:
    def g(a: int, /, b: int = 0) -> int:
        return a + b

    f, calls = counted(g)
    assert f(1) == f(1, 0) == f(1, b=0) == 1
    assert len(calls) == 1


def test_every_parameter_kind_is_validated() -> None:
    @validate_input
    def call(a: int, /, b: int, *args: int, c: int, d: int = 0, **kwargs: int) -> Any:
        return a, b, args, c, d, kwargs

    assert call("1", "2", "3", "4", c="5", e="6") == (1, 2, (3, 4), 5, 0, {"e": 6})
    assert call(1, b=2, c=3, d="4") == (1, 2, (), 3, 4, {})
    # A positional-only name given as a keyword goes to **kwargs.
    assert call(1, 2, c=3, a="9") == (1, 2, (), 3, 0, {"a": 9})
    with pytest.raises(InputValidationError) as caught:
        call("x", "y", 3, "z", c="w", d=4, e="v")
    assert [(p.argument, p.path) for p in caught.value.errors] == [
        ("a", ()),
        ("b", ()),
        ("c", ()),
        ("args", (1,)),
        ("e", ()),
    ]


def test_star_arguments_are_named_after_their_parameter(records: Records) -> None:
    @monitor
    def total(first: int, *rest: float, scale: float = 1.0) -> float:
        return (first + sum(rest)) * scale

    total(1, 2.0, 3.5, scale=2.0)
    assert inputs(records) == [
        {
            "first": {"type": "int"},
            "rest[0]": {"type": "float", "finite": True},
            "rest[1]": {"type": "float", "finite": True},
            "scale": {"type": "float", "finite": True},
        }
    ]

    @validate_input(rest=float)
    def checked(first: int, *rest: float) -> float:
        return first + sum(rest)

    with pytest.raises(InputValidationError) as caught:
        checked(1, 2.0, "many")
    assert [(p.argument, p.path) for p in caught.value.errors] == [("rest", (1,))]

    @cache_result
    def keyed(first: int, *rest: Any) -> int:
        return first

    with pytest.raises(UnkeyableArgumentError) as unkeyable:
        keyed(1, 2, [Opaque()])
    assert unkeyable.value.argument == "rest[1]"


def test_a_positional_only_name_in_kwargs_is_shown_apart(records: Records) -> None:
    @monitor
    def f(a: int, /, **options: Any) -> int:
        return a

    f(1, a="x")
    assert inputs(records) == [{"a": {"type": "int"}, "options['a']": {"type": "str", "length": 1}}]

    @validate_input(options=int)
    def g(a: int, /, **options: Any) -> int:
        return a

    assert g(1, a="2") == 1
    with pytest.raises(InputValidationError) as caught:
        g(1, a="x")
    assert [p.argument for p in caught.value.errors] == ["options['a']"]

    keys, calls = counted(g)
    keys(1)
    keys(1, a=1)
    assert len(calls) == 2  # a keyword in **options is no positional argument


# --- receivers: self and cls --------------------------------------------------------------


class Opaque:
    __hash__ = None  # type: ignore[assignment]


class Model:
    def __init__(self, version: str) -> None:
        self.version = version
        self.calls = 0

    @cache_result(ttl=None)
    def predict(self, x: int) -> str:
        self.calls += 1
        return f"{self.version}:{x}"


def test_the_receiver_is_found_by_name_or_by_classmethod() -> None:
    def method(self, x):  # type: ignore[no-untyped-def]
        pass

    def klass_method(klass, x):  # type: ignore[no-untyped-def]
        pass

    def static(self, x):  # type: ignore[no-untyped-def]
        pass

    assert signature_of(method).receiver == "self"
    assert signature_of(klass_method).receiver is None  # nothing says so yet
    assert signature_of(classmethod(klass_method)).receiver == "klass"
    assert signature_of(klass_method).receiver == "klass"  # remembered for every layer
    assert signature_of(staticmethod(static)).receiver is None
    assert signature_of(Model("v").predict).receiver is None  # bound: no receiver left
    assert signature_of(functools.partial(method, object())).receiver is None
    assert signature_of(mixed).receiver is None

    class Shape:  # "cls" here is an ordinary parameter: the receiver is bound already
        def __init__(self, cls: str) -> None:
            self.cls = cls

        def __call__(self, cls: str) -> str:
            return cls

    assert signature_of(Shape).names == ("cls",)
    assert signature_of(Shape).receiver is None
    assert signature_of(Shape("a")).receiver is None


def test_the_cache_keys_on_the_receiver_by_identity() -> None:
    a, b = Model("v1"), Model("v1")
    assert a.predict(1) == a.predict(1) == "v1:1"
    assert a.calls == 1
    assert b.predict(1) == "v1:1"
    assert b.calls == 1  # same content, another instance: another entry
    assert Model.predict.cache.invalidate(a, 1) is True
    assert a.predict.cache.invalidate(a, 1) is False


def test_the_cache_on_classmethods_and_staticmethods_in_both_orders() -> None:
    class Tools:
        calls = 0

        @classmethod
        @cache_result
        def make(cls, x: int) -> int:
            cls.calls += 1
            return x * 2

        @cache_result
        @classmethod
        def made(cls, x: int) -> int:
            cls.calls += 1
            return x * 4

        @staticmethod
        @cache_result
        def pure(x: int) -> int:
            Tools.calls += 1
            return x * 3

        @cache_result
        @staticmethod
        def purer(x: int) -> int:
            Tools.calls += 1
            return x * 5

    assert Tools.make(2) == Tools.make(2) == 4
    assert Tools.made(2) == Tools().made(2) == 8
    assert Tools.pure(2) == Tools().pure(2) == 6
    assert Tools.purer(2) == Tools().purer(2) == 10
    assert Tools.calls == 4


def test_the_record_leaves_the_receiver_out_in_both_orders(records: Records) -> None:
    class Service:
        @monitor
        def predict(self, x: int) -> int:
            return x + 1

        @monitor
        @classmethod
        def load(cls, path: str) -> str:
            return path

        @classmethod
        @monitor
        def reload(cls, path: str) -> str:
            return path

        @monitor
        @classmethod
        def build(klass, size: int) -> int:
            return size

        @monitor
        @staticmethod
        def version(major: int) -> str:
            return f"v{major}"

        @staticmethod
        @monitor
        def revision(minor: int) -> str:
            return f"r{minor}"

    def scale(factor: int, x: int) -> int:
        return factor * x

    double = monitor(functools.partial(scale, 2))
    assert Service().predict(1) == 2
    assert Service.load("weights.bin") == "weights.bin"
    assert Service.reload("w") == "w"
    assert Service.build(3) == 3
    assert Service.version(3) == "v3"
    assert Service.revision(4) == "r4"
    assert double(x=4) == 8
    assert inputs(records) == [
        {"x": {"type": "int"}},
        {"path": {"type": "str", "length": 11}},
        {"path": {"type": "str", "length": 1}},
        {"size": {"type": "int"}},
        {"major": {"type": "int"}},
        {"minor": {"type": "int"}},
        {"x": {"type": "int"}},
    ]
    names = [r.function for r in records]  # type: ignore[attr-defined]
    assert names[0].endswith("Service.predict")
    assert names[1].endswith("Service.load")
    assert names[6].endswith("<locals>.scale")
    assert records[6].pathname == __file__
    assert records[6].funcName == "scale"


def test_validation_does_not_read_the_receivers_annotation() -> None:
    class Ranker:
        # Under `from __future__ import annotations` "Ranker" cannot be resolved while the
        # class is being defined, and pydantic cannot check Self: neither is read.
        @validate_input
        def rank(self: Ranker, k: int) -> int:
            return k

        @validate_input
        def again(self: Self, k: int) -> int:
            return k

        @validate_input
        @classmethod
        def build(klass: type[Ranker], k: int) -> int:
            return k

    # validate_output too: a missing return annotation shows at decoration, not at the
    # first call (as it would if the unresolvable "Scorer" had to wait for the class)
    with pytest.raises(ConfigurationError, match="no return annotation"):

        class Scorer:
            @validate_output
            def score(self: Scorer):  # type: ignore[no-untyped-def]
                return 1

    assert Ranker().rank("3") == 3  # type: ignore[arg-type]
    assert Ranker().again("4") == 4  # type: ignore[arg-type]
    assert Ranker.build("5") == 5  # type: ignore[arg-type]
    with pytest.raises(InputValidationError) as caught:
        Ranker().rank("x")  # type: ignore[arg-type]
    assert [p.argument for p in caught.value.errors] == ["k"]


def test_validation_of_methods_classmethods_staticmethods_partials_and_callables() -> None:
    class Ranker:
        def __init__(self, size: int) -> None:
            self.size = size

        @validate_input
        def rank(self, x: Annotated[np.ndarray, ArraySpec((None,))], k: int) -> Any:
            return self, x, k

        @validate_input(k=int)
        @classmethod
        def build(cls, k: Any) -> Any:
            return cls, k

        @classmethod
        @validate_input(k=int)
        def rebuild(cls, k: Any) -> Any:
            return cls, k

        @validate_input
        @staticmethod
        def score(k: int) -> int:
            return k

        @staticmethod
        @validate_input
        def rescore(k: int) -> int:
            return k

        @validate_input
        def __call__(self, k: int) -> int:
            return k * self.size

    ranker = Ranker(2)
    assert ranker.rank(np.zeros(3), "4")[2] == 4
    assert Ranker.build("5") == (Ranker, 5)
    assert Ranker.rebuild("5") == (Ranker, 5)
    assert Ranker.score("6") == 6
    assert ranker.score("6") == 6
    assert ranker.rescore("6") == 6
    assert ranker("7") == 14
    with pytest.raises(InputValidationError) as caught:
        ranker.rank(np.zeros((3, 3)), "x")
    assert [p.argument for p in caught.value.errors] == ["x", "k"]
    assert str(caught.value).startswith("test_validation_of_")  # the qualified name
    assert "Ranker.rank(): argument 'x'" in str(caught.value)

    def scale(factor: float, x: int) -> float:
        return factor * x

    halve = validate_input(functools.partial(scale, 0.5))
    assert halve("4") == 2.0
    with pytest.raises(InputValidationError, match="argument 'x'"):
        halve("four")

    class Doubler:
        def __call__(self, x: int) -> int:
            return 2 * x

    doubled = validate_input(Doubler())
    assert doubled("21") == 42

    class Point:
        def __init__(self, x: int, y: int) -> None:
            self.x, self.y = x, y

    point = validate_input(Point)("1", "2")
    assert (point.x, point.y) == (1, 2)


# --- partials and callable objects ---------------------------------------------------------


def test_partials_and_callable_objects_bind_what_is_left(records: Records) -> None:
    calls: list[int] = []

    def scale(factor: int, x: int) -> int:
        calls.append(x)
        return factor * x

    assert signature_of(functools.partial(scale, 2)).names == ("x",)
    double = cache_result(functools.partial(scale, 2))
    assert double(3) == double(x=3) == 6
    assert calls == [3]

    class Scorer:
        def __call__(self, text: str) -> int:
            calls.append(len(text))
            return len(text)

    assert signature_of(Scorer()).names == ("text",)
    score = cache_result(Scorer())
    assert score("abc") == score(text="abc") == 3
    assert calls == [3, 3]

    monitored = monitor(Scorer())
    monitored("ab")
    assert inputs(records) == [{"text": {"type": "str", "length": 2}}]


# --- no readable signature -------------------------------------------------------------------


def test_a_builtin_without_a_signature(records: Records) -> None:
    signature = signature_of(max)
    assert not signature.readable
    assert signature.problem
    assert signature.fits((), {})
    assert signature.fits((1, 2), {"key": None})
    assert signature.bind((1, 2), {"key": None}) == ([], (1, 2), {"key": None})

    cached = cache_result(max)
    assert cached(1, 3) == cached(1, 3) == 3
    assert cached(3, 1) == 3  # keyed on the raw call: another entry
    assert cached([1, 5], default=0) == 5
    assert cached.cache.stats().misses == 3
    assert cached.cache.stats().hits == 1
    with pytest.raises(UnkeyableArgumentError) as caught:
        cached(1, Opaque())
    assert caught.value.argument == "args[1]"

    with pytest.raises(TypeError, match="cannot read the signature"):
        validate_input(max)

    monitored = monitor(max)
    assert monitored(1, 2.5, key=abs) == 2.5
    assert inputs(records)[0].keys() == {"args[0]", "args[1]", "key"}


def test_the_raw_key_of_an_unreadable_callable_is_stable() -> None:
    builder = KeyBuilder(max, "max")
    assert builder.build((1, 2), {}) == builder.build((1.0, 2), {})
    assert builder.build((1, 2), {}) != builder.build((2, 1), {})
    assert builder.names == ()

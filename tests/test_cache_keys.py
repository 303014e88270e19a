"""@cache_result keys: canonical forms, non-collisions, stable bytes (binding: test_signature)."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from typing import Any

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _cache_support import calls_of as counted
from buttress import CacheKey, CacheScope, UnkeyableArgumentError, cache_result
from buttress._caching._keys import KeyBuilder, canonical, stable_bytes

# --- structure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ([1, 2], (1, 2)),
        (("1a",), (1, "a")),
        (["a", ["b"]], ["a", "b"]),
        ({"a": 1}, [("a", 1)]),
        ({"a": 1}, {"a": "1"}),
        ({1, 2}, [1, 2]),
        (b"ab", "ab"),
        ((), []),
        ([], {}),
        ({}, set()),
        ([[1], 2], [1, [2]]),
        (None, "None"),
        ("", b""),
    ],
)
def test_distinct_structures_never_share_an_entry(first: Any, second: Any) -> None:
    f, calls = counted(lambda x: repr(x))
    assert f(first) == repr(first)
    assert f(second) == repr(second)
    assert len(calls) == 2
    assert canonical(first) != canonical(second)
    assert stable_bytes(canonical(first)) != stable_bytes(canonical(second))


def test_equal_structures_share_an_entry() -> None:
    f, calls = counted(lambda x: len(x))
    f({"a": 1, "b": [1, 2]})
    f({"b": [1, 2], "a": 1})  # dict order does not matter
    f(OrderedDict([("b", [1, 2]), ("a", 1)]))
    assert len(calls) == 1
    f({1, 2})
    f(frozenset({2, 1}))  # set == frozenset
    assert len(calls) == 2


def test_numbers_follow_python_equality() -> None:
    f, calls = counted(lambda x: x)
    f(1)
    f(1.0)
    f(True)
    assert len(calls) == 1
    assert stable_bytes((1,)) == stable_bytes((1.0,)) == stable_bytes((True,))
    assert stable_bytes((1.5,)) != stable_bytes((1,))


# --- hypothesis: canonical forms agree with a reference notion of equality -------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.binary(max_size=5),
)
hashables = st.recursive(
    scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.sets(hashables, max_size=3),
    ),
    max_leaves=12,
)


def family(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, tuple):
        return "tuple"
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, (set, frozenset)):
        return "set"
    return "scalar"


def same(a: Any, b: Any) -> bool:
    """The documented equality: Python ==, but lists and tuples never equal."""
    if family(a) != family(b):
        return False
    if family(a) in ("list", "tuple"):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if family(a) == "dict":
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if family(a) == "set":
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return bool(a == b)


def swap_sequences(value: Any) -> Any:
    """The same data with every list turned into a tuple and back."""
    if isinstance(value, list):
        return tuple(swap_sequences(v) for v in value)
    if isinstance(value, tuple):
        return [swap_sequences(v) for v in value]
    if isinstance(value, dict):
        return {k: swap_sequences(v) for k, v in value.items()}
    return value


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_canonical_forms_are_equal_exactly_when_values_are(a: Any, b: Any) -> None:
    expected = same(a, b)
    assert (canonical(a) == canonical(b)) is expected
    assert (stable_bytes(canonical(a)) == stable_bytes(canonical(b))) is expected


@settings(max_examples=200, deadline=None)
@given(values)
def test_a_copy_has_the_same_key_and_a_reshaped_value_does_not(value: Any) -> None:
    duplicate = copy.deepcopy(value)
    assert canonical(value) == canonical(duplicate)
    assert hash(canonical(value)) == hash(canonical(duplicate))
    assert stable_bytes(canonical(value)) == stable_bytes(canonical(duplicate))
    swapped = swap_sequences(value)
    if not same(value, swapped):
        assert canonical(value) != canonical(swapped)
        assert stable_bytes(canonical(value)) != stable_bytes(canonical(swapped))


@settings(max_examples=100, deadline=None)
@given(values, values)
def test_the_decorator_computes_once_per_distinct_argument(a: Any, b: Any) -> None:
    f, calls = counted(lambda x: 0)
    f(a)
    f(b)
    f(copy.deepcopy(a))
    assert len(calls) == (1 if same(a, b) else 2)


# --- numpy, pydantic, dataclasses ------------------------------------------------------


def test_numpy_arrays_are_keyed_by_content_dtype_and_shape() -> None:
    f, calls = counted(lambda array: float(array.sum()))
    a = np.arange(6, dtype=np.float32)
    f(a)
    f(a.copy())  # another object, same content: same key (never by id)
    assert len(calls) == 1
    f(a.astype(np.float64))  # another dtype
    f(a.reshape(2, 3))  # another shape
    b = a.copy()
    b[0] = 100
    f(b)  # other bytes
    assert len(calls) == 4
    f(np.arange(12, dtype=np.float32)[::2])  # a strided view: made contiguous first
    f(np.array([0, 2, 4, 6, 8, 10], dtype=np.float32))
    assert len(calls) == 5


def test_array_mutated_after_a_call_is_another_key() -> None:
    f, calls = counted(lambda array: float(array.sum()))
    a = np.zeros(3)
    assert f(a) == 0.0
    a[0] = 5
    assert f(a) == 5.0
    assert len(calls) == 2


def test_object_arrays_cannot_be_keyed() -> None:
    f, _ = counted(lambda array: 0)
    with pytest.raises(UnkeyableArgumentError, match="array"):
        f(np.array([object()], dtype=object))


class Query(pydantic.BaseModel):
    text: str
    top_k: int = 10
    filters: list[str] = []


class OtherQuery(pydantic.BaseModel):
    text: str
    top_k: int = 10
    filters: list[str] = []


def test_pydantic_models_are_keyed_by_class_and_content() -> None:
    f, calls = counted(lambda q: q.text)
    f(Query(text="a", filters=["x"]))
    f(Query(text="a", filters=["x"]))
    f(Query(text="a", top_k=10, filters=["x"]))
    assert len(calls) == 1
    f(Query(text="a", filters=["y"]))
    f(OtherQuery(text="a", filters=["x"]))
    assert len(calls) == 3
    assert stable_bytes(canonical(Query(text="a"))) == stable_bytes(canonical(Query(text="a")))
    assert stable_bytes(canonical(Query(text="a"))) != stable_bytes(canonical(OtherQuery(text="a")))


@dataclasses.dataclass
class Config:
    layers: list[int]
    name: str = "m"


def test_unhashable_dataclasses_are_keyed_by_fields() -> None:
    f, calls = counted(lambda c: len(c.layers))
    f(Config([1, 2]))
    f(Config([1, 2]))
    assert len(calls) == 1
    f(Config([1, 2], name="n"))
    assert len(calls) == 2


class Opaque:
    __hash__ = None  # type: ignore[assignment]


def test_an_unkeyable_argument_names_itself_and_points_at_key() -> None:
    @cache_result
    def f(model: str, payload: Any) -> int:
        return 0

    with pytest.raises(UnkeyableArgumentError) as caught:
        f("m", {"a": [Opaque()]})
    error = caught.value
    assert isinstance(error, TypeError)
    assert error.argument == "payload"
    assert error.type_name == "Opaque"
    assert "'payload'" in str(error)
    assert "key=" in str(error)
    assert f.cache.stats().misses == 0


def test_custom_key_replaces_the_builder() -> None:
    calls: list[Any] = []

    @cache_result(key=lambda user, request: user)
    def f(user: str, request: Any) -> str:
        calls.append(user)
        return user.upper()

    assert f("ann", Opaque()) == "ANN"  # request is unkeyable but not in the key
    assert f("ann", Opaque()) == "ANN"
    assert len(calls) == 1
    assert f.cache.invalidate("ann", None) is True
    assert f("ann", Opaque()) == "ANN"
    assert len(calls) == 2


def test_custom_key_results_are_made_canonical_too() -> None:
    @cache_result(key=lambda x: {"v": [x]})
    def f(x: int) -> int:
        return x

    assert f(1) == 1
    assert f.cache.stats().misses == 1
    with pytest.raises(UnkeyableArgumentError, match="key="):
        cache_result(key=lambda x: Opaque())(lambda x: x)(1)


# --- methods --------------------------------------------------------------------------


class Model:
    def __init__(self, version: str) -> None:
        self.version = version
        self.calls = 0

    @cache_result(ttl=None, key=lambda self, x: (self.version, x))
    def by_version(self, x: int) -> str:
        self.calls += 1
        return f"{self.version}:{x}"


def test_key_can_replace_identity_with_what_matters() -> None:
    a, b = Model("v2"), Model("v2")
    a.by_version(1)
    b.by_version(1)
    assert a.calls + b.calls == 1


# --- the stable encoding -----------------------------------------------------------------


def test_cache_key_digest_is_stable_and_separates_arguments() -> None:
    scope = CacheScope("f", ("x",))
    key = CacheKey(scope, (frozenset({"alpha", "beta", "gamma"}),))
    assert key.digest() == CacheKey(scope, (frozenset({"gamma", "beta", "alpha"}),)).digest()
    assert key.digest() != CacheKey(scope, (("alpha", "beta", "gamma"),)).digest()
    assert len(key.digest()) == 64


def test_objects_keyed_by_identity_have_no_stable_encoding() -> None:
    builder = KeyBuilder(lambda model, x: None, "f")
    parts = builder.build((object(), 1), {})
    key = CacheKey(CacheScope("f", builder.names), parts)
    with pytest.raises(UnkeyableArgumentError) as caught:
        key.stable_bytes()
    assert caught.value.argument == "model"
    assert "key=" in str(caught.value)


def test_the_stable_encoding_is_the_same_in_another_process() -> None:
    program = textwrap.dedent(
        """
        import datetime, enum, uuid, decimal, sys
        import numpy as np
        from buttress import CacheKey, CacheScope
        from buttress._caching._keys import KeyBuilder

        class Color(enum.Enum):
            RED = 1

        def f(a, b, *rest, **options):
            pass

        parts = KeyBuilder(f, "f").build(
            (
                {"x": {1, 2, 3}, "y": [1.5, None, b"z"]},
                frozenset({"alpha", "beta", "gamma", "delta"}),
                np.arange(4, dtype=np.int16),
                Color.RED,
                datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                uuid.UUID(int=7),
                decimal.Decimal("1.25"),
            ),
            {"k": (1, "a"), "j": {"n": [True]}},
        )
        print(CacheKey(CacheScope("f"), parts).digest())
        """
    )
    digests = set()
    for seed in ("1", "2", "3"):
        environment = {**os.environ, "PYTHONHASHSEED": seed}
        source = os.path.join(os.path.dirname(__file__), "..", "src")
        environment["PYTHONPATH"] = os.pathsep.join([source, environment.get("PYTHONPATH", "")])
        result = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
            timeout=60,
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1
    (digest,) = digests
    assert len(digest) == 64

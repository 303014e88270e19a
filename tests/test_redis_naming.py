"""A store shared between processes never serves one function's value to another: closures
of one factory, partials, bound methods and callable objects are keyed apart by what they
captured, or refused at decoration unless given ``name=``."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from _redis_support import no_stray_threads, raw_client  # noqa: F401  (a fixture)
from buttress import ConfigurationError, LocalStore, RedisStore, cache_result

pytestmark = [pytest.mark.redis, pytest.mark.usefixtures("no_stray_threads")]


def make(model: str, store: Any) -> Callable[[str], str]:
    """A factory: one closure per model, all named ``make.<locals>.embed``."""

    @cache_result(ttl=60, store=store)
    def embed(text: str) -> str:
        return f"{model}:{text}"

    return embed


def amake(model: str, store: Any) -> Any:
    @cache_result(ttl=60, store=store)
    async def embed(text: str) -> str:
        return f"{model}:{text}"

    return embed


class Client:
    """Something a closure may capture that no other process can compare."""

    def __init__(self, model: str) -> None:
        self.model = model

    def embed(self, text: str) -> str:
        return f"{self.model}:{text}"


def embed_with(model: str, text: str) -> str:
    return f"{model}:{text}"


@pytest.fixture
def store(redis_url: str) -> Any:
    with RedisStore(redis_url, timeout=5) as store:
        yield store


def test_closures_of_one_factory_never_share_values(redis_url: str, store: RedisStore) -> None:
    a, b = make("model-A", store), make("model-B", store)
    assert a("x") == "model-A:x"
    assert b("x") == "model-B:x"  # not model-A's cached value
    assert a("x") == "model-A:x"
    assert (a.cache.stats().hits, b.cache.stats().misses) == (1, 1)
    # another replica making the same closure reads the same entries
    with RedisStore(redis_url, timeout=5) as replica:
        again = make("model-A", replica)
        assert again("x") == "model-A:x"
        assert again.cache.stats().hits == 1


@pytest.mark.anyio
async def test_async_closures_of_one_factory_never_share_values(store: RedisStore) -> None:
    a, b = amake("model-A", store), amake("model-B", store)
    assert await a("x") == "model-A:x"
    assert await b("x") == "model-B:x"
    assert await b("x") == "model-B:x"
    assert b.cache.stats().hits == 1
    await store.aclose()


def test_a_closure_over_what_no_process_can_compare_is_refused(store: RedisStore) -> None:
    client = Client("model-A")

    def embed(text: str) -> str:
        return client.embed(text)

    with pytest.raises(ConfigurationError, match=r"captured the variable 'client' \(a Client\)"):
        cache_result(store=store)(embed)
    with pytest.raises(ConfigurationError, match=r"name="):
        cache_result(store=store)(embed)


def test_name_keys_such_a_closure_and_keeps_two_apart(redis_url: str, store: RedisStore) -> None:
    def factory(model: str) -> Callable[[str], str]:
        client = Client(model)

        @cache_result(ttl=60, store=store, name=f"embed:{model}")
        def embed(text: str) -> str:
            return client.embed(text)

        return embed

    a, b = factory("model-A"), factory("model-B")
    assert (a("x"), b("x"), a("x"), b("x")) == ("model-A:x", "model-B:x", "model-A:x", "model-B:x")
    client = raw_client(redis_url)
    try:  # the name stands where module.qualname would: nothing else is added
        assert len(list(client.scan_iter(match="buttress:1:embed:model-A:{*}"))) == 1
    finally:
        client.close()


def test_partials_and_bound_methods_are_keyed_by_what_they_bind(store: RedisStore) -> None:
    a = cache_result(store=store)(functools.partial(embed_with, "model-A"))
    b = cache_result(store=store)(functools.partial(embed_with, "model-B"))
    assert (a("x"), b("x")) == ("model-A:x", "model-B:x")
    with pytest.raises(ConfigurationError, match=r"captured self \(a Client\)"):
        cache_result(store=store)(Client("model-A").embed)
    with pytest.raises(ConfigurationError, match="captured the callable object"):
        cache_result(store=store)(_CallableModel())


class _CallableModel:
    def __call__(self, text: str) -> str:
        return text


def test_a_closure_over_a_nested_helper_is_keyed_by_what_the_helper_captured(
    store: RedisStore,
) -> None:
    def factory(model: str) -> Callable[[str], str]:
        def prefix(text: str) -> str:
            return f"{model}:{text}"

        @cache_result(store=store)
        def embed(text: str) -> str:
            return prefix(text)

        return embed

    a, b = factory("model-A"), factory("model-B")
    assert (a("x"), b("x")) == ("model-A:x", "model-B:x")


def test_a_closure_over_module_level_things_is_named_as_it_is(store: RedisStore) -> None:
    # Functions, classes and modules defined at module level are the same in every
    # process: named by their import path, they key nothing apart and refuse nothing.
    def factory() -> Callable[[str], str]:
        helper, kind = embed_with, Client

        @cache_result(store=store)
        def embed(text: str) -> str:
            return helper(kind.__name__, text)

        return embed

    a, b = factory(), factory()
    assert a("x") == "Client:x"
    assert b("x") == "Client:x"
    assert b.cache.stats().hits == 1  # the same function: it shares a's entry


def test_a_recursive_closure_is_not_refused_for_capturing_itself(store: RedisStore) -> None:
    def factory(depth: int) -> Callable[[int], int]:
        @cache_result(store=store)
        def count(n: int) -> int:
            return 0 if n == 0 else 1 + count(n - 1)

        return count

    assert factory(0)(3) == 3


def test_the_in_process_store_keeps_closures_apart_without_names() -> None:
    shared = LocalStore()
    lock = threading.Lock()

    def factory(model: str) -> Callable[[str], str]:
        @cache_result(store=shared)
        def embed(text: str) -> str:
            with lock:  # something no other process could compare: fine in-process
                return f"{model}:{text}"

        return embed

    assert (factory("A")("x"), factory("B")("x")) == ("A:x", "B:x")


def test_one_name_names_one_function(store: RedisStore) -> None:
    named = cache_result(store=store, name="embed")
    named(embed_with)
    named(embed_with)  # the same function again: fine
    with pytest.raises(ConfigurationError, match="names one function"):
        named(make)
    with pytest.raises(ConfigurationError, match="name must be a non-empty str"):
        cache_result(name="  ")


@pytest.mark.anyio
async def test_names_apply_to_coroutines_on_both_backends(store: RedisStore) -> None:
    event = anyio.Event()

    async def embed(text: str) -> str:
        event.set()
        return text

    with pytest.raises(ConfigurationError, match="'event'"):
        cache_result(store=store)(embed)
    fn = cache_result(store=store, name="naming.embed")(embed)
    assert await fn("x") == await fn("x") == "x"
    assert fn.cache.stats().hits == 1
    await store.aclose()

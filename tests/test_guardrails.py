"""Guardrails: integration mistakes that used to go by silently now warn or say what is wrong.

- a plain (``def``) decorated function waiting on the thread that runs an event loop;
- ``@cache_result`` over a function that is cached already;
- typos in settings (``policy()``, its dicts, every decorator);
- two circuit breakers of one name with different settings.

``@monitor`` above a route decorator is tested with the real frameworks, in
``tests/test_integrations_fastapi.py`` and ``tests/test_integrations_aiohttp.py``.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest

from _cgroup_trees import GiB, MiB, limited_v2
from _servers import UvicornThread, aiohttp_serving
from buttress import (
    BlockingCallWarning,
    BulkheadFullError,
    ButtressWarning,
    ConfigurationError,
    StackingWarning,
    _clock,
    batch,
    bulkhead,
    cache_result,
    circuit_breaker,
    fallback,
    hedge,
    memory_guard,
    policy,
    rate_limit,
    retry,
    retrying,
    timeout,
    validate_input,
)
from buttress._settings import ABSENT, Difference, differences, name_conflict
from buttress.testing import FakeClock, testing_mode


@pytest.fixture(autouse=True)
def _forget_warned() -> Iterator[None]:
    """Each test starts with no function warned about (the record is once per process)."""
    _clock._warned.clear()
    yield
    _clock._warned.clear()


# --- a plain function waiting on an event loop's thread -------------------------------


@pytest.mark.anyio
async def test_a_retry_backoff_on_the_loop_thread_warns_once_naming_the_coroutine_form(
    buttress_clock: FakeClock,
) -> None:
    failures = [ConnectionError("down"), ConnectionError("down")]

    @retry(max_retries=3, base_delay=0.5)
    def fetch_features() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    with pytest.warns(BlockingCallWarning) as caught:
        assert fetch_features() == "ok"
    assert len(caught) == 1  # once per function, not once per wait
    message = str(caught[0].message)
    assert "fetch_features() is a plain function" in message
    assert "@retry" in message
    assert "async def fetch_features(...)" in message
    assert "event loop" in message
    assert caught[0].filename == __file__  # shown at the caller's line, not buttress'
    assert isinstance(caught[0].message, ButtressWarning)
    assert isinstance(caught[0].message, RuntimeWarning)

    failures.append(ConnectionError("down"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fetch_features() == "ok"  # warned once already: silent


def test_the_real_loop_is_blocked_as_long_as_the_warning_says() -> None:
    """With real time on asyncio: the warning comes before the wait, which the loop feels."""
    failures = [ConnectionError("down")]

    @retry(max_retries=1, base_delay=0.2, jitter=None)
    def fetch_features() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    async def main() -> float:
        ticks: list[float] = []

        async def ticker() -> None:
            for _ in range(3):
                ticks.append(_clock.monotonic())
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            with pytest.warns(BlockingCallWarning, match=r"up to 0\.2s"):
                fetch_features()
        return max(later - earlier for earlier, later in itertools.pairwise(ticks))

    assert anyio.run(main) >= 0.15  # the ticker stood still while the plain function slept


@pytest.mark.anyio
async def test_no_warning_off_the_loop_thread_or_without_a_wait(buttress_clock: FakeClock) -> None:
    failures = [ConnectionError("down")]

    @retry(max_retries=2, base_delay=0.5, jitter=None)
    def fetch_features() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # In a worker thread the loop keeps running: no warning.
        assert await anyio.to_thread.run_sync(fetch_features) == "ok"
        # Outside any event loop: no warning.
        failures.append(ConnectionError("down"))
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(fetch_features()))
        thread.start()
        thread.join(30)
        assert result == ["ok"]
    assert buttress_clock.sleeps == [0.5, 0.5]


def test_no_warning_when_a_call_does_not_wait() -> None:
    @retry(max_retries=2, base_delay=0.5)
    def fetch_features() -> str:
        return "ok"

    async def main() -> str:
        return fetch_features()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert anyio.run(main) == "ok"


@pytest.mark.anyio
async def test_the_coroutine_form_never_warns(buttress_clock: FakeClock) -> None:
    failures = [ConnectionError("down"), ConnectionError("down")]

    @retry(max_retries=3, base_delay=0.5, jitter=None)
    async def fetch_features() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await fetch_features() == "ok"
    assert buttress_clock.sleeps == [0.5, 1.0]


@pytest.mark.anyio
async def test_a_retrying_block_on_the_loop_thread_warns(buttress_clock: FakeClock) -> None:
    failures = [ConnectionError("down")]

    def fetch_features() -> None:
        for attempt in retrying(max_retries=2, base_delay=0.5):
            with attempt:
                if failures:
                    raise failures.pop()

    with pytest.warns(BlockingCallWarning, match=r"fetch_features\(\) .* @retry"):
        fetch_features()


@pytest.mark.anyio
async def test_a_rate_limit_wait_on_the_loop_thread_warns(buttress_clock: FakeClock) -> None:
    @rate_limit(1, per=10)
    def call_provider() -> str:
        return "ok"

    call_provider()  # the first start is free
    with pytest.warns(BlockingCallWarning, match=r"@rate_limit is about to wait \(up to 10s\)"):
        call_provider()
    assert buttress_clock.sleeps == [10.0]


@pytest.mark.anyio
async def test_a_bulkhead_wait_on_the_loop_thread_warns() -> None:
    inside, release = threading.Event(), threading.Event()

    @bulkhead(1, max_waiting=1, wait_timeout=0.05)
    def infer() -> None:
        inside.set()
        release.wait(30)

    holder = threading.Thread(target=infer)
    holder.start()
    inside.wait(30)
    try:
        waits = r"@bulkhead is about to wait \(up to 0\.05s\)"
        with pytest.warns(BlockingCallWarning, match=waits), pytest.raises(BulkheadFullError):
            infer()
    finally:
        release.set()
        holder.join(30)


@pytest.mark.anyio
async def test_a_memory_guard_wait_on_the_loop_thread_warns(tmp_path: Path) -> None:
    tree = limited_v2(tmp_path, limit=GiB, usage=950 * MiB)

    class MemoryFreedWhileAsleep(FakeClock):
        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            tree.set(usage=100 * MiB)  # the next poll finds the memory given back

    @memory_guard(probe=tree.probe(), action="wait", poll_interval=0.05, wait_timeout=60)
    def predict() -> str:
        return "ok"

    waits = r"predict\(\) is a plain function, and @memory_guard"
    with (
        testing_mode(MemoryFreedWhileAsleep()) as clock,
        pytest.warns(BlockingCallWarning, match=waits),
    ):
        assert predict() == "ok"
    assert clock.sleeps == [0.05]



@pytest.mark.anyio
async def test_a_batch_item_waiting_on_the_loop_thread_warns(buttress_clock: FakeClock) -> None:
    @batch(max_size=10, max_wait=0.25)
    def embed_many(texts: list[str]) -> list[int]:
        return [len(text) for text in texts]

    with pytest.warns(BlockingCallWarning, match=r"embed_many\(\) .* @batch"):
        assert embed_many.one("four") == 4


def test_a_cache_follower_waiting_on_the_loop_thread_warns() -> None:
    started, release = threading.Event(), threading.Event()

    @cache_result(ttl=60)
    def load_features(key: str) -> str:
        started.set()
        release.wait(30)
        return key.upper()

    leader = threading.Thread(target=load_features, args=("user-7",))
    leader.start()
    started.wait(30)

    async def follow() -> str:
        threading.Timer(0.1, release.set).start()  # the leader finishes while we wait
        with pytest.warns(BlockingCallWarning, match=r"load_features\(\) .* @cache_result"):
            return load_features("user-7")

    try:
        assert anyio.run(follow) == "USER-7"
    finally:
        release.set()
        leader.join(30)
    assert load_features.cache.stats().joins == 1


# --- two circuit breakers of one name ---------------------------------------------------


def test_two_breakers_of_one_name_name_the_setting_that_differs_with_both_values() -> None:
    first = circuit_breaker(name="guardrails-db", failure_ratio=0.5)
    with pytest.raises(ConfigurationError) as caught:
        circuit_breaker(name="guardrails-db", failure_ratio=0.9, open_for=30)
    message = str(caught.value)
    assert "name='guardrails-db'" in message
    assert "failure_ratio=0.5" in message
    assert "failure_ratio=0.9" in message
    assert "also different: open_for" in message
    assert "_Settings(" not in message  # no internal object
    assert "object at" not in message
    assert circuit_breaker(name="guardrails-db", failure_ratio=0.5) is first


def test_breaker_exception_settings_are_shown_by_class_name() -> None:
    first = circuit_breaker(name="guardrails-api", exceptions=ConnectionError)
    with pytest.raises(ConfigurationError, match=r"exceptions=\(ConnectionError,\).*"
                       r"exceptions=\(ConnectionError, TimeoutError\)"):
        circuit_breaker(name="guardrails-api", exceptions=(ConnectionError, TimeoutError))
    del first


def test_the_settings_difference_helper() -> None:
    found = differences({"rate": 10, "per": 1.0}, {"rate": 20, "per": 1, "burst": 5})
    assert found == [Difference("rate", 10, 20), Difference("burst", ABSENT, 5)]
    message = name_conflict("rate limiter", "openai", found, where="in Redis")
    assert message.startswith(
        "name='openai': a rate limiter of this name exists in Redis with rate=10, and this "
        "one has rate=20 (also different: burst)."
    )
    assert differences({"a": 1.0}, {"a": 1}) == []


# --- typos in settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: policy(retyr=3), "policy(): got an unexpected keyword argument 'retyr'; "
         "did you mean 'retry'?"),
        (lambda: policy(retry={"max_retry": 3}), "policy(retry={...}): got an unexpected "
         "keyword argument 'max_retry'; did you mean 'max_retries'?"),
        (lambda: policy(cache={"ttl": 5, "max_size": 10}), "policy(cache={...}): got an "
         "unexpected keyword argument 'max_size'; did you mean 'maxsize'?"),
        (lambda: policy(fallback={"value": 0, "exception": KeyError}), "policy(fallback={...}):"
         " got an unexpected keyword argument 'exception'; did you mean 'exceptions'?"),
        (lambda: policy(validate_output={"on_eror": None}), "did you mean 'on_error'?"),
        (lambda: policy(bulkhead={"queue": 3}), "policy(bulkhead={...}): got an unexpected "
         "keyword argument 'queue'; it takes max_concurrent, max_waiting, wait_timeout"),
        (lambda: retry(max_retry=3), "retry(): got an unexpected keyword argument "
         "'max_retry'; did you mean 'max_retries'?"),
        (lambda: circuit_breaker(failure_rate=0.5), "did you mean 'failure_ratio'?"),
        (lambda: memory_guard(max_procent=80), "did you mean 'max_percent'?"),
        (lambda: bulkhead(4, max_wating=2), "bulkhead(): got an unexpected keyword argument "
         "'max_wating'; did you mean 'max_waiting'?"),
        (lambda: rate_limit(5, brust=10), "did you mean 'burst'?"),
        (lambda: timeout(5, frist_item=1), "did you mean 'first_item'?"),
        (lambda: hedge(0.1, max_hedge=2), "did you mean 'max_hedges'?"),
        (lambda: batch(max_szie=8), "did you mean 'max_size'?"),
        (lambda: fallback(0, exception=KeyError), "did you mean 'exceptions'?"),
    ],
)
def test_a_typo_in_a_setting_suggests_the_near_name(make: Any, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        make()
    assert message in str(caught.value)


def test_a_typo_in_an_argument_spec_suggests_the_parameter() -> None:
    with pytest.raises(ConfigurationError, match=r"has no parameter 'texts' .*did you mean 'text'"):

        @validate_input(texts=str)
        def embed(text: str) -> str:
            return text


def test_right_settings_still_pass_and_other_type_errors_are_untouched() -> None:
    assert policy(retry={"max_retries": 3}, fallback={"value": 0, "exceptions": KeyError})
    assert bulkhead(4, max_waiting=2).max_waiting == 2
    with pytest.raises(TypeError, match="positional"):
        bulkhead(4, 2)  # type: ignore[misc]


# --- a cache over a cache ------------------------------------------------------------------


def test_cache_result_over_a_policy_with_a_cache_warns_at_the_decoration() -> None:
    with pytest.warns(StackingWarning) as caught:

        @cache_result(ttl=60)
        @policy(cache=300, retry=3)
        def embed(text: str) -> str:
            return text

    message = str(caught[0].message)
    assert "@cache_result over " in message
    assert "embed(), which is cached already" in message
    assert "kept twice" in message
    assert caught[0].filename == __file__
    assert embed("a") == "a"  # it still works, caching twice


def test_a_policy_with_a_cache_over_cache_result_warns_too() -> None:
    with pytest.warns(StackingWarning, match="cached already"):

        @policy(cache=300)
        @cache_result(ttl=60)
        async def embed(text: str) -> str:
            return text


def test_one_cache_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @policy(cache=300, retry=3, monitor=True)
        def embed(text: str) -> str:
            return text

        @cache_result(ttl=60)
        @retry(max_retries=2)
        def rank(text: str) -> str:
            return text

    assert embed.cache is not None
    assert rank.cache is not None


# --- @monitor above the route decorator ---------------------------------------------------


def test_monitor_above_a_fastapi_route_warns_as_the_app_starts() -> None:
    import _misplaced_routes as routes

    def serve_two_requests() -> list[object]:
        with UvicornThread(routes.app) as url, httpx.Client(base_url=url, timeout=30) as client:
            return [client.get("/hello").json(), client.get("/fine").json()]

    with pytest.warns(StackingWarning) as caught:  # the server warns as it starts
        answers = serve_two_requests()
    assert answers == [{"hello": "world"}, {"fine": "yes"}]
    assert len(caught) == 1  # /fine is decorated the right way round
    message = str(caught[0].message)
    assert message.startswith("@monitor, @retry above the route decorator of GET /hello:")
    assert "FastAPI registered hello() as it was below @monitor, @retry" in message
    assert "never runs for a request to GET /hello" in message
    assert "(@app.get(...))" in message
    assert caught[0].filename == routes.__file__  # at the function's definition
    # What the warning is about: the monitor above the route saw nothing.
    assert routes.hello.monitor.stats().calls == 0
    assert routes.fine.monitor.stats().calls == 1


def test_check_routes_on_demand_and_only_once_per_middleware() -> None:
    import _misplaced_routes as routes
    from buttress.integrations.fastapi import check_routes

    with pytest.warns(StackingWarning, match="GET /hello"):
        assert check_routes(routes.app) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_routes(routes.app.router.routes[:0]) == 0  # nothing to look at


@pytest.mark.asyncio  # aiohttp runs on asyncio only
async def test_monitor_above_an_aiohttp_route_table_decorator_warns_at_the_first_request() -> None:
    import _misplaced_routes as routes

    async with aiohttp_serving(routes.aiohttp_app()) as url, aiohttp.ClientSession(url) as http:
        with pytest.warns(StackingWarning) as caught:
            async with http.get("/hello") as response:
                assert (await response.json()) == {"hello": "world"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # checked once: the next request is quiet
            async with http.get("/fine") as response:
                assert response.status == 200
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("@monitor above the route decorator of GET,HEAD /hello:")
    assert "aiohttp registered aiohttp_hello()" in message
    assert caught[0].filename == routes.__file__
    assert routes.aiohttp_hello.monitor.stats().calls == 0
    assert routes.aiohttp_fine.monitor.stats().calls == 1

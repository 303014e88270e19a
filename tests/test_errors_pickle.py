"""Every public error survives a pickle round trip: errors cross process pools and queues.

The test lists an instance of every exception class ``buttress`` exports and fails when a
new one has none, so a new error cannot forget to be picklable.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import pickle
from typing import Any

import pytest

import buttress
from buttress import (
    AttemptTimeoutError,
    BatchQueueFullError,
    BatchResultError,
    BlockingCallWarning,
    BulkheadFullError,
    ButtressError,
    ButtressWarning,
    CacheStoreError,
    CallTimeoutError,
    CircuitOpenError,
    ConfigurationError,
    DataValidationError,
    InputValidationError,
    MemoryPressureError,
    OutputValidationError,
    RateLimitCostError,
    RateLimitExceeded,
    RedisStoreError,
    RefusedValueError,
    RejectedError,
    RetryError,
    SharedSettingsError,
    SharedStateError,
    StackingWarning,
    StreamTimeoutError,
    UnencodableResultError,
    UnkeyableArgumentError,
    ValidationProblem,
)

PROBLEM = ValidationProblem("x", ("user", 0), "int", "str", "expected an int")

#: One instance of every public error, with its facts.
INSTANCES: dict[type[BaseException], BaseException] = {
    ButtressError: ButtressError("base"),
    RejectedError: RejectedError("refused"),
    ConfigurationError: ConfigurationError("max_retries must be >= 0"),
    RetryError: RetryError("ran out", last_result={"status": "pending"}, attempts=4),
    AttemptTimeoutError: AttemptTimeoutError("attempt 2 took too long"),
    UnkeyableArgumentError: UnkeyableArgumentError(
        "cannot key", function="f", argument="lock", type_name="_thread.lock"
    ),
    CacheStoreError: CacheStoreError("store down"),
    RedisStoreError: RedisStoreError("down", operation="get", address="127.0.0.1:6379/0"),
    RateLimitCostError: RateLimitCostError("too big", cost=5000, burst=1000, function="f"),
    SharedStateError: SharedStateError("down", operation="admit", address="127.0.0.1:6379/0"),
    SharedSettingsError: SharedSettingsError(
        "differs", kind="rate_limit", name="embed", setting="rate", recorded="200", given="300"
    ),
    RefusedValueError: RefusedValueError("bad signature", key="k", reason="signature"),
    UnencodableResultError: UnencodableResultError(
        "cannot encode", function="f", type_name="Lock", path="result[0]"
    ),
    DataValidationError: DataValidationError("f", [PROBLEM]),
    InputValidationError: InputValidationError("f", [PROBLEM]),
    OutputValidationError: OutputValidationError("f", [PROBLEM]),
    MemoryPressureError: MemoryPressureError(
        "over",
        used=9,
        limit=10,
        available=1,
        percent=90.0,
        source="host",
        reason="max_percent",
        requested=2,
        reserved=3,
        waited=0.5,
        function="f",
    ),
    CircuitOpenError: CircuitOpenError(
        "open", breaker="db", state="open", retry_after=1.5, retry_at=10.0, function="f"
    ),
    CallTimeoutError: CallTimeoutError("late", seconds=2.0, function="f"),
    StreamTimeoutError: StreamTimeoutError(
        "stalled", seconds=5.0, function="f", limit="idle", items=7
    ),
    BulkheadFullError: BulkheadFullError(
        "full", max_concurrent=2, max_waiting=0, reason="full", waited=0.0, function="f"
    ),
    RateLimitExceeded: RateLimitExceeded(
        "slow down", rate=10, per=1.0, retry_after=0.1, retry_at=5.0, function="f"
    ),
    BatchQueueFullError: BatchQueueFullError(
        "queue full", max_queue=128, max_concurrency=4, in_flight=4, function="embed_many"
    ),
    BatchResultError: BatchResultError(
        "3 results for 4 items", reason="length", expected=4, returned=3, function="embed_many"
    ),
    ButtressWarning: ButtressWarning("a guardrail"),
    BlockingCallWarning: BlockingCallWarning("f() is about to block the event loop"),
    StackingWarning: StackingWarning("@monitor above @app.get() never sees a request"),
}


def public_errors() -> set[type[BaseException]]:
    return {
        value
        for name in buttress.__all__
        if inspect.isclass(value := getattr(buttress, name))
        and issubclass(value, BaseException)
    }


def test_every_public_error_has_an_instance_here() -> None:
    assert public_errors() == set(INSTANCES)


def facts(error: BaseException) -> dict[str, Any]:
    return {key: value for key, value in vars(error).items() if not key.startswith("__")}


@pytest.mark.parametrize("kind", list(INSTANCES), ids=lambda kind: kind.__name__)
def test_a_round_trip_keeps_the_type_message_facts_and_notes(kind: type[BaseException]) -> None:
    error = INSTANCES[kind]
    error.__notes__ = ["buttress.retry: f() failed 3 time(s)"]  # as add_note() does (3.11+)
    try:
        copy = pickle.loads(pickle.dumps(error))
    finally:
        del error.__notes__
    assert type(copy) is kind
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert facts(copy) == facts(error)
    assert copy.__notes__ == ["buttress.retry: f() failed 3 time(s)"]


def _fail_with(kind_name: str) -> None:
    raise INSTANCES[getattr(buttress, kind_name)]


def test_errors_come_back_from_a_process_pool() -> None:
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        for kind in (RetryError, UnkeyableArgumentError, StreamTimeoutError):
            future = pool.submit(_fail_with, kind.__name__)
            with pytest.raises(kind) as caught:
                future.result(timeout=60)
            assert facts(caught.value) == facts(INSTANCES[kind])

"""examples/fastapi_gateway.py: its app served by uvicorn in the test, in front of the
demo's misbehaving embedding service; and the script itself, run once."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from types import ModuleType

import httpx
import numpy as np
import pytest

from _monitor_support import fresh_monitoring, parse, value
from _servers import Script, UvicornThread, example_module, upstream_in_a_thread
from buttress._demo.upstream import Faults, draw_call, vector_for

DIM = 384
FLAKY = Faults(
    dim=DIM,
    error_rate=0.15,
    retry_after=0.01,
    nan_rate=0.1,
    wrong_dim_rate=0.0,
    spike_rate=0.0,
    hang_rate=0.0,
    latency=(0.0, 0.003),
)
SEED = 5


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    """The app logs failed calls from monitor's exporter thread and enables metrics."""
    with fresh_monitoring():
        yield


@pytest.fixture
def example() -> Iterator[ModuleType]:
    """A fresh import of the example, so each test has its own breaker (a class-level
    decorator's state)."""
    with example_module("fastapi_gateway") as module:
        yield module


def served_ok(text: str, attempts: int = 4) -> bool:
    return any(draw_call(FLAKY, SEED, text, n).fault == "ok" for n in range(attempts))


def test_query_body_and_depends_through_uvicorn(example: ModuleType) -> None:
    texts = [f"passage {i}" for i in range(12)]
    assert all(served_ok(text) for text in texts)  # the seed's faults, checked up front
    with upstream_in_a_thread(FLAKY, seed=SEED) as upstream:
        with UvicornThread(example.create_app(upstream.url)) as url, httpx.Client(
            base_url=url, timeout=30
        ) as client:
            for text in texts[:4]:
                response = client.get("/embed", params={"text": text})
                assert response.status_code == 200, response.text
                assert response.json()["text"] == text
                np.testing.assert_allclose(
                    np.float32(response.json()["embedding"]), vector_for(text, DIM), rtol=1e-6
                )
            # A body model; repeated texts and texts seen before cost no upstream call.
            batch = [*texts, texts[0], texts[5]]
            response = client.post("/embed/batch", json={"texts": batch, "normalize": True})
            assert response.status_code == 200, response.text
            matrix = np.array(response.json()["embeddings"])
            assert matrix.shape == (len(batch), DIM)
            np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
            np.testing.assert_allclose(matrix[-2], matrix[0])

            # FastAPI validates the query and the body before the decorated function runs.
            assert client.get("/embed").status_code == 422
            assert client.get("/embed", params={"text": ""}).status_code == 422
            assert client.post("/embed/batch", json={"texts": []}).status_code == 422
            assert client.post("/embed/batch", json={"texts": ["x"] * 65}).status_code == 422

            schema = client.get("/openapi.json").json()
            echoed = client.get("/embed", params={"text": texts[0]}, headers={"X-Request-ID": "q"})

            samples = parse(client.get("/metrics").text)
        calls = Counter(call.text for call in upstream.calls if call.fault == "ok")
    assert calls == dict.fromkeys(texts, 1)  # each text fetched successfully exactly once
    assert echoed.headers["X-Request-ID"] == "q"

    embed = schema["paths"]["/embed"]["get"]
    assert [(p["name"], p["in"]) for p in embed["parameters"]] == [("text", "query")]
    batch_body = schema["paths"]["/embed/batch"]["post"]["requestBody"]
    assert batch_body["content"]["application/json"]["schema"]["$ref"].endswith("BatchRequest")

    client_fn = {"function": "EmbeddingClient.embed"}
    retries = value(samples, "buttress_retries_total", **client_fn)
    assert retries == upstream.total - len(texts) > 0
    invalid = value(samples, "buttress_validation_failures_total", direction="output", **client_fn)
    assert invalid == upstream.served["nan"]
    assert value(samples, "buttress_calls_total", function="http.embed", outcome="ok") == 5
    assert value(samples, "buttress_calls_total", function="http.embed_batch", outcome="ok") == 1


def test_an_outage_answers_503_with_retry_after_once_the_breaker_opens(
    example: ModuleType,
) -> None:
    down = Faults(dim=DIM, outage_start=0.0, outage_length=3600.0)
    with upstream_in_a_thread(down) as upstream:
        upstream.begin()
        with UvicornThread(example.create_app(upstream.url)) as url, httpx.Client(
            base_url=url, timeout=30
        ) as client:
            answers = [client.get("/embed", params={"text": f"t{i}"}) for i in range(15)]
            batch = client.post("/embed/batch", json={"texts": ["a", "b"]})
        calls = upstream.total
    assert answers[0].status_code == 502  # the upstream's 503s, retried, then reported
    assert answers[-1].status_code == 503
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert batch.status_code == 503  # the first error of the batch, as it is
    assert calls < 15 * 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_script_serves_with_uvicorn_and_a_toy_service() -> None:
    port = free_port()
    with (
        Script("fastapi_gateway.py", "--port", str(port)) as script,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        for _ in range(300):  # uvicorn says it is up on stderr; the port answering is enough
            try:
                response = client.get("/embed", params={"text": "hello"})
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"uvicorn did not start: {script.stderr}")
    assert response.status_code == 200
    assert len(response.json()["embedding"]) == DIM
    assert script.returncode == 0
    assert "Application shutdown complete" in script.stderr

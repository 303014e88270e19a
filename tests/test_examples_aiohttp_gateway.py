"""examples/aiohttp_gateway.py, run as a script in front of the demo's misbehaving
embedding service (and once in front of its own toy service), over real HTTP."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from _monitor_support import parse, value
from _servers import Script, upstream_in_a_thread
from buttress._demo.upstream import Faults, Upstream, draw_call, vector_for

DIM = 384  # the example's vectors
FLAKY = Faults(
    dim=DIM,
    # Failures stay well under the breaker's 50%: it is the outage test's business.
    error_rate=0.15,
    retry_after=0.01,
    nan_rate=0.1,
    wrong_dim_rate=0.0,
    spike_rate=0.0,
    hang_rate=0.0,
    latency=(0.0, 0.003),
)


def started(script: Script) -> str:
    line = script.wait_for("gateway on")
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match is not None, line
    return match.group(0)


SEED = 3


@pytest.fixture
def flaky() -> Iterator[Upstream]:
    with upstream_in_a_thread(FLAKY, seed=SEED) as upstream:
        yield upstream


def expected_status(text: str, seed: int, attempts: int = 4) -> int:
    """What the gateway answers for a text asked once: 200 if one of its attempts meets
    a good answer, else 502 (the upstream failed: a 503, or a NaN vector)."""
    good = any(draw_call(FLAKY, seed, text, n).fault == "ok" for n in range(attempts))
    return 200 if good else 502


def test_the_gateway_retries_validates_caches_and_exposes_metrics(flaky: Upstream) -> None:
    texts = [f"document {i}" for i in range(20)]
    expected = [expected_status(text, SEED) for text in texts]
    good = [text for text, status in zip(texts, expected, strict=True) if status == 200]
    with Script("aiohttp_gateway.py", "--port", "0", "--upstream", flaky.url) as script:
        url = started(script)
        with httpx.Client(base_url=url, timeout=30) as client:
            statuses = []
            for text in texts:
                response = client.get("/embed", params={"text": text})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    vector = np.array(response.json()["embedding"], dtype=np.float32)
                    np.testing.assert_allclose(vector, vector_for(text, DIM), rtol=1e-6)
            assert statuses == expected
            first_round = flaky.total
            for text in good:  # from the gateway's cache now
                assert client.get("/embed", params={"text": text}).status_code == 200
            assert flaky.total == first_round

            a, b = good[:2]
            similarity = client.post("/similarity", json={"a": a, "b": b})
            assert similarity.status_code == 200
            cosine = float(vector_for(a, DIM) @ vector_for(b, DIM))
            assert math.isclose(similarity.json()["cosine"], cosine, abs_tol=1e-5)

            assert client.get("/embed", params={"text": ""}).status_code == 422
            assert client.post("/similarity", json={"a": "", "b": "x"}).status_code == 422
            echoed = client.get("/embed", params={"text": a}, headers={"X-Request-ID": "r7"})
            assert echoed.headers["X-Request-ID"] == "r7"
            samples = parse(client.get("/metrics").text)
        assert script.stop() == 0
    assert "stopped" in script.seen

    # Every 503 and NaN vector of the first round was retried (up to 3 times), and only
    # valid vectors were kept.
    served = flaky.served
    assert served["ok"] == len(good)
    assert served["nan"] > 0
    assert served["unavailable"] > 0
    client_fn = {"function": "EmbeddingClient.embed"}
    assert value(samples, "buttress_retries_total", **client_fn) == first_round - len(texts)
    invalid = value(samples, "buttress_validation_failures_total", direction="output", **client_fn)
    assert invalid == served["nan"]
    embed_fn = {"function": "http.embed"}
    assert value(samples, "buttress_calls_total", outcome="ok", **embed_fn) == 2 * len(good) + 1
    assert value(samples, "buttress_calls_total", outcome="error", **embed_fn) == (
        len(texts) - len(good) + 1
    )
    assert value(samples, "buttress_calls_total", function="http.similarity", outcome="ok") == 1


def test_an_outage_opens_the_breaker_and_clients_get_503_with_retry_after() -> None:
    down = Faults(dim=DIM, outage_start=0.0, outage_length=3600.0)
    with upstream_in_a_thread(down) as upstream:
        upstream.begin()
        with Script("aiohttp_gateway.py", "--port", "0", "--upstream", upstream.url) as script:
            url = started(script)
            statuses = []
            with httpx.Client(base_url=url, timeout=30) as client:
                for i in range(15):
                    response = client.get("/embed", params={"text": f"t{i}"})
                    statuses.append((response.status_code, response.headers.get("Retry-After")))
            calls = upstream.total
    assert statuses[0] == (502, None)  # the upstream's 503s, retried, then reported
    # The breaker opened after 20 failed attempts: the rest fail at once, without a call,
    # and tell the client when to come back.
    assert statuses[-1][0] == 503
    assert statuses[-1][1] is not None
    assert int(statuses[-1][1]) >= 1
    assert calls < 15 * 4


def test_with_no_upstream_it_starts_a_toy_service() -> None:
    with Script("aiohttp_gateway.py", "--port", "0") as script:
        url = started(script)
        response = httpx.get(f"{url}/embed", params={"text": "hello"}, timeout=30)
        assert response.status_code == 200
        assert len(response.json()["embedding"]) == DIM
    assert script.returncode == 0


def test_the_toy_service_runs_on_its_own() -> None:
    with Script("toy_embedding_service.py", "--port", "0", "--error-rate", "0") as script:
        line = script.wait_for("toy embedding service on")
        url = line.split(" on ")[1]
        response = httpx.get(url, params={"text": "hello"}, timeout=30)
        stats = httpx.get(url.replace("/embeddings", "/stats"), timeout=30).json()
    assert response.status_code == 200
    assert len(response.json()["embedding"]) == DIM
    assert sum(stats.values()) == 1
    assert script.returncode == 0

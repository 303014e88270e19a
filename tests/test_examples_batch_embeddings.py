"""examples/batch_embeddings.py, run as a script against the demo's misbehaving embedding
service: every text embedded in order, and an interrupted run resumed without fetching
the finished batches again."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _servers import Script, run_example, upstream_in_a_thread
from buttress._demo.upstream import Faults, vector_for

DIM = 384
FLAKY = Faults(
    dim=DIM,
    error_rate=0.15,
    retry_after=0.01,
    nan_rate=0.05,
    wrong_dim_rate=0.02,
    spike_rate=0.0,
    hang_rate=0.0,
    latency=(0.0, 0.003),
)


def number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return int(match.group(1).replace(",", ""))


def write_texts(path: Path, count: int, repeats: int = 0) -> list[str]:
    texts = [f"text number {i}" for i in range(count - repeats)]
    texts += texts[:repeats]  # the same texts again, at the end (another batch)
    path.write_text("\n".join(texts) + "\n")
    return texts


def check_embeddings(out: Path, texts: list[str]) -> None:
    matrix = np.load(out / "embeddings.npy")
    assert matrix.shape == (len(texts), DIM)
    assert matrix.dtype == np.float32
    expected = np.stack([vector_for(text, DIM) for text in texts])
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)


def test_a_run_embeds_every_text_in_order(tmp_path: Path) -> None:
    texts = write_texts(tmp_path / "texts.txt", 300, repeats=50)
    out = tmp_path / "out"
    with upstream_in_a_thread(FLAKY, seed=1) as upstream:
        result = run_example(
            "batch_embeddings.py",
            "--input", str(tmp_path / "texts.txt"), "--out", str(out), "--batch-size", "25",
            "--concurrency", "3", "--max-in-flight", "8", "--upstream", upstream.url,
        )  # fmt: skip
        served = upstream.served.copy()
        fetched = Counter(call.text for call in upstream.calls if call.fault == "ok")
    assert result.returncode == 0, result.stderr
    check_embeddings(out, texts)
    assert "0 already done" in result.stdout
    assert "100.0% 300/300 texts" in result.stderr  # the progress bar's last line
    # Each distinct text was fetched successfully once; repeats came from the cache, and
    # every 503, NaN and short vector was retried.
    assert fetched == dict.fromkeys(texts, 1)
    assert number(r"([\d,]+) repeats from the cache", result.stdout) == 50
    retries = number(r"([\d,]+) retries", result.stdout)
    assert retries == served["unavailable"] + served["nan"] + served["wrong_dim"] > 0


def test_an_interrupted_run_resumes_without_fetching_finished_batches(tmp_path: Path) -> None:
    texts = write_texts(tmp_path / "texts.txt", 400)  # all distinct: calls tell batches apart
    out = tmp_path / "out"
    arguments = [
        "--input", str(tmp_path / "texts.txt"), "--out", str(out), "--batch-size", "20",
        "--concurrency", "2", "--max-in-flight", "4", "--no-progress",
    ]  # fmt: skip
    slow = Faults(dim=DIM, error_rate=0.1, retry_after=0.01, nan_rate=0.0, wrong_dim_rate=0.0,
                  spike_rate=0.0, hang_rate=0.0, latency=(0.02, 0.04))  # fmt: skip
    with upstream_in_a_thread(slow, seed=2) as upstream:
        with Script("batch_embeddings.py", *arguments, "--upstream", upstream.url) as script:
            script.wait_for("to fetch")
            log = out / "checkpoint.txt"
            deadline = time.monotonic() + 60
            while not (log.exists() and len(log.read_text().split()) >= 3):
                assert time.monotonic() < deadline, script.seen
                time.sleep(0.02)
            script.interrupt()
            assert script.stop() == 130
        assert "interrupted" in script.stderr
        finished = {int(line) for line in log.read_text().split()}
        assert 3 <= len(finished) < 20  # interrupted well before the end
        first_calls = len(upstream.calls)

        result = run_example("batch_embeddings.py", *arguments, "--upstream", upstream.url)
        second = [call.text for call in upstream.calls[first_calls:]]

    assert result.returncode == 0, result.stderr
    assert f"{len(finished)} already done" in result.stdout
    check_embeddings(out, texts)
    batches = [texts[i : i + 20] for i in range(0, 400, 20)]
    done_texts = {text for index in finished for text in batches[index]}
    todo_texts = {text for index in range(20) if index not in finished for text in batches[index]}
    assert not done_texts & set(second)  # nothing of a finished batch was fetched again
    assert todo_texts <= set(second)


def test_a_checkpoint_of_other_texts_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_texts(tmp_path / "a.txt", 30)
    write_texts(tmp_path / "b.txt", 31)
    with upstream_in_a_thread(FLAKY, seed=3) as upstream:
        first = run_example(
            "batch_embeddings.py", "--input", str(tmp_path / "a.txt"), "--out", str(out),
            "--batch-size", "10", "--upstream", upstream.url,
        )  # fmt: skip
        second = run_example(
            "batch_embeddings.py", "--input", str(tmp_path / "b.txt"), "--out", str(out),
            "--batch-size", "10", "--upstream", upstream.url,
        )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert second.returncode == 1
    assert "holds a checkpoint of other texts" in second.stderr


def test_with_no_upstream_it_uses_a_toy_service(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_example("batch_embeddings.py", "--count", "200", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out / "embeddings.npy").shape == (200, DIM)
    assert "40 repeats from the cache" in result.stdout  # one in five

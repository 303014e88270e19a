"""Run by tests/test_metrics_multiprocess.py as its own process: a parent that enabled
multiprocess mode and made calls, then forks workers, as ``gunicorn --preload`` does.

Each worker makes ``WORKER_CALLS`` metrics-only calls (nothing queued for the exporter
thread) and leaves with ``os._exit`` (no atexit, no flush): its totals reach its files only
if its exporter thread started again after the fork. It waits until its own counter file
holds its calls, and exits 0, or 3 after 30 s (the file never showed them). The parent
then prints the exposition of every process's files.
"""

from __future__ import annotations

import json
import os
import sys
import time

from prometheus_client.mmap_dict import MmapedDict

from buttress import configure_monitoring, metrics, monitor

PARENT_CALLS = 5
WORKERS = 3
WORKER_CALLS = 4

configure_monitoring(interval=0.05)


@monitor("fork.work")  # logging is not configured: INFO records are off
def work() -> None:
    """A call counted in metrics only: nothing is queued for the exporter thread."""


def written_calls(directory: str) -> float:
    """This process's ``buttress_calls_total`` for ``fork.work``, as its file holds it."""
    path = os.path.join(directory, f"counter_{os.getpid()}.db")
    if not os.path.exists(path):
        return -1.0
    total = 0.0
    for key, value, *_ in MmapedDict.read_all_values_from_file(path):
        _, sample, labels, _ = json.loads(key)
        if sample == "buttress_calls_total" and labels.get("function") == "fork.work":
            total += value
    return total


def worker(directory: str) -> None:
    for _ in range(WORKER_CALLS):
        work()
    deadline = time.monotonic() + 30
    while written_calls(directory) != WORKER_CALLS:
        if time.monotonic() > deadline:
            print(f"worker wrote {written_calls(directory)} calls", file=sys.stderr)
            os._exit(3)
        time.sleep(0.02)
    os._exit(0)


def main() -> None:
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    metrics.enable()
    for _ in range(PARENT_CALLS):
        work()
    children = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            worker(directory)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    print(json.dumps(codes))
    print(metrics.generate_latest().decode())


if __name__ == "__main__":
    main()

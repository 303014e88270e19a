"""The benchmark tables say the right thing in every shape a comparison can take."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def harness() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _harness

        yield _harness
    finally:
        sys.path.remove(str(BENCHMARKS))


def rows_of(markdown: str) -> dict[str, list[str]]:
    """Table cells by the row's first cell, header included (under "implementation")."""
    found = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            found[cells[0]] = cells[1:]
    return found


def test_overhead_columns_against_bare_floor_and_best_peer(harness: ModuleType) -> None:
    table = harness.Comparison("retry")
    table.add("bare", 100, "bare")
    table.add("floor", 150, "floor")
    table.add("ours", 200, "ours")
    table.add("slow peer", 1100, "peer")
    table.add("fast peer", 600, "peer")
    rows = rows_of(table.markdown())
    assert rows["implementation"] == [
        "ns/call", "overhead", "x bare", "overhead x floor", "overhead x best peer",
    ]
    assert rows["**ours**"] == ["200", "100", "2.00", "2.00", "0.20"]
    assert rows["fast peer"] == ["600", "500", "6.00", "10.00", "1.00"]
    assert rows["slow peer"] == ["1,100", "1,000", "11.00", "20.00", "2.00"]
    assert rows["bare"] == ["100", "0", "", "", ""]
    assert rows["floor"][-2:] == ["", "0.10"]
    assert table.best_peer.name == "fast peer"  # the floor is never the best peer
    assert "Best peer: fast peer (overhead 500 ns/call)." in table.markdown()


def test_a_peer_within_noise_of_bare_gives_no_ratio(harness: ModuleType) -> None:
    table = harness.Comparison("hit")
    table.add("bare", harness.median_of([100, 101, 99, 100, 100]), "bare")
    table.add("lru_cache", harness.median_of([99, 100, 98, 99, 99]), "peer")
    table.add("ours", harness.median_of([300, 301, 299, 300, 300]), "ours")
    markdown = table.markdown()
    rows = rows_of(markdown)
    assert rows["**ours**"][-1] == "—"
    assert rows["lru_cache"][-1] == "—"
    assert "within the noise of the bare call" in markdown
    figures = table.figures(table.rows[2])
    assert figures["x_best_peer"] is None
    assert figures["overhead"] == 200


def test_a_row_without_overhead_is_about_zero_times_the_peer(harness: ModuleType) -> None:
    table = harness.Comparison("hit")
    table.add("bare", 100, "bare")
    table.add("ours", 98, "ours")
    table.add("peer", 300, "peer")
    assert rows_of(table.markdown())["**ours**"][-1] == "≈0"


def test_no_bare_row_compares_whole_figures_with_the_best_peer(harness: ModuleType) -> None:
    table = harness.Comparison("lag", unit="ms max lag")
    table.add("no logging", 0.1, "floor")
    table.add("ours", 0.2, "ours")
    table.add("peer", 100, "peer")
    rows = rows_of(table.markdown())
    assert rows["implementation"] == ["ms max lag", "x best peer"]
    assert rows["**ours**"] == ["0.20", "0.002"]
    assert rows["peer"] == ["100", "1.00"]


def test_no_peer_says_so(harness: ModuleType) -> None:
    table = harness.Comparison("guard")
    table.add("bare", 50, "bare")
    table.add("ours", 60, "ours")
    markdown = table.markdown()
    assert rows_of(markdown)["implementation"] == ["ns/call", "overhead", "x bare"]
    assert "No peer in this table" in markdown


def test_ratio_mode_with_extra_columns(harness: ModuleType) -> None:
    table = harness.Comparison(
        "stampede", unit="ms wall", mode="ratio", columns=["computations"]
    )
    table.add("gather", harness.median_of([200, 210, 190]), "bare", extra={"computations": 10_000})
    table.add("ours", harness.median_of([100, 100, 100]), "ours", extra={"computations": 1})
    table.add("peer", harness.median_of([400, 380, 420]), "peer", extra={"computations": 1})
    rows = rows_of(table.markdown())
    assert rows["implementation"] == ["ms wall", "±", "computations", "x bare", "x best peer"]
    assert rows["gather"] == ["200", "±5.0%", "10,000", "", "0.50"]
    assert rows["**ours**"] == ["100", "±0.0%", "1", "0.50", "0.25"]
    data = table.to_json()
    assert data["rows"][1]["extra"] == {"computations": 1}
    assert data["rows"][1]["rounds"] == [100, 100, 100]
    assert data["rows"][1]["overhead"] is None


def test_rows_are_checked(harness: ModuleType) -> None:
    table = harness.Comparison("t")
    table.add("bare", 1, "bare")
    with pytest.raises(ValueError, match="kind"):
        table.add("x", 1, "ourz")
    with pytest.raises(ValueError, match="bare row"):
        table.add("again", 1, "bare")
    with pytest.raises(ValueError, match="measured"):
        table.add("nan", float("nan"), "ours")
    with pytest.raises(ValueError, match="mode"):
        harness.Comparison("t", mode="fast")


def test_timings_keep_their_rounds(harness: ModuleType) -> None:
    timing = harness.median_of([3.0, 1.0, 2.0, 10.0])
    assert timing == 2.5
    assert timing.rounds == (3.0, 1.0, 2.0, 10.0)
    assert harness.spread([1.0, 1.0]) is None
    assert harness.spread([90.0, 100.0, 110.0]) == pytest.approx(0.1)
    counted = []
    measured = harness.time_sync(lambda: counted.append(1), quick=True)
    assert len(measured.rounds) == harness.QUICK[1]
    assert len(counted) >= harness.QUICK[0] * harness.QUICK[1]

    async def nothing() -> None:
        counted.append(2)

    measured = harness.time_async(nothing, quick=True, number=7)
    assert len(measured.rounds) == harness.QUICK[1]
    assert counted.count(2) >= 7 * harness.QUICK[1]


def test_numbers_keep_their_precision(harness: ModuleType) -> None:
    assert harness.number(12345.6) == "12,346"
    assert harness.number(3.14159) == "3.1"
    assert harness.number(0.0123) == "0.01"
    assert harness.ratio(0.0123) == "0.012"
    assert harness.ratio(1234.5) == "1,234"
    assert harness.ratio(None) == ""

"""The side-by-side report of a demo run, its latency picture and its Prometheus text.

matplotlib and prometheus-client are optional: without them the report says what is
missing and how to get it, and everything else still works.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .gateways import EventTally, FleetLimit
from .load import Outcome
from .upstream import Faults

__all__ = [
    "FleetFacts",
    "GatewayReport",
    "ReplicaStats",
    "RunInfo",
    "Summary",
    "prometheus_text",
    "render",
    "summarize",
    "write_histogram",
]

PLOT_HINT = "pip install 'buttress[plot]'"
PROMETHEUS_HINT = "pip install 'buttress[prometheus]'"


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts and latency percentiles (seconds) of one gateway's outcomes.

    Percentiles cover every request, failed ones included: it is how long clients waited.
    """

    requests: int
    ok: int
    invalid: int
    errors: int
    timeouts: int
    p50: float
    p95: float
    p99: float
    max: float

    @property
    def success_rate(self) -> float:
        """The share of requests answered with a usable vector."""
        return self.ok / self.requests if self.requests else 0.0


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    kinds = Counter(outcome.kind for outcome in outcomes)
    if outcomes:
        latencies = np.array([outcome.latency for outcome in outcomes])
        p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
        longest = float(latencies.max())
    else:
        p50 = p95 = p99 = longest = 0.0
    return Summary(
        requests=len(outcomes),
        ok=kinds["ok"],
        invalid=kinds["invalid"],
        errors=kinds["error"],
        timeouts=kinds["timeout"],
        p50=p50,
        p95=p95,
        p99=p99,
        max=longest,
    )


@dataclass
class ReplicaStats:
    """What a replica counted: requests received, upstream requests made, statuses, and
    what its decorators did (:class:`~.gateways.EventTally`'s counts)."""

    index: int
    requests: int = 0
    upstream_calls: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    tally: dict[str, int] = field(default_factory=dict)


@dataclass
class FleetFacts:
    """What the report says of a fleet besides the usual rows.

    Attributes:
        replicas: each replica's counts, by index.
        limit: the shared upstream rate limit.
        redis: where the shared state lived (``"a private redis-server"`` or the URL).
    """

    replicas: list[ReplicaStats]
    limit: FleetLimit
    redis: str

    @property
    def upstream_calls(self) -> list[int]:
        return [replica.upstream_calls for replica in self.replicas]

    @property
    def breaker_openings(self) -> list[int]:
        return [replica.tally.get("breaker_openings", 0) for replica in self.replicas]

    def tally(self, function: str) -> EventTally:
        """The replicas' decorator counts, added up."""
        total = EventTally(function)
        for replica in self.replicas:
            for name, count in replica.tally.items():
                setattr(total, name, getattr(total, name) + count)
        return total


@dataclass
class GatewayReport:
    """Everything measured about one gateway in a run.

    Attributes:
        name: ``"plain"``, ``"resilient"`` or ``"fleet"``.
        outcomes: what the load generator saw, one per request sent.
        received: requests the gateway itself counted.
        upstream_calls: requests its upstream stand-in counted (a batch is one).
        gateway_upstream_calls: requests the gateway counted making.
        faults: the upstream's calls by fault (``"ok"`` included), one per text asked
            for (a batch of ten texts is ten).
        layers: the buttress decorators around its upstream call, outermost first.
        tally: what those decorators reported through ``buttress.events`` (a fleet's:
            added up over its replicas).
        peak_requests: the most requests its upstream received within one second.
        fleet: for a fleet of replicas, what is said of each replica.
    """

    name: str
    outcomes: list[Outcome]
    received: int
    upstream_calls: int
    gateway_upstream_calls: int
    faults: Counter[str] = field(default_factory=Counter)
    layers: tuple[str, ...] = ()
    tally: EventTally | None = None
    peak_requests: int = 0
    fleet: FleetFacts | None = None

    @property
    def upstream_texts(self) -> int:
        """Texts the upstream was asked for, over all its requests."""
        return sum(self.faults.values())

    @property
    def summary(self) -> Summary:
        return summarize(self.outcomes)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The settings of a run, for the report's header."""

    requests: int
    duration: float
    concurrency: int
    timeout: float
    seed: int
    faults: Faults


def _duration(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 0.0095:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _decorated(
    report: GatewayReport, needs: Sequence[str], value: Callable[[EventTally], object]
) -> str:
    """A decorator's figure, ``-`` for an undecorated gateway, ``off`` if it lacks one."""
    if report.tally is None:
        return "-"
    if not any(name in report.layers for name in needs):
        return "off"
    return str(value(report.tally))


def _fault_line(faults: Faults) -> str:
    names = {
        "unavailable": "503+Retry-After",
        "hang": "hang",
        "nan": "NaN vector",
        "wrong_dim": "wrong dim",
        "spike": "latency spike",
    }
    parts = [f"{names[name]} {rate:.0%}" for name, rate in faults.rates().items() if rate]
    line = "upstream faults per call: " + (", ".join(parts) or "none")
    if faults.outage_start is not None and faults.outage_length > 0:
        end = faults.outage_start + faults.outage_length
        line += f"; outage from {faults.outage_start:g} s to {end:g} s"
    return line


def render(
    reports: Sequence[GatewayReport],
    info: RunInfo,
    notes: Sequence[str] = (),
) -> str:
    """The report as text: a header, one column per gateway, then ``notes``."""
    summaries = [report.summary for report in reports]
    rows: list[tuple[str, list[str]]] = [
        ("requests sent", [str(s.requests) for s in summaries]),
        ("requests received by the gateway", [str(r.received) for r in reports]),
        ("success (a usable vector)", [_percent(s.success_rate) for s in summaries]),
        ("  errors (5xx, broken connection)", [str(s.errors) for s in summaries]),
        (
            f"  timeouts (client gave up at {info.timeout:g} s)",
            [str(s.timeouts) for s in summaries],
        ),
        ("  invalid vectors served (NaN, wrong dim)", [str(s.invalid) for s in summaries]),
        ("latency p50", [_duration(s.p50) for s in summaries]),
        ("latency p95", [_duration(s.p95) for s in summaries]),
        ("latency p99", [_duration(s.p99) for s in summaries]),
        ("upstream calls", [str(r.upstream_calls) for r in reports]),
        (
            "  batches / mean batch size (texts per call)",
            [
                _decorated(r, ["batch"], lambda t: f"{t.batches} / {t.mean_batch:.1f}")
                for r in reports
            ],
        ),
        (
            "cache hits / single-flight joins",
            [
                _decorated(r, ["cache"], lambda t: f"{t.cache_hits} / {t.cache_joins}")
                for r in reports
            ],
        ),
        ("retries", [_decorated(r, ["retry"], lambda t: t.retries) for r in reports]),
        (
            "breaker openings / calls refused",
            [
                _decorated(
                    r,
                    ["circuit_breaker"],
                    lambda t: f"{t.breaker_openings} / {t.breaker_rejections}",
                )
                for r in reports
            ],
        ),
        (
            "invalid responses caught",
            [_decorated(r, ["validate_output"], lambda t: t.invalid_caught) for r in reports],
        ),
        (
            "calls shed (bulkhead / memory guard)",
            [
                _decorated(
                    r,
                    ["bulkhead", "memory_guard"],
                    lambda t: f"{t.bulkhead_rejections} / {t.memory_rejections}",
                )
                for r in reports
            ],
        ),
    ]
    fleets = [report.fleet for report in reports if report.fleet is not None]
    if fleets:
        rows += _fleet_rows(reports)
    label_width = max(len(label) for label, _ in rows) + 2
    widths = [
        max(len(report.name), *(len(values[i]) for _, values in rows)) + 2
        for i, report in enumerate(reports)
    ]
    lines = [
        f"buttress demo: {info.requests} requests to each gateway over {info.duration:g} s, "
        f"bursts of {info.concurrency}, client timeout {info.timeout:g} s, seed {info.seed}",
        _fault_line(info.faults),
        "",
        " " * label_width + "".join(r.name.rjust(w) for r, w in zip(reports, widths, strict=True)),
    ]
    lines += [
        label.ljust(label_width) + "".join(v.rjust(w) for v, w in zip(values, widths, strict=True))
        for label, values in rows
    ]
    lines.append("")
    for fleet in fleets:
        lines += _fleet_lines(fleet)
    for index, report in enumerate(reports):
        if report.tally is not None:
            stack = " > ".join(report.layers) or "none"
            lines.append(f"{report.name} gateway decorators, outermost first: {stack}")
            if any(values[index] == "off" for _, values in rows):
                lines.append("  off: that decorator is not in this gateway's stack")
    lines += list(notes)
    lines.append(f"Run again with --seed {info.seed} for the same traffic and the same faults.")
    return "\n".join(lines) + "\n"


def _per_replica(values: Sequence[int]) -> str:
    return " / ".join(str(value) for value in values)


def _fleet_rows(reports: Sequence[GatewayReport]) -> list[tuple[str, list[str]]]:
    """The rows only a fleet fills: per replica, and against the shared limit."""

    def peak(report: GatewayReport) -> str:
        if report.fleet is None:
            return f"{report.peak_requests}/s"
        limit = report.fleet.limit
        return f"{report.peak_requests}/s (limit {limit.rate:g}/s + burst {limit.burst})"

    def fleet(report: GatewayReport, value: Callable[[FleetFacts], str]) -> str:
        return "-" if report.fleet is None else value(report.fleet)

    return [
        ("fleet: replica processes", [fleet(r, lambda f: str(len(f.replicas))) for r in reports]),
        (
            "  upstream calls per replica",
            [fleet(r, lambda f: _per_replica(f.upstream_calls)) for r in reports],
        ),
        ("  peak upstream requests in 1 s", [peak(r) for r in reports]),
        (
            "  rate limit waits / refusals",
            [
                _decorated(r, ["rate_limit"], lambda t: f"{t.rate_waits} / {t.rate_refusals}")
                for r in reports
            ],
        ),
        (
            "  breaker openings per replica",
            [fleet(r, lambda f: _per_replica(f.breaker_openings)) for r in reports],
        ),
    ]


def _fleet_lines(fleet: FleetFacts) -> list[str]:
    limit = fleet.limit
    return [
        f"fleet: {len(fleet.replicas)} gateway processes behind one load generator (round "
        f"robin), sharing through {fleet.redis}: the cache (RedisStore) and the upstream "
        f"rate limit ({limit.rate:g} requests/s, burst {limit.burst}) and the circuit "
        "breaker (FleetStore)",
    ]


def write_histogram(
    reports: Sequence[GatewayReport], path: Path, info: RunInfo
) -> Path | None:
    """Draw the latency histograms and success over time into a PNG at ``path``.

    Returns ``None`` when matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None

    figure = Figure(figsize=(10, 7.5), layout="constrained")
    latency_axes, timeline_axes = figure.subplots(2, 1)
    longest = max((o.latency for r in reports for o in r.outcomes), default=1.0)
    bins = np.geomspace(1e-3, max(longest, 2e-3) * 1.05, 60)
    for report in reports:
        latencies = [max(o.latency, 1e-3) for o in report.outcomes]
        summary = report.summary
        latency_axes.hist(
            latencies,
            bins=bins,
            histtype="step",
            linewidth=1.8,
            label=f"{report.name}: p50 {_duration(summary.p50)}, p99 {_duration(summary.p99)}",
        )
    latency_axes.set_xscale("log")
    latency_axes.set_xlabel("latency seen by the client, failures included (s, log scale)")
    latency_axes.set_ylabel("requests")
    latency_axes.set_title(f"buttress demo: latency per request (seed {info.seed})")
    latency_axes.legend()

    edges = np.arange(0.0, info.duration + 1.0, 1.0)
    for report in reports:
        sent = np.histogram([o.at for o in report.outcomes], bins=edges)[0]
        ok = np.histogram([o.at for o in report.outcomes if o.kind == "ok"], bins=edges)[0]
        share = np.divide(ok, sent, out=np.full(len(sent), np.nan), where=sent > 0)
        # The last value repeated, so that the final second is drawn to its end.
        timeline_axes.step(
            edges, 100 * np.append(share, share[-1]), where="post", label=report.name
        )
    faults = info.faults
    if faults.outage_start is not None and faults.outage_length > 0:
        timeline_axes.axvspan(
            faults.outage_start,
            faults.outage_start + faults.outage_length,
            color="grey",
            alpha=0.2,
            label="upstream outage",
        )
    timeline_axes.set_xlabel("seconds into the run (by planned send time)")
    timeline_axes.set_ylabel("success (%)")
    timeline_axes.set_ylim(0, 105)
    timeline_axes.legend(loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


#: Histogram buckets (seconds) of the request latency metric.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def prometheus_text(
    reports: Sequence[GatewayReport], buttress_metrics: str | None = None
) -> str | None:
    """The run's metrics in the Prometheus text format; ``None`` without prometheus-client.

    The demo's own series (``buttress_demo_*``: what the clients saw and what the
    upstreams served, labelled by gateway) come first, then ``buttress_metrics``: the
    exposition of :mod:`buttress.metrics` captured at the end of the run, the ``buttress_*``
    series the decorators themselves counted.
    """
    try:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            generate_latest,
        )
    except ImportError:
        return None

    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "buttress_demo_requests",
        "Requests sent to a gateway, by outcome seen by the client.",
        ["gateway", "outcome"],
        registry=registry,
    )
    latency = Histogram(
        "buttress_demo_request_latency_seconds",
        "Latency seen by the client, from the planned send time.",
        ["gateway"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    upstream = Counter(
        "buttress_demo_upstream_calls",
        "Texts the gateway's upstream stand-in was asked for, by injected fault (each "
        "text of a batch request counts).",
        ["gateway", "fault"],
        registry=registry,
    )
    for report in reports:
        for kind in ("ok", "invalid", "error", "timeout"):
            requests.labels(report.name, kind).inc(0)
        for outcome in report.outcomes:
            requests.labels(report.name, outcome.kind).inc()
            latency.labels(report.name).observe(outcome.latency)
        for fault, count in report.faults.items():
            upstream.labels(report.name, fault).inc(count)
    return generate_latest(registry).decode() + (buttress_metrics or "")

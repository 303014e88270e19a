"""``python -m buttress demo``: what buttress does for an inference gateway, in one command.

It starts, on 127.0.0.1 and in one process: two copies of a misbehaving embedding service
(:mod:`.upstream`), a plain gateway and a resilient one in front of them
(:mod:`.gateways`), and a load generator (:mod:`.load`) that sends both the same seeded
traffic at the same moments. Then it prints a side-by-side report (:mod:`.report`) and
writes a latency picture and the run's Prometheus metrics.

With ``--replicas N`` (N >= 2) a third column joins them: a fleet of N resilient gateway
processes behind the same load generator, sharing their cache and the upstream's rate
limit through Redis (:mod:`.fleet`, :mod:`.replica`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio

from .gateways import (
    FLEET,
    FleetLimit,
    PlainGateway,
    ResilienceSettings,
    ResilientGateway,
    resilience_policy,
)
from .load import Progress, drive, plan_traffic
from .observe import export_otlp, observe_run, otlp_missing
from .report import (
    PLOT_HINT,
    PROMETHEUS_HINT,
    FleetFacts,
    GatewayReport,
    RunInfo,
    prometheus_text,
    render,
    write_histogram,
)
from .upstream import Faults, Upstream

__all__ = [
    "DemoOptions",
    "DemoResult",
    "add_arguments",
    "fleet_problem",
    "main",
    "options_from_args",
    "run_demo",
    "write_outputs",
]

DEFAULT_OUT = Path("buttress-demo")
REDIS_HINT = (
    "give --redis URL, or install redis-server (Debian and Ubuntu: apt-get install "
    "redis-server; macOS: brew install redis)"
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything a demo run can be told; the command-line options map onto these."""

    requests: int = 1200
    duration: float = 20.0
    concurrency: int = 32
    timeout: float = 2.0
    seed: int | None = None
    spike_rate: float = 0.05
    error_rate: float = 0.08
    retry_after: float = 0.2
    hang_rate: float = 0.01
    nan_rate: float = 0.01
    wrong_dim_rate: float = 0.01
    outage_start: float | None = None
    outage_length: float | None = None
    out: Path = DEFAULT_OUT
    progress: bool = True
    #: an OTLP/HTTP endpoint to send the run's traces and metrics to (``--otlp``)
    otlp: str | None = None
    #: gateway processes of the fleet column (``--replicas``); 1: no fleet
    replicas: int = 1
    #: the Redis the fleet shares (``--redis``); ``None``: a private redis-server
    redis: str | None = None
    #: upstream requests per second the whole fleet may send (``--fleet-rate``)
    fleet_rate: float = 20.0

    def fleet_limit(self) -> FleetLimit:
        """The fleet's shared rate limit: a request waits half its deadline at most."""
        deadline = ResilienceSettings.for_client_timeout(self.timeout).deadline
        return FleetLimit(rate=self.fleet_rate, burst=5, max_wait=deadline / 2)

    def faults(self) -> Faults:
        """The upstream's behaviour; the outage defaults to 40-50% of the run."""
        start = 0.4 * self.duration if self.outage_start is None else self.outage_start
        length = 0.1 * self.duration if self.outage_length is None else self.outage_length
        return Faults(
            spike_rate=self.spike_rate,
            error_rate=self.error_rate,
            retry_after=self.retry_after,
            hang_rate=self.hang_rate,
            nan_rate=self.nan_rate,
            wrong_dim_rate=self.wrong_dim_rate,
            # Long past the client's patience: to the client, the call never ends.
            hang_seconds=5 * self.timeout,
            outage_start=start if length > 0 else None,
            outage_length=length,
        )


@dataclass
class DemoResult:
    """A finished run: its settings and one report per gateway (plain first).

    Attributes:
        metrics_text: buttress's own metrics at the end of the run (Prometheus text
            format), ``None`` without prometheus-client.
        monitor_log: where the resilient gateway's ``@monitor`` records went, if anywhere.
    """

    info: RunInfo
    reports: list[GatewayReport]
    upstreams: list[Upstream] = field(repr=False, default_factory=list)
    metrics_text: str | None = field(repr=False, default=None)
    monitor_log: Path | None = None
    otlp: str | None = None


async def run_demo(
    options: DemoOptions,
    *,
    progress: TextIO | None = None,
    monitor_log: Path | None = None,
) -> DemoResult:
    """Run the servers and the load; return the measurements.

    Args:
        options: the run's settings.
        progress: where to draw the progress bar (``None``: no bar).
        monitor_log: write the resilient gateway's ``@monitor`` records there, one JSON
            line per call (``None``: drop them). Nothing else is written.

    buttress's metrics are enabled for the run (see :func:`.observe.observe_run`), so the
    result carries the real decorators' counts in Prometheus form.
    """
    seed = options.seed if options.seed is not None else secrets.randbelow(1_000_000)
    faults = options.faults()
    info = RunInfo(
        requests=options.requests,
        duration=options.duration,
        concurrency=options.concurrency,
        timeout=options.timeout,
        seed=seed,
        faults=faults,
    )
    plan = plan_traffic(
        requests=options.requests,
        duration=options.duration,
        concurrency=options.concurrency,
        seed=seed,
    )
    settings = ResilienceSettings.for_client_timeout(
        options.timeout, duration=options.duration, dim=faults.dim
    )
    fleet_upstream: Upstream | None = None
    fleet_report: GatewayReport | None = None
    async with (
        observe_run(monitor_log) as observation,
        export_otlp(options.otlp),
        AsyncExitStack() as stack,
    ):
        # Each gateway has its own upstream, seeded alike, so each one's calls are its own.
        plain_upstream = Upstream(faults, seed=seed)
        resilient_upstream = Upstream(faults, seed=seed)
        upstreams = [plain_upstream, resilient_upstream]
        if options.replicas > 1:
            fleet_upstream = Upstream(faults, seed=seed)
            upstreams.append(fleet_upstream)
        for upstream in upstreams:
            await upstream.start()
            stack.push_async_callback(upstream.stop)
        plain = PlainGateway(plain_upstream.url)
        resilient = ResilientGateway(resilient_upstream.url, settings=settings)
        gateways = (plain, resilient)
        for gateway in gateways:
            await gateway.start()
            stack.push_async_callback(gateway.stop)
        targets: dict[str, str | list[str]] = {gateway.name: gateway.url for gateway in gateways}
        fleet = None
        if fleet_upstream is not None:
            # redis-py is needed for a fleet only (fleet_problem() checked it is there).
            from . import fleet as _fleet

            fleet = await stack.enter_async_context(
                _fleet.start_fleet(
                    options.replicas,
                    upstream=fleet_upstream.url,
                    redis_url=options.redis,
                    limit=options.fleet_limit(),
                    client_timeout=options.timeout,
                    duration=options.duration,
                    dim=faults.dim,
                    logs=None if monitor_log is None else monitor_log.parent,
                )
            )
            targets[FLEET] = fleet.urls

        bar = None
        if progress is not None:
            bar = Progress(len(plan) * len(targets), list(targets), stream=progress)
        origin = time.monotonic()
        for upstream in upstreams:
            upstream.begin(origin)
        outcomes = await drive(
            plan,
            targets,
            concurrency=options.concurrency,
            patience=options.timeout,
            dim=faults.dim,
            origin=origin,
            progress=bar,
        )
        # Clients are done; let the gateways finish what they still hold (handlers outlive
        # a client that gave up) so that every upstream call is counted.
        for upstream in upstreams:
            upstream.release()
        with anyio.move_on_after(options.timeout + 5.0):
            for gateway in gateways:
                await gateway.wait_idle()
        if fleet is not None and fleet_upstream is not None:
            replicas = await fleet.stop(options.timeout + 30.0)
            facts = FleetFacts(
                replicas, fleet.limit, "a private redis-server" if fleet.private else fleet.redis
            )
            fleet_report = GatewayReport(
                name=FLEET,
                outcomes=outcomes[FLEET],
                received=sum(replica.requests for replica in replicas),
                upstream_calls=fleet_upstream.total,
                gateway_upstream_calls=sum(facts.upstream_calls),
                faults=fleet_upstream.served.copy(),
                layers=resilience_policy(settings, limit=fleet.limit).layers,
                tally=facts.tally(f"{FLEET}.embed"),
                peak_requests=fleet_upstream.peak_rate()[0],
                fleet=facts,
            )
        observation.capture()

        reports = [
            GatewayReport(
                name=gateway.name,
                outcomes=outcomes[gateway.name],
                received=gateway.stats.requests,
                upstream_calls=upstream.total,
                gateway_upstream_calls=gateway.stats.upstream_calls,
                faults=upstream.served.copy(),
                layers=gateway.layer_names,
                tally=getattr(gateway, "tally", None),
                peak_requests=upstream.peak_rate()[0],
            )
            for gateway, upstream in ((plain, plain_upstream), (resilient, resilient_upstream))
        ]
        if fleet_report is not None:
            reports.append(fleet_report)
    return DemoResult(
        info,
        reports,
        upstreams,
        metrics_text=observation.metrics_text,
        monitor_log=monitor_log,
        otlp=options.otlp,
    )


async def fleet_problem(options: DemoOptions) -> str | None:
    """Why the fleet of ``options.replicas`` cannot run here, or ``None`` (also when no
    fleet is asked for): redis-py missing, the ``--redis`` server not answering, or no
    ``redis-server`` to start a private one."""
    if options.replicas < 2:
        return None
    if importlib.util.find_spec("redis") is None:
        return "the fleet needs redis-py (pip install 'buttress[redis]')"
    from . import fleet as _fleet

    if options.redis is not None:
        return await _fleet.redis_problem(options.redis)
    if shutil.which("redis-server") is None:
        return "no --redis URL was given and there is no redis-server on PATH to start one"
    return None


def write_outputs(result: DemoResult, out: Path) -> list[str]:
    """Write the latency PNG and the Prometheus text into ``out``; return the report's notes."""
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    picture = write_histogram(result.reports, out / "latency.png", result.info)
    if picture is None:
        notes.append(f"latency histogram: needs matplotlib; get it with {PLOT_HINT}")
    else:
        notes.append(f"latency histogram: {picture}")
    metrics = prometheus_text(result.reports, result.metrics_text)
    if metrics is None:
        notes.append(f"prometheus metrics: needs prometheus-client; get it with {PROMETHEUS_HINT}")
    else:
        path = out / "metrics.prom"
        path.write_text(metrics, encoding="utf-8")
        notes.append(f"prometheus metrics: {path}")
    if result.monitor_log is not None and result.monitor_log.exists():
        notes.append(f"@monitor records (JSON lines): {result.monitor_log}")
    if result.otlp is not None:
        notes.append(f"traces and metrics: sent over OTLP/HTTP to {result.otlp}")
    notes.append(f"this report: {out / 'report.txt'}")
    return notes


# --- the command line ------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1, got {text}")
    return value


DESCRIPTION = """\
Run a misbehaving stand-in embedding service, a plain gateway and a gateway made
resilient with buttress (all on 127.0.0.1, in this process), send both gateways the same
seeded traffic at the same moments, and print a side-by-side report: success rate,
latency percentiles, upstream calls, and what each decorator did. Also writes a latency
histogram (PNG, needs matplotlib: pip install 'buttress[plot]'), the run's Prometheus
metrics (needs prometheus-client) and the resilient gateway's @monitor records (JSON
lines) into --out.

With --replicas N (2 or more), a third column: a fleet of N resilient gateway
processes behind the same load generator (round robin), sharing their cache, the
upstream's rate limit and the breaker through Redis (--redis URL, or a private
redis-server started for the run and stopped at its end). Without Redis the demo says
why and runs without the fleet.

The default run takes about 25 seconds."""

EPILOG = """\
examples:
  python -m buttress demo                       the default run
  python -m buttress demo --seed 42             the same traffic and faults every time
  python -m buttress demo --duration 10 --requests 400 --error-rate 0.3
  python -m buttress demo --outage-length 0 --hang-rate 0    no outage, no hangs
  python -m buttress demo --otlp http://127.0.0.1:4318      traces to a collector
  python -m buttress demo --replicas 3          a fleet of 3 processes sharing Redis
  python -m buttress demo --replicas 3 --redis redis://127.0.0.1:6379/0"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    defaults = DemoOptions()
    load = parser.add_argument_group("length and load")
    load.add_argument(
        "--duration",
        type=_positive_float,
        default=defaults.duration,
        metavar="SECONDS",
        help="spread the requests over this many seconds (default: %(default)s); the run "
        "ends at most --timeout seconds later",
    )
    load.add_argument(
        "--requests",
        type=_positive_int,
        default=defaults.requests,
        metavar="N",
        help="requests sent to each gateway (default: %(default)s); 70%% arrive at random "
        "moments, 30%% in bursts of --concurrency at once; texts repeat following a Zipf "
        "law over 1000 documents, and half of each burst asks for one new trending text",
    )
    load.add_argument(
        "--concurrency",
        type=_positive_int,
        default=defaults.concurrency,
        metavar="N",
        help="the size of a burst, and the client's connections per gateway "
        "(default: %(default)s)",
    )
    load.add_argument(
        "--timeout",
        type=_positive_float,
        default=defaults.timeout,
        metavar="SECONDS",
        help="the client gives up on a request this long after its planned send time "
        "(default: %(default)s); the resilient gateway's retry deadline is 3/4 of it",
    )
    load.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the traffic (send times, texts) and the upstream's faults, so that a "
        "run can be repeated (default: a random seed, printed in the report)",
    )
    faults = parser.add_argument_group(
        "upstream faults", "each rate is a probability per upstream call; together at most 1"
    )
    faults.add_argument(
        "--error-rate",
        type=_rate,
        default=defaults.error_rate,
        metavar="RATE",
        help="answer 503 with a Retry-After header (default: %(default)s)",
    )
    faults.add_argument(
        "--retry-after",
        type=_non_negative_float,
        default=defaults.retry_after,
        metavar="SECONDS",
        help="the Retry-After those 503s carry (default: %(default)s)",
    )
    faults.add_argument(
        "--spike-rate",
        type=_rate,
        default=defaults.spike_rate,
        metavar="RATE",
        help="answer correctly but after 0.25 to 1 s (default: %(default)s)",
    )
    faults.add_argument(
        "--hang-rate",
        type=_rate,
        default=defaults.hang_rate,
        metavar="RATE",
        help="hang for 5 x --timeout, then answer 504 (default: %(default)s)",
    )
    faults.add_argument(
        "--nan-rate",
        type=_rate,
        default=defaults.nan_rate,
        metavar="RATE",
        help="answer 200 with NaN in the vector (default: %(default)s)",
    )
    faults.add_argument(
        "--bad-dim-rate",
        dest="wrong_dim_rate",
        type=_rate,
        default=defaults.wrong_dim_rate,
        metavar="RATE",
        help="answer 200 with a 384-dimension vector instead of 768 (default: %(default)s)",
    )
    faults.add_argument(
        "--outage-start",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="when the outage starts, in seconds into the run; every call fails with 503 "
        "and no Retry-After while it lasts (default: 40%% of --duration)",
    )
    faults.add_argument(
        "--outage-length",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="how long the outage lasts; 0 for none (default: 10%% of --duration)",
    )
    fleet = parser.add_argument_group(
        "fleet", "gateway processes that share their state through Redis"
    )
    fleet.add_argument(
        "--replicas",
        type=_positive_int,
        default=defaults.replicas,
        metavar="N",
        help="add a fleet of N resilient gateway processes (2 or more) behind the load "
        "generator, sharing their cache, the upstream's rate limit and the breaker through "
        "Redis "
        "(default: %(default)s, no fleet)",
    )
    fleet.add_argument(
        "--redis",
        metavar="URL",
        help="the Redis the fleet shares, such as redis://127.0.0.1:6379/0 (default: a "
        "private redis-server on a free port, when one is installed); the run's keys "
        "live under a namespace of its own",
    )
    fleet.add_argument(
        "--fleet-rate",
        type=_positive_float,
        default=defaults.fleet_rate,
        metavar="RATE",
        help="upstream requests per second the whole fleet may send, shared through "
        "Redis (default: %(default)s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="write latency.png, metrics.prom, monitor.jsonl and report.txt here "
        "(default: ./%(default)s/)",
    )
    output.add_argument(
        "--otlp",
        metavar="URL",
        help="also send the run's traces (a span per resilient call, with its retries, "
        "cache results and refusals) and metrics to this OpenTelemetry collector, over "
        "OTLP/HTTP: its base URL, such as http://127.0.0.1:4318 (needs opentelemetry-sdk "
        "and opentelemetry-exporter-otlp-proto-http)",
    )
    output.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not draw the progress bar on stderr",
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The :class:`DemoOptions` of parsed arguments.

    Raises:
        ValueError: the fault rates add up to more than 1, or ``--otlp`` is not a URL
            or lacks the OpenTelemetry SDK.
    """
    options = DemoOptions(
        requests=args.requests,
        duration=args.duration,
        concurrency=args.concurrency,
        timeout=args.timeout,
        seed=args.seed,
        spike_rate=args.spike_rate,
        error_rate=args.error_rate,
        retry_after=args.retry_after,
        hang_rate=args.hang_rate,
        nan_rate=args.nan_rate,
        wrong_dim_rate=args.wrong_dim_rate,
        outage_start=args.outage_start,
        outage_length=args.outage_length,
        out=args.out,
        progress=args.progress,
        otlp=args.otlp,
        replicas=args.replicas,
        redis=args.redis,
        fleet_rate=args.fleet_rate,
    )
    options.faults()  # checks the rates
    if options.otlp is not None:
        if not options.otlp.startswith(("http://", "https://")):
            raise ValueError(f"--otlp must be an http:// or https:// URL, got {options.otlp!r}")
        missing = otlp_missing()
        if missing is not None:
            raise ValueError(missing)
    if options.redis is not None and options.replicas < 2:
        raise ValueError("--redis is for the fleet: give --replicas 2 or more too")
    return options


def build_parser(prog: str = "buttress demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def run_from_args(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the demo for parsed arguments, print the report; the exit status."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    problem = asyncio.run(fleet_problem(options))
    if problem is not None:
        err.write(
            f"--replicas {options.replicas}: {problem}; running the single-process demo "
            f"instead ({REDIS_HINT})\n"
        )
        err.flush()
        options = dataclasses.replace(options, replicas=1, redis=None)
    try:
        result = asyncio.run(
            run_demo(
                options,
                progress=err if options.progress else None,
                monitor_log=options.out / "monitor.jsonl",
            )
        )
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    notes = write_outputs(result, options.out)
    text = render(result.reports, result.info, notes)
    (options.out / "report.txt").write_text(text, encoding="utf-8")
    out.write("\n" + text)
    out.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``buttress demo [options]``: parse ``argv`` (``sys.argv[1:]`` by default), run, report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_from_args(args, parser)

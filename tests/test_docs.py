"""The documentation cannot rot: it builds strictly, and every code block in it runs.

- ``test_code_blocks``: every block of README.md, benchmarks/README.md and docs/ runs (or
  is marked not runnable, with a reason), and what it prints is what the page shows (see
  tests/_docs_support.py);
- ``test_docs_build``: Sphinx builds the HTML with warnings as errors, nitpicky, so a broken
  reference or link fails the suite (``tox -e docs`` runs the same build);
- the API reference lists every public name; README's links resolve; the README's
  benchmark headline is the one generated from benchmarks/RESULTS.md; pages stay small.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from _docs_support import ROOT, fixtures_of, pages, parse, run

DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import bench_tables  # noqa: E402  (docs/_ext is not a package)

sys.path.remove(str(DOCS / "_ext"))

PUBLIC_MODULES = (
    "buttress",
    "buttress.metrics",
    "buttress.otel",
    "buttress.testing",
    "buttress.integrations.aiohttp",
    "buttress.integrations.fastapi",
)


# --- servers the pages ask for with <!-- fixtures: ... --> ---------------------------


@pytest.fixture
def embedding_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """examples/toy_embedding_service.py, well behaved, in a thread; ``EMBEDDING_URL``."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        toy = import_module("toy_embedding_service")
    finally:
        sys.path.remove(str(ROOT / "examples"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="docs-embedding-service")
    thread.start()
    service = toy.toy_service(error_rate=0, nan_rate=0, slow_rate=0)
    try:
        url = asyncio.run_coroutine_threadsafe(service.__aenter__(), loop).result(30)
        monkeypatch.setenv("EMBEDDING_URL", url)
        yield url
    finally:
        try:
            stop = service.__aexit__(None, None, None)
            asyncio.run_coroutine_threadsafe(stop, loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()


class _TokenService:
    """A model that streams its answer: ``GET /generate?prompt=&offset=`` sends the
    prompt's words from ``offset``, one per line. A prompt starting with ``flaky``
    answers 503 to its first request; one starting with ``drop`` loses the connection
    after two words on its first request."""

    def __init__(self) -> None:
        from aiohttp import web

        self.seen: dict[str, int] = {}
        self.app = web.Application()
        self.app.router.add_get("/generate", self.generate)

    async def generate(self, request: Any) -> Any:
        from aiohttp import web

        prompt = request.query["prompt"]
        offset = int(request.query.get("offset", "0"))
        first = self.seen.setdefault(prompt, 0) == 0
        self.seen[prompt] += 1
        if first and prompt.startswith("flaky"):
            raise web.HTTPServiceUnavailable(text="warming up")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        for index, word in enumerate(prompt.split()[offset:], start=offset):
            if first and prompt.startswith("drop") and index == 2:
                request.transport.close()
                return response
            await response.write(f"{word}\n".encode())
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response


@pytest.fixture
def token_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A streaming model server (:class:`_TokenService`) in a thread; ``MODEL_URL``."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="docs-token-service")
    thread.start()
    service = _TokenService()
    runner = web.AppRunner(service.app, access_log=None, shutdown_timeout=1.0)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}/generate"

    try:
        url = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        monkeypatch.setenv("MODEL_URL", url)
        yield url
    finally:
        try:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            loop.close()


@pytest.fixture
def redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's private redis-server, emptied; ``REDIS_URL``."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    return redis_url


class Pushgateway(http.server.ThreadingHTTPServer):
    """Accepts Prometheus pushes as a Pushgateway does; keeps (method, path, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str]] = []
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _push(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                gateway.received.append((self.command, self.path, body))
                self.send_response(200)
                self.end_headers()

            do_PUT = do_POST = _push

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def pushgateway(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pushgateway]:
    """A stand-in Pushgateway on a free port; ``PUSHGATEWAY`` is its address."""
    server = Pushgateway()
    thread = threading.Thread(target=server.serve_forever, name="docs-pushgateway")
    thread.start()
    monkeypatch.setenv("PUSHGATEWAY", f"127.0.0.1:{server.server_address[1]}")
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(30)
        server.server_close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory, for pages whose blocks write files."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the code blocks ----------------------------------------------------------------


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", pages(), ids=page_id)
def test_code_blocks(path: Path, request: pytest.FixtureRequest) -> None:
    fixtures = {name: request.getfixturevalue(name) for name in fixtures_of(parse(path))}
    run(path, fixtures)


# --- the build ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML, built as ``tox -e docs`` builds it: warnings are errors, nitpicky."""
    out = tmp_path_factory.mktemp("docs-html")
    result = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
            "-d", str(out / ".doctrees"), str(DOCS), str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def test_docs_build(built: Path) -> None:
    index = (built / "index.html").read_text()
    assert "buttress" in index


def test_api_reference_lists_every_public_name(built: Path) -> None:
    from sphinx.util.inventory import InventoryFile

    with (built / "objects.inv").open("rb") as stream:
        inventory = InventoryFile.load(stream, "", os.path.join)
    documented = {name for kind in inventory.values() for name in kind}
    missing = [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name in import_module(module).__all__
        if f"{module}.{name}" not in documented
    ]
    assert not missing, f"add these to docs/reference/api.md: {missing}"


# --- links, generated parts, sizes --------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def headings(path: Path) -> set[str]:
    """GitHub's (and MyST's) anchors for the headings of a Markdown file."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_readme_links_resolve() -> None:
    broken = []
    for target in LINK.findall((ROOT / "README.md").read_text()):
        if re.match(r"[a-z]+://", target):
            continue  # no network in CI: only links inside the repository are checked
        file, _, anchor = target.partition("#")
        path = ROOT / file if file else ROOT / "README.md"
        if not path.exists() or (anchor and anchor not in headings(path)):
            broken.append(target)
    assert not broken


def test_readme_benchmark_headline_is_generated_from_the_results() -> None:
    readme = bench_tables.readme_block((ROOT / "README.md").read_text())
    assert readme == bench_tables.headline(), (
        "README.md's benchmark headline differs from benchmarks/RESULTS.md: run "
        "python docs/_ext/bench_tables.py --readme"
    )


def test_the_headline_follows_the_results() -> None:
    """Another RESULTS.md gives another headline: nothing in it is typed by hand."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    label, title = bench_tables.HEADLINE[0][:2]
    table = bench_tables.parse_results(text)[title]
    row = table.rows[table.ours]
    changed_row = list(row)
    changed_row[table.header.index("overhead")] = "99"
    line = "| " + " | ".join(row) + " |"
    assert text.count(line) == 1
    changed = text.replace(line, "| " + " | ".join(changed_row) + " |")
    assert f"| {label} | 99 ns |" in bench_tables.headline(changed)


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 10_000


@pytest.mark.parametrize(
    "path", sorted((DOCS / "decorators").glob("*.md")), ids=lambda path: path.name
)
def test_decorator_pages_stay_readable(path: Path) -> None:
    assert len(path.read_bytes()) < 16_000, "split the page: one topic per page"


# --- the runner itself can fail -----------------------------------------------------


def write_page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('```python\nprint("a")\n#> b\n```\n', "does not print what its #> lines show"),
        ('```python\nprint("a")\n```\n', "prints what it does not show"),
        ("```bash\nls\n```\n", "neither run nor marked"),
        ("<!-- skip: next -->\n```bash\nls\n```\n", "needs a reason"),
        ("```python\n>>> 1 + 1\n3\n```\n", "Expected"),
        ("```python\nraise KeyError('x')\n```\n", "line 1"),
    ],
)
def test_the_runner_catches(tmp_path: Path, text: str, message: str) -> None:
    page = write_page(tmp_path, text)
    with pytest.raises(AssertionError, match=message):
        run(page)


def test_the_runner_counts_what_it_ran_and_what_is_marked(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        '```python\nx = 1\n```\n<!-- skip: next "a reason" -->\n```bash\nls\n```\n'
        "<!-- invisible-code-block: python\nassert x == 1\n-->\n"
        '```python\nprint(x + 1)\n#> 2\n```\n```python\n>>> x\n1\n```\n',
    )
    assert run(page) == (4, 1)


# --- the pages' reference tables follow the code ------------------------------------

PARAMETER_TABLES = [
    ("decorators/retry.md", "## Parameters", "retry"),
    ("decorators/cache.md", "## Parameters", "cache_result"),
    ("decorators/redis.md", "## Parameters", "RedisStore"),
    ("decorators/memory-guard.md", "## Parameters", "memory_guard"),
    ("decorators/monitoring.md", "## Parameters", "monitor"),
    ("decorators/policies.md", "## @circuit_breaker", "circuit_breaker"),
    ("decorators/policies.md", "## @bulkhead", "bulkhead"),
    ("decorators/policies.md", "## @rate_limit", "rate_limit"),
    ("decorators/policies.md", "## @fallback", "fallback"),
    ("decorators/batch.md", "## Parameters", "batch"),
    ("decorators/policy.md", "# policy()", "policy"),
]


def table_names(page: str, heading: str) -> list[str]:
    """The first column of the first parameter table after ``heading``."""
    lines = (DOCS / page).read_text().splitlines()
    lines = lines[next(n for n, line in enumerate(lines) if line.startswith(heading)) :]
    start = next(
        n for n, line in enumerate(lines) if re.match(r"\| (parameter|keyword) \|", line)
    )
    names = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.append(line.split("|")[1].strip().strip("`"))
    return names


@pytest.mark.parametrize(("page", "heading", "name"), PARAMETER_TABLES)
def test_parameter_tables_list_every_parameter(page: str, heading: str, name: str) -> None:
    import inspect

    import buttress

    signature = inspect.signature(getattr(buttress, name))
    expected = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.name not in ("fn", "self") and parameter.kind is not parameter.VAR_KEYWORD
    ]
    assert sorted(table_names(page, heading)) == sorted(expected)


def test_the_events_page_lists_every_event() -> None:
    import buttress

    text = (DOCS / "reference" / "events.md").read_text()
    kinds = [
        name
        for name in buttress.__all__
        if isinstance(getattr(buttress, name), type)
        and issubclass(getattr(buttress, name), buttress.Event)
        and name != "Event"
    ]
    assert kinds
    assert [kind for kind in kinds if f"| `{kind}` |" not in text] == []


def test_the_architecture_page_places_every_module_and_dependency() -> None:
    """Like test_architecture's check of the package docstring, for the docs page."""
    from test_architecture import FEATURE_DEPENDENCIES, LAYERS, MODULES

    text = (DOCS / "architecture.md").read_text()
    missing = [
        module
        for module in LAYERS
        if module != "buttress"
        and module in MODULES
        and f"`{module.rpartition('.')[2]}" not in text
    ]
    assert not missing, f"docs/architecture.md does not place {missing}"
    for source, target in FEATURE_DEPENDENCIES:
        assert f"- {source} -> {target}:" in text, (source, target)

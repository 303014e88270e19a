"""Where Redis is: one server, a Cluster or a Sentinel-managed master, from a URL or a client.

URLs:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path``:
  one server (redis-py's own URL rules apply);
* ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster://``
  with TLS): a Redis Cluster, found from any of the nodes given (the client learns the
  others from them);
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://`` with TLS to the master): the master that Sentinel names
  ``service``; the user and password are the master's (add
  ``?sentinel_password=...`` when the sentinels ask for one).

Clients: ``redis.Redis`` and ``redis.asyncio.Redis`` (also as returned by
``Sentinel.master_for``), ``redis.cluster.RedisCluster`` and
``redis.asyncio.cluster.RedisCluster``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from buttress._errors import ConfigurationError

__all__ = ["Kind", "Topology", "describe_client", "parse_url"]

Kind = Literal["server", "cluster", "sentinel"]

_CLUSTER_SCHEMES: Final = {"redis+cluster": False, "rediss+cluster": True}
_SENTINEL_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}
_SERVER_SCHEMES: Final = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class Topology:
    """A parsed URL: what kind of deployment, and what a client needs to reach it.

    Attributes:
        kind: ``"server"``, ``"cluster"`` or ``"sentinel"``.
        url: for a server, the URL itself (redis-py parses it).
        nodes: cluster nodes to start from, or the sentinels, as ``(host, port)``.
        service: the master's name, for Sentinel.
        options: connection settings read from the URL (``username``, ``password``,
            ``db``, ``ssl``, ``sentinel_password``).
        address: a short description for messages and ``repr``.
    """

    kind: Kind
    address: str
    url: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def parse_url(url: str) -> Topology:
    """Parse a Redis, Cluster or Sentinel URL (see the module's docstring).

    Raises:
        ConfigurationError: the URL is not one of these forms.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a str like 'redis://host:6379/0', got {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in _CLUSTER_SCHEMES:
        return _parse_nodes(url, "cluster", _CLUSTER_SCHEMES[scheme])
    if scheme in _SENTINEL_SCHEMES:
        return _parse_nodes(url, "sentinel", _SENTINEL_SCHEMES[scheme])
    if scheme not in _SERVER_SCHEMES:
        raise ConfigurationError(
            f"url must start with redis://, rediss://, unix://, redis+cluster:// or "
            f"redis+sentinel://, got {url!r}"
        )
    import redis.connection

    try:
        kwargs = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigurationError(f"url is not a Redis URL: {exc}") from None
    if "path" in kwargs:
        address = f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    else:
        host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
        address = f"{host}:{port}/{kwargs.get('db', 0)}"
    return Topology("server", address, url=url)


def _parse_nodes(url: str, kind: Kind, ssl: bool) -> Topology:
    parts = urlsplit(url)
    netloc = parts.netloc
    options: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    default_port = 6379 if kind == "cluster" else 26379
    nodes = tuple(_host_port(text, default_port, url) for text in netloc.split(",") if text)
    if not nodes:
        raise ConfigurationError(f"url names no {kind} node: {url!r}")
    if ssl:
        options["ssl"] = True
    path = [unquote(piece) for piece in parts.path.split("/") if piece]
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    service: str | None = None
    if kind == "sentinel":
        if not path:
            raise ConfigurationError(
                "a Sentinel url names the master after the sentinels: "
                f"'redis+sentinel://host:26379/mymaster', got {url!r}"
            )
        service = path.pop(0)
        if "sentinel_password" in query:
            options["sentinel_password"] = query.pop("sentinel_password")
    if path:
        if len(path) > 1 or not path[0].isdigit():
            raise ConfigurationError(f"cannot read the database number in {url!r}")
        db = int(path[0])
        if kind == "cluster":
            if db != 0:
                raise ConfigurationError(f"a Redis Cluster has database 0 only, got {url!r}")
        else:
            options["db"] = db
    if query:
        raise ConfigurationError(f"unknown url options {sorted(query)} in {url!r}")
    where = ",".join(f"{host}:{port}" for host, port in nodes)
    address = f"cluster:{where}" if kind == "cluster" else f"sentinel:{where}/{service}"
    return Topology(kind, address, nodes=nodes, service=service, options=options)


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    host, port = text, str(default_port)
    if text.startswith("["):  # [IPv6]:port
        end = text.find("]")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith(":"):
            port = rest[1:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not host or not port.isdigit():
        raise ConfigurationError(f"cannot read the host and port {text!r} in {url!r}")
    return host, int(port)


def describe_client(client: Any) -> tuple[Kind, bool, str]:
    """``(kind, is_async, address)`` of a client the user gave.

    Raises:
        ConfigurationError: not a redis-py client the store can use.
    """
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

    if isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)):
        nodes = getattr(getattr(client, "nodes_manager", None), "startup_nodes", None) or {}
        where = ",".join(sorted(nodes)) or "?"
        return "cluster", isinstance(client, redis.asyncio.cluster.RedisCluster), f"cluster:{where}"
    if isinstance(client, (redis.Redis, redis.asyncio.Redis)):
        is_async = isinstance(client, redis.asyncio.Redis)
        pool = client.connection_pool
        service = getattr(pool, "service_name", None)
        if service is not None:  # Sentinel(...).master_for(service)
            return "sentinel", is_async, f"sentinel:{service}"
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return "server", is_async, f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
        host, port = kwargs.get("host", "localhost"), kwargs.get("port", 6379)
        return "server", is_async, f"{host}:{port}/{kwargs.get('db', 0)}"
    raise ConfigurationError(
        "client must be a redis.Redis, redis.asyncio.Redis, redis.cluster.RedisCluster or "
        f"redis.asyncio.cluster.RedisCluster, got {client!r}"
    )

"""Redis operations written once for both kinds of client: :class:`Call` and :class:`Script`.

A command is run on redis-py's sync client (``run``) or on a ``redis.asyncio`` client
(``arun``); :class:`~._connection.RedisConnection` picks the client and counts failures.
Both work on a single server, a Sentinel-managed master and a Redis Cluster (where every
key one command touches must share a hash slot: see :func:`hash_tag`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, final

__all__ = ["Call", "Command", "Script", "hash_tag"]


class Command(Protocol):
    """One Redis operation for either kind of client."""

    def run(self, client: Any, *args: Any) -> Any:
        """Run it on a sync client (``redis.Redis``, ``redis.cluster.RedisCluster``)."""

    async def arun(self, client: Any, *args: Any) -> Any:
        """Run it on an asyncio client (``redis.asyncio.Redis`` or its cluster client)."""


@final
class Call:
    """One client method, such as ``Call("get")``: the same name on both clients."""

    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method

    def run(self, client: Any, *args: Any) -> Any:
        return getattr(client, self.method)(*args)

    async def arun(self, client: Any, *args: Any) -> Any:
        return await getattr(client, self.method)(*args)

    def __repr__(self) -> str:
        return f"Call({self.method!r})"


@final
class Script:
    """A Lua script run by ``EVALSHA``, loaded again when the server does not know it.

    The server forgets scripts when it restarts, fails over to a replica that never ran
    them, or runs ``SCRIPT FLUSH``; ``NOSCRIPT`` then costs one ``SCRIPT LOAD`` and a
    second ``EVALSHA``. Written here rather than with redis-py's ``register_script``,
    whose script objects belong to one client: this one serves any client (the sync one,
    each event loop's, a cluster's) and keeps no state but its digest.

    Called with ``(client, keys, args)``; every key the script touches is in ``keys``
    (they must share a hash slot on a cluster).
    """

    __slots__ = ("lua", "name", "sha")

    def __init__(self, name: str, lua: str) -> None:
        self.name = name
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()

    def run(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _no_script(exc):
                raise
            client.script_load(self.lua)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        # Every cache hit runs this: redis' NoScriptError is imported only on a failure.
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not _no_script(exc):
                raise
            await client.script_load(self.lua)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:12]})"


def _no_script(error: Exception) -> bool:
    """Whether ``error`` is the server's ``NOSCRIPT`` (it forgot the script)."""
    from redis.exceptions import NoScriptError

    return isinstance(error, NoScriptError)


def hash_tag(text: str) -> str:
    """``{text}``, with the braces Redis Cluster hashes on taken out of ``text``.

    Keys that contain the same ``{tag}`` share a hash slot, so a script or a multi-key
    command may touch all of them on a cluster (and on a single server nothing changes).
    """
    return "{" + text.replace("{", "(").replace("}", ")") + "}"

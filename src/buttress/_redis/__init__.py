"""The Redis connection every feature that keeps state in Redis shares.

A feature that keeps fleet-wide state in Redis (the cache's ``RedisStore`` today; shared
rate limits, breakers and budgets next) builds one :class:`RedisConnection` from the
user's ``url=`` or ``client=`` and runs its operations through it:

* :class:`Call` (one client method) and :class:`Script` (Lua by ``EVALSHA``, loaded again
  on ``NOSCRIPT``) are written once for sync and asyncio clients;
* ``connection.call(operation, command, *args)`` runs one on the sync client, ``await
  connection.acall(...)`` on this event loop's asyncio client (or in a worker thread on
  trio); both count failures, fail fast for a second after an outage, and raise as
  ``fail_open`` says;
* keys that one script touches share a :func:`hash_tag`, so the same code runs on a
  single server, behind Sentinel and on a Redis Cluster;
* :class:`FleetStore` (public) holds the state replicas share (rate limits, breakers,
  budgets): one :class:`SharedState` per kind and name, whose scripts run in one round
  trip, whose settings are the name's contract, and whose outages are reported (and
  answered with :data:`LOST`, for the feature to decide locally);
* :func:`syncer` is a store's background thread that syncs the shared breakers and
  budgets (each a :class:`Link`: counts out, the fleet's state back) every few ms, so
  their calls make no round trip.
"""

from __future__ import annotations

from ._commands import Call as Call
from ._commands import Command as Command
from ._commands import Script as Script
from ._commands import hash_tag as hash_tag
from ._connection import RETRY_AFTER as RETRY_AFTER
from ._connection import RedisConnection as RedisConnection
from ._connection import running_asyncio_loop as running_asyncio_loop
from ._fleet import CLAIM as CLAIM
from ._fleet import LOST as LOST
from ._fleet import FleetStore as FleetStore
from ._fleet import SharedState as SharedState
from ._fleet import setting_text as setting_text
from ._sync import INTERVAL as INTERVAL
from ._sync import Link as Link
from ._sync import Syncer as Syncer
from ._sync import syncer as syncer
from ._topology import Topology as Topology
from ._topology import parse_url as parse_url

__all__ = [
    "CLAIM",
    "INTERVAL",
    "LOST",
    "RETRY_AFTER",
    "Call",
    "Command",
    "FleetStore",
    "Link",
    "RedisConnection",
    "Script",
    "SharedState",
    "Syncer",
    "Topology",
    "hash_tag",
    "parse_url",
    "running_asyncio_loop",
    "setting_text",
    "syncer",
]

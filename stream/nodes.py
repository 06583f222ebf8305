"""Connecting to Redis: one server, or a Redis Cluster with a lane per master.

On Redis Cluster every key of an input partition shares one slot (``contracts.keys``), so
each of a batch's script calls goes to one master. ``NodeLanes`` keeps a ``ScriptLane``
per master, on a connection of its own, and routes a call by its first key's slot. When
the cluster's layout changes under the worker (a failover promotes a replica, a slot
moves), a call fails with a connection error or a MOVED, ASK, CLUSTERDOWN or TRYAGAIN
reply; ``RedisStore`` then calls ``refresh`` and sends it again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from stream.lane import ScriptLane

log = logging.getLogger(__name__)

# Replies that say the cluster's layout is changing: the call is sent again once the
# slot map is read again. A script call that reaches a key its node does not hold (a
# slot that moved, a master that is a replica now) fails with the second kind, before
# it writes anything (``stream/scripts.py``: each part's slot is probed first).
MOVING = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
SCRIPT_MOVING = (
    "Script attempted to access a non local key",
    "Script attempted to execute a command while the cluster is down",
    "Script attempted to execute a write command while the cluster is down",
)


def is_moving(exc: BaseException) -> bool:
    """Whether an error reply says a slot is moving or the cluster is failing over."""
    text = str(exc)
    return text.split(" ", 1)[0] in MOVING or text.startswith(SCRIPT_MOVING)


class NodeLanes:
    """A ``ScriptLane`` per Redis Cluster master, found by a key's slot."""

    def __init__(self, cluster: RedisCluster, **options: Any) -> None:
        """``options`` are the connection options of each master's client."""
        self.cluster = cluster
        self.options = options
        self._lanes: dict[str, ScriptLane] = {}
        self.ready = False

    def __call__(self, key: str) -> ScriptLane:
        """Return the lane of the master holding ``key``'s slot."""
        node = self.cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        lane = self._lanes.get(node.name)
        if lane is None:
            client = aioredis.Redis(host=node.host, port=int(node.port), **self.options)
            lane = self._lanes[node.name] = ScriptLane(client)
        return lane

    async def refresh(self) -> None:
        """Read the cluster's slot map again (after a failover or a moved slot)."""
        if self.ready:
            await self.cluster.nodes_manager.initialize()
        else:  # the client's first look: its command parser too
            await self.cluster.initialize()
        self.ready = True
        masters = {n.name for n in self.cluster.get_primaries()}
        for name in [n for n in self._lanes if n not in masters]:
            lane = self._lanes.pop(name)
            await lane.client.aclose()
        log.info("redis cluster: %d masters", len(masters))

    async def aclose(self) -> None:
        """Close every master's client."""
        for lane in self._lanes.values():
            await lane.client.aclose()
        self._lanes.clear()


def connect(url: str, *, cluster: bool, timeout_s: float = 5.0) -> tuple[Any, NodeLanes | None]:
    """Return a client for ``url`` and, on Redis Cluster, its lanes per master."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if not cluster:
        return aioredis.Redis.from_url(url, **options), None
    client = RedisCluster.from_url(url, **options)
    kwargs = client.nodes_manager.connection_kwargs
    for name in ("username", "password", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if kwargs.get(name) is not None:
            options[name] = kwargs[name]
    if url.startswith("rediss://"):
        options["ssl"] = True
    return client, NodeLanes(client, **options)

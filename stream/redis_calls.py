"""How the session store's script calls reach Redis: on which lane, fenced, retried.

On a single Redis every call goes on one lane (``stream/lane.py``); on Redis Cluster on
the lane of the master holding its keys' slot (``stream/nodes.py``). A call whose reply
is lost (a broken connection, a failover, a moving slot) is made again: the store's
scripts are idempotent. A write's commands are collected by the call they go in
(``WriteCall``) and sent with the fence: the applied offsets this worker knows Redis
holds, so a Redis that lost writes gets nothing written on top (``RedisLost``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgpack
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts import keys
from stream.lane import ScriptLane
from stream.nodes import NodeLanes, is_moving
from stream.scripts import APPLY_CLUSTER_SCRIPT, APPLY_SCRIPT

log = logging.getLogger(__name__)
T = TypeVar("T")

# Input offsets by (input kind, partition): "sessions" or "hits".
Offsets = Mapping[tuple[str, int], int]


class RedisLost(RuntimeError):
    """Redis holds less than this worker wrote to it: it lost writes (a restart without
    persistence, AOF's last second, a failover, a flush). Nothing was written on top."""


class InfrastructureError(RuntimeError):
    """Redis stayed unreachable through every retry."""


class ScriptCalls:
    """Sends the store's script calls to the right server, fenced, and retries them."""

    def __init__(
        self,
        client: Any,
        layout: keys.Layout,
        retries: int,
        dash_cfg: bytes,
        lanes: NodeLanes | None = None,
    ) -> None:
        """``lanes``, on Redis Cluster, gives the lane of the master holding a key's slot;
        then each master gets a call of its own, a part per partition. Without it,
        every call goes on one lane of ``client``.

        On Redis Cluster each partition's hot set is kept in its own dashboard share
        (the share must be on the partition's master); on a single Redis, where one
        call writes every partition, partition 0's share keeps them all.
        """
        self.layout = layout
        self.retries = retries
        self.dash_cfg = dash_cfg
        self.apply = AsyncScript(client, APPLY_SCRIPT if lanes is None else APPLY_CLUSTER_SCRIPT)
        self._lanes = lanes
        self.lane = ScriptLane(client) if lanes is None else None
        # The fence: the applied offsets this worker knows Redis holds, by (input kind,
        # partition). Every write checks them first and raises RedisLost where Redis
        # holds less.
        self.expected: dict[tuple[str, int], int] = {}
        clustered = lanes is not None
        self.dashes = [layout.dash(p if clustered else 0) for p in range(layout.partitions)]

    @property
    def clustered(self) -> bool:
        """Whether calls go per partition, to the node holding it (Redis Cluster)."""
        return self._lanes is not None

    def group(self, partition: int) -> int:
        """The call a partition's keys go in: its own on Redis Cluster, else one."""
        return partition if self._lanes is not None else 0

    async def lane_of(self, key: str) -> ScriptLane:
        """The lane of the server holding a key."""
        if self._lanes is None:
            assert self.lane is not None
            return self.lane
        if not self._lanes.ready:
            await self._lanes.refresh()
        return self._lanes(key)

    async def retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Make a call, again after a connection failure or a cluster's moving slot."""
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                if attempt > 1 and self._lanes is not None:
                    await self._lanes.refresh()
                return await call()
            except Exception as exc:
                if not transient(exc):
                    raise
                if attempt == self.retries:
                    raise InfrastructureError(
                        f"redis {what} failed {attempt} times: {exc}"
                    ) from exc
                log.warning("redis %s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def send(
        self, what: str, script: AsyncScript, names: list[str], args: list[Any]
    ) -> Awaitable[Any]:
        """Send a script call on its lane now; return what to await for its reply.

        If the connection fails before the reply, the call is made again (with the
        retries of ``retry``): the store's scripts are idempotent.
        """
        key = names[0] if names else ""
        lane = await self.lane_of(key)

        async def run() -> Any:
            return await (await self.lane_of(key)).call(script, names, args)

        try:
            sent: asyncio.Future[Any] | None = await lane.send(script, names, args)
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("redis %s failed (%s); retrying", what, exc)
            sent = None

        async def replied() -> Any:
            if sent is not None:
                try:
                    return await lane.reply(script, sent, names, args)
                except Exception as exc:
                    if not transient(exc):
                        raise
                    log.warning("redis %s failed (%s); retrying", what, exc)
            return await self.retry(what, run)

        return replied()

    async def send_parts(self, what: str, parts: list[tuple[str, bytes]]) -> Awaitable[list[Any]]:
        """Send a write's parts (first key, packed part), one call per master; return what
        to await for the replies, one per call.

        A call whose reply is lost (a connection failure, a failover, a slot moved) is
        made again once the slot map is read again, its parts grouped by master anew:
        the apply script is idempotent, and a call that reaches a slot its node no
        longer holds fails before it writes anything.
        """
        script = self.apply

        def arguments(lane: ScriptLane, group: list[tuple[str, bytes]]) -> list[Any]:
            return [self.dash_cfg, self._share(lane), *(part for _, part in group)]

        sent = []
        for lane, group in await self._by_master(parts):
            args = arguments(lane, group)
            try:
                future: asyncio.Future[Any] | None = await lane.send(script, [], args)
            except Exception as exc:
                if not transient(exc):
                    raise
                log.warning("redis %s failed (%s); retrying", what, exc)
                future = None
            sent.append((lane, group, args, future))

        async def again(group: list[tuple[str, bytes]]) -> list[Any]:
            out = []
            for lane, regrouped in await self._by_master(group):
                out.append(await lane.call(script, [], arguments(lane, regrouped)))
            return out

        async def replied() -> list[Any]:
            out, failed = [], []
            for lane, group, args, future in sent:
                if future is not None:
                    try:
                        out.append(await lane.reply(script, future, [], args))
                        continue
                    except Exception as exc:
                        if not transient(exc):
                            raise
                        log.warning("redis %s failed (%s); retrying", what, exc)
                failed += group
            if failed:
                out += await self.retry(what, lambda: again(failed))
            return out

        return replied()

    def _share(self, lane: ScriptLane) -> str:
        """The dashboard share a master's calls add their sums to: that of the lowest
        partition it holds, the same for every call while the slots stay put."""
        assert self._lanes is not None
        for p in range(self.layout.partitions):
            if self._lanes(self.layout.applied(p)) is lane:
                return self.dashes[p]
        raise AssertionError("a master holding none of the partitions")

    async def _by_master(
        self, parts: list[tuple[str, bytes]]
    ) -> list[tuple[ScriptLane, list[tuple[str, bytes]]]]:
        """Group parts by the lane of the master holding their first key's slot."""
        groups: dict[int, tuple[ScriptLane, list[tuple[str, bytes]]]] = {}
        for key, part in parts:
            lane = await self.lane_of(key)
            groups.setdefault(id(lane), (lane, []))[1].append((key, part))
        return list(groups.values())

    def fence(self, names: list[str], index: dict[str, int] | None, group: int) -> list[Any]:
        """Return the fence of a script call, adding its keys to ``names``.

        ``index`` maps the keys already in ``names`` to their place (1-based), if known;
        only the partitions of ``group`` are fenced.
        """
        fence = []
        for (kind, partition), offset in self.expected.items():
            if self.group(partition) != group:
                continue
            key = self.layout.applied(partition)
            k = None if index is None else index.get(key)
            if k is None:
                names.append(key)
                k = len(names)
                if index is not None:
                    index[key] = k
            fence.append([k, kind, str(offset)])
        return fence


class Ops:
    """Commands collected for the apply script (stream/scripts.py)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.argv: list[Any] = []

    def add(self, command: str, key: str | None, *args: Any) -> None:
        """Add a command on ``key`` (None: a command of the script's own, without one)."""
        k = 0 if key is None else self.index.get(key)
        if k is None:
            assert key is not None
            self.keys.append(key)
            k = self.index[key] = len(self.keys)
        self.argv.extend((command, k, len(args)))
        self.argv.extend(args)


class WriteCall:
    """A write's commands, by the call they go in (see ``ScriptCalls.group``)."""

    def __init__(self, calls: ScriptCalls) -> None:
        self.calls = calls
        self.groups: dict[int, tuple[Ops, list[str]]] = {}

    def ops(self, partition: int) -> tuple[Ops, int]:
        """Return the commands of a partition's call and its dashboard's place in it."""
        group = self.calls.group(partition)
        found = self.groups.get(group)
        if found is None:
            found = self.groups[group] = (Ops(), [])
        ops, dashes = found
        dash = self.calls.dashes[partition]
        if dash not in dashes:
            dashes.append(dash)
        return ops, dashes.index(dash) + 1

    async def send(self, what: str, offsets: Offsets | None = None) -> Awaitable[set[str]]:
        """Send the write now; return what to await for all of it to have landed.

        The awaited result is the sessions whose rows Redis held already (see S). A
        single Redis gets one call; Redis Cluster, one call per master, with a part per
        partition (``ScriptCalls.send_parts``).

        Each part carries the fence of its partitions (``expected``); once they have
        landed, the offsets raised are what this worker knows Redis holds.
        """
        calls = self.calls
        clustered = calls.clustered
        parts: list[tuple[str, bytes]] = []
        replies = []
        for group in sorted(self.groups):
            ops, dashes = self.groups[group]
            if not ops.argv:
                continue
            names = ops.keys
            if not names:  # a call without keys of its own: give it one of its slot
                names.append(dashes[0] + ":meta")
            fence = calls.fence(names, ops.index, group)
            part = msgpack.packb(
                [ops.argv, fence, dashes, names, calls.layout.probe(group)]
                if clustered
                else [ops.argv, fence, dashes, False],
                use_bin_type=False,
            )
            if clustered:
                parts.append((names[0], part))
            else:
                args = [calls.dash_cfg, dashes[0], part]
                replies.append(await calls.send(what, calls.apply, names, args))
        if parts:
            replies.append(await calls.send_parts(what, parts))

        async def landed() -> set[str]:
            held: set[str] = set()
            for replied in replies:
                got = await replied
                for reply in got if clustered else [got]:
                    held.update(sid.decode() for sid in fenced(what, reply))
            for key, offset in (offsets or {}).items():
                if offset > calls.expected.get(key, -1):
                    calls.expected[key] = offset
            return held

        return landed()


def transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed if made again: the connection broke, or a
    cluster's slot is moving (a failover under way)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    if isinstance(exc, ClusterError | ClusterDownError | TryAgainError | AskError | MovedError):
        return True
    return isinstance(exc, ResponseError) and is_moving(exc)


def fenced(what: str, reply: T) -> T:
    """Return a script's reply, or raise RedisLost where its fence found Redis behind."""
    if reply == b"LOST":
        raise RedisLost(f"redis holds less than this worker wrote ({what} refused)")
    return reply

"""Script calls on a Redis connection of the store's own, each sent ahead of its reply.

redis-py sends a command and waits for its reply in one step, and a command started in
a task of its own reaches the socket only after a few turns of the event loop. The
worker wants to send a batch's write and go on computing the next batch while Redis
runs it; it needs to know the write is on its way. Here ``send`` returns once the
command is written to the socket, with a future for the reply. Calls go out on one
connection, so Redis runs them in the order they were sent, and their replies are read
back in that order.

The command is packed here too: a batch passes hundreds of keys, and redis-py's packer
handles each argument with several Python calls.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

Arg = bytes | str | int | float


def _bytes(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def pack(args: Sequence[Arg]) -> bytes:
    """Encode a command as Redis's protocol (RESP) expects it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ScriptLane:
    """Sends EVALSHA calls in order on one connection; replies come back as futures."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._conn: AbstractConnection | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    async def send(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """Send a script call; return once it is written, with the future of its reply.

        A connection failure while sending raises here; one while waiting for the reply
        is set on the future of every call still waiting (their replies are lost).
        """
        command = pack([b"EVALSHA", script.sha, len(keys), *keys, *args])
        return (await self._send_packed(command, 1))[0]

    async def _send_packed(self, data: bytes, count: int) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        replies: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(count)]
        async with self._sending:
            if self._conn is None:
                self._conn = await self.client.connection_pool.get_connection()
            conn = self._conn
            self._waiting.extend(replies)
            try:
                await conn.send_packed_command(data, check_health=False)
            except BaseException as exc:
                self._fail(exc)
                raise
            if self._reader is None or self._reader.done():
                self._reader = asyncio.ensure_future(self._read(conn))
        return replies

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Send a script call and wait for its reply."""
        return await self.reply(script, await self.send(script, keys, args), keys, args)

    async def reply(
        self,
        script: AsyncScript,
        sent: asyncio.Future[Any],
        keys: Sequence[str],
        args: Sequence[Arg],
    ) -> Any:
        """Wait for a sent call's reply; a script Redis has not loaded is loaded and run."""
        try:
            return await sent
        except NoScriptError:
            # Redis lost its scripts (a restart, SCRIPT FLUSH): load it and call again.
            script.sha = await self.client.script_load(script.script)
            return await (await self.send(script, keys, args))

    async def _read(self, conn: AbstractConnection) -> None:
        while self._waiting:
            try:
                value: Any = await conn.read_response()
            except ResponseError as exc:  # the call failed; the connection is fine
                value = exc
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                self._fail(exc)
                return
            reply = self._waiting.popleft()
            if reply.done():
                continue
            if isinstance(value, ResponseError):
                reply.set_exception(value)
            else:
                reply.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        """The connection broke: every call still waiting has lost its reply."""
        if isinstance(exc, asyncio.CancelledError):
            exc = ConnectionError("the reply was not read: cancelled")
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.done():
                reply.set_exception(exc)
                reply.exception()  # a caller that gave up must not make it "never retrieved"
        conn = self._conn
        if conn is not None and conn.is_connected:
            asyncio.ensure_future(conn.disconnect(nowait=True))

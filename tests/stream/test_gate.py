"""Sessions held by one job are waited for by another, and only those."""

from __future__ import annotations

import asyncio

from stream.gate import SessionGate


def test_a_job_waits_only_for_the_sessions_it_needs() -> None:
    async def run() -> list[str]:
        gate = SessionGate()
        order: list[str] = []
        await gate.hold(["a", "b"])

        async def job(name: str, sids: list[str]) -> None:
            held = await gate.hold(sids)
            order.append(name)
            gate.let_go(held)

        other = asyncio.create_task(job("other sessions", ["c"]))
        same = asyncio.create_task(job("same session", ["b", "d"]))
        await asyncio.sleep(0.01)
        assert order == ["other sessions"]  # "b" is still held
        assert "d" not in gate.held  # nothing is held while waiting
        order.append("first job done")
        gate.let_go(["a", "b"])
        await asyncio.gather(other, same)
        assert not gate.held
        return order

    assert asyncio.run(run()) == ["other sessions", "first job done", "same session"]


def test_the_sweep_takes_only_the_free_sessions_and_never_waits() -> None:
    async def run() -> None:
        gate = SessionGate()
        await gate.hold(["busy"])
        assert gate.hold_free(["idle", "busy", "idle", "other"]) == ["idle", "other"]
        assert gate.held == {"busy", "idle", "other"}
        gate.let_go(["idle", "other"])
        assert gate.held == {"busy"}

    asyncio.run(run())


def test_a_waiting_job_holds_once_every_session_it_needs_is_free() -> None:
    async def run() -> None:
        gate = SessionGate()
        await gate.hold(["a"])
        closing = gate.hold_free(["b"])
        waiter = asyncio.create_task(gate.hold(["a", "b"]))
        await asyncio.sleep(0.01)
        gate.let_go(["a"])
        await asyncio.sleep(0.01)
        assert not waiter.done()  # "b" is still being closed
        gate.let_go(closing)
        assert sorted(await waiter) == ["a", "b"]

    asyncio.run(run())

"""Agents' presence (connected, disconnected, last heartbeat) written in batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from proto.ids import new_activation, new_instance_id
from server.batching import PresenceWriter
from server.storage import Repository
from tests.harness import Agent, Server, wait_for
from tests.test_storage import BACKENDS, database


@pytest.fixture(params=BACKENDS)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Repository]:
    async with database(request.param, tmp_path) as url:
        opened = await Repository.open(url)
        try:
            yield opened
        finally:
            await opened.close()


async def _register(repo: Repository, count: int) -> list[str]:
    activation = new_activation()
    await repo.create_activation(*activation, "local", usage_limit=count,
                                 expires_at=time.time() + 60, description="",
                                 created_by="admin")
    ids = []
    for _ in range(count):
        iid = new_instance_id()
        await repo.register_instance(*activation, "local", iid, b"k" * 32, {"hostname": "old"})
        ids.append(iid)
    return ids


async def test_mark_presence_in_one_transaction(repo: Repository) -> None:
    a, b, c, d, e = await _register(repo, 5)
    await repo.mark_connected(c, {}, "r1")
    await repo.mark_connected(d, {}, "r2")
    before = time.time()
    await repo.mark_presence(
        {a: {"hostname": "a\x00", "agent_version": "2.0"}, b: {"hostname": "b" * 300}, e: {}},
        disconnected=[c, d], heartbeats=[], replica="r1")
    rows = {iid: await repo.instance(iid) for iid in (a, b, c, d, e)}
    assert rows[e]["connected"] is True and rows[e]["replica"] == "r1"
    assert rows[e]["hostname"] == "old" and rows[e]["last_heartbeat"] >= before
    assert rows[a]["connected"] is True and rows[a]["replica"] == "r1"
    assert (rows[a]["hostname"], rows[a]["agent_version"]) == ("a\ufffd", "2.0")
    assert rows[b]["hostname"] == "b" * 256 and rows[b]["last_heartbeat"] >= before
    assert rows[c]["connected"] is False
    assert rows[d]["connected"] is True  # held by another replica: not ours to mark
    await asyncio.sleep(0.01)
    many = [new_instance_id() for _ in range(1100)] + [a]  # more than one IN (...) takes
    await repo.mark_presence({}, [], many, "r1")
    assert (await repo.instance(a))["last_heartbeat"] > rows[a]["last_heartbeat"]
    assert (await repo.instance(b))["last_heartbeat"] == rows[b]["last_heartbeat"]


async def test_record_boots_of_many(repo: Repository) -> None:
    a, b = new_instance_id(), new_instance_id()
    await repo.record_boot(a, "boot-1")
    await repo.record_boots({a: "boot-2", b: "boot-1"} | {new_instance_id(): "x"
                                                            for _ in range(700)})
    assert await repo.instance_boot_ids([a, b]) == {a: "boot-2", b: "boot-1"}
    assert await repo.reboot_targets_of([a, b]) == {}
    assert await repo.active_tasks_of_instances([a, b]) == {}


async def test_writer_group_commits(repo: Repository) -> None:
    ids = await _register(repo, 60)
    commits = 0

    def count(*_: object) -> None:
        nonlocal commits
        commits += 1

    async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + 5
        while not await check():
            assert time.monotonic() < deadline, f"{what} not written"
            await asyncio.sleep(0.02)

    async def rows() -> dict[str, dict]:
        return {r["id"]: r for r in await repo.list_instances(ids=ids)}

    sa.event.listen(repo.engine.sync_engine, "commit", count)
    writer = PresenceWriter(repo, "r1", heartbeat_every=0.2)
    writer.start()
    try:
        for n, iid in enumerate(ids):  # a report with changes, or none
            writer.connected(iid, {"hostname": f"h{n}"} if n % 2 else {})
        await until("60 connections", lambda: _all_connected(rows))
        assert commits < 10  # far fewer transactions than agents
        now = await rows()
        assert now[ids[1]]["hostname"] == "h1" and now[ids[2]]["hostname"] == "old"
        writer.disconnected(ids[1])
        writer.heartbeat(ids[0])

        async def beat_and_gone() -> bool:
            later = await rows()
            return later[ids[0]]["last_heartbeat"] > now[ids[0]]["last_heartbeat"] \
                and not later[ids[1]]["connected"]

        await until("a heartbeat and a disconnection", beat_and_gone)
        # a disconnection followed by a new connection: the newer state wins
        writer.disconnected(ids[2])
        writer.connected(ids[2], {"hostname": "again"})

        async def again() -> bool:
            row = (await rows())[ids[2]]
            return row["hostname"] == "again" and row["connected"]

        await until("the newer connection", again)
        writer.disconnected(ids[3])
    finally:
        await writer.close()
        sa.event.remove(repo.engine.sync_engine, "commit", count)
    assert (await repo.instance(ids[3]))["connected"] is False  # written on close


async def _all_connected(rows: Callable[[], Awaitable[dict[str, dict]]]) -> bool:
    return all(r["connected"] for r in (await rows()).values())


@pytest.mark.slow
def test_heartbeats_reach_the_instance_list(tmp_path: Path) -> None:
    server = Server(tmp_path, heartbeat_interval=1.0, agent_offline_after=5.0).start()
    agent = None
    try:
        agent = Agent(server, tmp_path / "agent").start()

        def last_heartbeat() -> float:
            row = server.instance(agent.instance_id)
            assert row is not None and row["LastHeartbeatTime"]
            return datetime.fromisoformat(row["LastHeartbeatTime"].replace("Z", "+00:00")
                                          ).timestamp()

        first = last_heartbeat()
        wait_for(lambda: last_heartbeat() > first + 1, 20, "a later heartbeat in the list")
        assert server.online(agent.instance_id)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()

"""Replicas sharing one database fire each scheduled run once (on both backends)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from server.storage import Repository
from tests.test_storage import _invoke, another, repo  # noqa: F401  (fixtures)


async def test_a_scheduled_run_is_claimed_once(
        repo: Repository, tmp_path: Path) -> None:  # noqa: F811
    other = await another(repo, tmp_path)
    try:
        invocation_id = await _invoke(repo, ["mi-a", "mi-b"], repeat_mode="Period",
                                      frequency="rate(1m)", next_run_at=1.0, repeats=3)
        rows = [{"instance_id": i, "repeat": 4} for i in ("mi-a", "mi-b")]
        won = await asyncio.gather(*(
            r.add_tasks(invocation_id, rows, after_repeat=3, repeats=4, next_run_at=61.0)
            for r in (repo, other, repo, other)), return_exceptions=True)
        assert sorted(won, key=str) == [False, False, False, True]
        inv = await repo.invocation(invocation_id)
        assert inv is not None and inv["repeats"] == 4 and inv["next_run_at"] == 61.0
        results, _ = await repo.results_of(invocation_id, include_history=True, limit=100)
        assert sorted((r["instance_id"], r["repeat"]) for r in results) == [
            ("mi-a", 4), ("mi-b", 4)]
        # the next run claims from the new count only
        assert not await repo.add_tasks(invocation_id, rows, after_repeat=3, repeats=4)
    finally:
        await other.close()

"""RunCommand: create an invocation, deliver it to agents, store their results."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from proto.ids import new_invocation_id
from proto.messages import CommandResult, CommandResultAck, CommandRun
from server.gateway import AgentLink, Gateway
from server.storage import FINAL_STATUSES, Repository

log = logging.getLogger("porthole.commands")

API_OUTPUT_LIMIT = 24 * 1024


def aggregate_status(statuses: Sequence[str]) -> str:
    """Invocation status from the per-instance statuses (Cloud Assistant's model)."""
    if not statuses:
        return "Pending"
    if any(s not in FINAL_STATUSES for s in statuses):
        return "Running" if any(s == "Running" for s in statuses) else "Pending"
    if all(s == "Success" for s in statuses):
        return "Success"
    if any(s == "Success" for s in statuses):
        return "PartialFailed"
    return "Failed"


class CommandService:
    def __init__(self, repo: Repository, gateway: Gateway) -> None:
        self.repo = repo
        self.gateway = gateway
        gateway.handlers[CommandResult] = self._on_result

    async def run(
        self, instance_ids: Sequence[str], content: str, command_type: str, username: str,
        timeout: int, working_dir: str, created_by: str,
    ) -> str:
        invocation_id = new_invocation_id()
        targets = []
        online = []
        for iid in instance_ids:
            if self.gateway.link(iid) is not None:
                targets.append((iid, "Pending", ""))
                online.append(iid)
            else:
                targets.append((iid, "Failed", "ClientNotRunning"))
        await self.repo.create_invocation(
            {"id": invocation_id, "command_type": command_type, "command_content": content,
             "username": username, "timeout": timeout, "working_dir": working_dir,
             "created_by": created_by},
            targets,
        )
        message = CommandRun(invocation_id, content, username, timeout, working_dir, command_type)
        for iid in online:
            link = self.gateway.link(iid)
            try:
                if link is None:
                    raise ConnectionError("agent went away")
                await link.send(message)
            except (ConnectionError, RuntimeError) as exc:
                log.warning("could not deliver %s to %s: %s", invocation_id, iid, exc)
                await self.repo.store_result(iid, {
                    "invocation_id": invocation_id, "status": "Failed",
                    "error_code": "DeliveryFailed", "error_info": str(exc),
                    "finished_at": time.time(),
                })
            else:
                await self.repo.set_result_status(invocation_id, iid, "Running")
        return invocation_id

    async def _on_result(self, link: AgentLink, result: CommandResult, _raw: bytes) -> None:
        await self.store_result(link.instance_id, result)
        await link.send(CommandResultAck(result.invocation_id))

    async def store_result(self, instance_id: str, result: CommandResult) -> None:
        stored = await self.repo.store_result(instance_id, {
            "invocation_id": result.invocation_id,
            "status": result.status,
            "exit_code": result.exit_code,
            "error_code": result.error_code,
            "error_info": result.error_info[:4000],
            "output": result.output,
            "dropped": result.dropped,
            "started_at": result.started_at,
            "finished_at": result.finished_at,
        })
        if not stored:
            log.info("result of %s from %s was already stored", result.invocation_id, instance_id)

    async def results(self, invocation_id: str) -> list[dict[str, Any]]:
        return await self.repo.invocation_results_for(invocation_id)

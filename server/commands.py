"""Invocations: create them, deliver their tasks to agents, store results, stop them.

Parameters never become shell text. With EnableParameter, each ``{{name}}`` placeholder in
the script is replaced by a reference to an environment variable (``${PORTHOLE_PARAM_name}``
for shell scripts, ``$env:…`` for PowerShell, ``%…%`` for batch) and the value travels
beside the script in the task's environment. The shell expands a variable after parsing the
script, so a value such as ``$(reboot)``, ``; rm -rf /`` or a backtick is data, never code.
Write ``"{{name}}"`` (double quotes) to get the value as one word, exactly as given.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proto.commands import (
    MAX_TASK_OUTPUT,
    AgentBoot,
    FileSend,
    TaskOutput,
    TaskOutputRequest,
    TaskResult,
    TaskResultAck,
    TaskRun,
    TaskStop,
    is_task_id,
    split_task_id,
    task_id,
)
from proto.ids import new_invocation_id
from proto.messages import Message
from server.batching import Coalesced
from server.gateway import AgentLink, Gateway
from server.scheduler import Dispatcher, parse_frequency
from server.storage import FINAL_STATUSES, Repository
from server.store_commands import REBOOT_MODES, TaskKey, dumps

log = logging.getLogger("porthole.commands")

API_OUTPUT_LIMIT = 24 * 1024
MAX_PARAM_VALUE = 4096
MAX_PARAMS_TOTAL = 16 * 1024
PLACEHOLDER = re.compile(r"\{\{\s*(ACS::[A-Za-z]+|[A-Za-z0-9_-]{1,64})\s*\}\}")
BUILTIN_PARAMS = ("ACS::InstanceId", "ACS::RegionId", "ACS::InvokeId", "ACS::CommandId")


class ParameterError(ValueError):
    """A parameter name or value is unusable; str() says which and why."""


# --- parameters ----------------------------------------------------------------------------


def env_name(name: str) -> str:
    if name.startswith("ACS::"):
        return "PORTHOLE_ACS_" + name[5:]
    return "PORTHOLE_PARAM_" + name.replace("-", "_")


def parameter_names(content: str) -> list[str]:
    """Custom placeholders of a script, in order of first use (built-ins excluded)."""
    names = list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(content)))
    for name in names:
        if name.startswith("ACS::") and name not in BUILTIN_PARAMS:
            raise ParameterError(f"unknown built-in parameter {{{{{name}}}}}; known: "
                                 + ", ".join(BUILTIN_PARAMS))
    custom = [n for n in names if not n.startswith("ACS::")]
    seen: dict[str, str] = {}
    for name in custom:
        other = seen.setdefault(env_name(name), name)
        if other != name:
            raise ParameterError(f"parameters {other!r} and {name!r} differ only in - and _")
    return custom


def check_values(values: Mapping[str, Any], what: str = "Parameters") -> dict[str, str]:
    out: dict[str, str] = {}
    total = 0
    for name, value in values.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ParameterError(f"{what}: {str(name)[:70]!r} is not a parameter name "
                                 "(letters, digits, - and _, up to 64)")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ParameterError(f"{what}: value of {name!r} must be a string")
        text = str(value)
        if "\0" in text:
            raise ParameterError(f"{what}: value of {name!r} contains a NUL character")
        if len(text.encode()) > MAX_PARAM_VALUE:
            raise ParameterError(f"{what}: value of {name!r} is longer than {MAX_PARAM_VALUE} "
                                 "bytes")
        total += len(text.encode())
        out[name] = text
    if total > MAX_PARAMS_TOTAL:
        raise ParameterError(f"{what}: values add up to more than {MAX_PARAMS_TOTAL} bytes")
    return out


def resolve_parameters(content: str, given: Mapping[str, str],
                       defaults: Mapping[str, str]) -> dict[str, str]:
    """The value of every placeholder: given, else default; unknown or missing ones refused."""
    names = parameter_names(content)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ParameterError(f"the command has no parameter {', '.join(unknown)} "
                             f"(it has: {', '.join(names) or 'none'})")
    values = {**{k: v for k, v in defaults.items() if k in names}, **given}
    missing = [n for n in names if n not in values]
    if missing:
        raise ParameterError(f"no value for parameter {', '.join(missing)} and no default")
    return values


def render(content: str, command_type: str) -> str:
    """The script with each placeholder turned into an environment variable reference."""
    def ref(m: re.Match[str]) -> str:
        var = env_name(m.group(1))
        if command_type == "RunPowerShellScript":
            return f"$env:{var}"
        if command_type == "RunBatScript":
            return f"%{var}%"
        return "${" + var + "}"

    return PLACEHOLDER.sub(ref, content)


def task_env(inv: Mapping[str, Any], instance_id: str) -> dict[str, str]:
    if not inv["parameters"]:  # parameters disabled: placeholders stay literal text
        return {}
    env = {env_name(k): v for k, v in json.loads(inv["parameters"]).items()}
    env.update({
        env_name("ACS::InstanceId"): instance_id, env_name("ACS::RegionId"): inv["region"],
        env_name("ACS::InvokeId"): inv["id"], env_name("ACS::CommandId"): inv["command_id"],
    })
    return env


# --- status model --------------------------------------------------------------------------


def invocation_status(inv: Mapping[str, Any], counts: Mapping[str, int],
                      targets_waiting: bool = False) -> str:
    """Cloud Assistant's invocation status from its instances' latest statuses."""
    busy = counts.get("Running", 0) + counts.get("Stopping", 0)
    pending = counts.get("Pending", 0)
    finals = {s: n for s, n in counts.items() if s in FINAL_STATUSES and n}
    if inv["stop_requested_at"] is not None:
        return "Stopping" if busy or pending else "Stopped"
    if busy or (pending and finals):
        return "Running"
    if pending:
        return "Pending"
    if inv["next_run_at"] is not None or targets_waiting:
        return "Scheduled"
    if not finals:
        return "Pending"
    if set(finals) == {"Success"}:
        return "Success"
    return "PartialFailed" if "Success" in finals else "Failed"


# --- the service ---------------------------------------------------------------------------


@dataclass
class _Receiving:
    result: TaskResult
    expected: int


class CommandService:
    def __init__(self, repo: Repository, gateway: Gateway) -> None:
        self.repo = repo
        self.gateway = gateway
        self.dispatcher = Dispatcher(repo, lambda iid: gateway.link(iid) is not None,
                                     self._deliver, self._elsewhere)
        if gateway.bus is not None:
            gateway.bus.on_wake = self.dispatcher.wake
        self._receiving: dict[tuple[str, str], _Receiving] = {}
        self._batch: list[tuple[AgentLink, TaskKey, TaskResult]] = []
        self._boots: dict[str, str] = {}
        """Last boot id seen per instance (the database has the same)."""
        # Agents connecting together (a storm after a restart) share these queries.
        self._active_tasks: Coalesced[list[dict[str, Any]]] = Coalesced(
            repo.active_tasks_of_instances, [])
        self._stored_boots: Coalesced[str | None] = Coalesced(repo.instance_boot_ids, None)
        self._new_boots: Coalesced[list[dict[str, Any]]] = Coalesced(self._record_boots, [])
        self._flusher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        gateway.handlers[TaskResult] = self._on_result
        gateway.handlers[TaskOutput] = self._on_output
        gateway.handlers[AgentBoot] = self._on_boot
        gateway.connect_handlers.append(self._on_connect)
        gateway.disconnect_handlers.append(self._on_disconnect)

    def start(self) -> None:
        self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        if self._background:  # audit entries still being written
            await asyncio.wait(self._background, timeout=5)

    # --- creating invocations --------------------------------------------------------------

    async def invoke(self, *, instance_ids: Sequence[str], region: str, command_type: str,
                     content: str, username: str, timeout: int, working_dir: str,
                     created_by: str, parameters: Mapping[str, str] | None = None,
                     command_id: str = "", command_name: str = "", kind: str = "command",
                     file: Mapping[str, Any] | None = None, repeat_mode: str = "Once",
                     frequency: str = "", max_concurrency: int = 0, max_errors: int = -1,
                     delivery_timeout: float = 600.0) -> str:
        invocation_id = new_invocation_id()
        now = time.time()
        next_run_at = None
        if repeat_mode == "Period":
            next_run_at = parse_frequency(frequency).next_after(now, now)
        boots = await self.repo.instance_boot_ids(instance_ids) \
            if repeat_mode in REBOOT_MODES else {}
        tasks = [{"instance_id": iid, "repeat": 1, "status": "Pending"} for iid in instance_ids] \
            if repeat_mode == "Once" else []
        await self.repo.create_invocation(
            {"id": invocation_id, "region": region, "kind": kind, "command_id": command_id,
             "command_name": command_name, "command_type": command_type,
             "command_content": content,
             "parameters": dumps(dict(parameters)) if parameters is not None else "",
             "file": dumps(dict(file or {})), "username": username, "timeout": timeout,
             "working_dir": working_dir, "repeat_mode": repeat_mode, "frequency": frequency,
             "next_run_at": next_run_at, "repeats": 1 if tasks else 0,
             "max_concurrency": max_concurrency, "max_errors": max_errors,
             "delivery_timeout": delivery_timeout, "created_by": created_by},
            [(iid, boots.get(iid, "")) for iid in instance_ids], tasks)
        await self._wake_all()
        return invocation_id

    def task_message(self, inv: Mapping[str, Any], instance_id: str, repeat: int) -> Message:
        tid = task_id(inv["id"], repeat)
        if inv["kind"] == "file":
            f = json.loads(inv["file"])
            return FileSend(tid, f["TargetDir"], f["Name"],
                            base64.b64decode(inv["command_content"]), f["FileOwner"],
                            f["FileGroup"], f["FileMode"], f["Overwrite"])
        script = inv["command_content"]
        if inv["parameters"]:
            script = render(script, inv["command_type"])
        return TaskRun(tid, script, inv["username"], inv["timeout"], inv["working_dir"],
                       inv["command_type"], task_env(inv, instance_id))

    async def _deliver(self, inv: dict[str, Any], keys: list[TaskKey]) -> None:
        await asyncio.gather(*(self._send(k[1], self.task_message(inv, k[1], k[2]))
                               for k in keys))

    async def _elsewhere(self, instance_ids: list[str]) -> set[str]:
        if self.gateway.bus is None or not instance_ids:
            return set()
        held = await self.repo.instance_replicas(instance_ids)
        return {iid for iid, replica in held.items() if self.gateway.live_other(replica)}

    async def _wake_all(self) -> None:
        """Other replicas deliver to the agents they hold: tell them there is work."""
        self.dispatcher.wake()
        if self.gateway.bus is not None:
            await self.gateway.bus.wake()

    async def _send(self, instance_id: str, message: Message) -> None:
        link = await self.gateway.route(instance_id)
        if link is None:
            return  # sent again when the agent reconnects (see _on_connect)
        try:
            await link.send(message)
        except (ConnectionError, RuntimeError) as exc:
            log.info("could not send %s to %s now (%s); it is resent on reconnection",
                     message.TYPE, instance_id, exc)

    # --- stopping --------------------------------------------------------------------------

    async def stop_invocation(self, inv: Mapping[str, Any],
                              instance_ids: Sequence[str] = ()) -> int:
        """Cancel what has not started, end what runs, cancel the schedule. Returns how many
        tasks were affected."""
        if not instance_ids:
            await self.repo.update_invocation(inv["id"], stop_requested_at=time.time(),
                                              next_run_at=None)
        else:
            for iid in instance_ids:
                await self.repo.update_target(inv["id"], iid, done=True)
        rows, _ = await self.repo.results_of(inv["id"], include_history=True, limit=10**6)
        chosen = set(instance_ids)
        rows = [r for r in rows if not chosen or r["instance_id"] in chosen]
        pending = [(r["invocation_id"], r["instance_id"], r["repeat"]) for r in rows
                   if r["status"] == "Pending"]
        running = [(r["invocation_id"], r["instance_id"], r["repeat"]) for r in rows
                   if r["status"] in ("Running", "Stopping")]
        changed = await self.repo.set_tasks(pending, only_from=("Pending",), status="Cancelled",
                                            error_info="stopped before it was sent")
        changed += await self.repo.set_tasks(running, only_from=("Running",),
                                             status="Stopping")
        await asyncio.gather(*(self._send(k[1], TaskStop(task_id(k[0], k[2])))
                               for k in running))
        self.dispatcher.wake()
        return changed

    # --- agent messages --------------------------------------------------------------------

    async def _on_connect(self, link: AgentLink) -> None:
        """Re-send what the agent may have missed: tasks marked running, stops requested.
        The agent ignores tasks it already has, so a repeat is harmless."""
        invs: dict[str, dict[str, Any] | None] = {}
        for t in await self._active_tasks.get(link.instance_id):
            key = (t["invocation_id"], t["instance_id"], t["repeat"])
            if t["status"] == "Stopping":
                await self._send(link.instance_id, TaskStop(task_id(key[0], key[2])))
                continue
            if key[0] not in invs:
                invs[key[0]] = await self.repo.invocation(key[0])
            inv = invs[key[0]]
            if inv is not None:
                await self._send(link.instance_id, self.task_message(inv, key[1], key[2]))
        self.dispatcher.wake()

    async def _on_disconnect(self, instance_id: str) -> None:
        for k in [k for k in self._receiving if k[0] == instance_id]:
            del self._receiving[k]

    async def _on_boot(self, link: AgentLink, message: AgentBoot, _raw: bytes) -> None:
        boot_id = message.boot_id[:64]
        if self._boots.get(link.instance_id) == boot_id:
            return  # a reconnection, not a reboot: nothing to write or to start
        if link.instance_id not in self._boots \
                and await self._stored_boots.get(link.instance_id) == boot_id:
            self._boots[link.instance_id] = boot_id
            return
        self._boots[link.instance_id] = boot_id
        fired = 0
        for target in await self._new_boots.get(link.instance_id):
            if not target["boot_id"]:
                await self.repo.update_target(target["invocation_id"], link.instance_id,
                                              boot_id=boot_id)
            elif target["boot_id"] != boot_id:
                repeat = await self.repo.next_repeat(target["invocation_id"], link.instance_id)
                await self.repo.add_tasks(target["invocation_id"], [
                    {"instance_id": link.instance_id, "repeat": repeat}])
                await self.repo.update_target(
                    target["invocation_id"], link.instance_id, boot_id=boot_id,
                    done=target["repeat_mode"] == "NextRebootOnly")
                fired += 1
        if fired:
            log.info("%s rebooted: %d invocations start on it", link.instance_id, fired)
            await self.repo.audit(principal="system/scheduler", action="ecs:InvokeCommand",
                                  resource=self.gateway.instance_arn(link.region,
                                                                     link.instance_id),
                                  outcome="Allowed",
                                  detail=f"instance rebooted (boot id {boot_id}): "
                                         f"{fired} reboot invocations started")
            self.dispatcher.wake()

    async def _record_boots(self, instance_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Store the new boot ids (from _boots) of these instances; their reboot targets."""
        await self.repo.record_boots({iid: self._boots[iid] for iid in instance_ids})
        return await self.repo.reboot_targets_of(instance_ids)

    def _key(self, link: AgentLink, tid: str) -> TaskKey | None:
        if not is_task_id(tid):
            log.warning("agent %s sent a malformed task id %r", link.instance_id, tid[:80])
            return None
        invocation_id, repeat = split_task_id(tid)
        return invocation_id, link.instance_id, repeat

    async def _on_result(self, link: AgentLink, result: TaskResult, _raw: bytes) -> None:
        key = self._key(link, result.task_id)
        if key is None:
            return
        if 0 <= result.output_size <= len(result.head):  # the usual case: one frame
            self._batch.append((link, key, result))
            if len(self._batch) == 1:
                asyncio.get_running_loop().call_soon(self._start_flush)
            return
        row = await self.repo.task(key)
        if row is None or row["status"] in FINAL_STATUSES:
            await link.send(TaskResultAck(result.task_id))  # a resend, or not ours: forget it
            return
        size = max(0, min(result.output_size, MAX_TASK_OUTPUT))
        head = result.head[:size]
        await self.repo.add_output(key, 0, head)
        received = len(head) if size <= len(head) else await self.repo.output_received(key)
        if received >= size:
            await self._finish(link, key, result, size)
            return
        self._receiving[(link.instance_id, result.task_id)] = _Receiving(result, received)
        await link.send(TaskOutputRequest(result.task_id, received))

    async def _on_output(self, link: AgentLink, message: TaskOutput, _raw: bytes) -> None:
        state = self._receiving.get((link.instance_id, message.task_id))
        key = self._key(link, message.task_id)
        if state is None or key is None or message.offset != state.expected:
            return  # stale: the agent sends its result again after reconnecting
        size = max(0, min(state.result.output_size, MAX_TASK_OUTPUT))
        data = message.data[:size - state.expected]
        await self.repo.add_output(key, message.offset, data)
        state.expected += len(data)
        if not data or state.expected >= size:  # empty: the agent has no more than this
            del self._receiving[(link.instance_id, message.task_id)]
            await self._finish(link, key, state.result, state.expected)
        else:
            await link.send(TaskOutputRequest(message.task_id, state.expected))

    def _start_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Store the results that arrived together in one transaction, then ack them."""
        while self._batch:
            batch, self._batch = self._batch, []
            t0 = time.perf_counter()
            try:
                stored = await self.repo.store_results([
                    (key, r.head[:r.output_size], _values(r, r.output_size))
                    for _, key, r in batch])
            except Exception:  # not acknowledged: the agents send these results again
                log.exception("could not store %d results", len(batch))
                continue
            for (link, _, r), fresh in zip(batch, stored, strict=True):
                if not fresh:
                    log.info("result of %s from %s was already stored", r.task_id,
                             link.instance_id)
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await link.send(TaskResultAck(r.task_id))
            self._audit_ends([(key, r) for (_, key, r), fresh in zip(batch, stored, strict=True)
                              if fresh])
            log.log(logging.INFO if len(batch) >= 100 else logging.DEBUG,
                    "stored %d results in %.3f s", len(batch), time.perf_counter() - t0)
            self.dispatcher.wake()

    async def _finish(self, link: AgentLink, key: TaskKey, r: TaskResult, size: int) -> None:
        stored = await self.repo.store_result(key, _values(r, size))
        if not stored:
            log.info("result of %s from %s was already stored", r.task_id, link.instance_id)
        await link.send(TaskResultAck(r.task_id))
        if stored:
            self._audit_ends([(key, r)])
        self.dispatcher.wake()

    def _audit_ends(self, ended: list[tuple[TaskKey, TaskResult]]) -> None:
        """Audit each instance's end of an invocation, after the acks: the trail is written
        in the background so that storing results stays one commit."""
        if ended:
            task = asyncio.create_task(self._write_ends(ended))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _write_ends(self, ended: list[tuple[TaskKey, TaskResult]]) -> None:
        invocations: dict[str, dict[str, Any] | None] = {}
        entries = []
        for (invocation_id, instance_id, repeat), r in ended:
            if invocation_id not in invocations:
                invocations[invocation_id] = await self.repo.invocation(invocation_id)
            inv = invocations[invocation_id] or {}
            entries.append({
                "principal": f"user/{inv.get('created_by', '')}", "action": "InvocationEnd",
                "resource": self.gateway.instance_arn(inv.get("region", ""), instance_id),
                "outcome": r.status if r.status in FINAL_STATUSES else "Error",
                "detail": json.dumps({"InvokeId": invocation_id, "Repeat": repeat,
                                      "ExitCode": r.exit_code, "ErrorCode": r.error_code[:64]}),
            })
        try:
            await self.repo.audit_many(entries)
        except Exception:
            log.exception("could not audit the end of %d tasks", len(entries))

    # --- reading ---------------------------------------------------------------------------

    async def read_output(self, key: TaskKey, offset: int, length: int) -> bytes:
        return await self.repo.read_output(key, offset, length)


def _values(r: TaskResult, size: int) -> dict[str, Any]:
    return {
        "status": r.status if r.status in FINAL_STATUSES else "Error",
        "exit_code": r.exit_code, "error_code": r.error_code[:64],
        "error_info": r.error_info[:4000], "output_size": size,
        "dropped": max(0, r.dropped) + max(0, r.output_size - size),
        "started_at": r.started_at or None, "finished_at": r.finished_at or time.time(),
    }


def decode_content(content: str, encoding: str, name: str = "CommandContent") -> str:
    """Plain text or base64 of UTF-8; raises ValueError with a one-line reason."""
    if encoding == "Base64":
        try:
            content = base64.b64decode(content, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(f"{name} is not base64 of UTF-8 text") from None
    if "\x00" in content:
        raise ValueError(f"{name} must not contain NUL characters")
    return content

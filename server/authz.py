"""The single authorization entry point every API handler goes through."""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.errors import ApiError
from server.policy import BUILTIN_POLICIES, Decision, Policy, evaluate, parse_policy

_BUILTIN_PARSED = {name: parse_policy(doc) for name, doc in BUILTIN_POLICIES.items()}
_INSTANCE_ARN = re.compile(r"^acs:ecs:[^:]*:[^:]*:instance/(mi-[0-9a-f]{17})$")


@dataclass
class Principal:
    """An authenticated caller and the policies that apply to it."""

    name: str
    key_id: str
    policies: list[tuple[str, Policy]] = field(default_factory=list)
    source_ip: str = ""
    secure_transport: bool = True
    kind: str = "user"
    """"user", or "assumed-role" for temporary credentials (name is then ROLE/SESSION)."""
    expires_at: float | None = None

    @property
    def arn(self) -> str:
        return f"{self.kind}/{self.name}"

    def ram_arn(self, account: str) -> str:
        return f"acs:ram::{account}:{self.kind}/{self.name}"


def policies_named(names: list[str]) -> list[tuple[str, Policy]]:
    """The built-in policies among `names` (custom ones come from load_policies)."""
    return [(n, _BUILTIN_PARSED[n]) for n in names if n in _BUILTIN_PARSED]


@functools.lru_cache(maxsize=2048)
def _parse_stored(document: str) -> Policy:
    return parse_policy(document)


async def load_policies(repo: Any, names: Sequence[str]) -> list[tuple[str, Policy]]:
    """Built-in and custom policies (each at its default version) by name; names that no
    longer exist grant nothing."""
    out = policies_named(list(names))
    custom = await repo.default_documents([n for n in names if n not in _BUILTIN_PARSED])
    for name in names:
        if name in custom:
            version, document = custom[name]
            out.append((f"{name}:{version}", _parse_stored(document)))
    return out


# --- instance tags (ecs:tag/<key>) ----------------------------------------------------------


class _TagIndex:
    """Instance tags kept in memory for the policy engine; reloaded when the stored
    generation counter moves (so every server replica sees changes on its next request)."""

    def __init__(self) -> None:
        self.generation = -1
        self.tags: dict[str, dict[str, str]] = {}

    async def refresh(self, repo: Any) -> None:
        if await repo.tags_generation() != self.generation:
            self.generation, self.tags = await repo.all_instance_tags()

    def context_for(self, resource: str) -> dict[str, str]:
        m = _INSTANCE_ARN.match(resource)
        if not m:
            return {}
        return {f"ecs:tag/{k}": v for k, v in self.tags.get(m.group(1), {}).items()}


TAGS = _TagIndex()


def authorize(
    principal: Principal, action: str, resource: str, context: Mapping[str, object] | None = None
) -> Decision:
    """Evaluate the principal's policies; raise a 403 ApiError naming what was refused."""
    full_context: dict[str, object] = {
        "acs:SourceIp": principal.source_ip,
        "acs:CurrentTime": datetime.datetime.now(datetime.UTC),
        "acs:SecureTransport": principal.secure_transport,
    }
    full_context.update(TAGS.context_for(resource))
    full_context.update(context or {})
    decision = evaluate(principal.policies, action, resource, full_context)
    if not decision.allowed:
        raise ApiError(
            403,
            "Forbidden.RAM",
            f"{principal.arn} is not allowed to perform {action} on {resource}: "
            f"{decision.reason}",
        )
    return decision

"""The single authorization entry point every API handler goes through."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.errors import ApiError
from server.policy import BUILTIN_POLICIES, Decision, Policy, evaluate, parse_policy

_BUILTIN_PARSED = {name: parse_policy(doc) for name, doc in BUILTIN_POLICIES.items()}


@dataclass
class Principal:
    """An authenticated caller and the policies that apply to it."""

    name: str
    key_id: str
    policies: list[tuple[str, Policy]] = field(default_factory=list)
    source_ip: str = ""
    secure_transport: bool = True

    @property
    def arn(self) -> str:
        return f"user/{self.name}"


def policies_named(names: list[str]) -> list[tuple[str, Policy]]:
    return [(n, _BUILTIN_PARSED[n]) for n in names if n in _BUILTIN_PARSED]


def authorize(
    principal: Principal, action: str, resource: str, context: Mapping[str, object] | None = None
) -> Decision:
    """Evaluate the principal's policies; raise a 403 ApiError naming what was refused."""
    full_context: dict[str, object] = {
        "acs:SourceIp": principal.source_ip,
        "acs:CurrentTime": datetime.datetime.now(datetime.UTC),
        "acs:SecureTransport": principal.secure_transport,
    }
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

"""RAM-style access policies (Alibaba Cloud RAM / AWS IAM shape): parse, validate, evaluate.

Default deny; an explicit Deny beats every Allow. Action names compare case-insensitively,
resources case-sensitively, both with `*` and `?` wildcards. Within a Condition block all
operators and all keys must hold; the values listed for one key are alternatives.
"""

from __future__ import annotations

import ipaddress
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_KEY_PREFIXES = ("acs", "ecs", "ram", "sts")
_UNSUPPORTED = ("NotAction", "NotResource", "Principal", "NotPrincipal")
_MISSING = object()
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NET = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """Invalid policy document; str() is "<place>: <message>"."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}")
        self.place = place
        self.message = message


# ---------------------------------------------------------------- matching helpers


def _glob(pattern: str, text: str) -> bool:
    """Wildcard match (`*` any run, `?` one char); iterative, so no regex blow-up."""
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, t, p + 1
        elif p < len(pattern) and pattern[p] in ("?", text[t]):
            p, t = p + 1, t + 1
        elif star >= 0:
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _as_str(v: object) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    return None


def _as_num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _as_date(v: object) -> datetime | None:
    try:
        if isinstance(v, datetime):
            d = v
        elif isinstance(v, str):
            d = datetime.fromisoformat(v.strip())
        elif isinstance(v, int | float) and not isinstance(v, bool):
            return datetime.fromtimestamp(v, UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _as_bool(v: object) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return None


def _as_ip(v: object) -> _IP | None:
    if isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return v
    if not isinstance(v, str):
        return None
    try:
        return ipaddress.ip_address(v.strip())
    except ValueError:
        return None


def _as_net(v: object) -> _NET | None:
    if not isinstance(v, str):
        return None
    try:
        return ipaddress.ip_network(v.strip(), strict=False)
    except ValueError:
        return None


def _in_net(addr: _IP, net: _NET) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped and net.version == 4:
        addr = addr.ipv4_mapped
    return addr in net


def _ieq(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


# kind -> (policy-side converter, context-side converter, what the policy value must be)
_KINDS: dict[str, tuple[Callable[[object], Any], Callable[[object], Any], str]] = {
    "string": (_as_str, _as_str, "a string"),
    "numeric": (_as_num, _as_num, "a number"),
    "date": (_as_date, _as_date, "an ISO 8601 date such as '2026-01-01T00:00:00Z'"),
    "bool": (_as_bool, _as_bool, "'true' or 'false'"),
    "ip": (_as_net, _as_ip, "an IPv4/IPv6 address or CIDR block"),
}

# operator -> (kind, negated, match(context_value, policy_value))
_OPERATORS: dict[str, tuple[str, bool, Callable[[Any, Any], bool]]] = {
    "StringEquals": ("string", False, operator.eq),
    "StringNotEquals": ("string", True, operator.eq),
    "StringEqualsIgnoreCase": ("string", False, _ieq),
    "StringNotEqualsIgnoreCase": ("string", True, _ieq),
    "StringLike": ("string", False, lambda c, p: _glob(p, c)),
    "StringNotLike": ("string", True, lambda c, p: _glob(p, c)),
    "Bool": ("bool", False, operator.eq),
    "IpAddress": ("ip", False, _in_net),
    "NotIpAddress": ("ip", True, _in_net),
}
for _family in ("Numeric", "Date"):
    for _suffix, _fn in (("Equals", operator.eq), ("LessThan", operator.lt),
                         ("LessThanEquals", operator.le), ("GreaterThan", operator.gt),
                         ("GreaterThanEquals", operator.ge)):
        _OPERATORS[_family + _suffix] = (_family.lower(), False, _fn)
    _OPERATORS[_family + "NotEquals"] = (_family.lower(), True, operator.eq)


# ---------------------------------------------------------------- parsed document


@dataclass(frozen=True)
class Condition:
    operator: str
    key: str                   # as written; compared case-insensitively
    values: tuple[Any, ...]    # already converted (str, float, datetime, bool, ip network)

    def holds(self, context: Mapping[str, object]) -> bool:
        """`context` must have casefolded keys (evaluate() does that)."""
        kind, negated, match = _OPERATORS[self.operator]
        convert = _KINDS[kind][1]
        raw = context.get(self.key.casefold(), _MISSING)
        if raw is _MISSING:
            items: Iterable[object] = ()
        elif isinstance(raw, list | tuple | set | frozenset):
            items = raw
        else:
            items = (raw,)
        found = (convert(item) for item in items)
        matched = any(c is not None and any(match(c, p) for p in self.values) for c in found)
        return not matched if negated else matched


@dataclass(frozen=True)
class Statement:
    effect: str                         # "Allow" | "Deny"
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()

    def matches(self, action: str, resource: str) -> bool:
        """`action` must already be casefolded."""
        return (any(_glob(a.casefold(), action) for a in self.actions)
                and any(_glob(r, resource) for r in self.resources))

    def failed_condition(self, context: Mapping[str, object]) -> Condition | None:
        return next((c for c in self.conditions if not c.holds(context)), None)


@dataclass(frozen=True)
class Policy:
    version: str
    statements: tuple[Statement, ...]
    source: str          # the validated document as compact JSON, for storage/display

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.source)


# ---------------------------------------------------------------- parsing


def _at(place: str, key: object) -> str:
    return f"{place}.{key}" if place else str(key)


def _show(v: object) -> str:
    text = json.dumps(v, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(obj: Mapping[Any, Any], place: str, allowed: tuple[str, ...],
                required: tuple[str, ...]) -> None:
    for k in obj:
        if k in allowed:
            continue
        if k in _UNSUPPORTED:
            raise PolicyError(_at(place, k), f"{k} is not supported")
        hint = next((a for a in allowed if isinstance(k, str) and a.lower() == k.lower()), None)
        raise PolicyError(_at(place, k), f"unknown key {_show(k)}"
                          + (f" (did you mean {hint!r}?)" if hint else ""))
    for k in required:
        if k not in obj:
            raise PolicyError(place or "document", f"missing required key {k!r}")


def _strings(value: object, place: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise PolicyError(place, f"must be a string or a non-empty list of strings, "
                                 f"got {_show(value)}")
    for i, s in enumerate(items):
        where = place if isinstance(value, str) else f"{place}[{i}]"
        if not isinstance(s, str):
            raise PolicyError(where, f"must be a string, got {_show(s)}")
        if not s.strip():
            raise PolicyError(where, "must not be empty")
    return tuple(items)


def _parse_action(action: str, place: str) -> None:
    if action == "*":
        return
    service, sep, name = action.partition(":")
    if not sep or not service or not name:
        raise PolicyError(place, f"action {action!r} must look like 'service:Name' (or be '*')")
    if any(ch.isspace() for ch in action):
        raise PolicyError(place, f"action {action!r} must not contain whitespace")


def _parse_condition(block: object, place: str) -> tuple[Condition, ...]:
    if not isinstance(block, Mapping) or not block:
        raise PolicyError(place, "must be a non-empty object {operator: {key: value}}")
    out: list[Condition] = []
    for op, keys in block.items():
        where = _at(place, op)
        if op not in _OPERATORS:
            hint = next((o for o in _OPERATORS if isinstance(op, str) and o.lower() == op.lower()),
                        None)
            raise PolicyError(where, f"unknown condition operator {op!r}"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
        kind = _OPERATORS[op][0]
        to_value, _, expected = _KINDS[kind]
        if not isinstance(keys, Mapping) or not keys:
            raise PolicyError(where, "must be a non-empty object {key: value or [values]}")
        for key, raw in keys.items():
            kplace = _at(where, key)
            if not isinstance(key, str) or not key.strip():
                raise PolicyError(kplace, "condition key must be a non-empty string")
            prefix, sep, name = key.partition(":")
            if not sep or not prefix:
                raise PolicyError(kplace, f"condition key {key!r} has no service prefix "
                                          "(e.g. 'ecs:CommandRunAs')")
            if prefix.lower() not in _KEY_PREFIXES or not name:
                raise PolicyError(kplace, f"unknown condition key {key!r} (keys start with "
                                          + ", ".join(p + ":" for p in _KEY_PREFIXES) + ")")
            listed = isinstance(raw, list | tuple)
            items = list(raw) if listed else [raw]
            if not items:
                raise PolicyError(kplace, "must list at least one value")
            values = []
            for i, v in enumerate(items):
                vplace = f"{kplace}[{i}]" if listed else kplace
                ok = isinstance(v, str | int | float) and (kind != "ip" or isinstance(v, str))
                if isinstance(v, str) and not v.strip():
                    raise PolicyError(vplace, "must not be empty")
                converted = to_value(v) if ok else None
                if converted is None:
                    raise PolicyError(vplace, f"{op} needs {expected}, got {_show(v)}")
                values.append(converted)
            out.append(Condition(op, key, tuple(values)))
    return tuple(out)


def _parse_statement(st: object, place: str) -> Statement:
    if not isinstance(st, Mapping):
        raise PolicyError(place, f"a statement must be an object, got {_show(st)}")
    _check_keys(st, place, ("Effect", "Action", "Resource", "Condition"),
                ("Effect", "Action", "Resource"))
    effect = st["Effect"]
    if effect not in ("Allow", "Deny"):
        raise PolicyError(_at(place, "Effect"), f"must be 'Allow' or 'Deny', got {_show(effect)}")
    actions = _strings(st["Action"], _at(place, "Action"))
    for i, a in enumerate(actions):
        _parse_action(a, _at(place, "Action") + ("" if isinstance(st["Action"], str) else f"[{i}]"))
    resources = _strings(st["Resource"], _at(place, "Resource"))
    conditions = (_parse_condition(st["Condition"], _at(place, "Condition"))
                  if "Condition" in st else ())
    return Statement(effect, actions, resources, conditions)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:  # json would silently keep the last one; a second "Effect" must not
            raise PolicyError("document", f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


MAX_DOCUMENT_CHARS = 6144
"""Largest policy document accepted through the API (the RAM limit for custom policies)."""


def _decode(document: str | bytes | Mapping[str, Any]) -> Any:
    if isinstance(document, bytes | bytearray):
        try:
            document = bytes(document).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PolicyError("document", f"not valid UTF-8 (byte {e.start})") from None
    if isinstance(document, str):
        try:
            document = json.loads(document, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise PolicyError(f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") \
                from None
        except RecursionError:
            raise PolicyError("document", "JSON is nested too deeply") from None
    return document


def parse_policy(document: str | bytes | Mapping[str, Any]) -> Policy:
    """Parse and validate a policy given as JSON text/bytes or an already-decoded mapping."""
    if isinstance(document, Policy):
        return document
    document = _decode(document)
    if not isinstance(document, Mapping):
        raise PolicyError("document", f"must be a JSON object, got {_show(document)}")
    _check_keys(document, "", ("Version", "Statement"), ("Version", "Statement"))
    if not (isinstance(document["Version"], str) and document["Version"] == "1"):
        raise PolicyError("Version", f'must be "1", got {_show(document["Version"])}')
    raw = document["Statement"]
    if isinstance(raw, Mapping):
        statements = (_parse_statement(raw, "Statement"),)
    elif isinstance(raw, list | tuple) and raw:
        statements = tuple(_parse_statement(s, f"Statement[{i}]") for i, s in enumerate(raw))
    else:
        raise PolicyError("Statement", f"must be a non-empty list of statements, got {_show(raw)}")
    try:
        source = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise PolicyError("document", f"not JSON-serialisable: {e}") from None
    return Policy("1", statements, source)


# ---------------------------------------------------------------- role trust policies


@dataclass(frozen=True)
class TrustPolicy:
    """Who may assume a role: statements with a Principal ({"RAM": [ARN, ...]}) in place of
    a Resource. ``acs:ram::ACCOUNT:root`` (or the bare account id) means any RAM user of
    that account; other entries are ARNs with `*`/`?` wildcards."""

    statements: tuple[tuple[Statement, tuple[str, ...]], ...]
    source: str


def _parse_trust_statement(st: object, place: str) -> tuple[Statement, tuple[str, ...]]:
    if not isinstance(st, Mapping):
        raise PolicyError(place, f"a statement must be an object, got {_show(st)}")
    _check_keys(st, place, ("Effect", "Action", "Principal", "Condition"),
                ("Effect", "Action", "Principal"))
    principal = st["Principal"]
    where = _at(place, "Principal")
    if not isinstance(principal, Mapping) or set(principal) != {"RAM"}:
        raise PolicyError(where, 'must be {"RAM": ["acs:ram::ACCOUNT:root" or user ARNs]}')
    principals = _strings(principal["RAM"], _at(where, "RAM"))
    statement = _parse_statement({**{k: v for k, v in st.items() if k != "Principal"},
                                  "Resource": "*"}, place)
    if not any(_glob(a.casefold(), "sts:assumerole") for a in statement.actions):
        raise PolicyError(_at(place, "Action"), "a trust policy statement must name "
                                                "sts:AssumeRole")
    return statement, principals


def parse_trust_policy(document: str | bytes | Mapping[str, Any]) -> TrustPolicy:
    document = _decode(document)
    if not isinstance(document, Mapping):
        raise PolicyError("document", f"must be a JSON object, got {_show(document)}")
    _check_keys(document, "", ("Version", "Statement"), ("Version", "Statement"))
    if document["Version"] != "1":
        raise PolicyError("Version", f'must be "1", got {_show(document["Version"])}')
    raw = document["Statement"]
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise PolicyError("Statement", f"must be a non-empty list of statements, got {_show(raw)}")
    statements = tuple(_parse_trust_statement(s, f"Statement[{i}]") for i, s in enumerate(raw))
    return TrustPolicy(statements, json.dumps(document, ensure_ascii=False,
                                              separators=(",", ":")))


def _principal_matches(pattern: str, caller: str, account: str) -> bool:
    if pattern in (account, f"acs:ram::{account}:root"):
        return caller.startswith(f"acs:ram::{account}:user/")
    return _glob(pattern, caller)


def trusts(policy: TrustPolicy, caller: str, account: str,
           context: Mapping[str, object] | None = None) -> bool:
    """Does the trust policy let `caller` (a full RAM ARN) assume the role? Deny wins."""
    ctx = {k.casefold(): v for k, v in (context or {}).items()}
    allowed = False
    for statement, principals in policy.statements:
        if not (statement.matches("sts:assumerole", "*")
                and any(_principal_matches(p, caller, account) for p in principals)
                and statement.failed_condition(ctx) is None):
            continue
        if statement.effect == "Deny":
            return False
        allowed = True
    return allowed


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Decision:
    allowed: bool
    action: str
    resource: str
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def _line(s: str) -> str:
    return s if s.isprintable() else s.encode("unicode_escape").decode("ascii")


def evaluate(policies: Iterable[tuple[str, Policy]] | Mapping[str, Policy], action: str,
             resource: str, context: Mapping[str, object] | None = None) -> Decision:
    """Decide one request; never raises on odd context values."""
    action, resource = str(action), str(resource)
    ctx: dict[str, object] = {}
    if isinstance(context, Mapping):
        ctx = {k.casefold(): v for k, v in context.items() if isinstance(k, str)}
    pairs = policies.items() if isinstance(policies, Mapping) else policies
    wanted = action.casefold()
    allowed_by = near_miss = None
    for name, policy in pairs:
        for i, st in enumerate(policy.statements):
            if not st.matches(wanted, resource):
                continue
            failed = st.failed_condition(ctx)
            where = f"policy '{_line(str(name))}' Statement[{i}]"
            if failed is not None:
                if st.effect == "Allow" and near_miss is None:
                    near_miss = (f"{where} matches but its condition {failed.operator} "
                                 f"{failed.key} does not hold")
            elif st.effect == "Deny":
                return Decision(False, action, resource, f"explicitly denied by {where}")
            elif allowed_by is None:
                allowed_by = f"allowed by {where}"
    if allowed_by:
        return Decision(True, action, resource, allowed_by)
    reason = f"no policy allows {_line(action)} on {_line(resource)}"
    return Decision(False, action, resource, reason + (f" ({near_miss})" if near_miss else ""))


# ---------------------------------------------------------------- built-in policies


def _allow(*actions: str) -> dict[str, Any]:
    return {"Version": "1",
            "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}]}


ADMINISTRATOR_ACCESS: dict[str, Any] = {
    "Version": "1", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}

BUILTIN_POLICIES: dict[str, dict[str, Any]] = {
    "AdministratorAccess": ADMINISTRATOR_ACCESS,
    "ReadOnlyAccess": _allow("ecs:Describe*", "ecs:List*", "ram:Get*", "ram:List*",
                             "actiontrail:LookupEvents"),
    "SessionManagerUserAccess": {
        "Version": "1",
        "Statement": [
            {"Effect": "Allow", "Action": "ecs:StartTerminalSession", "Resource": "*"},
            {"Effect": "Allow",
             "Action": ["ecs:DescribeUserBusinessBehavior", "ecs:DescribeCloudAssistantStatus",
                        "ecs:ModifyCloudAssistantSettings"],
             "Resource": "*"},
        ],
    },
    "CommandRunnerAccess": _allow(
        "ecs:RunCommand", "ecs:InvokeCommand", "ecs:DescribeInvocations",
        "ecs:DescribeInvocationResults", "ecs:StopInvocation", "ecs:DescribeCommands",
        "ecs:DescribeInstances", "ecs:CreateCommand"),
}

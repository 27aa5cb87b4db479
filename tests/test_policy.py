import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.policy import (
    ADMINISTRATOR_ACCESS,
    BUILTIN_POLICIES,
    Decision,
    Policy,
    PolicyError,
    evaluate,
    parse_policy,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
INSTANCE = "acs:ecs:cn-hangzhou:1234567890:instance/mi-0123456789abcdef0"
COMMAND = "acs:ecs:cn-hangzhou:1234567890:command/c-0123456789"


def doc(*statements: dict) -> dict:
    return {"Version": "1", "Statement": list(statements)}


def allow(action="*", resource="*", **extra) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action="*", resource="*", **extra) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def check(document, action="ecs:RunCommand", resource=INSTANCE, context=None) -> bool:
    return evaluate([("p", parse_policy(document))], action, resource, context or {}).allowed


def cond(operator: str, key: str, value, context: dict) -> bool:
    """Does an Allow statement guarded by one condition let the request through?"""
    return check(doc(allow(Condition={operator: {key: value}})), context=context)


def load(name: str) -> Policy:
    return parse_policy((REFERENCE / name).read_text())


# ---------------------------------------------------------------- reference documents


def test_reference_files_are_all_covered():
    assert sorted(p.name for p in REFERENCE.glob("*.json")) == [
        "command-runas-allow-user01-user02.json",
        "command-runas-deny-root-system.json",
        "session-manager-user.json",
    ]


def test_reference_command_runas_allow_user01_user02():
    pol = [("runas", load("command-runas-allow-user01-user02.json"))]
    for action in ("ecs:RunCommand", "ecs:InvokeCommand", "ECS:runcommand"):
        for resource in (INSTANCE, COMMAND, "acs:ecs:eu-central-1:999:instance/i-abc"):
            for user in ("user01", "user02"):
                assert evaluate(pol, action, resource, {"ecs:CommandRunAs": user})
            for user in ("root", "user03", "User01", "", "ROOT"):
                assert not evaluate(pol, action, resource, {"ecs:CommandRunAs": user})
    # no user given means root: refused either way
    assert not evaluate(pol, "ecs:RunCommand", INSTANCE, {})
    assert not evaluate(pol, "ecs:RunCommand", INSTANCE, {"ecs:CommandRunAs": "root"})
    ok = {"ecs:CommandRunAs": "user01"}
    assert not evaluate(pol, "ecs:StartTerminalSession", INSTANCE, ok)
    assert not evaluate(pol, "ecs:CreateCommand", COMMAND, ok)
    assert not evaluate(pol, "ecs:RunCommand", "acs:ecs:cn-hangzhou:1:disk/d-1", ok)
    assert not evaluate(pol, "ecs:RunCommand", "*", ok)


def test_reference_command_runas_deny_root_system():
    pol = [("runas", load("command-runas-deny-root-system.json"))]
    for action in ("ecs:RunCommand", "ecs:InvokeCommand"):
        for resource in (INSTANCE, COMMAND):
            for user in ("ROOT", "root", "Root", "System", "system", "SYSTEM"):
                d = evaluate(pol, action, resource, {"ecs:CommandRunAs": user})
                assert not d and "no policy allows" in d.reason
            for user in ("user01", "admin", "rooted", "nobody"):
                assert evaluate(pol, action, resource, {"ecs:CommandRunAs": user})
    assert not evaluate(pol, "ecs:StartTerminalSession", INSTANCE, {"ecs:CommandRunAs": "a"})
    assert not evaluate(pol, "ecs:DeleteCommand", COMMAND, {"ecs:CommandRunAs": "a"})


def test_reference_session_manager_user():
    pol = [("smu", load("session-manager-user.json"))]
    for resource in (INSTANCE, "acs:ecs:us-west-1:42:instance/i-zzz", "*", "anything"):
        assert evaluate(pol, "ecs:StartTerminalSession", resource, {})
    for action in ("ecs:DescribeUserBusinessBehavior", "ecs:DescribeCloudAssistantStatus",
                   "ecs:ModifyCloudAssistantSettings", "ecs:modifycloudassistantsettings"):
        assert evaluate(pol, action, "*", {})
    for action in ("ecs:RunCommand", "ecs:InvokeCommand", "ecs:SendFile", "ram:CreateUser",
                   "ecs:ModifyUserBusinessBehavior", "ecs:StartTerminalSessions"):
        assert not evaluate(pol, action, INSTANCE, {"ecs:CommandRunAs": "user01"})


def test_session_manager_builtin_equals_reference():
    ref = json.loads((REFERENCE / "session-manager-user.json").read_text())
    assert BUILTIN_POLICIES["SessionManagerUserAccess"] == ref
    assert parse_policy(ref) == load("session-manager-user.json")


# ---------------------------------------------------------------- built-ins


def test_builtins_parse_and_behave():
    for name, document in BUILTIN_POLICIES.items():
        assert isinstance(parse_policy(document), Policy), name
    assert BUILTIN_POLICIES["AdministratorAccess"] is ADMINISTRATOR_ACCESS
    admin = [("AdministratorAccess", parse_policy(ADMINISTRATOR_ACCESS))]
    for action in ("ram:CreateUser", "sts:AssumeRole", "ecs:RunCommand", "x:y"):
        assert evaluate(admin, action, "acs:ram::1:user/bob", {})
    ro = [("ro", parse_policy(BUILTIN_POLICIES["ReadOnlyAccess"]))]
    for action in ("ecs:DescribeInstances", "ecs:ListTagResources", "ram:GetUser", "ram:ListUsers"):
        assert evaluate(ro, action, "*", {})
    for action in ("ecs:RunCommand", "ram:CreateUser", "ecs:ModifyCloudAssistantSettings"):
        assert not evaluate(ro, action, "*", {})
    runner = [("cr", parse_policy(BUILTIN_POLICIES["CommandRunnerAccess"]))]
    for action in ("ecs:RunCommand", "ecs:InvokeCommand", "ecs:DescribeInvocations",
                   "ecs:DescribeInvocationResults", "ecs:StopInvocation",
                   "ecs:DescribeCommands", "ecs:DescribeInstances", "ecs:CreateCommand"):
        assert evaluate(runner, action, INSTANCE, {})
    for action in ("ecs:StartTerminalSession", "ecs:DeleteCommand", "ecs:SendFile"):
        assert not evaluate(runner, action, INSTANCE, {})


# ---------------------------------------------------------------- evaluation basics


def test_default_deny_and_reason():
    d = evaluate([], "ecs:RunCommand", INSTANCE, {})
    assert d == Decision(False, "ecs:RunCommand", INSTANCE,
                         f"no policy allows ecs:RunCommand on {INSTANCE}")
    assert not d and not bool(d)
    assert not check(doc(allow("ecs:Describe*")))


def test_explicit_deny_beats_allow_across_policies_and_order():
    admin = ("admin", parse_policy(ADMINISTRATOR_ACCESS))
    no_root = ("deny-root", parse_policy(doc(deny(
        "ecs:RunCommand", Condition={"StringEqualsIgnoreCase": {"ecs:CommandRunAs": "root"}}))))
    for pols in ([admin, no_root], [no_root, admin]):
        d = evaluate(pols, "ecs:RunCommand", INSTANCE, {"ecs:CommandRunAs": "Root"})
        assert not d
        assert d.reason == "explicitly denied by policy 'deny-root' Statement[0]"
        assert evaluate(pols, "ecs:RunCommand", INSTANCE, {"ecs:CommandRunAs": "bob"})
        assert evaluate(pols, "ecs:RunCommand", INSTANCE, {})  # deny condition not met
    assert not check(doc(allow(), deny("ecs:RunCommand")))
    assert not check(doc(deny("ecs:RunCommand"), allow()))


def test_allow_reason_names_policy_and_statement():
    pols = [("a", parse_policy(doc(allow("ecs:Describe*")))),
            ("b", parse_policy(doc(allow("ram:*"), allow("ecs:RunCommand"))))]
    d = evaluate(pols, "ecs:RunCommand", INSTANCE, {})
    assert d and d.reason == "allowed by policy 'b' Statement[1]"
    assert d.action == "ecs:RunCommand" and d.resource == INSTANCE


def test_near_miss_reason_mentions_failing_condition():
    pol = [("runas", parse_policy(doc(allow(
        Condition={"StringEquals": {"ecs:CommandRunAs": "user01"}}))))]
    d = evaluate(pol, "ecs:RunCommand", INSTANCE, {"ecs:CommandRunAs": "root"})
    assert not d
    assert d.reason.startswith(f"no policy allows ecs:RunCommand on {INSTANCE} (")
    assert "policy 'runas' Statement[0]" in d.reason and "ecs:CommandRunAs" in d.reason


def test_reason_is_one_line_and_policies_may_be_a_mapping():
    d = evaluate({"x": parse_policy(doc(allow("ecs:Nope")))}, "ecs:a\nb", "r\x00\n", {})
    assert not d and "\n" not in d.reason and "\x00" not in d.reason
    assert evaluate({"x": parse_policy(ADMINISTRATOR_ACCESS)}, "ecs:A", "r", None)


def test_single_statement_object_is_accepted():
    p = parse_policy({"Version": "1", "Statement": allow("ecs:RunCommand")})
    assert len(p.statements) == 1
    d = evaluate([("one", p)], "ecs:RunCommand", INSTANCE, {})
    assert d and d.reason == "allowed by policy 'one' Statement[0]"


def test_multi_statement_each_needs_its_own_match():
    document = doc(
        allow("ecs:StartTerminalSession", "acs:ecs:*:*:instance/i-prod-*"),
        allow(["ecs:RunCommand", "ecs:InvokeCommand"], ["acs:ecs:*:*:instance/i-dev-*",
                                                         "acs:ecs:*:*:command/*"]),
    )
    prod, dev = "acs:ecs:r:1:instance/i-prod-1", "acs:ecs:r:1:instance/i-dev-1"
    assert check(document, "ecs:StartTerminalSession", prod)
    assert not check(document, "ecs:StartTerminalSession", dev)
    assert check(document, "ecs:RunCommand", dev)
    assert check(document, "ecs:InvokeCommand", "acs:ecs:r:1:command/c-1")
    assert not check(document, "ecs:RunCommand", prod)


# ---------------------------------------------------------------- wildcards


@pytest.mark.parametrize(("pattern", "action", "expected"), [
    ("*", "ecs:RunCommand", True),
    ("*", "anything-at-all", True),
    ("ecs:*", "ecs:RunCommand", True),
    ("ecs:*", "ram:ListUsers", False),
    ("ecs:Describe*", "ecs:DescribeInstances", True),
    ("ecs:Describe*", "ecs:RunCommand", False),
    ("ecs:*Command", "ecs:RunCommand", True),
    ("ecs:*Command", "ecs:RunCommands", False),
    ("ecs:?unCommand", "ecs:RunCommand", True),
    ("ecs:?unCommand", "ecs:RRunCommand", False),
    ("ecs:Run*Com?and", "ecs:RunXYZCommand", True),
    ("*:AssumeRole", "sts:AssumeRole", True),
    ("ecs:runcommand", "ECS:RUNCOMMAND", True),
    ("ECS:RunCommand", "ecs:runcommand", True),
    ("Ecs:Describe*", "ecS:describeINSTANCES", True),
    ("ecs:RunCommand", "ecs:RunCommand ", False),
    ("ecs:RunCommand", "ecs:Run", False),
])
def test_action_wildcards_case_insensitive(pattern, action, expected):
    assert check(doc(allow(pattern)), action=action) is expected


@pytest.mark.parametrize(("pattern", "resource", "expected"), [
    ("*", INSTANCE, True),
    ("*", "", True),
    ("acs:ecs:*:*:instance/*", INSTANCE, True),
    ("acs:ecs:*", INSTANCE, True),                       # * spans ':' and '/'
    ("acs:*/mi-0123456789abcdef0", INSTANCE, True),
    ("acs:ecs:*:*:instance/*", COMMAND, False),
    ("acs:ecs:cn-hangzhou:1234567890:instance/mi-0123456789abcdef?", INSTANCE, True),
    ("acs:ecs:cn-hangzhou:1234567890:instance/mi-0123456789abcdef??", INSTANCE, False),
    ("acs:ecs:*:*:Instance/*", INSTANCE, False),          # resources are case-sensitive
    (INSTANCE.upper(), INSTANCE, False),
    (INSTANCE, INSTANCE, True),
    ("acs:ecs:*:*:instance/mi-*-x", INSTANCE, False),
    ("a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*z", "abcdefghijklmnop" * 40, False),  # no blow-up
])
def test_resource_wildcards_case_sensitive(pattern, resource, expected):
    assert check(doc(allow(resource=pattern)), resource=resource) is expected


def test_action_and_resource_lists_are_or():
    document = doc(allow(["ecs:A", "ecs:B"], ["acs:x:1", "acs:y:*"]))
    assert check(document, "ecs:B", "acs:y:2")
    assert check(document, "ecs:a", "acs:x:1")
    assert not check(document, "ecs:C", "acs:x:1")
    assert not check(document, "ecs:A", "acs:x:2")


# ---------------------------------------------------------------- condition operators

OPERATOR_CASES = [
    # operator, policy value, context value, expected
    ("StringEquals", "user01", "user01", True),
    ("StringEquals", "user01", "User01", False),
    ("StringEquals", ["a", "b"], "b", True),
    ("StringEquals", ["a", "b"], "c", False),
    ("StringNotEquals", "root", "user01", True),
    ("StringNotEquals", "root", "root", False),
    ("StringNotEquals", "root", "ROOT", True),
    ("StringNotEquals", ["root", "system"], "system", False),
    ("StringEqualsIgnoreCase", "root", "ROOT", True),
    ("StringEqualsIgnoreCase", "root", "rooted", False),
    ("StringNotEqualsIgnoreCase", "root", "RoOt", False),
    ("StringNotEqualsIgnoreCase", "root", "user01", True),
    ("StringLike", "user*", "user42", True),
    ("StringLike", "user?", "user42", False),
    ("StringLike", "user??", "user42", True),
    ("StringLike", "user*", "User42", False),
    ("StringLike", ["a*", "*z"], "quiz", True),
    ("StringNotLike", "root*", "rootkit", False),
    ("StringNotLike", "root*", "user01", True),
    ("StringNotLike", ["a*", "*z"], "quiz", False),
    ("NumericEquals", 22, 22, True),
    ("NumericEquals", "22", "22.0", True),
    ("NumericEquals", 22, 23, False),
    ("NumericNotEquals", 22, 23, True),
    ("NumericNotEquals", "22", 22, False),
    ("NumericLessThan", 1024, 1023, True),
    ("NumericLessThan", 1024, 1024, False),
    ("NumericLessThanEquals", 1024, 1024, True),
    ("NumericLessThanEquals", 1024, 1025, False),
    ("NumericGreaterThan", 1024, 1025, True),
    ("NumericGreaterThan", 1024, 1024, False),
    ("NumericGreaterThanEquals", "1024", 1024, True),
    ("NumericGreaterThanEquals", 1024, 80, False),
    ("NumericLessThan", 1.5, "1.25", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T08:00:00+08:00", True),
    ("DateEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z", False),
    ("DateNotEquals", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", True),
    ("DateNotEquals", "2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC), False),
    ("DateLessThan", "2026-01-01T00:00:00Z", "2025-12-31T23:59:59Z", True),
    ("DateLessThan", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", False),
    ("DateLessThanEquals", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", True),
    ("DateLessThanEquals", "2026-01-01T00:00:00Z", datetime(2026, 1, 2, tzinfo=UTC), False),
    ("DateGreaterThan", "2026-01-01T00:00:00Z", datetime(2026, 1, 2, tzinfo=UTC), True),
    ("DateGreaterThan", "2026-01-01T00:00:00Z", "2025-06-01T00:00:00Z", False),
    ("DateGreaterThanEquals", "2026-01-01", "2026-01-01T00:00:00Z", True),
    ("DateGreaterThanEquals", "2026-01-01T00:00:00Z", datetime(2025, 1, 1), False),
    ("Bool", "true", True, True),
    ("Bool", "true", "true", True),
    ("Bool", True, "TRUE", True),
    ("Bool", "true", False, False),
    ("Bool", "false", "false", True),
    ("Bool", "false", True, False),
    ("IpAddress", "10.0.0.0/8", "10.1.2.3", True),
    ("IpAddress", "10.0.0.0/8", "11.1.2.3", False),
    ("IpAddress", "192.0.2.7", "192.0.2.7", True),
    ("IpAddress", "192.0.2.7", "192.0.2.8", False),
    ("IpAddress", ["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", True),
    ("IpAddress", "2001:db8::/32", "2001:db9::1", False),
    ("IpAddress", "10.0.0.0/8", "::ffff:10.9.9.9", True),     # IPv4-mapped IPv6
    ("IpAddress", "10.0.0.0/8", ipaddress.ip_address("10.0.0.1"), True),
    ("NotIpAddress", "10.0.0.0/8", "10.1.2.3", False),
    ("NotIpAddress", "10.0.0.0/8", "192.168.1.1", True),
    ("NotIpAddress", ["10.0.0.0/8", "::1"], "::1", False),
]


KEY_FOR = {"Numeric": "ecs:PortNumber", "Date": "acs:CurrentTime", "Bool": "acs:SecureTransport",
           "IpAddress": "acs:SourceIp", "NotIpAddress": "acs:SourceIp"}


@pytest.mark.parametrize(("operator", "value", "ctx", "expected"), OPERATOR_CASES)
def test_operator(operator, value, ctx, expected):
    key = next((k for prefix, k in KEY_FOR.items() if operator.startswith(prefix)),
               "ecs:CommandRunAs")
    assert cond(operator, key, value, {key: ctx}) is expected


def test_every_operator_has_positive_and_negative_cases():
    operators = {
        "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
        "StringLike", "StringNotLike", "NumericEquals", "NumericNotEquals", "NumericLessThan",
        "NumericLessThanEquals", "NumericGreaterThan", "NumericGreaterThanEquals", "DateEquals",
        "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
        "DateGreaterThanEquals", "Bool", "IpAddress", "NotIpAddress"}
    covered = {(op, exp) for op, _, _, exp in OPERATOR_CASES}
    assert covered == {(op, exp) for op in operators for exp in (True, False)}


NEGATED = ["StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "NumericNotEquals",
           "DateNotEquals", "NotIpAddress"]
VALUE_FOR = {"String": "x", "Numeric": 1, "Date": "2026-01-01T00:00:00Z", "Bool": "true",
             "IpAddress": "10.0.0.0/8", "NotIpAddress": "10.0.0.0/8"}


def _value(operator: str):
    return next(v for prefix, v in VALUE_FOR.items() if operator.startswith(prefix))


@pytest.mark.parametrize("operator", [op for op, *_ in OPERATOR_CASES])
def test_missing_key(operator):
    value = _value(operator)
    assert cond(operator, "ecs:tag/Owner", value, {}) is (operator in NEGATED)
    assert cond(operator, "ecs:tag/Owner", value, {"ecs:tag/Other": "x"}) is (operator in NEGATED)
    # an empty multi-valued context behaves like a missing key
    assert cond(operator, "ecs:tag/Owner", value, {"ecs:tag/Owner": []}) is (operator in NEGATED)


@pytest.mark.parametrize("operator", [op for op, *_ in OPERATOR_CASES])
@pytest.mark.parametrize("odd", [None, object(), {"a": 1}, b"10.0.0.1", float("nan"), "", "zz"])
def test_wrong_type_context_values_never_raise(operator, odd):
    value = _value(operator)
    expected = operator in NEGATED
    if operator.startswith("String") and odd in ("", "zz"):
        return  # real strings: a legitimate value for string operators
    assert cond(operator, "ecs:tag/Owner", value, {"ecs:tag/Owner": odd}) is expected


def test_multi_valued_context():
    k = "ecs:tag/Team"
    assert cond("StringEquals", k, ["a", "b"], {k: ["x", "b"]})
    assert not cond("StringEquals", k, ["a", "b"], {k: ["x", "y"]})
    assert cond("StringLike", k, "ops-*", {k: ("dev", "ops-eu")})
    assert not cond("StringNotEquals", k, "root", {k: ["user", "root"]})
    assert cond("StringNotEquals", k, "root", {k: ["user", "admin"]})
    assert not cond("NotIpAddress", k, "10.0.0.0/8", {k: ["1.1.1.1", "10.0.0.1"]})
    assert cond("IpAddress", k, "10.0.0.0/8", {k: {"1.1.1.1", "10.0.0.1"}})
    assert cond("NumericGreaterThan", k, 5, {k: [1, "junk", 6]})
    assert cond("StringNotEqualsIgnoreCase", k, "root", {k: [None, object()]})


def test_condition_keys_are_case_insensitive():
    document = doc(allow(Condition={"StringEquals": {"ECS:commandrunas": "user01"}}))
    assert check(document, context={"ecs:CommandRunAs": "user01"})
    assert check(document, context={"Ecs:COMMANDRUNAS": "user01"})
    assert not check(document, context={"ecs:CommandRunAs": "USER01"})  # values are not


def test_conditions_and_across_operators_and_keys_or_across_values():
    document = doc(allow(Condition={
        "StringEquals": {"ecs:CommandRunAs": ["user01", "user02"], "ecs:tag/env": "dev"},
        "IpAddress": {"acs:SourceIp": "10.0.0.0/8"},
        "Bool": {"acs:SecureTransport": "true"},
    }))
    good = {"ecs:CommandRunAs": "user02", "ecs:tag/env": "dev", "acs:SourceIp": "10.0.0.9",
            "acs:SecureTransport": True}
    assert check(document, context=good)
    for key, bad in [("ecs:CommandRunAs", "user03"), ("ecs:tag/env", "prod"),
                     ("acs:SourceIp", "8.8.8.8"), ("acs:SecureTransport", False)]:
        assert not check(document, context={**good, key: bad}), key
        assert not check(document, context={k: v for k, v in good.items() if k != key}), key


def test_future_keys_with_known_prefixes_are_accepted():
    for key in ("acs:SomethingNew", "ram:Foo", "sts:Bar", "ecs:tag/Cost Center", "ACS:x"):
        assert cond("StringEquals", key, "v", {key: "v"})


# ---------------------------------------------------------------- parse errors


def err(document) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(document)
    return str(info.value)


def cond_doc(condition: dict, index: int = 1) -> dict:
    return doc(*[allow()] * index, allow(Condition=condition))


@pytest.mark.parametrize(("document", "message"), [
    (cond_doc({"StringEqualz": {"ecs:CommandRunAs": "u"}}),
     "Statement[1].Condition.StringEqualz: unknown condition operator 'StringEqualz'"),
    (cond_doc({"stringequals": {"ecs:CommandRunAs": "u"}}),
     "Statement[1].Condition.stringequals: unknown condition operator 'stringequals' "
     "(did you mean 'StringEquals'?)"),
    (doc(allow(), {"Effect": "allow", "Action": "*", "Resource": "*"}),
     "Statement[1].Effect: must be 'Allow' or 'Deny', got \"allow\""),
    (doc({"Effect": "Permit", "Action": "*", "Resource": "*"}),
     "Statement[0].Effect: must be 'Allow' or 'Deny', got \"Permit\""),
    (cond_doc({"IpAddress": {"acs:SourceIp": ["10.0.0.0/8", "10.0.0.0/33"]}}, 0),
     "Statement[0].Condition.IpAddress.acs:SourceIp[1]: IpAddress needs an IPv4/IPv6 address "
     "or CIDR block, got \"10.0.0.0/33\""),
    (cond_doc({"NotIpAddress": {"acs:SourceIp": "300.1.1.1"}}, 0),
     "Statement[0].Condition.NotIpAddress.acs:SourceIp: NotIpAddress needs an IPv4/IPv6 "
     "address or CIDR block, got \"300.1.1.1\""),
    (cond_doc({"DateLessThan": {"acs:CurrentTime": "2026-13-01T00:00:00Z"}}, 2),
     "Statement[2].Condition.DateLessThan.acs:CurrentTime: DateLessThan needs an ISO 8601 "
     "date such as '2026-01-01T00:00:00Z', got \"2026-13-01T00:00:00Z\""),
    (cond_doc({"NumericLessThan": {"ecs:PortNumber": "ten"}}),
     "Statement[1].Condition.NumericLessThan.ecs:PortNumber: NumericLessThan needs a number, "
     "got \"ten\""),
    (cond_doc({"NumericEquals": {"ecs:PortNumber": [22, True]}}),
     "Statement[1].Condition.NumericEquals.ecs:PortNumber[1]: NumericEquals needs a number, "
     "got true"),
    (cond_doc({"Bool": {"acs:SecureTransport": "yes"}}),
     "Statement[1].Condition.Bool.acs:SecureTransport: Bool needs 'true' or 'false', "
     "got \"yes\""),
    (cond_doc({"StringEquals": {"CommandRunAs": "u"}}),
     "Statement[1].Condition.StringEquals.CommandRunAs: condition key 'CommandRunAs' has no "
     "service prefix (e.g. 'ecs:CommandRunAs')"),
    (cond_doc({"StringEquals": {"oss:Foo": "u"}}),
     "Statement[1].Condition.StringEquals.oss:Foo: unknown condition key 'oss:Foo' "
     "(keys start with acs:, ecs:, ram:, sts:)"),
    (cond_doc({"StringEquals": {"ecs:CommandRunAs": []}}),
     "Statement[1].Condition.StringEquals.ecs:CommandRunAs: must list at least one value"),
    (cond_doc({"StringEquals": {"ecs:CommandRunAs": ["u", ""]}}),
     "Statement[1].Condition.StringEquals.ecs:CommandRunAs[1]: must not be empty"),
    (cond_doc({"StringEquals": {}}),
     "Statement[1].Condition.StringEquals: must be a non-empty object {key: value or [values]}"),
    (cond_doc({}), "Statement[1].Condition: must be a non-empty object "
                   "{operator: {key: value}}"),
    (doc(allow(Sid="x")), "Statement[0].Sid: unknown key \"Sid\""),
    (doc(allow(effect="Allow")), "Statement[0].effect: unknown key \"effect\" "
                                 "(did you mean 'Effect'?)"),
    (doc({"Effect": "Allow", "NotAction": "ecs:*", "Resource": "*"}),
     "Statement[0].NotAction: NotAction is not supported"),
    (doc(allow(NotResource="x")), "Statement[0].NotResource: NotResource is not supported"),
    (doc({"Effect": "Allow", "Resource": "*"}), "Statement[0]: missing required key 'Action'"),
    (doc(allow(action="RunCommand")), "Statement[0].Action: action 'RunCommand' must look "
                                      "like 'service:Name' (or be '*')"),
    (doc(allow(action=["ecs:A", "ecs:"])), "Statement[0].Action[1]: action 'ecs:' must look "
                                           "like 'service:Name' (or be '*')"),
    (doc(allow(action=["ecs:A", "ecs: B"])),
     "Statement[0].Action[1]: action 'ecs: B' must not contain whitespace"),
    (doc(allow(action="")), "Statement[0].Action: must not be empty"),
    (doc(allow(action=[])), "Statement[0].Action: must be a string or a non-empty list of "
                            "strings, got []"),
    (doc(allow(resource=["*", 5])), "Statement[0].Resource[1]: must be a string, got 5"),
    (doc(allow(resource="")), "Statement[0].Resource: must not be empty"),
    ({"Version": 1, "Statement": [allow()]}, "Version: must be \"1\", got 1"),
    ({"Version": "2012-10-17", "Statement": [allow()]},
     "Version: must be \"1\", got \"2012-10-17\""),
    ({"Statement": [allow()]}, "document: missing required key 'Version'"),
    ({"Version": "1", "Statement": []},
     "Statement: must be a non-empty list of statements, got []"),
    ({"Version": "1", "Statement": [allow()], "Id": "x"}, "Id: unknown key \"Id\""),
    ({"Version": "1", "Statement": ["Allow"]},
     "Statement[0]: a statement must be an object, got \"Allow\""),
    ([allow()], "document: must be a JSON object, got [{\"Effect\": \"Allow\", \"Action\": "
                "\"*\", \"Resource\": \"*\"}]"),
    ('{"Version": "1", "Statement": [{"Effect": "Allow", "Effect": "Deny", "Action": "*", '
     '"Resource": "*"}]}', "document: duplicate key 'Effect' in a JSON object"),
    (b"\xff\xfe{}", "document: not valid UTF-8 (byte 0)"),
])
def test_parse_errors_carry_exact_place(document, message):
    assert err(document) == message


def test_json_syntax_error_has_line_and_column():
    text = '{\n  "Version": "1",\n  "Statement": [\n    {"Effect": "Allow" "Action": "*"}\n  ]\n}'
    assert err(text) == "line 4 column 24: invalid JSON: Expecting ',' delimiter"
    assert err("") == "line 1 column 1: invalid JSON: Expecting value"
    assert err('{"Version": "1",}').startswith("line 1 column 17: invalid JSON: ")


def test_policy_error_is_value_error_with_parts():
    with pytest.raises(ValueError) as info:
        parse_policy(doc(allow(action="nope")))
    assert isinstance(info.value, PolicyError)
    assert info.value.place == "Statement[0].Action"
    assert info.value.message.startswith("action 'nope'")


def test_parse_accepts_str_bytes_mapping_and_round_trips():
    text = (REFERENCE / "command-runas-deny-root-system.json").read_text()
    from_str, from_bytes = parse_policy(text), parse_policy(text.encode())
    from_bom = parse_policy(b"\xef\xbb\xbf" + text.encode())
    from_map = parse_policy(json.loads(text))
    assert from_str == from_bytes == from_bom == from_map
    assert parse_policy(from_str) is from_str
    assert from_str.to_dict() == json.loads(text)
    assert parse_policy(from_str.source) == from_str
    hash(from_str)  # immutable and hashable
    with pytest.raises(AttributeError):
        from_str.version = "2"  # type: ignore[misc]


def test_numeric_and_date_values_accept_json_forms():
    parse_policy(cond_doc({"NumericLessThan": {"ecs:PortNumber": ["1024", 1024, 10.5]}}))
    parse_policy(cond_doc({"DateLessThan": {"acs:CurrentTime": ["2026-01-01",
                                                                "2026-01-01T08:00:00+08:00"]}}))
    for bad in ("nan", "inf", "1e999", ""):
        assert "ecs:PortNumber" in err(cond_doc({"NumericEquals": {"ecs:PortNumber": bad}}))


# ---------------------------------------------------------------- robustness

ALL_OPERATORS_POLICY = parse_policy(doc(
    deny("ecs:Delete*", Condition={"StringNotLike": {"ecs:CommandRunAs": "a*"}}),
    *[allow(Condition={op: {"ecs:tag/k": v, "acs:SourceIp": _value(op)}})
      for op, v, _, _ in OPERATOR_CASES],
))

scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(),
                   st.binary(), st.datetimes(), st.just(object()))
context_values = st.one_of(scalar, st.lists(scalar, max_size=4), st.dictionaries(st.text(), scalar))
context_keys = st.one_of(st.text(), st.sampled_from(["ecs:tag/k", "ECS:TAG/K", "acs:SourceIp"]))


@settings(max_examples=300, deadline=None)
@given(action=st.text(), resource=st.text(),
       context=st.dictionaries(context_keys, context_values, max_size=5))
def test_evaluate_never_raises(action, resource, context):
    pols = [("ops", ALL_OPERATORS_POLICY), ("admin", parse_policy(ADMINISTRATOR_ACCESS))]
    d = evaluate(pols, action, resource, context)
    assert isinstance(d, Decision) and d.action == action and d.resource == resource
    assert "\n" not in d.reason
    d = evaluate([("ops", ALL_OPERATORS_POLICY)], action, resource, context)
    assert isinstance(d.allowed, bool) and d.reason


@settings(max_examples=200, deadline=None)
@given(pattern=st.text(alphabet="ab*?:/", max_size=8), text=st.text(alphabet="ab:/", max_size=8))
def test_resource_wildcard_matches_fnmatch_semantics(pattern, text):
    import re
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    expected = re.fullmatch(regex, text, re.DOTALL) is not None
    if not pattern:
        return  # empty resources are refused at parse time
    assert check(doc(allow(resource=pattern)), resource=text) is expected

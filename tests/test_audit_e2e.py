"""The audit trail through the CLI: every call with its outcome, and `porthole audit verify`
catching edits, removals, reordering and a truncated tail."""

from __future__ import annotations

import sqlite3

from tests.test_iam_e2e import make_user


def _db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "porthole.db")


def test_every_call_is_listed_with_outcome_and_filters(server):
    erin = make_user(server, "erin")
    server.cli("iam", "user", "list", check=False, **erin)  # denied
    server.cli("instances", **erin)  # allowed (empty)
    events = server.cli_json("audit", "list", "--principal", "erin", "--since", "1h")["Events"]
    assert {(e["Action"], e["Outcome"]) for e in events} == {
        ("ram:ListUsers", "Denied"), ("ecs:DescribeInstances", "Allowed")}
    denied = next(e for e in events if e["Outcome"] == "Denied")
    assert denied["Principal"] == "user/erin" and denied["SourceIp"] == "127.0.0.1"
    assert denied["Resource"] == "acs:ram::1000000000000000:user/*"
    assert denied["RequestId"] and "Forbidden.RAM" in denied["Detail"]
    created = server.cli_json("audit", "list", "--action", "ram:CreateAccessKey")["Events"]
    assert [e["Resource"] for e in created] == ["acs:ram::1000000000000000:user/erin"]
    assert created[0]["Principal"] == "user/admin"
    init = server.cli_json("audit", "list", "--principal", "system")["Events"]
    assert [e["Action"] for e in init] == ["InitDataDir"]
    limited = server.cli_json("audit", "list", "--limit", "3")["Events"]
    assert len(limited) == 3 and limited[0]["Seq"] > limited[-1]["Seq"]
    bad = server.cli("audit", "list", "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "yesterday" in bad.stderr
    refused = server.cli("audit", "list", check=False, **erin)
    assert refused.returncode == 1 and "actiontrail:LookupEvents" in refused.stderr


def test_verify_detects_tampering(server):
    make_user(server, "frank", "ReadOnlyAccess")
    ok = server.cli("audit", "verify", "-o", "text")
    assert ok.returncode == 0 and "intact" in ok.stdout
    db = _db(server)
    (original,) = db.execute("SELECT principal FROM audit_log WHERE seq=3").fetchone()
    db.execute("UPDATE audit_log SET principal='user/nobody' WHERE seq=3")
    db.commit()
    edited = server.cli("audit", "verify", "-o", "text", check=False)
    assert edited.returncode == 1 and "entry 3: was altered" in edited.stdout
    assert edited.stderr.count("\n") == 1 and "NOT intact" in edited.stderr
    db.execute("UPDATE audit_log SET principal=? WHERE seq=3", (original,))
    db.execute("DELETE FROM audit_log WHERE seq=4")
    db.commit()
    removed = server.cli("audit", "verify", "-o", "text", check=False)
    assert removed.returncode == 1 and "entry 5: entries 4..4 are missing" in removed.stdout
    db.close()


def test_verify_remembers_heads_and_catches_a_truncated_tail_after_restart(server):
    make_user(server, "gina")
    assert server.cli("audit", "verify").returncode == 0  # remembers the head it saw
    server.stop()
    db = _db(server)
    (last,) = db.execute("SELECT max(seq) FROM audit_log").fetchone()
    db.execute("DELETE FROM audit_log WHERE seq > ?", (last - 3,))
    db.commit()
    db.close()
    server.start()
    result = server.cli("audit", "verify", "-o", "text", check=False)
    assert result.returncode == 1
    assert "previously verified entry is gone" in result.stdout

"""Building blocks of access control, on real SQLite files: sealed secrets, security tokens,
trust policies, the failure limiter, instance tags in authorize(), the audit hash chain."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from pathlib import Path

import pytest

from server.auth import issue_temporary_credentials, temporary_secret, verify_token
from server.authz import TAGS, Principal, authorize
from server.errors import ApiError
from server.policy import PolicyError, parse_policy, parse_trust_policy, trusts
from server.ratelimit import AuthThrottle, FailureLimiter
from server.secrets import (
    Keyring,
    SecretError,
    create_master_key,
    hash_password,
    install_keyring,
    verify_password,
)
from server.storage import Repository

ACCOUNT = "1000000000000000"


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    create_master_key(tmp_path / "master.key")
    return Keyring.load(tmp_path / "master.key")


def test_master_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "master.key"
    create_master_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_master_key(path)
    (tmp_path / "bad.key").write_text("not hex")
    with pytest.raises(SecretError, match="64 hex"):
        Keyring.load(tmp_path / "bad.key")
    with pytest.raises(SecretError, match="cannot read"):
        Keyring.load(tmp_path / "missing.key")


def test_sealed_secrets_are_bound_to_their_key_id_and_master_key(keyring, tmp_path):
    sealed = keyring.seal("s3cret", "PHKEY1")
    assert "s3cret" not in sealed and sealed.startswith("v1:")
    assert keyring.open(sealed, "PHKEY1") == "s3cret"
    with pytest.raises(SecretError):
        keyring.open(sealed, "PHKEY2")  # moved to another key's row
    create_master_key(tmp_path / "other.key")
    with pytest.raises(SecretError):
        Keyring.load(tmp_path / "other.key").open(sealed, "PHKEY1")
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SecretError):
        keyring.open(tampered, "PHKEY1")


def test_passwords_are_argon2id_hashes():
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct hors")
    assert not verify_password("garbage", "x")


def _role(name: str = "ops") -> dict:
    return {"name": name, "created_at": 1234.5}


def test_security_tokens_refuse_tampering_other_keys_and_expiry(keyring):
    creds = issue_temporary_credentials(keyring, _role(), "alice-1", "acs:ram::1:user/alice",
                                        900)
    key_id, token = creds["AccessKeyId"], creds["SecurityToken"]
    assert key_id.startswith("STS.")
    assert creds["AccessKeySecret"] == temporary_secret(keyring, key_id)
    claims = verify_token(keyring, token, key_id)
    assert claims["role"] == "ops" and claims["exp"] - time.time() <= 900
    prefix, payload, mac = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "==="))
    forged["exp"] += 10**6
    raw = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    for bad in (f"{prefix}.{raw}.{mac}", token[:-2], token + "x", "PHT1.", "", "x" * 5000,
                "PHT1.\u00e9.\u00e9"):
        with pytest.raises(ApiError) as err:
            verify_token(keyring, bad, key_id)
        assert err.value.status == 401 and err.value.code == "InvalidSecurityToken"
    with pytest.raises(ApiError) as err:
        verify_token(keyring, token, "STS.SOMEBODYELSE")
    assert err.value.code == "InvalidSecurityToken"
    expired = issue_temporary_credentials(keyring, _role(), "s", "x", -1)
    with pytest.raises(ApiError) as err:
        verify_token(keyring, expired["SecurityToken"], expired["AccessKeyId"])
    assert err.value.code == "SecurityTokenExpired"


TRUST = {"Version": "1", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole",
    "Principal": {"RAM": [f"acs:ram::{ACCOUNT}:user/alice", f"acs:ram::{ACCOUNT}:user/ops-*"]},
}]}


def test_trust_policy_names_who_may_assume():
    trust = parse_trust_policy(TRUST)
    user = f"acs:ram::{ACCOUNT}:user/"
    assert trusts(trust, user + "alice", ACCOUNT)
    assert trusts(trust, user + "ops-bob", ACCOUNT)
    assert not trusts(trust, user + "mallory", ACCOUNT)
    assert not trusts(trust, "acs:ram::999:user/alice", ACCOUNT)
    root = parse_trust_policy({"Version": "1", "Statement": {
        "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"RAM": ACCOUNT}}})
    assert trusts(root, user + "anyone", ACCOUNT)
    assert not trusts(root, "acs:ram::999:user/anyone", ACCOUNT)
    deny = dict(TRUST, Statement=[*TRUST["Statement"], {
        "Effect": "Deny", "Action": "sts:*", "Principal": {"RAM": user + "alice"},
        "Condition": {"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}}}])
    trust = parse_trust_policy(deny)
    assert trusts(trust, user + "alice", ACCOUNT, {"acs:SourceIp": "192.168.1.1"})
    assert not trusts(trust, user + "alice", ACCOUNT, {"acs:SourceIp": "10.1.2.3"})


@pytest.mark.parametrize("document, place", [
    ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}]},
     "Statement[0]: missing required key 'Principal'"),
    ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "ecs:RunCommand",
                                     "Principal": {"RAM": "x"}}]},
     "Statement[0].Action"),
    ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                     "Principal": "*"}]},
     "Statement[0].Principal"),
    ({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                     "Principal": {"RAM": []}}]},
     "Statement[0].Principal.RAM"),
])
def test_trust_policy_errors_name_the_place(document, place):
    with pytest.raises(PolicyError) as err:
        parse_trust_policy(document)
    assert str(err.value).startswith(place)


def test_deeply_nested_policy_json_is_a_policy_error():
    with pytest.raises(PolicyError, match="nested too deeply"):
        parse_policy("[" * 100_000)


def test_failure_limiter_refills_and_is_bounded():
    limiter = FailureLimiter(burst=3, per_second=1.0, max_tracked=10)
    for _ in range(3):
        assert limiter.retry_after("k", now=100.0) == 0
        limiter.failed("k", now=100.0)
    assert limiter.retry_after("k", now=100.0) == pytest.approx(1.0)
    assert limiter.retry_after("k", now=101.5) == 0
    for i in range(50):
        limiter.failed(f"spray{i}", now=100.0)
    assert len(limiter._buckets) <= 10


def test_auth_throttle_names_address_or_key():
    throttle = AuthThrottle(per_address=(2, 0.001), per_key=(5, 0.001))
    throttle.failed("10.0.0.1", "PHA")
    throttle.failed("10.0.0.1", "PHB")
    with pytest.raises(ApiError) as err:
        throttle.check("10.0.0.1", "PHC")
    assert err.value.status == 429 and "from 10.0.0.1" in err.value.message
    throttle.check("10.0.0.2", "PHA")  # other addresses and keys are unaffected
    for _ in range(5):
        throttle.failed(f"10.1.0.{_}", "PHZ")
    with pytest.raises(ApiError, match="access key PHZ"):
        throttle.check("10.9.9.9", "PHZ")


def test_authorize_sees_instance_tags():
    instance = "mi-0123456789abcdef0"
    arn = f"acs:ecs:local:{ACCOUNT}:instance/{instance}"
    policy = parse_policy({"Version": "1", "Statement": [{
        "Effect": "Allow", "Action": "ecs:StartTerminalSession", "Resource": "*",
        "Condition": {"StringEquals": {"ecs:tag/env": "dev"}}}]})
    who = Principal("dev1", "PHX", [("dev", policy)])
    saved = TAGS.tags
    try:
        TAGS.tags = {instance: {"env": "prod"}}
        with pytest.raises(ApiError) as err:
            authorize(who, "ecs:StartTerminalSession", arn)
        assert "ecs:StartTerminalSession" in err.value.message and arn in err.value.message
        TAGS.tags = {instance: {"env": "dev"}}
        authorize(who, "ecs:StartTerminalSession", arn)
    finally:
        TAGS.tags = saved


# --- the audit chain, on a real database ---------------------------------------------------


async def _repo(tmp_path: Path) -> Repository:
    repo = await Repository.open(f"sqlite+aiosqlite:///{tmp_path / 'porthole.db'}")
    await install_keyring(tmp_path, repo)
    return repo


def test_audit_chain_detects_edit_removal_reorder_and_truncation(tmp_path):
    async def scenario() -> list[tuple[str, dict]]:
        repo = await _repo(tmp_path)
        for i in range(6):
            await repo.audit(principal=f"user/u{i}", action="ecs:RunCommand", outcome="Allowed",
                             resource=f"r{i}", detail="ünïcode ✓")
        results = [("intact", await repo.verify_audit())]
        head = results[0][1]
        db = sqlite3.connect(tmp_path / "porthole.db")
        db.execute("UPDATE audit_log SET detail='edited' WHERE seq=3")
        db.commit()
        results.append(("edited", await repo.verify_audit()))
        db.execute("UPDATE audit_log SET detail='ünïcode ✓' WHERE seq=3")
        db.execute("DELETE FROM audit_log WHERE seq=4")
        db.commit()
        results.append(("removed", await repo.verify_audit()))
        db.execute("DELETE FROM audit_log")
        db.commit()
        db.close()
        await repo.close()
        # A fresh process (nothing remembered) with an anchor from an earlier verification:
        repo = await _repo(tmp_path)
        for i in range(3):
            await repo.audit(principal=f"user/u{i}", action="x", outcome="Allowed")
        results.append(("anchored", await repo.verify_audit({head["HeadSeq"]:
                                                              head["HeadHash"]})))
        await repo.close()
        return results

    results = dict(asyncio.run(scenario()))
    assert results["intact"]["Valid"] and results["intact"]["Count"] == 6
    edited = results["edited"]
    assert not edited["Valid"] and edited["Problems"][0]["Seq"] == 3
    assert "altered" in edited["Problems"][0]["Problem"]
    removed = results["removed"]
    assert not removed["Valid"] and removed["Problems"][0]["Seq"] == 5
    assert "missing" in removed["Problems"][0]["Problem"]
    anchored = results["anchored"]
    assert not anchored["Valid"]
    assert any(p["Seq"] == 6 for p in anchored["Problems"])


def test_audit_reorder_and_truncation_are_caught(tmp_path):
    async def scenario() -> tuple[dict, dict]:
        repo = await _repo(tmp_path)
        for i in range(5):
            await repo.audit(principal="user/a", action=f"a{i}", outcome="Allowed")
        db = sqlite3.connect(tmp_path / "porthole.db")
        rows = db.execute("SELECT seq, at, request_id, principal, action, resource, source_ip,"
                          " outcome, detail, prev_hash, hash FROM audit_log WHERE seq IN (2, 3)"
                          " ORDER BY seq").fetchall()
        # swap entries 2 and 3 (content and hashes travel together, sequence numbers stay)
        for (_seq, *rest), (other_seq, *_) in ((rows[0], rows[1]), (rows[1], rows[0])):
            db.execute("UPDATE audit_log SET at=?, request_id=?, principal=?, action=?, "
                       "resource=?, source_ip=?, outcome=?, detail=?, prev_hash=?, hash=? "
                       "WHERE seq=?", (*rest, other_seq))
        db.commit()
        reordered = await repo.verify_audit()
        db.execute("DELETE FROM audit_log WHERE seq >= 2")
        db.commit()
        db.close()
        truncated = await repo.verify_audit()  # this process wrote entry 5
        await repo.close()
        return reordered, truncated

    reordered, truncated = asyncio.run(scenario())
    assert not reordered["Valid"] and reordered["Problems"][0]["Seq"] == 2
    assert not truncated["Valid"]
    assert "removed" in truncated["Problems"][0]["Problem"]


def test_stored_secrets_are_sealed_and_plaintext_rows_get_sealed(tmp_path):
    async def scenario() -> tuple[str, str, str]:
        repo = await _repo(tmp_path)
        await repo.create_user("u")
        await repo.create_access_key("u", "PHSEALED", "the-secret-1")
        db = sqlite3.connect(tmp_path / "porthole.db")
        db.execute("INSERT INTO access_keys (id, user_name, secret, status, created_at) "
                   "VALUES ('PHPLAIN', 'u', 'the-secret-2', 'Active', 0)")
        db.commit()
        await repo.seal_plaintext_secrets()
        stored = dict(db.execute("SELECT id, secret FROM access_keys").fetchall())
        db.close()
        opened = (await repo.access_key("PHPLAIN"))["secret"]
        await repo.close()
        return stored["PHSEALED"], stored["PHPLAIN"], opened

    sealed1, sealed2, opened = asyncio.run(scenario())
    assert "the-secret" not in sealed1 + sealed2
    assert sealed1.startswith("v1:") and sealed2.startswith("v1:")
    assert opened == "the-secret-2"


def test_a_flooded_key_still_works_from_where_its_owner_signed_in():
    throttle = AuthThrottle(per_address=(100, 0.001), per_key=(3, 0.001))
    throttle.succeeded("10.0.0.1", "PHOWNER")
    for i in range(5):
        throttle.failed(f"10.6.6.{i}", "PHOWNER")
    throttle.check("10.0.0.1", "PHOWNER")  # the owner's address
    with pytest.raises(ApiError):
        throttle.check("10.6.6.9", "PHOWNER")

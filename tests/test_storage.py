"""The repository on both backends: a real SQLite file and a real PostgreSQL database.

Every test that takes ``repo`` (or ``db_url``) runs twice. The PostgreSQL variant creates
its own database (``porthole_t_<hex>``) on the server at ``PORTHOLE_TEST_POSTGRES`` (default:
the local one) and drops it afterwards, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from proto.ids import new_activation, new_command_id, new_instance_id, new_invocation_id
from server.db import StorageError, driver_url
from server.migrations import (
    BASELINE,
    _baseline_schema,
    current_revision,
    head_revision,
    schema_differences,
)
from server.secrets import SecretError, install_keyring
from server.storage import ActivationError, Repository, metadata

BACKENDS = ["sqlite", "postgresql"]
POSTGRES = os.environ.get("PORTHOLE_TEST_POSTGRES",
                          "postgresql+asyncpg://postgres@127.0.0.1:5432")
BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


@contextlib.asynccontextmanager
async def database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty database of ``backend``, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'porthole.db'}"
        return
    name = f"porthole_t_{uuid.uuid4().hex}"
    admin = create_async_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT",
                                poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES}/{name}"
        finally:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Repository]:
    """A migrated repository with a master key, as ``porthole-server run`` opens it."""
    async with database(request.param, tmp_path) as url:
        opened = await Repository.open(url)
        try:
            await install_keyring(tmp_path, opened)
            yield opened
        finally:
            await opened.close()


async def another(repo: Repository, tmp_path: Path) -> Repository:
    """A second repository on the same database, as a second server process would hold."""
    other = await Repository.open(repo.engine.url.render_as_string(hide_password=False))
    await install_keyring(tmp_path, other)
    return other


async def differences(engine: AsyncEngine, target: sa.MetaData = metadata) -> list:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: schema_differences(c, target))


async def revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(current_revision)


# --- migrations ------------------------------------------------------------------------------


async def test_migrated_schema_is_the_metadata(db_url: str) -> None:
    repo = await Repository.open(db_url)
    try:
        assert repo.schema_revision == head_revision()
        assert await revision(repo.engine) == head_revision()
        assert await differences(repo.engine) == []
        # the comparison sees a change that has no migration
        changed = sa.MetaData()
        for table in metadata.sorted_tables:
            table.to_metadata(changed)
        changed.tables["instances"].append_column(sa.Column("zone", sa.String(64)))
        sa.Table("unmigrated", changed, sa.Column("id", sa.Integer, primary_key=True))
        found = {d[0] if isinstance(d, tuple) else d[0][0]
                 for d in await differences(repo.engine, changed)}
        assert found == {"add_column", "add_table"}
    finally:
        await repo.close()
    again = await Repository.open(db_url)  # already at head: opens without changes
    try:
        assert again.schema_revision == head_revision()
    finally:
        await again.close()


async def test_wide_integer_columns(repo: Repository) -> None:
    async with repo.engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: {(t, col["name"]): col["type"] for t in ("sessions", "invocation_results")
                       for col in sa.inspect(c).get_columns(t)})
    kinds = {key: type(kind).__name__ for key, kind in columns.items()
             if key[1] in ("exit_code", "dropped")}
    wide = "INTEGER" if repo.engine.dialect.name == "sqlite" else "BIGINT"
    assert kinds == {("sessions", "exit_code"): wide,
                     ("invocation_results", "exit_code"): wide,
                     ("invocation_results", "dropped"): wide}


async def test_database_from_before_migrations_is_stamped_and_kept(db_url: str) -> None:
    """A data dir the server made with create_all, before migrations (and before the
    replica columns): adopted at the baseline, upgraded, its rows kept."""
    engine = create_async_engine(driver_url(db_url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_baseline_schema().create_all)
            await conn.execute(sa.text(
                "INSERT INTO users (name, created_at, display_name) VALUES ('old', 1, 'Old')"))
            await conn.execute(sa.text(
                "INSERT INTO instances (id, public_key, region, hostname, platform, os_name, "
                "agent_version, activation_id, registered_at, connected) VALUES "
                "('mi-00000000000000001', :key, 'local', 'h', 'linux', 'os', '1', 'a', 1, "
                ":no)"), {"key": b"\x00\x01key", "no": False})
            await conn.execute(sa.text("DROP INDEX ix_request_nonces_seen_at"))
            for table in ("instances", "sessions"):
                await conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN replica"))
        assert await revision(engine) is None
    finally:
        await engine.dispose()
    repo = await Repository.open(db_url)
    try:
        assert repo.schema_revision == head_revision()
        assert await differences(repo.engine) == []
        assert (await repo.user("old"))["display_name"] == "Old"
        instance = await repo.instance("mi-00000000000000001")
        assert instance["public_key"] == b"\x00\x01key" and instance["replica"] == ""
        await repo.mark_connected("mi-00000000000000001", {"hostname": "new"}, "r1")
        assert await repo.instance_replicas(["mi-00000000000000001"]) == {
            "mi-00000000000000001": "r1"}
    finally:
        await repo.close()


async def test_a_fresh_database_is_not_taken_for_an_old_one(db_url: str) -> None:
    repo = await Repository.open(db_url)
    try:
        async with repo.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
        assert [r[0] for r in rows] == [head_revision()] and head_revision() != BASELINE
    finally:
        await repo.close()


async def test_a_schema_newer_than_the_server_is_one_clear_error(db_url: str) -> None:
    repo = await Repository.open(db_url)
    try:
        async with repo.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await repo.close()
    with pytest.raises(StorageError, match="revision 9999, which this porthole-server does "
                                           "not know"):
        await Repository.open(db_url)


async def test_replicas_migrating_at_once_take_turns(db_url: str, tmp_path: Path) -> None:
    """Four server processes start against one new database at the same moment."""
    dirs = []
    for n in range(4):
        data_dir = tmp_path / f"r{n}"
        data_dir.mkdir()
        (data_dir / "server.yaml").write_text(f"database_url: {db_url}\n")
        dirs.append(data_dir)
    procs = [subprocess.Popen([str(BIN / "porthole-server"), "migrate", "--data-dir", str(d)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in dirs]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip().endswith(f"is at schema revision {head_revision()}")
    repo = await Repository.open(db_url, migrate=False)
    try:
        assert await revision(repo.engine) == head_revision()
        assert await differences(repo.engine) == []
    finally:
        await repo.close()


async def test_repositories_opening_at_once_all_succeed(db_url: str) -> None:
    repos = await asyncio.gather(*(Repository.open(db_url) for _ in range(4)))
    try:
        assert {r.schema_revision for r in repos} == {head_revision()}
        await asyncio.gather(*(r.ensure_regions(["local", "cn-hangzhou"]) for r in repos))
        assert await repos[0].region_names() == ["cn-hangzhou", "local"]
    finally:
        for r in repos:
            await r.close()


async def test_an_unusable_database_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not supported"):
        await Repository.open("mysql://root@127.0.0.1/porthole")
    with pytest.raises(StorageError, match="cannot use the database") as err:
        await Repository.open("postgresql://postgres:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StorageError, match="does not exist"):
        await Repository.open(f"{POSTGRES}/porthole_t_missing_{uuid.uuid4().hex}")
    assert driver_url("postgres://u@h/d").drivername == "postgresql+asyncpg"
    assert driver_url(f"sqlite:///{tmp_path}/x.db").drivername == "sqlite+aiosqlite"


# --- fleet: regions, activations, instances, sessions -----------------------------------------


async def _register(repo: Repository, activation: tuple[str, str], region: str = "local",
                    **info: str) -> str:
    instance_id = new_instance_id()
    await repo.register_instance(activation[0], activation[1], region, instance_id,
                                 os.urandom(32), info)
    return instance_id


async def test_regions(repo: Repository) -> None:
    await repo.ensure_regions(["local", "cn-hangzhou", "local"])
    await repo.ensure_regions(["local", "eu-central-1"])
    assert await repo.region_names() == ["cn-hangzhou", "eu-central-1", "local"]
    await repo.update_region("local", session_manager_enabled=False, idle_timeout=5,
                             max_session_duration=60)
    (local,) = await repo.regions("local")
    assert local == {"name": "local", "session_manager_enabled": False, "idle_timeout": 5,
                     "max_session_duration": 60}
    assert (await repo.regions("cn-hangzhou"))[0]["session_manager_enabled"] is True


async def test_activation_usage_limit_expiry_code_and_region(repo: Repository) -> None:
    activation = new_activation()
    await repo.create_activation(*activation, "local", usage_limit=2,
                                 expires_at=time.time() + 3600, description="two",
                                 created_by="admin")
    first = await _register(repo, activation, hostname="web-1", platform="linux")
    await _register(repo, activation)
    with pytest.raises(ActivationError) as err:
        await _register(repo, activation)
    assert err.value.code == "InvalidActivation.LimitExceeded"
    with pytest.raises(ActivationError) as err:
        await _register(repo, (activation[0], "wrong-code"))
    assert err.value.code == "InvalidActivation"
    with pytest.raises(ActivationError) as err:
        await _register(repo, activation, region="cn-hangzhou")
    assert err.value.code == "InvalidActivation.Region"
    expired = new_activation()
    await repo.create_activation(*expired, "local", usage_limit=5,
                                 expires_at=time.time() - 1, description="",
                                 created_by="admin")
    with pytest.raises(ActivationError) as err:
        await _register(repo, expired)
    assert err.value.code == "InvalidActivation.Expired"
    listed = {a["id"]: a for a in await repo.list_activations()}
    assert listed[activation[0]]["usage_count"] == 2
    assert listed[activation[0]]["code_hash"] != activation[1]
    assert listed[expired[0]]["usage_count"] == 0
    row = await repo.instance(first)
    assert (row["hostname"], row["platform"], row["connected"]) == ("web-1", "linux", False)
    assert len(row["public_key"]) == 32 and isinstance(row["public_key"], bytes)
    assert len(await repo.list_instances(region="local")) == 2


async def test_activation_used_concurrently_never_exceeds_its_limit(repo: Repository,
                                                                     tmp_path: Path) -> None:
    activation = new_activation()
    await repo.create_activation(*activation, "local", usage_limit=3,
                                 expires_at=time.time() + 3600, description="",
                                 created_by="admin")
    other = await another(repo, tmp_path)
    try:
        outcomes = await asyncio.gather(
            *(_register(r, activation) for r in [repo, other] * 5), return_exceptions=True)
    finally:
        await other.close()
    refused = [o for o in outcomes if isinstance(o, ActivationError)]
    assert len(refused) == 7 and len(outcomes) - len(refused) == 3
    assert {o.code for o in refused} == {"InvalidActivation.LimitExceeded"}
    assert len(await repo.list_instances()) == 3


async def test_agent_reports_are_made_to_fit(repo: Repository) -> None:
    activation = new_activation()
    await repo.create_activation(*activation, "local", usage_limit=1,
                                 expires_at=time.time() + 60, description="",
                                 created_by="admin")
    instance_id = await _register(repo, activation, hostname="h" * 300 + "\x00",
                                  os_name="Linux\x00 6.1", agent_version="\udcff1.0")
    row = await repo.instance(instance_id)
    assert row["hostname"] == "h" * 256
    assert row["os_name"] == "Linux\ufffd 6.1"
    assert row["agent_version"] == "\\udcff1.0"
    await repo.mark_connected(instance_id, {"hostname": "x\x00y", "platform": "p" * 99})
    row = await repo.instance(instance_id)
    assert (row["hostname"], row["platform"]) == ("x\ufffdy", "p" * 64)


async def test_connect_heartbeat_disconnect_and_replicas(repo: Repository) -> None:
    activation = new_activation()
    await repo.create_activation(*activation, "local", usage_limit=5,
                                 expires_at=time.time() + 60, description="",
                                 created_by="admin")
    a, b, c = [await _register(repo, activation) for _ in range(3)]
    before = time.time()
    await repo.mark_connected(a, {"hostname": "a", "agent_version": "2.0"}, "r1")
    await repo.mark_connected(b, {"hostname": "b"}, "r2")
    await repo.mark_connected(c, {"hostname": "c"}, "r2")
    row = await repo.instance(a)
    assert row["connected"] is True and row["replica"] == "r1"
    assert row["hostname"] == "a" and row["agent_version"] == "2.0"
    assert row["last_heartbeat"] >= before
    await asyncio.sleep(0.01)
    await repo.mark_heartbeat(a)
    assert (await repo.instance(a))["last_heartbeat"] > row["last_heartbeat"]
    assert await repo.connected_replicas() == {"r1", "r2"}
    assert await repo.instance_replicas([a, b, c, new_instance_id()]) == {
        a: "r1", b: "r2", c: "r2"}
    # more ids than one IN (...) takes
    many = [new_instance_id() for _ in range(1200)] + [b]
    assert await repo.instance_replicas(many) == {b: "r2"}
    # an agent that moved on to r3 is not marked offline by r1 leaving
    await repo.mark_connected(a, {}, "r3")
    await repo.mark_disconnected(a, "r1")
    assert (await repo.instance(a))["connected"] is True
    await repo.mark_disconnected(a, "r3")
    assert (await repo.instance(a))["connected"] is False
    await repo.disconnect_replicas({"r2"})
    assert await repo.connected_replicas() == set()
    await repo.mark_connected(b, {}, "r4")
    await repo.reset_connections("r4")
    assert (await repo.instance(b))["connected"] is False
    assert await repo.deregister_instance(c) is True
    assert await repo.deregister_instance(c) is False
    assert {i["id"] for i in await repo.list_instances()} == {a, b}
    assert {i["id"] for i in await repo.list_instances(ids=[a, c])} == {a}
    assert [i["id"] for i in await repo.list_instances(ids=[*many, a, a])] == [a, b]
    assert (await repo.instance(c))["deregistered_at"] is not None


async def test_sessions(repo: Repository) -> None:
    instance_id = new_instance_id()
    common = {"instance_id": instance_id, "region": "local", "owner": "user/alice",
              "run_as": "porthole-user", "status": "Connecting", "replica": "r1"}
    await repo.create_session(id="s-1", channel=1, kind="shell", command="", reason="disk",
                              source_ip="127.0.0.1", **common)
    await repo.create_session(id="s-2", channel=2, kind="port", port_number=22,
                              remote_host="127.0.0.1", **common)
    assert (await repo.session_by_channel(instance_id, 1))["id"] == "s-1"
    await repo.update_session("s-1", status="Active")
    assert [s["id"] for s in await repo.list_sessions(active=True)] == ["s-1", "s-2"]
    await repo.update_session("s-1", status="Terminated", ended_at=time.time(),
                              exit_code=3221225477, end_reason="closed\x00 by agent")
    ended = await repo.session("s-1")
    assert ended["exit_code"] == 3221225477 and ended["end_reason"] == "closed\ufffd by agent"
    assert await repo.session_by_channel(instance_id, 1) is None
    assert [s["id"] for s in await repo.list_sessions(active=True)] == ["s-2"]
    assert [s["id"] for s in await repo.list_sessions()] == ["s-1", "s-2"]
    port = await repo.session("s-2")
    assert (port["kind"], port["port_number"], port["remote_host"]) == ("port", 22, "127.0.0.1")


# --- IAM ----------------------------------------------------------------------------------------


async def test_users_groups_and_policy_names(repo: Repository) -> None:
    await repo.create_user("alice", ["ReadOnlyAccess"], display_name="Alice")
    await repo.create_user("bob")
    with pytest.raises(sa.exc.IntegrityError):
        await repo.create_user("bob")
    await repo.set_password_hash("alice", "$argon2id$fake")
    alice = await repo.user("alice")
    assert alice["password_hash"] == "$argon2id$fake" and alice["password_set_at"] > 0
    await repo.set_password_hash("alice", None)
    assert (await repo.user("alice"))["password_set_at"] is None
    await repo.create_group("ops", "operators")
    assert await repo.add_user_to_group("ops", "alice") is True
    assert await repo.add_user_to_group("ops", "alice") is False
    assert await repo.add_user_to_group("ops", "nobody") is False  # no such user
    assert await repo.attach_policy("group", "ops", "SessionManagerUserAccess") is True
    assert await repo.group_members("ops") == ["alice"]
    assert await repo.groups_of_user("alice") == ["ops"]
    assert await repo.user_policy_names("alice") == ["ReadOnlyAccess",
                                                     "SessionManagerUserAccess"]
    assert await repo.remove_user_from_group("ops", "alice") is True
    assert await repo.remove_user_from_group("ops", "alice") is False
    assert await repo.user_policy_names("alice") == ["ReadOnlyAccess"]
    await repo.add_user_to_group("ops", "bob")
    await repo.delete_group("ops")
    assert await repo.group("ops") is None and await repo.groups_of_user("bob") == []
    await repo.create_access_key("alice", "PHALICE0000000001", "secret-1")
    await repo.delete_user("alice")
    assert await repo.user("alice") is None and await repo.access_key("PHALICE0000000001") is None
    assert [u["name"] for u in await repo.list_users()] == ["bob"]


async def test_access_keys(repo: Repository) -> None:
    await repo.create_user("alice")
    await repo.create_access_key("alice", "PHKEY00000000000A", "the-secret-a")
    await repo.create_access_key("alice", "PHKEY00000000000B", "the-secret-b")
    key = await repo.access_key("PHKEY00000000000A")
    assert key["secret"] == "the-secret-a" and key["status"] == "Active"
    async with repo.engine.connect() as conn:
        stored = (await conn.execute(sa.text(
            "SELECT secret FROM access_keys WHERE id = 'PHKEY00000000000A'"))).scalar()
    assert stored.startswith("v1:") and "the-secret-a" not in stored
    await repo.set_access_key_status("PHKEY00000000000A", "Inactive")
    listed = await repo.list_access_keys("alice")
    assert [(k["id"], k["status"]) for k in listed] == [("PHKEY00000000000A", "Inactive"),
                                                         ("PHKEY00000000000B", "Active")]
    assert "secret" not in listed[0]
    await repo.delete_access_key("PHKEY00000000000B")
    assert [k["id"] for k in await repo.list_access_keys()] == ["PHKEY00000000000A"]
    async with repo.engine.begin() as conn:  # a row from before secrets were sealed
        await conn.execute(sa.text(
            "INSERT INTO access_keys (id, user_name, secret, status, created_at) "
            "VALUES ('PHPLAIN0000000000', 'alice', 'plain', 'Active', 0)"))
    assert await repo.seal_plaintext_secrets() == 1
    assert (await repo.access_key("PHPLAIN0000000000"))["secret"] == "plain"
    assert await repo.seal_plaintext_secrets() == 0


async def test_a_server_with_another_master_key_is_refused(repo: Repository,
                                                            tmp_path: Path) -> None:
    await repo.create_user("alice")
    await repo.create_access_key("alice", "PHKEY00000000000A", "the-secret-a")
    elsewhere = tmp_path / "other-replica"
    elsewhere.mkdir()
    other = await Repository.open(repo.engine.url.render_as_string(hide_password=False))
    try:
        with pytest.raises(SecretError, match="sealed under another master key"):
            await install_keyring(elsewhere, other)  # a new master key made there
        assert (await repo.access_key("PHKEY00000000000A"))["secret"] == "the-secret-a"
        await install_keyring(tmp_path, other)  # the deployment's own key
        assert (await other.access_key("PHKEY00000000000A"))["secret"] == "the-secret-a"
    finally:
        await other.close()


async def test_policies_versions_and_attachments(repo: Repository) -> None:
    v1 = '{"Version": "1", "Statement": []}'
    await repo.create_policy("Custom", v1, "mine")
    assert await repo.add_policy_version("Custom", '{"v": 2}', set_default=False) == "v2"
    assert await repo.add_policy_version("Custom", '{"v": 3}', set_default=True) == "v3"
    assert (await repo.policy("Custom"))["default_version"] == "v3"
    assert [v["version_id"] for v in await repo.policy_versions("Custom")] == ["v1", "v2", "v3"]
    await repo.set_default_policy_version("Custom", "v1")
    assert await repo.default_documents(["Custom", "AdministratorAccess"]) == {
        "Custom": ("v1", v1)}
    await repo.delete_policy_version("Custom", "v2")
    assert await repo.policy_version("Custom", "v2") is None
    assert (await repo.policy_version("Custom", "v3"))["document"] == '{"v": 3}'
    # versions added at once from two places get distinct numbers
    numbers = await asyncio.gather(*(repo.add_policy_version("Custom", "{}", False)
                                     for _ in range(4)))
    assert sorted(numbers) == ["v4", "v5", "v6", "v7"]
    await repo.create_user("u")
    await repo.create_group("g")
    await repo.create_role("r", '{"Statement": []}', 3600)
    for kind, target in (("user", "u"), ("group", "g"), ("role", "r")):
        assert await repo.attach_policy(kind, target, "Custom") is True
        assert await repo.attach_policy(kind, target, "Custom") is False
    assert sorted(await repo.policy_attachments("Custom")) == [
        ("group", "g"), ("role", "r"), ("user", "u")]
    assert await repo.attached_policies("role", "r") == ["Custom"]
    assert await repo.detach_policy("user", "u", "Custom") is True
    assert await repo.detach_policy("user", "u", "Custom") is False
    await repo.delete_policy("Custom")
    assert await repo.policy("Custom") is None and await repo.policy_versions("Custom") == []
    assert [p["name"] for p in await repo.list_policies()] == []


async def test_roles(repo: Repository) -> None:
    await repo.create_role("deployer", '{"Statement": []}', 3600, "CI")
    await repo.attach_policy("role", "deployer", "CommandRunnerAccess")
    await repo.update_role("deployer", max_session_duration=7200, description="CI jobs")
    role = await repo.role("deployer")
    assert (role["max_session_duration"], role["description"]) == (7200, "CI jobs")
    assert [r["name"] for r in await repo.list_roles()] == ["deployer"]
    await repo.delete_role("deployer")
    assert await repo.role("deployer") is None
    assert await repo.attached_policies("role", "deployer") == []


async def test_instance_tags(repo: Repository) -> None:
    a, b = new_instance_id(), new_instance_id()
    assert await repo.all_instance_tags() == (0, {})
    await repo.change_instance_tags(a, {"env": "prod", "team": "web"}, [])
    await repo.change_instance_tags(b, {"env": "dev"}, [])
    await repo.change_instance_tags(a, {"env": "staging"}, ["team", "absent"])
    assert await repo.instance_tags(a) == {"env": "staging"}
    generation, tags = await repo.all_instance_tags()
    assert generation == 3 and await repo.tags_generation() == 3
    assert tags == {a: {"env": "staging"}, b: {"env": "dev"}}
    # the same key set from several requests at once: no error, one value wins
    await asyncio.gather(*(repo.change_instance_tags(b, {"owner": f"o{n}"}, [])
                           for n in range(5)))
    assert (await repo.instance_tags(b))["owner"] in {f"o{n}" for n in range(5)}
    assert await repo.tags_generation() == 8


async def test_request_nonces(repo: Repository) -> None:
    assert await repo.remember_nonce("PHKEY", "n" * 32, 900) is True
    assert await repo.remember_nonce("PHKEY", "n" * 32, 900) is False
    assert await repo.remember_nonce("PHOTHER", "n" * 32, 900) is True
    results = await asyncio.gather(*(repo.remember_nonce("PHKEY", "m" * 32, 900)
                                     for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]
    async with repo.engine.begin() as conn:  # seen long ago: pruned, then accepted again
        await conn.execute(sa.text("UPDATE request_nonces SET seen_at = 0"))
    repo._nonces_pruned_at = 0.0
    assert await repo.remember_nonce("PHKEY", "n" * 32, 900) is True


# --- audit --------------------------------------------------------------------------------------


async def test_audit_append_filter_and_verify(repo: Repository) -> None:
    await repo.audit(principal="user/alice", action="ecs:RunCommand", outcome="Allowed",
                     resource="acs:ecs:local:1:instance/mi-1", source_ip="10.0.0.1",
                     request_id="req-1", detail="ünïcode ✓")
    await repo.audit_many([
        {"principal": "user/bob", "action": "ram:CreateUser", "outcome": "Denied"},
        {"principal": "system", "action": "SessionStart", "outcome": "Allowed",
         "detail": "nul\x00 and a lone \udc80 surrogate", "resource": "r" * 600},
    ])
    await repo.audit_many([])
    report = await repo.verify_audit()
    assert report["Valid"] and report["Count"] == 3 and report["HeadSeq"] == 3
    assert repo.audit_written == (3, report["HeadHash"])
    entries = await repo.audit_entries()
    assert [e["seq"] for e in entries] == [3, 2, 1]
    assert entries[0]["detail"] == "nul\ufffd and a lone \\udc80 surrogate"
    assert len(entries[0]["resource"]) == 512
    assert entries[2]["detail"] == "ünïcode ✓"
    assert [e["seq"] for e in await repo.audit_entries(principal="bob")] == [2]
    assert [e["seq"] for e in await repo.audit_entries(action="ECS:runcommand")] == [1]
    assert [e["seq"] for e in await repo.audit_entries(outcome="Allowed", limit=1)] == [3]
    assert [e["seq"] for e in await repo.audit_entries(before_seq=3)] == [2, 1]
    assert await repo.audit_entries(since=time.time() + 60) == []
    async with repo.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE audit_log SET outcome = 'Denied' WHERE seq = 1"))
    edited = await repo.verify_audit()
    assert not edited["Valid"] and edited["Problems"][0]["Seq"] == 1
    assert "altered" in edited["Problems"][0]["Problem"]


async def test_audit_chain_with_two_servers_appending_at_once(repo: Repository,
                                                             tmp_path: Path) -> None:
    other = await another(repo, tmp_path)
    try:
        async def append(r: Repository, name: str) -> None:
            for n in range(25):
                if n % 5 == 4:
                    await r.audit_many([{"principal": name, "action": f"batch{n}.{i}",
                                         "outcome": "Allowed"} for i in range(3)])
                else:
                    await r.audit(principal=name, action=f"a{n}", outcome="Allowed")

        await asyncio.gather(append(repo, "user/one"), append(other, "user/two"),
                             append(repo, "user/three"), append(other, "user/four"))
        report = await other.verify_audit()
    finally:
        await other.close()
    assert report["Problems"] == [] and report["Valid"]
    assert report["Count"] == report["HeadSeq"] == 4 * (20 + 5 * 3)
    entries = await repo.audit_entries(limit=1000)
    assert [e["seq"] for e in entries] == list(range(140, 0, -1))
    for principal in ("user/one", "user/two", "user/three", "user/four"):
        own = [e["action"] for e in reversed(entries) if e["principal"] == principal]
        assert own[:4] == ["a0", "a1", "a2", "a3"] and own[4:7] == [
            "batch4.0", "batch4.1", "batch4.2"]  # each batch contiguous and in order
    verified = await repo.verify_audit()
    assert verified["Valid"] and verified["HeadHash"] == report["HeadHash"]


# --- commands ----------------------------------------------------------------------------------


async def _invoke(repo: Repository, instance_ids: list[str], **values: object) -> str:
    invocation_id = new_invocation_id()
    invocation = {"id": invocation_id, "region": "local", "kind": "command",
                  "command_id": "", "command_name": "", "command_type": "RunShellScript",
                  "command_content": "echo hi", "parameters": "", "file": "{}",
                  "username": "root", "timeout": 60, "working_dir": "",
                  "repeat_mode": "Once", "frequency": "", "next_run_at": None, "repeats": 1,
                  "max_concurrency": 0, "max_errors": -1, "delivery_timeout": 600.0,
                  "created_by": "alice", **values}
    tasks = [{"instance_id": i, "repeat": 1, "status": "Pending"} for i in instance_ids] \
        if invocation["repeat_mode"] == "Once" else []
    await repo.create_invocation(invocation, [(i, "") for i in instance_ids], tasks)
    return invocation_id


def _result(status: str = "Success", exit_code: int | None = 0, **extra: object) -> dict:
    return {"status": status, "exit_code": exit_code, "error_code": "", "error_info": "",
            "output_size": 0, "dropped": 0, "started_at": time.time() - 1,
            "finished_at": time.time(), **extra}


async def test_saved_commands(repo: Repository) -> None:
    ids = []
    for name in ("backup_db", "backupXdb", "Backup-web", "deploy"):
        ids.append(new_command_id())
        await repo.create_command(id=ids[-1], region="local", name=name, description="",
                                  type="RunShellScript", content="echo", working_dir="",
                                  timeout=60, enable_parameter=True,
                                  parameter_names='["a"]', default_parameters="{}",
                                  created_by="alice")
        await asyncio.sleep(0.002)
    rows, total = await repo.list_commands(name="backup_*")
    assert total == 1 and [r["name"] for r in rows] == ["backup_db"]  # "_" is no wildcard
    rows, total = await repo.list_commands(name="backup*")
    assert total == 2 and {r["name"] for r in rows} == {"backup_db", "backupXdb"}
    rows, total = await repo.list_commands(name="Backup-web")
    assert total == 1 and rows[0]["enable_parameter"] is True
    rows, total = await repo.list_commands(region="local", limit=2, offset=1)
    assert total == 4 and [r["name"] for r in rows] == ["Backup-web", "backupXdb"]
    await repo.update_command(ids[3], description="ships it", timeout=120)
    changed = await repo.command(ids[3])
    assert (changed["description"], changed["timeout"]) == ("ships it", 120)
    assert changed["modified_at"] > changed["created_at"]
    await _invoke(repo, [new_instance_id()], command_id=ids[3])
    await _invoke(repo, [new_instance_id()], command_id=ids[3])
    assert await repo.command_invoke_counts([ids[3], ids[0]]) == {ids[3]: 2}
    assert await repo.delete_command(ids[0]) is True
    assert await repo.delete_command(ids[0]) is False


async def test_invocation_tasks_results_and_resends(repo: Repository) -> None:
    a, b, c = (new_instance_id() for _ in range(3))
    inv = await _invoke(repo, [a, b, c])
    assert (await repo.invocation(inv))["repeats"] == 1
    assert [t["instance_id"] for t in await repo.invocation_targets_of(inv)] == sorted([a, b, c])
    assert {(t["invocation_id"], t["instance_id"]) for t in await repo.pending_tasks()} == {
        (inv, a), (inv, b), (inv, c)}
    assert await repo.set_tasks([(inv, a, 1), (inv, b, 1)], only_from=("Pending",),
                                status="Running", dispatched_at=time.time()) == 2
    assert await repo.set_tasks([(inv, a, 1)], only_from=("Pending",), status="Failed") == 0
    assert await repo.active_tasks_of_instance(a) == [
        {"invocation_id": inv, "instance_id": a, "repeat": 1, "status": "Running"}]
    huge = 3221225477  # a Windows NTSTATUS exit code
    stored = await repo.store_results([
        ((inv, a, 1), b"out-a", _result(output_size=5)),
        ((inv, b, 1), b"", _result("Failed", huge, error_code="ExitCodeNonzero",
                                   dropped=5 << 30)),
        ((inv, a, 1), b"again", _result(output_size=5)),  # the same result twice in a batch
        (("t-unknown", a, 1), b"x", _result()),
    ])
    assert stored == [True, True, False, False]
    # resent after a reconnection: not fresh, nothing changes
    assert await repo.store_results([((inv, a, 1), b"other", _result("Failed", 1))]) == [False]
    assert await repo.store_result((inv, b, 1), _result()) is False
    task_a, task_b = await repo.task((inv, a, 1)), await repo.task((inv, b, 1))
    assert (task_a["status"], task_a["exit_code"], task_a["output_size"]) == ("Success", 0, 5)
    assert (task_b["exit_code"], task_b["dropped"]) == (huge, 5 << 30)
    assert await repo.read_output((inv, a, 1), 0, 100) == b"out-a"
    assert await repo.heads([(inv, a, 1), (inv, b, 1)], 3) == {(inv, a, 1): b"out"}
    assert await repo.latest_status_counts([inv]) == {
        inv: {"Success": 1, "Failed": 1, "Pending": 1}}
    assert await repo.invocation_status_counts(inv) == {"Success": 1, "Failed": 1,
                                                        "Pending": 1}
    # an exit code beyond 64 bits from a hostile agent is clamped, not a failed batch
    assert await repo.store_result((inv, c, 1), _result("Failed", 2**70,
                                                        error_info="e\x00" * 3000)) is True
    task_c = await repo.task((inv, c, 1))
    assert task_c["exit_code"] == 2**63 - 1 and task_c["error_info"].startswith("e\ufffd")
    rows, total = await repo.results_of(inv)
    assert total == 3 and [r["instance_id"] for r in rows] == sorted([a, b, c])


async def test_store_results_from_two_servers_at_once_is_fresh_once(repo: Repository,
                                                                    tmp_path: Path) -> None:
    instances = [new_instance_id() for _ in range(30)]
    inv = await _invoke(repo, instances)
    keys = [(inv, i, 1) for i in instances]
    await repo.set_tasks(keys, status="Running", dispatched_at=time.time())
    other = await another(repo, tmp_path)
    try:
        batches = [[(k, f"{k[1]}-{n}".encode(), _result(output_size=len(k[1]) + 2))
                    for k in keys] for n in range(4)]
        outcomes = await asyncio.gather(repo.store_results(batches[0]),
                                        other.store_results(batches[1]),
                                        repo.store_results(batches[2]),
                                        other.store_results(batches[3]))
    finally:
        await other.close()
    for position, key in enumerate(keys):
        winners = [n for n in range(4) if outcomes[n][position]]
        assert len(winners) == 1, key
        output = await repo.read_output(key, 0, 100)
        assert output == f"{key[1]}-{winners[0]}".encode()


async def test_many_tasks_in_one_invocation(repo: Repository) -> None:
    instances = [new_instance_id() for _ in range(1000)]
    inv = await _invoke(repo, instances)
    keys = [(inv, i, 1) for i in instances]
    assert await repo.set_tasks(keys, status="Running", dispatched_at=time.time()) == 1000
    stored = await repo.store_results([(k, k[1].encode(), _result(output_size=20))
                                       for k in keys])
    assert stored == [True] * 1000
    heads = await repo.heads(keys, 5)
    assert len(heads) == 1000 and heads[keys[999]] == keys[999][1][:5].encode()
    rows, total = await repo.results_of(inv, offset=990, limit=50)
    assert total == 1000 and len(rows) == 10
    assert await repo.latest_status_counts([inv]) == {inv: {"Success": 1000}}


async def test_output_chunks(repo: Repository) -> None:
    instance = new_instance_id()
    inv = await _invoke(repo, [instance])
    key = (inv, instance, 1)
    chunk = bytes(range(256)) * 256  # 64 KiB, every byte value
    await repo.add_output(key, 0, chunk)
    await repo.add_output(key, len(chunk), chunk[:1000])
    await repo.add_output(key, 0, b"a resent chunk is kept as first stored")
    await repo.add_output(key, 5000, b"")
    assert await repo.output_received(key) == len(chunk) + 1000
    assert await repo.read_output(key, 0, 4) == b"\x00\x01\x02\x03"
    assert await repo.read_output(key, len(chunk) - 2, 4) == chunk[-2:] + chunk[:2]
    assert await repo.read_output(key, 0, 1 << 20) == chunk + chunk[:1000]
    assert await repo.read_output(key, 1 << 20, 10) == b""
    await asyncio.gather(*(repo.add_output(key, 70000, b"racing") for _ in range(4)))
    assert await repo.read_output(key, 70000, 10) == b"racing"


async def test_schedules_reboots_and_repeats(repo: Repository) -> None:
    instance = new_instance_id()
    now = time.time()
    periodic = await _invoke(repo, [instance], repeat_mode="Period", frequency="rate(5m)",
                             next_run_at=now - 1, repeats=0)
    later = await _invoke(repo, [instance], repeat_mode="Period", frequency="rate(1h)",
                          next_run_at=now + 3600, repeats=0)
    on_reboot = await _invoke(repo, [instance], repeat_mode="EveryReboot", repeats=0)
    assert [s["id"] for s in await repo.due_schedules(now)] == [periodic]
    assert await repo.next_schedule_time() == pytest.approx(now - 1)
    await repo.update_invocation(periodic, stop_requested_at=now)
    assert await repo.due_schedules(now) == []
    rows, total = await repo.list_invocations(scheduled=True)
    assert total == 2 and {r["id"] for r in rows} == {later, on_reboot}
    rows, total = await repo.list_invocations(instance_id=instance, repeat_modes=["Period"])
    assert total == 2
    assert await repo.next_repeat(periodic, instance) == 1
    await repo.add_tasks(periodic, [{"instance_id": instance, "repeat": 1}], repeats=1)
    await repo.add_tasks(periodic, [{"instance_id": instance, "repeat": 2}], repeats=2)
    assert await repo.next_repeat(periodic, instance) == 3
    assert (await repo.invocation(periodic))["repeats"] == 2
    rows, total = await repo.results_of(periodic, include_history=True)
    assert total == 2 and [r["repeat"] for r in rows] == [1, 2]
    rows, total = await repo.results_of(periodic, instance_id=instance)
    assert total == 1 and rows[0]["repeat"] == 2
    await repo.record_boot(instance, "boot-1")
    await repo.record_boot(instance, "boot-2")
    assert await repo.instance_boot_ids([instance, new_instance_id()]) == {instance: "boot-2"}
    (target,) = await repo.reboot_targets(instance)
    assert (target["invocation_id"], target["boot_id"]) == (on_reboot, "")
    await repo.update_target(on_reboot, instance, boot_id="boot-2", done=True)
    assert await repo.reboot_targets(instance) == []
    # a task dispatched long ago whose result never came
    await repo.set_tasks([(periodic, instance, 2)], status="Running", dispatched_at=now - 7200)
    overdue = await repo.overdue_running_tasks(now)
    assert overdue == [{"invocation_id": periodic, "instance_id": instance, "repeat": 2}]

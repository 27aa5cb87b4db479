"""Baseline: the schema as it stood when migrations began.

Data directories created before then hold exactly these tables (the server made them with
``create_all``); server.migrations stamps such a database at this revision. ``schema`` is a
frozen copy of those tables, kept here rather than taken from the live metadata, so that this
revision creates the same tables whatever later revisions change.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

schema = sa.MetaData()

sa.Table(
    "audit_log", schema,
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float(), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("resource", sa.String(512), nullable=False),
    sa.Column("source_ip", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
sa.Table(
    "commands", schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("region", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(128), nullable=False, index=True),
    sa.Column("description", sa.String(512), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("working_dir", sa.String(1024), nullable=False),
    sa.Column("timeout", sa.Integer(), nullable=False),
    sa.Column("enable_parameter", sa.Boolean(), nullable=False),
    sa.Column("parameter_names", sa.Text(), nullable=False),
    sa.Column("default_parameters", sa.Text(), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("modified_at", sa.Float(), nullable=False),
)
sa.Table(
    "invocations", schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("command_id", sa.String(64), nullable=False, index=True),
    sa.Column("command_name", sa.String(128), nullable=False),
    sa.Column("command_type", sa.String(32), nullable=False),
    sa.Column("command_content", sa.Text(), nullable=False),
    sa.Column("parameters", sa.Text(), nullable=False),
    sa.Column("file", sa.Text(), nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("timeout", sa.Integer(), nullable=False),
    sa.Column("working_dir", sa.String(1024), nullable=False),
    sa.Column("repeat_mode", sa.String(16), nullable=False),
    sa.Column("frequency", sa.String(256), nullable=False),
    sa.Column("next_run_at", sa.Float(), index=True),
    sa.Column("repeats", sa.Integer(), nullable=False),
    sa.Column("max_concurrency", sa.Integer(), nullable=False),
    sa.Column("max_errors", sa.Integer(), nullable=False),
    sa.Column("delivery_timeout", sa.Float(), nullable=False),
    sa.Column("stop_requested_at", sa.Float()),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False, index=True),
)
sa.Table(
    "invocation_targets", schema,
    sa.Column("invocation_id", sa.String(64), sa.ForeignKey("invocations.id"), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True, index=True),
    sa.Column("boot_id", sa.String(64), nullable=False),
    sa.Column("done", sa.Boolean(), nullable=False),
)
sa.Table(
    "invocation_results", schema,
    sa.Column("invocation_id", sa.String(64), sa.ForeignKey("invocations.id"), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True, index=True),
    sa.Column("repeat", sa.Integer(), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("exit_code", sa.Integer()),
    sa.Column("error_code", sa.String(64), nullable=False),
    sa.Column("error_info", sa.Text(), nullable=False),
    sa.Column("output_size", sa.Integer(), nullable=False),
    sa.Column("dropped", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("dispatched_at", sa.Float()),
    sa.Column("started_at", sa.Float()),
    sa.Column("finished_at", sa.Float()),
)
sa.Table(
    "invocation_outputs", schema,
    sa.Column("invocation_id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("repeat", sa.Integer(), primary_key=True),
    sa.Column("offset", sa.Integer(), primary_key=True),
    sa.Column("data", sa.LargeBinary(), nullable=False),
)
sa.Table(
    "instance_boots", schema,
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("boot_id", sa.String(64), nullable=False),
    sa.Column("reported_at", sa.Float(), nullable=False),
)
sa.Table(
    "regions", schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("session_manager_enabled", sa.Boolean(), nullable=False),
    sa.Column("idle_timeout", sa.Integer(), nullable=False),
    sa.Column("max_session_duration", sa.Integer()),
)
sa.Table(
    "sessions", schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(32), nullable=False, index=True),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("channel", sa.Integer(), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("run_as", sa.String(64), nullable=False),
    sa.Column("command", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("source_ip", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("ended_at", sa.Float()),
    sa.Column("exit_code", sa.Integer()),
    sa.Column("end_reason", sa.Text(), nullable=False),
    sa.Column("recording", sa.String(1024), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("port_number", sa.Integer()),
    sa.Column("remote_host", sa.String(256), nullable=False),
    sa.Column("replica", sa.String(64), nullable=False, server_default=''),
)
sa.Table(
    "activations", schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("code_hash", sa.String(64), nullable=False),
    sa.Column("region", sa.String(64), nullable=False),
    sa.Column("description", sa.String(256), nullable=False),
    sa.Column("usage_limit", sa.Integer(), nullable=False),
    sa.Column("usage_count", sa.Integer(), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
)
sa.Table(
    "instances", schema,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("public_key", sa.LargeBinary(), nullable=False),
    sa.Column("region", sa.String(64), nullable=False, index=True),
    sa.Column("hostname", sa.String(256), nullable=False),
    sa.Column("platform", sa.String(64), nullable=False),
    sa.Column("os_name", sa.String(256), nullable=False),
    sa.Column("agent_version", sa.String(64), nullable=False),
    sa.Column("activation_id", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.Float(), nullable=False),
    sa.Column("last_heartbeat", sa.Float()),
    sa.Column("connected", sa.Boolean(), nullable=False),
    sa.Column("deregistered_at", sa.Float()),
    sa.Column("replica", sa.String(64), nullable=False, server_default=''),
)
sa.Table(
    "users", schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("password_hash", sa.String(256)),
    sa.Column("password_set_at", sa.Float()),
)
sa.Table(
    "access_keys", schema,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True),
    sa.Column("secret", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "user_policies", schema,
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
sa.Table(
    "groups", schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "group_members", schema,
    sa.Column("group_name", sa.String(64), sa.ForeignKey("groups.name"), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), primary_key=True),
)
sa.Table(
    "group_policies", schema,
    sa.Column("group_name", sa.String(64), sa.ForeignKey("groups.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
sa.Table(
    "policies", schema,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False),
    sa.Column("default_version", sa.String(16), nullable=False),
    sa.Column("next_version", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
)
sa.Table(
    "policy_versions", schema,
    sa.Column("policy_name", sa.String(128), sa.ForeignKey("policies.name"), primary_key=True),
    sa.Column("version_id", sa.String(16), primary_key=True),
    sa.Column("document", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "roles", schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(1024), nullable=False),
    sa.Column("trust_policy", sa.Text(), nullable=False),
    sa.Column("max_session_duration", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
)
sa.Table(
    "role_policies", schema,
    sa.Column("role_name", sa.String(64), sa.ForeignKey("roles.name"), primary_key=True),
    sa.Column("policy_name", sa.String(128), primary_key=True),
)
sa.Table(
    "instance_tags", schema,
    sa.Column("instance_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
sa.Table(
    "iam_meta", schema,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Integer(), nullable=False),
)
sa.Table(
    "request_nonces", schema,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.Float(), nullable=False, index=True),
)


def upgrade() -> None:
    schema.create_all(op.get_bind())


def downgrade() -> None:
    schema.drop_all(op.get_bind())

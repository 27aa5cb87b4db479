"""``porthole iam``: users, groups, access keys, policies, roles and temporary credentials;
``porthole instances tag``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.client import ApiError
from cli.common import client, fail, output_option
from cli.config import ConfigError, Profile, load_profile, save_profile
from cli.output import emit_json, emit_rows, resolve


def _show(output: str | None, data: dict[str, Any], text: str) -> None:
    data.pop("RequestId", None)
    if resolve(output) == "json":
        emit_json(data)
    else:
        click.echo(text)


def _read_document(path: str, what: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}")
    return text


@click.group()
def iam() -> None:
    """Users, groups, access keys, policies and roles."""


# --- users ---------------------------------------------------------------------------------


@iam.group()
def user() -> None:
    """RAM users."""


@user.command("create")
@click.argument("name")
@click.option("--display-name", default="")
@click.option("--password-stdin", is_flag=True, help="Read a console password from stdin")
@output_option
def user_create(name: str, display_name: str, password_stdin: bool, output: str | None) -> None:
    """Create a user (no access key, no policy yet)."""
    c = client()
    reply = c.call("CreateUser", UserName=name, DisplayName=display_name)
    if password_stdin:
        c.call("CreateLoginProfile", UserName=name, Password=sys.stdin.readline().rstrip("\n"))
        reply["User"]["LoginProfile"] = True
    _show(output, reply, f"created user {name}")


@user.command("list")
@output_option
def user_list(output: str | None) -> None:
    """List users."""
    rows = client().call("ListUsers")["Users"]
    emit_rows(resolve(output), rows, ["UserName", "DisplayName", "LoginProfile", "CreateDate"],
              "Users")


@user.command("show")
@click.argument("name")
@output_option
def user_show(name: str, output: str | None) -> None:
    """A user's groups, policies and access keys."""
    u = client().call("GetUser", UserName=name)["User"]
    if resolve(output) == "json":
        emit_json({"User": u})
        return
    click.echo(f"user {u['UserName']} (created {u['CreateDate']}; console password: "
               f"{'yes' if u['LoginProfile'] else 'no'})")
    click.echo(f"groups: {', '.join(u['Groups']) or '-'}")
    click.echo(f"policies: {', '.join(u['Policies']) or '-'}")
    for k in u["AccessKeys"]:
        click.echo(f"access key {k['AccessKeyId']} {k['Status']} (created {k['CreateDate']})")


@user.command("delete")
@click.argument("name")
@output_option
def user_delete(name: str, output: str | None) -> None:
    """Delete a user with its access keys, memberships and attachments."""
    _show(output, client().call("DeleteUser", UserName=name), f"deleted user {name}")


@user.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin")
@output_option
def user_set_password(name: str, password_stdin: bool, output: str | None) -> None:
    """Set a user's console password (prompted for on a terminal)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        fail("no terminal to ask for a password; pass --password-stdin")
    _show(output, client().call("CreateLoginProfile", UserName=name, Password=password),
          f"set the console password of {name}")


@user.command("remove-password")
@click.argument("name")
@output_option
def user_remove_password(name: str, output: str | None) -> None:
    """Remove a user's console password."""
    _show(output, client().call("DeleteLoginProfile", UserName=name),
          f"removed the console password of {name}")


# --- groups --------------------------------------------------------------------------------


@iam.group()
def group() -> None:
    """Groups of users; policies attached to a group apply to its members."""


@group.command("create")
@click.argument("name")
@click.option("--comments", default="")
@output_option
def group_create(name: str, comments: str, output: str | None) -> None:
    """Create a group."""
    _show(output, client().call("CreateGroup", GroupName=name, Comments=comments),
          f"created group {name}")


@group.command("list")
@output_option
def group_list(output: str | None) -> None:
    """List groups."""
    rows = client().call("ListGroups")["Groups"]
    emit_rows(resolve(output), rows, ["GroupName", "Comments", "CreateDate"], "Groups")


@group.command("show")
@click.argument("name")
@output_option
def group_show(name: str, output: str | None) -> None:
    """A group's members and policies."""
    g = client().call("GetGroup", GroupName=name)["Group"]
    if resolve(output) == "json":
        emit_json({"Group": g})
        return
    click.echo(f"group {g['GroupName']}: users {', '.join(g['Users']) or '-'}; "
               f"policies {', '.join(g['Policies']) or '-'}")


@group.command("delete")
@click.argument("name")
@output_option
def group_delete(name: str, output: str | None) -> None:
    """Delete a group (its members stay)."""
    _show(output, client().call("DeleteGroup", GroupName=name), f"deleted group {name}")


@group.command("add-user")
@click.argument("group_name", metavar="GROUP")
@click.argument("user_name", metavar="USER")
@output_option
def group_add_user(group_name: str, user_name: str, output: str | None) -> None:
    """Add USER to GROUP."""
    _show(output, client().call("AddUserToGroup", GroupName=group_name, UserName=user_name),
          f"added {user_name} to {group_name}")


@group.command("remove-user")
@click.argument("group_name", metavar="GROUP")
@click.argument("user_name", metavar="USER")
@output_option
def group_remove_user(group_name: str, user_name: str, output: str | None) -> None:
    """Remove USER from GROUP."""
    _show(output, client().call("RemoveUserFromGroup", GroupName=group_name,
                                UserName=user_name),
          f"removed {user_name} from {group_name}")


# --- access keys ---------------------------------------------------------------------------


@iam.group("access-key")
def access_key() -> None:
    """Access keys (at most two per user)."""


def _emit_key(output: str | None, key: dict[str, Any]) -> None:
    pair = {"AccessKeyId": key["AccessKeyId"], "AccessKeySecret": key["AccessKeySecret"]}
    if resolve(output) == "json":
        emit_json(pair)  # the shape `porthole configure --credentials-file` reads
    else:
        click.echo(f"AccessKeyId: {pair['AccessKeyId']}\nAccessKeySecret: "
                   f"{pair['AccessKeySecret']}\n(the secret is shown only now)")


@access_key.command("create")
@click.option("--user", "user_name", required=True)
@output_option
def access_key_create(user_name: str, output: str | None) -> None:
    """Create an access key; prints {"AccessKeyId", "AccessKeySecret"}."""
    _emit_key(output, client().call("CreateAccessKey", UserName=user_name)["AccessKey"])


@access_key.command("list")
@click.option("--user", "user_name", default=None, help="Default: yourself")
@output_option
def access_key_list(user_name: str | None, output: str | None) -> None:
    """List a user's access keys (never their secrets)."""
    rows = client().call("ListAccessKeys", UserName=user_name)["AccessKeys"]
    emit_rows(resolve(output), rows, ["AccessKeyId", "UserName", "Status", "CreateDate"],
              "AccessKeys")


def _set_status(key_id: str, status: str, output: str | None) -> None:
    reply = client().call("UpdateAccessKey", AccessKeyId=key_id, Status=status)
    _show(output, reply, f"access key {key_id} is {status}")


@access_key.command("disable")
@click.argument("key_id", metavar="ID")
@output_option
def access_key_disable(key_id: str, output: str | None) -> None:
    """Disable an access key (it can be enabled again)."""
    _set_status(key_id, "Inactive", output)


@access_key.command("enable")
@click.argument("key_id", metavar="ID")
@output_option
def access_key_enable(key_id: str, output: str | None) -> None:
    """Enable a disabled access key."""
    _set_status(key_id, "Active", output)


@access_key.command("delete")
@click.argument("key_id", metavar="ID")
@output_option
def access_key_delete(key_id: str, output: str | None) -> None:
    """Delete an access key."""
    _show(output, client().call("DeleteAccessKey", AccessKeyId=key_id),
          f"deleted access key {key_id}")


@access_key.command("rotate")
@click.argument("key_id", metavar="ID")
@output_option
def access_key_rotate(key_id: str, output: str | None) -> None:
    """Create a new key for ID's user and disable ID; delete ID once nothing uses it."""
    c = client()
    try:  # one's own key first: that needs no right to list other users
        mine = c.call("ListAccessKeys")["AccessKeys"]
    except ApiError:
        mine = []
    owner = next((k["UserName"] for k in mine if k["AccessKeyId"] == key_id), None)
    if owner is None:
        owner = _owner_of(c, key_id)
    new = c.call("CreateAccessKey", UserName=owner)["AccessKey"]
    c.call("UpdateAccessKey", AccessKeyId=key_id, Status="Inactive")
    _emit_key(output, new)


def _owner_of(c: Any, key_id: str) -> str:
    for u in c.call("ListUsers")["Users"]:
        keys = c.call("ListAccessKeys", UserName=u["UserName"])["AccessKeys"]
        if any(k["AccessKeyId"] == key_id for k in keys):
            return str(u["UserName"])
    fail(f"access key {key_id} does not exist")


# --- policies ------------------------------------------------------------------------------


@iam.group()
def policy() -> None:
    """Built-in and custom (versioned) policies."""


@policy.command("create")
@click.argument("name")
@click.option("--document", required=True, help="Policy JSON file ('-': stdin)")
@click.option("--description", default="")
@output_option
def policy_create(name: str, document: str, description: str, output: str | None) -> None:
    """Create a custom policy from a JSON document (version v1)."""
    reply = client().call("CreatePolicy", PolicyName=name, Description=description,
                          PolicyDocument=_read_document(document, "policy document"))
    _show(output, reply, f"created policy {name} (v1)")


@policy.command("update")
@click.argument("name")
@click.option("--document", required=True, help="Policy JSON file ('-': stdin)")
@click.option("--default/--no-default", "set_default", default=True, show_default=True,
              help="Make the new version the one in force")
@output_option
def policy_update(name: str, document: str, set_default: bool, output: str | None) -> None:
    """Add a new version of a custom policy."""
    reply = client().call("CreatePolicyVersion", PolicyName=name, SetAsDefault=set_default,
                          PolicyDocument=_read_document(document, "policy document"))
    v = reply["PolicyVersion"]
    _show(output, reply, f"policy {name} {v['VersionId']}"
          + (" is now the default" if v["IsDefaultVersion"] else " added"))


@policy.command("list")
@click.option("--type", "policy_type", type=click.Choice(["System", "Custom"]), default=None)
@output_option
def policy_list(policy_type: str | None, output: str | None) -> None:
    """List built-in (System) and custom policies."""
    rows = client().call("ListPolicies", PolicyType=policy_type)["Policies"]
    emit_rows(resolve(output), rows, ["PolicyName", "PolicyType", "DefaultVersion",
                                      "Description"], "Policies")


@policy.command("show")
@click.argument("name")
@click.option("--version", "version_id", default=None, help="e.g. v2 (default: in force)")
@output_option
def policy_show(name: str, version_id: str | None, output: str | None) -> None:
    """Print a policy's document."""
    c = client()
    if version_id:
        reply = c.call("GetPolicyVersion", PolicyName=name, VersionId=version_id)
        version = reply["PolicyVersion"]
    else:
        reply = c.call("GetPolicy", PolicyName=name)
        version = reply["DefaultPolicyVersion"]
    if resolve(output) == "json":
        reply.pop("RequestId", None)
        emit_json(reply)
    else:
        click.echo(json.dumps(json.loads(version["PolicyDocument"]), indent=2))


@policy.command("versions")
@click.argument("name")
@output_option
def policy_versions(name: str, output: str | None) -> None:
    """List the versions of a custom policy."""
    rows = client().call("ListPolicyVersions", PolicyName=name)["PolicyVersions"]
    emit_rows(resolve(output), rows, ["VersionId", "IsDefaultVersion", "CreateDate"],
              "PolicyVersions")


@policy.command("set-default")
@click.argument("name")
@click.argument("version_id", metavar="VERSION")
@output_option
def policy_set_default(name: str, version_id: str, output: str | None) -> None:
    """Put another version of a custom policy in force."""
    _show(output, client().call("SetDefaultPolicyVersion", PolicyName=name,
                                VersionId=version_id),
          f"policy {name} {version_id} is now the default")


@policy.command("delete-version")
@click.argument("name")
@click.argument("version_id", metavar="VERSION")
@output_option
def policy_delete_version(name: str, version_id: str, output: str | None) -> None:
    """Delete a version that is not the default."""
    _show(output, client().call("DeletePolicyVersion", PolicyName=name, VersionId=version_id),
          f"deleted {name} {version_id}")


@policy.command("delete")
@click.argument("name")
@output_option
def policy_delete(name: str, output: str | None) -> None:
    """Delete a custom policy (detach it first)."""
    _show(output, client().call("DeletePolicy", PolicyName=name), f"deleted policy {name}")


def _target(user: str | None, group: str | None, role: str | None) -> tuple[str, str, str]:
    given = [(k, v) for k, v in (("User", user), ("Group", group), ("Role", role)) if v]
    if len(given) != 1:
        fail("give exactly one of --user, --group or --role")
    kind, name = given[0]
    return kind, f"{kind}Name", name


def _attachment(verb: str, name: str, user: str | None, group: str | None, role: str | None,
                output: str | None) -> None:
    kind, param, target = _target(user, group, role)
    joiner = "To" if verb == "Attach" else "From"
    reply = client().call(f"{verb}Policy{joiner}{kind}", PolicyName=name, **{param: target})
    _show(output, reply, f"{verb.lower()}ed {name} {'to' if verb == 'Attach' else 'from'} "
                         f"{kind.lower()} {target}")


_target_options = [
    click.option("--user", default=None), click.option("--group", default=None),
    click.option("--role", default=None),
]


def _with_targets(f: Any) -> Any:
    for option in reversed(_target_options):
        f = option(f)
    return f


@policy.command("attach")
@click.argument("name")
@_with_targets
@output_option
def policy_attach(name: str, user: str | None, group: str | None, role: str | None,
                  output: str | None) -> None:
    """Attach a policy to a user, a group or a role."""
    _attachment("Attach", name, user, group, role, output)


@policy.command("detach")
@click.argument("name")
@_with_targets
@output_option
def policy_detach(name: str, user: str | None, group: str | None, role: str | None,
                  output: str | None) -> None:
    """Detach a policy from a user, a group or a role."""
    _attachment("Detach", name, user, group, role, output)


# --- roles and temporary credentials ---------------------------------------------------------


@iam.group()
def role() -> None:
    """Roles: assumed for temporary credentials."""


@role.command("create")
@click.argument("name")
@click.option("--trust-policy", default=None, help="Trust policy JSON file ('-': stdin)")
@click.option("--trust-user", "trust_users", multiple=True,
              help="Let this user assume the role (repeatable; instead of --trust-policy)")
@click.option("--max-session-duration", type=click.IntRange(900, 43200), default=3600,
              show_default=True, help="Seconds")
@click.option("--description", default="")
@output_option
def role_create(name: str, trust_policy: str | None, trust_users: tuple[str, ...],
                max_session_duration: int, description: str, output: str | None) -> None:
    """Create a role; its trust policy says who may assume it."""
    c = client()
    if bool(trust_policy) == bool(trust_users):
        fail("give --trust-policy FILE or --trust-user NAME (repeatable), not both")
    if trust_policy:
        document = _read_document(trust_policy, "trust policy")
    else:
        account = _account(c)
        document = json.dumps({"Version": "1", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"RAM": [f"acs:ram::{account}:user/{u}" for u in trust_users]}}]})
    reply = c.call("CreateRole", RoleName=name, AssumeRolePolicyDocument=document,
                   MaxSessionDuration=max_session_duration, Description=description)
    _show(output, reply, f"created role {reply['Role']['Arn']}")


def _account(c: Any) -> str:
    return str(c.call("GetCallerIdentity")["AccountId"])


@role.command("list")
@output_option
def role_list(output: str | None) -> None:
    """List roles."""
    rows = client().call("ListRoles")["Roles"]
    emit_rows(resolve(output), rows, ["RoleName", "Arn", "MaxSessionDuration", "CreateDate"],
              "Roles")


@role.command("show")
@click.argument("name")
@output_option
def role_show(name: str, output: str | None) -> None:
    """A role's trust policy and policies."""
    r = client().call("GetRole", RoleName=name)["Role"]
    if resolve(output) == "json":
        emit_json({"Role": r})
        return
    click.echo(f"role {r['Arn']} (max {r['MaxSessionDuration']} s); policies: "
               f"{', '.join(r['Policies']) or '-'}")
    click.echo(json.dumps(json.loads(r["AssumeRolePolicyDocument"]), indent=2))


@role.command("delete")
@click.argument("name")
@output_option
def role_delete(name: str, output: str | None) -> None:
    """Delete a role; its temporary credentials stop working."""
    _show(output, client().call("DeleteRole", RoleName=name), f"deleted role {name}")


@iam.command("assume-role")
@click.argument("role_arn")
@click.option("--session-name", default="cli-session", show_default=True)
@click.option("--duration", type=click.IntRange(900, 43200), default=3600, show_default=True,
              help="Seconds")
@output_option
def assume_role(role_arn: str, session_name: str, duration: int, output: str | None) -> None:
    """Print temporary credentials of a role (AccessKeyId, AccessKeySecret, SecurityToken,
    Expiration)."""
    reply = client().call("AssumeRole", RoleArn=role_arn, RoleSessionName=session_name,
                          DurationSeconds=duration)
    creds = reply["Credentials"]
    if resolve(output) == "json":
        emit_json(creds)
    else:
        for k, v in creds.items():
            click.echo(f"{k}: {v}")


@iam.command("whoami")
@output_option
def whoami(output: str | None) -> None:
    """The identity the current credentials belong to."""
    reply = client().call("GetCallerIdentity")
    _show(output, reply, reply["Arn"] + (f" (expires {reply['Expiration']})"
                                         if reply.get("Expiration") else ""))


@iam.command("configure-role")
@click.argument("profile_name", metavar="PROFILE")
@click.option("--role-arn", required=True)
@click.option("--source-profile", default=None,
              help="Profile whose access key assumes the role (default: the current one)")
@click.option("--session-name", default="", help="RoleSessionName (default: USER-time)")
@click.option("--duration", type=click.IntRange(900, 43200), default=None, help="Seconds")
def configure_role(profile_name: str, role_arn: str, source_profile: str | None,
                   session_name: str, duration: int | None) -> None:
    """Write a profile that assumes ROLE_ARN by itself and renews before expiry."""
    source = source_profile or click.get_current_context().find_root().obj or "default"
    if source == profile_name:
        fail("the role profile needs a different --source-profile")
    try:
        current = load_profile(profile_name)
    except ConfigError:
        current = Profile(name=profile_name)
    current.role_arn, current.source_profile = role_arn, source
    current.role_session_name = session_name
    current.duration_seconds = str(duration or "")
    path = save_profile(current, profile_name)
    click.echo(f"wrote profile {profile_name!r} to {path}: assumes {role_arn} with the keys "
               f"of profile {source!r}")


# --- instance tags -------------------------------------------------------------------------


@click.command("tag")
@click.argument("instance_id", metavar="INSTANCE")
@click.argument("tags", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="Remove this tag")
@output_option
def instances_tag(instance_id: str, tags: tuple[str, ...], remove: tuple[str, ...],
                  output: str | None) -> None:
    """Set or remove tags of an instance (policies see them as ecs:tag/KEY); prints its tags."""
    c = client()
    pairs = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            fail(f"tag {tag!r} is not KEY=VALUE")
        pairs.append({"Key": key, "Value": value})
    if pairs:
        c.call("TagResources", ResourceIds=[instance_id], Tags=pairs)
    if remove:
        c.call("UntagResources", ResourceIds=[instance_id], TagKeys=list(remove))
    rows = c.call("ListTagResources", ResourceIds=[instance_id])["TagResources"]
    emit_rows(resolve(output), [{"Key": r["TagKey"], "Value": r["TagValue"]} for r in rows],
              ["Key", "Value"], "Tags")

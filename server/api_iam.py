"""API actions: RAM users, groups, access keys, policies and roles; STS AssumeRole.

Every action is policy-gated like any other (``ram:*``, ``sts:AssumeRole``); resources are
``acs:ram::{account}:user/NAME`` (also for a user's access keys and login profile),
``…:group/NAME``, ``…:policy/NAME`` and ``…:role/NAME``.
"""

from __future__ import annotations

import re
from typing import Any

from proto.ids import new_access_key
from server.api import (
    Context,
    Param,
    action,
    authorize_resource,
    instance_rows,
    iso,
    region_arn,
)
from server.auth import issue_temporary_credentials
from server.errors import ApiError, invalid_parameter
from server.policy import (
    BUILTIN_POLICIES,
    MAX_DOCUMENT_CHARS,
    PolicyError,
    parse_policy,
    parse_trust_policy,
    trusts,
)
from server.secrets import hash_password, repo_keyring

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
POLICY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9._@=,-]{2,64}$")
MAX_ACCESS_KEYS = 2
MAX_POLICY_VERSIONS = 5
KINDS = {"user": "UserName", "group": "GroupName", "role": "RoleName"}


def ram_arn(ctx: Context, kind: str, name: str) -> str:
    return f"acs:ram::{ctx.services.config.account_id}:{kind}/{name}"


def _name(param: str, value: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if not pattern.match(value):
        rule = ("1-64 letters, digits, '.', '_', '@' or '-'" if pattern is NAME_RE
                else "1-128 letters, digits or '-'")
        raise invalid_parameter(param, f"{value[:64]!r} must be {rule}, starting with a "
                                       "letter or digit")
    return value


def _not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, f"EntityNotExist.{kind.capitalize()}", f"{kind} {name} does not exist")


def _exists(kind: str, name: str) -> ApiError:
    return ApiError(409, f"EntityAlreadyExists.{kind.capitalize()}",
                    f"{kind} {name} already exists")


async def _need(ctx: Context, kind: str, name: str) -> dict[str, Any]:
    row = await getattr(ctx.services.repo, kind)(name)
    if row is None:
        raise _not_found(kind, name)
    return row


def _document(param: str, text: str, trust: bool = False) -> str:
    if len(text) > MAX_DOCUMENT_CHARS:
        raise invalid_parameter(param, f"is longer than {MAX_DOCUMENT_CHARS} characters")
    try:
        parsed = parse_trust_policy(text) if trust else parse_policy(text)
    except PolicyError as exc:
        raise ApiError(400, "MalformedPolicyDocument", f"{param}: {exc}") from None
    return parsed.source


# --- users ---------------------------------------------------------------------------------


def _user_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"UserName": row["name"], "DisplayName": row["display_name"],
            "CreateDate": iso(row["created_at"]),
            "LoginProfile": row["password_hash"] is not None}


@action("CreateUser", "ram:CreateUser", "Create a RAM user.",
        Param("UserName", "string", "1-64 letters, digits, '.', '_', '@', '-'", required=True),
        Param("DisplayName", "string", "Free text", default=""),
        mutating=True)
async def create_user(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:CreateUser", ram_arn(ctx, "user", name))
    if await ctx.services.repo.user(name) is not None:
        raise _exists("user", name)
    await ctx.services.repo.create_user(name, display_name=p["DisplayName"][:128])
    return {"User": _user_view(await _need(ctx, "user", name))}


@action("GetUser", "ram:GetUser", "A user with its groups, policies and access keys.",
        Param("UserName", "string", "The user", required=True))
async def get_user(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:GetUser", ram_arn(ctx, "user", name))
    repo = ctx.services.repo
    view = _user_view(await _need(ctx, "user", name))
    view["Groups"] = await repo.groups_of_user(name)
    view["Policies"] = await repo.attached_policies("user", name)
    view["AccessKeys"] = [_key_view(k) for k in await repo.list_access_keys(name)]
    return {"User": view}


@action("ListUsers", "ram:ListUsers", "List RAM users.")
async def list_users(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "ram:ListUsers", ram_arn(ctx, "user", "*"))
    return {"Users": [_user_view(r) for r in await ctx.services.repo.list_users()]}


@action("DeleteUser", "ram:DeleteUser",
        "Delete a user with its access keys, login profile, group memberships and "
        "attachments.",
        Param("UserName", "string", "The user", required=True),
        mutating=True)
async def delete_user(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:DeleteUser", ram_arn(ctx, "user", name))
    await _need(ctx, "user", name)
    if ctx.principal.kind == "user" and ctx.principal.name == name:
        raise ApiError(409, "DeleteConflict.Self", "you cannot delete the user you are signed "
                                                   "in as")
    await ctx.services.repo.delete_user(name)
    return {"UserName": name}


def _password(value: str, user: str) -> str:
    if not 8 <= len(value) <= 128:
        raise invalid_parameter("Password", "must be 8 to 128 characters")
    if value.casefold() == user.casefold():
        raise invalid_parameter("Password", "must not be the user name")
    return hash_password(value)


@action("CreateLoginProfile", "ram:CreateLoginProfile",
        "Set a console password (stored as an Argon2id hash).",
        Param("UserName", "string", "The user", required=True),
        Param("Password", "string", "8-128 characters", required=True),
        mutating=True)
async def create_login_profile(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:CreateLoginProfile", ram_arn(ctx, "user", name))
    await _need(ctx, "user", name)
    await ctx.services.repo.set_password_hash(name, _password(p["Password"], name))
    return {"LoginProfile": {"UserName": name}}


@action("DeleteLoginProfile", "ram:DeleteLoginProfile", "Remove a user's console password.",
        Param("UserName", "string", "The user", required=True),
        mutating=True)
async def delete_login_profile(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:DeleteLoginProfile", ram_arn(ctx, "user", name))
    await _need(ctx, "user", name)
    await ctx.services.repo.set_password_hash(name, None)
    return {"UserName": name}


# --- access keys ---------------------------------------------------------------------------


def _key_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"AccessKeyId": row["id"], "UserName": row["user_name"], "Status": row["status"],
            "CreateDate": iso(row["created_at"])}


@action("CreateAccessKey", "ram:CreateAccessKey",
        "Create an access key (at most two per user); the secret is shown only here.",
        Param("UserName", "string", "The user", required=True),
        mutating=True)
async def create_access_key(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"])
    authorize_resource(ctx, "ram:CreateAccessKey", ram_arn(ctx, "user", name))
    await _need(ctx, "user", name)
    repo = ctx.services.repo
    if len(await repo.list_access_keys(name)) >= MAX_ACCESS_KEYS:
        raise ApiError(409, "LimitExceeded.AccessKey",
                       f"user {name} already has {MAX_ACCESS_KEYS} access keys; delete one first")
    key_id, secret = new_access_key()
    await repo.create_access_key(name, key_id, secret)
    return {"AccessKey": {"AccessKeyId": key_id, "AccessKeySecret": secret, "UserName": name,
                          "Status": "Active"}}


async def _key(ctx: Context, key_id: str, ram_action: str) -> dict[str, Any]:
    rows = [k for k in await ctx.services.repo.list_access_keys() if k["id"] == key_id]
    # Authorize on the owner when the key exists, on user/* otherwise: never say which.
    owner = rows[0]["user_name"] if rows else "*"
    authorize_resource(ctx, ram_action, ram_arn(ctx, "user", owner))
    if not rows:
        raise ApiError(404, "EntityNotExist.AccessKey", f"access key {key_id[:64]} does not exist")
    return rows[0]


@action("UpdateAccessKey", "ram:UpdateAccessKey", "Enable or disable an access key.",
        Param("AccessKeyId", "string", "The key", required=True),
        Param("Status", "string", "Active or Inactive", required=True,
              enum=("Active", "Inactive")),
        mutating=True)
async def update_access_key(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    key = await _key(ctx, p["AccessKeyId"], "ram:UpdateAccessKey")
    if p["Status"] == "Inactive" and key["id"] == ctx.principal.key_id:
        raise ApiError(409, "DeleteConflict.KeyInUse",
                       "this request is signed with that key; disable it with another one")
    await ctx.services.repo.set_access_key_status(key["id"], p["Status"])
    return {"AccessKey": _key_view({**key, "status": p["Status"]})}


@action("DeleteAccessKey", "ram:DeleteAccessKey", "Delete an access key.",
        Param("AccessKeyId", "string", "The key", required=True),
        mutating=True)
async def delete_access_key(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    key = await _key(ctx, p["AccessKeyId"], "ram:DeleteAccessKey")
    if key["id"] == ctx.principal.key_id:
        raise ApiError(409, "DeleteConflict.KeyInUse",
                       "this request is signed with that key; delete it with another one")
    await ctx.services.repo.delete_access_key(key["id"])
    return {"AccessKeyId": key["id"]}


@action("ListAccessKeys", "ram:ListAccessKeys", "List a user's access keys (never secrets).",
        Param("UserName", "string", "The user (default: the caller)"))
async def list_access_keys(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("UserName", p["UserName"] or ctx.principal.name.split("/")[0])
    authorize_resource(ctx, "ram:ListAccessKeys", ram_arn(ctx, "user", name))
    await _need(ctx, "user", name)
    return {"AccessKeys": [_key_view(k) for k in
                           await ctx.services.repo.list_access_keys(name)]}


# --- groups --------------------------------------------------------------------------------


@action("CreateGroup", "ram:CreateGroup", "Create a group.",
        Param("GroupName", "string", "1-64 letters, digits, '.', '_', '@', '-'", required=True),
        Param("Comments", "string", "Free text", default=""),
        mutating=True)
async def create_group(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("GroupName", p["GroupName"])
    authorize_resource(ctx, "ram:CreateGroup", ram_arn(ctx, "group", name))
    if await ctx.services.repo.group(name) is not None:
        raise _exists("group", name)
    await ctx.services.repo.create_group(name, p["Comments"][:1024])
    return {"Group": {"GroupName": name, "Comments": p["Comments"][:1024]}}


@action("GetGroup", "ram:GetGroup", "A group with its members and policies.",
        Param("GroupName", "string", "The group", required=True))
async def get_group(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("GroupName", p["GroupName"])
    authorize_resource(ctx, "ram:GetGroup", ram_arn(ctx, "group", name))
    row = await _need(ctx, "group", name)
    repo = ctx.services.repo
    return {"Group": {"GroupName": name, "Comments": row["description"],
                      "CreateDate": iso(row["created_at"]),
                      "Users": await repo.group_members(name),
                      "Policies": await repo.attached_policies("group", name)}}


@action("ListGroups", "ram:ListGroups", "List groups.")
async def list_groups(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "ram:ListGroups", ram_arn(ctx, "group", "*"))
    return {"Groups": [{"GroupName": r["name"], "Comments": r["description"],
                        "CreateDate": iso(r["created_at"])}
                       for r in await ctx.services.repo.list_groups()]}


@action("DeleteGroup", "ram:DeleteGroup", "Delete a group (members keep their accounts).",
        Param("GroupName", "string", "The group", required=True),
        mutating=True)
async def delete_group(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("GroupName", p["GroupName"])
    authorize_resource(ctx, "ram:DeleteGroup", ram_arn(ctx, "group", name))
    await _need(ctx, "group", name)
    await ctx.services.repo.delete_group(name)
    return {"GroupName": name}


async def _membership(ctx: Context, p: dict[str, Any], ram_action: str) -> tuple[str, str]:
    group, user = _name("GroupName", p["GroupName"]), _name("UserName", p["UserName"])
    authorize_resource(ctx, ram_action, ram_arn(ctx, "group", group))
    await _need(ctx, "group", group)
    await _need(ctx, "user", user)
    return group, user


@action("AddUserToGroup", "ram:AddUserToGroup", "Add a user to a group.",
        Param("GroupName", "string", "The group", required=True),
        Param("UserName", "string", "The user", required=True),
        mutating=True)
async def add_user_to_group(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    group, user = await _membership(ctx, p, "ram:AddUserToGroup")
    if not await ctx.services.repo.add_user_to_group(group, user):
        raise ApiError(409, "EntityAlreadyExists.User.Group", f"{user} is already in {group}")
    return {"GroupName": group, "UserName": user}


@action("RemoveUserFromGroup", "ram:RemoveUserFromGroup", "Remove a user from a group.",
        Param("GroupName", "string", "The group", required=True),
        Param("UserName", "string", "The user", required=True),
        mutating=True)
async def remove_user_from_group(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    group, user = await _membership(ctx, p, "ram:RemoveUserFromGroup")
    if not await ctx.services.repo.remove_user_from_group(group, user):
        raise ApiError(404, "EntityNotExist.User.Group", f"{user} is not in {group}")
    return {"GroupName": group, "UserName": user}


# --- policies ------------------------------------------------------------------------------


def _policy_view(row: dict[str, Any] | None, name: str) -> dict[str, Any]:
    if row is None:  # built-in
        return {"PolicyName": name, "PolicyType": "System", "DefaultVersion": "v1",
                "Description": "built-in policy"}
    return {"PolicyName": row["name"], "PolicyType": "Custom",
            "DefaultVersion": row["default_version"], "Description": row["description"],
            "CreateDate": iso(row["created_at"]), "UpdateDate": iso(row["updated_at"])}


async def _custom_policy(ctx: Context, name: str, ram_action: str) -> dict[str, Any]:
    name = _name("PolicyName", name, POLICY_NAME_RE)
    authorize_resource(ctx, ram_action, ram_arn(ctx, "policy", name))
    if name in BUILTIN_POLICIES:
        raise ApiError(400, "InvalidParameter.PolicyType",
                       f"{name} is a built-in policy and cannot be changed")
    row = await ctx.services.repo.policy(name)
    if row is None:
        raise _not_found("policy", name)
    return row


@action("CreatePolicy", "ram:CreatePolicy",
        "Create a custom policy; the document becomes version v1, the default.",
        Param("PolicyName", "string", "1-128 letters, digits or '-'", required=True),
        Param("PolicyDocument", "string", "The policy (JSON text, at most 6144 characters)",
              required=True),
        Param("Description", "string", "Free text", default=""),
        mutating=True)
async def create_policy(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("PolicyName", p["PolicyName"], POLICY_NAME_RE)
    authorize_resource(ctx, "ram:CreatePolicy", ram_arn(ctx, "policy", name))
    document = _document("PolicyDocument", p["PolicyDocument"])
    if name.casefold() in {n.casefold() for n in BUILTIN_POLICIES}:
        raise _exists("policy", name)
    if await ctx.services.repo.policy(name) is not None:
        raise _exists("policy", name)
    await ctx.services.repo.create_policy(name, document, p["Description"][:1024])
    return {"Policy": _policy_view(await ctx.services.repo.policy(name), name)}


@action("GetPolicy", "ram:GetPolicy", "A policy and the document of its default version.",
        Param("PolicyName", "string", "The policy", required=True))
async def get_policy(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("PolicyName", p["PolicyName"], POLICY_NAME_RE)
    authorize_resource(ctx, "ram:GetPolicy", ram_arn(ctx, "policy", name))
    if name in BUILTIN_POLICIES:
        return {"Policy": _policy_view(None, name),
                "DefaultPolicyVersion": {"VersionId": "v1", "IsDefaultVersion": True,
                                         "PolicyDocument": parse_policy(
                                             BUILTIN_POLICIES[name]).source}}
    row = await ctx.services.repo.policy(name)
    if row is None:
        raise _not_found("policy", name)
    version = await ctx.services.repo.policy_version(name, row["default_version"])
    attachments = await ctx.services.repo.policy_attachments(name)
    return {"Policy": {**_policy_view(row, name), "AttachmentCount": len(attachments)},
            "DefaultPolicyVersion": _version_view(version, row["default_version"])}


def _version_view(row: dict[str, Any], default: str) -> dict[str, Any]:
    return {"VersionId": row["version_id"], "IsDefaultVersion": row["version_id"] == default,
            "PolicyDocument": row["document"], "CreateDate": iso(row["created_at"])}


@action("ListPolicies", "ram:ListPolicies", "List built-in and custom policies.",
        Param("PolicyType", "string", "System or Custom (default: both)",
              enum=("System", "Custom")))
async def list_policies(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "ram:ListPolicies", ram_arn(ctx, "policy", "*"))
    rows = []
    if p["PolicyType"] in (None, "System"):
        rows += [_policy_view(None, n) for n in BUILTIN_POLICIES]
    if p["PolicyType"] in (None, "Custom"):
        rows += [_policy_view(r, r["name"]) for r in await ctx.services.repo.list_policies()]
    return {"Policies": rows}


@action("DeletePolicy", "ram:DeletePolicy",
        "Delete a custom policy and all its versions; it must be detached first.",
        Param("PolicyName", "string", "The policy", required=True),
        mutating=True)
async def delete_policy(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:DeletePolicy")
    attached = await ctx.services.repo.policy_attachments(row["name"])
    if attached:
        raise ApiError(409, "DeleteConflict.Policy.Attachment",
                       f"policy {row['name']} is attached to " + ", ".join(
                           f"{kind} {target}" for kind, target in attached[:5])
                       + "; detach it first")
    await ctx.services.repo.delete_policy(row["name"])
    return {"PolicyName": row["name"]}


@action("CreatePolicyVersion", "ram:CreatePolicyVersion",
        f"Add a version to a custom policy (at most {MAX_POLICY_VERSIONS} versions).",
        Param("PolicyName", "string", "The policy", required=True),
        Param("PolicyDocument", "string", "The policy (JSON text)", required=True),
        Param("SetAsDefault", "boolean", "Make it the default version", default=False),
        mutating=True)
async def create_policy_version(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:CreatePolicyVersion")
    document = _document("PolicyDocument", p["PolicyDocument"])
    repo = ctx.services.repo
    if len(await repo.policy_versions(row["name"])) >= MAX_POLICY_VERSIONS:
        raise ApiError(409, "LimitExceeded.Policy.Version",
                       f"policy {row['name']} has {MAX_POLICY_VERSIONS} versions; delete one "
                       "first")
    version = await repo.add_policy_version(row["name"], document, p["SetAsDefault"])
    default = version if p["SetAsDefault"] else row["default_version"]
    return {"PolicyVersion": _version_view(
        await repo.policy_version(row["name"], version), default)}


@action("ListPolicyVersions", "ram:ListPolicyVersions", "The versions of a custom policy.",
        Param("PolicyName", "string", "The policy", required=True))
async def list_policy_versions(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:ListPolicyVersions")
    return {"PolicyVersions": [_version_view(v, row["default_version"]) for v in
                               await ctx.services.repo.policy_versions(row["name"])]}


@action("GetPolicyVersion", "ram:GetPolicyVersion", "One version of a custom policy.",
        Param("PolicyName", "string", "The policy", required=True),
        Param("VersionId", "string", "e.g. v2", required=True))
async def get_policy_version(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:GetPolicyVersion")
    version = await ctx.services.repo.policy_version(row["name"], p["VersionId"])
    if version is None:
        raise _not_found("policy version", f"{row['name']} {p['VersionId'][:16]}")
    return {"PolicyVersion": _version_view(version, row["default_version"])}


@action("SetDefaultPolicyVersion", "ram:SetDefaultPolicyVersion",
        "Choose the version of a custom policy that is in force.",
        Param("PolicyName", "string", "The policy", required=True),
        Param("VersionId", "string", "e.g. v2", required=True),
        mutating=True)
async def set_default_policy_version(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:SetDefaultPolicyVersion")
    if await ctx.services.repo.policy_version(row["name"], p["VersionId"]) is None:
        raise _not_found("policy version", f"{row['name']} {p['VersionId'][:16]}")
    await ctx.services.repo.set_default_policy_version(row["name"], p["VersionId"])
    return {"PolicyName": row["name"], "DefaultVersion": p["VersionId"]}


@action("DeletePolicyVersion", "ram:DeletePolicyVersion",
        "Delete a version of a custom policy other than the default one.",
        Param("PolicyName", "string", "The policy", required=True),
        Param("VersionId", "string", "e.g. v2", required=True),
        mutating=True)
async def delete_policy_version(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _custom_policy(ctx, p["PolicyName"], "ram:DeletePolicyVersion")
    if p["VersionId"] == row["default_version"]:
        raise ApiError(409, "DeleteConflict.Policy.Version.Default",
                       f"{p['VersionId']} is the default version of {row['name']}; set "
                       "another default first")
    if await ctx.services.repo.policy_version(row["name"], p["VersionId"]) is None:
        raise _not_found("policy version", f"{row['name']} {p['VersionId'][:16]}")
    await ctx.services.repo.delete_policy_version(row["name"], p["VersionId"])
    return {"PolicyName": row["name"], "VersionId": p["VersionId"]}


def _attach_action(kind: str, attach: bool) -> None:
    verb = "Attach" if attach else "Detach"
    name = f"{verb}PolicyTo{kind.capitalize()}" if attach else \
        f"{verb}PolicyFrom{kind.capitalize()}"
    target_param = KINDS[kind]
    preposition = "to" if attach else "from"

    @action(name, f"ram:{name}", f"{verb} a built-in or custom policy {preposition} a {kind}.",
            Param("PolicyName", "string", "The policy", required=True),
            Param(target_param, "string", f"The {kind}", required=True),
            Param("PolicyType", "string", "System or Custom (optional; found by name)",
                  enum=("System", "Custom")),
            mutating=True)
    async def handler(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
        target = _name(target_param, p[target_param])
        policy = _name("PolicyName", p["PolicyName"], POLICY_NAME_RE)
        authorize_resource(ctx, f"ram:{name}", ram_arn(ctx, kind, target))
        await _need(ctx, kind, target)
        repo = ctx.services.repo
        if policy not in BUILTIN_POLICIES and await repo.policy(policy) is None:
            raise _not_found("policy", policy)
        if attach:
            if not await repo.attach_policy(kind, target, policy):
                raise ApiError(409, "EntityAlreadyExists.Policy.Attachment",
                               f"{policy} is already attached to {kind} {target}")
        elif not await repo.detach_policy(kind, target, policy):
            raise ApiError(404, "EntityNotExist.Policy.Attachment",
                           f"{policy} is not attached to {kind} {target}")
        return {"PolicyName": policy, target_param: target}


for _kind in KINDS:
    _attach_action(_kind, True)
    _attach_action(_kind, False)


# --- roles and temporary credentials ---------------------------------------------------------


def _role_view(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    return {"RoleName": row["name"], "Arn": ram_arn(ctx, "role", row["name"]),
            "Description": row["description"], "AssumeRolePolicyDocument": row["trust_policy"],
            "MaxSessionDuration": row["max_session_duration"],
            "CreateDate": iso(row["created_at"])}


@action("CreateRole", "ram:CreateRole",
        "Create a role that the principals named by its trust policy may assume.",
        Param("RoleName", "string", "1-64 letters, digits, '.', '_', '@', '-'", required=True),
        Param("AssumeRolePolicyDocument", "string",
              'Trust policy: statements with "Principal": {"RAM": [ARN, ...]} and Action '
              "sts:AssumeRole", required=True),
        Param("MaxSessionDuration", "integer", "Longest lifetime of its credentials, seconds",
              default=3600, minimum=900, maximum=43200),
        Param("Description", "string", "Free text", default=""),
        mutating=True)
async def create_role(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("RoleName", p["RoleName"])
    authorize_resource(ctx, "ram:CreateRole", ram_arn(ctx, "role", name))
    trust = _document("AssumeRolePolicyDocument", p["AssumeRolePolicyDocument"], trust=True)
    if await ctx.services.repo.role(name) is not None:
        raise _exists("role", name)
    await ctx.services.repo.create_role(name, trust, p["MaxSessionDuration"],
                                        p["Description"][:1024])
    return {"Role": _role_view(ctx, await _need(ctx, "role", name))}


@action("GetRole", "ram:GetRole", "A role with its trust policy and policies.",
        Param("RoleName", "string", "The role", required=True))
async def get_role(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("RoleName", p["RoleName"])
    authorize_resource(ctx, "ram:GetRole", ram_arn(ctx, "role", name))
    view = _role_view(ctx, await _need(ctx, "role", name))
    view["Policies"] = await ctx.services.repo.attached_policies("role", name)
    return {"Role": view}


@action("ListRoles", "ram:ListRoles", "List roles.")
async def list_roles(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "ram:ListRoles", ram_arn(ctx, "role", "*"))
    return {"Roles": [_role_view(ctx, r) for r in await ctx.services.repo.list_roles()]}


@action("UpdateRole", "ram:UpdateRole", "Change a role's trust policy or maximum duration.",
        Param("RoleName", "string", "The role", required=True),
        Param("NewAssumeRolePolicyDocument", "string", "New trust policy"),
        Param("NewMaxSessionDuration", "integer", "Seconds", minimum=900, maximum=43200),
        mutating=True)
async def update_role(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("RoleName", p["RoleName"])
    authorize_resource(ctx, "ram:UpdateRole", ram_arn(ctx, "role", name))
    await _need(ctx, "role", name)
    values: dict[str, Any] = {}
    if p["NewAssumeRolePolicyDocument"] is not None:
        values["trust_policy"] = _document("NewAssumeRolePolicyDocument",
                                           p["NewAssumeRolePolicyDocument"], trust=True)
    if p["NewMaxSessionDuration"] is not None:
        values["max_session_duration"] = p["NewMaxSessionDuration"]
    if values:
        await ctx.services.repo.update_role(name, **values)
    return {"Role": _role_view(ctx, await _need(ctx, "role", name))}


@action("DeleteRole", "ram:DeleteRole",
        "Delete a role; credentials issued for it stop working at once.",
        Param("RoleName", "string", "The role", required=True),
        mutating=True)
async def delete_role(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    name = _name("RoleName", p["RoleName"])
    authorize_resource(ctx, "ram:DeleteRole", ram_arn(ctx, "role", name))
    await _need(ctx, "role", name)
    await ctx.services.repo.delete_role(name)
    return {"RoleName": name}


@action("AssumeRole", "sts:AssumeRole",
        "Temporary credentials of a role: AccessKeyId, AccessKeySecret, SecurityToken and "
        "Expiration. The caller needs sts:AssumeRole on the role, and the role's trust policy "
        "must name the caller.",
        Param("RoleArn", "string", "acs:ram::ACCOUNT:role/NAME", required=True),
        Param("RoleSessionName", "string", "2-64 characters naming this use of the role",
              required=True),
        Param("DurationSeconds", "integer", "Lifetime (default 3600, at most the role's "
              "MaxSessionDuration)", default=3600, minimum=900, maximum=43200))
async def assume_role(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    account = ctx.services.config.account_id
    prefix = f"acs:ram::{account}:role/"
    arn = p["RoleArn"]
    if not arn.startswith(prefix) or not NAME_RE.match(arn[len(prefix):]):
        raise invalid_parameter("RoleArn", f"{arn[:128]!r} is not {prefix}NAME")
    session = p["RoleSessionName"]
    if not SESSION_NAME_RE.match(session):
        raise invalid_parameter("RoleSessionName",
                                "must be 2-64 letters, digits or ._@=,-")
    authorize_resource(ctx, "sts:AssumeRole", arn)
    if ctx.principal.kind != "user":
        raise ApiError(403, "Forbidden.RoleChaining",
                       f"{ctx.principal.arn} holds temporary credentials; assume {arn} with "
                       "a user's access key")
    role = await ctx.services.repo.role(arn[len(prefix):])
    caller = ctx.principal.ram_arn(account)
    if role is None or not trusts(parse_trust_policy(role["trust_policy"]), caller, account,
                                  {"acs:SourceIp": ctx.principal.source_ip}):
        raise ApiError(403, "Forbidden.TrustPolicy",
                       f"{ctx.principal.arn} is not allowed to perform sts:AssumeRole on {arn}: "
                       "the role does not exist or its trust policy does not name the caller")
    if p["DurationSeconds"] > role["max_session_duration"]:
        raise invalid_parameter("DurationSeconds", f"must be at most the role's "
                                f"MaxSessionDuration ({role['max_session_duration']})")
    creds = issue_temporary_credentials(repo_keyring(ctx.services.repo), role, session,
                                        caller, p["DurationSeconds"])
    creds["Expiration"] = iso(creds["Expiration"])
    return {"Credentials": creds,
            "AssumedRoleUser": {"Arn": f"acs:ram::{account}:assumed-role/{role['name']}/"
                                       f"{session}"}}


@action("GetCallerIdentity", "sts:GetCallerIdentity",
        "Who the request's credentials belong to (needs no permission).")
async def get_caller_identity(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    account = ctx.services.config.account_id
    return {"AccountId": account, "Arn": ctx.principal.ram_arn(account),
            "IdentityType": "AssumedRole" if ctx.principal.kind != "user" else "RAMUser",
            "AccessKeyId": ctx.principal.key_id,
            "Expiration": iso(ctx.principal.expires_at)}


# --- instance tags (ecs:tag/<key> in policy conditions) -------------------------------------

TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=+@-]{0,127}$")
MAX_TAGS = 20


async def _tag_targets(ctx: Context, p: dict[str, Any], ram_action: str) -> list[str]:
    ids = list(dict.fromkeys(p["ResourceIds"]))
    if not 1 <= len(ids) <= 50:
        raise invalid_parameter("ResourceIds", "give between 1 and 50 instance ids")
    for row in await instance_rows(ctx, ids):
        authorize_resource(ctx, ram_action,
                           region_arn(ctx, row["region"], "instance", row["id"]))
    return ids


def _tags(raw: list[Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for i, tag in enumerate(raw):
        if not isinstance(tag, dict) or set(tag) - {"Key", "Value"} or \
                not isinstance(tag.get("Key"), str) or not isinstance(tag.get("Value", ""), str):
            raise invalid_parameter(f"Tag.{i + 1}", 'must be {"Key": string, "Value": string}')
        if not TAG_KEY_RE.match(tag["Key"]) or tag["Key"].lower().startswith("acs:"):
            raise invalid_parameter(f"Tag.{i + 1}.Key", f"{tag['Key'][:64]!r} must be 1-128 "
                                    "letters, digits or _.:/=+@- and not start with acs:")
        value = tag.get("Value", "")
        if len(value) > 128 or not value.isprintable():
            raise invalid_parameter(f"Tag.{i + 1}.Value", "must be at most 128 printable "
                                                         "characters")
        tags[tag["Key"]] = value
    return tags


@action("TagResources", "ecs:TagResources",
        "Set tags on instances (policies see them as ecs:tag/KEY).",
        Param("ResourceType", "string", "instance", default="instance", enum=("instance",)),
        Param("ResourceIds", "array", "Instance ids", required=True),
        Param("Tags", "array", 'Tags to set: [{"Key": ..., "Value": ...}]', required=True,
              items="object"),
        mutating=True)
async def tag_resources(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    tags = _tags(p["Tags"])
    if not tags:
        raise invalid_parameter("Tags", "give at least one tag")
    repo = ctx.services.repo
    for iid in await _tag_targets(ctx, p, "ecs:TagResources"):
        current = await repo.instance_tags(iid)
        if len(set(current) | set(tags)) > MAX_TAGS:
            raise ApiError(409, "LimitExceeded.Tags", f"{iid} would have more than {MAX_TAGS} "
                                                      "tags")
        await repo.change_instance_tags(iid, tags, ())
    return {}


@action("UntagResources", "ecs:UntagResources", "Remove tags from instances.",
        Param("ResourceType", "string", "instance", default="instance", enum=("instance",)),
        Param("ResourceIds", "array", "Instance ids", required=True),
        Param("TagKeys", "array", "Keys to remove", required=True),
        mutating=True)
async def untag_resources(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    for iid in await _tag_targets(ctx, p, "ecs:UntagResources"):
        await ctx.services.repo.change_instance_tags(iid, {}, [k[:128] for k in p["TagKeys"]])
    return {}


@action("ListTagResources", "ecs:ListTagResources", "Tags of instances.",
        Param("ResourceType", "string", "instance", default="instance", enum=("instance",)),
        Param("ResourceIds", "array", "Instance ids", required=True))
async def list_tag_resources(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    out = []
    for iid in await _tag_targets(ctx, p, "ecs:ListTagResources"):
        for key, value in (await ctx.services.repo.instance_tags(iid)).items():
            out.append({"ResourceId": iid, "ResourceType": "instance", "TagKey": key,
                        "TagValue": value})
    return {"TagResources": out}

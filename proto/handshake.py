"""Handshake rules shared by agent and server: version choice and the signed auth payload."""

from collections.abc import Sequence

from proto.errors import VersionError

AUTH_CONTEXT = b"porthole-agent-auth-v1"
NONCE_SIZE = 32


def negotiate(ours: Sequence[int], theirs: Sequence[int]) -> int:
    """The highest version both sides speak, or VersionError naming both sides' versions."""
    common = set(ours) & set(theirs)
    if not common:
        raise VersionError(
            f"unsupported protocol version: peer speaks {_describe(theirs)}, "
            f"this side speaks {_describe(ours)}; upgrade the older side"
        )
    return max(common)


def auth_payload(instance_id: str, nonce: bytes, version: int) -> bytes:
    """What the agent signs with its Ed25519 key to prove it holds the registered key.

    Binding the instance id and version into the signed bytes stops a signature made for
    one instance or one negotiation being replayed for another.
    """
    return b"\0".join(
        [AUTH_CONTEXT, instance_id.encode(), str(version).encode(), nonce]
    )


def _describe(versions: Sequence[int]) -> str:
    vs = sorted(set(versions))
    if not vs:
        return "no versions"
    return "version " + ", ".join(str(v) for v in vs)

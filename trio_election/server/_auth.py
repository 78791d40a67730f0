"""Client authentication and authorization on the client listener.

Theory of operation
-------------------
``--auth-token-file`` lists one token a line, ``TOKEN [ELECTION-PREFIX [ROLE]]``
(``#`` starts a comment). A client sends ``authorization: Bearer TOKEN`` with
every call. The prefix (``*`` or none: every election) bounds the elections the
token reaches; the role says what it may do there:

* ``read``: IsLeader, GetCurrentLeader, Watch, Cluster.Status, MemberList and
  ListElections (which lists only the elections under the prefix);
* ``write`` (the default): that, and TryBecomeLeader, Heartbeat, KeepAlive,
  ReleaseLeadership, Campaign;
* ``admin``: that, and membership changes (Cluster.MemberAdd, MemberRemove).

Two checks, both before any state changes: :meth:`Guard.authorize` runs on
the headers of every call (no token or an unknown one: UNAUTHENTICATED;
a membership change without ``admin``: PERMISSION_DENIED), and
:meth:`Guard.check` runs in the handler once the request's election is known
(outside the prefix, or a write with ``read``: PERMISSION_DENIED). The health
service stays open, for load balancers. Tokens are looked up by their SHA-256
digest, so the time a lookup takes says nothing about a token's characters,
and no token is ever logged. :meth:`Tokens.reload` (SIGHUP) swaps the table in
one assignment; a file that does not parse leaves the old table in force.

Without a token file every election is open, as on a trusted network, but
membership changes on the client port are still refused: they need an admin
token, or the peer credentials on the peer port.

Each token has an identity (a digest prefix, never the token itself) that the
server records with a grant, so that only the token that was granted an
election can renew, refresh or release it.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._bridge import CallPeer, GRPCError, Status
from ._security import SecurityConfigError, bearer

log = logging.getLogger("trio_election.auth")

_HEALTH = "/grpc.health.v1.Health/"
#: Calls that change the cluster rather than an election.
ADMIN_METHODS = frozenset(
    {
        "/trio_election.v1.Cluster/MemberAdd",
        "/trio_election.v1.Cluster/MemberRemove",
    }
)
NO_ADMIN = (
    "membership changes on the client port need a token with the admin role "
    "(--auth-token-file); or call the peer port with the peer credentials"
)


class Role(enum.IntEnum):
    """What a token may do, each role including the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows: elections under ``prefix``, as ``role``.

    ``identity`` names the token without revealing it (logs, lease owners).
    """

    prefix: str
    role: Role
    identity: str

    def covers(self, election: str) -> bool:
        return election.startswith(self.prefix)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str, source: str) -> dict[bytes, Grant]:
    """The table of a token file's text.

    Raises:
        SecurityConfigError: a line that does not parse (named by number).
    """
    table: dict[bytes, Grant] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 3:
            raise SecurityConfigError(
                f"{source}:{number}: expected TOKEN [ELECTION-PREFIX [ROLE]], "
                f"got {len(words)} words"
            )
        token, prefix, role = words[0], *words[1:], *[None] * (3 - len(words))
        if len(token) < 16:
            raise SecurityConfigError(
                f"{source}:{number}: a token needs at least 16 characters "
                "(create one with `trio-election keygen`)"
            )
        try:
            grant_role = Role[(role or "write").upper()]
        except KeyError:
            raise SecurityConfigError(
                f"{source}:{number}: role {role!r} is not read, write or admin"
            ) from None
        digest = _digest(token)
        if digest in table:
            raise SecurityConfigError(f"{source}:{number}: this token is listed twice")
        table[digest] = Grant(
            "" if prefix in (None, "*") else prefix, grant_role, digest.hex()[:12]
        )
    if not table:
        raise SecurityConfigError(f"{source}: no tokens (one a line: TOKEN [PREFIX [ROLE]])")
    return table


class Tokens:
    """The tokens of ``--auth-token-file``, reloadable.

    Raises:
        SecurityConfigError: at creation, if the file cannot be read or parsed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._table = self._read()

    def _read(self) -> dict[bytes, Grant]:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(
                f"--auth-token-file: cannot read {self.path}: {exc}"
            ) from None
        return parse_tokens(text, str(self.path))

    def reload(self) -> bool:
        """Read the file again; on a problem keep the tokens in force. True if reloaded."""
        try:
            self._table = self._read()
        except SecurityConfigError as exc:
            log.error("token reload failed, keeping the %d tokens in force: %s", len(self), exc)
            return False
        log.info("reloaded %d tokens from %s", len(self), self.path)
        return True

    def __len__(self) -> int:
        return len(self._table)

    def grant(self, metadata: Mapping[str, str]) -> Grant:
        """The grant of the call's token.

        Raises:
            GRPCError: UNAUTHENTICATED without a token, or with one not listed.
        """
        token = bearer(metadata)
        if token is None:
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "authorization: this node needs a token (authorization: Bearer TOKEN)",
            )
        grant = self._table.get(_digest(token))
        if grant is None:
            raise GRPCError(Status.UNAUTHENTICATED, "authorization: the token is not valid")
        return grant


class Guard:
    """The client listener's authorization; with ``tokens`` None, open but for admin calls."""

    def __init__(self, tokens: Tokens | None) -> None:
        self.tokens = tokens
        #: Told ``(rpc, status code name)`` of each call refused before its
        #: handler ran (metrics; a handler's own refusals it reports itself).
        self.on_refused: Callable[[str, str], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.tokens is not None

    def hook(
        self, *, serves_admin: bool
    ) -> Callable[[str, Mapping[str, str], CallPeer], None] | None:
        """The bridge's ``authorize`` hook for a listener, or None where it could
        never refuse anything (no tokens, and no membership changes served):
        then no call pays for it."""
        return self.authorize if self.tokens is not None or serves_admin else None

    def authorize(self, method: str, metadata: Mapping[str, str], peer: CallPeer) -> None:
        """Check a call's token on its headers (the bridge's ``authorize`` hook)."""
        try:
            self._authorize(method, metadata)
        except GRPCError as exc:
            if self.on_refused is not None:
                self.on_refused(method.rpartition("/")[2], exc.status.name)
            raise

    def _authorize(self, method: str, metadata: Mapping[str, str]) -> None:
        if method.startswith(_HEALTH):
            return
        if self.tokens is None:
            if method in ADMIN_METHODS:
                raise GRPCError(Status.PERMISSION_DENIED, NO_ADMIN)
            return
        grant = self.tokens.grant(metadata)
        if method in ADMIN_METHODS and grant.role < Role.ADMIN:
            raise GRPCError(Status.PERMISSION_DENIED, NO_ADMIN)

    def check(self, stream: Any, election: str, *, write: bool) -> str:
        """Check that the call may touch ``election``; return the caller's identity.

        Raises:
            GRPCError: PERMISSION_DENIED, naming the election and the prefix.
        """
        if self.tokens is None:
            return ""
        grant = self.tokens.grant(stream.metadata)
        if not grant.covers(election):
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"election: {election!r} is outside this token's prefix {grant.prefix!r}",
            )
        if write and grant.role < Role.WRITE:
            raise GRPCError(
                Status.PERMISSION_DENIED, f"election: this token may only read {election!r}"
            )
        return grant.identity

    def readable(self, stream: Any, prefix: str) -> str:
        """The election prefix a listing for ``prefix`` may cover: narrowed to
        the token's prefix (every role may read).

        Raises:
            GRPCError: PERMISSION_DENIED if no election under ``prefix`` is the token's.
        """
        if self.tokens is None:
            return prefix
        grant = self.tokens.grant(stream.metadata)
        if prefix.startswith(grant.prefix):
            return prefix
        if grant.prefix.startswith(prefix):
            return grant.prefix
        raise GRPCError(
            Status.PERMISSION_DENIED,
            f"prefix: {prefix!r} is outside this token's prefix {grant.prefix!r}",
        )

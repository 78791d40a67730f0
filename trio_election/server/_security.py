"""How the members of one cluster recognise each other (docs/design.md, promise 7).

Peers talk on their own listener (``--peer-listen``), apart from clients, as
etcd separates its client and peer URLs: the peer port can be firewalled to
the cluster's hosts, it can use its own CA, and a flood of client connections
never locks a peer out. Every call on it is authenticated, by either or both:

* mutual TLS: the peer presents a certificate signed by the cluster's CA
  (``--peer-cert``, ``--peer-key``, ``--peer-ca``); the TLS handshake refuses
  anyone else before a byte of gRPC is read;
* a shared cluster key (``--cluster-key-file``): every call carries it as a
  bearer secret, compared in constant time. Over a network you do not trust,
  combine it with TLS, since a bearer secret in plain text can be read.

Without either, a cluster member refuses to start, unless
``--unsafe-insecure-peers`` says it is a throw-away local experiment.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._bridge import CallPeer, Channel, GRPCError, Status
from .._errors import StartupError
from .._tls import client_context, server_context
from ..client._transport import parse_endpoint

log = logging.getLogger("trio_election.security")

#: The metadata key that carries a bearer secret (cluster key or client token).
AUTHORIZATION = "authorization"
#: A cluster key shorter than this is refused: it could be guessed.
MIN_KEY_BYTES = 16

NO_PEER_AUTH = (
    "a cluster member needs peer authentication: give --peer-cert, --peer-key and --peer-ca "
    "(mutual TLS with the cluster's CA), or --cluster-key-file FILE (a secret every member "
    "shares; create one with `trio-election keygen > FILE`); --unsafe-insecure-peers turns "
    "this off for a throw-away local experiment"
)


class SecurityConfigError(StartupError):
    """Raised when security flags or files cannot be used; says what to fix."""


def bearer(metadata: Mapping[str, str]) -> str | None:
    """The secret of an ``authorization: Bearer SECRET`` header, if any."""
    value = metadata.get(AUTHORIZATION)
    if value is None:
        return None
    scheme, _, secret = value.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def read_secret(path: Path, what: str) -> bytes:
    """The secret in ``path`` (surrounding white space dropped)."""
    try:
        secret = path.read_bytes().strip()
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SecurityConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if len(secret) < MIN_KEY_BYTES:
        raise SecurityConfigError(
            f"{what}: {path} holds {len(secret)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(create one with `trio-election keygen`)"
        )
    if any(b < 0x21 or b > 0x7E for b in secret):
        raise SecurityConfigError(f"{what}: {path} must hold printable ASCII without spaces")
    if mode & 0o077:
        log.warning("%s: %s can be read by other users; chmod 600 it", what, path)
    return secret


@dataclass(frozen=True)
class PeerAuth:
    """The credentials of one member: what it presents, and what it accepts.

    Build it with :meth:`from_files` (the CLI) or directly (tests).

    Attributes:
        server_ssl: TLS for the peer listener; requires a certificate of the
            cluster's CA from every caller.
        client_ssl: TLS for calls to other members, with this member's certificate.
        cluster_key: The shared secret, or None.
        insecure: Accept unauthenticated peers (``--unsafe-insecure-peers``).
    """

    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    cluster_key: bytes | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.server_ssl is None) != (self.client_ssl is None):
            raise SecurityConfigError("peer TLS needs both a server and a client context")
        if not self.authenticated and not self.insecure:
            raise SecurityConfigError(NO_PEER_AUTH)

    @classmethod
    def from_files(
        cls,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        ca: Path | None = None,
        cluster_key_file: Path | None = None,
        insecure: bool = False,
    ) -> PeerAuth:
        """Load the flags' files; every problem is a sentence naming the flag."""
        given = [cert is not None, key is not None, ca is not None]
        if any(given) and not all(given):
            raise SecurityConfigError(
                "--peer-cert, --peer-key and --peer-ca go together (mutual TLS needs all three)"
            )
        server_ssl = client_ssl = None
        if cert is not None and key is not None and ca is not None:
            server_ssl = server_context(cert, key, client_ca=ca, what="--peer-cert")
            client_ssl = client_context(ca, cert, key, what="--peer-cert")
        secret = None
        if cluster_key_file is not None:
            secret = read_secret(cluster_key_file, "--cluster-key-file")
        if insecure and (server_ssl is not None or secret is not None):
            raise SecurityConfigError(
                "--unsafe-insecure-peers contradicts --peer-cert/--cluster-key-file: drop one"
            )
        return cls(server_ssl, client_ssl, secret, insecure)

    @property
    def authenticated(self) -> bool:
        return self.server_ssl is not None or self.cluster_key is not None

    @property
    def description(self) -> str:
        """How peers authenticate, in words for the start-up log."""
        if self.insecure:
            return "NOT AUTHENTICATED (--unsafe-insecure-peers)"
        ways = ["mutual TLS"] if self.server_ssl is not None else []
        if self.cluster_key is not None:
            ways.append("cluster key")
        return " and ".join(ways)

    @property
    def metadata(self) -> dict[str, str]:
        """What this member sends with every call to another."""
        if self.cluster_key is None:
            return {}
        return {AUTHORIZATION: f"Bearer {self.cluster_key.decode()}"}

    def channel(self, address: str, stub: Callable[[Any], Any]) -> Channel:
        """A channel to another member's peer listener at ``address``."""
        host, port = parse_endpoint(address)
        return Channel(host, port, stub, ssl=self.client_ssl, metadata=self.metadata)

    def authorize(self, method: str, metadata: Mapping[str, str], peer: CallPeer) -> None:
        """Refuse a call on the peer listener from anyone but a member.

        Raises:
            GRPCError: UNAUTHENTICATED, with what was missing.
        """
        if self.insecure:
            return
        if self.server_ssl is not None and peer.certificate is None:
            # The handshake requires one; this is a second line, not the first.
            raise GRPCError(Status.UNAUTHENTICATED, "peer: no certificate of the cluster's CA")
        if self.cluster_key is not None:
            secret = bearer(metadata)
            if secret is None:
                raise GRPCError(
                    Status.UNAUTHENTICATED,
                    "peer: calls on the peer port need the cluster key (--cluster-key-file)",
                )
            if not _same(secret.encode(), self.cluster_key):
                log.warning("peer call %s from %s with a wrong cluster key", method, peer.address)
                raise GRPCError(Status.UNAUTHENTICATED, "peer: wrong cluster key")


def _same(given: bytes, expected: bytes) -> bool:
    # Digests first, so the comparison's time depends on neither length.
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())

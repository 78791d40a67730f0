"""TLS contexts for gRPC over HTTP/2, for servers, clients and peers.

One place builds every :class:`ssl.SSLContext` trio-election uses, so the
rules are the same everywhere: TLS 1.2 at least, ALPN ``h2`` (gRPC needs it),
certificates checked against the CA given (or the system's), host names
checked. A file that is missing or does not hold what it should is a
:class:`TLSConfigError` naming the flag and the file, never a traceback.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ._errors import ElectionError


class TLSConfigError(ElectionError):
    """Raised when a certificate, key or CA file cannot be used; names the file."""


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, what: str) -> None:
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise TLSConfigError(f"{what}: no such file: {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(
            f"{what}: {cert} and {key} are not a PEM certificate and its private key ({exc})"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path, what: str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise TLSConfigError(f"{what}: no such file: {ca}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{what}: {ca} is not a PEM CA certificate ({exc})") from None


def _h2(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


def server_context(
    cert: Path, key: Path, client_ca: Path | None = None, *, what: str = "--tls-cert"
) -> ssl.SSLContext:
    """A server's context; with ``client_ca``, every client must present a
    certificate signed by it (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(context, cert, key, what)
    if client_ca is not None:
        _load_ca(context, client_ca, what)
        context.verify_mode = ssl.CERT_REQUIRED
    return _h2(context)


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    what: str = "--ca",
) -> ssl.SSLContext:
    """A client's context: the server is checked against ``ca`` (the system's
    CAs when None); ``cert`` and ``key`` are presented if the server asks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        _load_ca(context, ca, what)
    if (cert is None) != (key is None):
        raise TLSConfigError(f"{what}: a client certificate needs its key, and a key its cert")
    if cert is not None and key is not None:
        _load_chain(context, cert, key, what)
    return _h2(context)

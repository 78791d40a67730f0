"""Credentials for tests, the demo and the bench: a cluster key, tokens, certificates.

Certificates come from ``trustme`` (a development dependency), made fresh in
a folder of the caller's: a CA, and for each name a certificate valid for that
name, ``localhost`` and ``127.0.0.1``, so a peer or a client on loopback can
check the host name as it would in production.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path


def write_secret(path: Path) -> Path:
    """Write a new random secret (as ``trio-election keygen`` does) to ``path``, mode 600."""
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class CertFiles:
    """The PEM files of one certificate and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def make_certs(folder: Path, names: list[str], ca_name: str = "ca") -> dict[str, CertFiles]:
    """A fresh CA in ``folder`` and a certificate for each of ``names``.

    Calling it twice with different ``ca_name`` gives two unrelated CAs (for
    testing that one cluster's certificate is refused by another).
    """
    import trustme  # a development dependency: imported only when used

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_path = folder / f"{ca_name}.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    files = {}
    for name in names:
        issued = ca.issue_cert(name, "localhost", "127.0.0.1")
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        for extra in issued.cert_chain_pems[1:]:
            extra.write_to_path(str(cert), append=True)
        issued.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)
        files[name] = CertFiles(cert, key, ca_path)
    return files

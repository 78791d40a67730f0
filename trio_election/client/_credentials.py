"""How a client reaches the nodes: TLS, and a token sent with every call."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import ElectionError
from .._tls import client_context


@dataclass(frozen=True)
class Credentials:
    """TLS and a bearer token for every call to the nodes.

    Build it with :meth:`create`. ``ssl`` None means plain text.
    """

    ssl: ssl.SSLContext | None = None
    token: str | None = None

    @classmethod
    def create(
        cls,
        endpoints: Sequence[str] = (),
        *,
        tls: bool | None = None,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
    ) -> Credentials:
        """Credentials from options.

        TLS is on when ``tls`` is True, or (``tls`` None) when an endpoint is
        written ``https://HOST:PORT`` or a CA or client certificate is given.
        Without ``ca`` the server is checked against the system's CAs.

        Raises:
            ElectionError: a file cannot be read or used (the message names it).
        """
        if token is not None and token_file is not None:
            raise ElectionError("give a token or a token file, not both")
        if token_file is not None:
            token = read_token(Path(token_file))
        if tls is None:
            tls = (
                any(e.startswith("https://") for e in endpoints)
                or ca is not None
                or (cert is not None)
            )
        context = None
        if tls:
            context = client_context(
                None if ca is None else Path(ca),
                None if cert is None else Path(cert),
                None if key is None else Path(key),
            )
        return cls(context, token)

    @property
    def metadata(self) -> dict[str, str] | None:
        return None if self.token is None else {"authorization": f"Bearer {self.token}"}


def read_token(path: Path) -> str:
    """The token in ``path``: its first line, white space dropped.

    Raises:
        ElectionError: the file cannot be read, or holds no token.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ElectionError(f"token file {path}: {exc}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise ElectionError(f"token file {path} is empty")
    return lines[0].strip()

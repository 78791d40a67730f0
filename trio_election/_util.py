"""Small helpers shared across the package."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Re-raise a lone exception from a nursery's group as itself.

    A library that owns a nursery around user code (``open_client``) should not
    turn the user's ``ValueError`` into an ``ExceptionGroup``.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        if isinstance(group, BaseExceptionGroup):
            raise
        raise group from None

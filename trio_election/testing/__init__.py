"""Test helpers for trio-election (importable by any test suite)."""

from ._proxy import FreezableProxy as FreezableProxy

__all__ = ["FreezableProxy"]

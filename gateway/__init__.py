"""Wallet payment gateway: an async acquirer settling against a double-entry wallet ledger."""

from importlib import metadata

try:
    __version__ = metadata.version("wallet-gateway")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

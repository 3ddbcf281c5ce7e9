"""The agent's logging: the shared JSON schema (``wallet_common.logs``) with service ``pos-agent``.

nfcpy's chatty INFO logging is held at WARNING.
"""

from __future__ import annotations

from typing import Final

from wallet_common.logs import JsonFormatter
from wallet_common.logs import configure as _configure

__all__ = ["SERVICE", "JsonFormatter", "configure"]

SERVICE: Final = "pos-agent"


def configure(level: str = "INFO") -> None:
    _configure(SERVICE, level, quiet=("nfc",))

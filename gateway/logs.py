"""The gateway's logging: the shared JSON schema (``wallet_common.logs``) with service ``gateway``.

Secrets never reach a log line: the request logger records method, route, status, timing and the
error code of an error answer, never headers or bodies.
"""

from __future__ import annotations

from typing import Final

from wallet_common.logs import JsonFormatter, request_id_var
from wallet_common.logs import configure as _configure

__all__ = ["SERVICE", "JsonFormatter", "configure", "request_id_var"]

SERVICE: Final = "gateway"


def configure(level: str = "INFO") -> None:
    _configure(SERVICE, level, quiet=("aiohttp.access",))

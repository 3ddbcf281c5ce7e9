"""The device credentials file written at enrolment and read at every start.

Invariants:
- The file is created with mode 0600 and written atomically (temporary file, fsync, rename,
  fsync of the folder): a crash leaves the old file or the new one, never half of one.
- ``device_secret`` never appears in ``repr``/``str`` or logs.
- A file that is not exactly the expected JSON object is refused with ``ConfigError``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pos_agent.errors import ConfigError, NotEnrolledError

__all__ = ["Credentials", "load_credentials", "save_credentials"]


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    gateway_url: str
    device: str
    device_secret: str
    terminal: str
    store: str
    merchant: str

    def __repr__(self) -> str:
        return f"Credentials(device={self.device}, terminal={self.terminal}, merchant={self.merchant})"

    __str__ = __repr__


def save_credentials(path: Path, credentials: Credentials) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(asdict(credentials), indent=2).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def load_credentials(path: Path) -> Credentials:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotEnrolledError(f"no credentials at {path}: run `pos-agent enrol --code ENR-...` first") from None
    except OSError as exc:
        raise ConfigError(f"cannot read credentials {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"credentials {path} are not JSON") from None
    names = {f.name for f in fields(Credentials)}
    if not isinstance(raw, dict) or set(raw) != names or not all(isinstance(v, str) and v for v in raw.values()):
        raise ConfigError(f"credentials {path} must hold exactly the strings {sorted(names)}")
    return Credentials(**raw)

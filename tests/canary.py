"""The secret canary: every secret a test session sees is remembered, and no log line or database row may hold one.

Secrets are learnt where they cross the wire, in aiohttp's client (both the in-process test client
and the e2e ``Api`` go through it): JSON bodies the tests send (passwords, PINs, bank account
numbers, device secrets, pay-codes, enrolment codes) and JSON bodies they receive (API secret keys,
device secrets, enrolment and pay-codes, ICC master keys, token PANs, webhook signing secrets,
session tokens). The shipped development
secrets of ``gateway/defaults.toml`` are known from the start. Scanned: the session log (every record
of the pytest process in the gateway's JSON format), the logs of the processes the e2e harness
starts, the test database as JSON rows before each ``clean_db`` truncation, and ``pg_dump`` at the end.

Invariants: a finding never shows the secret (its place is masked); a PIN, a short number that
occurs by chance everywhere, counts only as the value of a JSON key naming a pin
(``"pin": "123456"``), so a hash of it is fine; values shorter than ``SECRET_MIN_CHARS`` are not
remembered (they would match by chance).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.settings import development_secrets

SECRET_MIN_CHARS = 6
PIN_MIN_CHARS = 4
BODY_MAX_BYTES = 1 << 20  # larger bodies are images or fuzz, not credentials
PG_DUMP_TIMEOUT_S = 30.0
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
_PIN_VALUE = re.compile(r'"[A-Za-z_]*pin[A-Za-z_]*"\s*:\s*"?(\d+)"?', re.IGNORECASE)
_HEX = re.compile(r"[0-9A-Fa-f]{16,}")

# JSON keys whose string value is a secret, whichever way it travels.
_KEYS = {
    "password": "password", "current_password": "password", "new_password": "password",
    "account_number": "bank account number", "device_secret": "device secret",
    "icc_master_key": "ICC master key", "token_pan": "token PAN", "pan": "token PAN", "pay_code": "pay-code",
}
_PIN_KEYS = frozenset({"pin", "current_pin", "new_pin"})
# Bearer tokens (operator, wallet and device sessions): a JWT under one of these keys.
_TOKEN_KEYS = frozenset({"token", "access_token"})
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_CODE_OBJECTS = {"pay_code": "pay-code", "enrolment_code": "enrolment code"}


@dataclass(frozen=True)
class Finding:
    kind: str
    where: str
    line_no: int
    excerpt: str  # the line around the secret, with the secret masked

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}:{self.line_no}: {self.excerpt}"


@dataclass
class Canary:
    directory: Path
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # search form -> kind
    pins: set[str] = field(default_factory=set, repr=False)
    findings: list[Finding] = field(default_factory=list)
    last_db_test: str = "(no test yet)"

    @property
    def session_log(self) -> Path:
        return self.directory / "pytest-session.log"

    def remember(self, value: str, kind: str) -> None:
        if len(value) < SECRET_MIN_CHARS:
            return
        forms = {value}
        if _HEX.fullmatch(value):  # bytea and hex dumps show either case
            forms |= {value.lower(), value.upper()}
        for form in forms:
            self.secrets.setdefault(form, kind)

    def learn(self, body: Any) -> None:
        """Remember the secrets in one decoded JSON body (sent or received)."""
        stack = [body]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
            if not isinstance(node, dict):
                continue
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    stack.append(value)
                elif isinstance(value, str):
                    self._learn_field(node, str(key), value)

    def _learn_field(self, node: dict[Any, Any], key: str, value: str) -> None:
        if key in _PIN_KEYS:
            if len(value) >= PIN_MIN_CHARS and value.isdigit():
                self.pins.add(value)
        elif key in _KEYS:
            self.remember(value, _KEYS[key])
        elif key == "secret" and value.startswith("sk_"):  # publishable keys (pk_) are public by design
            self.remember(value, "API secret key")
        elif key == "secret" and value.startswith("whsec_"):
            self.remember(value, "webhook signing secret")
        elif key in _TOKEN_KEYS and _JWT.fullmatch(value):
            self.remember(value, "access token (JWT)")
        elif key == "code" and (node.get("object") in _CODE_OBJECTS or value.startswith("ENR-")):
            self.remember(value, _CODE_OBJECTS.get(str(node.get("object")), "enrolment code"))

    def learn_text(self, raw: bytes | str | None) -> None:
        if raw is None or len(raw) > BODY_MAX_BYTES:
            return
        try:
            self.learn(json.loads(raw))
        except (ValueError, RecursionError):  # not JSON, or nested too deep: no credential of ours
            pass

    def scan(self, text: str, where: str) -> list[Finding]:
        """Every place in ``text`` holding a remembered secret; also kept in ``findings``."""
        tokens = set(_TOKEN.findall(text))
        tokens |= {t[1:] for t in tokens if t.startswith("x")}  # bytea: \x0a1b...
        hits = {form for form in self.secrets if (form in tokens if _TOKEN.fullmatch(form) else form in text)}
        found = [Finding(self.secrets[form], where, n, excerpt) for form in hits for n, excerpt in _places(text, form)]
        for match in _PIN_VALUE.finditer(text):
            if match.group(1) in self.pins:
                n, excerpt = _place(text, match.start(1), match.end(1))
                found.append(Finding("PIN", where, n, excerpt))
        found.sort(key=lambda f: f.line_no)
        self.findings.extend(found)
        return found

    def scan_file(self, path: Path) -> list[Finding]:
        return self.scan(path.read_text(encoding="utf-8", errors="replace"), str(path))

    def log_files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.suffix == ".log")

    def close(self, keep: bool) -> None:
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)


def _place(text: str, start: int, end: int) -> tuple[int, str]:
    line_start = text.rfind("\n", 0, start) + 1
    excerpt = text[max(line_start, start - 80):start] + "<secret>" + text[end:end + 80].split("\n", 1)[0]
    return text.count("\n", 0, start) + 1, excerpt


def _places(text: str, form: str) -> Iterator[tuple[int, str]]:
    start = text.find(form)
    while start >= 0:
        yield _place(text, start, start + len(form))
        start = text.find(form, start + len(form))


_active: Canary | None = None


def start() -> Canary:
    global _active
    assert _active is None, "one canary per session"
    _active = Canary(Path(tempfile.mkdtemp(prefix="gateway-canary-")))
    for secret in development_secrets():
        _active.remember(secret, "development secret of gateway/defaults.toml")
    return _active


def stop() -> None:
    global _active
    _active = None


def active() -> Canary | None:
    """The session's canary, or None outside a test session (the harness also serves bench/)."""
    return _active


def log_path(name: str) -> Path:
    """Where a process started by a test writes its log: kept for the canary during a test session."""
    return (_active.directory if _active else Path(tempfile.gettempdir())) / name


# Rows as JSON: one line per row, bytea as \x hex, jsonb nested; the same data pg_dump prints, ~10 ms.
_ROWS_SQL = """
SELECT coalesce(string_agg(format('SELECT %L || '' '' || to_jsonb(t)::text FROM public.%I t', tablename, tablename),
                           ' UNION ALL '), 'SELECT NULL::text WHERE false')
FROM pg_tables WHERE schemaname = 'public'
"""


async def rows_as_text(conn: Any) -> str:
    query: str = await conn.fetchval(_ROWS_SQL)
    return "\n".join(r[0] for r in await conn.fetch(query))


def pg_dump(url: str) -> str:
    done = subprocess.run(["pg_dump", "--data-only", "--no-owner", url], capture_output=True, text=True,
                          timeout=PG_DUMP_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout

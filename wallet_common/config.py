"""Typed settings: a TOML file, then the environment, then keyword overrides, into frozen msgspec Structs.

One mechanism for the gateway and the POS agent. Invariants:
- A settings class derives from ``Section``: frozen, keyword-only, unknown keys refused. Its field
  types are the truth: file values must already have them (no ``2.5`` for an int, no ``true`` for
  a number); environment and keyword values are converted to them (``"9090"`` to an int; a table
  or list field takes a JSON value, e.g. ``GATEWAY_TIERS_TIER4='{"CNY": {...}}'``).
- Every error is one ``ConfigError`` line naming the setting (``server.port: expected `int`, got
  `str```), never a traceback; ``__post_init__`` checks of a class surface the same way.
- A field typed ``Secret`` is redacted by ``redacted()`` (what ``gateway config`` prints), and so is
  the password of any URL setting (in its userinfo or as a ``password`` query parameter).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.inspect

__all__ = ["REDACTED", "ConfigError", "Secret", "Section", "build", "read_toml", "redacted", "render", "to_toml"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A settings file is missing or malformed, or a setting has the wrong type or an impossible value."""


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every settings class. msgspec passes the options on; a subclass repeats ``frozen=True``
    because mypy's dataclass view of a Struct does not inherit it."""


_SECRET = msgspec.Meta(extra={"secret": True})
Secret = Annotated[str, _SECRET]
REDACTED = "<redacted>"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"settings file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


_AT = re.compile(r"^(?P<message>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")


def _one_line(error: msgspec.ValidationError, prefix: str = "") -> ConfigError:
    """msgspec's "Expected `int`, got `str` - at `$.server.port`" as "server.port: expected `int`, got `str`"."""
    found = _AT.match(str(error))
    assert found is not None  # the pattern matches any text
    message, path = found["message"], prefix + (found["path"] or "")
    unknown = _UNKNOWN.match(message)
    if unknown:
        path, message = f"{path}.{unknown['key']}", "unknown setting"
    path = path.lstrip(".") + (" key" if found["key"] else "")  # a table's key, not its value, is wrong
    if not path:  # a __post_init__ check: its message already names the setting
        return ConfigError(message)
    return ConfigError(f"{path}: {message[:1].lower()}{message[1:]}")


_TABLES = (msgspec.inspect.DictType, msgspec.inspect.ListType, msgspec.inspect.StructType)


def _coerce(value: Any, kind: Any, where: str, source: str) -> Any:
    """A value given as text (environment) or by a caller (keyword), in the field's type."""
    try:
        if isinstance(value, str) and isinstance(msgspec.inspect.type_info(kind), _TABLES):
            return msgspec.json.decode(value, type=kind, strict=False)
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise _one_line(exc, f".{where}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{where}: {source} is not valid JSON ({exc})") from None


def _sections(cls: type[Any]) -> dict[str, type[Section]]:
    return {f.name: f.type for f in msgspec.structs.fields(cls) if isinstance(f.type, type) and issubclass(f.type, Section)}


def build(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> T:
    """``cls`` from a parsed file, ``<env_prefix><SECTION>_<KEY>`` variables (given a prefix) and overrides."""
    merged: dict[str, Any] = {name: dict(table) if isinstance(table, dict) else table for name, table in data.items()}
    sections = _sections(cls)
    for name, section in sections.items():
        table = merged.setdefault(name, {})  # an absent section is all defaults
        if not isinstance(table, dict):  # not a table: msgspec refuses it below, by name
            continue
        for field in msgspec.structs.fields(section):
            env_name = f"{env_prefix}{name}_{field.name}".upper()
            if env_prefix and env is not None and env_name in env:
                table[field.name] = _coerce(env[env_name], field.type, f"{name}.{field.name}", env_name)
    for name, values in (overrides or {}).items():
        known = {f.name: f.type for f in msgspec.structs.fields(sections[name])} if name in sections else {}
        table = merged.setdefault(name, {})
        for key, value in values.items():
            table[key] = _coerce(value, known[key], f"{name}.{key}", "the value") if key in known else value
    try:
        return msgspec.convert(merged, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise _one_line(exc) from None


def _is_secret(kind: Any) -> bool:
    return any(meta is _SECRET for meta in get_args(kind)[1:])


_PASSWORD_PARAMS = frozenset({"password", "sslpassword"})  # asyncpg and redis-py take them from the query too


def _query_without_password(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, sep, _ = pair.partition("=")
        pairs.append(f"{name}={REDACTED}" if sep and name.lower() in _PASSWORD_PARAMS else pair)
    return "&".join(pairs)


def url_passwords(url: str) -> list[str]:
    """Every password a URL carries: its userinfo's and its ``password``/``sslpassword`` query values."""
    try:
        found = [password] if (password := urlsplit(url).password) else []
    except ValueError:  # a netloc urllib cannot read (a stray bracket): the query may still carry one
        found = []
    for pair in url.partition("?")[2].partition("#")[0].split("&"):
        name, sep, value = pair.partition("=")
        if sep and value and name.lower() in _PASSWORD_PARAMS:
            found.append(value)
    return found


def _without_password(text: str) -> str:
    parts = urlsplit(text)
    query = _query_without_password(parts.query)
    if not parts.password and query == parts.query:
        return text
    netloc = parts.netloc
    if parts.password:
        netloc = f"{parts.username or ''}:{REDACTED}@{netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redacted(settings: msgspec.Struct) -> dict[str, Any]:
    """The settings as plain data with every ``Secret`` field and URL password replaced by ``<redacted>``."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, msgspec.Struct):
            out[field.name] = redacted(value)
        elif _is_secret(field.type):
            out[field.name] = REDACTED if value else ""
        elif isinstance(value, str) and "://" in value:
            out[field.name] = _without_password(value)
        else:
            out[field.name] = msgspec.to_builtins(value)
    return out


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)  # a JSON string, number, bool or list is TOML too


def _toml_key(key: Any) -> str:
    text = str(key)
    return text if _BARE_KEY.match(text) else json.dumps(text, ensure_ascii=False)


def to_toml(data: Mapping[str, Any]) -> str:
    """Plain settings data (as from ``redacted``) as a TOML document: one table per section."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and v is not None]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{_toml_key(name)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def render(settings: msgspec.Struct, fmt: Literal["toml", "json"]) -> str:
    """The settings in effect, redacted, as a TOML document or indented JSON."""
    data = redacted(settings)
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return to_toml(data)

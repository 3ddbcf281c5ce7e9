"""Settings: one frozen object built at start-up from a TOML file (``pos-agent --config FILE``).

Invariants:
- Nothing else in the agent reads the configuration file or ``os.environ``.
- Unknown sections or keys, wrong types and impossible values are refused at load time with a
  ``ConfigError`` naming the key, so a typo never silently falls back to a default.
- Relative paths (credentials, journal) are resolved against the configuration file's folder.
- Every timeout is positive and every limit non-negative; the sale deadline leaves the register
  link time to deliver the answer (``sale.sale_timeout_s < devices.register.result_s``).
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from pos_agent.errors import ConfigError

__all__ = [
    "AgentSettings",
    "ForwarderSettings",
    "GatewaySettings",
    "JournalSettings",
    "NfcSettings",
    "OfflineLimits",
    "PrinterSettings",
    "RegisterSettings",
    "SaleSettings",
    "ScannerSettings",
    "SerialPortSettings",
    "Settings",
    "load",
]

Parity = Literal["N", "E", "O", "M", "S"]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    name: str = "pos agent"
    """Sent at enrolment; shown to the merchant."""
    terminal_label: str = "T1"
    """Prefix of the merchant references this agent makes (``T1-000042``)."""
    merchant_name: str = "Merchant"
    """Receipt title (Chinese text is fine)."""
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    url: str = "http://127.0.0.1:8080"
    credentials_path: str = "credentials.json"
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 8.0
    retry_count_max: int = 3
    """Attempts per call (the first one included) on connection errors, 5xx and 409 in-use."""
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    token_renew_margin_s: float = 120.0
    """Renew the device token this long before it expires."""


@dataclass(frozen=True, slots=True)
class SaleSettings:
    currency: str = "CNY"
    currency_numeric: int = 156
    country_numeric: int = 156
    pay_code_prefix: str = "19"
    pay_code_length: int = 18
    sale_timeout_s: float = 100.0
    """From the register's request to the agent's answer, whatever happens."""
    qr_ttl_s: int = 120
    status_poll_interval_s: float = 1.0
    resolve_query_count_max: int = 3
    """Status queries after an unknown outcome before the payment is reversed."""
    resolve_query_interval_s: float = 1.0
    cleanup_timeout_s: float = 10.0
    """Bound on reversing the losing payments once a checkout is decided."""


@dataclass(frozen=True, slots=True)
class OfflineLimits:
    """What may be approved while the gateway is unreachable.

    ``token_*`` and ``terminal_*`` count offline approvals not yet accepted by the gateway (one
    wallet token; this terminal). ``total_*`` count every offline approval in the last
    ``total_window_s`` whatever became of it: the terminal's overall offline risk per day.
    """

    enabled: bool = True
    tap_amount_max_minor: int = 20_000
    token_count_max: int = 2
    token_amount_max_minor: int = 30_000
    terminal_count_max: int = 20
    terminal_amount_max_minor: int = 200_000
    total_count_max: int = 50
    total_amount_max_minor: int = 500_000
    total_window_s: float = 86_400.0


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    interval_s: float = 2.0
    """Pause between forwarding rounds when nothing failed."""
    backoff_max_s: float = 30.0
    batch_max: int = 20


@dataclass(frozen=True, slots=True)
class JournalSettings:
    path: str = "journal.sqlite3"


@dataclass(frozen=True, slots=True)
class SerialPortSettings:
    url: str = ""
    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    open_timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class RegisterSettings(SerialPortSettings):
    handshake_step_s: float = 3.0
    result_s: float = 110.0
    """The longest a register waits for a result; the checkout ends before it."""


@dataclass(frozen=True, slots=True)
class ScannerSettings(SerialPortSettings):
    terminator: str = "\r"


@dataclass(frozen=True, slots=True)
class PrinterSettings(SerialPortSettings):
    line_width_columns: int = 48
    print_qr_slip: bool = False
    """Print the payment's QR code on a slip when the sale starts (where no screen shows it)."""


@dataclass(frozen=True, slots=True)
class NfcSettings:
    path: str = ""
    """nfcpy path: ``usb:054c:06c1``, ``tty:USB0:pn532`` or ``udp:127.0.0.1:PORT`` (simulator)."""


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    register: RegisterSettings | None = None
    nfc: NfcSettings | None = None
    scanner: ScannerSettings | None = None
    display: SerialPortSettings | None = None
    printer: PrinterSettings | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    agent: AgentSettings = field(default_factory=AgentSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    sale: SaleSettings = field(default_factory=SaleSettings)
    offline: OfflineLimits = field(default_factory=OfflineLimits)
    forwarder: ForwarderSettings = field(default_factory=ForwarderSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    config_path: str = ""

    @property
    def credentials_path(self) -> Path:
        return Path(self.gateway.credentials_path)

    @property
    def journal_path(self) -> Path:
        return Path(self.journal.path)


T = TypeVar("T")


def _build(cls: type[T], raw: Any, where: str) -> T:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"[{where}] unknown keys: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            continue
        values[f.name] = _convert(hints[f.name], raw[f.name], f"{where}.{f.name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        assert len(options) == 1, where
        return _build(options[0], value, where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return _build(hint, value, where)
    raise AssertionError(f"unsupported settings type {hint!r} at {where}")


def _check(settings: Settings) -> None:
    def positive(where: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{where} must be positive, got {value}")

    g, s, o, fw = settings.gateway, settings.sale, settings.offline, settings.forwarder
    if not g.url.startswith(("http://", "https://")):
        raise ConfigError(f"gateway.url must be an http(s) URL, got {g.url!r}")
    for where, value in (
        ("gateway.connect_timeout_s", g.connect_timeout_s),
        ("gateway.request_timeout_s", g.request_timeout_s),
        ("gateway.backoff_base_s", g.backoff_base_s),
        ("gateway.backoff_max_s", g.backoff_max_s),
        ("sale.sale_timeout_s", s.sale_timeout_s),
        ("sale.status_poll_interval_s", s.status_poll_interval_s),
        ("sale.resolve_query_interval_s", s.resolve_query_interval_s),
        ("sale.cleanup_timeout_s", s.cleanup_timeout_s),
        ("forwarder.interval_s", fw.interval_s),
        ("forwarder.backoff_max_s", fw.backoff_max_s),
        ("offline.total_window_s", o.total_window_s),
    ):
        positive(where, value)
    for where, count in (
        ("gateway.retry_count_max", g.retry_count_max),
        ("sale.qr_ttl_s", s.qr_ttl_s),
        ("sale.resolve_query_count_max", s.resolve_query_count_max),
        ("forwarder.batch_max", fw.batch_max),
    ):
        if count < 1:
            raise ConfigError(f"{where} must be at least 1, got {count}")
    if g.retry_count_max > 10:
        raise ConfigError("gateway.retry_count_max must be at most 10")
    if len(s.currency) != 3 or not s.currency.isalpha() or not s.currency.isupper():
        raise ConfigError(f"sale.currency must be an ISO 4217 code like CNY, got {s.currency!r}")
    for where, code in (("sale.currency_numeric", s.currency_numeric), ("sale.country_numeric", s.country_numeric)):
        if not 1 <= code <= 999:
            raise ConfigError(f"{where} must be an ISO numeric code 1..999, got {code}")
    if not s.pay_code_prefix.isdigit() or not 1 <= len(s.pay_code_prefix) < s.pay_code_length <= 32:
        raise ConfigError("sale.pay_code_prefix must be digits, shorter than sale.pay_code_length (<= 32)")
    for f in fields(o):
        value = getattr(o, f.name)
        if not isinstance(value, bool) and value < 0:
            raise ConfigError(f"offline.{f.name} must not be negative")
    label = settings.agent.terminal_label
    if not (1 <= len(label) <= 16 and label.replace("-", "").isalnum() and label.isascii()):
        raise ConfigError("agent.terminal_label must be 1-16 ASCII letters, digits or '-'")
    register = settings.devices.register
    if register is not None:
        positive("devices.register.handshake_step_s", register.handshake_step_s)
        if s.sale_timeout_s >= register.result_s:
            raise ConfigError("sale.sale_timeout_s must be shorter than devices.register.result_s")
    for name in ("register", "scanner", "display", "printer"):
        port = getattr(settings.devices, name)
        if port is not None and not port.url:
            raise ConfigError(f"devices.{name}.url is required when [devices.{name}] is present")
    if settings.devices.nfc is not None and not settings.devices.nfc.path:
        raise ConfigError("devices.nfc.path is required when [devices.nfc] is present")


_SECTIONS: dict[str, type[Any]] = {
    "agent": AgentSettings,
    "gateway": GatewaySettings,
    "sale": SaleSettings,
    "offline": OfflineLimits,
    "forwarder": ForwarderSettings,
    "journal": JournalSettings,
    "devices": DeviceSettings,
}


def parse(raw: dict[str, Any], *, base_dir: Path, config_path: str = "") -> Settings:
    """Settings from an already parsed TOML document (paths resolved against ``base_dir``)."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown sections: {', '.join(unknown)}")
    sections = {name: _build(cls, raw[name], name) for name, cls in _SECTIONS.items() if name in raw}
    settings = Settings(**sections, config_path=config_path)
    gateway = settings.gateway
    journal = settings.journal
    resolved = Settings(
        agent=settings.agent,
        gateway=GatewaySettings(
            **{
                **{f.name: getattr(gateway, f.name) for f in fields(gateway)},
                "url": gateway.url.rstrip("/"),
                "credentials_path": str(base_dir / gateway.credentials_path),
            }
        ),
        sale=settings.sale,
        offline=settings.offline,
        forwarder=settings.forwarder,
        journal=JournalSettings(path=str(base_dir / journal.path)),
        devices=settings.devices,
        config_path=config_path,
    )
    _check(resolved)
    return resolved


def load(path: str | Path) -> Settings:
    config = Path(path)
    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {config}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config} is not valid TOML: {exc}") from exc
    return parse(raw, base_dir=config.resolve().parent, config_path=str(config))


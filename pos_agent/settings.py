"""Settings: one frozen object built at start-up from a TOML file (``pos-agent --config FILE``).

Invariants:
- Nothing else in the agent reads the configuration file or ``os.environ`` (the agent takes no
  environment overrides: a counter box is configured by its one file).
- Loaded by the gateway's mechanism (``wallet_common.config``, msgspec): unknown sections or keys,
  wrong types and impossible values are refused at load time with a ``ConfigError`` naming the
  key, so a typo never silently falls back to a default.
- Relative paths (credentials, journal) are resolved against the configuration file's folder.
- Every timeout is positive and every limit non-negative; the sale deadline leaves the register
  link time to deliver the answer (``sale.sale_timeout_s < devices.register.result_s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from pos_agent import currency
from pos_agent.errors import ConfigError
from wallet_common import config

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


class AgentSettings(config.Section, frozen=True):
    name: str = "pos agent"
    """Sent at enrolment; shown to the merchant."""
    terminal_label: str = "T1"
    """Prefix of the merchant references this agent makes (``T1-000042``)."""
    merchant_name: str = "Merchant"
    """Receipt title (Chinese text is fine)."""
    log_level: str = "INFO"


class GatewaySettings(config.Section, frozen=True):
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
    heartbeat_interval_s: float = 60.0
    """How often the agent reports its version and offline backlog (the fleet's last-seen time)."""


class SaleSettings(config.Section, frozen=True):
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


class OfflineLimits(config.Section, frozen=True):
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


class ForwarderSettings(config.Section, frozen=True):
    interval_s: float = 2.0
    """Pause between forwarding rounds when nothing failed."""
    backoff_max_s: float = 30.0
    batch_max: int = 20


class JournalSettings(config.Section, frozen=True):
    path: str = "journal.sqlite3"


class SerialPortSettings(config.Section, frozen=True):
    url: str = ""
    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    open_timeout_s: float = 3.0


class RegisterSettings(SerialPortSettings, frozen=True):
    handshake_step_s: float = 3.0
    result_s: float = 110.0
    """The longest a register waits for a result; the checkout ends before it."""


class ScannerSettings(SerialPortSettings, frozen=True):
    terminator: str = "\r"


class PrinterSettings(SerialPortSettings, frozen=True):
    line_width_columns: int = 48
    print_qr_slip: bool = False
    """Print the payment's QR code on a slip when the sale starts (where no screen shows it)."""


class NfcSettings(config.Section, frozen=True):
    path: str = ""
    """nfcpy path: ``usb:054c:06c1``, ``tty:USB0:pn532`` or ``udp:127.0.0.1:PORT`` (simulator)."""


class DeviceSettings(config.Section, frozen=True):
    register: RegisterSettings | None = None
    nfc: NfcSettings | None = None
    scanner: ScannerSettings | None = None
    display: SerialPortSettings | None = None
    printer: PrinterSettings | None = None


class Settings(config.Section, frozen=True):
    agent: AgentSettings = AgentSettings()
    gateway: GatewaySettings = GatewaySettings()
    sale: SaleSettings = SaleSettings()
    offline: OfflineLimits = OfflineLimits()
    forwarder: ForwarderSettings = ForwarderSettings()
    journal: JournalSettings = JournalSettings()
    devices: DeviceSettings = DeviceSettings()
    config_path: str = ""

    @property
    def credentials_path(self) -> Path:
        return Path(self.gateway.credentials_path)

    @property
    def journal_path(self) -> Path:
        return Path(self.journal.path)


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
        ("gateway.heartbeat_interval_s", g.heartbeat_interval_s),
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
    currency.check_configured(s.currency, s.currency_numeric)
    if not 1 <= s.country_numeric <= 999:
        raise ConfigError(f"sale.country_numeric must be an ISO numeric code 1..999, got {s.country_numeric}")
    if not s.pay_code_prefix.isdigit() or not 1 <= len(s.pay_code_prefix) < s.pay_code_length <= 32:
        raise ConfigError("sale.pay_code_prefix must be digits, shorter than sale.pay_code_length (<= 32)")
    for f in msgspec.structs.fields(o):
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


def parse(raw: dict[str, Any], *, base_dir: Path, config_path: str = "") -> Settings:
    """Settings from an already parsed TOML document (paths resolved against ``base_dir``)."""
    try:
        settings = config.build(Settings, {**raw, "config_path": config_path})
    except config.ConfigError as exc:
        raise ConfigError(str(exc)) from None
    gateway = settings.gateway
    resolved = msgspec.structs.replace(
        settings,
        gateway=msgspec.structs.replace(gateway, url=gateway.url.rstrip("/"),
                                        credentials_path=str(base_dir / gateway.credentials_path)),
        journal=JournalSettings(path=str(base_dir / settings.journal.path)),
    )
    _check(resolved)
    return resolved


def load(path: str | Path) -> Settings:
    file = Path(path)
    try:
        raw = config.read_toml(file)
    except config.ConfigError as exc:
        raise ConfigError(str(exc)) from None
    return parse(raw, base_dir=file.resolve().parent, config_path=str(file))

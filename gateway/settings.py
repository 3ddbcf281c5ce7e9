"""Settings: one frozen object built at start-up from a TOML file and the environment.

Nothing else in the gateway reads ``os.environ``. The file is ``GATEWAY_CONFIG`` (or ``gateway
--config FILE``), by default ``gateway/defaults.toml`` inside the package (so an installed wheel
starts anywhere); a key the file leaves out takes the class default below. Environment variables
named ``GATEWAY_<SECTION>_<KEY>`` override the file, converted to the field's type (a table such
as ``GATEWAY_TIERS_TIER4`` or ``GATEWAY_WALLET_PIN_THRESHOLD_MINOR`` takes a JSON object). Loading
goes through ``wallet_common.config`` (msgspec): wrong types and unknown keys are refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from gateway.domain import verification
from gateway.domain.limits import Caps, Tier
from gateway.domain.partitions import AHEAD_MONTHS_MAX
from gateway.domain.throttle import Backoff, Rate
from gateway.domain.webhooks import Backoff as WebhookBackoff
from wallet_common.config import ConfigError, Secret, Section, build, read_toml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "defaults.toml"
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
MinorUnits = Annotated[int, msgspec.Meta(ge=0)]
IDEMPOTENCY_KEY_LIFETIME_S = 86400  # the shortest retention api-conventions.md documents


class ServerSettings(Section, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    body_max_bytes: int = 65536
    public_url: str = "http://127.0.0.1:8080"
    event_loop: str = "uvloop"
    shutdown_grace_s: float = 30.0
    restart_backoff_max_s: float = 10.0
    crash_count_max: int = 5
    crash_window_s: float = 60.0


class DatabaseSettings(Section, frozen=True):
    url: str = "postgresql://postgres@127.0.0.1:5432/gateway"
    pool_min: int = 2
    pool_max: int = 16
    acquire_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    retry_count_max: int = 5
    lock_timeout_s: float = 2.0
    statement_timeout_s: float = 8.0
    idle_in_transaction_timeout_s: float = 5.0
    connection_check_interval_s: float = 1.0
    connect_wait_s: float = 30.0
    # How long a batch of payments waits for one of a campaign's counter rows when others hold every row
    # (migration 0035); then its items go to their general path.
    campaign_row_wait_s: float = 0.05
    # A streaming replica for reads that may be stale (gateway.store.replica); empty: the primary serves all.
    replica_url: str = ""
    replica_backoff_s: float = 5.0


class RedisSettings(Section, frozen=True):
    url: str = "redis://127.0.0.1:6379/0"
    # Through Redis Sentinel: "host:port,host:port" of the sentinels (then url gives only the database number
    # and password) and the name they monitor the master under; empty: url is the server.
    sentinels: str = ""
    sentinel_service: str = "mymaster"

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        found = []
        for item in filter(None, (a.strip() for a in self.sentinels.split(","))):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("redis.sentinels is a comma-separated list of host:port")
            found.append((host.strip("[]"), int(port)))
        return found
    timeout_s: float = 0.25
    backoff_s: float = 5.0


class AuthSettings(Section, frozen=True):
    jwt_issuer: str = "wallet-gateway"
    jwt_keys: Secret = ""
    jwt_active_kid: str = ""
    api_key_pepper: Secret = ""
    operator_token_ttl_s: int = 3600
    wallet_token_ttl_s: int = 900
    rate_limit_per_s: int = 1000
    key_mode: str = "test"
    password_hash_profile: str = "rfc_9106_low_memory"  # gateway.auth.passwords.PROFILES
    api_key_cache_ttl_s: float = 60.0
    api_key_cache_entries_max: int = 10_000

    def jwt_key_ring(self) -> dict[str, str]:
        ring: dict[str, str] = {}
        for pair in self.jwt_keys.split(","):
            kid, sep, secret = pair.strip().partition(":")
            if sep and kid and secret:
                ring[kid] = secret
        return ring


class PaymentSettings(Section, frozen=True):
    expiry_default_s: int = 900
    expiry_max_s: int = 86400
    authorization_ttl_s: int = 604800
    fee_bps_default: int = 60
    group_commit_items_max: int = 64
    group_commit_in_flight_max: int = 2


class IdempotencySettings(Section, frozen=True):
    retention_s: int = 86400
    lock_timeout_s: int = 30


class PartitionSettings(Section, frozen=True):
    """Time-partitioned tables (migration 0023, services/partitions.py)."""

    events_retention_s: int = 400 * 86400  # a year of events, audit ones included, and a month to spare
    ahead_months: int = 3  # months created in advance: inserts find their partition even if maintenance stops
    interval_s: float = 3600.0


class WorkerSettings(Section, frozen=True):
    interval_s: float = 5.0
    batch_max: int = 500


class WebhookSettings(Section, frozen=True):
    timeout_s: float = 15.0
    lease_margin_s: float = 30.0
    response_excerpt_bytes: int = 1024
    concurrency_max: int = 64
    endpoint_concurrency_max: int = 4
    batch_max: int = 100
    poll_interval_s: float = 2.0
    listen: bool = True
    backoff_base_s: float = 5.0
    backoff_max_s: float = 21600.0
    retry_window_s: float = 259200.0
    disable_after_s: float = 432000.0
    rotation_overlap_s: int = 86400
    rotation_overlap_max_s: int = 604800
    endpoints_per_merchant_max: int = 16

    def backoff(self) -> WebhookBackoff:
        return WebhookBackoff(self.backoff_base_s, self.backoff_max_s, self.retry_window_s)


class ReconciliationSettings(Section, frozen=True):
    tolerance_business_days: int = 3
    statement_max_bytes: int = 67_108_864
    api_body_max_bytes: int = 16_777_216


class FxSettings(Section, frozen=True):
    quote_ttl_s: int = 30
    fee_bps: int = 20
    import_rows_max: int = 10_000
    api_body_max_bytes: int = 2_097_152


class SettlementSettings(Section, frozen=True):
    # The gateway's own account the payouts are paid from: the debtor of the pain.001 file.
    debtor_name: str = "Wallet Gateway Ltd"
    debtor_account: str = "GATEWAYSETTLEMENT0001"
    debtor_bic: str = "GATEWAYXXXX"
    # A close waits this long at most for transactions begun before the cutoff to end.
    drain_timeout_s: float = 30.0
    # A run closes every batch of the day in one transaction: its statements may take longer than
    # database.statement_timeout_s (about 10 s per million captures on a small machine).
    statement_timeout_s: float = 900.0


class LedgerSettings(Section, frozen=True):
    # A background invariant check (POST /v1/operator/ledger/invariant_checks) reads the whole ledger in one
    # snapshot: its statements may take far longer than database.statement_timeout_s (about 3 s per 100,000
    # payments with their postings on a small machine). It ends as an error past this.
    check_timeout_s: float = 3600.0
    # A running check's lease, renewed by its worker every third of it; past it another worker takes it.
    check_lease_s: float = 30.0
    # Attempts a check gets (its process died or stopped, the database failed it) before it ends as an error.
    check_attempts_max: int = 5
    # How often each process's worker looks for a queued check (one asked in this process starts at once).
    check_poll_s: float = 2.0

    def __post_init__(self) -> None:
        if self.check_timeout_s <= 0 or self.check_lease_s <= 0 or self.check_poll_s <= 0:
            raise ValueError("ledger.check_timeout_s, check_lease_s and check_poll_s are positive")
        if not 1 <= self.check_attempts_max <= 100:
            raise ValueError("ledger.check_attempts_max is in [1, 100]")


class NotificationSettings(Section, frozen=True):
    # Empty: notifications are only listed. Otherwise each is POSTed here at least once.
    push_url: str = ""
    push_timeout_s: float = 5.0
    push_attempts_max: int = 8
    push_backoff_base_s: float = 1.0
    push_backoff_max_s: float = 300.0
    push_lease_margin_s: float = 10.0
    push_poll_interval_s: float = 0.5
    push_batch_max: int = 50

    def __post_init__(self) -> None:
        if self.push_url:
            _check_url("notifications.push_url", self.push_url, ("http", "https"), port=True)
        if self.push_timeout_s <= 0 or self.push_poll_interval_s <= 0 or self.push_lease_margin_s < 0:
            raise ValueError("notifications.push_timeout_s and push_poll_interval_s are positive,"
                             " push_lease_margin_s is >= 0")
        if not 1 <= self.push_attempts_max <= 100 or not 1 <= self.push_batch_max <= 1000:
            raise ValueError("notifications.push_attempts_max is in [1, 100], push_batch_max in [1, 1000]")
        if not 0 < self.push_backoff_base_s <= self.push_backoff_max_s:
            raise ValueError("notifications needs 0 < push_backoff_base_s <= push_backoff_max_s")


class SpendingSettings(Section, frozen=True):
    # A holder's months (budgets, insights) are in its own time zone, this one until it sets one.
    time_zone_default: str = "Asia/Shanghai"
    # The budget worker evaluates committed payments and refunds this often.
    poll_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0:
            raise ValueError("spending.poll_interval_s is positive")
        try:
            ZoneInfo(self.time_zone_default)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("spending.time_zone_default must be an IANA time zone, e.g. Asia/Shanghai") from None


class WalletSettings(Section, frozen=True):
    tier_default: int = 4
    pin_threshold_minor: dict[Currency, MinorUnits] = {}
    pin_failures_max: int = 5
    pay_code_ttl_s: int = 60
    pay_code_prefix: str = "19"
    confirmation_timeout_s: int = 60
    limits_timezone: str = "Asia/Shanghai"


class SignInSettings(Section, frozen=True):
    code_length: int = 6
    code_ttl_s: int = 300
    code_attempts_max: int = 5
    resend_interval_s: int = 60
    resends_max: int = 3
    challenges_per_holder_max: int = 10
    challenge_window_s: int = 3600
    sms_hook_url: str = ""
    sms_hook_secret: Secret = ""
    sms_hook_timeout_s: float = 5.0
    sms_hook_attempts_max: int = 5
    sms_hook_backoff_base_s: float = 1.0
    sms_hook_backoff_max_s: float = 30.0
    sender_poll_interval_s: float = 2.0
    sender_batch_max: int = 50
    kyc_hook_secret: Secret = ""
    kyc_tolerance_s: int = 300
    revoked_sessions_max: int = 100_000

    def check(self) -> None:
        if not 4 <= self.code_length <= 10 or not 1 <= self.code_attempts_max <= 20:
            raise ValueError("sign_in: code_length is 4-10 and code_attempts_max 1-20")
        if min(self.code_ttl_s, self.resend_interval_s, self.challenges_per_holder_max, self.challenge_window_s,
               self.sms_hook_attempts_max, self.sender_batch_max, self.kyc_tolerance_s, self.revoked_sessions_max) < 1:
            raise ValueError("sign_in: the time to live, intervals, windows, counts and caps are positive")
        if self.resends_max < 0 or self.sms_hook_timeout_s <= 0 or self.sender_poll_interval_s <= 0:
            raise ValueError("sign_in: resends_max >= 0; sms_hook_timeout_s and sender_poll_interval_s are positive")
        if not 0 < self.sms_hook_backoff_base_s <= self.sms_hook_backoff_max_s:
            raise ValueError("sign_in: 0 < sms_hook_backoff_base_s <= sms_hook_backoff_max_s")
        if self.sms_hook_url:
            _check_url("sign_in.sms_hook_url", self.sms_hook_url, ("http", "https"), port=True)
        for name in ("sms_hook_secret", "kyc_hook_secret"):
            secret = getattr(self, name)
            if secret and not verification.secret_valid(secret):
                raise ValueError(f"sign_in.{name} is whsec_ and the base64 of at least 24 random bytes (or empty)")


class TierCaps(Section, frozen=True):
    balance_max_minor: MinorUnits
    payment_max_minor: MinorUnits
    daily_max_minor: MinorUnits


class TierSettings(Section, frozen=True):
    tier1: dict[Currency, TierCaps] = {}
    tier2: dict[Currency, TierCaps] = {}
    tier3: dict[Currency, TierCaps] = {}
    tier4: dict[Currency, TierCaps] = {}

    def tiers(self) -> dict[int, Tier]:
        return {
            number: Tier(number, f"tier {number}", {
                cur: Caps(c.balance_max_minor, c.payment_max_minor, c.daily_max_minor) for cur, c in caps.items()
            })
            for number, caps in ((1, self.tier1), (2, self.tier2), (3, self.tier3), (4, self.tier4))
        }


class QrSettings(Section, frozen=True):
    scheme_id: str = "org.walletgateway"
    ttl_default_s: int = 300
    ttl_max_s: int = 86400
    image_cache_entries: int = 512


class PromotionSettings(Section, frozen=True):
    cache_refresh_s: float = 1.0
    campaigns_live_max: int = 200


class DeviceSettings(Section, frozen=True):
    enrolment_code_ttl_s: int = 900
    token_ttl_s: int = 900


class ThrottleSettings(Section, frozen=True):
    failures_before_lockout: int = 5
    lockout_base_s: int = 60
    lockout_max_s: int = 3600
    failures_forget_s: int = 86400
    address_per_s: float = 1.0
    address_burst: int = 30
    address_exempt: str = ""
    address_ipv6_prefix_bits: int = 64
    trusted_proxies: str = ""
    overall_per_s: float = 20.0
    overall_burst: int = 100

    def backoff(self) -> Backoff:
        return Backoff(self.failures_before_lockout, self.lockout_base_s, self.lockout_max_s)

    def per_address(self) -> Rate:
        return Rate(self.address_per_s, float(self.address_burst))

    def overall(self) -> Rate:
        return Rate(self.overall_per_s, float(self.overall_burst))

    def exempt_addresses(self) -> frozenset[str]:
        return frozenset(filter(None, (a.strip() for a in self.address_exempt.split(","))))

    def proxies(self) -> frozenset[str]:
        return frozenset(filter(None, (a.strip() for a in self.trusted_proxies.split(","))))


class IssuerSettings(Section, frozen=True):
    imk_hex: Secret = ""
    token_bin: str = "999001"
    token_pan_length: int = 16
    expiry_yymm: str = "3012"
    aid_hex: str = "F057414C4C455401"

    @property
    def imk(self) -> bytes:
        return bytes.fromhex(self.imk_hex)


# Weak whatever the file says: the textbook EMV test IMK, and words marking a placeholder.
# The names of gateway.auth.passwords.PROFILES (settings import no hashing library; a unit test keeps them equal).
_PASSWORD_PROFILES = ("rfc_9106_low_memory", "rfc_9106_high_memory", "test_only_cheapest")
_TEST_IMKS_HEX = frozenset({"0123456789ABCDEFFEDCBA9876543210", "0123456789ABCDEF0123456789ABCDEF"})
_PLACEHOLDER_WORDS = ("dev-only", "change-me", "changeme")
JWT_SECRET_MIN_BYTES = 32  # HS256 wants a key at least as long as its 256-bit output


def development_secrets(path: Path = DEFAULT_CONFIG) -> frozenset[str]:
    """The secrets shipped in the default settings file: JWT key secrets, API key pepper, issuer IMK."""
    try:
        data = read_toml(path)
    except ConfigError:
        return frozenset()
    auth, issuer = data.get("auth", {}), data.get("issuer", {})
    shipped = AuthSettings(jwt_keys=str(auth.get("jwt_keys", ""))).jwt_key_ring().values()
    return frozenset(filter(None, {*shipped, str(auth.get("api_key_pepper", "")), str(issuer.get("imk_hex", ""))}))


def _weakness(secret: str, shipped: frozenset[str]) -> str | None:
    """Why ``secret`` must not protect live money, or None. Never returns the secret itself."""
    if secret in shipped or secret.upper() in {s.upper() for s in shipped}:
        return "the development value"
    if any(word in secret.lower() for word in _PLACEHOLDER_WORDS):
        return "a placeholder value (dev-only / change-me)"
    if len(set(secret.upper())) <= 1:
        return "a single repeated character"
    return None


def _live_secret_problems(config: Settings) -> list[tuple[str, str]]:
    """(setting, reason) for every secret a live gateway must not run with; empty when all are fit."""
    shipped = development_secrets()
    problems: list[tuple[str, str]] = []
    for kid, secret in config.auth.jwt_key_ring().items():
        reason = _weakness(secret, shipped)
        if reason is None and len(secret.encode()) < JWT_SECRET_MIN_BYTES:
            reason = f"a secret shorter than {JWT_SECRET_MIN_BYTES} bytes"
        if reason:
            problems.append(("auth.jwt_keys", f"key {kid!r}: {reason}"))
    reason = _weakness(config.auth.api_key_pepper, shipped)
    if reason:
        problems.append(("auth.api_key_pepper", reason))
    if config.issuer.imk_hex:  # empty: taps disabled, nothing to protect
        reason = _weakness(config.issuer.imk_hex, shipped)
        if reason is None and config.issuer.imk_hex.upper() in _TEST_IMKS_HEX:
            reason = "a well-known test key"
        if reason:
            problems.append(("issuer.imk_hex", reason))
    # Not secrets, but shipped placeholders: a live payout file must name the gateway's real account.
    shipped_debtor = SettlementSettings()
    for name in ("debtor_name", "debtor_account", "debtor_bic"):
        if getattr(config.settlement, name) == getattr(shipped_debtor, name):
            problems.append((f"settlement.{name}", "the placeholder value"))
    return problems


def _check_url(setting: str, url: str, schemes: tuple[str, ...], *, port: bool) -> None:
    """A URL of one of ``schemes`` that takes apart (with a numeric port if ``port``), or one line naming
    the setting; never the URL itself, which may hold a password. A PostgreSQL URL may name several
    hosts (``h1:5432,h2:5432``), so its ports are left to the driver (``db.DatabaseUrlInvalid``)."""
    try:
        parts = urlsplit(url)
        if port:
            _ = parts.port  # reading it is the check: a port that is no number 0-65535 raises
    except ValueError as exc:
        raise ValueError(f"{setting} is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{setting} must be a URL of scheme {' or '.join(schemes)}")


class Settings(Section, frozen=True):
    server: ServerSettings
    database: DatabaseSettings
    redis: RedisSettings
    auth: AuthSettings
    payments: PaymentSettings
    idempotency: IdempotencySettings
    workers: WorkerSettings
    wallet: WalletSettings
    tiers: TierSettings
    qr: QrSettings
    devices: DeviceSettings
    issuer: IssuerSettings
    throttle: ThrottleSettings
    webhooks: WebhookSettings = WebhookSettings()
    reconciliation: ReconciliationSettings = ReconciliationSettings()
    settlement: SettlementSettings = SettlementSettings()
    ledger: LedgerSettings = LedgerSettings()
    promotions: PromotionSettings = PromotionSettings()
    fx: FxSettings = FxSettings()
    notifications: NotificationSettings = NotificationSettings()
    spending: SpendingSettings = SpendingSettings()
    sign_in: SignInSettings = SignInSettings()
    partitions: PartitionSettings = PartitionSettings()

    def __post_init__(self) -> None:
        _check_url("database.url", self.database.url, ("postgresql", "postgres"), port=False)
        _check_url("redis.url", self.redis.url, ("redis", "rediss", "unix"), port=True)
        if self.database.replica_url:
            _check_url("database.replica_url", self.database.replica_url, ("postgresql", "postgres"), port=False)
        if not 0.001 <= self.database.campaign_row_wait_s <= 60:
            raise ValueError("database.campaign_row_wait_s is 0.001-60 seconds")
        if self.database.replica_backoff_s <= 0:
            raise ValueError("database.replica_backoff_s is positive")
        self.redis.sentinel_addresses()  # refuses a malformed list by name
        if self.redis.sentinels and not self.redis.sentinel_service:
            raise ValueError("redis.sentinel_service names the master the sentinels monitor")
        if self.auth.key_mode not in ("test", "live"):
            raise ValueError(f"auth.key_mode is 'test' or 'live', got {self.auth.key_mode!r}")
        if self.auth.password_hash_profile not in _PASSWORD_PROFILES:
            raise ValueError(f"auth.password_hash_profile is one of {', '.join(_PASSWORD_PROFILES)},"
                             f" got {self.auth.password_hash_profile!r}")
        if self.auth.password_hash_profile.startswith("test_only") and self.auth.key_mode == "live":
            raise ValueError("auth.password_hash_profile test_only_cheapest is for test suites: refused with live keys")
        if self.issuer.imk_hex and len(self.issuer.imk) != 16:
            raise ValueError("issuer.imk_hex is a 16-byte (32 hex digit) key (empty: taps disabled)")
        if not (self.issuer.token_bin.isdigit() and len(self.issuer.token_bin) + 2 <= self.issuer.token_pan_length <= 19):
            raise ValueError("issuer.token_bin must be digits leaving room in token_pan_length")
        if self.server.event_loop not in ("uvloop", "asyncio"):
            raise ValueError("server.event_loop is 'uvloop' or 'asyncio'")
        if min(self.server.shutdown_grace_s, self.server.restart_backoff_max_s, self.database.connect_wait_s) < 0:
            raise ValueError("server.shutdown_grace_s, server.restart_backoff_max_s, database.connect_wait_s are >= 0")
        if self.server.crash_count_max < 1 or self.server.crash_window_s <= 0:
            raise ValueError("server.crash_count_max and server.crash_window_s are positive")
        if not (len(self.wallet.pay_code_prefix) == 2 and self.wallet.pay_code_prefix.isdigit()):
            raise ValueError("wallet.pay_code_prefix is two digits")
        if self.wallet.tier_default not in self.tiers.tiers():
            raise ValueError("wallet.tier_default must name a tier")
        ring = self.auth.jwt_key_ring()
        if self.auth.jwt_active_kid not in ring:
            raise ValueError("auth.jwt_active_kid must name a key in auth.jwt_keys")
        if len(self.auth.api_key_pepper) < 16:
            raise ValueError("auth.api_key_pepper must be at least 16 characters")
        if self.auth.rate_limit_per_s < 1:
            raise ValueError("auth.rate_limit_per_s must be at least 1")
        if not 60 <= self.payments.expiry_default_s <= self.payments.expiry_max_s:
            raise ValueError("payments.expiry_default_s is at least 60 and at most payments.expiry_max_s")
        if not 0 <= self.payments.group_commit_items_max <= 1000 or not 1 <= self.payments.group_commit_in_flight_max <= 64:
            raise ValueError("payments.group_commit_items_max is in [0, 1000] (0: no group commit) and"
                             " payments.group_commit_in_flight_max in [1, 64]")
        if self.auth.api_key_cache_ttl_s < 0 or self.auth.api_key_cache_entries_max < 1:
            raise ValueError("auth.api_key_cache_ttl_s is >= 0 (0: no cache); auth.api_key_cache_entries_max is positive")
        if self.idempotency.retention_s < IDEMPOTENCY_KEY_LIFETIME_S:
            raise ValueError(f"idempotency.retention_s is at least {IDEMPOTENCY_KEY_LIFETIME_S} (api-conventions.md:"
                             " keys are kept at least 24 hours)")
        if self.partitions.events_retention_s < self.webhooks.retry_window_s or self.partitions.interval_s <= 0:
            raise ValueError("partitions.events_retention_s is at least webhooks.retry_window_s (a delivery being"
                             " retried keeps its event) and partitions.interval_s is positive")
        if not 1 <= self.partitions.ahead_months <= AHEAD_MONTHS_MAX:
            raise ValueError(f"partitions.ahead_months is in [1, {AHEAD_MONTHS_MAX}]")
        self.throttle.backoff()  # each refuses nonsense (zero rates, a cap below the base) with ValueError
        self.throttle.per_address()
        self.throttle.overall()
        self.webhooks.backoff()
        w = self.webhooks
        if w.timeout_s <= 0 or w.concurrency_max < 1 or w.endpoint_concurrency_max < 1 or w.batch_max < 1:
            raise ValueError("webhooks: timeout_s, concurrency_max, endpoint_concurrency_max and batch_max are positive")
        if w.poll_interval_s <= 0 or w.response_excerpt_bytes < 0 or w.endpoints_per_merchant_max < 1:
            raise ValueError("webhooks: poll_interval_s and endpoints_per_merchant_max are positive")
        if not 0 <= w.rotation_overlap_s <= w.rotation_overlap_max_s:
            raise ValueError("webhooks.rotation_overlap_s is between 0 and rotation_overlap_max_s")
        r = self.reconciliation
        if not 0 <= r.tolerance_business_days <= 30 or r.statement_max_bytes < 1 or r.api_body_max_bytes < 1:
            raise ValueError("reconciliation: tolerance_business_days is 0-30; the size caps are positive")
        if not (1 <= self.fx.quote_ttl_s <= 3600 and 0 <= self.fx.fee_bps <= 1000 and self.fx.import_rows_max >= 1
                and self.fx.api_body_max_bytes >= 1):
            raise ValueError("fx: quote_ttl_s is 1-3600, fee_bps 0-1000; import_rows_max and api_body_max_bytes are"
                             " positive")
        st = self.settlement
        if not (1 <= len(st.debtor_name) <= 70 and 1 <= len(st.debtor_account) <= 34 and len(st.debtor_bic) in (8, 11)):
            raise ValueError("settlement: debtor_name (1-70), debtor_account (1-34) and debtor_bic (8 or 11) are needed")
        if st.drain_timeout_s <= 0 or st.statement_timeout_s <= 0:
            raise ValueError("settlement.drain_timeout_s and settlement.statement_timeout_s are positive")
        if not 8 <= self.throttle.address_ipv6_prefix_bits <= 128:
            raise ValueError("throttle.address_ipv6_prefix_bits is between 8 and 128")
        if self.throttle.failures_forget_s < self.throttle.lockout_max_s:
            raise ValueError("throttle.failures_forget_s must be at least throttle.lockout_max_s")
        self.sign_in.check()
        if self.auth.key_mode == "live":
            refused = [f"{name}: {reason} cannot be used in live mode; set GATEWAY_{name.replace('.', '_').upper()}"
                       for name, reason in _live_secret_problems(self)]
            if refused:
                raise ValueError(" | ".join(refused))


def load(path: Path | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are ``section={"key": value}`` applied last (tests, CLI flags).

    Raises ``ConfigError`` (a ``ValueError``) with one line naming the setting or the file.
    """
    env = os.environ if env is None else env
    config_path = path or Path(env.get("GATEWAY_CONFIG", str(DEFAULT_CONFIG)))
    return build(Settings, read_toml(config_path), env=env, env_prefix="GATEWAY_", overrides=overrides)

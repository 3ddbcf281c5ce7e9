"""Every Prometheus metric of the gateway, and the one exposition of them all.

Invariants:
- this module depends on ``prometheus_client`` alone, so every layer may import it; the metrics are
  defined here and nowhere else;
- names follow the Prometheus conventions: ``gateway_`` prefix, base units in the name (``_seconds``),
  ``_total`` on counters; labels take values from small fixed sets (route templates, never raw
  paths; error codes of ``gateway.errors``; channels, outcomes, states), never ids or amounts;
- instrumenting costs no I/O on the request path: an increment or an observation, nothing else;
- a scrape sees the whole gateway: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``gateway serve``
  with several processes) every process writes its values to files there and the exposition
  merges them (``MultiProcessCollector``); each gauge says how its processes' values merge.
"""

from __future__ import annotations

import os
import platform

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# prometheus_client's own switch, read by it when it is imported: the values live in files of this
# directory instead of this process's memory. Read once here, at the same moment, so that the
# exposition always matches where the values are (it is the library's setting, not the gateway's).
_MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STATEMENT_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# HTTP (gateway.api.middlewares). ``route`` is the route template ("/v1/payments/{id}"), "unmatched"
# for a path no route serves.
HTTP_REQUESTS = Counter("gateway_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_REQUEST_DURATION = Histogram(
    "gateway_http_request_duration_seconds", "HTTP request latency, from the request read to the answer",
    ["method", "route", "status_class"], buckets=_LATENCY_BUCKETS_S,
)
ERRORS = Counter("gateway_errors_total", "Error responses rendered, by error code", ["code"])

# Payments (gateway.services.payments.counted): one count per attempt to pay, once it is final; a
# replayed answer is no new attempt. ``channel``: wallet, qr, pay_code, tap. ``outcome``: the
# payment's status after it (succeeded, requires_capture, requires_action), declined, or error.
PAYMENTS = Counter("gateway_payments_total", "Attempts to pay, by channel and outcome", ["channel", "outcome"])
PAYMENT_DECLINES = Counter("gateway_payment_declines_total", "Declined attempts to pay, by channel and decline code",
                           ["channel", "code"])

# Ledger (gateway.store.ledger.post): the one statement that writes an entry, its postings and balances.
LEDGER_POST_DURATION = Histogram("gateway_ledger_post_duration_seconds", "Ledger posting statement latency",
                                 ["kind"], buckets=_STATEMENT_BUCKETS_S)
# Ledger invariant checks run in the background (gateway.services.invariant_checks), by outcome: passed,
# failed (violations found: alert on it), error (it could not finish).
LEDGER_CHECKS = Counter("gateway_ledger_checks_total", "Background ledger invariant checks finished, by outcome",
                        ["status"])

# Group commit (gateway.services.batching): payments per batch statement, and those a batch refused
# (they then ran their general path: a decline, a changed row, a row another transaction held).
GROUP_COMMIT_BATCH_SIZE = Histogram("gateway_group_commit_payments_per_batch", "Payments written by one batch statement",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
GROUP_COMMIT_FALLBACKS = Counter("gateway_group_commit_fallbacks_total",
                                 "Payments a batch statement refused, then run on their general path")
CREATE_BATCH_SIZE = Histogram("gateway_group_commit_creates_per_batch", "Payment creates written by one batch statement",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
CREATE_BATCH_FALLBACKS = Counter("gateway_group_commit_create_fallbacks_total",
                                 "Payment creates a batch statement refused, then run on their general path")

# Database (gateway.store.db). Gauges are summed over the processes; idle = open - in_use.
DB_TRANSACTION_RETRIES = Counter("gateway_db_transaction_retries_total", "Transactions retried whole", ["reason"])
DB_POOL_CONNECTIONS_MAX = Gauge("gateway_db_pool_connections_max", "Connections the pools may open",
                                multiprocess_mode="livesum")
DB_POOL_CONNECTIONS_OPEN = Gauge("gateway_db_pool_connections_open", "Connections the pools hold open (as of the last acquire)",
                                 multiprocess_mode="livesum")
DB_POOL_CONNECTIONS_IN_USE = Gauge("gateway_db_pool_connections_in_use", "Connections acquired from the pools",
                                   multiprocess_mode="livesum")
DB_POOL_ACQUIRE_WAIT = Histogram("gateway_db_pool_acquire_wait_seconds",
                                 "Wait for a pooled connection (a timed-out wait counts its full time)",
                                 buckets=_WAIT_BUCKETS_S)

# API key lookups (gateway.services.key_cache). ``result``: hit (answered from the cache), miss (looked
# up in the database), bypass (looked up in the database because the cache is off or its listener is down).
API_KEY_CACHE_LOOKUPS = Counter("gateway_api_key_cache_lookups_total", "API key lookups, by where they were answered",
                                ["result"])

# Redis (gateway.accel): each process has its own breaker; the gauge is 1 while any process's is open.
REDIS_BREAKER_OPEN = Gauge("gateway_redis_breaker_open",
                           "1 from a failed Redis call until Redis answers again (skipped meanwhile), else 0",
                           multiprocess_mode="livemax")
DB_REPLICA_FALLBACKS = Counter("gateway_db_replica_fallbacks_total",
                               "Stale reads that found the replica unreachable (each sends them to the primary for a while)")
REDIS_FAILURES = Counter("gateway_redis_failures_total", "Redis calls that failed (each opens the breaker)")

# Background loops (gateway.workers). Every process measures the lag as its expiry tick starts (normally
# up to one ``workers.interval_s``); the newest measurement of any process wins.
EXPIRY_LAG = Gauge("gateway_expiry_lag_seconds",
                   "How long the oldest payment or authorisation past its time has waited to be expired (0: none)",
                   multiprocess_mode="livemostrecent")
WEBHOOK_ATTEMPTS = Counter("gateway_webhook_attempts_total", "Webhook delivery attempts", ["outcome"])
WEBHOOK_FIRST_ATTEMPT_DELAY = Histogram(
    "gateway_webhook_first_attempt_delay_seconds", "From the event to its first attempt's answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)

# Idempotency (gateway.services.idempotency). ``source``: where the stored answer was found (redis, database).
IDEMPOTENCY_REPLAYS = Counter("gateway_idempotency_replays_total", "Stored answers replayed to a retry", ["source"])
IDEMPOTENCY_TAKEOVERS = Counter("gateway_idempotency_takeovers_total",
                                "Keys taken over from a request that died or stalled past the lock timeout")

# One series per serving process (the pid label in multiprocess mode): count() of it is the processes serving.
BUILD_INFO = Gauge("gateway_build_info", "Always 1; the labels say what is running",
                   ["version", "python", "mode"], multiprocess_mode="liveall")


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def process_exited(pid: int) -> None:
    """Drop a dead serving process's live gauges (the supervisor calls it when a child exits)."""
    mark_process_dead(pid)  # type: ignore[no-untyped-call]


def announce_build(version: str, mode: str) -> None:
    """Set ``gateway_build_info`` for this process (called in each serving process at start-up)."""
    BUILD_INFO.labels(version=version, python=platform.python_version(), mode=mode).set(1)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets (the whole gateway in multiprocess mode) and its content type."""
    if _MULTIPROCESS_DIR is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    # A fresh registry per scrape, as prometheus_client prescribes: the collector reads every
    # process's files at collection time.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=_MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]  # untyped upstream
    return generate_latest(registry), CONTENT_TYPE_LATEST

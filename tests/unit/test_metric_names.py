"""The gateway's metrics live in one module and follow Prometheus naming conventions."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from gateway import metrics

GATEWAY = Path(metrics.__file__).parent
# Labels whose values are unbounded (one series per object or path) have no place on a metric.
UNBOUNDED_LABELS = {"id", "path", "url", "payment", "payment_id", "merchant", "merchant_id", "holder", "key", "amount"}


def _defined() -> dict[str, Counter | Gauge | Histogram]:
    return {name: m for name, m in vars(metrics).items() if isinstance(m, (Counter, Gauge, Histogram))}


def test_every_metric_is_named_by_the_conventions() -> None:
    defined = _defined()
    assert "PAYMENTS" in defined and "BUILD_INFO" in defined
    for attribute, metric in defined.items():
        family = metric._name  # prometheus_client keeps a counter's name without its "_total"
        assert family.startswith("gateway_"), attribute
        if isinstance(metric, Histogram):
            # A histogram times something (base unit: seconds) or counts things per event, named so
            # (``..._payments_per_batch``): never a bare "size" that leaves the unit to guess.
            assert family.endswith("_seconds") or "_per_" in family, attribute
        for unit in ("_ms", "_milliseconds", "_minutes", "_kb", "_mb"):
            assert unit not in family, attribute  # base units only
        assert not set(metric._labelnames) & UNBOUNDED_LABELS, attribute


def test_counters_are_exposed_with_total() -> None:
    counters = [m for m in _defined().values() if isinstance(m, Counter)]
    exposed = {s.name for c in counters for family in c.collect() for s in family.samples}
    assert all(name.endswith(("_total", "_created")) for name in exposed), exposed


def test_no_module_but_metrics_uses_prometheus_client() -> None:
    users = []
    for source in GATEWAY.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "prometheus_client" for n in names):
                users.append(source.relative_to(GATEWAY).as_posix())
    assert sorted(set(users)) == ["metrics.py"]

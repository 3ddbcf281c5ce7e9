"""``db.address``: the database as the start-up line and the errors name it (user, hosts, ports, database; never
a password), for every URL form asyncpg connects with."""

from __future__ import annotations

import pytest

from gateway.store import db


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://gw:s3cret@db.internal:6432/gateway", "postgresql://gw@db.internal:6432/gateway"),
    ("postgresql://postgres@127.0.0.1/gateway", "postgresql://postgres@127.0.0.1:5432/gateway"),
    ("postgres://[::1]:5433/gw?password=s3cret", "postgres://[::1]:5433/gw"),
    ("postgresql://[fe80::1]/gw", "postgresql://[fe80::1]:5432/gw"),
    ("postgresql:///gateway", "postgresql://localhost:5432/gateway"),
    # Several hosts (libpq's failover list, which asyncpg takes too): each with its port.
    ("postgresql://gw:s3cret@pg1:5432,pg2/gateway", "postgresql://gw@pg1:5432,pg2:5432/gateway"),
])
def test_the_address_names_user_hosts_ports_and_database_but_no_password(url: str, shown: str) -> None:
    assert db.address(url) == shown

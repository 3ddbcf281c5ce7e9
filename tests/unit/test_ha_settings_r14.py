"""The HA settings: a replica URL for stale reads, Redis through Sentinel; malformed values refused by name."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from gateway import accel
from gateway.settings import RedisSettings, load
from wallet_common.config import ConfigError


def test_sentinel_addresses_are_host_port_pairs() -> None:
    settings = RedisSettings(sentinels=" 10.0.0.1:26379, [::1]:26380 ,sentinel-3:26381")
    assert settings.sentinel_addresses() == [("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26381)]
    assert RedisSettings().sentinel_addresses() == []


@pytest.mark.parametrize("sentinels", ["10.0.0.1", "10.0.0.1:port", ":26379"])
def test_a_malformed_sentinel_list_is_refused_by_name(sentinels: str) -> None:
    with pytest.raises(ConfigError, match="redis.sentinels"):
        load(env={"GATEWAY_REDIS_SENTINELS": sentinels})


def test_a_replica_url_of_another_scheme_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="database.replica_url"):
        load(env={"GATEWAY_DATABASE_REPLICA_URL": "mysql://replica/gateway"})
    assert load(env={"GATEWAY_DATABASE_REPLICA_URL": "postgresql://replica:5433/gateway"}).database.replica_url


async def test_with_sentinels_the_client_asks_them_for_the_master_of_the_service() -> None:
    client = accel.client(RedisSettings(url="redis://:pw@ignored/3", sentinels="127.0.0.1:1", sentinel_service="pay"))
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "pay"
        assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    finally:
        await client.aclose()

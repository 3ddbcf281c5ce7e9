"""Settings: the file, then the environment, then keyword overrides; unknown names and bad key rings refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.settings import DEFAULT_CONFIG, AuthSettings, Settings, load
from wallet_common.config import ConfigError

# Enough for Settings.__post_init__ when a test's own file has no [auth] section.
AUTH_OK = {"jwt_keys": "k1:secret-one-0123456789abcdef-0123", "jwt_active_kid": "k1", "api_key_pepper": "p" * 16}


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_come_from_the_packaged_defaults_toml() -> None:
    # Inside the package (package data), so that an installed wheel starts outside the source tree.
    assert DEFAULT_CONFIG == Path(__file__).resolve().parents[2] / "gateway" / "defaults.toml"
    expected = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    settings = msgspec.to_builtins(load(env={}))
    for section, table in expected.items():
        for key, value in table.items():
            assert settings[section][key] == value, f"{section}.{key}"


def test_a_file_overrides_the_built_in_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nport = 9123\nhost = "0.0.0.0"\n[database]\nacquire_timeout_s = 1.5\n')
    settings = load(path, env={}, auth=AUTH_OK)
    assert (settings.server.port, settings.server.host) == (9123, "0.0.0.0")
    assert settings.database.acquire_timeout_s == 1.5
    assert settings.database.pool_max == 16  # not in the file: the dataclass default


def test_gateway_config_names_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = 9124\n")
    assert load(env={"GATEWAY_CONFIG": str(path)}, auth=AUTH_OK).server.port == 9124


def test_env_overrides_the_file() -> None:
    settings = load(env={"GATEWAY_DATABASE_URL": "postgresql://app@db.internal:5432/gw"})
    assert settings.database.url == "postgresql://app@db.internal:5432/gw"
    assert settings.redis.url == "redis://127.0.0.1:6379/0"


def test_keyword_overrides_beat_env() -> None:
    settings = load(
        env={"GATEWAY_DATABASE_URL": "postgresql://from-env/gw", "GATEWAY_SERVER_PORT": "9001"},
        database={"url": "postgresql://from-keyword/gw"},
    )
    assert settings.database.url == "postgresql://from-keyword/gw"
    assert settings.server.port == 9001  # env still applies where no keyword is given


def test_environment_is_not_read_when_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SERVER_PORT", "9002")
    assert load(env={}).server.port == 8080
    assert load().server.port == 9002


@pytest.mark.parametrize(
    ("env_name", "raw", "section", "key", "expected"),
    [
        ("GATEWAY_SERVER_PORT", "9090", "server", "port", 9090),
        ("GATEWAY_DATABASE_POOL_MAX", "32", "database", "pool_max", 32),
        ("GATEWAY_DATABASE_ACQUIRE_TIMEOUT_S", "2.5", "database", "acquire_timeout_s", 2.5),
        ("GATEWAY_REDIS_TIMEOUT_S", "1", "redis", "timeout_s", 1.0),
        ("GATEWAY_WORKERS_INTERVAL_S", "0.05", "workers", "interval_s", 0.05),
        ("GATEWAY_AUTH_JWT_ISSUER", "gw-prod", "auth", "jwt_issuer", "gw-prod"),
    ],
)
def test_env_values_take_the_type_of_the_default(
    env_name: str, raw: str, section: str, key: str, expected: Any
) -> None:
    value = getattr(getattr(load(env={env_name: raw}), section), key)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[database]\npool_max = 2.5\n", "database.pool_max: expected `int`, got `float`", id="float_for_int"),
        pytest.param("[server]\nhost = 1\n", "server.host: expected `str`, got `int`", id="int_for_str"),
        pytest.param("[database]\npool_maximum = 3\n", "database.pool_maximum: unknown setting", id="unknown_key"),
        pytest.param("[webhook]\n", "webhook: unknown setting", id="unknown_section"),
        pytest.param("[tiers.tier4]\nCNY = { balance_max_minor = 1, payment_max_minor = 1 }\n",
                     "tiers.tier4[...]: object missing required field `daily_max_minor`", id="cap_missing"),
        pytest.param("[tiers.tier4]\ncny = { balance_max_minor = 1, payment_max_minor = 1, daily_max_minor = 1 }\n",
                     "tiers.tier4 key: expected `str` matching regex", id="currency_lower_case"),
        pytest.param("[wallet]\npin_threshold_minor = { CNY = -1 }\n", "wallet.pin_threshold_minor[...]: expected `int` >= 0",
                     id="negative_threshold"),
        pytest.param("[wallet]\npin_threshold_minor = \"CNY:100\"\n",
                     "wallet.pin_threshold_minor: expected `object`, got `str`", id="packed_threshold"),
    ],
)
def test_file_errors_are_one_line_naming_the_setting_and_the_type(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(write_toml(tmp_path, text), env={}, auth=AUTH_OK)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value), refused.value


def test_tiers_and_pin_thresholds_are_tables(tmp_path: Path) -> None:
    text = ("[wallet]\ntier_default = 2\npin_threshold_minor = { JPY = 3000 }\n"
            "[tiers.tier2]\nJPY = { balance_max_minor = 900, payment_max_minor = 500, daily_max_minor = 700 }\n")
    settings = load(write_toml(tmp_path, text), env={}, auth=AUTH_OK)
    assert settings.wallet.pin_threshold_minor == {"JPY": 3000}
    tier = settings.tiers.tiers()[2]
    assert (tier.caps["JPY"].balance_max_minor, tier.caps["JPY"].payment_max_minor, tier.caps["JPY"].daily_max_minor) \
        == (900, 500, 700)
    assert settings.tiers.tiers()[4].caps == {}  # a tier the file leaves out holds nothing


def test_tables_from_the_environment_are_json() -> None:
    caps = {"CNY": {"balance_max_minor": 10, "payment_max_minor": 5, "daily_max_minor": 8}}
    settings = load(env={"GATEWAY_TIERS_TIER4": json.dumps(caps), "GATEWAY_WALLET_PIN_THRESHOLD_MINOR": '{"CNY": 7}'})
    assert settings.tiers.tiers()[4].caps["CNY"].daily_max_minor == 8
    assert set(settings.tiers.tiers()[4].caps) == {"CNY"} and settings.wallet.pin_threshold_minor == {"CNY": 7}
    with pytest.raises(ConfigError, match=r"^tiers\.tier4: GATEWAY_TIERS_TIER4 is not valid JSON"):
        load(env={"GATEWAY_TIERS_TIER4": "CNY:10:5:8"})
    with pytest.raises(ConfigError, match=r"^tiers\.tier4\[\.\.\.\]\.balance_max_minor: expected `int`, got `str`"):
        load(env={"GATEWAY_TIERS_TIER4": '{"CNY": {"balance_max_minor": "x"}}'})


def test_env_errors_name_the_setting_and_the_type() -> None:
    with pytest.raises(ConfigError, match=r"^server\.port: expected `int`, got `str`$"):
        load(env={"GATEWAY_SERVER_PORT": "eighty"})
    with pytest.raises(ConfigError, match=r"^webhooks\.listen: expected `bool`, got `str`$"):
        load(env={"GATEWAY_WEBHOOKS_LISTEN": "maybe"})
    assert load(env={"GATEWAY_WEBHOOKS_LISTEN": "false"}).webhooks.listen is False


def test_file_ints_become_floats_where_the_default_is_a_float(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[redis]\ntimeout_s = 1\n")
    timeout_s = load(path, env={}, auth=AUTH_OK).redis.timeout_s
    assert (timeout_s, type(timeout_s)) == (1.0, float)


def test_keyword_values_are_converted_too() -> None:
    settings = load(env={}, server={"port": "9003"}, redis={"timeout_s": 2})
    assert (settings.server.port, type(settings.redis.timeout_s)) == (9003, float)


@pytest.mark.parametrize(
    ("env_name", "raw"),
    [("GATEWAY_SERVER_PORT", "eighty"), ("GATEWAY_SERVER_PORT", "80.5"), ("GATEWAY_REDIS_TIMEOUT_S", "fast")],
)
def test_unconvertible_env_values_refused(env_name: str, raw: str) -> None:
    with pytest.raises(ValueError):
        load(env={env_name: raw})


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[database]\npool_max = 2.5\n", id="fractional_float_for_int"),
        pytest.param("[server]\nport = true\n", id="bool_for_int"),
    ],
)
def test_file_values_of_the_wrong_type_refused(tmp_path: Path, text: str) -> None:
    # The environment refuses "80.5" for an int; the file must not silently truncate 2.5 to 2 or read true as 1.
    with pytest.raises(ValueError):
        load(write_toml(tmp_path, text), env={}, auth=AUTH_OK)


def test_unknown_key_in_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pool_maximum"):
        load(write_toml(tmp_path, "[database]\npool_maximum = 3\n"), env={}, auth=AUTH_OK)


def test_unknown_section_in_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="webhook"):
        load(write_toml(tmp_path, "[webhook]\nurl = 'x'\n"), env={}, auth=AUTH_OK)


def test_unknown_keyword_override_refused() -> None:
    with pytest.raises(ValueError, match="prot"):
        load(env={}, server={"prot": 1})


def test_active_kid_must_be_in_the_key_ring() -> None:
    with pytest.raises(ValueError, match="jwt_active_kid"):
        load(env={}, auth={"jwt_active_kid": "2027-01"})
    with pytest.raises(ValueError, match="jwt_active_kid"):
        load(env={"GATEWAY_AUTH_JWT_KEYS": "2027-01:another-secret-0123456789abcdef"})


def test_rotated_ring_with_the_new_active_kid_loads() -> None:
    settings = load(
        env={
            "GATEWAY_AUTH_JWT_KEYS": "old:old-secret-0123456789abcdef-0123, new:new-secret-0123456789abcdef-0123",
            "GATEWAY_AUTH_JWT_ACTIVE_KID": "new",
        }
    )
    assert settings.auth.jwt_key_ring() == {
        "old": "old-secret-0123456789abcdef-0123",
        "new": "new-secret-0123456789abcdef-0123",
    }
    assert settings.auth.jwt_active_kid == "new"


def test_key_ring_parsing() -> None:
    auth = AuthSettings(jwt_keys=" a:s1 ,b:s:2,,:orphan,nokey,c:")
    assert auth.jwt_key_ring() == {"a": "s1", "b": "s:2"}
    assert AuthSettings(jwt_keys="").jwt_key_ring() == {}


def test_short_pepper_refused() -> None:
    with pytest.raises(ValueError, match="pepper"):
        load(env={}, auth={"api_key_pepper": "p" * 15})
    assert load(env={}, auth={"api_key_pepper": "p" * 16}).auth.api_key_pepper == "p" * 16


def test_settings_are_frozen() -> None:
    settings = load(env={})
    assert isinstance(settings, Settings)
    with pytest.raises(AttributeError, match="immutable"):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        settings.server = settings.server  # type: ignore[misc]


# Secrets of a live gateway as an operator would set them (made up for the test, fit for live mode).
LIVE_OK = {
    "GATEWAY_AUTH_KEY_MODE": "live",
    "GATEWAY_AUTH_JWT_KEYS": "live-2027-01:Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF0gAe",
    "GATEWAY_AUTH_JWT_ACTIVE_KID": "live-2027-01",
    "GATEWAY_AUTH_API_KEY_PEPPER": "N7c2Wq9Lx4Pz1Rm8Ks3Vb6Hy0Jt5Gd2F",
    "GATEWAY_ISSUER_IMK_HEX": "9F3A61C04E5B27D8A1C3E5F70B2D4869",
    "GATEWAY_SETTLEMENT_DEBTOR_NAME": "Example Wallet Payments Co",
    "GATEWAY_SETTLEMENT_DEBTOR_ACCOUNT": "CN1201020000001234567890",
    "GATEWAY_SETTLEMENT_DEBTOR_BIC": "ICBKCNBJ",
}
SHIPPED = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
DEV_JWT_KEYS = SHIPPED["auth"]["jwt_keys"]
DEV_PEPPER = SHIPPED["auth"]["api_key_pepper"]
DEV_IMK = SHIPPED["issuer"]["imk_hex"]


def test_test_mode_keeps_the_development_defaults() -> None:
    settings = load(env={})
    assert settings.auth.key_mode == "test"
    assert (settings.auth.api_key_pepper, settings.issuer.imk_hex) == (DEV_PEPPER, DEV_IMK)


def test_live_mode_with_its_own_secrets_loads() -> None:
    settings = load(env=LIVE_OK)
    assert settings.auth.key_mode == "live"
    assert settings.auth.jwt_key_ring() == {"live-2027-01": "Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF0gAe"}


def test_live_mode_without_an_issuer_key_loads_with_taps_disabled() -> None:
    assert load(env={**LIVE_OK, "GATEWAY_ISSUER_IMK_HEX": ""}).issuer.imk_hex == ""


@pytest.mark.parametrize("mode", ["banana", "LIVE", "production", ""])
def test_unknown_key_mode_refused(mode: str) -> None:
    with pytest.raises(ValueError, match=r"^auth\.key_mode is 'test' or 'live'"):
        load(env={"GATEWAY_AUTH_KEY_MODE": mode})


@pytest.mark.parametrize(
    ("env", "setting", "secret"),
    [
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": DEV_JWT_KEYS, "GATEWAY_AUTH_JWT_ACTIVE_KID": "dev-2026-11"},
                     "auth.jwt_keys", DEV_JWT_KEYS.partition(":")[2], id="jwt_shipped"),
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": "live-2027-01:Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF0gAe,"
                                               + DEV_JWT_KEYS.replace("dev-2026-11", "old")},
                     "auth.jwt_keys", DEV_JWT_KEYS.partition(":")[2], id="jwt_shipped_kept_for_verifying"),
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": "live-2027-01:prod-dev-only-signing-key-0123456789"},
                     "auth.jwt_keys", "prod-dev-only-signing-key-0123456789", id="jwt_dev_only"),
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": "live-2027-01:Please-Change-Me-Before-Go-Live-2027"},
                     "auth.jwt_keys", "Please-Change-Me-Before-Go-Live-2027", id="jwt_change_me"),
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": "live-2027-01:Vq3xT9pLm2Rr8sKw1ZyB6nHc4Jd"},
                     "auth.jwt_keys", "Vq3xT9pLm2Rr8sKw1ZyB6nHc4Jd", id="jwt_shorter_than_32_bytes"),
        pytest.param({"GATEWAY_AUTH_JWT_KEYS": "live-2027-01:" + "x" * 40}, "auth.jwt_keys", "x" * 40,
                     id="jwt_one_repeated_character"),
        pytest.param({"GATEWAY_AUTH_API_KEY_PEPPER": DEV_PEPPER}, "auth.api_key_pepper", DEV_PEPPER,
                     id="pepper_shipped"),
        pytest.param({"GATEWAY_AUTH_API_KEY_PEPPER": "our-pepper-CHANGE-ME-later"}, "auth.api_key_pepper",
                     "our-pepper-CHANGE-ME-later", id="pepper_change_me"),
        pytest.param({"GATEWAY_AUTH_API_KEY_PEPPER": "0" * 32}, "auth.api_key_pepper", "0" * 32,
                     id="pepper_one_repeated_character"),
        pytest.param({"GATEWAY_ISSUER_IMK_HEX": DEV_IMK}, "issuer.imk_hex", DEV_IMK, id="imk_shipped"),
        pytest.param({"GATEWAY_ISSUER_IMK_HEX": DEV_IMK.lower()}, "issuer.imk_hex", DEV_IMK.lower(),
                     id="imk_shipped_lower_case"),
        pytest.param({"GATEWAY_ISSUER_IMK_HEX": "0" * 32}, "issuer.imk_hex", "0" * 32, id="imk_all_zero"),
        pytest.param({"GATEWAY_ISSUER_IMK_HEX": "7" * 32}, "issuer.imk_hex", "7" * 32, id="imk_all_same_digit"),
        pytest.param({"GATEWAY_ISSUER_IMK_HEX": "0123456789ABCDEF0123456789ABCDEF"}, "issuer.imk_hex",
                     "0123456789ABCDEF0123456789ABCDEF", id="imk_textbook_test_key"),
    ],
)
def test_live_mode_refuses_development_and_weak_secrets(env: dict[str, str], setting: str, secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        load(env={**LIVE_OK, **env})
    message = str(refused.value)
    assert message.startswith(f"{setting}: ") and "live mode" in message
    assert f"set GATEWAY_{setting.replace('.', '_').upper()}" in message
    assert secret not in message and secret.lower() not in message.lower()


def test_live_mode_refuses_the_shipped_secrets_even_under_another_settings_file(tmp_path: Path) -> None:
    other = write_toml(tmp_path, f'[issuer]\nimk_hex = "{LIVE_OK["GATEWAY_ISSUER_IMK_HEX"]}"\n')
    with pytest.raises(ValueError, match=r"^issuer\.imk_hex: the development value "):
        load(other, env={**LIVE_OK, "GATEWAY_ISSUER_IMK_HEX": DEV_IMK})


@pytest.mark.parametrize("name", ["debtor_name", "debtor_account", "debtor_bic"])
def test_live_mode_refuses_the_placeholder_payout_debtor(name: str) -> None:
    """A live pain.001 file must name the gateway's real account, not the shipped placeholder."""
    env = {k: v for k, v in LIVE_OK.items() if k != f"GATEWAY_SETTLEMENT_{name.upper()}"}
    with pytest.raises(ValueError, match=rf"^settlement\.{name}: the placeholder value cannot be used in live mode"):
        load(env=env)


def test_live_mode_with_the_shipped_file_names_every_secret_on_one_line() -> None:
    with pytest.raises(ValueError) as refused:
        load(env={"GATEWAY_AUTH_KEY_MODE": "live"})
    message = str(refused.value)
    assert "\n" not in message
    for setting in ("auth.jwt_keys", "auth.api_key_pepper", "issuer.imk_hex"):
        assert setting in message
    for secret in (DEV_JWT_KEYS.partition(":")[2], DEV_PEPPER, DEV_IMK):
        assert secret not in message


def _gateway_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(Path(sys.executable).parent / "gateway"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def test_serve_in_live_mode_with_development_secrets_exits_2_with_one_line() -> None:
    done = _gateway_cli("serve", GATEWAY_AUTH_KEY_MODE="live")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: auth.jwt_keys: "), done.stderr
    assert "set GATEWAY_AUTH_API_KEY_PEPPER" in lines[0] and "Traceback" not in done.stderr
    assert DEV_PEPPER not in done.stderr and DEV_IMK not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({"GATEWAY_AUTH_KEY_MODE": "banana"}, "auth.key_mode", id="unknown_mode"),
        pytest.param({"GATEWAY_SERVER_PORT": "eighty"}, "server.port", id="unconvertible"),
        pytest.param({"GATEWAY_TIERS_TIER1": "CNY:1:2:3"}, "tiers.tier1", id="old_packed_caps"),
        pytest.param({"GATEWAY_CONFIG": "/nonexistent/gateway.toml"}, "settings file not found", id="no_file"),
    ],
)
def test_every_settings_error_at_start_up_is_one_line_and_exit_2(env: dict[str, str], named: str) -> None:
    done = _gateway_cli("migrate", **env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {named}") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("auth", [{"api_key_cache_ttl_s": -1.0}, {"api_key_cache_entries_max": 0}])
def test_api_key_cache_bounds_refused(auth: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="api_key_cache"):
        load(env={}, auth=auth)


def test_api_key_cache_is_on_by_default_and_zero_turns_it_off() -> None:
    assert load(env={}).auth.api_key_cache_ttl_s == 60.0
    assert load(env={"GATEWAY_AUTH_API_KEY_CACHE_TTL_S": "0"}).auth.api_key_cache_ttl_s == 0.0


def test_a_payment_expiry_default_beyond_its_max_is_refused() -> None:
    with pytest.raises(ValueError, match="expiry_default_s"):
        load(payments={"expiry_default_s": 3_600, "expiry_max_s": 600})
    with pytest.raises(ValueError, match="expiry_default_s"):
        load(payments={"expiry_default_s": 30})


def test_password_hash_profiles_are_the_hashing_module_s_and_the_cheapest_is_refused_live() -> None:
    from gateway import settings as settings_mod
    from gateway.auth import passwords

    assert settings_mod._PASSWORD_PROFILES == tuple(passwords.PROFILES)
    with pytest.raises(ValueError, match="password_hash_profile is one of"):
        settings_mod.load(env={}, auth={"password_hash_profile": "md5"})
    with pytest.raises(ValueError, match="refused with live keys"):
        settings_mod.load(env={}, auth={"password_hash_profile": "test_only_cheapest", "key_mode": "live"})

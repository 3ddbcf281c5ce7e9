"""``gateway config``: the settings in effect (file, then environment) with every secret redacted; ``--config FILE``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec

from gateway.settings import load
from wallet_common.config import REDACTED

# Made up for the test; each must be absent from the output.
SECRETS = {
    "GATEWAY_AUTH_JWT_KEYS": "k9:Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF0gAe",
    "GATEWAY_AUTH_JWT_ACTIVE_KID": "k9",
    "GATEWAY_AUTH_API_KEY_PEPPER": "N7c2Wq9Lx4Pz1Rm8Ks3Vb6Hy0Jt5Gd2F",
    "GATEWAY_ISSUER_IMK_HEX": "9F3A61C04E5B27D8A1C3E5F70B2D4869",
    "GATEWAY_DATABASE_URL": "postgresql://gw:db-Password-4471@db.internal:5432/gateway",
    "GATEWAY_REDIS_URL": "redis://:redis-Password-8812@cache.internal:6379/0",
}
LEAKS = ("Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF0gAe", "N7c2Wq9Lx4Pz1Rm8Ks3Vb6Hy0Jt5Gd2F", "9F3A61C04E5B27D8A1C3E5F70B2D4869",
         "db-Password-4471", "redis-Password-8812")


def _gateway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(Path(sys.executable).parent / "gateway"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def test_config_prints_the_effective_settings_as_toml_with_secrets_redacted() -> None:
    done = _gateway("config", GATEWAY_SERVER_PORT="9321", **SECRETS)
    assert done.returncode == 0, done.stderr
    for secret in LEAKS:
        assert secret not in done.stdout
    shown = tomllib.loads(done.stdout)
    expected = msgspec.to_builtins(load(env={"GATEWAY_SERVER_PORT": "9321", **SECRETS}))
    assert shown["server"]["port"] == 9321
    assert (shown["auth"]["jwt_keys"], shown["auth"]["api_key_pepper"], shown["issuer"]["imk_hex"]) == (REDACTED,) * 3
    assert shown["database"]["url"] == f"postgresql://gw:{REDACTED}@db.internal:5432/gateway"
    assert shown["redis"]["url"] == f"redis://:{REDACTED}@cache.internal:6379/0"
    # Everything else as loaded, tier tables included.
    for section in ("auth", "issuer", "database", "redis"):
        for key in ("jwt_keys", "api_key_pepper", "imk_hex", "url"):
            expected[section].pop(key, None)
            shown[section].pop(key, None)
    assert shown == expected


def test_config_json_is_the_same_data() -> None:
    as_toml = _gateway("config", **SECRETS)
    as_json = _gateway("config", "--format", "json", **SECRETS)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == tomllib.loads(as_toml.stdout)
    assert not any(secret in as_json.stdout for secret in LEAKS)


def test_global_config_flag_chooses_the_file_over_gateway_config(tmp_path: Path) -> None:
    auth = '[auth]\njwt_keys = "a:secret-one-0123456789abcdef-0123"\njwt_active_kid = "a"\napi_key_pepper = "pppppppppppppppp"\n'
    chosen, other = tmp_path / "chosen.toml", tmp_path / "other.toml"
    chosen.write_text(f"[server]\nport = 9411\n{auth}", encoding="utf-8")
    other.write_text(f"[server]\nport = 9412\n{auth}", encoding="utf-8")
    done = _gateway("--config", str(chosen), "config", GATEWAY_CONFIG=str(other))
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(done.stdout)["server"]["port"] == 9411
    assert tomllib.loads(_gateway("config", GATEWAY_CONFIG=str(other)).stdout)["server"]["port"] == 9412


def test_config_flag_naming_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _gateway("--config", str(tmp_path / "absent.toml"), "config")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: settings file not found: {tmp_path / 'absent.toml'}\n"


def test_a_password_given_as_a_url_query_parameter_is_redacted_too() -> None:
    """asyncpg and redis-py both take ``?password=`` in place of the URL's userinfo."""
    done = _gateway("config", **{**SECRETS,
                                 "GATEWAY_DATABASE_URL": "postgresql://gw@db.internal/gateway?sslmode=require&password=q-Pass-5519",
                                 "GATEWAY_REDIS_URL": "redis://cache.internal:6379/0?password=q-Pass-7720"})
    assert done.returncode == 0, done.stderr
    assert "q-Pass-5519" not in done.stdout and "q-Pass-7720" not in done.stdout
    shown = tomllib.loads(done.stdout)
    assert shown["database"]["url"] == f"postgresql://gw@db.internal/gateway?sslmode=require&password={REDACTED}"
    assert shown["redis"]["url"] == f"redis://cache.internal:6379/0?password={REDACTED}"

"""Settings: the example file loads; typos and impossible values are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pos_agent import settings as settings_mod
from pos_agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "pos-agent.example.toml"


def test_example_loads_with_paths_next_to_it() -> None:
    s = settings_mod.load(EXAMPLE)
    assert s.sale.currency == "CNY" and s.sale.pay_code_prefix == "19"
    assert s.devices.register is not None and s.devices.register.bytesize == 7
    assert s.journal_path == EXAMPLE.parent / "journal.sqlite3"
    assert s.credentials_path == EXAMPLE.parent / "credentials.json"


def test_empty_file_is_all_defaults_without_devices(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    s = settings_mod.load(tmp_path / "a.toml")
    assert s.devices.register is None and s.devices.nfc is None and s.offline.enabled


@pytest.mark.parametrize(("text", "where"), [
    ("[sale]\ncurency = 'CNY'\n", "curency"),
    ("[sales]\n", "sales"),
    ("[gateway]\nretry_count_max = 'three'\n", "gateway.retry_count_max"),
    ("[gateway]\nurl = 'ftp://x'\n", "gateway.url"),
    ("[sale]\ncurrency = 'cny'\n", "sale.currency"),
    ("[offline]\ntoken_count_max = -1\n", "offline.token_count_max"),
    ("[devices.register]\nurl = '/dev/x'\nparity = 'X'\n", "devices.register.parity"),
    ("[devices.register]\nurl = '/dev/x'\nresult_s = 50.0\n", "sale_timeout_s"),
    ("[devices.nfc]\n", "devices.nfc.path"),
    ("[agent]\nterminal_label = 'T 1'\n", "terminal_label"),
])
def test_bad_values_are_refused_by_name(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        settings_mod.load(tmp_path / "a.toml")

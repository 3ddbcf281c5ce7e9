"""The client installs and imports without the server: only aiohttp and the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("gateway", "asyncpg", "redis", "msgspec", "pos_agent", "hardware", "jwt", "argon2", "prometheus_client")

PROBE = f"""
import sys

sys.path.insert(0, {str(ROOT)!r})

BLOCKED = {BLOCKED!r}


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
        return None


sys.meta_path.insert(0, Block())
import wallet_client
from wallet_client import WalletClient, verify_webhook, WalletError
assert wallet_client.__all__
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
print("ok", len(wallet_client.__all__))
"""


def test_imports_with_the_server_dependencies_blocked() -> None:
    done = subprocess.run([sys.executable, "-I", "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


def test_the_blocker_really_blocks() -> None:
    probe = PROBE.replace("import wallet_client\n", "import wallet_client\nimport gateway\n", 1)
    done = subprocess.run([sys.executable, "-I", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "blocked for this test: gateway" in done.stderr

"""The wheel, installed the way a server or a counter box installs it: outside the source tree, from the lock.

A fresh virtual environment gets ``requirements/gateway.lock`` (or ``agent.lock``) with its hashes, then
the wheel built from this tree without its dependencies; every command runs from an empty folder, with
no ``GATEWAY_*`` variable and no ``PYTHONPATH``, so nothing can come from the source tree. uv installs
(it is in the test lock): from its cache a whole environment takes seconds, which keeps this in the
normal suite.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from pathlib import Path

import aiohttp
import pytest

from gateway.store import db

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "pos_agent", "hardware", "wallet_client", "wallet_common")
STEP_TIMEOUT_S = 120.0  # one install or build; a cold cache downloads every wheel once
READY_TIMEOUT_S = 30.0


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _clean_env(**extra: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTHON", "VIRTUAL_ENV"))}
    return {**kept, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy, so that the build leaves no build/ or *.egg-info in the tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, source,
         cwd=out)
    (built,) = out.glob("wallet_gateway-*.whl")
    with zipfile.ZipFile(built) as contents:
        names = set(contents.namelist())
    assert {"gateway/defaults.toml", "wallet_common/py.typed", "gateway/store/migrations/0001_core.sql"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), sorted(names)
    return built


def _install(tmp: Path, wheel: Path, extra: str) -> Path:
    venv = tmp / f"venv-{extra}"
    uv = (sys.executable, "-m", "uv")
    _run(*uv, "venv", "--quiet", "--python", sys.executable, venv, cwd=tmp, env=_clean_env())
    python = venv / "bin" / "python"
    _run(*uv, "pip", "install", "--quiet", "--python", python, "--require-hashes", "-r",
         REPO / "requirements" / f"{extra}.lock", cwd=tmp, env=_clean_env())
    _run(*uv, "pip", "install", "--quiet", "--python", python, "--no-deps", wheel, cwd=tmp, env=_clean_env())
    return venv


def _importable(venv: Path, cwd: Path, *modules: str) -> dict[str, bool]:
    code = ("import importlib.util, sys\n"
            "for name in sys.argv[1:]: print(name, importlib.util.find_spec(name) is not None)")
    done = _run(venv / "bin" / "python", "-c", code, *modules, cwd=cwd, env=_clean_env())
    return {name: found == "True" for name, found in (line.split() for line in done.stdout.splitlines())}


def _import_every_module(venv: Path, cwd: Path, *packages: str) -> str:
    """Imports every module of ``packages`` in the venv; returns where the first package came from."""
    code = ("import importlib, pkgutil, sys\n"
            "for top in sys.argv[1:]:\n"
            "    package = importlib.import_module(top)\n"
            "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
            "        if not info.name.endswith('.__main__'):  # runs the command line\n"
            "            importlib.import_module(info.name)\n"
            "print(importlib.import_module(sys.argv[1]).__file__)")
    return _run(venv / "bin" / "python", "-c", code, *packages, cwd=cwd, env=_clean_env()).stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory: nothing importable or readable next to it."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    return cwd


async def _ready(url: str, process: subprocess.Popen[str]) -> tuple[int, dict[str, object]]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            assert process.poll() is None, process.communicate(timeout=5)
            try:
                async with http.get(url) as answer:
                    return answer.status, await answer.json()
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, f"{url} did not answer within {READY_TIMEOUT_S} s"
                await asyncio.sleep(0.2)


async def test_gateway_wheel_with_its_extra_starts_outside_the_tree(wheel: Path, tmp_path: Path, elsewhere: Path) -> None:
    venv = await asyncio.to_thread(_install, tmp_path, wheel, "gateway")
    found = _importable(venv, elsewhere, "asyncpg", "argon2", "uvloop", "nfc", "serial", "escpos")
    assert found == {"asyncpg": True, "argon2": True, "uvloop": True, "nfc": False, "serial": False, "escpos": False}
    where = await asyncio.to_thread(_import_every_module, venv, elsewhere, "gateway", "wallet_client", "wallet_common")
    assert where.startswith(str(venv)), where  # the installed copy, not the source tree

    gateway = venv / "bin" / "gateway"
    assert "config" in _run(gateway, "--help", cwd=elsewhere, env=_clean_env()).stdout
    shown = tomllib.loads(_run(gateway, "config", cwd=elsewhere, env=_clean_env()).stdout)
    assert shown["auth"]["api_key_pepper"] == "<redacted>" and shown["tiers"]["tier4"]["CNY"]["daily_max_minor"] > 0

    port = _free_port()
    url = f"postgresql://postgres@127.0.0.1:5432/gateway_wheel_{uuid.uuid4().hex[:8]}"
    env = _clean_env(GATEWAY_DATABASE_URL=url, GATEWAY_SERVER_PORT=str(port), GATEWAY_REDIS_URL="redis://127.0.0.1:6379/15")
    try:
        await asyncio.to_thread(_run, gateway, "migrate", cwd=elsewhere, env=env)
        with subprocess.Popen([str(gateway), "serve"], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as served:
            try:
                status, body = await _ready(f"http://127.0.0.1:{port}/readyz", served)
                assert status == 200 and body["database"] == "ok", body
            finally:
                served.send_signal(signal.SIGTERM)
                served.communicate(timeout=30)
    finally:
        await db.drop_database(url)


async def test_agent_wheel_with_its_extra_has_no_server_dependencies(wheel: Path, tmp_path: Path,
                                                                      elsewhere: Path) -> None:
    venv = await asyncio.to_thread(_install, tmp_path, wheel, "agent")
    found = _importable(venv, elsewhere, "asyncpg", "argon2", "uvloop", "redis", "nfc", "serial", "escpos")
    assert found == {"asyncpg": False, "argon2": False, "uvloop": False, "redis": False,
                     "nfc": True, "serial": True, "escpos": True}
    where = await asyncio.to_thread(_import_every_module, venv, elsewhere, "pos_agent", "hardware", "wallet_common")
    assert where.startswith(str(venv)), where
    assert "enrol" in _run(venv / "bin" / "pos-agent", "--help", cwd=elsewhere, env=_clean_env()).stdout

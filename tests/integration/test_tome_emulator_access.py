"""Who can reach the TOME emulator and its vault: loopback only by default, a bearer token on every path
when asked for one, and an owner-only vault file (the emulator as a real process)."""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.network import accepts_connections, require_non_loopback_ipv4
from tests.fixtures.tome import FAST_TOME_SETTINGS, EmulatorSecurity, TomeEmulator, free_port, running_emulator
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient
from tokenpool.tome.emulator.vault import Vault

READY_TIMEOUT_S = 20.0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_token(path: Path, token: str) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return path


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    value = secrets.token_urlsafe(32)
    return value, write_token(tmp_path_factory.mktemp("tome-token") / "token", value)


@pytest.fixture(scope="module")
def guarded_tome(tmp_path_factory: pytest.TempPathFactory, token: tuple[str, Path]) -> Iterator[TomeEmulator]:
    """Plain HTTP on loopback, as `tokenpool run` starts it: a bearer token required."""
    security = EmulatorSecurity(bearer_token_file=token[1])
    with running_emulator(tmp_path_factory.mktemp("tome-guarded"), security) as tome:
        yield tome


ENDPOINTS = [
    ("POST", "/v1/namespaces/NS2/detokenize", {"tokens": ["ext_0000"]}),
    ("POST", "/v1/namespaces/NS2/tokenize", {"values": ["4000000000000002"]}),
    ("POST", "/v1/namespaces/NS1/tokens:issue", {"count": 1}),
    ("GET", "/_admin/health", None),
    ("GET", "/_admin/stats", None),
    ("GET", "/_admin/faults", None),
    ("PUT", "/_admin/faults", {}),
    ("GET", "/_admin/issued?ns=NS1", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_with_a_token_every_endpoint_answers_401_without_it_and_200_with_it(
    guarded_tome: TomeEmulator, token: tuple[str, Path], method: str, path: str, body: object
) -> None:
    with httpx.Client(base_url=guarded_tome.url, timeout=5) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token[0]}"},
                        {"Authorization": f"Bearer {token[0]}x"}):
            refused = http.request(method, path, json=body, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        allowed = http.request(method, path, json=body, headers={"Authorization": f"Bearer {token[0]}"})
        assert allowed.status_code == 200, allowed.text


def test_a_refused_call_is_not_carried_out(guarded_tome: TomeEmulator) -> None:
    ns = f"ACC{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=guarded_tome.url, timeout=5) as http:
        assert http.post(f"/v1/namespaces/{ns}/tokens:issue", json={"count": 3}).status_code == 401
    assert guarded_tome.issued(ns) == []
    assert guarded_tome.requests(ns, "issue") == 0


async def test_the_client_sends_the_token_to_a_loopback_emulator_over_plain_http(
    guarded_tome: TomeEmulator, token: tuple[str, Path]
) -> None:
    ns1, ns2 = f"ACC1{uuid.uuid4().hex[:8]}", f"ACC2{uuid.uuid4().hex[:8]}"
    settings = Settings(tome_url=guarded_tome.url, tome_bearer_token_file=token[1], **FAST_TOME_SETTINGS)
    async with TomeClient(settings) as client:
        tokens = await client.issue(ns1, 2)
        refs = await client.tokenize(ns2, tokens)
        assert await client.detokenize(ns2, refs) == tokens


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not accepts_connections("127.0.0.1", port, timeout_s=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"emulator not listening (exit {process.poll()}):\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


@pytest.mark.parametrize(
    "entry_point",
    [["-m", "tokenpool", "tome-emulator"], ["-m", "tokenpool.tome.emulator"]],
    ids=["tokenpool tome-emulator", "python -m tokenpool.tome.emulator"],
)
def test_both_entry_points_listen_on_loopback_only_by_default_and_take_the_token_from_the_environment(
    tmp_path: Path, token: tuple[str, Path], entry_point: list[str]
) -> None:
    elsewhere = require_non_loopback_ipv4()
    port = free_port()
    env = {**os.environ, "TOKENPOOL_TOME_EMULATOR_BEARER_TOKEN_FILE": str(token[1])}
    log = tmp_path / "emulator.log"
    process = _start([sys.executable, *entry_point, "--port", str(port), "--db", str(tmp_path / "v" / "vault.db")],
                     env, log)
    try:
        _wait_listening(process, port, log)
        assert not accepts_connections(elsewhere, port), f"reachable on {elsewhere}: not loopback only"
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/_admin/faults", timeout=5).status_code == 401
        authorized = {"Authorization": f"Bearer {token[0]}"}
        assert httpx.get(f"{url}/_admin/faults", headers=authorized, timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert mode(tmp_path / "v") == 0o700
    assert mode(tmp_path / "v" / "vault.db") == 0o600


def test_the_vault_file_its_side_files_and_the_folders_it_makes_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the loosest a caller could have: the modes must not depend on it
    try:
        path = tmp_path / "made" / "here" / "vault.db"
        vault = Vault(path)
        try:
            vault.issue("NS1", 5)  # a write: the -wal and -shm files exist now
            files = [path, path.with_name("vault.db-wal"), path.with_name("vault.db-shm")]
            assert all(file.exists() for file in files)
            assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
        finally:
            vault.close()
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "made") == 0o700
    assert mode(tmp_path / "made" / "here") == 0o700


def test_a_vault_an_older_emulator_left_open_to_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    path.chmod(0o644)
    wal = path.with_name("vault.db-wal")
    wal.touch()
    wal.chmod(0o664)
    Vault(path).close()
    assert mode(path) == 0o600
    if wal.exists():  # a clean close may remove it
        assert mode(wal) == 0o600

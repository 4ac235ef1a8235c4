"""`tokenpool serve --ssl-certfile --ssl-keyfile`: the API as a real process, over HTTPS only."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from tests.fixtures.certs import Pki, make_pki
from tests.fixtures.tome import TomeEmulator
from tokenpool.entrypoints.cli_service import register
from tokenpool.entrypoints.run import free_port, tokenpool_command

READY_TIMEOUT_S = 60.0


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


@pytest.fixture
def https_api(tmp_path: Path, database_url: str, tome: TomeEmulator) -> Iterator[tuple[int, Pki]]:
    """``tokenpool serve`` with a test certificate; yields its port and the PKI that made the certificate."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOKENPOOL_")}
    env |= {"TOKENPOOL_DATABASE_URL": database_url, "TOKENPOOL_TOME_URL": tome.url,
            "TOKENPOOL_HOME": str(tmp_path / "home"), "TOKENPOOL_LOG_JSON": "true"}  # fmt: skip
    command = tokenpool_command("serve", "--port", str(port), "--ssl-certfile", str(pki.server.cert),
                                "--ssl-keyfile", str(pki.server.key))  # fmt: skip
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_healthy(f"https://127.0.0.1:{port}/healthz", trusting(pki.ca), process, log_path)
        yield port, pki
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_healthy(url: str, verify: ssl.SSLContext, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tokenpool serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, verify=verify, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy within {READY_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def test_the_api_answers_over_https_only_to_clients_that_trust_its_ca(
    https_api: tuple[int, Pki], tmp_path: Path
) -> None:
    port, pki = https_api
    with httpx.Client(verify=trusting(pki.ca), timeout=5) as client:
        response = client.get(f"https://127.0.0.1:{port}/healthz")
        assert response.status_code == 200
        assert response.extensions["network_stream"].get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")

    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

    other_ca = make_pki(tmp_path / "other-pki", name="someone-else").ca
    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trusting(other_ca), timeout=5)


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["serve", "--ssl-certfile", str(pki.server.cert)])
    assert result.exit_code == 2
    assert "--ssl-certfile and --ssl-keyfile go together" in result.output

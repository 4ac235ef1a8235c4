"""TOME over HTTPS with client certificates and a bearer token: a client presenting all three works,
any other fails promptly with a TOME error (the emulator as a real process)."""

from __future__ import annotations

import secrets
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.fixtures.certs import Pki, make_pki
from tests.fixtures.tome import FAST_TOME_SETTINGS, EmulatorSecurity, TomeEmulator, running_emulator
from tokenpool.settings import Settings
from tokenpool.tome.client import TomeClient, read_bearer_token
from tokenpool.tome.contract import TomeBadRequest, TomeUnavailable, is_external_ref, is_internal_token

MakeClient = Callable[..., TomeClient]
TIMEOUT_MARGIN_S = 1.0  # handshakes and scheduling on a loaded CI box


def write_token(path: Path, token: str, mode: int = 0o600) -> Path:
    path.touch(mode=0o600)
    path.chmod(mode)
    path.write_text(token + "\n")
    return path


def new_ns() -> str:
    return f"TLS{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tome-pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA the emulator does not trust, with its own client certificate, and a server certificate it
    never serves."""
    return make_pki(tmp_path_factory.mktemp("tome-other-pki"), name="someone-else")


@pytest.fixture(scope="module")
def secure_tome(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TomeEmulator]:
    folder = tmp_path_factory.mktemp("tome-tls")
    token_file = write_token(folder / "tome-token", secrets.token_urlsafe(32))
    security = EmulatorSecurity(pki, require_client_cert=True, bearer_token_file=token_file)
    with running_emulator(folder, security) as emulator:
        yield emulator


@pytest.fixture
async def make_client(secure_tome: TomeEmulator) -> AsyncIterator[MakeClient]:
    """Clients presenting what the emulator asks for, but for the ``tome_*`` overrides given."""
    clients: list[TomeClient] = []

    def make(**overrides: Any) -> TomeClient:
        settings = {**FAST_TOME_SETTINGS, **secure_tome.security.client_settings(), **overrides}
        client = TomeClient(Settings(tome_url=secure_tome.url, **settings))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_a_client_with_the_ca_its_certificate_and_the_token_issues_and_tokenizes(
    secure_tome: TomeEmulator, make_client: MakeClient
) -> None:
    ns1, ns2 = new_ns(), new_ns()
    client = make_client()
    internal = await client.issue(ns1, 5)
    external = await client.tokenize(ns2, internal)
    assert all(is_internal_token(token) for token in internal)
    assert all(is_external_ref(ref) for ref in external)
    assert await client.detokenize(ns2, external) == internal
    assert secure_tome.issued(ns1) == internal  # the admin API answers the same credentials
    assert client.requests_made == 3


async def test_without_a_client_certificate_the_call_fails_within_its_timeouts(
    secure_tome: TomeEmulator, make_client: MakeClient
) -> None:
    ns = new_ns()
    client = make_client(tome_client_cert=None, tome_client_key=None)
    started = time.monotonic()
    with pytest.raises(TomeUnavailable) as failure:
        await client.issue(ns, 1)
    assert time.monotonic() - started < FAST_TOME_SETTINGS["tome_total_timeout_s"] + TIMEOUT_MARGIN_S
    assert failure.value.reason == "connection_error"
    assert secure_tome.requests(ns, "issue") == 0, "refused in the handshake, before the application"


async def test_a_certificate_from_another_ca_is_refused(
    secure_tome: TomeEmulator, make_client: MakeClient, other_pki: Pki
) -> None:
    ns = new_ns()
    client = make_client(tome_client_cert=other_pki.client.cert, tome_client_key=other_pki.client.key)
    with pytest.raises(TomeUnavailable) as failure:
        await client.issue(ns, 1)
    assert failure.value.reason == "connection_error"
    assert secure_tome.requests(ns, "issue") == 0


async def test_a_wrong_token_is_refused_with_401_and_is_never_logged(
    secure_tome: TomeEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    wrong = secrets.token_urlsafe(32)
    ns = new_ns()
    client = make_client(tome_bearer_token_file=write_token(tmp_path / "wrong-token", wrong))
    with capture_logs() as logs, pytest.raises(TomeBadRequest) as failure:
        await client.issue(ns, 1)
    assert failure.value.status == 401
    assert failure.value.code == "unauthorized"
    assert "401 unauthorized" in str(failure.value)
    assert client.requests_made == 1, "a refused credential is not retried"
    assert wrong not in str(logs) + str(failure.value)
    assert secure_tome.requests(ns, "issue") == 0, "refused before the ledger"


async def test_a_client_trusting_another_ca_refuses_the_server(
    secure_tome: TomeEmulator, make_client: MakeClient, other_pki: Pki
) -> None:
    client = make_client(tome_ca_bundle=other_pki.ca)
    with pytest.raises(TomeUnavailable) as failure:
        await client.issue(new_ns(), 1)
    assert failure.value.reason == "connection_error"
    assert "certificate verify failed" in str(failure.value)


def test_every_route_needs_the_token(secure_tome: TomeEmulator, pki: Pki) -> None:
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(pki.client.cert, pki.client.key)
    with httpx.Client(base_url=secure_tome.url, verify=context, timeout=5) as anonymous:
        for method, path in [("GET", "/_admin/health"), ("GET", "/_admin/stats"), ("PUT", "/_admin/faults"),
                             ("GET", "/openapi.json"), ("POST", "/v1/namespaces/NS1/tokens:issue")]:  # fmt: skip
            response = anonymous.request(method, path, json={}, headers={"Authorization": "Bearer nope"})
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "X-Correlation-ID" in response.headers


def test_a_token_file_others_may_read_is_refused_without_showing_the_token(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    path = write_token(tmp_path / "token", token, mode=0o644)
    with pytest.raises(ValueError, match="accessible by group or others") as failure:
        read_bearer_token(path)
    assert token not in str(failure.value)
    path.chmod(0o600)
    assert read_bearer_token(path) == token


def test_tls_settings_are_refused_with_a_plain_http_url(pki: Pki, tmp_path: Path) -> None:
    token_file = write_token(tmp_path / "token", "t0ken")
    with pytest.raises(ValueError, match=r"TOKENPOOL_TOME_BEARER_TOKEN_FILE set but the TOME URL .* is not https"):
        TomeClient(Settings(tome_url="http://tome.example:1", tome_bearer_token_file=token_file))
    with pytest.raises(ValueError, match=r"TOKENPOOL_TOME_BEARER_TOKEN_FILE set but the TOME URL .* is not https"):
        TomeClient(Settings(tome_url="http://localhost:1", tome_bearer_token_file=token_file))  # a name, not loopback
    with pytest.raises(ValueError, match=r"TOKENPOOL_TOME_CA_BUNDLE set but the TOME URL .* is not https"):
        TomeClient(Settings(tome_url="http://127.0.0.1:1", tome_ca_bundle=pki.ca))  # TLS settings: never over http
    with pytest.raises(ValueError, match="CLIENT_CERT and TOKENPOOL_TOME_CLIENT_KEY, or neither"):
        TomeClient(Settings(tome_url="https://127.0.0.1:1", tome_client_cert=pki.client.cert))


async def test_a_token_may_go_in_clear_to_a_loopback_address_only(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    token_file = write_token(tmp_path / "token", token)
    for url in ("http://127.0.0.1:1", "http://127.3.4.5:1", "http://[::1]:1"):
        client = TomeClient(Settings(tome_url=url, tome_bearer_token_file=token_file))
        try:
            assert client._http.headers["Authorization"] == f"Bearer {token}"
        finally:
            await client.aclose()


def test_the_emulator_refuses_a_certificate_without_its_key(pki: Pki, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenpool.tome.emulator", "--db", str(tmp_path / "vault.db"),
         "--ssl-certfile", str(pki.server.cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--ssl-certfile and --ssl-keyfile go together" in result.stderr

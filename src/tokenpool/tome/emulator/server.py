"""Run the emulator under uvicorn (the ``tokenpool tome-emulator`` command and ``python -m``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tokenpool.observability.logging import configure_logging, get_logger
from tokenpool.tome.emulator.app import create_app
from tokenpool.tome.emulator.faults import Faults
from tokenpool.tome.emulator.vault import Vault

log = get_logger(__name__)

BEARER_TOKEN_FILE_ENV = "TOKENPOOL_TOME_EMULATOR_BEARER_TOKEN_FILE"  # noqa: S105 - a variable name
"""The emulator's ``--bearer-token-file`` from the environment (not TOKENPOOL_TOME_BEARER_TOKEN_FILE: that
one is the token a client sends)."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """HTTPS for the emulator; with ``client_ca``, clients must present a certificate signed by it."""

    certfile: Path
    keyfile: Path
    client_ca: Path | None = None

    @classmethod
    def from_flags(cls, certfile: Path | None, keyfile: Path | None, client_ca: Path | None) -> ServerTls | None:
        """The TLS options given on the command line; ValueError when they do not go together."""
        if (certfile is None) != (keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
        if certfile is None or keyfile is None:
            if client_ca is not None:
                raise ValueError("--ssl-client-ca needs --ssl-certfile and --ssl-keyfile")
            return None
        return cls(certfile, keyfile, client_ca)


def serve(
    host: str,
    port: int,
    db: Path,
    faults: Faults | None = None,
    *,
    log_level: str = "INFO",
    tls: ServerTls | None = None,
    bearer_token: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; the vault in ``db`` is created if missing and kept across runs.

    With ``bearer_token`` (see :func:`tokenpool.credentials.read_bearer_token`), every call must carry it.
    """
    configure_logging(log_level)
    vault = Vault(db)
    app = create_app(vault, faults, bearer_token=bearer_token)
    log.info(
        "tome_emulator.start", host=host, port=port, db=str(db), https=tls is not None,
        client_certificates=tls is not None and tls.client_ca is not None, bearer_token=bearer_token is not None,
        **(faults or Faults()).model_dump(),
    )  # fmt: skip
    try:
        # No access log: the ledger (/_admin/stats) counts every request, and a line per call would
        # dominate the emulator's own cost under load.
        uvicorn.run(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=tls.certfile if tls else None,
            ssl_keyfile=tls.keyfile if tls else None,
            ssl_ca_certs=tls.client_ca if tls else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca is not None else ssl.CERT_NONE,
        )  # fmt: skip
    finally:
        vault.close()

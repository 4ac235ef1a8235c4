"""Run the emulator under uvicorn (the ``tokenpool tome-emulator`` command and ``python -m``)."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from tokenpool.observability.logging import configure_logging, get_logger
from tokenpool.tome.emulator.app import create_app
from tokenpool.tome.emulator.faults import Faults
from tokenpool.tome.emulator.vault import Vault

log = get_logger(__name__)


def serve(host: str, port: int, db: Path, faults: Faults | None = None, *, log_level: str = "INFO") -> None:
    """Serve until SIGINT/SIGTERM; the vault in ``db`` is created if missing and kept across runs."""
    configure_logging(log_level)
    vault = Vault(db)
    app = create_app(vault, faults)
    log.info("tome_emulator.start", host=host, port=port, db=str(db), **(faults or Faults()).model_dump())
    try:
        # No access log: the ledger (/_admin/stats) counts every request, and a line per call would
        # dominate the emulator's own cost under load.
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    finally:
        vault.close()

"""Fixtures of the chaos suite: a PostgreSQL server and a TOME emulator the suite owns, the profile
(short in the default run, long with ``-m chaos``) and the session's report.

The database server is an embedded one in a temporary folder even when ``TOKENPOOL_TEST_DATABASE_URL``
is set: scenarios stop it, and stopping a shared server would break every other test. The emulator
is the suite's own too (scenarios change its faults and must not disturb other tests' ledgers).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.report import ChaosReport
from tests.chaos.stack import Stack, running_stack
from tests.fixtures.database import SessionRoles, own_embedded_server
from tests.fixtures.tome import FAST_TOME_SETTINGS, TomeEmulator, running_emulator
from tokenpool.db import embedded, migrate, roles
from tokenpool.db.vault_store import ensure_keys
from tokenpool.settings import Settings
from tokenpool.vault import key_provider_from_settings

LONG_ENV = "TOKENPOOL_CHAOS_LONG"


@dataclass(frozen=True)
class ChaosProfile:
    mode: str
    load_s: float  # load before + during + after the fault
    rate_per_s: float
    concurrency: int
    fault_at_s: float  # when the fault starts, counted from the start of the load
    fault_s: float  # how long it lasts (database stop: 10 s short, 30 s long)
    db_outage_s: float


SHORT = ChaosProfile("short", load_s=10.0, rate_per_s=40.0, concurrency=6, fault_at_s=2.5, fault_s=4.0,
                     db_outage_s=10.0)
LONG = ChaosProfile("long", load_s=60.0, rate_per_s=80.0, concurrency=16, fault_at_s=10.0, fault_s=30.0,
                    db_outage_s=30.0)


def long_mode_enabled(config: pytest.Config) -> bool:
    return "chaos" in (config.getoption("markexpr") or "") or os.environ.get(LONG_ENV) == "1"


@pytest.fixture(params=["short", pytest.param("long", marks=pytest.mark.chaos)])
def profile(request: pytest.FixtureRequest) -> ChaosProfile:
    """Short in the default run; the long variant runs only with ``pytest -m chaos`` (or TOKENPOOL_CHAOS_LONG=1)."""
    if request.param == "long" and not long_mode_enabled(request.config):
        pytest.skip("long chaos variant: pytest -m chaos tests/chaos")
    return LONG if request.param == "long" else SHORT


_REPORT_KEY = pytest.StashKey[ChaosReport]()


@pytest.fixture(scope="session")
def chaos_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ChaosReport:
    report = ChaosReport(tmp_path_factory.getbasetemp() / "chaos-report")
    request.config.stash[_REPORT_KEY] = report
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT_KEY, None)
    if report is not None and report.results:
        as_json, as_md = report.write()
        terminalreporter.write_sep("-", "chaos report")
        terminalreporter.write_line(f"{as_md}\n{as_json}")


class OwnedPostgres:
    """An embedded PostgreSQL server of the suite's own that the chaos tests may stop and start, with an
    owner and an app role as in production (tests/fixtures/database.py)."""

    def __init__(self, home: Path, superuser_url: str) -> None:
        self.home = home
        self.roles = SessionRoles(superuser_url)
        self.roles.create()
        self._template = f"chaos_tmpl_{os.getpid()}"
        self.roles.create_database(self._template)
        owner_url = self.roles.url(self.roles.owner, self._template)
        migrate.upgrade(owner_url)
        ensure_keys(owner_url, key_provider_from_settings(Settings()))  # as `db upgrade` makes them
        roles.apply_grants(owner_url, self.roles.app)

    def new_database(self) -> tuple[str, str]:
        """A fresh migrated database: (the app role's URL, the owner's URL)."""
        name = f"chaos_{uuid.uuid4().hex[:12]}"
        self.roles.create_database(name, template=self._template)
        return self.roles.url(self.roles.app, name), self.roles.url(self.roles.owner, name)

    def stop(self) -> None:
        """pg_ctl stop -m fast: sessions are ended, new connections refused, as when the server goes away."""
        assert embedded.stop_embedded(self.home), "the owned PostgreSQL server was not running"

    def start(self) -> None:
        # get_server() caches its handle per data folder, so start_embedded() would not start a stopped
        # server again; the handle's own start (same socket folder, same data) does.
        server = embedded._server(self.home)
        with server._lock:
            server.ensure_postgres_running()

    def close(self) -> None:
        embedded.stop_embedded(self.home)


@pytest.fixture(scope="session")
def owned_pg() -> Iterator[OwnedPostgres]:
    with own_embedded_server("tokenpool-chaos-pg") as (home, superuser_url):
        server = OwnedPostgres(home, superuser_url)
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="session")
def chaos_tome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TomeEmulator]:
    with running_emulator(tmp_path_factory.mktemp("chaos-tome")) as emulator:
        yield emulator


@pytest.fixture
def tome_for_chaos(chaos_tome: TomeEmulator) -> Iterator[TomeEmulator]:
    """The suite's emulator, running, with a realistic small latency; faults reset afterwards."""
    chaos_tome.start()
    chaos_tome.reset_faults()
    chaos_tome.set_faults(latency_ms=10, jitter_ms=10)
    yield chaos_tome
    chaos_tome.reset_faults()


# Every process of a scenario reads these (through the environment).
CHAOS_SETTINGS: dict[str, Any] = {
    **FAST_TOME_SETTINGS,
    "refill_batch_size": 100,
    "refill_tome_max_rps": 1_000.0,
    "refill_tome_max_in_flight": 2,
    "refill_lease_ttl_s": 2.0,
    "refill_sample_min_interval_s": 0.0,
    # The forecast (consumption rate x interval) must not turn a chaos load of a few hundred cards/min into a
    # target of tens of thousands of pairs: a short interval keeps every refill small.
    "refill_interval_s": 30.0,
    "db_pool_min_size": 2,
    "db_pool_max_size": 10,
    "db_connect_timeout_s": 2.0,
    "db_acquire_timeout_s": 1.0,
    "service_db_timeout_s": 2.0,
    "service_readiness_timeout_s": 1.0,
    "service_api_key_cache_ttl_s": 60.0,
    # One key drives the load (up to 80 requests/s): per-key limits far above it.
    "rate_limit_cards": "1000000/second",
    "rate_limit_detokenize_refs": "1000000000/minute",
    "max_open_reservations": 1_000_000,
    "service_runtime_config_ttl_s": 1.0,
    "service_retry_after_s": 1,
    "worker_metrics_port": 0,
    "log_level": "INFO",
}


@pytest.fixture
def make_stack(owned_pg: OwnedPostgres, tome_for_chaos: TomeEmulator, tmp_path: Path) -> Iterator[Any]:
    """``make_stack(**settings) -> Stack``: a fresh database, TOME namespaces of its own, no process yet."""
    stacks: list[Any] = []

    def make(**overrides: Any) -> Stack:
        tag = uuid.uuid4().hex[:10]
        database_url, admin_database_url = owned_pg.new_database()
        settings = Settings(database_url=database_url, database_admin_url=admin_database_url,  # type: ignore[arg-type]
                            database_app_role=owned_pg.roles.app, tome_url=tome_for_chaos.url,
                            tome_ns1=f"NS1-{tag}", tome_ns2=f"NS2-{tag}", **{**CHAOS_SETTINGS, **overrides})
        context = running_stack(settings, database_url, tome_for_chaos, tmp_path / f"stack-{tag}")
        stacks.append(context)
        return context.__enter__()

    yield make
    for context in reversed(stacks):
        context.__exit__(None, None, None)

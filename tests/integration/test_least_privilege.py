"""Least privilege (PCI DSS 7.2, 8.2): the app role holds only db/grants.sql, the owner role holds the
schema, and the embedded server asks both for their passwords.

The rest of the suite runs every piece of tokenpool as the app role (tests/fixtures/database.py), which
shows the grants suffice; these tests show they do not go further.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.integration.refill_support import env_for
from tokenpool import bootstrap
from tokenpool.db import embedded, migrate, roles
from tokenpool.db.embedded_access import passfile, secrets_dir
from tokenpool.settings import Settings

AUDIT_ROW = ("INSERT INTO detokenize_audit (event, api_key_name, correlation_id, outcome, ref_count, from_db,"
             " from_tome, unresolved, ref_digests) VALUES ('detokenize', 'k', 'c', 'success', 1, 1, 0, 0, '{}')")
BACKDATED_AUDIT_ROW = ("INSERT INTO detokenize_audit (at, event, api_key_name, correlation_id, outcome, ref_count,"
                       " from_db, from_tome, unresolved, ref_digests) VALUES (now() - make_interval(days => %s),"
                       " 'detokenize', 'k', 'c', 'success', 1, 1, 0, 0, '{}')")


def run(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def refused(url: str, statement: str, *params: object) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run(url, statement, *params)


def test_the_app_role_appends_to_the_audit_and_cannot_change_delete_or_read_it(database_url, admin_database_url):
    run(database_url, AUDIT_ROW)
    refused(database_url, "UPDATE detokenize_audit SET outcome = 'failure'")
    refused(database_url, "DELETE FROM detokenize_audit")
    refused(database_url, "TRUNCATE detokenize_audit")
    refused(database_url, "SELECT count(*) FROM detokenize_audit")
    assert run(admin_database_url, "SELECT outcome FROM detokenize_audit") == [("success",)]


def test_the_app_role_cannot_create_tables_or_schemas_only_its_temporary_staging(database_url):
    refused(database_url, "CREATE TABLE public.mine (id int)")
    refused(database_url, "CREATE TABLE mine (id int)")
    refused(database_url, "CREATE SCHEMA mine")
    refused(database_url, "CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    run(database_url, "CREATE TEMP TABLE staging_like (id int)")  # COPY's staging table (queries.sql)


def test_the_app_role_is_no_superuser_owns_nothing_and_cannot_migrate(database_url, session_roles):
    assert run(database_url, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
               ) == [(False, False, False)]
    owned = run(database_url, """
        SELECT 'relation ' || relname FROM pg_class WHERE relowner = to_regrole(current_user)
        UNION ALL SELECT 'routine ' || proname FROM pg_proc WHERE proowner = to_regrole(current_user)
        UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typowner = to_regrole(current_user)
        UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspowner = to_regrole(current_user)
        UNION ALL SELECT 'database ' || datname FROM pg_database WHERE datdba = to_regrole(current_user)""")
    assert owned == []
    assert roles.privilege_problems(database_url, session_roles.app) == []
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        migrate.upgrade(database_url)


def test_every_table_is_granted_to_the_app_role_on_purpose(database_url, admin_database_url, session_roles):
    """A table a later migration adds is out of the app role's reach until db/grants.sql names it, and
    this test fails until it does (name it there, or add it here if the app must never touch it)."""
    # The migration ledger, the audit chain's head (only the owner's SECURITY DEFINER trigger writes it).
    # The restore fences (only the owner's `db after-restore` records them).
    never = {"schema_migrations", "detokenize_audit_head", "restore_fences"}
    tables = {row[0] for row in run(admin_database_url,
                                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    granted = {row[0] for row in run(admin_database_url, """
        SELECT relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
          AND (has_table_privilege(%s, oid, 'SELECT, INSERT, UPDATE, DELETE')
               OR has_any_column_privilege(%s, oid, 'SELECT, INSERT, UPDATE'))""",
        session_roles.app, session_roles.app)}
    assert granted == tables - never
    assert not any(run(database_url, "SELECT has_table_privilege(current_user, %s, 'SELECT, INSERT')", table)[0][0]
                   for table in never)


def test_regranting_takes_back_a_privilege_granted_by_hand_and_gives_nothing_on_a_new_table(
        database_url, admin_database_url, session_roles):
    run(admin_database_url, AUDIT_ROW)
    run(admin_database_url, f'GRANT DELETE ON detokenize_audit TO "{session_roles.app}"')
    run(admin_database_url, "CREATE TABLE later_migration (id int)")
    assert roles.apply_grants(admin_database_url, session_roles.app)
    assert roles.apply_grants(admin_database_url, session_roles.app)  # idempotent
    refused(database_url, "DELETE FROM detokenize_audit")
    refused(database_url, "SELECT * FROM later_migration")
    run(database_url, AUDIT_ROW)  # what grants.sql gives is still there


def test_the_app_role_prunes_the_audit_only_past_366_days(database_url, admin_database_url):
    for days in (367, 367, 365, 10):
        run(admin_database_url, BACKDATED_AUDIT_ROW, days)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="366 days"):
        run(database_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '365 days', 100)")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        run(database_url, "SELECT tokenpool_prune_detokenize_audit(NULL, 100)")
    assert run(database_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '366 days', 1)") == [(1,)]
    assert run(database_url, "SELECT tokenpool_prune_detokenize_audit(now() - interval '366 days', 100)") == [(1,)]
    assert run(admin_database_url, "SELECT count(*) FROM detokenize_audit") == [(2,)]  # 365 and 10 days old
    # Only the owner and the roles grants.sql names may call it (PUBLIC may not).
    assert run(admin_database_url, """
        SELECT has_function_privilege('public', 'tokenpool_prune_detokenize_audit(timestamptz, int)', 'EXECUTE'),
               prosecdef, pg_get_userbyid(proowner) = current_user
        FROM pg_proc WHERE proname = 'tokenpool_prune_detokenize_audit'""") == [(False, True, True)]


def test_upgrade_status_and_db_prune_run_as_the_owner_role(settings, admin_database_url):
    for days in (401, 10):
        run(admin_database_url, BACKDATED_AUDIT_ROW, days)
    env = env_for(settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tokenpool", *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    upgrade, status, prune = cli("db", "upgrade"), cli("db", "status"), cli("db", "prune", "--json")
    assert (upgrade.returncode, status.returncode, prune.returncode) == (0, 0, 0), upgrade.stderr + prune.stderr
    assert "schema is up to date" in upgrade.stdout
    assert "db.grants_applied" in upgrade.stderr
    assert json.loads(prune.stdout)["tables"]["detokenize_audit"]["rows"] == 1
    assert run(admin_database_url, "SELECT count(*) FROM detokenize_audit") == [(1,)]


def test_without_an_admin_url_the_schema_is_managed_with_the_database_url_and_a_warning(settings, database_url):
    one_role = settings.model_copy(update={"database_admin_url": None})
    with structlog.testing.capture_logs() as logs:
        assert bootstrap.admin_database_url(one_role) == database_url
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # here that is the app role: it may not migrate
            bootstrap.upgrade_database(one_role)
    assert "db.one_role" in [entry["event"] for entry in logs]
    with pytest.raises(ValueError, match="TOKENPOOL_DATABASE_URL"):
        bootstrap.database_url(settings.model_copy(update={"database_url": None}))


# --- the embedded server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_embedded_home() -> Iterator[Path]:
    """An embedded server's folder as tokenpool made it before the roles existed: the superuser alone,
    trusted without a password, owning the migrated database and a key made by then."""
    home = Path(tempfile.gettempdir()) / f"tokenpool-test-embedded-{os.getpid()}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    try:
        superuser_url = embedded._server(home).get_uri()  # the wheel's start: initdb's trust rules
        with psycopg.connect(superuser_url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "tokenpool"')
        old_url = embedded._server(home).get_uri("tokenpool")
        migrate.upgrade(old_url)
        run(old_url, "INSERT INTO api_keys (name, key_hash, scopes) VALUES ('before', %s, '{pools:read}')",
            os.urandom(32))
        yield home
    finally:
        with contextlib.suppress(Exception):
            embedded.stop_embedded(home)
        shutil.rmtree(home, ignore_errors=True)


def without_password(url: str, **changes: str) -> str:
    params = {key: value for key, value in conninfo_to_dict(url).items() if key != "passfile"}
    params.update(changes)
    return make_conninfo(**params)  # type: ignore[arg-type]


def test_the_embedded_roles_need_their_passwords_kept_in_0600_files(old_embedded_home, tmp_path):
    database = embedded.start_embedded(old_embedded_home)
    assert embedded.start_embedded(old_embedded_home) == database  # the next start finds all in place

    for role, url in ((embedded.OWNER_ROLE, database.owner_url), (embedded.APP_ROLE, database.app_url)):
        assert "password" not in conninfo_to_dict(url)  # the URL names the file, it holds no secret
        assert run(url, "SELECT current_user") == [(role,)]
        nowhere = str(tmp_path / "no-such-file")
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(without_password(url, passfile=nowhere)).close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(without_password(url, passfile=nowhere, password="guess")).close()
        mode = passfile(old_embedded_home, role).stat().st_mode & 0o777
        assert mode == 0o600, oct(mode)
    assert secrets_dir(old_embedded_home).stat().st_mode & 0o777 == 0o700
    # No TCP listener, and the rules on the socket: the superuser by OS user (peer), the rest by password.
    rules = run(embedded.start_server(old_embedded_home),
                "SELECT type, user_name, auth_method FROM pg_hba_file_rules ORDER BY rule_number")
    assert rules == [("local", ["postgres"], "peer"), ("local", ["all"], "scram-sha-256")]


def test_an_embedded_folder_made_before_the_roles_is_handed_to_them_on_its_next_start(old_embedded_home):
    settings = Settings(home=old_embedded_home, database_url=None)
    bootstrap.upgrade_database(settings)  # owner: migrations (none pending) and the grants
    database = embedded.start_embedded(old_embedded_home)
    not_the_owners = run(database.owner_url, """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relowner <> to_regrole(current_user)
        UNION ALL SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.proowner <> to_regrole(current_user)
        UNION ALL SELECT datname FROM pg_database
        WHERE datname = current_database() AND datdba <> to_regrole(current_user)""")
    assert not_the_owners == []
    assert run(bootstrap.database_url(settings), "SELECT name FROM api_keys") == [("before",)]
    assert roles.privilege_problems(database.owner_url, embedded.APP_ROLE) == []
    refused(database.app_url, "DELETE FROM detokenize_audit")

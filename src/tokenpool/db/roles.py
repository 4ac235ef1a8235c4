"""The two database roles: the owner (migrations, every object) and the app role (least privilege).

:func:`apply_grants` gives the app role exactly the privileges of ``grants.sql``; ``tokenpool db
upgrade`` runs it as the owner after the migrations. :func:`privilege_problems` names what would make
the app role more powerful than those grants (superuser, an owner of objects, a member of the owner,
allowed to create tables). :func:`create_login_role` and :func:`set_password` send PostgreSQL a SCRAM
verifier computed here, never the password itself, so no statement log can show it.
"""

from __future__ import annotations

from importlib.resources import files

import psycopg
from psycopg import sql

from tokenpool.db.hosts import primary_url
from tokenpool.observability.logging import get_logger

log = get_logger(__name__)

# Concurrent upgrades serialise on this lock of the migration ledger (as db/migrate.py does): two GRANTs
# of the same object at once fail with "tuple concurrently updated".
_LEDGER_LOCK = "LOCK TABLE schema_migrations IN SHARE ROW EXCLUSIVE MODE"

# Predefined or managed-service roles whose members read or write every table, whatever the grants.
_POWERFUL_ROLES = ("pg_read_all_data", "pg_write_all_data", "rds_superuser", "cloudsqlsuperuser", "azure_pg_admin")


def grants_sql(app_role: str, database: str) -> sql.Composed:
    """The statements of ``grants.sql`` for ``app_role`` in ``database``."""
    text = files("tokenpool.db").joinpath("grants.sql").read_text(encoding="utf-8")
    return sql.SQL(text).format(app=sql.Identifier(app_role), database=sql.Identifier(database))


def apply_grants(admin_url: str, app_role: str) -> bool:
    """Revokes everything ``app_role`` holds on the schema and grants what ``grants.sql`` lists, in one
    transaction, as the role of ``admin_url`` (the owner of the objects). Idempotent.

    Skipped, with a warning, when ``app_role`` does not exist or is the role of ``admin_url`` itself (a
    one-role deployment: revoking would take the owner's own rights). Returns whether it applied them.
    """
    with psycopg.connect(primary_url(admin_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
            (app_role,),
        ).fetchone()
        assert row is not None
        owner, database, exists = row
        if not exists:
            log.warning("db.grants_skipped", app_role=app_role,
                        reason="the app role does not exist; create it (docs/security.md, Roles and grants)")
            return False
        if app_role == owner:
            log.warning("db.grants_skipped", app_role=app_role,
                        reason="the app role is the owner role; use a role of its own for the app")
            return False
        with conn.transaction():
            conn.execute(_LEDGER_LOCK)
            conn.execute(grants_sql(app_role, database))
        problems = _problems(conn, app_role)
    log.info("db.grants_applied", app_role=app_role, owner=owner)
    for problem in problems:
        log.warning("db.app_role_too_powerful", app_role=app_role, problem=problem)
    return True


def privilege_problems(url: str, app_role: str) -> list[str]:
    """What gives ``app_role`` more than its grants in the database of ``url`` (empty: nothing)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return _problems(conn, app_role)


def _problems(conn: psycopg.Connection, app_role: str) -> list[str]:
    row = conn.execute(
        """
        SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication,
               (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
             + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
             + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
             + (SELECT count(*) FROM pg_type WHERE typowner = r.oid)
             + (SELECT count(*) FROM pg_database WHERE datdba = r.oid AND datname = current_database()),
               has_schema_privilege(r.oid, 'public', 'CREATE'),
               r.rolname <> current_user AND pg_has_role(r.oid, current_user, 'MEMBER'),
               (SELECT string_agg(g.rolname, ', ' ORDER BY g.rolname) FROM pg_roles g
                WHERE g.rolname = ANY(%s) AND pg_has_role(r.oid, g.oid, 'MEMBER'))
        FROM pg_roles r WHERE r.rolname = %s
        """,
        (list(_POWERFUL_ROLES), app_role),
    ).fetchone()
    if row is None:
        return [f"role {app_role} does not exist"]
    superuser, createrole, createdb, bypassrls, replication, owned, can_create, member_of_owner, powerful = row
    named = {
        "is a superuser": superuser,
        "may create roles (CREATEROLE)": createrole,
        "may create databases (CREATEDB)": createdb,
        "bypasses row-level security (BYPASSRLS)": bypassrls,
        "may replicate (REPLICATION)": replication,
        f"owns {owned} objects in this database": owned > 0,
        "may create objects in schema public": can_create,
        "is a member of the owner role": member_of_owner,
        f"is a member of {powerful}": powerful is not None,
    }
    return [problem for problem, found in named.items() if found]


def set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    """``ALTER ROLE ... PASSWORD`` with a SCRAM-SHA-256 verifier made here (the server sees no password)."""
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(_scram_verifier(conn, role, password))))


def create_login_role(conn: psycopg.Connection, role: str, password: str) -> None:
    """A role that may log in and do nothing else until granted (no superuser, no CREATEDB/CREATEROLE)."""
    conn.execute(sql.SQL(
        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
    ).format(sql.Identifier(role), sql.Literal(_scram_verifier(conn, role, password))))


def _scram_verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
